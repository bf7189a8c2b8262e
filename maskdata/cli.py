"""mask-data: make, check and look at data sets in the competition layout (docs/data.md).

    mask-data synth --out data/synth --people 300 --eval-people 100 --seed 0
    mask-data check data/synth/train [--strict]
    mask-data sheet data/synth --out docs/contact_sheet.png
    mask-data audit --oof runs/cv/oof_predictions.csv --data-dir data/synth/train --out runs/cv/audit \
        --write-corrections corrections.csv --top 50
    mask-data check data/synth/train --relabel corrections.csv

Bad input (a missing or empty folder, a CSV without the expected columns, a file that is not an
image) ends with a one-line ``error: ...`` on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import logging
import sys
from collections import Counter
from pathlib import Path

from maskdata import labels
from maskdata.io import atomic_path
from maskdata.layout import Report, Sample, class_counts, people, read_train_dir

THUMB = (168, 224)  # width, height of one contact sheet cell (7/16 of 384×512)


def _train_dir(path: str) -> Path:
    """Accept DIR/train or DIR itself when it holds a train/ folder."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"data folder not found: {p} (expected DIR/train with train.csv and images/)")
    if not p.is_dir():
        raise ValueError(f"{p} is a file; expected a folder DIR/train with train.csv and images/")
    if not (p / "train.csv").exists() and (p / "train" / "train.csv").is_file():
        return p / "train"
    if not any(p.iterdir()):
        raise ValueError(f"data folder {p} is empty; expected train.csv and images/ (make one with mask-data synth)")
    return p


def _unreadable_images(samples: list[Sample]) -> list[str]:
    """Image files whose header does not decode; cheap (PIL reads headers only)."""
    from PIL import Image, UnidentifiedImageError

    bad = []
    for s in samples:
        try:
            with Image.open(s.path) as img:
                img.size  # noqa: B018 - the header is parsed on open; size proves it
        except (UnidentifiedImageError, OSError, ValueError) as e:
            bad.append(f"{s.path}: not a readable image (expected JPEG or PNG): {type(e).__name__}")
    return bad


def _format_report(train_dir: Path, samples: list[Sample], report: Report) -> str:
    lines = [f"data: {train_dir}",
             f"people: {len(people(samples))}  images: {len(samples)}  hidden files skipped: {report.hidden_skipped}"]
    counts = class_counts(samples)
    lines.append("class  name                    images")
    for row in labels.label_table():
        lines.append(f"{row.index:>5}  {row.name:<22}  {counts.get(row.index, 0):>6}")
    strata = Counter((rows[0].gender, labels.age_group(rows[0].age)) for rows in people(samples).values())
    lines.append("people: " + "  ".join(f"{gender}/{age}: {strata.get((g, a), 0)}"
                                         for g, gender in enumerate(labels.GENDER_NAMES)
                                         for a, age in enumerate(labels.AGE_NAMES)))
    if not report.problems:
        lines.append("problems: none")
    for kind, where in sorted(report.problems.items()):
        lines.append(f"problem: {kind}: {len(where)}")
        lines += [f"  {w}" for w in where[:10]]
        if len(where) > 10:
            lines.append(f"  ... and {len(where) - 10} more")
    return "\n".join(lines)


def _relabel_lines(path: str, report: Report) -> list[str]:
    lines = [f"corrections: {path} (digest {report.relabel_digest}): {report.relabel_changed} changed labels, "
             f"{len(report.relabel_notes)} changed nothing"]
    return lines + [f"  {n}" for n in report.relabel_notes]


def cmd_check(args) -> int:
    train_dir = _train_dir(args.train_dir)
    samples, report = read_train_dir(train_dir, strict=False, relabel=args.relabel)
    for where in _unreadable_images(samples):
        report.add("unreadable image", where)
    print(_format_report(train_dir, samples, report))
    if args.relabel:
        print("\n".join(_relabel_lines(args.relabel, report)))
    if args.strict and report.problems:
        raise ValueError(f"{train_dir}: {report.count} problem(s) in strict mode: {report.summary()}")
    return 0


def cmd_synth(args) -> int:
    from maskdata.synth import generate

    summary = generate(args.out, people=args.people, eval_people=args.eval_people, seed=args.seed,
                       label_noise=args.label_noise, workers=args.workers, overwrite=args.overwrite,
                       progress=True, mask_swap=args.mask_swap)
    print(f"wrote {summary['train_images']} train images ({summary['people']} people) and "
          f"{summary['eval_images']} eval images ({summary['eval_people']} people) to {args.out} "
          f"in {summary['seconds']:.1f} s; {len(summary['noisy_label_folders'])} people with a planted wrong label"
          + (f", {len(summary['wrong_labels']['mask']) // 2} people with two mask files swapped" if args.mask_swap else ""))
    return 0


