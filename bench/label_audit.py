"""The label audit measured end to end on a synthetic set whose wrong labels are known.

synthetic set with planted wrong labels (person-level gender/age flips and mask-file swaps)
-> ``mask-train --folds K`` (a small CPU recipe) -> ``mask-data audit`` on its out-of-fold file
-> precision and recall of the flagged set per field against the generator's record
-> one holdout run on the labels as given and one with ``--relabel`` (the flagged suggestions)
-> both scored on the generator's correctly labeled eval set::

    python -m bench.label_audit --work data/bench/label_audit

Each stage is skipped when its output already exists under ``--work`` (so an interrupted run
continues); ``--until kfold`` stops after the k-fold run; ``--quick`` checks the harness on a tiny
set. Writes ``bench/results/label_audit.json``.
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import subprocess
import sys
import time
from pathlib import Path

from bench import common

log = logging.getLogger(__name__)

# A recipe a 2-core CPU runs five times in minutes: the default plain CNN at a low input size.
RECIPE = ("--model", "plain_cnn", "--resize", "80", "60", "--epochs", "8", "--batch-size", "32",
          "--seed", "0", "--no-progress", "--no-tensorboard")
# --quick: the whole loop in a few minutes, to check the harness (its figures mean nothing)
QUICK_RECIPE = ("--model", "tiny_cnn", "--resize", "32", "24", "--epochs", "1", "--batch-size", "32",
                "--seed", "0", "--workers", "0", "--no-progress", "--no-tensorboard")
STAGES = ("synth", "kfold", "audit", "retrain")


def _run(cmd: list[str], log_path: Path) -> float:
    """Run one product command (its output appended to ``log_path``); wall seconds."""
    log.info("running: %s", " ".join(cmd))
    t0 = time.perf_counter()
    with open(log_path, "a", encoding="utf-8") as fh:
        fh.write("$ " + " ".join(cmd) + "\n")
        fh.flush()
        rc = subprocess.run(cmd, cwd=common.REPO_ROOT, stdout=fh, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        raise ValueError(f"{' '.join(cmd[:4])} ... exited {rc}; see {log_path}")
    return time.perf_counter() - t0


def _train(data: Path, out: Path, logs: Path, extra: list[str] = (), recipe: tuple = RECIPE) -> float:
    if (out / "best.pt").is_file() or (out / "oof_predictions.csv").is_file():
        log.info("%s exists: skipped", out)
        return 0.0
    return _run([sys.executable, "-m", "training", "--data-dir", str(data / "train"), "--out", str(out),
                 *recipe, *extra], logs)


def _flagged(issues_csv: Path) -> dict[str, set[tuple[str, str]]]:
    """field -> {(person, image or '')} flagged by the audit."""
    out: dict[str, set[tuple[str, str]]] = {"gender": set(), "age": set(), "mask": set()}
    with open(issues_csv, newline="", encoding="utf-8") as fh:
        for r in csv.DictReader(fh):
            out[r["field"]].add((r["person"], r["image"]))
    return out


def score_flags(issues_csv: Path, summary_json: Path) -> dict:
    """Precision and recall of the flagged set per field (and person-level, gender and age pooled)."""
    wrong = json.loads(summary_json.read_text(encoding="utf-8"))["wrong_labels"]
    truth = {f: {(w["person"], w.get("image", "")) for w in rows} for f, rows in wrong.items()}
    flagged = _flagged(issues_csv)
    truth["person"] = truth["gender"] | truth["age"]
    flagged["person"] = flagged["gender"] | flagged["age"]
    out = {}
    for f in ("gender", "age", "person", "mask"):
        hit = len(truth[f] & flagged[f])
        out[f] = {"wrong": len(truth[f]), "flagged": len(flagged[f]), "true_positives": hit,
                  "precision": hit / len(flagged[f]) if flagged[f] else None,
                  "recall": hit / len(truth[f]) if truth[f] else None}
    return out


def eval_f1(run_dir: Path, eval_dir: Path) -> dict:
    """Macro F1 of ``run_dir/best.pt`` on the eval split's true classes (answers.csv)."""
    import numpy as np
    import torch

    from maskdata import metrics
    from maskdata.preprocess import Preprocess
    from training.checkpoint import load_checkpoint, model_from_checkpoint

    ckpt = load_checkpoint(run_dir / "best.pt")
    model = model_from_checkpoint(ckpt)
    pre = Preprocess.from_dict(ckpt["preprocess"])
    with open(eval_dir / "answers.csv", newline="", encoding="utf-8") as fh:
        answers = [(r["ImageID"], int(r["ans"])) for r in csv.DictReader(fh)]
    pred = []
    with torch.inference_mode():
        for i in range(0, len(answers), 64):
            batch = np.stack([pre(eval_dir / "images" / name) for name, _ in answers[i:i + 64]])
            pred += model(torch.from_numpy(batch)).argmax(1).tolist()
    rep = metrics.report([c for _, c in answers], pred)
    return {"images": len(answers), "macro_f1": rep["f1"], "accuracy": rep["acc"],
            "f1_mask": rep.get("f1_mask"), "f1_gender": rep.get("f1_gender"), "f1_age": rep.get("f1_age"),
            "data_fingerprint": ckpt["data_fingerprint"]}


