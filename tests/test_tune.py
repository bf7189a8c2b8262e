"""mask-tune: the space parser and its errors, bad input before any training, pruning at an epoch
boundary, best.yaml rerunning to the trial's config, resume after kill -9, two workers on one storage.

Every trial is a tiny_cnn at 32×24 for one or two epochs on the shared ``synth_root``.
"""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml

from training.tuning import cli as tune, run as tune_run, storage as store
from training.cli import CONFIG_ALIASES, build_parser as train_parser, config_from_args, given_options
from training.tuning.space import key_types, load_space
from maskdata.yamlconfig import parse_with_config

REPO = Path(__file__).resolve().parent.parent
TINY = ["--model", "tiny_cnn", "--batch-size", "16", "--resize", "32", "24", "--workers", "0", "--no-tensorboard"]
SPACE = {"lr": {"low": 1.0e-3, "high": 1.0e-2, "log": True},
         "age_bins": [30, {"low": 55, "high": 60}],
         "criterion": {"choices": ["cross_entropy", "focal:0.6,f1:0.4"]}}


def _yaml(path: Path, values) -> Path:
    path.write_text(yaml.safe_dump(values))
    return path


def _space(tmp_path: Path, values: dict, name: str = "space.yaml"):
    return load_space(_yaml(tmp_path / name, values), key_types(train_parser()), CONFIG_ALIASES)


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _argv(synth_root, space: Path, out: Path, *extra: str, epochs: int = 1) -> list[str]:
    return ["--space", str(space), "--out", str(out), "--data-dir", str(synth_root / "train"), *TINY,
            "--epochs", str(epochs), "--sampler-seed", "0", *extra]


# --- the space parser ------------------------------------------------------------------------------

def test_space_parses_ranges_choices_list_elements_and_aliases(tmp_path):
    space = _space(tmp_path, {**SPACE, "epochs": {"low": 2, "high": 6, "step": 2},
                              "resize": {"choices": [[64, 48], [96, 72]]}, "no_cache": {"choices": [True, False]}})
    by = {p.name: p for p in space.params}
    assert by["lr"].kind is float and by["lr"].log and (by["lr"].low, by["lr"].high) == (1e-3, 1e-2), by["lr"]
    assert by["epochs"].kind is int and by["epochs"].step == 2, by["epochs"]
    assert by["age_bins[1]"].key == "age_bins" and by["age_bins[1]"].index == 1, by["age_bins[1]"]
    assert space.fixed == {"age_bins": [30, None]}, space.fixed
    assert _space(tmp_path, {"loss": {"choices": ["focal"]}}, "alias.yaml").params[0].key == "criterion", \
        "the alias loss: must become criterion:"
    assert by["resize"].choices == ([64, 48], [96, 72]) and by["no_cache"].kind is bool
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1)).ask()
    values = space.sample(trial)
    assert values["age_bins"][0] == 30 and 55 <= values["age_bins"][1] <= 60, values
    assert values["resize"] in ([64, 48], [96, 72]) and values["epochs"] in (2, 4, 6), values
    assert trial.params["resize"] in ("64,48", "96,72"), "list choices are stored as text for Optuna"


