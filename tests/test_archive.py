"""Archive safety (zip-slip, links, absolute names, bombs, member counts) and the /submission job core
``run_archive_job`` with zip and tar uploads."""
from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import pytest

from maskdata.io import read_csv
from serving.archive import ArchiveLimits, ArchiveTooLarge, check_archive, extract_images, member_name
from serving.settings import Settings
from serving.local_engine import check_inputs, run_archive_job, run_submission

JPEG = b"\xff\xd8\xff\xe0 not really a jpeg"


def make_zip(path: Path, members: dict[str, bytes], symlinks: dict[str, str] | None = None) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (0o120777 << 16)
            zf.writestr(info, target)
    return path


def make_tar(path: Path, members: dict[str, bytes], links: dict[str, tuple[bytes, str]] | None = None,
             mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for name, (kind, target) in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, target
            tf.addfile(info)
    return path


@pytest.fixture(scope="module")
def predictor(onnx_model):
    from serving.predictor import Predictor

    return Predictor(str(onnx_model), backend="onnx")


@pytest.fixture(scope="module")
def job(synth_root):
    """(info.csv bytes, {ImageID: bytes}) of the first 12 synthetic eval images."""
    ev = synth_root / "eval"
    _, rows = read_csv(ev / "info.csv", ("ImageID",))
    rows = rows[:12]
    info = ("ImageID,ans\n" + "".join(f"{r['ImageID']},0\n" for r in rows)).encode()
    return info, {r["ImageID"]: (ev / "images" / r["ImageID"]).read_bytes() for r in rows}


@pytest.mark.parametrize("kind", ["zip", "tar.gz", "tar"])
def test_archive_job_equals_folder_run(kind, job, predictor, tmp_path):
    info, images = job
    # images inside a folder of the archive, plus a file the CSV does not name
    members = {f"eval/images/{k}": v for k, v in images.items()}
    members["eval/images/notes.txt"] = b"not named in the CSV"
    archive = tmp_path / f"images.{kind}"
    if kind == "zip":
        make_zip(archive, members)
    else:
        make_tar(archive, members, mode="w:gz" if kind == "tar.gz" else "w")
    work = tmp_path / "work"
    got = run_archive_job(predictor, info, archive, work)
    # the same job run from a plain folder
    folder = tmp_path / "folder"
    folder.mkdir()
    for k, v in images.items():
        (folder / k).write_bytes(v)
    (tmp_path / "info.csv").write_bytes(info)
    run_submission(predictor, tmp_path / "info.csv", folder, tmp_path / "ref.csv", progress=False)
    assert got == (tmp_path / "ref.csv").read_bytes(), "archive job differs from the folder run"
    assert list(work.iterdir()) == [], f"temporary files left behind: {list(work.rglob('*'))}"


def test_only_named_members_are_written(tmp_path):
    archive = make_zip(tmp_path / "a.zip", {"a.jpg": JPEG, "b.jpg": JPEG, "sub/c.jpg": JPEG, "x.txt": b"x"})
    found = extract_images(archive, ["a.jpg", "sub/c.jpg"], tmp_path / "out", limits())
    assert sorted(found) == ["a.jpg", "sub/c.jpg"], found
    written = sorted(str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert written == ["a.jpg", "sub/c.jpg"], f"unrequested members were written: {written}"


@pytest.mark.parametrize("kind,build,reason", [
    ("zip", lambda p: make_zip(p, {"a.jpg": JPEG, "../evil.jpg": JPEG}), "escape"),
    ("zip", lambda p: make_zip(p, {"a.jpg": JPEG, "/etc/evil.jpg": JPEG}), "absolute"),
    ("zip", lambda p: make_zip(p, {"a.jpg": JPEG, "C:\\evil.jpg": JPEG}), "absolute"),
    ("zip", lambda p: make_zip(p, {"a.jpg": JPEG}, symlinks={"b.jpg": "/etc/passwd"}), "symlink"),
    ("tar", lambda p: make_tar(p, {"a.jpg": JPEG, "x/../../evil.jpg": JPEG}), "escape"),
    ("tar", lambda p: make_tar(p, {"a.jpg": JPEG, "/abs.jpg": JPEG}), "absolute"),
    ("tar", lambda p: make_tar(p, {"a.jpg": JPEG}, links={"b.jpg": (tarfile.SYMTYPE, "/etc/passwd")}), "symlink"),
    ("tar", lambda p: make_tar(p, {"a.jpg": JPEG}, links={"b.jpg": (tarfile.LNKTYPE, "/etc/passwd")}), "hardlink"),
    ("tar", lambda p: make_tar(p, {"a.jpg": JPEG}, links={"d": (tarfile.CHRTYPE, "")}), "device"),
])
def test_unsafe_archives_are_refused(kind, build, reason, tmp_path):
    archive = build(tmp_path / f"bad.{kind}")
    dest = tmp_path / "dest"
    with pytest.raises(ValueError, match=reason):
        extract_images(archive, ["a.jpg", "b.jpg"], dest, limits())
    outside = [p for p in tmp_path.rglob("*") if p.name in ("evil.jpg", "abs.jpg")]
    assert outside == [], f"an escaping member was written: {outside}"


@pytest.mark.parametrize("build,settings,reason", [
    (lambda p: make_zip(p, {"a.jpg": JPEG, "../evil.jpg": JPEG}), {}, "escape"),
    (lambda p: make_zip(p, {"a.jpg": JPEG, "/etc/evil.jpg": JPEG}), {}, "absolute"),
    (lambda p: make_zip(p, {"a.jpg": JPEG}, symlinks={"b.jpg": "/etc/passwd"}), {}, "symlink"),
    (lambda p: make_zip(p, {f"{i}.jpg": JPEG for i in range(20)}), {"max_archive_members": 10}, "members"),
    (lambda p: make_zip(p, {"a.jpg": bytes(5_000_000)}), {"max_archive_total_bytes": 1_000_000}, "uncompressed"),
    (lambda p: make_zip(p, {"a.jpg": JPEG}), {}, "1 of 2 images named in info.csv are not in the archive"),
    (lambda p: p.write_bytes(b"ImageID,ans\n") and p, {}, "neither a zip nor a tar"),
    (lambda p: p.write_bytes(b"PK\x03\x04 torn") and p, {}, "neither a zip nor a tar"),
])
def test_the_request_time_check_refuses_what_the_job_would_refuse_first(build, settings, reason, predictor,
                                                                         tmp_path):
    """check_inputs (what POST /submission/submit runs before it queues a task) raises the job's own
    reason, for the zip refusals that need no decompression and for an upload that is no archive."""
    archive = build(tmp_path / "upload")
    info = b"ImageID,ans\na.jpg,\nb.jpg,\n"
    with archive.open("rb") as f, pytest.raises(ValueError, match=reason) as by_request:
        check_inputs(io.BytesIO(info), f, limits(**settings))
    with pytest.raises(ValueError, match=reason) as by_job:
        run_archive_job(predictor, info, archive, tmp_path / "work", limits(**settings))
    assert (type(by_request.value), str(by_request.value)) == (type(by_job.value), str(by_job.value))


def test_the_request_time_check_passes_good_uploads_and_leaves_them_at_their_start(tmp_path):
    members = {"a.jpg": JPEG, "b.jpg": JPEG}
    for archive in (make_zip(tmp_path / "a.zip", members), make_tar(tmp_path / "a.tar.gz", members),
                    make_tar(tmp_path / "a.tar", members)):
        info = io.BytesIO(b"ImageID,ans\na.jpg,\nb.jpg,\n")
        with archive.open("rb") as f:
            f.seek(7)
            check_inputs(info, f, limits())
            assert f.tell() == 0 and info.tell() == 0, f"{archive.name}: the uploads must be left at their start"
    with (tmp_path / "a.tar").open("rb") as f:
        assert check_archive(f, ["a.jpg", "z.jpg"], limits()) is None, "a tar's members are the job's to find"
    with (tmp_path / "a.zip").open("rb") as f:
        assert check_archive(f, ["a.jpg", "./b.jpg", "z.jpg"], limits()) == {"a.jpg", "./b.jpg"}
    with pytest.raises(ValueError, match="UTF-8"), (tmp_path / "a.zip").open("rb") as f:
        check_inputs(io.BytesIO(b"\x89PNG\r\n\x1a\n\xff\xfe"), f, limits())


def limits(**settings) -> ArchiveLimits:
    """The archive limits the service uses for these MASK_* settings (field names)."""
    return Settings.from_env({}).replace(**settings).archive_limits


def test_limits(tmp_path):
    many = make_zip(tmp_path / "many.zip", {f"{i}.jpg": JPEG for i in range(20)})
    with pytest.raises(ArchiveTooLarge, match="members"):
        extract_images(many, ["0.jpg"], tmp_path / "d1", limits(max_archive_members=10))
    bomb = make_zip(tmp_path / "bomb.zip", {"a.jpg": bytes(5_000_000)})     # compresses to ~5 kB
    assert bomb.stat().st_size < 50_000
    with pytest.raises(ArchiveTooLarge, match="uncompressed bytes"):
        extract_images(bomb, ["a.jpg"], tmp_path / "d2", limits(max_archive_total_bytes=1_000_000))
    tar_bomb = make_tar(tmp_path / "bomb.tar.gz", {"a.jpg": bytes(5_000_000)})
    with pytest.raises(ArchiveTooLarge, match="uncompressed bytes"):
        extract_images(tar_bomb, ["a.jpg"], tmp_path / "d3", limits(max_archive_total_bytes=1_000_000))
    with pytest.raises(ArchiveTooLarge, match="over the limit"):
        extract_images(bomb, ["a.jpg"], tmp_path / "d4", limits(max_upload_bytes=1_000_000))


def test_archive_limits_follow_the_service_settings(tmp_path):
    """One image in an archive may be as large as one upload, no larger (MASK_MAX_UPLOAD_BYTES), and
    the total/member-count limits are the named MASK_* settings."""
    s = Settings.from_env({"MASK_MAX_UPLOAD_BYTES": "2000000", "MASK_MAX_ARCHIVE_TOTAL_BYTES": "9000000",
                           "MASK_MAX_ARCHIVE_MEMBERS": "7"})
    assert s.archive_limits == ArchiveLimits(max_members=7, max_total_bytes=9_000_000, max_member_bytes=2_000_000)
    default = limits()
    assert default.max_member_bytes == Settings.from_env({}).max_upload_bytes, default
    big = make_zip(tmp_path / "big.zip", {"a.jpg": bytes(Settings.from_env({}).max_upload_bytes + 1)})
    with pytest.raises(ArchiveTooLarge, match="over the limit"):
        extract_images(big, ["a.jpg"], tmp_path / "d", default)


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_dot_slash_image_ids_resolve(kind, tmp_path, job, predictor):
    """info.csv may name ``./a.jpg`` for member ``a.jpg``: found, keyed by the CSV's own ID."""
    _, images = job
    first = next(iter(images))
    archive = (make_zip if kind == "zip" else make_tar)(tmp_path / f"a.{kind}", {first: images[first]})
    found = extract_images(archive, [f"./{first}"], tmp_path / "d", limits())
    assert list(found) == [f"./{first}"] and found[f"./{first}"].read_bytes() == images[first], found
    out = run_archive_job(predictor, f"ImageID,ans\n./{first},0\n".encode(), archive, tmp_path / "w")
    assert out.decode().splitlines()[1].startswith(f"./{first},"), out


def test_archive_job_failures_report_why_and_clean_up(job, predictor, tmp_path):
    info, images = job
    work = tmp_path / "work"
    first = next(iter(images))
    cases = {
        "not in the archive": make_zip(tmp_path / "partial.zip", {first: images[first]}),
        "escape": make_zip(tmp_path / "slip.zip", {**images, "../../evil.jpg": JPEG}),
        "neither a zip nor a tar": tmp_path / "plain.bin",
    }
    cases["neither a zip nor a tar"].write_bytes(b"just bytes")
    for reason, archive in cases.items():
        with pytest.raises(ValueError, match=reason):
            run_archive_job(predictor, info, archive, work)
        assert list(work.iterdir()) == [], f"{reason}: temporary files left: {list(work.rglob('*'))}"
    with pytest.raises(ValueError, match="ImageID"):
        run_archive_job(predictor, b"name,ans\na.jpg,0\n", cases["escape"], work)
    with pytest.raises(ValueError, match="could not be decoded"):
        run_archive_job(predictor, b"ImageID,ans\nbroken.jpg,0\n", make_zip(tmp_path / "b.zip", {"broken.jpg": JPEG}),
                        work)
    assert list(work.iterdir()) == []


def test_member_name_normalises():
    assert member_name("./a/./b.jpg") == "a/b.jpg"
    assert member_name("a\\b.jpg") == "a/b.jpg"
    for bad in ("../a.jpg", "a/../../b.jpg", "/a.jpg", "C:/a.jpg", ""):
        with pytest.raises(ValueError):
            member_name(bad)


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_truncated_archive_is_a_clear_error(kind, job, tmp_path):
    _, images = job
    archive = tmp_path / f"full.{kind}"
    (make_zip if kind == "zip" else make_tar)(archive, images)
    cut = tmp_path / f"cut.{kind}"
    cut.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(ValueError, match="corrupt|not a|neither"):
        extract_images(cut, list(images), tmp_path / "dest", limits())
