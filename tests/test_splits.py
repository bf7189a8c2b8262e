"""Person-level splits: disjoint, complete, stratified on gender×age, deterministic by seed."""
from __future__ import annotations

import random
from collections import Counter

import pytest

from maskdata import labels
from maskdata.layout import Sample, read_train_dir
from maskdata.splits import kfold_indices, kfold_people, person_strata, train_val_split

SEEDS = [0, 1, 2, 7, 123]


def _samples(n_people: int = 97, seed: int = 0) -> list[Sample]:
    """Samples of ``n_people`` with a skewed age mix (few >= 60), 7 images each, person order shuffled."""
    rng = random.Random(seed)
    out = []
    for i in range(n_people):
        gender = int(rng.random() < 0.6)
        age = rng.choice([20, 25, 28] * 5 + [35, 50, 58] * 4 + [60, 70])
        person = f"{i:06d}_{labels.GENDER_NAMES[gender]}_Asian_{age}"
        for stem in ("mask1", "mask2", "mask3", "mask4", "mask5", "incorrect_mask", "normal"):
            out.append(Sample(f"/d/{person}/{stem}.jpg", person, f"{i:06d}", gender, "Asian", age,
                              labels.mask_from_filename(stem)))
    rng.shuffle(out)
    return out


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("k", [2, 5])
def test_kfold_people_is_a_stratified_partition(seed, k):
    samples = _samples(97, seed)
    strata = person_strata(samples)
    folds = kfold_people(samples, k, seed=seed)
    assert len(folds) == k
    union = set().union(*folds)
    assert union == set(strata), "every person must be in some fold"
    assert sum(len(f) for f in folds) == len(strata), "no person may be in two folds"
    sizes = [len(f) for f in folds]
    assert max(sizes) - min(sizes) <= 1, f"fold sizes {sizes}"
    for st in set(strata.values()):
        per_fold = [sum(1 for p in f if strata[p] == st) for f in folds]
        assert max(per_fold) - min(per_fold) <= 1, f"stratum {st}: people per fold {per_fold} (seed {seed})"


@pytest.mark.parametrize("seed", SEEDS)
def test_kfold_indices_never_puts_a_person_on_both_sides(seed):
    samples = _samples(60, seed)
    all_idx = set(range(len(samples)))
    val_seen: list[int] = []
    for train, val in kfold_indices(samples, 4, seed=seed):
        train_people = {samples[i].person for i in train}
        val_people = {samples[i].person for i in val}
        assert not train_people & val_people, f"people on both sides: {sorted(train_people & val_people)[:3]}"
        assert set(train) | set(val) == all_idx and not set(train) & set(val)
        assert all(Counter(samples[i].person for i in val)[p] == 7 for p in val_people), "a person was split"
        val_seen += val
    assert sorted(val_seen) == sorted(all_idx), "every sample must be validated exactly once over the folds"


@pytest.mark.parametrize("seed", SEEDS)
def test_splits_are_deterministic_by_seed(seed):
    samples = _samples(80, 3)
    assert kfold_people(samples, 5, seed=seed) == kfold_people(samples, 5, seed=seed)
    assert kfold_people(list(reversed(samples)), 5, seed=seed) == kfold_people(samples, 5, seed=seed), \
        "the split must not depend on sample order"
    assert train_val_split(samples, 0.2, seed=seed) == train_val_split(samples, 0.2, seed=seed)


def test_different_seeds_give_different_splits():
    samples = _samples(80, 3)
    splits = {tuple(sorted(kfold_people(samples, 5, seed=s)[0])) for s in SEEDS}
    assert len(splits) == len(SEEDS), "each seed should give its own split"


@pytest.mark.parametrize("seed", SEEDS)
def test_train_val_split_fraction_and_balance(seed):
    samples = _samples(100, seed)
    train, val = train_val_split(samples, 0.2, seed=seed)
    tp, vp = {samples[i].person for i in train}, {samples[i].person for i in val}
    assert not tp & vp
    assert len(vp) == 20 and len(tp) == 80, f"{len(vp)} validation people of 100 at fraction 0.2"
    strata = person_strata(samples)
    for st in set(strata.values()):
        total = sum(1 for s in strata.values() if s == st)
        in_val = sum(1 for p in vp if strata[p] == st)
        assert abs(in_val - total / 5) <= 1, f"stratum {st}: {in_val} of {total} in validation"


def test_custom_age_bins_change_the_strata():
    samples = _samples(30, 0)
    default = person_strata(samples)
    shifted = person_strata(samples, age_bins=(26, 55))
    assert default != shifted
    assert all(0 <= v < 6 for v in shifted.values())


def test_split_of_generated_data(synth_root):
    samples, _ = read_train_dir(synth_root / "train")
    folds = kfold_people(samples, 3, seed=0)
    assert sum(len(f) for f in folds) == 24 and set().union(*folds) == {s.person for s in samples}


def test_bad_arguments():
    samples = _samples(5, 0)
    with pytest.raises(ValueError, match="k >= 2"):
        kfold_people(samples, 1)
    with pytest.raises(ValueError, match="only 5 people"):
        kfold_people(samples, 6)
    for frac in (0, 1, 1.5, -0.1):
        with pytest.raises(ValueError, match="val fraction"):
            train_val_split(samples, frac)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("k", [2, 3, 4, 5, 10])
def test_holdout_with_integer_inverse_fraction_is_todays_split(seed, k):
    """Where 1/F is an integer k the holdout is fold 0 of k-fold, as before, so published figures stay valid."""
    samples = _samples(97, seed)
    assert train_val_split(samples, 1 / k, seed) == kfold_indices(samples, k, seed)[0], f"F=1/{k} moved people"


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("fraction", [0.4, 0.3, 0.15, 0.65, 0.9, 0.05])
def test_holdout_fraction_is_exact_to_one_person_per_stratum(seed, fraction):
    samples = _samples(97, seed)
    strata = person_strata(samples)
    train_idx, val_idx = train_val_split(samples, fraction, seed)
    val_people = {samples[i].person for i in val_idx}
    assert not val_people & {samples[i].person for i in train_idx}, "a person on both sides"
    assert abs(len(val_people) - fraction * len(strata)) <= 1, \
        f"F={fraction}: {len(val_people)} of {len(strata)} people held out, expected {fraction * len(strata):.1f}"
    for st in set(strata.values()):
        members = [p for p, s in strata.items() if s == st]
        held = sum(p in val_people for p in members)
        assert abs(held - fraction * len(members)) <= 1, \
            f"F={fraction}, stratum {st}: {held} of {len(members)} held out"
