"""The ``mask-tune`` worker: check everything, open the study, run trials until the study's budget is spent.

A trial is ``training.cli.run`` on the base run with the sampled values applied, into
STUDY_DIR/trials/NNNN/; its per-epoch hook reports the validation macro F1 to Optuna (step = fold ×
epochs + epoch) and raises ``optuna.TrialPruned`` when the pruner says so, which stops the run at
that epoch boundary. The trial is then told PRUNED, COMPLETE (value: the best epoch's val macro F1, or
its mean over the folds with ``--folds``) or FAIL (one line logged).

Every worker, first or resumed, explores: trial N's values are drawn by a TPE sampler seeded from
(``--sampler-seed``, N), so a rerun of the same command continues the study's draws instead of
replaying them (trial numbers are never reused), and a draw that equals a finished trial's values
exactly is closed as FAIL with ``repeat_of`` set, before any training. A trial queued again after
its worker stopped (``retry_of``) continues from the stopped trial's last epoch checkpoint.
"""
from __future__ import annotations

import argparse
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import optuna
from optuna.trial import TrialState
from tqdm import tqdm

from maskdata.io import atomic_write_text
from training.tuning import report as tune_report, storage as store
from training.tuning.base import Base, make_pruner, objective_text, reference_params
from training.tuning.space import Space, key_types, load_space

log = logging.getLogger("training.tuning.cli")

MAX_FAILURES_IN_A_ROW = 3
MAX_REPEATS_IN_A_ROW = 20   # draws that repeat a finished trial before the space counts as exhausted


@dataclass
class Context:
    o: argparse.Namespace
    base: Base
    space: Space
    out: Path
    storage_text: str
    started: float = field(default_factory=time.monotonic)


def prepare(o: argparse.Namespace, train_argv: list[str]) -> tuple[optuna.Study, Context]:
    """Every check that can fail, then the study (created once); nothing trains here."""
    from maskdata.layout import read_train_dir
    from training.cli import CONFIG_ALIASES, build_parser

    base = Base.parse(train_argv)
    if not base.ns.data_dir:
        raise ValueError("--data-dir is required (the mask-train option: DIR/train with train.csv and images/)")
    out = Path(o.out)
    probe = out / "trials" / "probe"
    ref_cfg = base.config({}, probe)
    space = load_space(o.space, key_types(build_parser()), CONFIG_ALIASES)
    space.check(lambda values: base.config(values, probe))
    read_train_dir(ref_cfg.data.data_dir, strict=ref_cfg.data.strict)   # the data is there and readable
    storage = store.open_storage(o.storage, out)
    optuna.logging.set_verbosity(optuna.logging.WARNING)   # mask-tune prints its own line per trial
    sampler = trial_sampler(o.sampler_seed, 0)
    study = store.open_study(storage, store.lock_target(o.storage, out), o.study or out.resolve().name, objective_text(ref_cfg), sampler,
                             make_pruner(o), reference_params(space, base))
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "space.yaml", Path(o.space).read_text(encoding="utf-8"))
    return study, Context(o, base, space, out, store.describe(o.storage, out))


def trial_sampler(seed: int | None, number: int) -> optuna.samplers.TPESampler:
    """The sampler that draws trial ``number``: seeded from (``seed``, number), so each trial number has
    its own draw, whichever worker or restart asks for it; None: a fresh seed."""
    if seed is None:
        return optuna.samplers.TPESampler()
    return optuna.samplers.TPESampler(seed=int(np.random.SeedSequence([seed, number]).generate_state(1)[0]))


