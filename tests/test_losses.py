"""Each loss against values computed by hand (plain math on a 2-sample, 18-class batch)."""
from __future__ import annotations

import math

import pytest
import torch

from training.losses import LOSSES, balanced_class_weights, create_criterion, create_loss, parse_criterion

LOGITS = torch.zeros(2, 18)
LOGITS[0, 3] = 2.0
LOGITS[1, 5] = 1.0
LOGITS[1, 0] = -1.0
TARGET = torch.tensor([3, 7])


def _softmax_row(row: list[float]) -> list[float]:
    z = sum(math.exp(v) for v in row)
    return [math.exp(v) / z for v in row]


P = [_softmax_row(r.tolist()) for r in LOGITS]


def test_cross_entropy_matches_hand_value():
    want = -(math.log(P[0][3]) + math.log(P[1][7])) / 2
    got = float(create_loss("cross_entropy")(LOGITS, TARGET))
    assert got == pytest.approx(want, rel=1e-6), f"cross entropy {got} != {want}"


def test_weighted_cross_entropy_is_weight_normalized_mean():
    w = torch.ones(18)
    w[3], w[7] = 2.0, 0.5
    want = -(2.0 * math.log(P[0][3]) + 0.5 * math.log(P[1][7])) / 2.5
    got = float(create_loss("cross_entropy", weight=w)(LOGITS, TARGET))
    assert got == pytest.approx(want, rel=1e-6), f"weighted cross entropy {got} != {want}"


@pytest.mark.parametrize("gamma", [0.0, 2.0])
def test_focal_matches_hand_value(gamma):
    want = sum(-((1 - P[i][t]) ** gamma) * math.log(P[i][t]) for i, t in enumerate([3, 7])) / 2
    got = float(create_loss("focal", gamma=gamma)(LOGITS, TARGET))
    assert got == pytest.approx(want, rel=1e-6), f"focal(gamma={gamma}) {got} != {want}"


def test_weighted_focal_is_weight_normalized_mean_like_cross_entropy():
    w = torch.ones(18)
    w[3], w[7] = 2.0, 0.5
    gamma = 2.0
    terms = [-((1 - P[i][t]) ** gamma) * math.log(P[i][t]) for i, t in enumerate([3, 7])]
    want = (2.0 * terms[0] + 0.5 * terms[1]) / 2.5
    got = float(create_loss("focal", weight=w, gamma=gamma)(LOGITS, TARGET))
    assert got == pytest.approx(want, rel=1e-6), f"weighted focal {got} != weighted mean {want}"
    ce = float(create_loss("cross_entropy", weight=w)(LOGITS, TARGET))
    assert float(create_loss("focal", weight=w, gamma=0.0)(LOGITS, TARGET)) == pytest.approx(ce, rel=1e-6), \
        "weighted focal with gamma 0 must equal weighted cross entropy"


@pytest.mark.parametrize("gamma", [0.0, 0.3, 0.5, 0.9, 2.0])
def test_focal_gradient_is_finite_at_p_equal_one(gamma):
    # sample 0 is certain (p_y rounds to exactly 1.0 in float32), sample 1 is not
    logits = torch.zeros(2, 18)
    logits[0, 3] = 200.0
    logits = logits.requires_grad_(True)
    p0 = float(torch.softmax(logits[0].detach(), 0)[3])
    assert p0 == 1.0, f"the test needs p_y == 1 exactly, got {p0!r}"
    loss = create_loss("focal", gamma=gamma)(logits, TARGET)
    loss.backward()
    want = -((1 - 1 / 18) ** gamma) * math.log(1 / 18) / 2   # sample 0 contributes 0
    assert loss.item() == pytest.approx(want, rel=1e-6), f"gamma {gamma}: loss {loss.item()} != {want}"
    assert torch.isfinite(logits.grad).all(), f"gamma {gamma}: non-finite gradient {logits.grad[0]}"
    assert float(logits.grad[0].abs().max()) < 1e-6, f"gamma {gamma}: certain sample moved: {logits.grad[0]}"


def test_label_smoothing_spreads_eps_over_18_classes():
    eps = 0.1
    want = 0.0
    for i, t in enumerate([3, 7]):
        q = [eps / 18 + (1 - eps) * (c == t) for c in range(18)]
        want += -sum(q[c] * math.log(P[i][c]) for c in range(18))
    want /= 2
    got = float(create_loss("label_smoothing", smoothing=eps)(LOGITS, TARGET))
    assert got == pytest.approx(want, rel=1e-6), f"label smoothing {got} != {want}"


def test_soft_f1_matches_hand_value():
    f1s = []
    for c in range(18):
        tp = sum(P[i][c] for i, t in enumerate([3, 7]) if t == c)
        fp = sum(P[i][c] for i, t in enumerate([3, 7]) if t != c)
        fn = sum(1 - P[i][c] for i, t in enumerate([3, 7]) if t == c)
        f1s.append(2 * tp / (2 * tp + fp + fn + 1e-7))
    want = 1 - sum(f1s) / 18
    got = float(create_loss("f1")(LOGITS, TARGET))
    assert got == pytest.approx(want, rel=1e-6), f"soft F1 loss {got} != {want}"


def test_weighted_combination_is_sum_of_weighted_terms():
    combo = float(create_criterion("focal:0.6,f1:0.4", gamma=2.0)(LOGITS, TARGET))
    want = 0.6 * float(create_loss("focal", gamma=2.0)(LOGITS, TARGET)) + 0.4 * float(create_loss("f1")(LOGITS, TARGET))
    assert combo == pytest.approx(want, rel=1e-6), f"focal:0.6,f1:0.4 gave {combo}, expected {want}"


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_loss_backpropagates_finite_gradients(name):
    logits = LOGITS.clone().requires_grad_(True)
    create_loss(name)(logits, TARGET).backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0, f"{name}: bad gradient"


def test_parse_criterion_and_bad_specs():
    assert parse_criterion("focal:0.6, f1:0.4") == [("focal", 0.6), ("f1", 0.4)]
    assert parse_criterion("cross_entropy") == [("cross_entropy", 1.0)]
    for spec, needle in [("focal:abc", "not a number"), ("nope", "expected one of"), ("focal,,f1", "bad criterion"),
                         ("", "bad criterion"), ("f1:-1", "must be > 0")]:
        with pytest.raises(ValueError) as e:
            parse_criterion(spec)
        assert needle in str(e.value), f"spec {spec!r}: message {e.value!s} lacks {needle!r}"
    with pytest.raises(ValueError, match=r"unknown loss 'x'; expected one of \['cross_entropy', 'f1'"):
        create_loss("x")


def test_balanced_class_weights_inverse_frequency_mean_one():
    w = balanced_class_weights([0, 0, 0, 1])
    assert w[0] * 3 == pytest.approx(float(w[1])), f"weights not inverse-frequency: {w[:2]}"
    assert float(w[:2].mean()) == pytest.approx(1.0) and float(w[2:].sum()) == 0.0, f"bad normalization: {w}"