def measure(args) -> dict:
    work, data = args.work, args.work / "data"
    work.mkdir(parents=True, exist_ok=True)
    logs = work / "commands.log"
    seconds = {}
    if not (data / "synth_summary.json").is_file():
        seconds["synth"] = _run([sys.executable, "-m", "maskdata.cli", "synth", "--out", str(data),
                                 "--people", str(args.people), "--eval-people", str(args.eval_people),
                                 "--seed", str(args.seed), "--label-noise", str(args.label_noise),
                                 "--mask-swap", str(args.mask_swap)], logs)
    recipe = QUICK_RECIPE if args.quick else RECIPE
    seconds["kfold"] = _train(data, work / "kfold", logs, ["--folds", str(args.folds)], recipe)
    if args.until == "kfold":
        return {"seconds": seconds}
    audit = work / "audit"
    corrections = work / "corrections.csv"
    seconds["audit"] = _run([sys.executable, "-m", "maskdata.cli", "audit", "--oof",
                             str(work / "kfold" / "oof_predictions.csv"), "--data-dir", str(data / "train"),
                             "--out", str(audit), "--write-corrections", str(corrections)], logs)
    flags = score_flags(audit / "label_issues.csv", data / "synth_summary.json")
    if args.until == "audit":
        return {"seconds": seconds, "flags": flags}
    seconds["train_given"] = _train(data, work / "given", logs, (), recipe)
    seconds["train_relabeled"] = _train(data, work / "relabeled", logs, ["--relabel", str(corrections)], recipe)
    before, after = eval_f1(work / "given", data / "eval"), eval_f1(work / "relabeled", data / "eval")
    return {"seconds": seconds, "flags": flags, "eval_given": before, "eval_relabeled": after}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.label_audit", description=__doc__.split("\n")[0])
    p.add_argument("--work", type=Path, default=common.REPO_ROOT / "data" / "bench" / "label_audit",
                   help="folder for the data set and runs (default %(default)s)")
    p.add_argument("--people", type=int, default=600, help="train people (default %(default)s)")
    p.add_argument("--eval-people", type=int, default=150, help="eval people (default %(default)s)")
    p.add_argument("--label-noise", type=float, default=0.05, help="wrong person labels (default %(default)s)")
    p.add_argument("--mask-swap", type=float, default=0.03, help="people with two mask files swapped "
                                                                 "(default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="data seed (default %(default)s)")
    p.add_argument("--folds", type=int, default=5, help="k-fold K (default %(default)s)")
    p.add_argument("--until", choices=STAGES, default="retrain", help="last stage to run (default %(default)s)")
    p.add_argument("--quick", action="store_true",
                   help="check the harness: 60 people, 2 folds, a 1-epoch tiny model, under --work/quick")
    p.add_argument("--out", type=Path, default=None,
                   help="result JSON (default bench/results/label_audit.json; with --quick: under --work)")
    args = p.parse_args(argv)
    if args.quick:
        args.work, args.people, args.eval_people, args.folds = args.work / "quick", 60, 20, 2
    args.out = args.out or (args.work / "label_audit.json" if args.quick else common.RESULTS_DIR / "label_audit.json")
    common.setup_logging()

    def body() -> None:
        result = common.measure_and_save("label_audit", argv, args, measure,
                                         {"recipe": list(QUICK_RECIPE if args.quick else RECIPE)})
        print(json.dumps(result, indent=1))

    return common.run_part(body, no_report=True)


if __name__ == "__main__":
    raise SystemExit(main())
