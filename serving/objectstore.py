"""Images and outputs on an object store (``s3://…``) for ``mask-submit``, both engines.

One layer, pyarrow's filesystems, because it is what Ray Data itself reads and writes with: the
local engine's decode workers, the Ray actors and Ray Data's ``write_parquet`` all get the same
:class:`Store`. pyarrow comes with ``ray[data]`` and is pinned in the ``s3`` extra for the local engine.

Where the store is and who may read it follow the AWS conventions boto and pyarrow users know:
``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN`` / ``AWS_PROFILE`` (or an
instance role) for credentials, ``AWS_REGION`` / ``AWS_DEFAULT_REGION`` for the region, and
``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` for an S3-compatible store (MinIO, Ceph, moto…).
The endpoint is read here and handed to pyarrow explicitly, so it holds whatever the pyarrow
release; ``http://`` endpoints switch pyarrow to plain HTTP. Other pyarrow schemes (``gs://``,
``abfs://``, ``hdfs://``) go through ``pyarrow.fs.FileSystem.from_uri`` unchanged.

The pre-flight checks match the local folder's: every ImageID must name a key *under* the prefix
(no ``..``, ``.`` or empty path segments, which S3 would take literally and a folder would not), and
one recursive listing of the prefix finds every missing image before any byte is read.

Uploads are all-or-nothing: the bytes go to a temporary key beside the destination, which is then
copied over it in one server-side step (S3 publishes an object only complete), and the temporary
key is removed; a failed upload leaves at most the temporary key, never a partial destination.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import PurePosixPath
from urllib.parse import urlparse

from maskdata.extras import install_hint

INSTALL_HINT = install_hint("s3", "an object-store URI (s3://...)", ["pyarrow"])
REMOTE_SCHEMES = ("s3", "gs", "gcs", "abfs", "abfss", "hdfs", "viewfs")
ENDPOINT_ENV = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")   # the service-specific one wins, as in boto3
REGION_ENV = ("AWS_REGION", "AWS_DEFAULT_REGION")


def scheme_of(location: str | os.PathLike) -> str:
    """``"s3"`` for ``s3://b/p``; ``""`` for a plain path; ``"file"`` for ``file://``."""
    text = str(location)
    return urlparse(text).scheme.lower() if "://" in text else ""


def is_remote(location: str | os.PathLike | None) -> bool:
    """True for a URI of a store (anything but a plain path or ``file://``)."""
    return location is not None and scheme_of(location) not in ("", "file")


def local_path(location: str | os.PathLike) -> str:
    """The path of a plain path or ``file://`` URI."""
    return urlparse(str(location)).path if scheme_of(location) == "file" else str(location)


def _pyarrow_fs():
    try:
        import pyarrow.fs
    except ImportError:
        raise ValueError(INSTALL_HINT) from None
    return pyarrow.fs


def _first_env(names: tuple[str, ...]) -> str | None:
    return next((os.environ[n] for n in names if os.environ.get(n)), None)


def s3_options_from_env() -> dict:
    """``pyarrow.fs.S3FileSystem`` keyword arguments taken from the AWS environment variables
    (endpoint and region only; credentials stay with pyarrow's own AWS credential chain)."""
    options: dict = {}
    endpoint = _first_env(ENDPOINT_ENV)
    if endpoint:
        parsed = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
        if not parsed.hostname:
            raise ValueError(f"AWS endpoint {endpoint!r} has no host; expected e.g. http://127.0.0.1:9000")
        options["endpoint_override"] = parsed.netloc
        options["scheme"] = parsed.scheme
    region = _first_env(REGION_ENV)
    if region:
        options["region"] = region
    return options


