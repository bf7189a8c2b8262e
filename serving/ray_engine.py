"""``mask-submit --engine ray``: the submission job on Ray Data, from a laptop to a cluster.

The job is the local one (:mod:`serving.submission_job`: plan → run the grid → finish) with the grid handed to Ray:

1. the driver plans the job exactly as locally (:func:`serving.submission_job.plan_job`: same checks, same
   messages, same ``OUT.errors.csv``); image URIs (``s3://``, ``gs://``, ``abfs://``, ``file://``)
   go through :mod:`serving.objectstore` (pyarrow filesystems, the ones Ray Data itself reads with;
   endpoint and credentials from the AWS environment variables of every node);
2. Ray is started in-process (no address) or joined (``--ray-address`` / ``RAY_ADDRESS``) after a
   TCP probe, so an unreachable head fails in seconds; one small task then loads the model on a
   worker, so a model path the workers cannot read fails before any image is read;
3. the batches of the local job's fixed grid become the rows of a Ray dataset and
   ``map_batches(_PredictActor, batch_size=1, compute=ActorPoolStrategy(size=N))`` runs them on an
   actor pool holding one :class:`~serving.predictor.Predictor` per actor (model loaded once per
   actor). Each actor reads its images' bytes, decodes them and predicts the very batch the local
   engine would, so the file is byte-identical (ONNX Runtime's float results may depend on the
   batch's make-up);
4. the driver gathers ``ans`` and the probabilities and finishes the job as the local engine does
   (:func:`serving.submission_job.finish_job`); ``--probs-dir`` Parquet partitions are written by the workers
   (:mod:`serving.ray_output`) and committed once the outputs are in place;
5. each batch is one Ray block and one actor call, and (without ``--probs-dir``) the driver takes the
   blocks in the order they finish, so a batch is appended to the local engine's journal
   (``OUT.journal``, :mod:`serving.journal`) as soon as its predictions reach the driver: an
   interrupted run (Ctrl-C, a lost node) continues with ``--resume``, on either engine, and recomputes
   only the batches that were in flight (``IN_FLIGHT_PER_ACTOR`` calls per actor) or on their way to
   the driver. A ``--probs-dir`` run has no journal: its Parquet parts are written by the workers,
   in info.csv order, and committed whole, so it is rerun, not resumed.

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
from dataclasses import dataclass

import numpy as np

from maskdata.extras import install_hint
from maskdata.scoring import SKIPPED
from serving import objectstore, ray_output
from serving.submission_job import GridOutcome, JobPlan, SubmitResult, finish_job, plan_job, predict_batch
from serving.journal import Journal, model_identity, open_job_journal, record_rows
from serving.decode_pool import DecodedBatch, decode_batch
from serving.ray_output import PROB_COLUMNS
from serving.settings import JOB_DEFAULTS, Settings

log = logging.getLogger(__name__)

INSTALL_HINT = install_hint("ray", "--engine ray", ["ray[data]"])
CRASH_ONCE_ENV = "MASK_RAY_TEST_CRASH_ONCE"   # tests only: path of a marker file; see _PredictActor
RESTARTS = 3                 # actor restarts and task retries per actor: survives crashes, not a crash loop
CONNECT_TIMEOUT_S = 5.0      # TCP probe of --ray-address before ray.init
MODEL_PROBE_TIMEOUT_S = 300.0
DEFAULT_CPUS_PER_ACTOR = 0.5  # < 1 so read/write tasks always find a free CPU (1.0 each hung on 2 CPUs)
IN_FLIGHT_PER_ACTOR = 2      # batch calls queued per actor: one running, one whose arguments are being pulled


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


# ---------------------------------------------------------------- the actor

@dataclass(frozen=True)
class ActorModel:
    """What every actor loads: the model, its precision and the driver's settings (field values, so a
    worker on any node loads with the settings ``mask-submit`` was started with, not its own environment)."""
    model: str
    precision: str | None
    settings: dict


def load_actor_predictor(spec: ActorModel, threads: int, gpu: bool):
    """The Predictor an actor holds: CUDA provider first when it was given a GPU, else CPU only;
    the driver's MASK_THREADS / MASK_PROVIDERS, when set, win over the actor's share."""
    from serving.predictor import CPU, CUDA, load_predictor

    settings = Settings.from_fields(spec.settings)
    return load_predictor(spec.model, spec.precision, settings=settings, threads=settings.threads or threads,
                          providers=settings.providers or ((CUDA, CPU) if gpu else (CPU,)))


class _PredictActor:
    """One Predictor per Ray actor; each call is one batch of the job's grid → one row per image."""

    def __init__(self, spec: ActorModel, threads: int, gpu: bool, images: str, on_error: str,
                 with_ids: bool = True, crash_marker: str | None = None):
        self.predictor = load_actor_predictor(spec, threads, gpu)
        # an object-store prefix travels as its URI; the filesystem is opened here, from this node's env
        self.preprocess = objectstore.reader_for(images, self.predictor.preprocess)
        self.on_error, self.with_ids, self.crash_marker = on_error, with_ids, crash_marker

    def __call__(self, batch: dict) -> dict:
        job = json.loads(batch["job"][0])
        ids, paths, missing = job["ids"], job["paths"], job["missing"]
        present = [p for i, p in zip(ids, paths) if i not in missing]
        images, ok, errs = decode_batch(self.preprocess, self.predictor.settings.max_pixels, present)
        ans, probs, errors = predict_batch(self.predictor, DecodedBatch(0, images, ok, errs), ids, missing,
                                            self.on_error)
        self._maybe_crash()
        out = {"row": np.arange(job["start"], job["start"] + len(ids), dtype=np.int64), "ans": ans,
               "error": np.asarray([errors.get(i, "") for i in range(len(ids))], dtype=object)}
        if self.with_ids:   # only the Parquet files need them; the driver goes by row
            out["ImageID"] = np.asarray(ids, dtype=object)
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


