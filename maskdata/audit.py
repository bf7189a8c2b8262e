"""Label audit: confident learning (cleanlab) on out-of-fold predictions, at the level labels are recorded.

Gender and age belong to a person (one row of train.csv covers all 7 images), so they are audited
per person on the mean of that person's images' head probabilities; the mask state comes from one
file's name, so it is audited per image. Head probabilities are the marginals of the file's 18 class
probabilities (``class = mask * 6 + gender * 3 + age``): exact for multi-head runs (whose 18
probabilities are the product of their heads) and the head view of single-head runs.

    issues, cover = audit(read_oof("RUN/oof_predictions.csv"), samples)

cleanlab is imported inside :func:`find_issues`, so ``import maskdata`` stays light.
"""
from __future__ import annotations

import csv
import io
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from maskdata import labels
from maskdata.extras import install_hint
from maskdata.io import atomic_write_text, read_csv

log = logging.getLogger(__name__)

PROB_COLUMNS = labels.PROB_COLUMNS
HEAD_NAMES = {"mask": labels.MASK_NAMES, "gender": labels.GENDER_NAMES, "age": labels.AGE_NAMES}
ISSUE_COLUMNS = ("rank", "person", "image", "field", "given", "suggested", "score", "images")


@dataclass(frozen=True)
class Oof:
    """One prediction file: image paths, their person folders and (N, 18) class probabilities."""
    source: str
    paths: list[str]
    persons: list[str]
    probs: np.ndarray


@dataclass(frozen=True)
class Issue:
    person: str
    image: str        # file name for mask issues, '' for the per-person fields
    field: str        # gender | age | mask
    given: str
    suggested: str
    score: float      # cleanlab label quality of the given label (lower = more likely wrong)
    images: int       # images the probabilities came from


@dataclass(frozen=True)
class Coverage:
    images: int            # images of the data the prediction file covers
    total_images: int
    people: int
    total_people: int
    unmatched_rows: int    # rows of the file that are not images of the data
    audited: dict          # field -> number of items (people or images) audited

    def text(self) -> str:
        share = self.images / self.total_images if self.total_images else 0.0
        out = (f"covers {self.images} of {self.total_images} images ({share:.1%}) and {self.people} of "
               f"{self.total_people} people")
        return out + (f"; {self.unmatched_rows} row(s) name no image of the data" if self.unmatched_rows else "")


def read_oof(path: str | Path) -> Oof:
    """``oof_predictions.csv`` of ``mask-train --folds K`` or one run's ``val_predictions.csv``."""
    _, rows = read_csv(Path(path), ("path", "person", *PROB_COLUMNS))
    if not rows:
        raise ValueError(f"{path}: no prediction rows")
    try:
        probs = np.array([[float(r[c]) for c in PROB_COLUMNS] for r in rows], dtype=np.float64)
    except ValueError as e:
        raise ValueError(f"{path}: unreadable probability: {e}") from None
    if not np.all(np.isfinite(probs)) or probs.min() < 0:
        raise ValueError(f"{path}: probabilities must be finite and >= 0")
    sums = probs.sum(1, keepdims=True)
    if np.any(sums <= 0):
        raise ValueError(f"{path}: a row's probabilities sum to 0")
    return Oof(str(path), [r["path"] for r in rows], [r["person"].strip() for r in rows], probs / sums)


def head_probs(probs: np.ndarray) -> dict[str, np.ndarray]:
    """(N, 18) class probabilities -> {head: (N, head size)} marginals."""
    m, g, a = (labels.HEAD_SIZES[h] for h in ("mask", "gender", "age"))
    joint = probs.reshape(-1, m, g, a)
    return {"mask": joint.sum((2, 3)), "gender": joint.sum((1, 3)), "age": joint.sum((1, 2))}


def match(oof: Oof, samples: list) -> np.ndarray:
    """Index into ``samples`` of each prediction row (-1 where none): by path, else by person folder
    and file name (a file written on another copy of the data)."""
    by_path = {s.path: i for i, s in enumerate(samples)}
    by_name = {(s.person, Path(s.path).name.lower()): i for i, s in enumerate(samples)}
    out = np.full(len(oof.paths), -1, dtype=np.int64)
    for k, (path, person) in enumerate(zip(oof.paths, oof.persons)):
        i = by_path.get(path, by_name.get((person, Path(path).name.lower()), -1))
        out[k] = i
    if len(set(out[out >= 0].tolist())) != int((out >= 0).sum()):
        raise ValueError(f"{oof.source}: an image is predicted more than once")
    return out


