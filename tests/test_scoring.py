"""maskdata.scoring: the one confusion-matrix figure that training and mask-submit both draw."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from maskdata import labels, metrics
from maskdata.scoring import SKIPPED, plot_confusion, score


def _cm(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, labels.NUM_CLASSES, 200)
    p = np.where(rng.random(200) < 0.7, y, rng.integers(0, labels.NUM_CLASSES, 200))
    return metrics.confusion(y, p)


def test_training_draws_the_same_confusion_figure_as_submission(tmp_path):
    from training.loop import plots

    cm = _cm()
    plot_confusion(cm, tmp_path / "submit.png", title="t")
    plots.save_confusion(cm, tmp_path / "train.png", title="t")
    a, b = (tmp_path / "submit.png").read_bytes(), (tmp_path / "train.png").read_bytes()
    assert a == b, f"training's confusion.png ({len(b)} B) differs from mask-submit's ({len(a)} B)"
    with Image.open(tmp_path / "submit.png") as im:
        assert im.format == "PNG" and min(im.size) > 500, (im.format, im.size)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["submit.png", "train.png"], "temp file left behind"


def test_plot_confusion_refuses_a_matrix_of_the_wrong_size(tmp_path):
    with pytest.raises(ValueError, match=f"{labels.NUM_CLASSES}x{labels.NUM_CLASSES}"):
        plot_confusion(np.zeros((3, 3), dtype=int), tmp_path / "cm.png")
    assert not list(tmp_path.iterdir()), "nothing may be written for a bad matrix"


def test_score_leaves_skipped_rows_out(tmp_path):
    answers = tmp_path / "answers.csv"
    answers.write_text("ImageID,ans\na.jpg,0\nb.jpg,5\nc.jpg,17\n")
    got = score(["a.jpg", "b.jpg", "c.jpg"], np.array([0, SKIPPED, 16]), answers)
    assert (got["n"], got["skipped"]) == (2, 1), got
    assert got["acc"] == pytest.approx(0.5), got
