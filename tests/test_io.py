"""I/O helpers: atomic writes, and CSV reading that survives spreadsheets (BOM, CRLF, quotes, extra columns)."""
from __future__ import annotations

import pytest

from maskdata.io import atomic_path, atomic_write_bytes, atomic_write_text, read_csv


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path):
    p = tmp_path / "out.csv"
    atomic_write_text(p, "a\n")
    atomic_write_text(p, "b\r\n")
    assert p.read_bytes() == b"b\r\n", "newlines must be written as given"
    atomic_write_bytes(tmp_path / "x.bin", b"\x00\x01")
    assert (tmp_path / "x.bin").read_bytes() == b"\x00\x01"
    assert sorted(q.name for q in tmp_path.iterdir()) == ["out.csv", "x.bin"]


def test_atomic_path_keeps_the_old_file_on_failure(tmp_path):
    p = tmp_path / "model.txt"
    p.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(p) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash")
    assert p.read_text() == "old"
    assert [q.name for q in tmp_path.iterdir()] == ["model.txt"], "temporary file left behind"


def test_atomic_path_rejects_bad_targets(tmp_path):
    with pytest.raises(IsADirectoryError, match="is a directory"):
        with atomic_path(tmp_path):
            pass
    with pytest.raises(FileNotFoundError, match="does not exist"):
        with atomic_path(tmp_path / "no" / "file.txt"):
            pass


def test_read_csv_plain(tmp_path):
    p = tmp_path / "a.csv"
    p.write_text("id,gender,race,age,path\n1,male,Asian,20,000001_male_Asian_20\n")
    header, rows = read_csv(p, ("id", "path"))
    assert header == ["id", "gender", "race", "age", "path"]
    assert rows == [{"id": "1", "gender": "male", "race": "Asian", "age": "20", "path": "000001_male_Asian_20"}]


def test_read_csv_bom_crlf_quotes_extra_columns_and_blank_lines():
    raw = ('\ufeff ImageID , ans ,note\r\n'
           '"a,b.jpg",0,"said ""hi"""\r\n'
           '\r\n'
           'c.jpg,3,"two\r\nlines",surplus\r\n'
           'd.jpg\r\n').encode("utf-8")
    header, rows = read_csv(raw, ("ImageID", "ans"))
    assert header == ["ImageID", "ans", "note"], "BOM and padding must be stripped from the header"
    assert [r["ImageID"] for r in rows] == ["a,b.jpg", "c.jpg", "d.jpg"], "blank lines skipped, quotes honoured"
    assert rows[0]["note"] == 'said "hi"'
    assert rows[1]["note"] == "two\r\nlines" and rows[1]["ans"] == "3"
    assert rows[2]["ans"] == "" and rows[2]["note"] == "", "short rows are padded"


def test_read_csv_missing_column_names_the_file_and_expectation(tmp_path):
    p = tmp_path / "info.csv"
    p.write_text("image,answer\nx.jpg,1\n")
    with pytest.raises(ValueError) as e:
        read_csv(p, ("ImageID", "ans"))
    msg = str(e.value)
    assert str(p) in msg and "missing column(s) ImageID,ans" in msg and "found image,answer" in msg, msg
    assert "\n" not in msg


@pytest.mark.parametrize("raw,match", [(b"", "empty CSV"), (b"\xff\xfe\x00x", "not a UTF-8"),
                                       (b"\n", "missing column")])
def test_read_csv_bad_bytes(raw, match):
    with pytest.raises(ValueError, match=match):
        read_csv(raw, ("ImageID",))


def test_read_csv_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="CSV file not found"):
        read_csv(tmp_path / "none.csv", ("a",))


def test_atomic_outputs_get_the_umask_mode_not_private(tmp_path):
    import os

    umask = os.umask(0)
    os.umask(umask)
    p = atomic_write_text(tmp_path / "shared.txt", "x")
    assert (p.stat().st_mode & 0o777) == (0o666 & ~umask), oct(p.stat().st_mode)


def test_atomic_write_fsyncs_the_file_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    """Durable, not only atomic: the data reaches the disk before the new name points at it, and
    the rename itself is flushed (the folder's entries); a power loss cannot be staged, the order can."""
    import os
    import stat

    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        kind = "dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"
        events.append(("fsync", kind, os.fstat(fd).st_ino))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", os.stat(src).st_ino))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    p = atomic_write_bytes(tmp_path / "model.onnx", b"weights")
    ino = p.stat().st_ino
    assert events == [("fsync", "file", ino), ("replace", ino), ("fsync", "dir", tmp_path.stat().st_ino)], events


def test_atomic_writes_leave_the_process_umask_alone(tmp_path, monkeypatch):
    """No process-wide umask flip (at import or per write): the mode is given to the file created."""
    import importlib
    import os

    import maskdata.io

    calls = []
    monkeypatch.setattr(os, "umask", lambda m: calls.append(m) or 0o022)
    importlib.reload(maskdata.io)
    maskdata.io.atomic_write_text(tmp_path / "a.txt", "x")
    with maskdata.io.atomic_path(tmp_path / "private.txt", mode=0o600) as tmp:
        tmp.write_text("secret")
    assert calls == [], f"os.umask was called: {calls}"
    assert (tmp_path / "private.txt").stat().st_mode & 0o777 == 0o600