def work(study: optuna.Study, ctx: Context) -> None:
    """Run trials until the study holds ``--trials`` finished ones (or ``--timeout`` passes)."""
    o, failures, repeats = ctx.o, 0, 0
    bar = tqdm(total=o.trials or None, initial=store.count(study, store.DONE), unit="trial",
               desc=f"study {study.study_name}", dynamic_ncols=True)
    try:
        while True:
            for n in store.reap_stale(study, o.stale_after):
                bar.write(f"trial {n} failed: its worker stopped; its settings are queued again")
            done = store.count(study, store.DONE)
            bar.n = done
            bar.refresh()
            if o.trials and done >= o.trials:
                break
            if o.timeout and time.monotonic() - ctx.started > o.timeout:
                bar.write(f"--timeout {o.timeout:g} s reached: this worker starts no new trial")
                break
            if o.trials and store.count(study, (*store.DONE, TrialState.RUNNING)) >= o.trials:
                time.sleep(min(5.0, o.heartbeat))   # the remaining trials run in other workers
                continue
            trial = store.ask(study, store.lock_target(o.storage, ctx.out))
            if store.is_surplus(study, trial.number, o.trials):
                trial.set_user_attr("surplus", True)
                study.tell(trial, state=TrialState.FAIL)   # nothing trained: another worker took the last slot
                continue
            t = run_trial(study, trial, ctx)
            if "repeat_of" in t.user_attrs:
                repeats += 1
                bar.write(f"trial {t.number} drew trial {t.user_attrs['repeat_of']}'s values again: not trained")
                if repeats >= MAX_REPEATS_IN_A_ROW:
                    raise ValueError(f"{repeats} draws in a row repeated finished trials: the space seems "
                                     f"exhausted ({store.count(study, store.DONE)} finished trials)")
                continue
            repeats = 0
            bar.write(tune_report.trial_line(t))
            tune_report.write_tables(study, ctx.out)
            failures = failures + 1 if t.state == TrialState.FAIL else 0
            if failures >= MAX_FAILURES_IN_A_ROW:
                raise ValueError(f"{failures} trials in a row failed; the last: {t.user_attrs.get('error')}")
    finally:
        bar.close()


def _values(trial: optuna.Trial, ctx: Context) -> dict:
    """The trial's --config overrides; the reference trial trains the base run as it is (its parameters
    that the space can express are recorded, so the sampler learns from it)."""
    if not trial.user_attrs.get("reference"):
        return ctx.space.sample(trial)
    fixed = reference_params(ctx.space, ctx.base)
    for p in ctx.space.params:
        if p.name in fixed:
            p.suggest(trial)
    return {}


def _repeat_of(study: optuna.Study, trial: optuna.Trial) -> int | None:
    """The number of a finished trial with exactly ``trial``'s values, if there is one."""
    if trial.user_attrs.get("retry_of") is not None:   # queued again on purpose: its first run failed
        return None
    return next((t.number for t in study.get_trials(deepcopy=False, states=store.DONE)
                 if t.params == trial.params), None)


def _continue_retry(study: optuna.Study, trial: optuna.Trial, run_dir: Path, cfg) -> tuple[Path | None, int]:
    """For a trial queued again after its worker stopped: the stopped trial's folder copied to
    ``run_dir`` and its epochs replayed to the pruner. (what ``training.cli.run`` resumes from or None,
    epochs already trained)."""
    from training.checkpoint import load_checkpoint

    retry_of = trial.user_attrs.get("retry_of")
    old = _frozen(study, retry_of) if retry_of is not None else None
    old_dir = Path(old.user_attrs["run_dir"]) if old is not None and old.user_attrs.get("run_dir") else None
    if old_dir is None or not old_dir.is_dir() or run_dir.exists():
        return None, 0
    kfold = cfg.train.folds >= 2
    lasts = {f: old_dir / f"fold{f}" / "last.pt" for f in range(cfg.train.folds)} if kfold else {0: old_dir / "last.pt"}
    try:   # each fold's finished epochs: their val macro F1, as last.pt records them
        trained = {f: [float(row["val_f1"]) for row in load_checkpoint(p)["history"]]
                   for f, p in lasts.items() if p.is_file()}
    except (ValueError, OSError, KeyError) as e:   # an unreadable checkpoint: train from the start instead
        log.warning("trial %d starts over: trial %d's checkpoint is unreadable (%s)", trial.number, retry_of,
                    store.one_line(e))
        return None, 0
    if not trained:
        return None, 0
    shutil.copytree(old_dir, run_dir)
    for f, scores in trained.items():   # replayed to the pruner, so it judges the trial as a whole (the
        for epoch, value in enumerate(scores, start=1):   # stopped trial may have died before reporting one)
            trial.report(value, f * cfg.train.epochs + epoch)
    epochs = sum(len(v) for v in trained.values())
    trial.set_user_attr("resumed_from", str(old_dir))
    log.info("trial %d continues trial %d from its epoch checkpoint(s) (%d epoch(s) trained)", trial.number,
             retry_of, epochs)
    return (run_dir if kfold else run_dir / "last.pt"), epochs


