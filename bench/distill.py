"""Distillation measured in one run: a 5-fold ensemble teacher (one ONNX graph) vs one small student.

    python -m bench.distill --work data/bench-distill            # the docs/training.md figures
    python -m bench.distill --work /tmp/bd --quick                # a smoke run (tiny data, 1 epoch)

Steps, each the product's own command (so the figures are what a user gets):

1. ``mask-data synth`` (unless ``--data DIR`` holds train/ and eval/ already);
2. the teacher: ``mask-train --folds 5`` with ``--teacher-model`` at ``--teacher-size``, exported with
   ``mask-export --checkpoint fold*/best.pt`` as one ensemble graph;
3. ``mask-submit --probs --labels`` of the ensemble on the eval set: its macro F1, and the probabilities
   the pseudo-labels come from;
4. four students (``--student-model`` at ``--student-size``, one holdout split, same seed): alone,
   distilled (``--teacher ensemble.onnx``), distilled + pseudo-labels (``--pseudo-label``), and distilled
   from the k-fold's ``oof_predictions.csv`` instead of the ensemble graph, each exported and scored with
   ``mask-submit --labels`` on the same eval images;
5. batch throughput: ``mask-submit`` images/s of the alone-student and the ensemble on the same eval images,
   alternated ``--speed-rounds`` times; the best round of each (the least disturbed by other work).

Writes ``--work``/distill.json (and, unless ``--quick``, bench/results/distill.json): every command,
F1s, the share of the ensemble's gain the distilled student recovers, the throughput ratio, the
machine's CPU flags and load averages.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from pathlib import Path

from bench import common

log = logging.getLogger(__name__)

SCORE = re.compile(r"score: macro F1 ([\d.]+), accuracy ([\d.]+)")


def _run(cmd: list[str]) -> tuple[str, float]:
    log.info("running: %s", " ".join(cmd))
    stdout, stderr, wall, _ = common.run_measured(cmd)
    return stdout + stderr, wall


def _py(module: str, *args) -> list[str]:
    return [sys.executable, "-m", module, *map(str, args)]


def _train(data: Path, out: Path, model: str, size: tuple[int, int], epochs: int, extra: list[str]) -> dict:
    cmd = _py("training", "--data-dir", data / "train", "--out", out, "--model", model, "--resize", *size,
              "--epochs", epochs, "--no-progress", "--no-tensorboard", "--workers", "0", *extra)
    text, wall = _run(cmd)
    return {"command": " ".join(cmd[2:]).replace(sys.executable, "python"), "train_wall_s": round(wall, 1),
            "log_tail": [ln for ln in text.splitlines() if "pseudo-labels:" in ln or "teacher " in ln][-3:]}


def _export(ckpts: list[Path], out: Path) -> None:
    _run(_py("export.cli", "--checkpoint", *ckpts, "--out", out, "--no-explain", "--quiet"))


def _f1(model: Path, data: Path, out: Path, extra: list[str] = ()) -> float:
    cmd = _py("serving.submit_cli", "--info", data / "eval" / "info.csv", "--images", data / "eval" / "images",
              "--out", out, "--model", model, "--no-progress", "--labels", data / "eval" / "answers.csv", *extra)
    text, _ = _run(cmd)
    m = SCORE.search(text)
    if not m:
        raise ValueError(f"no score line from mask-submit: {text.strip().splitlines()[-1:]}")
    return float(m.group(1))


def _throughput(models: dict[str, Path], data: Path, work: Path, rounds: int, batch: int) -> dict:
    runs = {name: [] for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            r = common.timed_submit(model, data / "eval" / "info.csv", data / "eval" / "images",
                                    work / f"speed-{name}.csv", ["--batch-size", str(batch)])
            runs[name].append({"loop_s": r["loop_s"], "images": r["images"], "load": os.getloadavg()[0]})
    best = {name: max(r["images"] / r["loop_s"] for r in rs) for name, rs in runs.items()}
    return {"rounds": runs, "best_img_s": best}


def measure(args) -> dict:
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    data = Path(args.data) if args.data else work / "data"
    if not (data / "train").is_dir():
        _run(_py("maskdata.cli", "synth", "--out", data, "--people", args.people, "--eval-people",
                 args.eval_people, "--seed", args.seed))
    t_size, s_size = args.teacher_size, args.student_size
    src = Path(args.teacher_from) if args.teacher_from else work
    teacher_dir, ensemble = src / "teacher", src / "ensemble.onnx"
    if args.teacher_from:   # another student against the teacher of an earlier run (same data)
        teacher = json.loads((src / "distill.json").read_text())["teacher"] if (src / "distill.json").is_file() \
            else {"command": f"(the teacher of {src})"}
    else:
        teacher = _train(data, teacher_dir, args.teacher_model, t_size, args.teacher_epochs,
                         ["--folds", str(args.folds), "--seed", str(args.seed)])
        _export(sorted(teacher_dir.glob("fold*/best.pt")), ensemble)
    probs = work / "ensemble.probs.csv"
    f1 = {"ensemble": _f1(ensemble, data, work / "ensemble.sub.csv", ["--probs", str(probs)])}
    common_args = ["--seed", str(args.seed), "--head", args.student_head]
    variants = {"student": [],
                "distilled": ["--teacher", str(ensemble), "--distill-weight", str(args.weight),
                              "--distill-temperature", str(args.temperature)],
                "distilled_pseudo": ["--teacher", str(ensemble), "--distill-weight", str(args.weight),
                                     "--distill-temperature", str(args.temperature), "--pseudo-label", str(probs),
                                     "--pseudo-threshold", str(args.pseudo_threshold),
                                     "--pseudo-images", str(data / "eval" / "images")],
                # the same student taught by the out-of-fold predictions (no member saw the image it labels)
                "distilled_oof": ["--teacher", str(teacher_dir / "oof_predictions.csv"), "--distill-weight",
                                  str(args.weight), "--distill-temperature", str(args.temperature)]}
    students = {}
    for name, extra in ((k, v) for k, v in variants.items() if k in args.variants.split(",")):
        run = work / name
        students[name] = _train(data, run, args.student_model, s_size, args.student_epochs, common_args + extra)
        _export([run / "best.pt"], run / "model.onnx")
        f1[name] = _f1(run / "model.onnx", data, run / "eval.sub.csv")
        cfg = json.loads((run / "config.json").read_text())
        students[name]["distill_record"] = cfg.get("distill")
        log.info("%s: eval macro F1 %.4f (ensemble %.4f)", name, f1[name], f1["ensemble"])
    speed = _throughput({"student": work / "student" / "model.onnx", "ensemble": ensemble}, data, work,
                        args.speed_rounds, args.batch_size)
    gain = f1["ensemble"] - f1["student"]
    recovered = {k: (f1[k] - f1["student"]) / gain if gain > 0 else None
                 for k in ("distilled", "distilled_pseudo", "distilled_oof") if k in f1}
    ratio = speed["best_img_s"]["student"] / speed["best_img_s"]["ensemble"]
    return {"data": str(data), "teacher": teacher, "students": students, "eval_f1": f1,
            "ensemble_gain": gain, "gain_recovered": recovered, "throughput": speed, "student_speedup": ratio,
            "targets": {"recovered_ge_0.5": bool(recovered.get("distilled") is not None and recovered["distilled"] >= 0.5),
                        "speedup_ge_4": bool(ratio >= 4)},
            "load_after": os.getloadavg()}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.distill", description=__doc__.split("\n\n")[0])
    p.add_argument("--work", required=True, help="folder for data, runs, models and distill.json")
    p.add_argument("--data", help="existing DIR with train/ and eval/ (default: synthesize into WORK/data)")
    p.add_argument("--people", type=int, default=100)
    p.add_argument("--eval-people", type=int, default=60)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--teacher-from", metavar="WORK", help="reuse the teacher (WORK/teacher, WORK/ensemble.onnx) of "
                                                           "an earlier run on the same --data instead of training one")
    p.add_argument("--teacher-model", default="plain_cnn")
    p.add_argument("--teacher-size", type=int, nargs=2, default=(96, 72), metavar=("H", "W"))
    p.add_argument("--teacher-epochs", type=int, default=8)
    p.add_argument("--student-model", default="tiny_cnn")
    p.add_argument("--student-head", default="multi")
    p.add_argument("--student-size", type=int, nargs=2, default=(64, 48), metavar=("H", "W"))
    p.add_argument("--student-epochs", type=int, default=12)
    p.add_argument("--weight", type=float, default=0.7, help="--distill-weight of the distilled students")
    p.add_argument("--temperature", type=float, default=2.0, help="--distill-temperature of the distilled students")
    p.add_argument("--pseudo-threshold", type=float, default=0.9)
    p.add_argument("--variants", default="student,distilled,distilled_pseudo,distilled_oof",
                   help="students to train (comma list; 'student' is needed)")
    p.add_argument("--speed-rounds", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=64, help="mask-submit --batch-size for the throughput rounds")
    p.add_argument("--quick", action="store_true", help="smoke run: 16 people, 2 folds, 1 epoch, 1 speed round")
    return p


def main(argv: list[str] | None = None) -> int:
    common.setup_logging()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")   # torch's spinning OpenMP threads starve shared cores
    args = build_parser().parse_args(argv)
    if args.quick:
        args.people, args.eval_people, args.folds = 16, 4, 2
        args.teacher_epochs = args.student_epochs = args.speed_rounds = 1
        args.teacher_size, args.student_size = (32, 24), (32, 24)
    started, monitor = common.utc_now(), common.CpuMonitor()

    def body():
        with monitor:
            result = measure(args)
        config = {k: v for k, v in vars(args).items() if k != "work"}
        out = Path(args.work) / "distill.json"
        common.save_run("distill", argv, started, monitor, args.quick, config, result, out)
        if not args.quick:
            common.write_result(common.RESULTS_DIR / "distill.json", json.loads(out.read_text()))
        print(json.dumps({"eval_f1": result["eval_f1"], "gain_recovered": result["gain_recovered"],
                          "best_img_s": result["throughput"]["best_img_s"],
                          "student_speedup": result["student_speedup"]}, indent=1))

    return common.run_part(body, no_report=True)


if __name__ == "__main__":
    sys.exit(main())
