"""What the model predicts, on ``/metrics`` (Prometheus), per route — so a shift in what it sees shows.

    mask_predictions_total{route="/predict",head="mask",value="not_wear"}   counter
    mask_prediction_confidence_bucket{route="/predict",le="0.9"}            histogram of top-class probability
    mask_uncertain_total{route="/predict"}                                   answers flagged ``uncertain``

Created through ``bentoml.metrics`` (BentoML's public wrapper of prometheus_client), so they join
BentoML's own request metrics on the same ``/metrics`` page. docs/serving.md has the PromQL.
"""
from __future__ import annotations

from typing import Iterable

import bentoml

HEADS = ("mask", "gender", "age")
CONFIDENCE_BUCKETS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)

PREDICTIONS = bentoml.metrics.Counter(
    name="mask_predictions", documentation="predicted values per head, per route",
    labelnames=["route", "head", "value"])
CONFIDENCE = bentoml.metrics.Histogram(
    name="mask_prediction_confidence", documentation="probability of the predicted (top) class, per route",
    labelnames=["route"], buckets=CONFIDENCE_BUCKETS)
UNCERTAIN = bentoml.metrics.Counter(
    name="mask_uncertain", documentation="answers flagged uncertain by the calibrated model, per route",
    labelnames=["route"])


def record(route: str, predictions: Iterable[dict]) -> None:
    """Count each answer's head values, its confidence and its ``uncertain`` flag (when present)."""
    for p in predictions:
        for head in HEADS:
            PREDICTIONS.labels(route=route, head=head, value=p[head]).inc()
        CONFIDENCE.labels(route=route).observe(float(p["confidence"]))
        if p.get("uncertain"):
            UNCERTAIN.labels(route=route).inc()