def run_trial(study: optuna.Study, trial: optuna.Trial, ctx: Context) -> optuna.trial.FrozenTrial:
    from training.cli import run

    study.sampler = trial_sampler(ctx.o.sampler_seed, trial.number)   # before any value is drawn
    values = _values(trial, ctx)
    repeat = _repeat_of(study, trial)
    if repeat is not None:
        trial.set_user_attr("repeat_of", repeat)
        study.tell(trial, state=TrialState.FAIL)
        return _frozen(study, trial.number)
    run_dir = (ctx.out / "trials" / f"{trial.number:04d}").resolve()
    cfg = ctx.base.config(values, run_dir)
    resume, epochs_run = _continue_retry(study, trial, run_dir, cfg)
    for k, v in (("run_dir", str(run_dir)), ("worker", store.worker_id()), ("epochs_run", epochs_run)):
        trial.set_user_attr(k, v)
    trial.set_user_attr("epochs_planned", cfg.train.epochs * max(1, cfg.train.folds))

    def on_epoch_end(fold: int, epoch: int, row: dict) -> None:
        nonlocal epochs_run
        epochs_run += 1
        trial.set_user_attr("epochs_run", epochs_run)
        trial.report(float(row["val_f1"]), fold * cfg.train.epochs + epoch)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned at fold {fold} epoch {epoch}")

    try:
        with store.Heartbeat(trial, ctx.o.heartbeat):
            best = run(cfg, resume, on_epoch_end)
    except optuna.TrialPruned:
        study.tell(trial, state=TrialState.PRUNED)
    except KeyboardInterrupt:
        study.tell(trial, state=TrialState.FAIL)
        store.requeue(study, _frozen(study, trial.number), "interrupted")
        raise
    except Exception as e:   # one bad trial (NaN loss, out of memory) must not end the study
        trial.set_user_attr("error", f"{type(e).__name__}: {store.one_line(e)}")
        study.tell(trial, state=TrialState.FAIL)
        log.error("trial %d failed: %s", trial.number, trial.user_attrs["error"])
    else:
        study.tell(trial, float(best.get("f1_mean", best.get("f1"))))
    return _frozen(study, trial.number)


def _frozen(study: optuna.Study, number: int) -> optuna.trial.FrozenTrial:
    return next(t for t in study.get_trials(deepcopy=False) if t.number == number)


def finish(study: optuna.Study, ctx: Context) -> None:
    """trials.csv, best.yaml, plots, and where to look next."""
    tune_report.write_tables(study, ctx.out)
    plots = tune_report.write_plots(study, ctx.out)
    best = tune_report.best_trial(study)
    done = store.count(study, store.DONE)
    pruned = store.count(study, (TrialState.PRUNED,))
    print(f"study {study.study_name!r}: {done} finished trial(s), {pruned} pruned; results in {ctx.out}/ "
          f"(trials.csv{', best.yaml' if best else ''}{''.join(', ' + p for p in plots)})")
    if best is not None:
        print(f"best: trial {best.number}, val macro F1 {best.value:.4f}; rerun with "
              f"mask-train --config {ctx.out}/best.yaml --out runs/best")
    print(f"dashboard: optuna-dashboard {ctx.storage_text}   (pip install optuna-dashboard)")
