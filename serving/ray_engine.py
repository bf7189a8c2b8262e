"""``mask-submit --engine ray``: the submission job on Ray Data, from a laptop to a cluster.

The job is the local one (:func:`serving.submission.run_submission`) with the loop handed to Ray:

1. the driver reads info.csv and checks every image up front, exactly as locally (same messages,
   same ``OUT.errors.csv``); image URIs (``s3://``, ``gs://``, ``abfs://``, ``file://``) go through
   pyarrow filesystems, the ones Ray Data itself reads with;
2. Ray is started in-process (no address) or joined (``--ray-address`` / ``RAY_ADDRESS``) after a
   TCP probe, so an unreachable head fails in seconds; one small task then loads the model on a
   worker, so a model path the workers cannot read fails before any image is read;
3. the batches of the local job's fixed grid become the rows of a Ray dataset and
   ``map_batches(_PredictActor, batch_size=1, concurrency=N)`` runs them on an actor pool holding
   one :class:`~serving.predictor.Predictor` per actor (model loaded once per actor). Each actor
   reads its images' bytes, decodes them and predicts the very batch the local engine would, so
   the file is byte-identical (ONNX Runtime's float results may depend on the batch's make-up);
4. the driver gathers ``ans`` (and the probabilities for ``--probs``) and writes the outputs with
   the local job's writer, atomically; ``--probs-dir`` Parquet partitions are written by the
   workers (:mod:`serving.ray_output`).

Faults: actors run with ``max_restarts`` / ``max_task_retries`` (``RESTARTS``), so a worker that
dies mid-job is restarted and its batch retried. ``MASK_RAY_TEST_CRASH_ONCE=MARKER`` (tests only)
makes the first actor to finish a batch exit once, before returning it. See docs/submit.md.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from maskdata import labels
from serving.pipeline import DecodedBatch, decode_batch
from serving.submission import (SKIPPED, SubmitResult, check_missing, check_output_path, predict_batch, write_outputs, locate_images,
                                read_info)

log = logging.getLogger(__name__)

INSTALL_HINT = "--engine ray needs Ray Data: pip install 'mask-classifier[ray]' (or pip install 'ray[data]')"
CRASH_ONCE_ENV = "MASK_RAY_TEST_CRASH_ONCE"   # tests only: path of a marker file; see _PredictActor
RESTARTS = 3                 # actor restarts and task retries per actor: survives crashes, not a crash loop
CONNECT_TIMEOUT_S = 5.0      # TCP probe of --ray-address before ray.init
MODEL_PROBE_TIMEOUT_S = 300.0
DEFAULT_CPUS_PER_ACTOR = 0.5  # < 1 so read/write tasks always find a free CPU (1.0 each hung on 2 CPUs)
REMOTE_SCHEMES = ("s3", "gs", "gcs", "abfs", "abfss", "hdfs", "viewfs")
PROB_COLUMNS = [f"p{c}" for c in range(labels.NUM_CLASSES)]


def require_ray():
    """``ray`` with Ray Data, or ValueError with the install command."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise ValueError(INSTALL_HINT) from None
    return ray


@dataclass(frozen=True)
class RayOptions:
    address: str | None = None        # None: $RAY_ADDRESS, else an in-process Ray on this machine
    num_actors: int | None = None     # None: one per CPU of the cluster
    cpus_per_actor: float = DEFAULT_CPUS_PER_ACTOR
    gpus_per_actor: float = 0.0

    def __post_init__(self):
        if self.num_actors is not None and self.num_actors < 1:
            raise ValueError(f"--num-actors must be at least 1, got {self.num_actors}")
        if self.cpus_per_actor <= 0:
            raise ValueError(f"--cpus-per-actor must be above 0, got {self.cpus_per_actor}")
        if self.gpus_per_actor < 0:
            raise ValueError(f"--gpus-per-actor must be 0 or more, got {self.gpus_per_actor}")


# ---------------------------------------------------------------- images: local folder or URI

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


class _ReadThenDecode:
    """``Preprocess`` look-alike for :func:`decode_batch`: read the bytes from ``fs``, then decode."""

    def __init__(self, preprocess, fs):
        self.preprocess, self.fs = preprocess, fs
        self.height, self.width = preprocess.height, preprocess.width

    def __call__(self, path: str, max_pixels: int):
        with self.fs.open_input_file(path) as f:   # OSError -> an error row, as a vanished local file
            data = f.read()
        return self.preprocess(data, max_pixels=max_pixels)


# ---------------------------------------------------------------- the actor

