"""The parts of a ``mask-tune`` study that the CLI (``training.tuning.cli``) and the worker
(``training.tuning.run``) share: the base run, its reference trial, the pruner and the objective's text.
A module of its own, so that the worker imports them without importing the CLI that starts it.
"""
from __future__ import annotations

import argparse
import copy
from dataclasses import dataclass
from pathlib import Path


def make_pruner(o: argparse.Namespace):
    import optuna.pruners as P

    return {"median": lambda: P.MedianPruner(o.pruner_startup, o.pruner_warmup),
            "percentile": lambda: P.PercentilePruner(o.percentile, o.pruner_startup, o.pruner_warmup),
            "hyperband": lambda: P.HyperbandPruner(min_resource=1),
            "halving": lambda: P.SuccessiveHalvingPruner(min_resource=1),
            "none": P.NopPruner}[o.pruner]()


@dataclass
class Base:
    """The base run: mask-train's parsed options, and the ones the user set."""
    ns: argparse.Namespace
    given: set

    @classmethod
    def parse(cls, train_argv: list[str]) -> "Base":
        from training.cli import CONFIG_ALIASES, build_parser as train_parser, given_options
        from maskdata.yamlconfig import parse_with_config

        argv = [*train_argv, "--out", "-"]
        _, unknown = train_parser().parse_known_args(argv)
        if unknown:
            raise ValueError(f"unknown option {unknown[0]!r}: neither a mask-tune option (mask-tune --help) "
                             "nor a mask-train one (mask-train --help)")
        ns = parse_with_config(train_parser(), argv, csv_keys=("age_bins", "milestones", "mean", "std"),
                               aliases=CONFIG_ALIASES)
        if ns.resume:
            raise ValueError("--resume is not a base option: rerun mask-tune with the same --out to resume a study")
        if ns.list_models:
            raise ValueError("--list-models: run mask-train --list-models")
        return cls(ns, given_options(argv))

    def config(self, values: dict, out: Path):
        """The RunConfig of the base run with ``values`` ({key: value} in --config form) applied."""
        from training.cli import config_from_args

        ns = copy.copy(self.ns)
        for key, value in values.items():
            setattr(ns, key, _to_namespace(key, value))
        ns.out = str(out)
        ns.no_progress = True   # one bar for the study; a trial's own bars would interleave with it
        return config_from_args(ns, self.given | set(values))

    def value(self, key: str):
        """The base run's value of ``key`` in --config form."""
        v = getattr(self.ns, key)
        if key in ("age_bins", "milestones", "mean", "std") and isinstance(v, str):
            return [float(x) if key in ("mean", "std") else int(x) for x in v.split(",") if x.strip()]
        return list(v) if isinstance(v, tuple) else v


def _to_namespace(key: str, value):
    if key in ("age_bins", "milestones", "mean", "std"):
        return ",".join(str(v) for v in value)
    return tuple(value) if key == "resize" else value


def reference_params(space, base: Base) -> dict:
    """The base run's values as Optuna parameters (those the space can express), queued as trial 0."""
    from training.tuning.space import label

    out = {}
    for p in space.params:
        v = base.value(p.key)
        v = v[p.index] if p.index is not None and isinstance(v, list) and len(v) > p.index else v
        if p.choices:
            labels = [tuple(c) if isinstance(c, list) else c for c in p.choices]
            key = tuple(v) if isinstance(v, list) else v
            if key in labels:
                out[p.name] = label(p.choices[labels.index(key)])
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and p.low <= v <= p.high:
            out[p.name] = v
    return out


def objective_text(cfg) -> str:
    if cfg.train.folds:
        return f"maximize val macro F1, mean over {cfg.train.folds} folds"
    return f"maximize val macro F1, best epoch on a {cfg.data.val_fraction:g} holdout"
