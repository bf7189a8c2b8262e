"""The label audit's precision and recall per field, per noise pattern, at more than one model quality.

A clean synthetic set -> ``mask-train --folds K`` once per model quality (recipes that differ only in
epochs) -> for each noise pattern and seed, wrong labels planted in what the audit is told the labels
are -> ``maskdata.audit.audit`` on the run's out-of-fold file -> precision and recall of the flags per
field against the planted ones::

    python -m bench.audit_precision                    # 360 people, 2 folds, qualities weak + strong
    python -m bench.audit_precision --quick            # the harness on a tiny set (figures mean nothing)

Patterns (``NOISE`` of the people, one field each, or all three at once): ``age`` moves a person's
age to a neighbouring group, ``gender`` flips it, ``mask`` swaps the mask states of two of the
person's files (as ``mask-data synth --mask-swap`` does to the pictures), ``mixed`` does each to its
own people. A field with no planted error in a pattern shows only false flags there.

The noise is planted after training, so the models learned from clean labels. An out-of-fold
prediction of a person comes from models that never saw that person, so their own wrong label could
not have moved it; what this leaves out is the small effect of the other people's few wrong labels
on the models. Writes ``bench/results/audit_precision.json`` and prints the table quoted in
docs/data.md.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from bench import common

log = logging.getLogger(__name__)

PATTERNS = ("age", "gender", "mask", "mixed")
FIELDS = ("gender", "age", "mask")
BASE_RECIPE = ("--model", "plain_cnn", "--resize", "80", "60", "--batch-size", "32", "--seed", "0",
               "--no-progress", "--no-tensorboard")
QUALITIES = {"weak": 2, "medium": 8, "strong": 20}   # epochs
QUICK_RECIPE = ("--model", "tiny_cnn", "--resize", "32", "24", "--batch-size", "32", "--seed", "0",
                "--workers", "0", "--no-progress", "--no-tensorboard")
NEIGHBOUR_AGE = {0: (1,), 1: (0, 2), 2: (1,)}
AGE_OF_GROUP = (22, 45, 65)
EVAL_PEOPLE = 10   # the generator writes an eval split; this bench reads only train/


def plant(samples: list, pattern: str, share: float, rng: np.random.Generator) -> tuple[list, dict[str, set]]:
    """``samples`` as the audit is told them, with wrong labels for ``share`` of the people in
    ``pattern``'s field(s); and {field: {(person, image or '')}} of what was planted."""
    from maskdata import labels

    persons = sorted({s.person for s in samples})
    fields = ("age", "gender", "mask") if pattern == "mixed" else (pattern,)
    k = max(1, round(share * len(persons)))
    chosen = rng.choice(len(persons), size=k * len(fields), replace=False)
    picked = {f: {persons[i] for i in chosen[j * k:(j + 1) * k]} for j, f in enumerate(fields)}
    wrong: dict[str, set] = {f: set() for f in FIELDS}
    out = list(samples)
    by_person: dict[str, list[int]] = {}
    for i, s in enumerate(samples):
        by_person.setdefault(s.person, []).append(i)
    for person in sorted(picked.get("age", ())):   # sorted: a set's order changes with the hash seed
        group = int(rng.choice(NEIGHBOUR_AGE[labels.age_group(samples[by_person[person][0]].age)]))
        for i in by_person[person]:
            out[i] = dataclasses.replace(out[i], age=AGE_OF_GROUP[group])
        wrong["age"].add((person, ""))
    for person in sorted(picked.get("gender", ())):
        for i in by_person[person]:
            out[i] = dataclasses.replace(out[i], gender=1 - out[i].gender)
        wrong["gender"].add((person, ""))
    for person in sorted(picked.get("mask", ())):
        states = {}
        for i in by_person[person]:
            states.setdefault(samples[i].mask, []).append(i)
        a, b = rng.choice(sorted(states), size=2, replace=False)
        i, j = int(rng.choice(states[a])), int(rng.choice(states[b]))
        out[i], out[j] = dataclasses.replace(out[i], mask=int(b)), dataclasses.replace(out[j], mask=int(a))
        wrong["mask"] |= {(person, Path(samples[i].path).name), (person, Path(samples[j].path).name)}
    return out, wrong


def score(issues, wrong: dict[str, set]) -> dict[str, dict]:
    """Per field: planted, flagged, right among the flagged."""
    found = {f: {(i.person, i.image) for i in issues if i.field == f} for f in FIELDS}
    return {f: {"wrong": len(wrong[f]), "flagged": len(found[f]), "right": len(found[f] & wrong[f])} for f in FIELDS}


def _sum(rows: list[dict]) -> dict:
    out = {k: sum(r[k] for r in rows) for k in ("wrong", "flagged", "right")}
    out["precision"] = out["right"] / out["flagged"] if out["flagged"] else None
    out["recall"] = out["right"] / out["wrong"] if out["wrong"] else None
    return out