def _probe_model(spec: ActorModel) -> dict:
    """Runs as a Ray task: load the model where the actors will, report what loaded."""
    p = load_actor_predictor(spec, threads=1, gpu=False)
    return {"arch": p.metadata.arch, "input": list(p.input_shape[:2]), "file": str(p.backend.path)
            if hasattr(p.backend, "path") else spec.model, "node": socket.gethostname(),
            "uncertain_below": p.uncertain_below, "identity": model_identity(p)}


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


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else ""


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

def _grid_items(plan: JobPlan, grid: list[range], todo: list[int]) -> list[dict]:
    """The batches ``todo`` of the grid as Ray dataset rows: one JSON job per batch (ImageIDs, paths, missing ones)."""
    items = []
    image_ids = plan.image_ids
    for b in todo:
        rows = grid[b]
        ids = image_ids[rows.start:rows.stop]
        job = {"start": rows.start, "ids": ids, "paths": plan.paths[rows.start:rows.stop],
               "missing": {i: plan.missing[i] for i in ids if i in plan.missing}}
        items.append({"batch": b, "job": json.dumps(job)})
    return items


def run_ray_submission(model: str, info_csv, images: str, out_csv, *, precision: str | None = None,
                       batch_size: int = JOB_DEFAULTS.batch_size, on_error: str = JOB_DEFAULTS.on_error,
                       probs_csv=None, probs_dir=None, resume: bool = False,
                       ray_options: RayOptions = RayOptions(), settings: Settings | None = None) -> SubmitResult:
    """The submission job on Ray Data; same outputs as :func:`serving.local_engine.run_submission`,
    and the same journal, so ``resume=True`` continues an interrupted run. ValueError on bad input.
    ``settings`` (default :meth:`Settings.defaults`) travel to every actor."""
    ray = require_ray()
    if probs_dir and resume:
        raise ValueError("--resume cannot continue a --probs-dir run: its Parquet parts are committed whole, so "
                         "rerun it without --resume")
    plan = plan_job(info_csv, images, out_csv, on_error)
    journal_path = Journal.path_for(plan.out_csv)
    if not probs_dir and not resume and journal_path.exists():   # now, not after Ray has started
        raise Journal.unfinished(journal_path)
    sink = ray_output.ProbsSink.open(probs_dir) if probs_dir else None
    spec = ActorModel(model, precision, (settings or Settings.defaults()).to_fields())
    outcome = _run_grid(ray, plan, batch_size, spec, sink, probs_csv is not None, ray_options, resume)
    return finish_job(plan, outcome, probs_csv)


