"""Person-level splits stratified on the person's gender×age class (SPEC §2).

Each person carries one stratum (gender×age), so stratified *group* k-fold reduces to stratified
k-fold over people: within each stratum, people are shuffled by seed and dealt round-robin to
folds, with the deal continuing across strata so fold sizes stay within one person of each other
(the semantics of scikit-learn's StratifiedGroupKFold, without the dependency).
"""
from __future__ import annotations

import random

from maskdata import labels
from maskdata.layout import Sample, people


def person_strata(samples: list[Sample], age_bins=labels.DEFAULT_AGE_BINS) -> dict[str, int]:
    """person → gender×age stratum (0..5)."""
    out = {}
    for person, rows in people(samples).items():
        s = rows[0]
        out[person] = s.gender * 3 + labels.age_group(s.age, age_bins)
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


def train_val_split(samples: list[Sample], val_fraction: float = 0.2, seed: int = 0,
                    age_bins=labels.DEFAULT_AGE_BINS) -> tuple[list[int], list[int]]:
    """Person-level stratified holdout: (train_idx, val_idx) with about ``val_fraction`` of people in val."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"val fraction must be in (0, 1), got {val_fraction}")
    k = max(2, round(1 / val_fraction))
    return kfold_indices(samples, k, seed, age_bins)[0]
