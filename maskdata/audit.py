"""Label audit: confident learning (cleanlab) on out-of-fold predictions, at the level labels are recorded.

Gender and age belong to a person (one row of train.csv covers all 7 images), so they are audited
per person on the mean of that person's images' head probabilities; the mask state comes from one
file's name, so it is audited per image. Head probabilities are the marginals of the file's 18 class
probabilities (``class = mask * 6 + gender * 3 + age``): exact for multi-head runs (whose 18
probabilities are the product of their heads) and the head view of single-head runs.

A label is flagged only when the evidence supports it, field by field:

* the field's item probabilities (pooled over a person's images for gender and age) are calibrated
  against the model's own error rate at that level: one temperature per field, fitted on the items
  against their given labels (all seven photos of one face are misjudged together, which
  image-level calibration cannot see); the few wrong labels only soften it;
* the field is audited only if the model is good at it: its macro F1 against the given labels, over
  the field's items, is at least ``MIN_FIELD_F1``, and it is unsure (the given value's calibrated
  probability strictly between ``MAX_GIVEN_PROB`` and 1 - ``MAX_GIVEN_PROB``) about at most
  ``MAX_UNSURE`` of them. Wrong labels make a good model confidently disagree, not hesitate, so
  hesitation measures the model, not the noise; a model that hesitates often is also confidently
  wrong often, and its flags would be mostly its own mistakes (measured: bench.audit_precision).
  Otherwise the audit says so, in one line and in its report, and flags nothing there;
* cleanlab's confident learning must flag the item, **and** the calibrated probability of the given
  value must be at most ``MAX_GIVEN_PROB``, so each flag is a label the model, at the level the
  label is recorded, calls wrong at least 1 - MAX_GIVEN_PROB of the time. The report gives, per
  field, the precision those probabilities predict for the flags (1 - their mean probability of the
  given value).

Every flag carries the two numbers a reviewer reads: the probability of the given value (``score``,
the ranking, lowest first) and of the suggested one (``p_suggested``).

    issues, cover = audit(read_oof("RUN/oof_predictions.csv"), samples)

cleanlab is imported inside :func:`find_issues`, so ``import maskdata`` stays light.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from maskdata import labels, metrics
from maskdata.extras import install_hint
from maskdata.io import atomic_write_text, read_csv

log = logging.getLogger(__name__)

PROB_COLUMNS = labels.PROB_COLUMNS
HEAD_NAMES = {"mask": labels.MASK_NAMES, "gender": labels.GENDER_NAMES, "age": labels.AGE_NAMES}
ISSUE_COLUMNS = ("rank", "person", "image", "field", "given", "suggested", "score", "p_suggested", "images")
FIELDS = ("gender", "age", "mask")
MIN_FIELD_F1 = 0.75    # a field whose out-of-fold macro F1 (against the given labels) is lower is not audited
MAX_GIVEN_PROB = 0.15  # a flag needs the given value's calibrated out-of-fold probability at most this
MAX_UNSURE = 0.1       # a field is audited only if the model is sure (either way) about the rest of its items


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
    score: float      # out-of-fold probability of the given value (lower = more likely wrong)
    p_suggested: float  # out-of-fold probability of the suggested value
    images: int       # images the probabilities came from


@dataclass(frozen=True)
class FieldAudit:
    """How one field was audited: its items, how good the model is at it, what was flagged."""
    field: str
    items: int             # people (gender, age) or images (mask)
    f1: float              # out-of-fold macro F1 against the given labels, over the items
    unsure: float          # share of items whose given value has a calibrated probability strictly
                           # between MAX_GIVEN_PROB and 1 - MAX_GIVEN_PROB
    temperature: float     # fitted on the items against their given labels
    audited: bool          # False: f1 below MIN_FIELD_F1 or unsure above MAX_UNSURE; nothing flagged
    candidates: int        # flagged by confident learning alone
    flagged: int
    expected_precision: float | None   # 1 - mean probability of the given value over the flags

    def text(self) -> str:
        unit = "images" if self.field == "mask" else "people"
        head = (f"{self.field}: out-of-fold macro F1 {self.f1:.3f} over {self.items} {unit}, unsure about "
                f"{self.unsure:.0%}")
        if not self.audited:
            why = (f"F1 below {MIN_FIELD_F1}" if self.f1 < MIN_FIELD_F1 else f"unsure about more than {MAX_UNSURE:.0%}")
            return (f"{head}: not audited ({why}): the model is too weak here to tell wrong labels from its own "
                    f"mistakes")
        out = f"{head}; {self.flagged} flagged ({self.candidates} by confident learning alone)"
        return out + (f", expected precision {self.expected_precision:.2f}" if self.flagged else "")

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass(frozen=True)
class Coverage:
    images: int            # images of the data the prediction file covers
    total_images: int
    people: int
    total_people: int
    unmatched_rows: int    # rows of the file that are not images of the data
    audited: dict          # field -> number of items (people or images) audited
    fields: dict = None    # field -> FieldAudit

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


NOISE_GRID = np.linspace(0.0, 0.3, 31)   # label-noise shares the calibration considers


def fit_temperature(logp: np.ndarray, given: np.ndarray) -> tuple[float, float]:
    """(T, noise) that make the given labels most likely under ``(1 - noise) * softmax(logp / T) +
    noise / K``: the model re-tempered, plus a share of labels that are right or wrong regardless of
    it. The noise term takes the confident disagreements that wrong labels cause, so they do not
    soften T for every item. Golden-section search on log T in [1/20, 20] for each noise share."""
    if len(given) < 2:
        return 1.0, 0.0
    k = logp.shape[1]

    def nll(log_t: float, noise: float) -> float:
        z = logp / np.exp(log_t)
        z = z - z.max(1, keepdims=True)
        p = np.exp(z[np.arange(len(given)), given]) / np.exp(z).sum(1)
        return float(-np.mean(np.log((1 - noise) * p + noise / k)))

    best = (np.inf, 1.0, 0.0)
    ratio = (np.sqrt(5) - 1) / 2
    for noise in NOISE_GRID:
        lo, hi = -np.log(20.0), np.log(20.0)
        a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
        fa, fb = nll(a, noise), nll(b, noise)
        for _ in range(40):   # one new evaluation per step: the kept point is already known
            if fa < fb:
                hi, b, fb = b, a, fa
                a = hi - ratio * (hi - lo)
                fa = nll(a, noise)
            else:
                lo, a, fa = a, b, fb
                b = lo + ratio * (hi - lo)
                fb = nll(b, noise)
        log_t = (lo + hi) / 2
        best = min(best, (nll(log_t, noise), float(np.exp(log_t)), float(noise)))
    return best[1], best[2]


def calibrate(probs: np.ndarray, given: np.ndarray) -> tuple[np.ndarray, float]:
    """(probs re-tempered to match how often they agree with ``given``, the temperature); the share
    of wrong labels fitted beside it is left out of the result."""
    logp = np.log(np.clip(probs, 1e-12, None))
    t, _ = fit_temperature(logp, given)
    z = logp / t
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True), t


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


def find_issues(given: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Which items cleanlab's confident learning flags (``prune_by_noise_rate``); nothing for fewer
    than two items. Classes no item is labeled with cannot be flagged toward (cleanlab needs
    examples of a class to set its threshold)."""
    try:
        from cleanlab.filter import find_label_issues
    except ImportError:
        raise ValueError(install_hint("audit", "the label audit", ["cleanlab"])) from None

    if len(given) < 2:
        return np.zeros(len(given), dtype=bool)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # cleanlab warns about classes without examples; Coverage says it
        flagged = find_label_issues(given, probs, filter_by="prune_by_noise_rate", n_jobs=1)
    return np.asarray(flagged, dtype=bool)


