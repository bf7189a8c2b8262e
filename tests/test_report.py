"""maskdata.report against scikit-learn (test-only oracle)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from maskdata.report import binary_auc, class_report, report_csv_text

sk = pytest.importorskip("sklearn.metrics")


def _probs(rng, n, k=18):
    z = rng.normal(size=(n, k))
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def test_per_class_report_matches_sklearn_classification_report():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 18, 400)
    p = _probs(rng, 400)
    p[np.arange(200), y[:200]] += 1.0  # half the rows right, so the figures are not all near chance
    p /= p.sum(1, keepdims=True)
    rows, summary = class_report(y, p)
    want = sk.classification_report(y, p.argmax(1), labels=list(range(18)), output_dict=True, zero_division=0)
    for r in rows:
        w = want[str(r["class"])]
        for k, wk in (("precision", "precision"), ("recall", "recall"), ("f1", "f1-score"), ("support", "support")):
            assert r[k] == pytest.approx(w[wk], abs=1e-12), f"class {r['class']} {k}: {r[k]} vs sklearn {w[wk]}"
    assert summary["f1_macro"] == pytest.approx(want["macro avg"]["f1-score"], abs=1e-12)
    assert summary["f1_weighted"] == pytest.approx(want["weighted avg"]["f1-score"], abs=1e-12)
    assert summary["accuracy"] == pytest.approx(want["accuracy"], abs=1e-12)
    want_auc = sk.roc_auc_score(y, p, multi_class="ovr", average="macro", labels=list(range(18)))
    assert summary["auc_classes"] == 18
    assert summary["roc_auc_macro"] == pytest.approx(want_auc, abs=1e-12), "macro one-vs-rest AUC != sklearn"


def test_absent_classes_are_left_out_of_the_macro_auc_and_counted():
    rng = np.random.default_rng(1)
    y = rng.choice([0, 3, 7, 12], 120)            # 4 of 18 classes present
    p = _probs(rng, 120)
    p[:, 3] = np.round(p[:, 3], 2)                # ties: they count one half, as in sklearn
    rows, summary = class_report(y, p)
    present = sorted(set(y.tolist()))
    want = np.mean([sk.roc_auc_score(y == c, p[:, c]) for c in present])
    assert summary["auc_classes"] == len(present), summary
    assert summary["roc_auc_macro"] == pytest.approx(want, abs=1e-12)
    assert all(math.isnan(r["roc_auc"]) for r in rows if r["class"] not in present)
    assert math.isnan(binary_auc(np.ones(5, bool), np.arange(5.0))), "AUC without negatives must be NaN"
    text = report_csv_text(y, p)
    assert text.splitlines()[0] == "class,name,precision,recall,f1,support,roc_auc"
    assert "auc_classes,,,,,4," in text, text
