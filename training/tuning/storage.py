"""Where a ``mask-tune`` study lives and how workers share it.

- Storage: a journal file (Optuna's ``JournalStorage`` on a ``JournalFileBackend``; the default is
  ``STUDY_DIR/study.journal``), or an ``sqlite:///`` / database URL (``RDBStorage``). Both are
  append-only or transactional, so a study survives Ctrl-C and ``kill -9``.
- Creation happens once: under an OS file lock beside the journal or SQLite file (two processes
  creating the tables of a fresh file at the same time fail in Optuna), for other URLs with retries.
- The trial budget is counted in the storage, not per process: a worker starts a trial only while
  finished + running trials are below ``--trials``, and a trial whose number lands past the budget
  (two workers asked at the same moment) is closed as FAIL with ``surplus`` set, before any training.
- A trial left RUNNING by a dead worker (same host: its pid is gone; any host: no heartbeat for
  ``stale_after`` seconds) is marked FAIL and its parameters are queued again, so it is retried and
  not lost.
- A trial is asked for under an OS lock beside a journal or SQLite file (:func:`ask`), so a queued
  trial goes to one worker only.
- SQLite lets one writer at a time in and answers "database is locked" to a connection that waited
  longer than its busy timeout (Python's default: 5 s); two workers on one SQLite file on a busy
  2-core machine have met that, so an SQLite study waits ``SQLITE_BUSY_TIMEOUT_S`` instead
  (``RDBStorage``'s documented ``engine_kwargs``).
"""
from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState

from maskdata.io import locked

log = logging.getLogger(__name__)

DONE = (TrialState.COMPLETE, TrialState.PRUNED)
LIVE = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
OBJECTIVE_ATTR = "mask_tune_objective"
SQLITE_BUSY_TIMEOUT_S = 120.0


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def default_journal(out: Path) -> Path:
    return out / "study.journal"


def describe(spec: str | None, out: Path) -> str:
    """What ``optuna-dashboard`` opens: the URL, or the journal file's path."""
    return spec if spec and "://" in spec else str(Path(spec) if spec else default_journal(out))


def open_storage(spec: str | None, out: Path):
    """A journal file (``spec`` None or a path) or an RDB URL; ValueError with one line if it cannot be opened."""
    if spec and "://" in spec:
        try:
            kwargs = {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S}} if spec.startswith("sqlite:") else {}
            with _creation_lock(lock_target(spec, out)):
                return optuna.storages.RDBStorage(spec, engine_kwargs=kwargs)
        except Exception as e:   # sqlalchemy raises its own types (bad driver, unreachable host, bad path)
            raise ValueError(f"cannot open storage {spec}: {one_line(e)}") from None
    path = Path(spec) if spec else default_journal(out)
    if path.is_dir():
        raise ValueError(f"cannot open storage {path}: it is a folder; give a journal file path or a database URL")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        return JournalStorage(JournalFileBackend(str(path)))
    except OSError as e:
        raise ValueError(f"cannot open storage {path}: {one_line(e)}") from None


def one_line(e: BaseException) -> str:
    """The first line of an exception's message (its type name if it has none), at most 300 characters."""
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:300]


def lock_target(spec: str | None, out: Path) -> Path | None:
    """The file whose creation must happen once: the journal file, or an SQLite database (None: a server)."""
    prefix = "sqlite:///"
    if spec and "://" in spec:
        return Path(spec[len(prefix):]) if spec.startswith(prefix) and spec != prefix + ":memory:" else None
    return Path(spec) if spec else default_journal(out)


@contextlib.contextmanager
def _creation_lock(target: Path | None):
    """An exclusive OS lock beside ``target`` while its tables / the study are created (None: no lock)."""
    if target is None:
        yield
        return
    if not target.parent.is_dir():
        raise ValueError(f"folder {target.parent} does not exist")
    with locked(f"{target}.create-lock"):   # not "<file>.lock": Optuna's journal lock uses that name
        yield