def _train(data: Path, out: Path, folds: int, recipe: tuple, epochs: int, log_path: Path) -> float:
    if (out / "oof_predictions.csv").is_file():
        log.info("%s exists: skipped", out)
        return 0.0
    cmd = [sys.executable, "-m", "training", "--data-dir", str(data / "train"), "--out", str(out), *recipe,
           "--epochs", str(epochs), "--folds", str(folds)]
    log.info("running: %s", " ".join(cmd))
    t0 = time.perf_counter()
    with open(log_path, "a", encoding="utf-8") as fh:
        rc = subprocess.run(cmd, cwd=common.REPO_ROOT, stdout=fh, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        raise ValueError(f"mask-train exited {rc}; see {log_path}")
    return time.perf_counter() - t0


def measure(args) -> dict:
    from maskdata import audit
    from maskdata.layout import read_train_dir
    from maskdata.synth import generate

    data = args.work / "data"
    if not (data / "train" / "train.csv").is_file():
        generate(data, people=args.people, eval_people=EVAL_PEOPLE, seed=args.seed, label_noise=0.0)
    samples, _ = read_train_dir(data / "train")
    recipe = QUICK_RECIPE if args.quick else BASE_RECIPE
    result: dict = {"seconds": {}, "qualities": {}}
    for quality, epochs in QUALITIES.items():
        run = args.work / f"kfold-{quality}"
        result["seconds"][quality] = round(_train(data, run, args.folds, recipe, 1 if args.quick else epochs,
                                                  args.work / "commands.log"), 1)
        oof = audit.read_oof(run / "oof_predictions.csv")
        clean, cover = audit.audit(oof, samples)
        per_pattern = {}
        for pattern in PATTERNS:
            rows = {f: [] for f in FIELDS}
            for seed in range(args.seeds):
                given, wrong = plant(samples, pattern, args.noise, np.random.default_rng([args.seed, seed]))
                issues, _ = audit.audit(oof, given)
                for f, r in score(issues, wrong).items():
                    rows[f].append(r)
            per_pattern[pattern] = {f: _sum(r) for f, r in rows.items()}
        result["qualities"][quality] = {
            "epochs": 1 if args.quick else epochs, "oof_macro_f1": _oof_f1(oof, samples),
            "fields": {f: a.to_dict() for f, a in cover.fields.items()}, "clean_flags": len(clean),
            "patterns": per_pattern}
    return result


def _oof_f1(oof, samples) -> float:
    """The run's pooled out-of-fold macro F1 over the 18 classes, against the (clean) labels."""
    from maskdata import audit, metrics

    idx = audit.match(oof, samples)
    keep = idx >= 0
    truth = [samples[i].label() for i in idx[keep]]
    return round(metrics.macro_f1(truth, oof.probs[keep].argmax(1)), 4)


def table(result: dict) -> str:
    """Two Markdown tables: each field as the audit judged it on the clean labels, then precision /
    recall (right / flagged of planted) per pattern, summed over the seeds."""
    lines = ["| model (OOF macro F1) | field | F1 | unsure | audited | flags on the clean labels |",
             "| --- | --- | --- | --- | --- | --- |"]
    for quality, q in result["qualities"].items():
        for f in FIELDS:
            a = q["fields"][f]
            lines.append(f"| {quality}, {q['epochs']} epochs ({q['oof_macro_f1']:.3f}) | {f} | {a['f1']:.3f} | "
                         f"{a['unsure']:.1%} | {'yes' if a['audited'] else 'no'} | {a['flagged']} |")
    lines += ["", "| model (OOF macro F1) | pattern | gender P / R | age P / R | mask P / R |",
              "| --- | --- | --- | --- | --- |"]

    def cell(r: dict) -> str:
        p = "–" if r["precision"] is None else f"{r['precision']:.2f}"
        rec = "–" if r["recall"] is None else f"{r['recall']:.2f}"
        return f"{p} / {rec} ({r['right']}/{r['flagged']} of {r['wrong']})"

    for quality, q in result["qualities"].items():
        for pattern, fields in q["patterns"].items():
            lines.append(f"| {quality}, {q['epochs']} epochs ({q['oof_macro_f1']:.3f}) | {pattern} | "
                         + " | ".join(cell(fields[f]) for f in FIELDS) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.audit_precision", description=__doc__.split("\n")[0])
    p.add_argument("--work", type=Path, default=common.REPO_ROOT / "data" / "bench" / "audit_precision",
                   help="folder for the data set and runs (default %(default)s)")
    p.add_argument("--people", type=int, default=360, help="train people (default %(default)s)")
    p.add_argument("--folds", type=int, default=3, help="k-fold K (default %(default)s)")
    p.add_argument("--noise", type=float, default=0.03, help="share of the people made wrong per field "
                                                               "(default %(default)s)")
    p.add_argument("--seeds", type=int, default=5, help="noise draws per pattern (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="data seed (default %(default)s)")
    p.add_argument("--quick", action="store_true", help="check the harness: 40 people, 1-epoch tiny model, "
                                                        "under --work/quick")
    p.add_argument("--out", type=Path, default=None,
                   help="result JSON (default bench/results/audit_precision.json; with --quick: under --work)")
    args = p.parse_args(argv)
    if args.quick:
        args.work, args.people, args.seeds = args.work / "quick", 40, 2
    args.out = args.out or (args.work / "audit_precision.json" if args.quick
                            else common.RESULTS_DIR / "audit_precision.json")
    common.setup_logging()

    def body() -> None:
        print(table(common.measure_and_save("audit_precision", argv, args, measure)))

    return common.run_part(body, no_report=True)


if __name__ == "__main__":
    raise SystemExit(main())
