"""Resume support for the batch job: an append-only journal of finished batches beside the output.

``OUT.journal`` is JSON lines: line 1 is a header naming the job (a fingerprint of its rows, images
folder, model and shard) and the batch size; every further line is one finished batch with its
answers, probabilities and per-row errors. Appending one line per batch (flushed each time, fsync'd
every few seconds) costs next to nothing, survives Ctrl-C and kill -9 (which can only tear the last
line; :meth:`Journal.open` drops it), and lets ``mask-submit --resume`` skip finished batches.

Both engines write the same journal (:func:`open_job_journal`): the fingerprint names the model by
what loaded (:func:`model_identity`, which a Ray actor reports back), so a run stopped on one engine
can be resumed on the other.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path

import numpy as np

from maskdata import labels
from serving import objectstore

log = logging.getLogger(__name__)

JOURNAL_VERSION = 1


class Journal:
    """Append-only JSON-lines record of finished batches, beside the output.

    Line 1 is a header naming the job (fingerprint of rows, images folder, model, shard) and the
    batch size; each further line is one batch. A kill -9 can tear only the last line, which
    :meth:`open` drops.
    """

    def __init__(self, path: Path, header: dict, fsync_seconds: float):
        self.path, self.header, self.fsync_seconds = path, header, fsync_seconds
        self._file = None
        self._synced = time.monotonic()

    @staticmethod
    def path_for(out_csv: Path) -> Path:
        return out_csv.with_name(out_csv.name + ".journal")

    @staticmethod
    def unfinished(path: Path) -> ValueError:
        """The error for a run started over an unfinished one without ``--resume``."""
        return ValueError(f"{path} holds an unfinished run of this output; pass --resume to continue it, "
                          f"or delete the file to start over")

    @classmethod
    def open(cls, path: Path, header: dict, resume: bool, fsync_seconds: float = 5.0) -> tuple["Journal", dict]:
        """(journal, {batch: record}); ``header["batch_size"]`` follows a resumed journal's."""
        journal = cls(path, dict(header), fsync_seconds)
        old, done, good_bytes = read_journal(path) if path.exists() else (None, {}, 0)
        if old is not None and not resume:
            raise cls.unfinished(path)
        if old is None:
            journal._file = open(path, "w", encoding="utf-8")
            journal._write(journal.header, sync=True)
            return journal, {}
        if old.get("fingerprint") != header["fingerprint"]:
            raise ValueError(f"{path} belongs to a different job (info.csv, images folder, model or shard "
                             f"changed); delete it to start over")
        journal.header["batch_size"] = old["batch_size"]
        with open(path, "r+b") as f:
            f.truncate(good_bytes)
        journal._file = open(path, "a", encoding="utf-8")
        return journal, done

    def _write(self, obj: dict, sync: bool = False) -> None:
        self._file.write(json.dumps(obj, separators=(",", ":")) + "\n")
        self._file.flush()
        if sync or time.monotonic() - self._synced > self.fsync_seconds:
            os.fsync(self._file.fileno())
            self._synced = time.monotonic()

    def append(self, batch: int, ans: np.ndarray, probs: np.ndarray, errors: dict[int, str]) -> None:
        # float32 -> Python float is exact and JSON round-trips it, so a resumed file is identical
        self._write({"batch": batch, "ans": ans.tolist(),
                     "probs": [None if np.isnan(r).any() else r.tolist() for r in probs],
                     "errors": {str(k): v for k, v in errors.items()}})

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def read_journal(path: Path) -> tuple[dict | None, dict[int, dict], int]:
    """(header or None, {batch: record}, length of the intact prefix in bytes).

    A header torn by a kill (nothing after it can exist yet) reads as no journal at all.
    """
    lines = path.read_bytes().split(b"\n")
    if len(lines) == 1:   # not even the header's newline made it to disk
        return None, {}, 0
    try:
        header = json.loads(lines[0])
    except json.JSONDecodeError:
        raise ValueError(f"{path}: not a mask-submit journal; delete it to start over") from None
    if not isinstance(header, dict) or header.get("journal") != "mask-submit":
        raise ValueError(f"{path}: not a mask-submit journal; delete it to start over")
    done: dict[int, dict] = {}
    good_bytes = len(lines[0]) + 1
    for raw in lines[1:-1]:   # the element after the final newline is empty or a torn line
        try:
            record = json.loads(raw)
        except json.JSONDecodeError:
            break
        done[record["batch"]] = record
        good_bytes += len(raw) + 1
    return header, done, good_bytes


def model_identity(predictor) -> dict:
    """What the answers depend on besides the images: the model as given, its recorded metadata,
    and the preprocessing (an ``--aspect`` override changes the answers). JSON, so a Ray actor can send it."""
    preprocess = getattr(predictor, "preprocess", None)
    return {"source": str(getattr(predictor, "source", "")), "props": predictor.metadata.to_props(),
            "preprocess": preprocess.to_dict() if preprocess is not None else None}


def job_fingerprint(image_ids: list[str], images_dir, identity: dict, shard) -> str:
    h = hashlib.sha256()
    h.update("\n".join(image_ids).encode())
    h.update((str(images_dir) if objectstore.is_remote(images_dir) else str(Path(images_dir).resolve())).encode())
    h.update(identity["source"].encode())
    h.update(json.dumps(identity["props"], sort_keys=True).encode())
    if identity["preprocess"] is not None:
        h.update(json.dumps(identity["preprocess"], sort_keys=True).encode())
    h.update(str(shard).encode())
    return h.hexdigest()[:24]


def open_job_journal(plan, identity: dict, shard, batch_size: int, resume: bool,
                     fsync_seconds: float = 5.0) -> tuple[Journal, dict[int, dict], int]:
    """``OUT.journal`` for ``plan`` (a :class:`serving.submission_job.JobPlan`): (journal, {batch: record}
    already done, the batch size to use: a resumed journal's). ValueError if one exists without
    ``resume``, or belongs to another job."""
    header = {"journal": "mask-submit", "version": JOURNAL_VERSION, "rows": len(plan.rows),
              "fingerprint": job_fingerprint(plan.image_ids, plan.images, identity, shard),
              "batch_size": batch_size}
    journal, done = Journal.open(Journal.path_for(plan.out_csv), header, resume, fsync_seconds)
    if journal.header["batch_size"] != batch_size:
        log.info("resuming with the interrupted run's batch size %d", journal.header["batch_size"])
    return journal, done, journal.header["batch_size"]


def record_rows(record: dict) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
    """A journal line back as (ans, probs with NaN rows where skipped, {position in batch: reason})."""
    ans = np.asarray(record["ans"], dtype=np.int64)
    probs = np.full((len(ans), labels.NUM_CLASSES), np.nan, dtype=np.float32)
    for i, row in enumerate(record["probs"]):
        if row is not None:
            probs[i] = row
    return ans, probs, {int(k): v for k, v in record["errors"].items()}