def open_study(storage, lock: Path | None, name: str, objective: str, sampler, pruner,
               reference: dict) -> optuna.Study:
    """Create the study (once, under ``lock``, with the reference trial queued first) or load it;
    ValueError if a study of that name exists with another objective or direction."""
    with _creation_lock(lock):
        for attempt in range(5):
            try:
                study = optuna.create_study(storage=storage, study_name=name, direction="maximize",
                                            load_if_exists=True, sampler=sampler, pruner=pruner)
                break
            except optuna.exceptions.DuplicatedStudyError:   # another machine created it a moment ago
                time.sleep(0.5 * (attempt + 1))
        else:
            study = optuna.load_study(storage=storage, study_name=name, sampler=sampler, pruner=pruner)
        recorded = study.user_attrs.get(OBJECTIVE_ATTR)
        if len(study.directions) != 1 or study.direction != optuna.study.StudyDirection.MAXIMIZE:
            raise ValueError(f"study {name!r} exists with another objective ({study.directions}); "
                             "use another --study name")
        if recorded is not None and recorded != objective:
            raise ValueError(f"study {name!r} exists with another objective ({recorded!r}, this run: {objective!r}); "
                             "use another --study name or the same --folds / --val-fraction")
        if recorded is None:
            if study.get_trials(deepcopy=False) and OBJECTIVE_ATTR not in study.user_attrs:
                raise ValueError(f"study {name!r} exists and was not made by mask-tune; use another --study name")
            study.set_user_attr(OBJECTIVE_ATTR, objective)
            study.enqueue_trial(reference, user_attrs={"reference": True})
    return study


def ask(study: optuna.Study, target: Path | None) -> optuna.Trial:
    """``study.ask()`` under an OS lock beside a local storage file (None: a database server).

    ``ask`` takes a queued trial by reading it as WAITING and then marking it RUNNING. A database
    server makes that one step (SELECT ... FOR UPDATE); SQLite ignores FOR UPDATE, so two workers
    asking at the same moment both took the queued reference trial, and the slower one failed when it
    wrote to the trial the other had finished. The lock makes the read and the write one step."""
    if target is None:
        return study.ask()
    with locked(f"{target}.ask-lock"):
        return study.ask()


def count(study: optuna.Study, states, below: int | None = None) -> int:
    trials = study.get_trials(deepcopy=False, states=states)
    return sum(1 for t in trials if below is None or t.number < below)


def is_surplus(study: optuna.Study, number: int, budget: int) -> bool:
    """True if ``budget`` live trials already have lower numbers (another worker took the last slot)."""
    return bool(budget) and count(study, LIVE, below=number) >= budget


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_stale(t: optuna.trial.FrozenTrial, stale_after: float, now: float | None = None) -> bool:
    host, _, pid = str(t.user_attrs.get("worker", "")).rpartition(":")
    if host == socket.gethostname() and pid.isdigit() and int(pid) != os.getpid():
        if not _pid_alive(int(pid)):
            return True
    beat = t.user_attrs.get("heartbeat") or (t.datetime_start.timestamp() if t.datetime_start else None)
    return beat is not None and (now or time.time()) - beat > stale_after


def reap_stale(study: optuna.Study, stale_after: float) -> list[int]:
    """FAIL every RUNNING trial whose worker is gone and queue its parameters again; the numbers reaped."""
    reaped = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not is_stale(t, stale_after):
            continue
        try:
            study.tell(t.number, state=TrialState.FAIL)
        except (ValueError, RuntimeError):   # another worker reaped it first (Optuna: already finished)
            continue
        requeue(study, t, "its worker stopped (killed or lost)")
        reaped.append(t.number)
    return reaped


def requeue(study: optuna.Study, t, why: str) -> None:
    attrs = {"retry_of": t.number}
    if t.user_attrs.get("reference"):
        attrs["reference"] = True
    study.enqueue_trial(dict(t.params), user_attrs=attrs)
    log.warning("trial %d failed (%s); its settings are queued again", t.number, why)


class Heartbeat:
    """Records ``time.time()`` in the trial's user attribute ``heartbeat`` every ``interval`` seconds."""

    def __init__(self, trial, interval: float):
        self.trial, self.interval = trial, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mask-tune-heartbeat", daemon=True)

    def beat(self) -> None:
        self.trial.set_user_attr("heartbeat", time.time())

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with contextlib.suppress(Exception):   # a storage hiccup must not kill the training thread
                self.beat()

    def __enter__(self) -> "Heartbeat":
        self.beat()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
