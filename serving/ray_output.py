"""Outputs of the Ray engine: what the driver gathers, and ``--probs-dir`` Parquet written by the workers.

``--probs-dir DIR`` holds one row per image — ``row`` (0-based info.csv position), ``ImageID``,
``ans``, ``error`` (empty unless skipped) and ``prob_0..prob_17`` (NaN where skipped) — in Parquet files
written by Ray Data's ``write_parquet`` from the workers, never gathered at the driver:

* on a local disk (a path or ``file://``) the files go to a hidden sibling ``.DIR.tmp-PID`` that is
  renamed to ``DIR`` when the job has finished: ``DIR`` exists only complete;
* on an object store (``s3://``, ``gs://``, ``abfs://`` …; renames are not atomic there) the files
  go straight to ``DIR`` and ``DIR/_SUCCESS`` (JSON: rows, files) is written last: readers wait for it.

The driver then reads back only the small ``row/ans/error`` columns (plus the probabilities for
``--probs``) to write the submission CSV.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from maskdata import labels
from serving import objectstore

MARKER = "_SUCCESS"
KEEP = ["row", "ans", "error"]
PROB_COLUMNS = list(labels.PROB_COLUMNS)


@dataclass
class ProbsSink:
    dest: str            # what the user gave
    write_to: str        # where the workers write
    local: bool

    @classmethod
    def open(cls, dest: str | os.PathLike) -> "ProbsSink":
        """Check ``dest`` up front (before Ray starts): refuse an existing, complete output."""
        dest = str(dest)
        if not objectstore.is_remote(dest):
            path = Path(objectstore.local_path(dest)).absolute()
            if path.exists():
                raise ValueError(f"--probs-dir {path} already exists; remove it or choose a new folder")
            if not path.parent.is_dir():
                raise FileNotFoundError(f"--probs-dir parent folder {path.parent} does not exist")
            tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
            shutil.rmtree(tmp, ignore_errors=True)
            return cls(str(path), str(tmp), True)
        store = objectstore.Store.open(dest)   # same AWS environment and one-line errors as the images
        if store.exists(MARKER):
            raise ValueError(f"--probs-dir {dest} already holds a finished run ({MARKER}); choose a new prefix")
        return cls(dest, dest, False)

    def target(self) -> tuple[str, object]:
        """(path, pyarrow filesystem or None) for Ray Data's Parquet writer and reader."""
        if self.local:
            return self.write_to, None
        store = objectstore.Store.open(self.write_to)
        return store.root, store.fs

    def commit(self, rows: int) -> None:
        """Make the partitions visible: rename (local) or write the marker last (object store)."""
        if self.local:
            os.replace(self.write_to, self.dest)
            return
        store = objectstore.Store.open(self.dest)
        files = [k for k in store.list_files() if k.endswith(".parquet")]
        store.upload_bytes(MARKER, json.dumps({"rows": rows, "files": sorted(files)}).encode())

    def abort(self) -> None:
        if self.local:
            shutil.rmtree(self.write_to, ignore_errors=True)


def _gather(batches, names: list[str], want_probs: bool, on_rows=None) -> dict[str, np.ndarray]:
    parts: dict[str, list] = {k: [] for k in KEEP + (["probs"] if want_probs else [])}
    for batch in batches:
        rows = {k: np.asarray(batch[k]) for k in KEEP}
        if want_probs:
            rows["probs"] = np.stack([np.asarray(batch[c], dtype=np.float32) for c in names], axis=1)
        if on_rows is not None:
            on_rows(rows)
        for k, v in rows.items():
            parts[k].append(v)
    out = {k: np.concatenate(v) if v else np.zeros(0) for k, v in parts.items()}
    if want_probs and not parts["probs"]:
        out["probs"] = np.zeros((0, len(names)), dtype=np.float32)
    return out


def collect(ds, sink: ProbsSink | None, want_probs: bool, on_rows=None) -> dict[str, np.ndarray]:
    """Run the job; ``{row, ans, error[, probs]}`` at the driver, Parquet on the way when ``sink``.
    ``on_rows(rows)`` sees each block of rows as it arrives (the journal; only without ``sink``)."""
    import ray

    names = PROB_COLUMNS
    wanted = KEEP + (names if want_probs else [])
    if sink is None:   # the actors return just these columns: no further stage between them and the driver
        return _gather(ds.iter_batches(batch_size=None, batch_format="numpy"), names, want_probs, on_rows)
    try:
        path, fs = sink.target()
        ds.write_parquet(path, filesystem=fs)
        back = ray.data.read_parquet(path, filesystem=fs, columns=wanted)
        return _gather(back.iter_batches(batch_size=None, batch_format="numpy"), names, want_probs)
    except BaseException:
        sink.abort()
        raise
