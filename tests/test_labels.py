"""Label schema: the 18 classes, their names, age groups and file name → mask state."""
from __future__ import annotations

import pytest

from maskdata import labels


def test_all_18_classes_round_trip_with_the_spec_formula():
    seen = set()
    for mask in range(3):
        for gender in range(2):
            for age in range(3):
                cls = labels.encode(mask, gender, age)
                assert cls == mask * 6 + gender * 3 + age, f"encode({mask},{gender},{age}) = {cls}"
                assert labels.decode(cls) == (mask, gender, age), f"decode({cls}) = {labels.decode(cls)}"
                seen.add(cls)
    assert seen == set(range(18)), f"classes covered: {sorted(seen)}"
    assert labels.NUM_CLASSES == 18


@pytest.mark.parametrize("args", [(3, 0, 0), (-1, 0, 0), (0, 2, 0), (0, 0, 3), (0, -1, 0)])
def test_encode_rejects_out_of_range(args):
    with pytest.raises(ValueError, match="out of range"):
        labels.encode(*args)


@pytest.mark.parametrize("cls", [-1, 18, 100])
def test_decode_rejects_out_of_range(cls):
    with pytest.raises(ValueError, match="expected 0..17"):
        labels.decode(cls)


def test_label_table_names_follow_the_spec():
    table = labels.label_table()
    assert [r.index for r in table] == list(range(18))
    assert table[0].name == "wear/male/<30"
    assert table[5].name == "wear/female/>=60"
    assert table[7].name == "incorrect/male/30-59"
    assert table[17].name == "not_wear/female/>=60"
    assert len({r.name for r in table}) == 18, "class names must be unique"
    dicts = labels.label_table_dicts()
    assert dicts[10] == {"index": 10, "mask": "incorrect", "gender": "female", "age": "30-59"}, dicts[10]


@pytest.mark.parametrize("age,group", [(0, 0), (18, 0), (29, 0), (29.9, 0), (30, 1), (45, 1), (59, 1),
                                       (60, 2), (61, 2), (100, 2)])
def test_default_age_groups(age, group):
    assert labels.age_group(age) == group, f"age {age} -> {labels.age_group(age)}, expected {group}"


def test_configurable_age_thresholds():
    assert labels.age_group(57, (30, 58)) == 1
    assert labels.age_group(58, (30, 58)) == 2
    assert labels.age_group(25, (25, 50)) == 1
    with pytest.raises(ValueError, match="increasing"):
        labels.age_group(40, (60, 30))


def test_parse_age_bins():
    assert labels.parse_age_bins("30,60") == (30, 60)
    assert labels.parse_age_bins(" 25 , 58 ") == (25, 58)
    for bad in ("30", "30,60,90", "a,b", "60,30", "0,30", ""):
        with pytest.raises(ValueError, match="age bins"):
            labels.parse_age_bins(bad)


@pytest.mark.parametrize("text,index", [("male", 0), ("female", 1), ("Male", 0), (" FEMALE ", 1), ("m", 0), ("f", 1)])
def test_gender_index(text, index):
    assert labels.gender_index(text) == index


def test_gender_index_rejects_unknown():
    with pytest.raises(ValueError, match="unknown gender 'x'"):
        labels.gender_index("x")


@pytest.mark.parametrize("name,mask", [
    ("mask1.jpg", 0), ("mask2.jpeg", 0), ("mask3.png", 0), ("mask4.JPG", 0), ("mask5.Jpeg", 0),
    ("mask1.PNG", 0), ("MASK2.jpg", 0), ("mask3", 0),
    ("incorrect_mask.jpg", 1), ("incorrect_mask.PNG", 1), ("incorrect_mask.jpeg", 1), ("Incorrect_Mask.JPG", 1),
    ("normal.jpg", 2), ("normal.png", 2), ("normal.JPEG", 2), ("normal", 2),
    ("images/000001_female_Asian_45/mask5.jpg", 0), ("a/b/normal.png", 2), ("x/incorrect_mask.jpg", 1),
])
def test_mask_from_filename_quirk_forms(name, mask):
    assert labels.mask_from_filename(name) == mask, f"{name} -> {labels.mask_from_filename(name)}, expected {mask}"


@pytest.mark.parametrize("name", ["mask6.jpg", "mask0.jpg", "mask.jpg", "._mask1.jpg", ".DS_Store", "normal2.jpg",
                                  "incorrect.jpg", "Thumbs.db", "mask12.jpg", "notes.txt"])
def test_mask_from_filename_rejects_other_names(name):
    assert labels.mask_from_filename(name) is None, f"{name} should not map to a mask state"


def test_head_sizes_match_names():
    assert labels.HEAD_SIZES == {"mask": 3, "gender": 2, "age": 3}
    assert labels.DEFAULT_AGE_BINS == (30, 60)
