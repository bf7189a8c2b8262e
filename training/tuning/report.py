"""What a ``mask-tune`` study leaves in its folder, rewritten after every trial and at the end:

- ``trials.csv``: one row per trial (number, state, value, epochs run, seconds, reference, retry_of,
  repeat_of, every parameter, run folder);
- ``best.yaml``: the best finished trial's ``config.yaml`` without ``out``, so
  ``mask-train --config STUDY/best.yaml --out runs/best`` reruns it;
- ``history.png``, ``intermediate.png``, ``importances.png``: Optuna's matplotlib plots of the
  optimization history, the per-epoch validation macro F1 of every trial, and the parameter
  importances (fANOVA; drawn once two finished trials differ in their parameters).
"""
from __future__ import annotations

import csv
import io
import logging
import warnings
from pathlib import Path

import optuna
import yaml
from optuna.trial import TrialState

from maskdata.io import atomic_path, atomic_write_text

log = logging.getLogger(__name__)

PLOTS = ("history.png", "intermediate.png", "importances.png")


def trial_line(t: optuna.trial.FrozenTrial) -> str:
    """The one line printed when a trial ends (epochs: over all folds)."""
    run, epochs = t.user_attrs.get("epochs_run", 0), t.user_attrs.get("epochs_planned", "?")
    tag = " (reference)" if t.user_attrs.get("reference") else ""
    params = ", ".join(f"{k}={_short(v)}" for k, v in t.params.items())
    value = "n/a" if t.value is None else f"{t.value:.4f}"
    secs = t.duration.total_seconds() if t.duration else 0.0
    if t.state == TrialState.PRUNED:
        what = f"pruned after {run} of {epochs} epoch(s), val macro F1 {value}"
    elif t.state == TrialState.COMPLETE:
        what = f"finished, {run} epoch(s), val macro F1 {value}"
    else:
        what = t.state.name.lower()
    return f"trial {t.number}{tag} {what} [{secs:.0f} s]" + (f": {params}" if params else "")


def _short(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def trials_csv(study: optuna.Study) -> str:
    trials = study.get_trials(deepcopy=False)
    names = sorted({k for t in trials for k in t.params})
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["number", "state", "value", "epochs_run", "seconds", "reference", "retry_of", "repeat_of", *names,
                "run_dir"])
    for t in trials:
        a = t.user_attrs
        w.writerow([t.number, t.state.name, "" if t.value is None else f"{t.value:.6f}", a.get("epochs_run", ""),
                    f"{t.duration.total_seconds():.1f}" if t.duration else "", int(bool(a.get("reference"))),
                    a.get("retry_of", ""), a.get("repeat_of", ""), *[t.params.get(k, "") for k in names],
                    a.get("run_dir", "")])
    return buf.getvalue()


def best_trial(study: optuna.Study):
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return max(done, key=lambda t: t.value) if done else None


def best_yaml(t: optuna.trial.FrozenTrial, study_name: str) -> str | None:
    """The best trial's config.yaml as a rerunnable recipe (``out`` dropped: the rerun names its own)."""
    path = Path(t.user_attrs.get("run_dir", "")) / "config.yaml"
    if not path.is_file():
        return None
    values = yaml.safe_load(path.read_text(encoding="utf-8"))
    values.pop("out", None)
    head = (f"# best trial {t.number} of study {study_name!r}: val macro F1 {t.value:.4f}\n"
            f"# rerun: mask-train --config best.yaml --out runs/best (flags win over this file)\n")
    return head + yaml.safe_dump(values, sort_keys=False)


def write_tables(study: optuna.Study, out: Path) -> None:
    """trials.csv and best.yaml (cheap: after every trial)."""
    atomic_write_text(out / "trials.csv", trials_csv(study))
    best = best_trial(study)
    text = best_yaml(best, study.study_name) if best is not None else None
    if text:
        atomic_write_text(out / "best.yaml", text)


def write_plots(study: optuna.Study, out: Path) -> list[str]:
    """The PNG plots that the study's trials allow; the file names written."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as vis

    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    varied = len({tuple(sorted(t.params.items())) for t in done if t.params}) >= 2
    makers = {"history.png": (bool(done), lambda: vis.plot_optimization_history(study)),
              "intermediate.png": (bool(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,
                                                                                   TrialState.PRUNED))),
                                   lambda: vis.plot_intermediate_values(study)),
              "importances.png": (varied, lambda: vis.plot_param_importances(study))}
    written = []
    for name, (possible, make) in makers.items():
        if not possible:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")   # Optuna marks its matplotlib plots experimental
            try:
                ax = make()
            except (ValueError, RuntimeError) as e:   # e.g. importances when no parameter varied
                log.warning("no %s: %s", name, str(e).splitlines()[0] if str(e) else type(e).__name__)
                continue
        fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
        fig.set_size_inches(8, 5)
        fig.tight_layout()
        with atomic_path(out / name, suffix=".png") as tmp:
            fig.savefig(tmp, format="png", dpi=100)
        plt.close(fig)
        written.append(name)
    return written