def _probe(ray, spec: ActorModel) -> dict:
    probe = ray.remote(num_cpus=0)(_probe_model).remote(spec)
    try:
        info = ray.get(probe, timeout=MODEL_PROBE_TIMEOUT_S)
    except Exception as e:
        err = user_error(e)
        raise ValueError(f"model {spec.model!r} cannot be loaded on the Ray workers: {err or e}") from None
    log.info("model %s (%s, %s) on node %s", info["file"], info["arch"], "x".join(map(str, info["input"])),
             info["node"])
    return info


def _run_grid(ray, plan: JobPlan, batch_size: int, spec: ActorModel, sink, want_probs: bool,
              ray_options: RayOptions, resume: bool) -> GridOutcome:
    """The grid on a Ray actor pool; the driver journals the batches as they come back and gathers
    the rows in plan order."""
    owns = connect(ray, ray_options.address)
    journal = None
    try:
        info = _probe(ray, spec)
        done: dict[int, dict] = {}
        if sink is None:
            journal, done, batch_size = open_job_journal(plan, info["identity"], None, batch_size, resume)
        grid = plan.grid(batch_size)
        todo = [b for b in range(len(grid)) if b not in done]
        resumed = sum(len(grid[b]) for b in done)
        if done:
            log.info("resuming: %d of %d images already done", resumed, len(plan.rows))
        started = time.perf_counter()
        try:
            columns = _empty_columns()
            if todo:
                ds = _dataset(ray, spec, plan.images, plan.on_error, _grid_items(plan, grid, todo), ray_options,
                              in_order=sink is not None)
                record = _BatchRecorder(journal, grid) if journal is not None else None
                columns = ray_output.collect(ds, sink, want_probs=want_probs or journal is not None, on_rows=record)
        except Exception as e:
            err = user_error(e)
            if err is not None:
                raise err from None
            if isinstance(e, ray.exceptions.RayError):   # lost capacity beyond the retries: one line, exit 2
                kept = (f"finished batches are kept in {journal.path}; rerun the same command with --resume to "
                        "continue") if journal is not None else "rerun the same command"
                raise ValueError(f"the Ray job failed ({type(e).__name__}: {_first_line(e)}); nothing was written "
                                 f"to {plan.out_csv}; {kept}") from None
            raise
        seconds = time.perf_counter() - started
    finally:
        if journal is not None:
            journal.close()
        if owns:
            ray.shutdown()
    processed = int((columns["ans"] != SKIPPED).sum())
    outcome = _in_plan_order(_with_done(columns, done, grid), plan)
    outcome.seconds, outcome.uncertain_below = seconds, info.get("uncertain_below")
    outcome.processed, outcome.resumed = processed, resumed
    if sink is not None:
        n = len(plan.rows)
        outcome.written = lambda: sink.commit(n)
    else:
        outcome.written = journal.path.unlink
    return outcome


class _BatchRecorder:
    """Appends a grid batch to the journal once all its rows are back at the driver (Ray returns
    rows in blocks that need not match the batches)."""

    def __init__(self, journal: Journal, grid: list[range]) -> None:
        self.journal, self.grid = journal, grid
        self.size = len(grid[0]) if grid else 1   # every batch but the last has this many rows
        self.parts: dict[int, list[dict]] = {}

    def __call__(self, rows: dict[str, np.ndarray]) -> None:
        batch_of = rows["row"] // self.size
        for b in np.unique(batch_of):
            b = int(b)
            pick = batch_of == b
            self.parts.setdefault(b, []).append({k: v[pick] for k, v in rows.items()})
            if sum(len(p["row"]) for p in self.parts[b]) == len(self.grid[b]):
                parts = self.parts.pop(b)
                got = {k: np.concatenate([p[k] for p in parts]) for k in rows}
                order = np.argsort(got["row"], kind="stable")
                errors = {i: str(e) for i, e in enumerate(got["error"][order]) if e}
                self.journal.append(b, got["ans"][order], got["probs"][order], errors)