def _pick_people(samples: list[Sample], n: int) -> list[list[Sample]]:
    """``n`` people, dealt round-robin over the gender×age strata so the sheet shows every group."""
    by_stratum: dict[int, list[list[Sample]]] = {}
    for person, rows in sorted(people(samples).items()):
        st = rows[0].gender * labels.HEAD_SIZES["age"] + labels.age_group(rows[0].age)
        by_stratum.setdefault(st, []).append(rows)
    picked: list[list[Sample]] = []
    while len(picked) < n and any(by_stratum.values()):
        for st in sorted(by_stratum):
            if by_stratum[st] and len(picked) < n:
                picked.append(by_stratum[st].pop(0))
    return picked


def contact_sheet(samples: list[Sample], n_people: int = 6):
    """A PIL image: one row per person, their 7 images in file order, each captioned with its class."""
    from PIL import Image, ImageDraw, ImageFont

    from maskdata.preprocess import open_image

    rows = _pick_people(samples, n_people)
    if not rows:
        raise ValueError("no people to show")
    tw, th = THUMB
    head, cap = 22, 18
    font = ImageFont.load_default(size=12)
    sheet = Image.new("RGB", (7 * tw, len(rows) * (head + th + cap)), "white")
    draw = ImageDraw.Draw(sheet)
    for r, person_rows in enumerate(rows):
        y = r * (head + th + cap)
        s0 = person_rows[0]
        draw.text((4, y + 4), f"{s0.person}  (gender {labels.GENDER_NAMES[s0.gender]}, age {s0.age} -> "
                              f"{labels.AGE_NAMES[labels.age_group(s0.age)]})", fill="black", font=font)
        for c, s in enumerate(sorted(person_rows, key=lambda s: (s.mask, Path(s.path).name.lower()))[:7]):
            sheet.paste(open_image(s.path).resize(THUMB, Image.Resampling.BILINEAR), (c * tw, y + head))
            name = labels.label_table()[s.label()].name
            draw.text((c * tw + 3, y + head + th + 2), f"{s.label()} {name}", fill="black", font=font)
    return sheet


def cmd_sheet(args) -> int:
    from PIL import Image

    train_dir = _train_dir(args.data_dir)
    samples, _ = read_train_dir(train_dir, strict=False)
    sheet = contact_sheet(samples, args.people)
    if args.palette:
        sheet = sheet.quantize(256, method=Image.Quantize.MEDIANCUT)  # about 5x smaller, fine for docs
    with atomic_path(args.out, suffix=".png") as tmp:
        sheet.save(tmp, "PNG", optimize=True)
    print(f"wrote {args.out} ({sheet.width}x{sheet.height}, {min(args.people, len(people(samples)))} people)")
    return 0


def cmd_audit(args) -> int:
    from maskdata import audit
    from maskdata.io import atomic_write_text

    if args.top is not None and args.top < 1:
        raise ValueError(f"--top must be >= 1, got {args.top}")
    if args.sheet < 0:
        raise ValueError(f"--sheet must be >= 0, got {args.sheet}")
    oof = audit.read_oof(args.oof)
    samples, report = read_train_dir(_train_dir(args.data_dir), strict=False, relabel=args.relabel)
    issues, cover = audit.audit(oof, samples)
    written = audit.write_outputs(args.out, issues, samples, args.sheet, cover)
    print(audit.summary_text(issues, cover, args.oof))
    if args.write_corrections:
        text = audit.corrections_csv(issues, args.top, args.max_score)
        atomic_write_text(args.write_corrections, text)
        written.append(Path(args.write_corrections))
        print(f"{args.write_corrections}: {text.count(chr(10)) - 1} suggested correction(s) to review "
              "beside label_issues.png, then pass to mask-train --relabel")
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def audit_limits() -> tuple[float, float, float]:
    """(MIN_FIELD_F1, MAX_GIVEN_PROB, MAX_UNSURE) of the audit, for the help text (maskdata.audit is
    light to import)."""
    from maskdata.audit import MAX_GIVEN_PROB, MAX_UNSURE, MIN_FIELD_F1

    return MIN_FIELD_F1, MAX_GIVEN_PROB, MAX_UNSURE


