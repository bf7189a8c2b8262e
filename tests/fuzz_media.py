"""Media-type strategies for the schema fuzzer (tests/test_api_contract.py loads this module through
SCHEMATHESIS_HOOKS). The OpenAPI document says what each upload part holds (``encoding.contentType``:
a photo, info.csv, an archive of the photos); these teach schemathesis to make valid ones, so that a
schema-valid request is one the service must accept, and every refusal of one is a finding."""
from __future__ import annotations

import io
import tarfile
import zipfile

import schemathesis
from hypothesis import strategies as st
from PIL import Image

IMAGE_IDS = ("a.jpg", "b/c.jpg", "d.png")   # every archive holds all of them; a CSV names some


def photo(fmt: str, width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), rgb).save(out, format=fmt)
    return out.getvalue()


def _photos(fmt: str) -> st.SearchStrategy[bytes]:
    side = st.integers(min_value=8, max_value=96)
    colour = st.tuples(*[st.integers(min_value=0, max_value=255)] * 3)
    return st.builds(photo, st.just(fmt), side, side, colour)


def _zip() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        for i, name in enumerate(IMAGE_IDS):
            zf.writestr(name, photo("JPEG", 40, 32, (40 * i, 90, 160)))
    return out.getvalue()


def _tar(mode: str) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode=mode) as tf:
        for i, name in enumerate(IMAGE_IDS):
            data = photo("PNG", 32, 40, (200, 40 * i, 10))
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _info_csv(ids: list[str]) -> bytes:
    return ("ImageID,ans\n" + "".join(f"{i},0\n" for i in ids)).encode()


# the photos of POST /predict_batch: a list of files, described in words, not as an encoding (see
# serving/contract.py), so they are the document's only binary strings without a media type
schemathesis.openapi.format("binary", st.one_of(_photos("JPEG"), _photos("PNG")))
schemathesis.openapi.media_type("image/jpeg", _photos("JPEG"))
schemathesis.openapi.media_type("image/png", _photos("PNG"))
schemathesis.openapi.media_type("text/csv", st.lists(st.sampled_from(IMAGE_IDS), min_size=1, unique=True)
                                .map(_info_csv))
schemathesis.openapi.media_type("application/zip", st.just(_zip()))
schemathesis.openapi.media_type("application/x-tar", st.just(_tar("w")))
schemathesis.openapi.media_type("application/gzip", st.just(_tar("w:gz")))

