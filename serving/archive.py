"""Safe extraction of the images of a submission job from an uploaded zip or tar archive.

The ``/submission`` task receives an archive from a client we do not trust, so extraction never
calls ``extractall``: every member name is checked first, and the archive is refused as a whole
(``ValueError`` with the reason) when any member

- has an absolute name (``/etc/x``, ``C:\\x``) or a ``..`` component (zip-slip),
- is a symlink, hardlink, device or FIFO (the usual ways to write or read outside the folder),
- is encrypted, or the archive holds more than ``max_members`` members,

and when the members to read add up to more than ``max_total_bytes`` uncompressed (zip bombs; a
tar's whole stream counts, since reading it decompresses everything before the last member).
Limits come from the service's settings (``Settings.archive_limits``: ``MASK_MAX_UPLOAD_BYTES`` per
image, ``MASK_MAX_ARCHIVE_TOTAL_BYTES``, ``MASK_MAX_ARCHIVE_MEMBERS``); a limit crossed raises
:class:`ArchiveTooLarge` (HTTP 413), any other refusal :class:`ArchiveError` (400).
Only the members named in the CSV are written, each to a path this module builds itself, so
nothing else in the archive ever touches the disk. Usage::

    from serving.archive import extract_images
    found = extract_images("images.zip", {"a.jpg", "b.jpg"}, dest_dir, settings.archive_limits)   # {"a.jpg": dest/a.jpg, ...}
"""
from __future__ import annotations

import logging
import lzma
import shutil
import stat
import tarfile
import tempfile
import zipfile
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Iterable

log = logging.getLogger(__name__)

_CHUNK = 1 << 20


class ArchiveError(ValueError):
    """An archive refused as unsafe or unreadable; the message says why."""


class ArchiveTooLarge(ArchiveError):
    """An archive over one of its :class:`ArchiveLimits`."""


NOT_AN_ARCHIVE = "the images upload is neither a zip nor a tar archive (.zip, .tar, .tar.gz, .tgz, .tar.bz2, .tar.xz)"


@dataclass(frozen=True)
class ArchiveLimits:
    """What one extraction may read; callers pass ``Settings.archive_limits`` (the one source of the
    values: serving/settings.py), so this module holds no defaults of its own."""

    max_members: int
    max_total_bytes: int      # uncompressed bytes read from the archive
    max_member_bytes: int     # one image file


def member_name(raw: str) -> str:
    """A member name as a safe relative POSIX path, or ``ValueError`` saying how it escapes."""
    name = raw.replace("\\", "/")
    if not name or "\x00" in name:
        raise ArchiveError(f"archive member {raw!r} has an empty or invalid name")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise ArchiveError(f"archive member {raw!r} has an absolute name; it would escape the extraction folder")
    parts = [p for p in PurePosixPath(name).parts if p not in ("", ".")]
    if ".." in parts:
        raise ArchiveError(f"archive member {raw!r} contains '..'; it would escape the extraction folder")
    return "/".join(parts)


def _choose_prefix(files: Iterable[str], wanted: set[str]) -> str:
    """The folder inside the archive that holds the images: '' or e.g. 'eval/images/'.

    Clients zip either the images themselves or a folder around them; the prefix that matches the
    most CSV names wins (the shortest on a tie), so ``images/a.jpg`` serves ImageID ``a.jpg``.
    """
    hits: Counter = Counter()
    for name in files:
        parts = name.split("/")
        for i in range(len(parts)):
            if "/".join(parts[i:]) in wanted:
                hits["/".join(parts[:i]) + ("/" if i else "")] += 1
    if not hits:
        return ""
    return min(hits, key=lambda p: (-hits[p], len(p)))