def field_f1(given: np.ndarray, probs: np.ndarray) -> float:
    """Macro F1 of the probabilities' argmax against the given labels, over the classes that occur."""
    cm = metrics.confusion(given, probs.argmax(1), probs.shape[1])
    present = (cm.sum(0) + cm.sum(1)) > 0
    return float(metrics.f1_from_confusion(cm)[present].mean()) if present.any() else 0.0


def _issues(field: str, given: np.ndarray, probs: np.ndarray, where: list[tuple[str, str]],
            counts: list[int]) -> tuple[list[Issue], FieldAudit]:
    f1 = field_f1(given, probs)
    probs, temperature = calibrate(probs, given)
    p_given = probs[np.arange(len(given)), given]
    unsure = float(((p_given > MAX_GIVEN_PROB) & (p_given < 1 - MAX_GIVEN_PROB)).mean()) if len(given) else 0.0
    if f1 < MIN_FIELD_F1 or unsure > MAX_UNSURE:
        return [], FieldAudit(field, len(given), f1, unsure, temperature, False, 0, 0, None)
    candidates = find_issues(given, probs)
    flagged = candidates & (p_given <= MAX_GIVEN_PROB)
    names = HEAD_NAMES[field]
    out = []
    for k in np.flatnonzero(flagged):
        others = probs[k].copy()
        others[given[k]] = -1.0          # the suggestion is the likeliest *other* value
        s = int(others.argmax())
        out.append(Issue(where[k][0], where[k][1], field, names[given[k]], names[s], float(p_given[k]),
                         float(probs[k, s]), counts[k]))
    precision = 1.0 - float(p_given[flagged].mean()) if flagged.any() else None
    return out, FieldAudit(field, len(given), f1, unsure, temperature, True, int(candidates.sum()),
                           int(flagged.sum()), precision)