@dataclass(frozen=True)
class Store:
    """A prefix on an object store: ``uri`` as the user gave it, ``root`` = ``bucket/prefix``.

    Pickles as its URI only (workers rebuild the filesystem from their own environment, so no
    credentials travel with a Ray task); :attr:`fs` is created on first use in each process.
    """
    uri: str
    root: str

    @classmethod
    def open(cls, uri: str) -> "Store":
        """Parse and check ``uri`` (scheme, bucket); ValueError with one line when it cannot be used."""
        uri = str(uri)
        scheme = scheme_of(uri)
        if scheme not in REMOTE_SCHEMES:
            raise ValueError(f"cannot open {uri!r}: unknown scheme {scheme!r} "
                             f"(object stores: {', '.join(REMOTE_SCHEMES)}; or a local path / file://)")
        parsed = urlparse(uri)
        if scheme == "s3":
            if not parsed.netloc:
                raise ValueError(f"cannot open {uri!r}: no bucket (expected s3://BUCKET/PREFIX)")
            root = f"{parsed.netloc}/{parsed.path.strip('/')}".rstrip("/")
        else:
            root = _filesystem(uri)[1].rstrip("/")
        return cls(uri, root)

    @property
    def fs(self):
        cached = self.__dict__.get("_fs")
        if cached is None:
            cached = _filesystem(self.uri)[0]
            object.__setattr__(self, "_fs", cached)
        return cached

    def __getstate__(self):
        return {"uri": self.uri, "root": self.root}

    def __setstate__(self, state):
        object.__setattr__(self, "uri", state["uri"])
        object.__setattr__(self, "root", state["root"])

    def path(self, key: str) -> str:
        """``bucket/prefix/key`` (the form pyarrow filesystems take)."""
        return f"{self.root}/{key}" if self.root else key

    def child(self, key: str) -> "Store":
        return Store(f"{self.uri.rstrip('/')}/{key}", self.path(key))

    def list_files(self) -> dict[str, bool]:
        """{key relative to the prefix: is a regular object} for everything under the prefix."""
        fs = _pyarrow_fs()
        try:
            infos = self.fs.get_file_info(fs.FileSelector(self.root, recursive=True, allow_not_found=True))
        except OSError as e:
            raise ValueError(f"cannot list {self.uri}: {_one_line(e)}") from None
        start = len(self.root) + 1 if self.root else 0
        return {i.path[start:]: i.type == fs.FileType.File for i in infos}

    def exists(self, key: str = "") -> bool:
        info = self.fs.get_file_info(self.path(key) if key else self.root)
        return info.type != _pyarrow_fs().FileType.NotFound

    def read_bytes(self, key: str) -> bytes:
        return read_bytes(self.fs, self.path(key))

    def upload_bytes(self, key: str, data: bytes) -> None:
        """Put ``data`` at ``key``, complete or not at all (see the module docstring)."""
        final = self.path(key)
        tmp = f"{final}.tmp-{os.getpid()}"
        try:
            with self.fs.open_output_stream(tmp) as f:
                f.write(data)
            self.fs.copy_file(tmp, final)
        except OSError as e:
            raise ValueError(f"cannot upload {self.uri.rstrip('/')}/{key}: {_one_line(e)}") from None
        finally:
            try:
                self.fs.delete_file(tmp)
            except OSError:
                pass


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _filesystem(uri: str):
    """(pyarrow filesystem, path) for a store URI; one-line ValueError when pyarrow cannot open it."""
    fs = _pyarrow_fs()
    try:
        if scheme_of(uri) == "s3":
            parsed = urlparse(uri)
            return fs.S3FileSystem(**s3_options_from_env()), f"{parsed.netloc}/{parsed.path.strip('/')}"
        return fs.FileSystem.from_uri(uri)
    except Exception as e:   # ArrowInvalid / ArrowNotImplementedError: unknown scheme, missing credentials
        raise ValueError(f"cannot open {uri!r}: {_one_line(e)}") from None


def read_bytes(fs, path: str) -> bytes:
    """The whole object; OSError when it vanished since the check (an error row, as a local file)."""
    with fs.open_input_file(path) as f:
        return f.read()


def check_key(image_id: str) -> str:
    """An ImageID that names exactly one key under the prefix, or ValueError.

    A folder resolves ``a/./b`` and ``a//b`` to ``a/b``; S3 takes them literally as other keys, so
    they are refused here rather than looked up as something the listing will never show.
    """
    parts = image_id.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"ImageID {image_id!r} has an empty, '.' or '..' path segment; on an object store it "
                         f"must be a plain key under the prefix")
    return str(PurePosixPath(*parts))


def locate_objects(image_ids: list[str], store: Store) -> tuple[list[str], dict[str, str]]:
    """Paths on ``store.fs`` for the ImageIDs and {ImageID: reason} for the missing ones.

    One recursive listing of the prefix (a few LIST requests per thousand objects) rather than a
    request per image. ValueError when an ImageID would leave the prefix.
    """
    bad = []
    for image_id in image_ids:
        try:
            check_key(image_id)
        except ValueError as e:
            bad.append(str(e))
    if bad:
        raise ValueError(f"{len(bad)} ImageID(s) do not name a key under {store.uri}: {'; '.join(bad[:3])}")
    listed = store.list_files()
    missing = {}
    for image_id in image_ids:
        if image_id not in listed:
            missing[image_id] = "missing image file"
        elif not listed[image_id]:
            missing[image_id] = "not a regular file"
    return [store.path(i) for i in image_ids], missing


class ReadThenDecode:
    """``Preprocess`` look-alike for :func:`serving.decode_pool.decode_batch`: the bytes from the store,
    then the model's own decode. Picklable (process decode workers, Ray actors)."""

    def __init__(self, preprocess, store: Store):
        self.preprocess, self.store = preprocess, store
        self.height, self.width = preprocess.height, preprocess.width

    def __call__(self, path: str, max_pixels: int):
        return self.preprocess(read_bytes(self.store.fs, path), max_pixels=max_pixels)


def reader_for(images: str, preprocess):
    """What decodes the plan's paths: ``preprocess`` itself for local files, else :class:`ReadThenDecode`."""
    return ReadThenDecode(preprocess, Store.open(str(images))) if is_remote(images) else preprocess