@pytest.mark.parametrize("values,expect", [
    ({"modle": {"choices": ["resnet18"]}}, "modle: unknown key; searchable keys:"),
    ({"model": {"low": 1, "high": 3}}, "model: takes text, so a low..high range does not fit"),
    ({"epochs": {"low": 1.5, "high": 4}}, "epochs: takes whole numbers, so low 1.5 does not fit"),
    ({"lr": {"low": 0.0, "high": 0.1, "log": True}}, "lr: a log range needs low > 0"),
    ({"lr": {"low": 0.1, "high": 0.01}}, "lr: low (0.1) must be below high (0.01)"),
    ({"lr": {"choices": ["fast"]}}, "lr: takes float values, got 'fast'"),
    ({"lr": {"low": 0.1}}, "lr: a range needs both low and high"),
    ({"lr": {"low": 0.1, "hihg": 1}}, "lr: unknown field 'hihg'"),
    ({"lr": 0.01}, "lr: expected a distribution"),
    ({"no_cache": {"low": 0, "high": 1}}, "no_cache: takes a switch"),
    ({"age_bins": [30, 58]}, "age_bins: no element is a distribution"),
    ({"age_bins": {"choices": [[30, 58, 70]]}}, "age_bins: each choice must be a list of 2 ints"),
    ({"data_dir": {"choices": ["a", "b"]}}, "data_dir: cannot be searched"),
    ({}, "the space is empty"),
    ({"criterion": {"choices": ["focal"]}, "loss": {"choices": ["f1"]}}, "criterion: given twice"),
    (["lr"], "expected a mapping of mask-train --config keys"),
])
def test_space_errors_name_the_key_and_the_problem(tmp_path, values, expect):
    with pytest.raises(ValueError) as e:
        _space(tmp_path, values)
    assert expect in str(e.value) and "\n" not in str(e.value), str(e.value)


