"""Images and outputs named by URI (``s3://``, ``gs://``, ``abfs://``, ``file://``) for the Ray engine.

The same pyarrow filesystems Ray Data itself reads and writes with; a local folder (or ``file://``)
stays a plain path so the local checks (:func:`serving.job.locate_images`) apply to it unchanged.
"""
from __future__ import annotations

from urllib.parse import urlparse

REMOTE_SCHEMES = ("s3", "gs", "gcs", "abfs", "abfss", "hdfs", "viewfs")


def image_filesystem(images: str):
    """``(pyarrow filesystem, root)`` for a remote/``file://`` URI; ``(None, local path)`` for a folder."""
    scheme = urlparse(images).scheme if "://" in images else ""
    if not scheme:
        return None, images
    if scheme == "file":
        return None, urlparse(images).path
    import pyarrow.fs

    try:
        return pyarrow.fs.FileSystem.from_uri(images)
    except Exception as e:   # ArrowInvalid / ArrowNotImplementedError for unknown schemes, missing credentials
        raise ValueError(f"cannot open images URI {images!r}: {str(e).splitlines()[0]} "
                         f"(pyarrow filesystems: {', '.join(REMOTE_SCHEMES)}, file://)") from None


def locate_remote(image_ids: list[str], fs, root: str) -> tuple[list[str], dict[str, str]]:
    """Paths on ``fs`` and {ImageID: reason} for the missing ones (one listing call)."""
    import pyarrow.fs

    paths = [f"{root.rstrip('/')}/{i}" for i in image_ids]
    missing = {}
    for image_id, info in zip(image_ids, fs.get_file_info(paths)):
        if info.type == pyarrow.fs.FileType.NotFound:
            missing[image_id] = "missing image file"
        elif info.type != pyarrow.fs.FileType.File:
            missing[image_id] = "not a regular file"
    return paths, missing


class ReadThenDecode:
    """``Preprocess`` look-alike for :func:`serving.pipeline.decode_batch`: read the bytes from ``fs``,
    then decode them with the model's own preprocessing."""

    def __init__(self, preprocess, fs):
        self.preprocess, self.fs = preprocess, fs
        self.height, self.width = preprocess.height, preprocess.width

    def __call__(self, path: str, max_pixels: int):
        with self.fs.open_input_file(path) as f:   # OSError -> an error row, as a vanished local file
            data = f.read()
        return self.preprocess(data, max_pixels=max_pixels)