def find_issues(given: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(flagged mask, label quality scores) by cleanlab's confident learning; nothing flagged for
    fewer than two items. Classes no item is labeled with cannot be flagged toward (cleanlab needs
    examples of a class to set its threshold)."""
    try:
        from cleanlab.filter import find_label_issues
        from cleanlab.rank import get_label_quality_scores
    except ImportError:
        raise ValueError(install_hint("audit", "the label audit", ["cleanlab"])) from None

    if len(given) < 2:
        return np.zeros(len(given), dtype=bool), np.ones(len(given))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # cleanlab warns about classes without examples; Coverage says it
        flagged = find_label_issues(given, probs, filter_by="prune_by_noise_rate", n_jobs=1)
        scores = get_label_quality_scores(given, probs, method="self_confidence")
    return np.asarray(flagged, dtype=bool), np.asarray(scores, dtype=np.float64)


def _issues(field: str, given: np.ndarray, probs: np.ndarray, where: list[tuple[str, str]],
            counts: list[int]) -> list[Issue]:
    flagged, scores = find_issues(given, probs)
    names = HEAD_NAMES[field]
    out = []
    for k in np.flatnonzero(flagged):
        others = probs[k].copy()
        others[given[k]] = -1.0          # the suggestion is the likeliest *other* value
        out.append(Issue(where[k][0], where[k][1], field, names[given[k]], names[int(others.argmax())],
                         float(scores[k]), counts[k]))
    return out


def audit(oof: Oof, samples: list) -> tuple[list[Issue], Coverage]:
    """Suspected wrong labels, worst first, and how much of the data the prediction file covered."""
    idx = match(oof, samples)
    keep = idx >= 0
    if not keep.any():
        raise ValueError(f"{oof.source}: none of its {len(idx)} rows is an image of the data read; "
                         "is it from a run on this data folder?")
    heads = {h: p[keep] for h, p in head_probs(oof.probs).items()}
    rows = [samples[i] for i in idx[keep]]
    issues = _issues("mask", np.array([s.mask for s in rows]), heads["mask"],
                     [(s.person, Path(s.path).name) for s in rows], [1] * len(rows))
    by_person: dict[str, list[int]] = {}
    for k, s in enumerate(rows):
        by_person.setdefault(s.person, []).append(k)
    persons = sorted(by_person)
    first = [rows[by_person[p][0]] for p in persons]
    counts = [len(by_person[p]) for p in persons]
    where = [(p, "") for p in persons]
    for field, given in (("gender", [s.gender for s in first]), ("age", [labels.age_group(s.age) for s in first])):
        pooled = np.stack([heads[field][by_person[p]].mean(0) for p in persons])
        issues += _issues(field, np.array(given), pooled, where, counts)
    issues.sort(key=lambda i: (i.score, i.field, i.person, i.image))
    cover = Coverage(len(rows), len(samples), len(persons), len({s.person for s in samples}),
                     int((~keep).sum()), {"mask": len(rows), "gender": len(persons), "age": len(persons)})
    return issues, cover


def issues_csv(issues: list[Issue]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(ISSUE_COLUMNS)
    for rank, i in enumerate(issues, start=1):
        w.writerow([rank, i.person, i.image, i.field, i.given, i.suggested, f"{i.score:.6f}", i.images])
    return buf.getvalue()


def corrections_csv(issues: list[Issue], top: int | None = None, max_score: float | None = None) -> str:
    """A starter corrections file (maskdata.relabel's columns, then the audit's given value and
    score for the reviewer): the ``top`` worst suspects and/or those scoring at most ``max_score``."""
    chosen = [i for i in issues if max_score is None or i.score <= max_score][:top]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["person", "image", "field", "value", "given", "score"])
    for i in chosen:
        w.writerow([i.person, i.image, i.field, i.suggested, i.given, f"{i.score:.6f}"])
    return buf.getvalue()


def summary_text(issues: list[Issue], cover: Coverage, oof_source: str) -> str:
    per_field = {f: sum(1 for i in issues if i.field == f) for f in ("gender", "age", "mask")}
    lines = [f"audit of {oof_source}: {cover.text()}",
             "suspects: " + ", ".join(f"{f} {n} of {cover.audited[f]} {'images' if f == 'mask' else 'people'}"
                                      for f, n in per_field.items())]
    lines += [f"  {i.score:.4f}  {i.field:<6} {i.person}{'/' + i.image if i.image else ''}: "
              f"{i.given} -> {i.suggested}" for i in issues[:10]]
    if len(issues) > 10:
        lines.append(f"  ... and {len(issues) - 10} more in label_issues.csv")
    return "\n".join(lines)


def write_outputs(out_dir: str | Path, issues: list[Issue], samples: list, sheet_n: int) -> list[Path]:
    """label_issues.csv and label_issues.png (the ``sheet_n`` worst suspects) in ``out_dir``."""
    from maskdata.audit_sheet import draw_sheet
    from maskdata.io import atomic_path

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "label_issues.csv", issues_csv(issues))
    written = [out / "label_issues.csv"]
    if issues and sheet_n > 0:
        sheet = draw_sheet(issues[:sheet_n], samples)
        with atomic_path(out / "label_issues.png", suffix=".png") as tmp:
            sheet.save(tmp, "PNG", optimize=True)
        written.append(out / "label_issues.png")
    return written