@pytest.mark.parametrize("values,expect", [
    ({"model": {"choices": ["tiny_cnn", "resnet1000"]}}, "model: resnet1000 is not a valid value (unknown model"),
    ({"criterion": {"choices": ["focal:0.6,f2:0.4"]}}, "criterion: focal:0.6,f2:0.4 is not a valid value"),
    ({"val_fraction": {"low": 0.1, "high": 1.0}}, "val_fraction: 1.0 is not a valid value"),
    ({"epochs": {"low": 0, "high": 3}}, "epochs: 0 is not a valid value (--epochs must be >= 1"),
    ({"augment": {"choices": ["light", "extreme"]}}, "augment: extreme is not a valid value"),
])
def test_values_mask_train_would_refuse_are_one_line_errors_before_any_training(synth_root, tmp_path, capsys,
                                                                                values, expect):
    out = tmp_path / "study"
    assert tune.main(_argv(synth_root, _yaml(tmp_path / "s.yaml", values), out)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and expect in err[0], err
    assert not (out / "trials").exists() and not (out / "study.journal").exists(), "nothing may start before the checks"


def test_an_option_neither_tool_knows_is_a_one_line_error(synth_root, tmp_path, capsys):
    assert tune.main(_argv(synth_root, _yaml(tmp_path / "s.yaml", SPACE), tmp_path / "o", "--trails", "5")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown option '--trails'" in err[0], err


def test_bad_storage_and_a_study_with_another_objective_are_one_line_errors(synth_root, tmp_path, capsys):
    space = _yaml(tmp_path / "s.yaml", SPACE)
    assert tune.main(_argv(synth_root, space, tmp_path / "a", "--storage", "sqlite:////no/such/dir/x.db")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot open storage sqlite:////no/such/dir/x.db" in err[0], err
    assert tune.main(_argv(synth_root, space, tmp_path / "b", "--storage", "nosuchdb://x")) == 2
    assert "cannot open storage nosuchdb://x" in capsys.readouterr().err
    journal = tmp_path / "shared.journal"
    assert tune.main(_argv(synth_root, space, tmp_path / "c", "--storage", str(journal), "--study", "s",
                           "--create-only")) == 0
    capsys.readouterr()
    assert tune.main(_argv(synth_root, space, tmp_path / "c", "--storage", str(journal), "--study", "s",
                           "--folds", "2")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "study 's' exists with another objective" in err[0] and "2 folds" in err[0], err


@pytest.mark.slow
def test_an_sqlite_study_waits_out_a_lock_held_past_sqlites_default_timeout(tmp_path):
    """Another worker's commit can hold SQLite's one write lock for seconds on a busy disk; Python's
    default busy timeout (5 s) turned that into 'database is locked' and a dead worker."""
    import sqlite3
    import threading

    from training.tuning.storage import SQLITE_BUSY_TIMEOUT_S, open_storage

    held = 7.0
    assert SQLITE_BUSY_TIMEOUT_S > 2 * held
    db = tmp_path / "s.db"
    study = optuna.create_study(storage=open_storage(f"sqlite:///{db}", tmp_path), study_name="s")
    locked_now = threading.Event()

    def hold() -> None:
        con = sqlite3.connect(db, isolation_level=None)
        con.execute("BEGIN EXCLUSIVE")
        locked_now.set()
        time.sleep(held)
        con.execute("COMMIT")
        con.close()

    holder = threading.Thread(target=hold)
    holder.start()
    assert locked_now.wait(30), "the lock holder never started"
    t0 = time.monotonic()
    trial = study.ask()   # a write: waits for the lock instead of failing after 5 s
    waited = time.monotonic() - t0
    holder.join()
    study.tell(trial, 1.0)
    assert waited > held - 1.5, f"ask() returned after {waited:.1f} s while the database was locked for {held} s"
    assert [t.state.name for t in study.get_trials()] == ["COMPLETE"]


def test_a_storage_failure_mid_study_is_one_line_and_keeps_the_study(synth_root, tmp_path, capsys, monkeypatch):
    import sqlalchemy.exc

    def broken(study, ctx):
        try:
            raise sqlalchemy.exc.OperationalError("COMMIT", {}, Exception("database is locked"))
        except sqlalchemy.exc.OperationalError as e:
            raise optuna.exceptions.StorageInternalError("An exception is raised during the commit.") from e

    monkeypatch.setattr(tune_run, "work", broken)
    storage = f"sqlite:///{tmp_path / 's.db'}"
    assert tune.main(_argv(synth_root, _yaml(tmp_path / "s.yaml", SPACE), tmp_path / "o", "--storage", storage,
                           "--trials", "2")) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "storage failed" in err[0] and "database is locked" in err[0] \
        and "same command resumes" in err[0], err
    assert _study(storage, "o").get_trials(), "the study (its queued reference trial) must be kept"


def test_every_mask_tune_default_is_its_field():
    from dataclasses import fields

    defaults = vars(tune.build_parser().parse_args([]))
    for f in fields(tune.TuneOptions):
        assert defaults[f.name] == f.default, f"--{f.name} defaults to {defaults[f.name]!r}, its field to {f.default!r}"
    assert set(defaults) == {f.name for f in fields(tune.TuneOptions)}, "an option without a field"


# --- pruning ---------------------------------------------------------------------------------------

def test_the_trainer_hook_stops_a_run_at_an_epoch_boundary(synth_root, tmp_path):
    from training.cli import run

    class Stop(Exception):
        pass

    seen = []

    def hook(fold, epoch, row):
        seen.append((fold, epoch, row["val_f1"]))
        if epoch == 1:
            raise Stop

    a = parse_with_config(train_parser(), ["--data-dir", str(synth_root / "train"), "--out", str(tmp_path / "r"),
                                           *TINY, "--epochs", "3", "--no-progress"])
    with pytest.raises(Stop):
        run(config_from_args(a), None, hook)
    rows = _rows(tmp_path / "r" / "metrics.csv")
    assert [s[:2] for s in seen] == [(0, 1)] and len(rows) == 1, (seen, rows)
    assert float(rows[0]["val_f1"]) == pytest.approx(seen[0][2], abs=1e-5), "the hook gets the epoch's metrics row"
    from training.checkpoint import load_checkpoint
    assert load_checkpoint(tmp_path / "r" / "last.pt")["epoch"] == 1, "last.pt must hold the epoch the run stopped at"


@pytest.mark.slow
def test_a_pruned_trial_stops_at_the_epoch_boundary_and_is_recorded_as_pruned(synth_root, tmp_path, monkeypatch,
                                                                              capsys):
    # a pruner that prunes at the first report: the outcome does not depend on the scores
    monkeypatch.setattr(tune_run, "make_pruner", lambda o: optuna.pruners.ThresholdPruner(lower=1.5))
    out = tmp_path / "study"
    assert tune.main(_argv(synth_root, _yaml(tmp_path / "s.yaml", SPACE), out, "--trials", "2", epochs=2)) == 0
    rows = _rows(out / "trials.csv")
    assert [(r["state"], r["epochs_run"]) for r in rows] == [("PRUNED", "1")] * 2, rows
    for r in rows:
        assert len(_rows(Path(r["run_dir"]) / "metrics.csv")) == 1, f"trial {r['number']} trained past its pruning"
    printed = capsys.readouterr().out
    assert "trial 1 pruned after 1 of 2 epoch(s)" in printed and "optuna-dashboard" in printed, printed


# --- draws: every trial number its own, a repeat never trained ---------------------------------------

def test_each_trial_number_draws_its_own_values_whatever_the_worker():
    """Trial N's draw depends on (seed, N) only, so a restarted or second worker (new numbers)
    cannot replay the first worker's draws, and a rerun with the same seed is reproducible."""
    def draw(seed, number):
        study = optuna.create_study(sampler=tune_run.trial_sampler(seed, number))
        return study.ask().suggest_float("lr", 1e-3, 1e-2, log=True)

    assert draw(0, 5) == draw(0, 5), "the same seed and trial number must draw the same value"
    values = [draw(0, n) for n in range(8)]
    assert len(set(values)) == 8, f"trial numbers repeated a draw: {values}"
    assert draw(1, 5) != draw(0, 5), "--sampler-seed must change the draws"


@pytest.mark.slow
def test_a_draw_that_repeats_a_finished_trial_is_not_trained(synth_root, tmp_path, capsys):
    """A space with one point: the reference trial trains, every later draw repeats it and is closed
    unfinished with ``repeat_of``, until the worker says the space is exhausted."""
    out = tmp_path / "study"
    space = _yaml(tmp_path / "s.yaml", {"criterion": {"choices": ["cross_entropy"]}})
    assert tune.main(_argv(synth_root, space, out, "--trials", "2", "--pruner", "none",
                           "--config", str(_yaml(tmp_path / "b.yaml", {"criterion": "cross_entropy"})))) == 2
    err = capsys.readouterr().err
    assert "space seems exhausted" in err, err[-2000:]
    trials = _study(str(out / "study.journal"), "study").get_trials(deepcopy=False)
    assert [t.state.name for t in trials[:1]] == ["COMPLETE"], trials[0]
    repeats = trials[1:]
    assert len(repeats) == tune_run.MAX_REPEATS_IN_A_ROW and \
        all(t.state.name == "FAIL" and t.user_attrs.get("repeat_of") == 0 for t in repeats), \
        [(t.number, t.state.name, t.user_attrs) for t in repeats]
    assert not any("run_dir" in t.user_attrs for t in repeats), "a repeated draw must not train"
    rows = _rows(out / "trials.csv")
    assert [r["repeat_of"] for r in rows] == [""] + ["0"] * len(repeats), rows


# --- a study's outputs -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def study_dir(synth_root, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tune")
    out = tmp / "study"
    base = _yaml(tmp / "base.yaml", {"lr": 0.004, "age_bins": [30, 60]})
    rc = tune.main(_argv(synth_root, _yaml(tmp / "s.yaml", SPACE), out, "--trials", "3", "--pruner", "none",
                         "--config", str(base)))
    assert rc == 0, f"mask-tune exited {rc}"
    return out


@pytest.mark.slow
def test_study_writes_trials_csv_plots_and_the_reference_trial_first(study_dir):
    rows = _rows(study_dir / "trials.csv")
    assert [r["state"] for r in rows] == ["COMPLETE"] * 3, rows
    ref = json.loads((Path(rows[0]["run_dir"]) / "config.json").read_text())
    assert rows[0]["reference"] == "1" and ref["optim"]["lr"] == 0.004 and ref["data"]["age_bins"] == [30, 60], \
        "trial 0 must be the base config unchanged"
    assert rows[0]["lr"] == "0.004" and rows[0]["age_bins[1]"] == "60", "the reference's values are recorded"
    for r in rows[1:]:
        cfg = json.loads((Path(r["run_dir"]) / "config.json").read_text())
        assert cfg["optim"]["lr"] == pytest.approx(float(r["lr"])) and cfg["data"]["age_bins"][1] == int(r["age_bins[1]"])
    for name in ("history.png", "intermediate.png", "importances.png"):
        assert (study_dir / name).stat().st_size > 1000, f"{name} missing or empty"


def test_best_yaml_reruns_to_the_best_trials_config(study_dir, tmp_path):
    rows = _rows(study_dir / "trials.csv")
    best = max(rows, key=lambda r: float(r["value"]))
    head = (study_dir / "best.yaml").read_text().splitlines()[0]
    assert f"best trial {best['number']} " in head, head
    argv = ["--config", str(study_dir / "best.yaml"), "--out", str(tmp_path / "again")]
    a = parse_with_config(train_parser(), argv, csv_keys=("age_bins", "milestones", "mean", "std"),
                          aliases=CONFIG_ALIASES)
    again = config_from_args(a, given_options(argv)).to_dict()
    want = json.loads((Path(best["run_dir"]) / "config.json").read_text())
    again["train"]["out"] = want["train"]["out"]
    assert again == want, "mask-train --config best.yaml must rebuild the best trial's configuration"


# --- resume and workers (subprocesses) ---------------------------------------------------------------

def _spawn(argv: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "training.tuning.cli", *argv], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _study(storage: str, name: str) -> optuna.Study:
    from training.tuning.storage import open_storage
    return optuna.load_study(study_name=name, storage=open_storage(storage, Path(".")))


def _check_budget(study: optuna.Study, n: int) -> list:
    trials = study.get_trials(deepcopy=False)
    done = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(done) == n, f"{len(done)} finished trials, expected {n}: {[(t.number, t.state.name) for t in trials]}"
    assert not [t for t in trials if t.state.name in ("RUNNING", "WAITING")], "a trial was left behind"
    dirs = [t.user_attrs["run_dir"] for t in done]
    assert len(set(dirs)) == n and all((Path(d) / "metrics.csv").is_file() for d in dirs), dirs
    drawn = [tuple(sorted(t.params.items())) for t in done]
    assert len(set(drawn)) == n, f"finished trials drew the same values: {drawn}"
    return trials


@pytest.mark.slow
def test_resume_after_kill_9_continues_the_killed_trial_and_draws_new_values(synth_root, tmp_path):
    """kill -9 while trial 1 trains its second epoch; the same command (same ``--sampler-seed``) then
    continues trial 1 from its epoch-1 checkpoint and draws values no finished trial had."""
    out, n, epochs = tmp_path / "study", 3, 3
    argv = _argv(synth_root, _yaml(tmp_path / "s.yaml", SPACE), out, "--trials", str(n), "--pruner", "none",
                 epochs=epochs)
    proc = _spawn(argv)
    journal = str(out / "study.journal")
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:   # kill it while trial 1 trains past its first epoch (trial 0 done)
        try:
            trials = _study(journal, "study").get_trials(deepcopy=False)
        except KeyError:   # the journal file exists before the study is written into it
            trials = []
        states = {t.number: t.state.name for t in trials}
        if states.get(0) == "COMPLETE" and states.get(1) == "RUNNING" and \
                trials[1].user_attrs.get("epochs_run", 0) >= 1:
            break
        assert proc.poll() is None, f"mask-tune ended early: {proc.stdout.read()[-2000:]}"
        time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert tune.main(argv) == 0, "the same command must resume the study"
    trials = _check_budget(_study(journal, "study"), n)
    killed = next(t for t in trials if t.number == 1)
    assert killed.state.name == "FAIL", "the killed trial is recorded as failed"
    retry = [t for t in trials if t.user_attrs.get("retry_of") == 1]
    assert len(retry) == 1 and retry[0].params == killed.params and retry[0].state.name == "COMPLETE", \
        "the killed trial's settings must run again, once"
    assert retry[0].user_attrs.get("resumed_from") == killed.user_attrs["run_dir"], retry[0].user_attrs
    trained = killed.user_attrs["epochs_run"]
    assert retry[0].user_attrs["epochs_run"] == epochs and \
        sorted(retry[0].intermediate_values) == list(range(1, epochs + 1)), \
        f"the retry continues from the killed trial's {trained} epoch(s): {retry[0].user_attrs}"
    with open(Path(retry[0].user_attrs["run_dir"]) / "metrics.csv", newline="") as fh:
        assert len(list(csv.DictReader(fh))) == epochs, "one metrics row per epoch, none trained twice"


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_two_workers_share_one_study_without_losing_or_repeating_trials(synth_root, tmp_path, kind):
    n = 4
    storage = str(tmp_path / "s.journal") if kind == "journal" else f"sqlite:///{tmp_path / 's.db'}"
    space = _yaml(tmp_path / "s.yaml", SPACE)
    common = ["--storage", storage, "--study", "shared", "--trials", str(n), "--pruner", "none"]
    assert tune.main(_argv(synth_root, space, tmp_path / "w0", *common, "--create-only")) == 0
    workers = [_spawn(_argv(synth_root, space, tmp_path / f"w{i}", *common)) for i in (1, 2)]
    logs = [w.communicate(timeout=600)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], "\n=====\n".join(lg[-6000:] for lg in logs)
    trials = _check_budget(_study(storage, "shared"), n)
    surplus = [t for t in trials if t.user_attrs.get("surplus")]
    assert all(t.state.name == "FAIL" and t.user_attrs.get("epochs_run", 0) == 0 for t in surplus), \
        "a surplus trial must be closed before any training"



_ASKER = """
import sys, time
from pathlib import Path
import optuna
from training.tuning import storage as store
optuna.logging.set_verbosity(optuna.logging.WARNING)
spec, out, n, workers = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
study = optuna.load_study(study_name="s", storage=store.open_storage(spec, out))
(out / f"ready-{sys.argv[5]}").touch()
while len(list(out.glob("ready-*"))) < workers:   # all ask at the same moment
    pass
print(" ".join(str(store.ask(study, store.lock_target(spec, out)).number) for _ in range(n)))
"""


@pytest.mark.slow
def test_a_queued_trial_goes_to_one_worker_only(tmp_path):
    """SQLite ignores SELECT ... FOR UPDATE: workers asking at the same moment took the same queued
    trial (a study's reference trial, with two workers started together). Four workers, released
    together, ask for 40 queued trials: without the lock in tune_storage.ask this took the same trial
    twice 23 times in 3 runs; each trial must go to exactly one worker."""
    spec = f"sqlite:///{tmp_path / 's.db'}"
    study = optuna.create_study(storage=store.open_storage(spec, tmp_path), study_name="s")
    for i in range(40):
        study.enqueue_trial({"x": float(i)})
    workers = [subprocess.Popen([sys.executable, "-c", _ASKER, spec, str(tmp_path), "10", "4", str(k)], cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for k in range(4)]
    outs = [w.communicate(timeout=300) for w in workers]
    assert [w.returncode for w in workers] == [0, 0, 0, 0], [err[-2000:] for _, err in outs]
    taken = sorted(int(n) for out, _ in outs for n in out.split())
    assert taken == list(range(40)), f"each of the 40 queued trials must go to exactly one worker: {taken}"
