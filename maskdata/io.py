"""Small I/O helpers every stage shares: durable atomic writes, advisory file locks, and CSV reading
that tolerates what spreadsheets do to files (UTF-8 BOM, CRLF, quoted fields, extra columns)."""
from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import os
import secrets
from pathlib import Path
from typing import IO, Iterator

try:  # POSIX advisory locks (flock); on a system without them the lock helpers lock nothing
    import fcntl
except ImportError:  # pragma: no cover - not on Linux
    fcntl = None
LOCKS = fcntl is not None

# Outputs get the usual umask-based mode, not mkstemp's owner-only 0600 (a model written here is
# often read by a service running as another user): the temporary file is created with this mode
# and the kernel applies the process's umask, which is never changed here.
DEFAULT_MODE = 0o666


def cpu_workers(*, at_least: int = 0, at_most: int | None = None, reserve: int = 0, share: float = 1.0) -> int:
    """How many workers to start on this machine: ``share`` of its CPUs less ``reserve``, clamped to
    ``[at_least, at_most]``; the one rule behind every "default workers" of the project."""
    n = int((os.cpu_count() or 1) * share) - reserve
    return max(at_least, n if at_most is None else min(at_most, n))


def _create_temp(parent: Path, name: str, suffix: str, mode: int) -> Path:
    for _ in range(100):
        tmp = parent / f".{name}.{secrets.token_hex(4)}{suffix}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(f"cannot create a temporary file beside {parent / name}")


def fsync_path(path: Path, directory: bool = False) -> None:
    """Flush ``path`` (a file, or with ``directory`` a folder's entries) to the disk."""
    if directory and os.name == "nt":  # Windows cannot open a folder for fsync; NTFS journals renames
        return
    fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None, mode: int = DEFAULT_MODE) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    A crash or Ctrl-C leaves the old file (or nothing), never a half-written one; the temporary file
    is fsynced before the rename and the folder after it, so a power loss does not either. The file
    gets ``mode`` less the process umask.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"output path {path} is a directory; expected a file path")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise FileNotFoundError(f"output folder {parent} does not exist")
    tmp_path = _create_temp(parent, path.name, suffix or ".tmp", mode)
    try:
        yield tmp_path
        fsync_path(tmp_path)
        os.replace(tmp_path, path)
        fsync_path(parent, directory=True)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8", newline="")
    return Path(path)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


@contextlib.contextmanager
def locked(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing) for the block, waiting for it.
    The kernel drops it when its holder exits, however it exits."""
    with open(path, "a+b") as handle:
        if fcntl is not None:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        yield


def try_lock(path: str | os.PathLike) -> IO[bytes] | None:
    """An open file holding an exclusive ``flock`` on ``path`` (closing it releases the lock), or
    None at once if another holder has it."""
    handle = open(path, "a+b")
    if fcntl is None:
        return handle
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_csv(source: str | os.PathLike | bytes, required: tuple[str, ...]) -> tuple[list[str], list[dict[str, str]]]:
    """Read a CSV (path or bytes) into (header, rows), checking the ``required`` columns exist.

    Accepts a UTF-8 BOM, CRLF line ends, quoted fields and extra columns; header names are
    stripped of surrounding white space.
    """
    name = "<upload>" if isinstance(source, bytes) else str(source)
    if isinstance(source, bytes):
        raw = source
    else:
        p = Path(source)
        if not p.is_file():
            raise FileNotFoundError(f"CSV file not found: {p}")
        raw = p.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ValueError(f"{name}: not a UTF-8 CSV file") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise ValueError(f"{name}: empty CSV; expected columns {','.join(required)}") from None
    missing = [c for c in required if c not in header]
    if missing:
        raise ValueError(f"{name}: missing column(s) {','.join(missing)}; expected {','.join(required)}, "
                         f"found {','.join(header) or 'none'}")
    rows = []
    for values in reader:
        if not values or all(not v.strip() for v in values):
            continue
        values = values + [""] * (len(header) - len(values))
        rows.append(dict(zip(header, values)))
    return header, rows
