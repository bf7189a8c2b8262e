"""The search space of ``mask-tune``: a YAML mapping of ``mask-train --config`` keys to distributions.

    lr:           {low: 1.0e-4, high: 1.0e-2, log: true}     # float range, log scale
    epochs:       {low: 3, high: 8}                           # int range (step: 1 unless given)
    batch_size:   {choices: [16, 32, 64]}
    criterion:    {choices: [cross_entropy, "focal:0.6,f1:0.4"]}
    age_bins:     [30, {low: 55, high: 60}]                   # list keys: one value or distribution per element
    resize:       {choices: [[64, 48], [96, 72]]}             # or whole lists as choices

A key's type comes from ``mask-train``'s parser: int keys take int ranges, float keys any numbers,
text and switch keys only ``choices``. The values themselves (model names, loss mixes, ranges such as
``val_fraction`` in (0, 1)) are checked by ``mask-train``'s own validation, injected as ``check``, at
every choice and at both ends of every range, so a space that would fail mid-study fails before any
training. Imports neither torch nor optuna: ``sample`` takes any object with Optuna's
``suggest_float / suggest_int / suggest_categorical``.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from maskdata.yamlconfig import read_yaml

# --config keys that name where or how a run executes, not what it learns: a search over them is a mistake
NOT_SEARCHABLE = ("data_dir", "out", "resume", "stop_after", "folds", "device", "workers", "no_progress",
                  "no_tensorboard", "list_models", "config", "help")
# keys written as lists in a config file, with their element type and length (None: any length)
LIST_KEYS = {"resize": (int, 2), "age_bins": (int, 2), "milestones": (int, None), "mean": (float, 3),
             "std": (float, 3)}
DIST_KEYS = {"low", "high", "log", "step", "choices"}


@dataclass(frozen=True)
class Param:
    """One Optuna parameter: a whole key, or one element (``index``) of a list key."""
    name: str                       # the Optuna parameter name: key, or key[i]
    key: str                        # the mask-train destination
    index: int | None
    kind: type                      # int | float | str | bool | list
    choices: tuple = ()
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None

    def suggest(self, trial):
        if self.choices:
            labels = [label(c) for c in self.choices]
            picked = trial.suggest_categorical(self.name, labels)
            return self.choices[labels.index(picked)]
        if self.kind is int:
            return trial.suggest_int(self.name, self.low, self.high, step=self.step or 1, log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)

    def ends(self) -> tuple:
        """The values ``check`` must accept: every choice, or both ends of the range."""
        return self.choices or (self.low, self.high)

    def describe(self) -> str:
        if self.choices:
            return "one of " + ", ".join(label(c) for c in self.choices)
        return f"{self.low}..{self.high}" + (" (log)" if self.log else "") + (f" step {self.step}" if self.step else "")


@dataclass(frozen=True)
class Space:
    path: str
    params: tuple[Param, ...]
    fixed: dict                     # list-key elements given as plain values: {key: [v or None, ...]}

    def sample(self, trial) -> dict:
        """``{key: value}`` in --config form (lists for list keys) drawn from ``trial``."""
        out = {k: list(v) for k, v in self.fixed.items()}
        for p in self.params:
            value = p.suggest(trial)
            if p.index is None:
                out[p.key] = value
            else:
                out[p.key][p.index] = value
        return out

    def keys(self) -> list[str]:
        return sorted({p.key for p in self.params})

    def check(self, check: Callable[[dict], None]) -> None:
        """Run ``check({key: value})`` at every choice and range end; ValueError naming the key on failure."""
        first = {p.name: p.ends()[0] for p in self.params}
        for p in self.params:
            for value in p.ends():
                values = self._assemble({**first, p.name: value})
                try:
                    check(values)
                except (ValueError, FileNotFoundError) as e:
                    raise ValueError(f"{self.path}: {p.name}: {label(value)} is not a valid value ({e})") from None

    def _assemble(self, by_name: dict) -> dict:
        out = {k: list(v) for k, v in self.fixed.items()}
        for p in self.params:
            if p.index is None:
                out[p.key] = by_name[p.name]
            else:
                out[p.key][p.index] = by_name[p.name]
        return out


def label(value) -> object:
    """A choice as Optuna stores it (it keeps only None/bool/int/float/str): lists become 'a,b'."""
    return ",".join(str(v) for v in value) if isinstance(value, (list, tuple)) else value


def key_types(parser: argparse.ArgumentParser) -> dict[str, type]:
    """Every searchable destination of ``parser`` -> int | float | str | bool | list."""
    out = {}
    # argparse has no public API for an option's type or action (a defaults-only parse, which
    # maskdata.yamlconfig uses for the names, gives values only); ``_actions`` has been stable since
    # Python 2.7, and tests/test_tune.py builds its spaces through this function
    for a in parser._actions:
        if a.dest in NOT_SEARCHABLE:
            continue
        if a.dest in LIST_KEYS:
            out[a.dest] = list
        elif isinstance(a, argparse._StoreTrueAction) or a.const is True:
            out[a.dest] = bool
        elif a.type in (int, float):
            out[a.dest] = a.type
        else:
            out[a.dest] = str
    return out


def load_space(path: str | Path, types: dict[str, type], aliases: dict | None = None) -> Space:
    """The space in ``path``; ValueError with a one-line reason (file, key and what is wrong)."""
    path = Path(path)
    raw = read_yaml(path, "space file")
    if not raw:
        raise ValueError(f"{path}: the space is empty; give at least one key with a distribution, "
                         "e.g. lr: {low: 1.0e-4, high: 1.0e-2, log: true}")
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping of mask-train --config keys to distributions, "
                         f"got {type(raw).__name__}")
    params, fixed, seen = [], {}, set()
    for key, spec in raw.items():
        key, spec = _unalias(str(key), spec, aliases or {})
        where = f"{path}: {key}"
        if key in seen:
            raise ValueError(f"{where}: given twice (under its own name and an alias)")
        seen.add(key)
        if key in NOT_SEARCHABLE:
            raise ValueError(f"{where}: cannot be searched (it says where or how a run executes); "
                             "give it to mask-tune itself")
        if key not in types:
            raise ValueError(f"{where}: unknown key; searchable keys: {', '.join(sorted(types))}")
        if types[key] is list and isinstance(spec, list):
            fixed[key], element_params = _list_elements(where, key, spec)
            params += element_params
        else:
            params.append(_param(where, key, None, types[key], spec))
    if not params:
        raise ValueError(f"{path}: the space has no distribution (every value is fixed)")
    return Space(str(path), tuple(params), fixed)


def _unalias(key: str, spec, aliases: dict):
    if key not in aliases:
        return key, spec
    dest, convert = aliases[key]
    if convert and isinstance(spec, dict) and isinstance(spec.get("choices"), list):
        spec = {**spec, "choices": [convert(c) for c in spec["choices"]]}
    return dest, spec


def _list_elements(where: str, key: str, spec: list) -> tuple[list, list[Param]]:
    elem_type, length = LIST_KEYS[key]
    if length is not None and len(spec) != length:
        raise ValueError(f"{where}: expected {length} elements, got {len(spec)}")
    values, params = [], []
    for i, item in enumerate(spec):
        if isinstance(item, dict):
            params.append(_param(f"{where}[{i}]", key, i, elem_type, item))
            values.append(None)
        else:
            values.append(_fits(f"{where}[{i}]", item, elem_type))
    if not params:
        raise ValueError(f"{where}: no element is a distribution; write one as {{low: .., high: ..}} "
                         "or {choices: [..]}")
    return values, params


def _param(where: str, key: str, index: int | None, kind: type, spec) -> Param:
    name = key if index is None else f"{key}[{index}]"
    if not isinstance(spec, dict):
        raise ValueError(f"{where}: expected a distribution ({{low: .., high: ..}} or {{choices: [..]}}), "
                         f"got {spec!r}")
    unknown = sorted(set(spec) - DIST_KEYS)
    if unknown:
        raise ValueError(f"{where}: unknown field {unknown[0]!r}; a distribution has {sorted(DIST_KEYS)}")
    if "choices" in spec:
        if set(spec) - {"choices"}:
            raise ValueError(f"{where}: choices cannot be combined with {sorted(set(spec) - {'choices'})}")
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise ValueError(f"{where}: choices must be a non-empty list")
        return Param(name, key, index, kind, choices=tuple(_fits(where, c, kind, key) for c in choices))
    return _range(where, name, key, index, kind, spec)


def _range(where: str, name: str, key: str, index: int | None, kind: type, spec: dict) -> Param:
    if kind not in (int, float):
        what = {bool: "a switch", str: "text", list: "a list"}[kind]
        raise ValueError(f"{where}: takes {what}, so a low..high range does not fit; use choices: [..]")
    if "low" not in spec or "high" not in spec:
        raise ValueError(f"{where}: a range needs both low and high (or use choices: [..])")
    low, high, step, log = spec["low"], spec["high"], spec.get("step"), spec.get("log", False)
    for what, v in (("low", low), ("high", high), ("step", step)):
        if v is None and what == "step":
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ValueError(f"{where}: {what} must be a number, got {v!r}")
        if kind is int and not isinstance(v, int):
            raise ValueError(f"{where}: takes whole numbers, so {what} {v!r} does not fit")
    if not isinstance(log, bool):
        raise ValueError(f"{where}: log must be true or false, got {log!r}")
    if not low < high:
        raise ValueError(f"{where}: low ({low}) must be below high ({high})")
    if log and (low <= 0 or step is not None):
        raise ValueError(f"{where}: a log range needs low > 0 and no step")
    if step is not None and step <= 0:
        raise ValueError(f"{where}: step must be positive, got {step}")
    cast = int if kind is int else float
    return Param(name, key, index, kind, low=cast(low), high=cast(high), log=log,
                 step=None if step is None else cast(step))


def _fits(where: str, value, kind: type, key: str | None = None):
    """``value`` as ``kind`` (ints are floats too), or ValueError."""
    if kind is list:
        elem_type, length = LIST_KEYS[key]
        if not isinstance(value, list) or (length is not None and len(value) != length):
            n = f"{length} " if length else ""
            raise ValueError(f"{where}: each choice must be a list of {n}{elem_type.__name__}s, got {value!r}")
        return [_fits(where, v, elem_type) for v in value]
    ok = (isinstance(value, bool) if kind is bool
          else isinstance(value, str) if kind is str
          else not isinstance(value, bool) and isinstance(value, int if kind is int else (int, float)))
    if not ok:
        raise ValueError(f"{where}: takes {'true/false' if kind is bool else kind.__name__} values, got {value!r}")
    return float(value) if kind is float else value