def _copy(src: IO[bytes], dest: Path, budget: list[int], limits: ArchiveLimits, name: str) -> None:
    written = 0
    with open(dest, "wb") as out:
        while chunk := src.read(_CHUNK):
            written += len(chunk)
            budget[0] -= len(chunk)
            if written > limits.max_member_bytes:
                raise ArchiveTooLarge(f"archive member {name!r} is over the limit of {limits.max_member_bytes} bytes")
            if budget[0] < 0:
                raise ArchiveTooLarge(f"archive holds more than {limits.max_total_bytes} uncompressed bytes")
            out.write(chunk)


def _target(dest: Path, image_id: str) -> Path:
    path = dest.joinpath(*image_id.split("/"))
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _zip_plan(zf: zipfile.ZipFile, wanted: set[str], limits: ArchiveLimits) -> dict[str, zipfile.ZipInfo]:
    """{ImageID: member} of the wanted images in the zip, every member's name and kind checked and
    the declared sizes held to the limits: all a zip's refusals that need no decompression."""
    infos = zf.infolist()
    if len(infos) > limits.max_members:
        raise ArchiveTooLarge(f"archive has {len(infos)} members, over the limit of {limits.max_members}")
    files: dict[str, zipfile.ZipInfo] = {}
    for info in infos:
        name = member_name(info.filename)
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            raise ArchiveError(f"archive member {info.filename!r} is a symlink; links are not accepted")
        if info.is_dir() or not name:
            continue
        if info.flag_bits & 0x1:
            raise ArchiveError(f"archive member {info.filename!r} is encrypted")
        files[name] = info
    prefix = _choose_prefix(files, wanted)
    chosen = {w: files[prefix + w] for w in wanted if prefix + w in files}
    declared = sum(i.file_size for i in chosen.values())
    if declared > limits.max_total_bytes:
        raise ArchiveTooLarge(f"the archive's images add up to {declared} uncompressed bytes, over the limit of "
                              f"{limits.max_total_bytes}")
    return chosen


def _open_zip(source: Path | IO[bytes]) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(source)
    except (zipfile.BadZipFile, OSError) as e:
        raise ArchiveError(f"not a readable zip archive: {e}") from None


def _extract_zip(path: Path, wanted: set[str], dest: Path, limits: ArchiveLimits) -> dict[str, Path]:
    with _open_zip(path) as zf:
        chosen = _zip_plan(zf, wanted, limits)
        budget = [limits.max_total_bytes]
        out: dict[str, Path] = {}
        for image_id, info in chosen.items():
            target = _target(dest, image_id)
            try:
                with zf.open(info) as src:
                    _copy(src, target, budget, limits, info.filename)
            except (zipfile.BadZipFile, OSError, EOFError) as e:  # CRC errors, truncated data, bad compression
                raise ArchiveError(f"archive member {info.filename!r} is corrupt: {e}") from None
            out[image_id] = target
        return out