def _empty_columns() -> dict[str, np.ndarray]:
    return {"row": np.zeros(0, dtype=np.int64), "ans": np.zeros(0, dtype=np.int64),
            "error": np.zeros(0, dtype=object), "probs": np.zeros((0, len(PROB_COLUMNS)), dtype=np.float32)}


def _with_done(columns: dict[str, np.ndarray], done: dict[int, dict], grid: list[range]) -> dict[str, np.ndarray]:
    """Ray's rows plus the rows of the batches a journal already held."""
    if not done:
        return columns
    parts = [columns]
    for b, record in done.items():
        ans, probs, errors = record_rows(record)
        parts.append({"row": np.arange(grid[b].start, grid[b].stop, dtype=np.int64), "ans": ans,
                      "error": np.asarray([errors.get(i, "") for i in range(len(ans))], dtype=object),
                      "probs": probs})
    return {k: np.concatenate([p[k] for p in parts]) for k in columns}


def _dataset(ray, spec: ActorModel, images: str, on_error, items, opts: RayOptions, in_order: bool):
    """One block per grid batch on a fixed pool of actors. ``in_order`` (the Parquet sink: partitions
    follow info.csv) keeps Ray's output in input order; otherwise blocks come back as they finish, so
    the journal is never held back behind a slower earlier batch. A Ray task per batch costs nothing
    measurable at the default batch size (64) and 25-40 % of the loop at 8 (docs/submit.md). The
    order is an option of this dataset's own context (``Dataset.context``), not the process-wide one."""
    cpus = ray.cluster_resources().get("CPU", 1)
    actors = opts.num_actors or max(1, int(cpus))
    threads = max(1, int(opts.cpus_per_actor))
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    kwargs = {"num_gpus": opts.gpus_per_actor} if opts.gpus_per_actor > 0 else {}
    pool = ray.data.ActorPoolStrategy(size=actors, max_tasks_in_flight_per_actor=IN_FLIGHT_PER_ACTOR)
    ds = ds.map_batches(
        _PredictActor, batch_size=1, batch_format="numpy", compute=pool, num_cpus=opts.cpus_per_actor,
        fn_constructor_kwargs={"spec": spec, "threads": threads,
                               "gpu": opts.gpus_per_actor > 0, "images": images, "on_error": on_error,
                               "with_ids": in_order, "crash_marker": os.environ.get(CRASH_ONCE_ENV) or None},
        max_restarts=RESTARTS, max_task_retries=RESTARTS, **kwargs)
    ds.context.execution_options.preserve_order = in_order
    return ds


def _in_plan_order(columns: dict, plan: JobPlan) -> GridOutcome:
    """Ray's rows (in any order) → one answer per plan row, or RuntimeError when any is lost or doubled."""
    n = len(plan.rows)
    order = np.argsort(columns["row"], kind="stable")
    row_index = columns["row"][order]
    if len(row_index) != n or not np.array_equal(row_index, np.arange(n)):
        raise RuntimeError(f"Ray returned {len(row_index)} rows for {n} info.csv rows; not writing {plan.out_csv}")
    out = GridOutcome.empty(n)
    out.ans = columns["ans"][order].astype(np.int64)
    if "probs" in columns:
        out.probs = columns["probs"][order]
    image_ids = plan.image_ids
    out.errors = {image_ids[i]: str(e) for i, e in zip(row_index, columns["error"][order]) if e}
    out.processed = int((out.ans != SKIPPED).sum())
    return out
