"""serving.uploads: each uploaded file's limits and 4xx reason, and the BentoML behaviour that makes
the routes decode photos themselves."""
from __future__ import annotations

import asyncio
import io

import numpy as np
import pytest
from PIL import Image
import tiny_service
from tiny_service import png
from maskdata.preprocess import ImageError, ImageTooLarge
from serving.errors import BadRequest, PayloadTooLarge
from serving.uploads import decode_upload, decode_uploads


def test_bentoml_answers_a_non_image_for_a_pil_parameter_with_500():
    """Why the routes take Path and decode in serving/uploads.py: when this fails, BentoML refuses a
    non-image with a 4xx itself."""
    good, bad = tiny_service.facts()["photo_good"], tiny_service.facts()["photo_bad"]
    assert good["status"] == 200 and '"size":[8,6]' in good["body"].replace(" ", ""), good
    assert bad["status"] == 500, bad


def _load(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_each_file_is_checked_and_named(tmp_path):
    good, empty, big = tmp_path / "g.png", tmp_path / "e.png", tmp_path / "b.png"
    good.write_bytes(png())
    empty.write_bytes(b"")
    big.write_bytes(b"x" * 101)
    assert decode_upload(_load, "image", good, 10_000).shape == (6, 8, 3)
    with pytest.raises(BadRequest, match=r"^image: empty upload"):
        decode_upload(_load, "image", empty, 10_000)
    with pytest.raises(PayloadTooLarge, match=r"^images\[1\]: file of 101 bytes is over the limit of 100 bytes"):
        asyncio.run(decode_uploads(_load, "images", [good, big], max_bytes=100, max_files=4))
    with pytest.raises(PayloadTooLarge, match="3 files in one request; the limit is 2"):
        asyncio.run(decode_uploads(_load, "images", [good] * 3, max_bytes=10_000, max_files=2))
    with pytest.raises(BadRequest, match="no files in field 'images'"):
        asyncio.run(decode_uploads(_load, "images", [], max_bytes=10_000, max_files=2))


@pytest.mark.parametrize("error, expected", [(ImageError("quota over the limit of patience"), BadRequest),
                                             (ImageTooLarge("3000x2000: too much"), PayloadTooLarge)])
def test_status_comes_from_the_error_type_not_its_words(tmp_path, error, expected):
    """An ImageError whose message says "over the limit" is still a 400; an ImageTooLarge that does
    not say so is still a 413."""
    upload = tmp_path / "a.jpg"
    upload.write_bytes(b"x" * 10)

    def load(_data):
        raise error

    with pytest.raises(expected) as got:
        decode_upload(load, "image", upload, 10_000)
    assert got.value.status == expected.status and str(got.value) == f"image: {error}", got.value
