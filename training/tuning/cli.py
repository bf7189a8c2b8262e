"""``mask-tune``: search ``mask-train`` settings with Optuna; pruned, resumable, shared by many workers.

    mask-tune --space recipes/spaces/age_loss.yaml --out studies/s1 --data-dir DATA/train --trials 20
    mask-tune --space S.yaml --out studies/s1 --data-dir DATA/train --trials 20         # same again: resumes
    mask-tune --space S.yaml --out studies/cv --data-dir DATA/train --folds 5 --timeout 3600
    mask-tune --space S.yaml --out studies/s2 --storage sqlite:///studies/s2.db --create-only   # once, then
    mask-tune --space S.yaml --out studies/s2 --storage sqlite:///studies/s2.db --data-dir DATA/train  # per worker

Every option mask-tune does not know is a mask-train option (``--config BASE.yaml``, ``--data-dir``,
``--model``, ``--epochs``, ``--folds`` ...): together they are the base run, trained first as the
reference trial. Each trial is an ordinary run folder, STUDY_DIR/trials/NNNN/ (config.yaml reruns it
with ``mask-train --config``). See docs/training.md "Searching settings".
"""
from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass, field, fields

log = logging.getLogger("training.tuning.cli")

PRUNERS = ("median", "percentile", "hyperband", "halving", "none")


def _f(default, help: str):
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class TuneOptions:
    """Every mask-tune default, written once (the parser reads them; tests compare)."""
    space: str = _f(None, "YAML mapping of mask-train --config keys to distributions (required)")
    out: str = _f(None, "study folder: trials/, trials.csv, best.yaml, plots, the journal file (required)")
    trials: int = _f(20, "finished (complete or pruned) trials the study should have, over all workers; "
                         "0 = no limit (use --timeout)")
    timeout: float = _f(0.0, "seconds after which this worker starts no new trial (0 = none)")
    study: str = _f(None, "study name (default: the --out folder's name)")
    storage: str = _f(None, "journal file path, sqlite:///FILE.db or a database URL (default: STUDY_DIR/study.journal)")
    pruner: str = _f("median", "when to stop a trial at an epoch boundary")
    pruner_startup: int = _f(3, "trials run to the end before the pruner may stop one")
    pruner_warmup: int = _f(0, "epochs of every trial that are never pruned")
    percentile: float = _f(50.0, "percentile pruner: stop a trial below this percentile of the others")
    sampler_seed: int | None = _f(None, "TPE sampler seed (default: a fresh one per worker, so workers "
                                        "sharing a study draw different settings)")
    heartbeat: float = _f(30.0, "seconds between a running trial's heartbeats")
    stale_after: float = _f(1800.0, "a RUNNING trial without a heartbeat for this long (or whose worker "
                                    "process on this host is gone) is failed and queued again")
    create_only: bool = _f(False, "create the study (and queue the reference trial), then exit: run once "
                                  "before starting workers on a shared database")
    verbose: bool = _f(False, "log every epoch of every trial")


def _help(name: str) -> str:
    return next(f for f in fields(TuneOptions) if f.name == name).metadata["help"]


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    def _get_help_string(self, action):
        # a None default is explained in the help text itself
        return action.help if action.default is None else super()._get_help_string(action)


METAVARS = {"space": "FILE.yaml", "out": "STUDY_DIR", "trials": "N", "timeout": "S", "study": "NAME",
            "storage": "FILE|URL", "heartbeat": "S", "stale_after": "S", "sampler_seed": "N"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mask-tune", allow_abbrev=False, formatter_class=_Formatter,
        description="Search mask-train settings with Optuna (TPE sampling, pruning at epoch boundaries). Any "
                    "other option is a mask-train option (mask-train --help: --data-dir, --config BASE.yaml, "
                    "--model, --epochs, --folds K ...) and sets the base run, trained first as the reference "
                    "trial.",
        epilog="examples:\n" + __doc__.split("\n\n")[1])
    for f in fields(TuneOptions):
        flag = "--" + f.name.replace("_", "-")
        if isinstance(f.default, bool):
            p.add_argument(flag, action="store_true", help=f.metadata["help"])
        elif f.name == "pruner":
            p.add_argument(flag, default=f.default, choices=PRUNERS, help=f.metadata["help"])
        else:
            kind = int if "int" in f.type else float if "float" in f.type else str
            p.add_argument(flag, default=f.default, type=kind, help=f.metadata["help"], metavar=METAVARS.get(f.name))
    return p


def check_options(o: argparse.Namespace) -> None:
    if not o.space:
        raise ValueError("--space FILE.yaml is required (see docs/training.md 'Searching settings')")
    if not o.out:
        raise ValueError("--out STUDY_DIR is required")
    for name, low in (("trials", 0), ("timeout", 0), ("pruner_startup", 0), ("pruner_warmup", 0)):
        if getattr(o, name) < low:
            raise ValueError(f"--{name.replace('_', '-')} must be >= {low}, got {getattr(o, name)}")
    if o.trials == 0 and o.timeout == 0 and not o.create_only:
        raise ValueError("--trials 0 runs without a limit; give --timeout S as well")
    if not 0 < o.percentile < 100:
        raise ValueError(f"--percentile must be in (0, 100), got {o.percentile}")
    if o.heartbeat <= 0 or o.stale_after <= o.heartbeat:
        raise ValueError(f"--stale-after ({o.stale_after}) must exceed --heartbeat ({o.heartbeat}) > 0")


def _storage_errors() -> tuple[type[BaseException], ...]:
    from optuna.exceptions import StorageInternalError   # imported late: --help does not load Optuna

    return (StorageInternalError,)


def main(argv: list[str] | None = None) -> int:
    import os

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    o, train_argv = build_parser().parse_known_args(argv)
    study, training_log = None, logging.getLogger("training")
    level = training_log.level
    try:
        check_options(o)
        log.setLevel(logging.INFO)
        if not o.verbose:   # the trainer's per-epoch lines; each trial's metrics.csv has them
            training_log.setLevel(logging.WARNING)
        from training.tuning import run as tune_run

        study, ctx = tune_run.prepare(o, train_argv)
        if o.create_only:
            print(f"study {study.study_name!r} is ready in {ctx.storage_text}; start workers with the same "
                  "--space, --storage and --study")
            return 0
        tune_run.work(study, ctx)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted: study kept in {o.out}; the same command resumes it", file=sys.stderr)
        return 130
    except _storage_errors() as e:   # the database went away or stayed locked: what finished is kept
        from training.tuning.storage import one_line

        study = None   # finish() would only wait on the same storage again
        print(f"error: the study's storage failed: {one_line(e.__cause__ or e)}; what finished is kept "
              "and the same command resumes the study", file=sys.stderr)
        return 1
    finally:
        if study is not None:
            tune_run.finish(study, ctx)
        training_log.setLevel(level)
    return 0


if __name__ == "__main__":
    sys.exit(main())
