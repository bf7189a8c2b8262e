"""``mask-run``: a data folder in the competition layout to a submission CSV, in one command.

    mask-run --data-dir DATA --out WORK                          # the default recipe
    mask-run --data-dir DATA --out WORK -- --model resnet18 --epochs 20   # mask-train options after --
    mask-run --data-dir DATA --out WORK                          # again: finished steps are kept

It runs the three commands a user would type, printing each before it runs, and keeps every step's
output under WORK:

1. ``mask-train --data-dir DATA/train --out WORK/run ...`` → ``WORK/run/`` (``best.pt``; with
   ``--folds K`` one ``fold{k}/`` per fold). A run that was stopped (Ctrl-C, a lost machine,
   ``--stop-after``) continues with ``--resume``; a finished one is kept.
2. ``mask-export --checkpoint WORK/run/best.pt --out WORK/model.onnx`` (every fold's ``best.pt``, as
   one ensemble, for a k-fold run); kept while it is newer than its checkpoints.
3. ``mask-submit --info DATA/eval/info.csv --images DATA/eval/images --out WORK/submission.csv
   --model WORK/model.onnx`` (``--labels DATA/eval/answers.csv`` too when that file exists, as in the
   synthetic set); kept while it is newer than the model, resumed from its journal when interrupted.

A step runs again when the step before it wrote a newer output (a resumed training run that found a
better epoch, say), and so does every step after it. Delete WORK/run (or the file) to redo a step.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from maskdata.extras import exit_unless_installed


@dataclass(frozen=True)
class Plan:
    data: Path
    work: Path
    train_args: tuple[str, ...] = ()
    bento_tag: str | None = None

    @property
    def run(self) -> Path:
        return self.work / "run"

    @property
    def model(self) -> Path:
        return self.work / "model.onnx"

    @property
    def submission(self) -> Path:
        return self.work / "submission.csv"


def checkpoints(run: Path) -> list[Path]:
    """The run's best checkpoint, or every fold's for a k-fold run (in fold order)."""
    if (run / "best.pt").is_file():
        return [run / "best.pt"]
    return sorted(run.glob("fold*/best.pt"), key=lambda p: int(p.parent.name[4:] or 0))


def training_left(run: Path) -> str:
    """'' when the run in ``run`` is finished; else what is left ('not started', ...)."""
    from training.loop.trainer import nothing_left

    if (run / "summary.json").is_file():     # a k-fold run writes it once every fold is done
        return ""
    if (run / "last.pt").is_file():
        return "" if nothing_left(run / "last.pt") else "unfinished"
    config = run / "config.json"
    if config.is_file() and int(json.loads(config.read_text(encoding="utf-8"))["train"].get("folds") or 0) >= 2:
        return "unfinished"    # a k-fold run resumes fold by fold from its folder
    return "not started"       # a single run killed before its first epoch starts again


def newer(target: Path, sources: list[Path]) -> bool:
    """``target`` exists and was written after every one of ``sources``."""
    return target.is_file() and all(target.stat().st_mtime >= s.stat().st_mtime for s in sources)


def train_argv(plan: Plan) -> list[str] | None:
    """mask-train's arguments, or None when the run is finished."""
    left = training_left(plan.run)
    if not left:
        return None
    if left == "not started":
        return ["--data-dir", str(plan.data / "train"), "--out", str(plan.run), *plan.train_args]
    # the recorded config wins on --resume; only where/how long (--epochs, --stop-after, ...) is taken
    return ["--resume", str(plan.run), *plan.train_args]


def export_argv(plan: Plan) -> list[str] | None:
    members = checkpoints(plan.run)
    if not members:
        raise FileNotFoundError(f"training left no best.pt in {plan.run}")
    if newer(plan.model, members):
        return None
    tag = ["--bento-tag", plan.bento_tag] if plan.bento_tag else []
    return ["--checkpoint", *map(str, members), "--out", str(plan.model), *tag]


def submit_argv(plan: Plan) -> list[str] | None:
    if newer(plan.submission, [plan.model]):
        return None
    eval_dir = plan.data / "eval"
    argv = ["--info", str(eval_dir / "info.csv"), "--images", str(eval_dir / "images"),
            "--out", str(plan.submission), "--model", str(plan.model)]
    if (eval_dir / "answers.csv").is_file():
        argv += ["--labels", str(eval_dir / "answers.csv")]
    if Path(f"{plan.submission}.journal").is_file():   # an interrupted run of this step
        argv.append("--resume")
    return argv


def _step(n: int, command: str, argv: list[str] | None, what: Path, run) -> int:
    if argv is None:
        print(f"\n==> {n}/3 {command}: {what} is up to date, kept", flush=True)
        return 0
    print(f"\n==> {n}/3 {command} {' '.join(argv)}", flush=True)
    return run(argv)


def run_plan(plan: Plan) -> int:
    """The three steps in order; the first failing step's exit code."""
    from export.entry import main as export_main
    from serving.submit_cli import main as submit_main
    from training.entry import train

    if not (plan.data / "train").is_dir() or not (plan.data / "eval" / "info.csv").is_file():
        raise FileNotFoundError(f"{plan.data} is not a competition data folder: it needs train/ (train.csv, "
                                "images/) and eval/ (info.csv, images/); `mask-data synth --out DIR` makes one")
    plan.work.mkdir(parents=True, exist_ok=True)
    rc = _step(1, "mask-train", train_argv(plan), plan.run, train)
    if rc == 0 and training_left(plan.run):
        print("\ntraining stopped before its last epoch; rerun the same mask-run to continue it", flush=True)
        return 0
    rc = rc or _step(2, "mask-export", export_argv(plan), plan.model, export_main)
    rc = rc or _step(3, "mask-submit", submit_argv(plan), plan.submission, submit_main)
    if rc == 0:
        print(f"\nsubmission: {plan.submission}  (model {plan.model}, run {plan.run})", flush=True)
    return rc


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mask-run",
        usage="mask-run --data-dir DATA --out WORK [--bento-tag TAG] [-- MASK-TRAIN OPTIONS]",
        description="Train (mask-train), export (mask-export) and predict the eval images (mask-submit) in one "
                    "command, from a data folder in the competition layout (DATA/train, DATA/eval) to "
                    "WORK/submission.csv. Each step's output is kept under WORK; running the same command "
                    "again continues an interrupted step and keeps the finished ones.",
        epilog="Everything after -- goes to mask-train (mask-train --help), e.g. -- --model resnet18 --epochs 20 "
               "--folds 5. The steps one by one: README.md, docs/training.md, docs/export.md, docs/submit.md")
    p.add_argument("--data-dir", required=True, type=Path, metavar="DATA",
                   help="competition data folder: train/ (train.csv, images/) and eval/ (info.csv, images/)")
    p.add_argument("--out", required=True, type=Path, metavar="WORK",
                   help="work folder: run/ (training), model.onnx, submission.csv")
    p.add_argument("--bento-tag", metavar="TAG",
                   help="when this run exports the model, also store it in the BentoML model store under TAG "
                        "(mask-classifier is the name `bentoml serve` serves; a kept model.onnx is stored with "
                        "mask-export --import-onnx WORK/model.onnx --bento-tag TAG)")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    ours, train_args = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    args = build_parser().parse_args(ours)
    exit_unless_installed("train", "mask-run")
    plan = Plan(data=args.data_dir, work=args.out, train_args=tuple(train_args), bento_tag=args.bento_tag)
    try:
        return run_plan(plan)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
