"""Small I/O helpers every stage shares: atomic writes and CSV reading that tolerates what
spreadsheets do to files (UTF-8 BOM, CRLF, quoted fields, extra columns)."""
from __future__ import annotations

import contextlib
import csv
import io
import os
import tempfile
from pathlib import Path
from typing import Iterator

# mkstemp creates files readable by the owner only; outputs should get the usual umask-based mode
# (a model written here is often read by a service running as another user).
_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    A crash or Ctrl-C leaves the old file (or nothing), never a half-written one.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"output path {path} is a directory; expected a file path")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise FileNotFoundError(f"output folder {parent} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or ".tmp", dir=parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_UMASK)
        os.replace(tmp_path, path)
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