def audit(oof: Oof, samples: list) -> tuple[list[Issue], Coverage]:
    """Suspected wrong labels, worst first, and how much of the data the prediction file covered
    (with each field's :class:`FieldAudit`)."""
    idx = match(oof, samples)
    keep = idx >= 0
    if not keep.any():
        raise ValueError(f"{oof.source}: none of its {len(idx)} rows is an image of the data read; "
                         "is it from a run on this data folder?")
    rows = [samples[i] for i in idx[keep]]
    heads = head_probs(oof.probs[keep])
    issues, fields = _issues("mask", np.array([s.mask for s in rows]), heads["mask"],
                             [(s.person, Path(s.path).name) for s in rows], [1] * len(rows))
    fields = {"mask": fields}
    by_person: dict[str, list[int]] = {}
    for k, s in enumerate(rows):
        by_person.setdefault(s.person, []).append(k)
    persons = sorted(by_person)
    first = [rows[by_person[p][0]] for p in persons]
    counts = [len(by_person[p]) for p in persons]
    where = [(p, "") for p in persons]
    for field, given in (("gender", [s.gender for s in first]), ("age", [labels.age_group(s.age) for s in first])):
        pooled = np.stack([heads[field][by_person[p]].mean(0) for p in persons])
        found, fields[field] = _issues(field, np.array(given), pooled, where, counts)
        issues += found
    issues.sort(key=lambda i: (i.score, -i.p_suggested, i.field, i.person, i.image))
    cover = Coverage(len(rows), len(samples), len(persons), len({s.person for s in samples}),
                     int((~keep).sum()), {"mask": len(rows), "gender": len(persons), "age": len(persons)},
                     {f: fields[f] for f in FIELDS})
    return issues, cover


def issues_csv(issues: list[Issue]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(ISSUE_COLUMNS)
    for rank, i in enumerate(issues, start=1):
        w.writerow([rank, i.person, i.image, i.field, i.given, i.suggested, f"{i.score:.6f}", f"{i.p_suggested:.6f}",
                    i.images])
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
    per_field = {f: sum(1 for i in issues if i.field == f) for f in FIELDS}
    lines = [f"audit of {oof_source}: {cover.text()}",
             "suspects: " + ", ".join(f"{f} {n} of {cover.audited[f]} {'images' if f == 'mask' else 'people'}"
                                      for f, n in per_field.items())]
    lines += [cover.fields[f].text() for f in FIELDS if cover.fields]
    lines += [f"  p(given) {i.score:.3f}  p(suggested) {i.p_suggested:.3f}  {i.field:<6} "
              f"{i.person}{'/' + i.image if i.image else ''}: {i.given} -> {i.suggested}" for i in issues[:10]]
    if len(issues) > 10:
        lines.append(f"  ... and {len(issues) - 10} more in label_issues.csv")
    return "\n".join(lines)


def report_json(issues: list[Issue], cover: Coverage) -> str:
    """audit.json: coverage, the thresholds, and each field's :class:`FieldAudit`."""
    return json.dumps({"images": cover.images, "total_images": cover.total_images, "people": cover.people,
                       "total_people": cover.total_people, "unmatched_rows": cover.unmatched_rows,
                       "min_field_f1": MIN_FIELD_F1, "max_unsure": MAX_UNSURE,
                       "max_given_prob": MAX_GIVEN_PROB, "flagged": len(issues),
                       "fields": {f: a.to_dict() for f, a in (cover.fields or {}).items()}}, indent=2) + "\n"


def write_outputs(out_dir: str | Path, issues: list[Issue], samples: list, sheet_n: int,
                  cover: Coverage | None = None) -> list[Path]:
    """label_issues.csv, audit.json (with ``cover``) and label_issues.png (the ``sheet_n`` worst
    suspects) in ``out_dir``."""
    from maskdata.audit_sheet import draw_sheet
    from maskdata.io import atomic_path

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "label_issues.csv", issues_csv(issues))
    written = [out / "label_issues.csv"]
    if cover is not None:
        atomic_write_text(out / "audit.json", report_json(issues, cover))
        written.append(out / "audit.json")
    if issues and sheet_n > 0:
        sheet = draw_sheet(issues[:sheet_n], samples)
        with atomic_path(out / "label_issues.png", suffix=".png") as tmp:
            sheet.save(tmp, "PNG", optimize=True)
        written.append(out / "label_issues.png")
    return written
