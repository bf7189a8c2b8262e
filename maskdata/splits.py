"""Person-level splits stratified on the person's gender×age class (docs/data.md).

Each person carries one stratum (gender×age), so stratified *group* k-fold reduces to stratified
k-fold over people: within each stratum, people are shuffled by seed and dealt round-robin to
folds, with the deal continuing across strata so fold sizes stay within one person of each other
(the semantics of scikit-learn's StratifiedGroupKFold, without the dependency).
"""
from __future__ import annotations

import math
import random
from fractions import Fraction

from maskdata import labels
from maskdata.layout import Sample, people


def person_strata(samples: list[Sample], age_bins=labels.DEFAULT_AGE_BINS) -> dict[str, int]:
    """person → gender×age stratum (0..5)."""
    out = {}
    for person, rows in people(samples).items():
        s = rows[0]
        out[person] = s.gender * len(labels.AGE_NAMES) + labels.age_group(s.age, age_bins)
    return out


def kfold_people(samples: list[Sample], k: int, seed: int = 0,
                 age_bins=labels.DEFAULT_AGE_BINS) -> list[set[str]]:
    """Split people into ``k`` disjoint folds (sets of person keys), stratified on gender×age."""
    strata = person_strata(samples, age_bins)
    if k < 2:
        raise ValueError(f"k-fold needs k >= 2, got {k}")
    if k > len(strata):
        raise ValueError(f"k={k} folds but only {len(strata)} people")
    rng = random.Random(seed)
    folds: list[set[str]] = [set() for _ in range(k)]
    by_stratum: dict[int, list[str]] = {}
    for person, st in sorted(strata.items()):
        by_stratum.setdefault(st, []).append(person)
    slot = 0
    for st in sorted(by_stratum):
        group = by_stratum[st]
        rng.shuffle(group)
        for person in group:
            folds[slot % k].add(person)
            slot += 1
    return folds


def kfold_indices(samples: list[Sample], k: int, seed: int = 0,
                  age_bins=labels.DEFAULT_AGE_BINS) -> list[tuple[list[int], list[int]]]:
    """(train_idx, val_idx) sample indices for each of ``k`` person-level folds."""
    folds = kfold_people(samples, k, seed, age_bins)
    out = []
    for val_people in folds:
        val = [i for i, s in enumerate(samples) if s.person in val_people]
        train = [i for i, s in enumerate(samples) if s.person not in val_people]
        out.append((train, val))
    return out


def _dealt_people(samples: list[Sample], seed: int, age_bins) -> list[str]:
    """People in dealing order: strata in order, each shuffled by ``seed`` (the order k-fold deals)."""
    rng = random.Random(seed)
    by_stratum: dict[int, list[str]] = {}
    for person, st in sorted(person_strata(samples, age_bins).items()):
        by_stratum.setdefault(st, []).append(person)
    order = []
    for st in sorted(by_stratum):
        group = by_stratum[st]
        rng.shuffle(group)
        order.extend(group)
    return order


def holdout_people(samples: list[Sample], val_fraction: float, seed: int = 0,
                   age_bins=labels.DEFAULT_AGE_BINS) -> set[str]:
    """The validation people: ``val_fraction`` of them, to within one person per stratum and overall.

    People are dealt in k-fold's order; the person at slot ``s`` is held out when
    ``floor(s * F)`` steps up, i.e. ``floor(s F) > floor((s - 1) F)`` with ``F`` as an exact
    fraction. For ``F = 1/k`` that is ``s % k == 0``: exactly fold 0 of ``kfold_people(k)``, so
    splits made with 0.5, 0.25, 0.2, 0.1 ... are what they always were.
    """
    if not 0 < val_fraction < 1:
        raise ValueError(f"val fraction must be in (0, 1), got {val_fraction}")
    order = _dealt_people(samples, seed, age_bins)
    if len(order) < 2:
        raise ValueError(f"a holdout split needs at least 2 people, got {len(order)}")
    f = Fraction(val_fraction).limit_denominator(10_000)
    val = {p for s, p in enumerate(order) if math.floor(s * f) > math.floor((s - 1) * f)}
    if len(val) == len(order):   # F close to 1 on very few people: keep one person to train on
        val.discard(order[-1])
    return val


def train_val_split(samples: list[Sample], val_fraction: float = 0.2, seed: int = 0,
                    age_bins=labels.DEFAULT_AGE_BINS) -> tuple[list[int], list[int]]:
    """Person-level stratified holdout: (train_idx, val_idx) with ``val_fraction`` of the people in val
    (see :func:`holdout_people`)."""
    return indices_for_people(samples, holdout_people(samples, val_fraction, seed, age_bins))


def indices_for_people(samples: list[Sample], val_people) -> tuple[list[int], list[int]]:
    """(train_idx, val_idx): the samples of ``val_people`` in val, all others in train."""
    val_people = set(val_people)
    val = [i for i, s in enumerate(samples) if s.person in val_people]
    train = [i for i, s in enumerate(samples) if s.person not in val_people]
    return train, val