def _extract_tar(path: Path, wanted: set[str], dest: Path, limits: ArchiveLimits) -> dict[str, Path]:
    try:
        tf = tarfile.open(path, mode="r:*")
    except (tarfile.TarError, OSError) as e:
        raise ArchiveError(f"not a readable tar archive: {e}") from None
    # A tar has no index: one streaming pass checks every member and keeps the ones named in the
    # CSV under every folder they could sit in; the prefix is chosen afterwards.
    staged: dict[str, Path] = {}
    members = 0
    budget = [limits.max_total_bytes]
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=dest))   # random name: no ImageID can collide
    try:
        with tf:
            while True:
                try:
                    member = tf.next()
                except tarfile.TarError as e:
                    raise ArchiveError(f"corrupt tar archive: {e}") from None
                if member is None:
                    break
                members += 1
                if members > limits.max_members:
                    raise ArchiveTooLarge(f"archive has more than {limits.max_members} members")
                name = member_name(member.name)
                if member.issym() or member.islnk():
                    raise ArchiveError(f"archive member {member.name!r} is a "
                                     f"{'symlink' if member.issym() else 'hardlink'}; links are not accepted")
                if member.isdir() or not name:
                    continue
                if not member.isfile():
                    raise ArchiveError(f"archive member {member.name!r} is a device or FIFO; only files are accepted")
                budget[0] -= member.size
                if budget[0] < 0:
                    raise ArchiveTooLarge(f"archive holds more than {limits.max_total_bytes} uncompressed bytes")
                if not any("/".join(name.split("/")[i:]) in wanted for i in range(name.count("/") + 1)):
                    continue
                if member.size > limits.max_member_bytes:
                    raise ArchiveTooLarge(f"archive member {member.name!r} is over the limit of "
                                     f"{limits.max_member_bytes} bytes")
                target = staging / f"{len(staged)}.bin"
                src = tf.extractfile(member)
                try:
                    _copy(src, target, [member.size], limits, member.name)
                except (tarfile.TarError, OSError, EOFError) as e:
                    raise ArchiveError(f"archive member {member.name!r} is corrupt: {e}") from None
                staged[name] = target
        prefix = _choose_prefix(staged, wanted)
        out: dict[str, Path] = {}
        for image_id in wanted:
            if prefix + image_id in staged:
                target = _target(dest, image_id)
                staged[prefix + image_id].replace(target)
                out[image_id] = target
        return out
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def extract_images(archive: str | Path, wanted: Iterable[str], dest: str | Path,
                   limits: ArchiveLimits) -> dict[str, Path]:
    """Extract the members named ``wanted`` (ImageIDs) into ``dest``; return {ImageID: path}.

    The result is keyed by the ImageIDs exactly as given (``./a.jpg`` finds member ``a.jpg``: the
    lookup uses the normalised name, the answer the caller's). ImageIDs absent from the archive
    are simply not in the result (the caller reports them as missing images). Raises
    :class:`ArchiveError` (a ``ValueError``) for an unsafe, oversized or unreadable archive.
    """
    archive, dest = Path(archive), Path(dest)
    if not archive.is_file():
        raise FileNotFoundError(f"archive not found: {archive}")
    wanted = list(wanted)
    normalised = {w: member_name(w) for w in wanted}
    wanted_set = set(normalised.values())
    dest.mkdir(parents=True, exist_ok=True)
    try:
        if zipfile.is_zipfile(archive):
            found = _extract_zip(archive, wanted_set, dest, limits)
        elif tarfile.is_tarfile(archive):
            found = _extract_tar(archive, wanted_set, dest, limits)
        else:
            found = None
    except (OSError, EOFError, zlib.error, lzma.LZMAError, tarfile.TarError, zipfile.BadZipFile) as e:
        # a truncated or damaged compressed stream surfaces as any of these, mid-way through reading
        raise ArchiveError(f"corrupt archive: {e}") from None
    if found is None:
        raise ArchiveError(NOT_AN_ARCHIVE)
    log.info("extracted %d of %d images from %s", len(found), len(wanted_set), archive.name)
    return {raw: found[name] for raw, name in normalised.items() if name in found}


def check_archive(source: IO[bytes], wanted: Iterable[str], limits: ArchiveLimits) -> set[str] | None:
    """What can be refused without extracting, for a request to answer before it queues a job: not
    a zip or tar, and for a zip every member check and limit :func:`extract_images` applies before
    it reads a byte. Returns the ``wanted`` ImageIDs the zip holds (None for a tar, whose members
    are only known by reading its whole stream). ``source`` is a seekable file, left at its start.
    """
    normalised = {w: member_name(w) for w in wanted}
    try:
        if zipfile.is_zipfile(source):
            source.seek(0)
            with _open_zip(source) as zf:
                chosen = _zip_plan(zf, set(normalised.values()), limits)
            return {raw for raw, name in normalised.items() if name in chosen}
        source.seek(0)
        if tarfile.is_tarfile(source):   # the test extract_images makes
            return None
        raise ArchiveError(NOT_AN_ARCHIVE)
    finally:
        source.seek(0)
