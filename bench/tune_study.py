"""A mask-tune study measured: the same study pruned (median pruner) and unpruned, on synthetic data.

    python -m bench.tune_study                       # 10 trials of small_cnn, 4 epochs, 48x36, 60 people
    python -m bench.tune_study --trials 12 --epochs 6 --people 120

Both studies use the same space (recipes/spaces/age_loss.yaml: old-age cut-off, loss mix, lr), base
run, data and sampler seed; the second has ``--pruner none``. Reported: trials, wall time of each
study, epochs trained by each and the share pruning saved, the best trial's val macro F1, and the
macro F1 on the generator's eval split (people no trial ever scored) of the best trial's and of the
reference trial's best.pt. Writes ``bench/results/tune_study.json``; the figures are quoted in
docs/training.md "Searching settings".
"""
from __future__ import annotations

import argparse
import csv
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from bench import common

log = logging.getLogger(__name__)

SPACE = common.REPO_ROOT / "recipes" / "spaces" / "age_loss.yaml"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.tune_study", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--workdir", type=Path, default=Path("data/bench-tune"), help="data and study folders")
    p.add_argument("--people", type=int, default=60, help="synthetic training people")
    p.add_argument("--eval-people", type=int, default=20, help="synthetic eval people (never scored by the study)")
    p.add_argument("--trials", type=int, default=10)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--model", default="small_cnn")
    p.add_argument("--resize", type=int, nargs=2, default=(48, 36), metavar=("H", "W"))
    p.add_argument("--space", type=Path, default=SPACE)
    p.add_argument("--sampler-seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=common.RESULTS_DIR / "tune_study.json")
    p.add_argument("--quick", action="store_true", help="smoke run: 24 people, 3 trials of tiny_cnn, 2 epochs, 32x24")
    p.add_argument("--no-report", action="store_true",
                   help="accepted like the other parts (this one's figures are quoted in docs/training.md)")
    return p


def run_study(a: argparse.Namespace, data: Path, name: str, pruner: str) -> dict:
    out = a.workdir / name
    cmd = [sys.executable, "-m", "training.tuning.cli", "--space", str(a.space), "--out", str(out), "--trials",
           str(a.trials), "--pruner", pruner, "--sampler-seed", str(a.sampler_seed),
           "--data-dir", str(data / "train"), "--model", a.model, "--resize", *map(str, a.resize),
           "--epochs", str(a.epochs), "--workers", "0", "--no-tensorboard"]
    log.info("running: %s", " ".join(cmd))
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=common.REPO_ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(common.REPO_ROOT)})
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise ValueError(f"mask-tune exited {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}")
    with open(out / "trials.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["state"] in ("COMPLETE", "PRUNED")]
    best = max((r for r in rows if r["state"] == "COMPLETE"), key=lambda r: float(r["value"]))
    ref = next(r for r in rows if r["reference"] == "1")
    return {"pruner": pruner, "wall_s": round(wall, 1), "trials": len(rows),
            "pruned": sum(r["state"] == "PRUNED" for r in rows),
            "epochs_trained": sum(int(r["epochs_run"]) for r in rows),
            "best": {"trial": int(best["number"]), "val_f1": float(best["value"]),
                     "eval": score_eval(Path(best["run_dir"]) / "best.pt", data / "eval")},
            "reference": {"trial": int(ref["number"]), "val_f1": float(ref["value"]),
                          "eval": score_eval(Path(ref["run_dir"]) / "best.pt", data / "eval")},
            "lines": [ln for ln in proc.stdout.splitlines() if ln.startswith(("trial ", "best:", "study "))]}


def score_eval(checkpoint: Path, eval_dir: Path) -> dict:
    """Macro F1 / accuracy of a checkpoint on the eval split's answers.csv (PyTorch, eval preprocessing)."""
    import numpy as np
    import torch

    from maskdata.preprocess import Preprocess
    from maskdata.scoring import read_answers, score
    from training.checkpoint import load_checkpoint, model_from_checkpoint

    ckpt = load_checkpoint(checkpoint)
    model, pre = model_from_checkpoint(ckpt), Preprocess.from_dict(ckpt["preprocess"])
    ids = sorted(read_answers(eval_dir / "answers.csv"))
    preds = []
    with torch.inference_mode():
        for i in range(0, len(ids), 64):
            batch = np.stack([pre(eval_dir / "images" / name) for name in ids[i:i + 64]])
            preds.append(model(torch.from_numpy(batch)).argmax(1).numpy())
    r = score(ids, np.concatenate(preds), eval_dir / "answers.csv")
    return {"images": r["n"], "f1": round(r["f1"], 4), "acc": round(r["acc"], 4)}


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    if a.quick:
        a.people, a.eval_people, a.trials, a.epochs, a.model, a.resize = 24, 8, 3, 2, "tiny_cnn", (32, 24)
        a.workdir = a.workdir.with_name(a.workdir.name + "-quick")
    common.setup_logging()

    def body() -> None:
        from maskdata.synth import generate

        data = a.workdir / "synth"
        if not (data / "train" / "train.csv").is_file():
            generate(data, people=a.people, eval_people=a.eval_people, seed=0)
        started = common.utc_now()
        load_before = os.getloadavg()
        with common.CpuMonitor() as monitor:
            pruned = run_study(a, data, "pruned", "median")
            full = run_study(a, data, "unpruned", "none")
        saved = 1 - pruned["epochs_trained"] / full["epochs_trained"]
        result = {"pruned": pruned, "unpruned": full, "epochs_saved_share": round(saved, 4),
                  "loadavg_before": load_before, "loadavg_after": os.getloadavg()}
        log.info("epochs: pruned %d, unpruned %d -> %.0f %% saved; wall %.0f s vs %.0f s", pruned["epochs_trained"],
                 full["epochs_trained"], 100 * saved, pruned["wall_s"], full["wall_s"])
        common.save_run("tune_study", argv, started, monitor, a.quick, {k: str(v) for k, v in vars(a).items()},
                        result, a.out)

    return common.run_part(body, no_report=True)


if __name__ == "__main__":
    sys.exit(main())