def load_actor_predictor(model: str, precision: str | None, threads: int, gpu: bool):
    """The Predictor an actor holds: CUDA provider first when it was given a GPU, else CPU only."""
    from serving.predictor import CPU, CUDA, Predictor
    from serving.settings import Settings

    settings = Settings.from_env()
    settings = settings.replace(threads=settings.threads or threads,
                                providers=settings.providers or ((CUDA, CPU) if gpu else (CPU,)))
    if precision is not None:
        settings = settings.replace(precision=precision)
    return Predictor(model, backend="torch" if model.endswith(".pt") else "onnx", settings=settings)


class _PredictActor:
    """One Predictor per Ray actor; each call is one batch of the job's grid → one row per image."""

    def __init__(self, model: str, precision: str | None, threads: int, gpu: bool, images_uri: str | None,
                 on_error: str, crash_marker: str | None = None):
        self.predictor = load_actor_predictor(model, precision, threads, gpu)
        self.preprocess = self.predictor.preprocess
        if images_uri is not None:
            self.preprocess = _ReadThenDecode(self.preprocess, image_filesystem(images_uri)[0])
        self.on_error, self.crash_marker = on_error, crash_marker

    def __call__(self, batch: dict) -> dict:
        job = json.loads(batch["job"][0])
        ids, paths, missing = job["ids"], job["paths"], job["missing"]
        present = [p for i, p in zip(ids, paths) if i not in missing]
        images, ok, errs = decode_batch(self.preprocess, self.predictor.settings.max_pixels, present)
        ans, probs, errors = predict_batch(self.predictor, DecodedBatch(0, images, ok, errs), ids, missing,
                                            self.on_error)
        self._maybe_crash()
        out = {"row": np.arange(job["start"], job["start"] + len(ids), dtype=np.int64),
               "ImageID": np.asarray(ids, dtype=object), "ans": ans,
               "error": np.asarray([errors.get(i, "") for i in range(len(ids))], dtype=object)}
        out.update({name: probs[:, c] for c, name in enumerate(PROB_COLUMNS)})
        return out

    def _maybe_crash(self) -> None:
        """Test-only fault: the first actor to get here exits (once per marker file)."""
        if not self.crash_marker:
            return
        try:
            os.close(os.open(self.crash_marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return
        os._exit(1)


def _probe_model(model: str, precision: str | None) -> dict:
    """Runs as a Ray task: load the model where the actors will, report what loaded."""
    p = load_actor_predictor(model, precision, threads=1, gpu=False)
    return {"arch": p.metadata.arch, "input": list(p.input_shape[:2]), "file": str(p.backend.path)
            if hasattr(p.backend, "path") else model, "node": socket.gethostname(),
            "uncertain_below": p.uncertain_below}


# ---------------------------------------------------------------- Ray session

_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # + empty SETTINGS


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Fail within ~``timeout`` s, with one line, unless ``host:port`` answers like a Ray (gRPC) server.

    ``ray.init`` itself retries an address that accepts TCP but is no Ray head for minutes, so the
    probe speaks the first step of HTTP/2 (gRPC's transport): a GCS or Ray client server answers the
    client preface with a SETTINGS frame.
    """
    if address in ("auto", "local"):
        return
    target = address.split("://", 1)[-1]
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--ray-address must look like HOST:PORT or ray://HOST:PORT, got {address!r}")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(_H2_PREFACE)
            frame = sock.recv(9)
    except OSError as e:
        raise ValueError(f"Ray cluster at {address} is not reachable ({e}); is `ray start --head` running "
                         f"there?") from None
    if len(frame) < 4 or frame[3] != 0x4:
        raise ValueError(f"{address} accepts connections but is not a Ray head (no gRPC answer); check the "
                         f"address and port (ray start --head prints it)")


def connect(ray, address: str | None) -> bool:
    """Join ``address`` / $RAY_ADDRESS or start Ray here; True when this call started it (and owns it)."""
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        check_reachable(address)
    if ray.is_initialized():   # an embedding program (or a test) already holds a Ray session: use it
        return False
    started = time.perf_counter()
    try:
        ray.init(address=address or "local", include_dashboard=False, log_to_driver=False,
                 logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError) as e:
        raise ValueError(f"cannot connect to Ray at {address or 'local'}: {str(e).splitlines()[0]}") from None
    log.info("Ray %s in %.1f s: %s CPUs, %s GPUs", "joined" if address else "started",
             time.perf_counter() - started, ray.cluster_resources().get("CPU", 0),
             ray.cluster_resources().get("GPU", 0))
    return True


def user_error(e: BaseException) -> ValueError | None:
    """The ValueError/OSError raised inside a Ray task or actor, if that is what failed."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, (ValueError, OSError)) and not type(e).__module__.startswith("ray"):
            return ValueError(str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__)
        e = getattr(e, "cause", None) or e.__cause__
    return None


# ---------------------------------------------------------------- the job

def _grid_items(image_ids, paths, missing, batch_size) -> list[dict]:
    items = []
    for b, start in enumerate(range(0, len(image_ids), batch_size)):
        ids = image_ids[start:start + batch_size]
        job = {"start": start, "ids": ids, "paths": paths[start:start + batch_size],
               "missing": {i: missing[i] for i in ids if i in missing}}
        items.append({"batch": b, "job": json.dumps(job)})
    return items


def run_ray_submission(model: str, info_csv, images: str, out_csv, *, precision: str | None = None,
                       batch_size: int = 64, on_error: str = "fail", probs_csv=None, probs_dir=None,
                       ray_options: RayOptions = RayOptions()) -> SubmitResult:
    """The submission job on Ray Data; same outputs as :func:`run_submission`. ValueError on bad input."""
    from serving import ray_output

    ray = require_ray()
    out_csv = check_output_path(out_csv)
    header, rows = read_info(info_csv)
    image_ids = [r["ImageID"] for r in rows]
    fs, root = image_filesystem(str(images))
    paths, missing = locate_images(image_ids, root) if fs is None else locate_remote(image_ids, fs, root)
    report_path = out_csv.with_name(out_csv.name + ".errors.csv")
    check_missing(image_ids, missing, on_error, report_path, str(images))
    sink = ray_output.ProbsSink.open(probs_dir) if probs_dir else None

    owns = connect(ray, ray_options.address)
    try:
        probe = ray.remote(num_cpus=0)(_probe_model).remote(model, precision)
        try:
            info = ray.get(probe, timeout=MODEL_PROBE_TIMEOUT_S)
        except Exception as e:
            err = user_error(e)
            raise ValueError(f"model {model!r} cannot be loaded on the Ray workers: {err or e}") from None
        log.info("model %s (%s, %s) on node %s", info["file"], info["arch"], "x".join(map(str, info["input"])),
                 info["node"])
        started = time.perf_counter()
        ds = _dataset(ray, model, precision, images if fs is not None else None, on_error,
                      _grid_items(image_ids, paths, missing, batch_size), ray_options)
        try:
            columns = ray_output.collect(ds, sink, want_probs=probs_csv is not None)
        except Exception as e:
            err = user_error(e)
            if err is None:
                raise
            raise err from None
        seconds = time.perf_counter() - started
    finally:
        if owns:
            ray.shutdown()
    return _finish(columns, header, rows, out_csv, probs_csv, sink, report_path, seconds,
                   info.get("uncertain_below"))


def _dataset(ray, model, precision, images_uri, on_error, items, opts: RayOptions):
    cpus = ray.cluster_resources().get("CPU", 1)
    actors = opts.num_actors or max(1, int(cpus))
    threads = max(1, int(opts.cpus_per_actor))
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True   # partitions follow info.csv; rows are re-ordered anyway
    ds = ray.data.from_items(items, override_num_blocks=min(len(items), 4 * actors))
    kwargs = {"num_gpus": opts.gpus_per_actor} if opts.gpus_per_actor > 0 else {}
    return ds.map_batches(
        _PredictActor, batch_size=1, batch_format="numpy", concurrency=actors, num_cpus=opts.cpus_per_actor,
        fn_constructor_kwargs={"model": model, "precision": precision, "threads": threads,
                               "gpu": opts.gpus_per_actor > 0, "images_uri": images_uri, "on_error": on_error,
                               "crash_marker": os.environ.get(CRASH_ONCE_ENV) or None},
        max_restarts=RESTARTS, max_task_retries=RESTARTS, **kwargs)


def _finish(columns: dict, header, rows, out_csv: Path, probs_csv, sink, report_path, seconds,
            uncertain_below: float | None = None) -> SubmitResult:
    n = len(rows)
    order = np.argsort(columns["row"], kind="stable")
    row_index = columns["row"][order]
    if len(row_index) != n or not np.array_equal(row_index, np.arange(n)):
        raise RuntimeError(f"Ray returned {len(row_index)} rows for {n} info.csv rows; not writing {out_csv}")
    ans = columns["ans"][order].astype(np.int64)
    probs = np.full((n, labels.NUM_CLASSES), np.nan, dtype=np.float32)
    if "probs" in columns:
        probs = columns["probs"][order]
    image_ids = [r["ImageID"] for r in rows]
    errors = {image_ids[i]: str(e) for i, e in zip(row_index, columns["error"][order]) if e}
    write_outputs(out_csv, header, rows, ans, probs, errors, probs_csv, report_path, uncertain_below)
    if sink is not None:
        sink.commit(n)
    predicted = ans[ans != SKIPPED]
    return SubmitResult(out_csv, image_ids, ans, probs, errors, seconds, int((ans != SKIPPED).sum()), 0,
                        report_path if errors else None,
                        dict(sorted(Counter(int(c) for c in predicted).items())))