def _add_audit(sub) -> None:
    ap = sub.add_parser("audit", help="rank suspected wrong labels from out-of-fold predictions (cleanlab)",
                        description="Confident learning (cleanlab) on a run's out-of-fold predictions: "
                                    "gender and age per person (the person's "
                                    "images' probabilities pooled), mask per image, each field calibrated at "
                                    "that level. A label is flagged when cleanlab flags it and the probability "
                                    f"of the given value is at most {audit_limits()[1]}; a field the model is "
                                    f"weak at (macro F1 below {audit_limits()[0]}, or unsure about more than "
                                    f"{audit_limits()[2]:.0%} of its items) is not audited, and the summary "
                                    "says so. Writes "
                                    "OUT/label_issues.csv (lowest probability of the given value first), "
                                    "OUT/audit.json (per field: F1, flags, expected precision) and "
                                    "OUT/label_issues.png (the top suspects, given -> suggested under each). A "
                                    "prediction file that covers part of the set (one run's val_predictions.csv) "
                                    "audits what it covers and says how much that is.")
    ap.add_argument("--oof", required=True, help="RUN/oof_predictions.csv (mask-train --folds K) or "
                                                 "RUN/val_predictions.csv")
    ap.add_argument("--data-dir", required=True, help="DIR/train the run was trained on")
    ap.add_argument("--out", required=True, help="output folder for label_issues.csv and label_issues.png")
    ap.add_argument("--relabel", metavar="FILE", help="audit the labels as corrected by this corrections CSV")
    ap.add_argument("--sheet", type=int, default=24, help="suspects on the contact sheet (default 24; 0 = none)")
    ap.add_argument("--write-corrections", metavar="FILE",
                    help="write a starter corrections CSV (the suggested values) for mask-train --relabel")
    ap.add_argument("--top", type=int, help="with --write-corrections: only the K worst suspects")
    ap.add_argument("--max-score", type=float,
                    help="with --write-corrections: only suspects whose given value has at most this "
                         "out-of-fold probability (the score column)")
    ap.set_defaults(func=cmd_audit)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="mask-data", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True, metavar="{synth,check,sheet,audit}")

    sp = sub.add_parser("synth", help="write a deterministic synthetic data set (train/ and eval/)",
                        description="Write DIR/train (train.csv, images/<person>/...) and DIR/eval "
                                    "(info.csv, answers.csv, images/) with the real set's quirks. "
                                    "The same seed gives byte-identical files with any --workers.")
    sp.add_argument("--out", required=True, help="output folder DIR (train/ and eval/ are created inside)")
    sp.add_argument("--people", type=int, default=300, help="train people, 7 images each (default 300)")
    sp.add_argument("--eval-people", type=int, default=100, help="eval people, 7 images each (default 100)")
    sp.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    sp.add_argument("--label-noise", type=float, default=0.01,
                    help="fraction of train people whose recorded gender or age group is wrong (default 0.01)")
    sp.add_argument("--mask-swap", type=float, default=0.0,
                    help="fraction of train people two of whose files trade pictures, e.g. a mask1 that shows "
                         "no mask (default 0); every wrong label is listed per field in synth_summary.json")
    sp.add_argument("--workers", type=int, default=None,
                    help="processes (default: all CPUs); the output does not depend on it")
    sp.add_argument("--overwrite", action="store_true", help="replace existing DIR/train and DIR/eval")
    sp.set_defaults(func=cmd_synth)

    cp = sub.add_parser("check", help="read DIR/train and report counts per class and every problem",
                        description="Read a train/ folder as training does and print people, images per "
                                    "class and every problem found (csv row without folder, folder without "
                                    "row, missing/duplicate/unreadable image, unreadable age). Lenient by "
                                    "default (problems are skipped and listed); --strict exits 2 if any.")
    cp.add_argument("train_dir", help="DIR/train (or DIR holding train/)")
    cp.add_argument("--strict", action="store_true", help="exit with code 2 if any problem is found")
    cp.add_argument("--relabel", metavar="FILE",
                    help="apply a corrections CSV (person,image,field,value) as training does and report it")
    cp.set_defaults(func=cmd_check)

    sh = sub.add_parser("sheet", help="contact sheet PNG: one row per person, 7 images with class names",
                        description="Draw a contact sheet of a few people (spread over gender and age "
                                    "groups), each row one person's 7 images captioned with the class.")
    sh.add_argument("data_dir", help="DIR/train (or DIR holding train/)")
    sh.add_argument("--out", required=True, help="output PNG path")
    sh.add_argument("--people", type=int, default=6, help="rows (default 6)")
    sh.add_argument("--palette", action="store_true", help="save a 256-colour PNG (about 5x smaller)")
    sh.set_defaults(func=cmd_sheet)
    _add_audit(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, IsADirectoryError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
