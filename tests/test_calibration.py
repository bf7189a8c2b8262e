"""Temperature scaling (training.loop.calibration) and ECE (maskdata.metrics)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from maskdata.metrics import ece
from training.loop.calibration import fit_temperature, softmax


def _sample(rng, n=4000, k=18, scale=3.0):
    """Labels drawn from softmax(z): the true logits are z, so the NLL-optimal temperature for z * T0 is T0."""
    z = rng.normal(size=(n, k)) * scale
    p = softmax(z)
    y = np.array([rng.choice(k, p=row) for row in p])
    return z, y


def test_temperature_recovers_a_known_scaling():
    rng = np.random.default_rng(0)
    z, y = _sample(rng)
    for t0 in (2.5, 0.5):
        t = fit_temperature(z * t0, y)
        assert t == pytest.approx(t0, rel=0.08), f"logits scaled by {t0}: fitted T {t}"


def test_temperature_minimises_nll_on_a_grid():
    rng = np.random.default_rng(1)
    z, y = _sample(rng, n=1000)
    z = z * 1.7 + rng.normal(size=z.shape)
    t = fit_temperature(z, y)
    zt, yt = torch.as_tensor(z), torch.as_tensor(y)
    nll = lambda T: float(torch.nn.functional.cross_entropy(zt / T, yt))
    grid = np.linspace(0.2, 5, 400)
    assert nll(t) <= min(nll(g) for g in grid) + 1e-6, "fitted T is not the NLL minimum"


def test_ece_falls_on_a_deliberately_over_confident_model():
    rng = np.random.default_rng(2)
    z, y = _sample(rng)
    over = z * 4.0                                   # 4x over-confident
    before = ece(softmax(over), y)
    t = fit_temperature(over, y)
    after = ece(softmax(over, t), y)
    assert before > 0.1, f"the over-confident model should be mis-calibrated, ECE {before}"
    assert after < before / 3, f"ECE must fall after temperature scaling: {before} -> {after}"


def test_ece_is_zero_for_perfect_confidence_and_known_for_a_constant():
    y = np.array([0, 1, 0, 1])
    p = np.array([[0.75, 0.25], [0.25, 0.75], [0.75, 0.25], [0.75, 0.25]])   # 3/4 correct at confidence 3/4
    assert ece(p, y) == pytest.approx(0.0, abs=1e-12)
    p2 = np.array([[0.9, 0.1]] * 4)                  # confidence 0.9, accuracy 0.5
    assert ece(p2, y) == pytest.approx(0.4, abs=1e-12)
