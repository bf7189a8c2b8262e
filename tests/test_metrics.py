"""Metrics against hand-computed values: macro F1 over all 18 classes with zero_division=0."""
from __future__ import annotations

import numpy as np
import pytest

from maskdata import labels
from maskdata.metrics import confusion, f1_from_confusion, head_of, macro_f1, report


def test_macro_f1_by_hand_three_classes():
    y_true = [0, 0, 1, 1, 2]
    y_pred = [0, 1, 1, 1, 0]
    # class 0: tp 1, fp 1, fn 1 -> 2/4 = 0.5; class 1: tp 2, fp 1, fn 0 -> 4/5 = 0.8; class 2: tp 0 -> 0
    assert macro_f1(y_true, y_pred, num_classes=3) == pytest.approx((0.5 + 0.8 + 0.0) / 3)


def test_absent_classes_count_as_zero_over_all_18():
    y_true = [0, 0, 1, 1, 2]
    y_pred = [0, 1, 1, 1, 0]
    # the other 15 classes are neither present nor predicted: F1 0 each (zero_division=0), mean over 18
    assert macro_f1(y_true, y_pred) == pytest.approx(1.3 / 18)
    per_class = f1_from_confusion(confusion(y_true, y_pred))
    assert per_class.shape == (18,) and per_class[3:].sum() == 0
    assert per_class[:3] == pytest.approx([0.5, 0.8, 0.0])


def test_perfect_prediction_over_all_classes_scores_one():
    y = np.repeat(np.arange(18), 3)
    r = report(y, y)
    assert r == {"f1": 1.0, "acc": 1.0, "f1_mask": 1.0, "f1_gender": 1.0, "f1_age": 1.0}, r


def test_confusion_rows_are_truth():
    cm = confusion([0, 0, 5], [0, 17, 5])
    assert cm[0, 0] == 1 and cm[0, 17] == 1 and cm[5, 5] == 1 and cm.sum() == 3


def test_report_heads_by_hand():
    # true: wear/male/<30 (0) twice, not_wear/female/>=60 (17) twice
    # pred: right, right mask+gender but age 30-59 (1), right, wear/female/>=60 (5): mask wrong only
    y_true = [0, 0, 17, 17]
    y_pred = [0, 1, 17, 5]
    r = report(y_true, y_pred)
    assert r["acc"] == pytest.approx(0.5)
    # classes 0: tp1 fn1 -> 2/3; 1: fp1 -> 0; 5: fp1 -> 0; 17: tp1 fn1 -> 2/3; 14 others 0
    assert r["f1"] == pytest.approx((2 / 3 + 2 / 3) / 18)
    # mask heads true [0,0,2,2] pred [0,0,2,0]: class0 tp2 fp1 -> 4/5; class2 tp1 fn1 -> 2/3; class1 0
    assert r["f1_mask"] == pytest.approx((0.8 + 2 / 3 + 0) / 3)
    # gender true [0,0,1,1] pred [0,0,1,1] -> 1
    assert r["f1_gender"] == pytest.approx(1.0)
    # age true [0,0,2,2] pred [0,1,2,2]: class0 tp1 fn1 -> 2/3; class1 fp1 -> 0; class2 tp2 -> 1
    assert r["f1_age"] == pytest.approx((2 / 3 + 0 + 1) / 3)


def test_head_of_matches_label_decode():
    classes = np.arange(18)
    for head, idx in (("mask", 0), ("gender", 1), ("age", 2)):
        assert list(head_of(classes, head)) == [labels.decode(c)[idx] for c in classes], head


def test_shape_mismatch_and_empty():
    with pytest.raises(ValueError, match="differ in shape"):
        macro_f1([0, 1], [0])
    r = report([], [])
    assert r["f1"] == 0.0 and r["acc"] == 0.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_macro_f1_and_submission_score_match_scikit_learn(seed, tmp_path):
    """An independent oracle: scikit-learn's f1_score over all 18 labels, absent classes scoring 0."""
    from sklearn.metrics import accuracy_score, f1_score

    from maskdata.scoring import score

    rng = np.random.default_rng(seed)
    n = 60
    y_true = rng.integers(0, 12, n)                 # classes 12..17 never true: they must count as 0
    y_pred = np.where(rng.random(n) < 0.5, y_true, rng.integers(0, labels.NUM_CLASSES, n))
    oracle = f1_score(y_true, y_pred, labels=range(labels.NUM_CLASSES), average="macro", zero_division=0)
    assert macro_f1(y_true, y_pred) == pytest.approx(oracle, abs=1e-12), (macro_f1(y_true, y_pred), oracle)
    ids = [f"{i}.jpg" for i in range(n)]
    answers = tmp_path / "answers.csv"
    answers.write_text("ImageID,ans\n" + "".join(f"{i},{t}\n" for i, t in zip(ids, y_true)))
    got = score(ids, y_pred, answers)
    assert got["f1"] == pytest.approx(oracle, abs=1e-12) and got["acc"] == pytest.approx(
        accuracy_score(y_true, y_pred)), (got, oracle)
