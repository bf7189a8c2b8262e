"""``--config FILE.yaml`` for the console scripts, the timm/torchvision way: the file sets the parser's
defaults, flags on the command line win.

Keys are the argparse destinations (``model: resnet18``, ``age_bins: [30, 58]``, switches such as
``no_cache`` as ``true``/``false``); an unknown key is a one-line error naming it and the valid ones.
It lives in ``maskdata`` (no torch, no other project package) so that ``mask-train`` and ``mask-export``
share it without one stage importing the other. Only public argparse API is used: the names a parser
knows are read from a parse of an empty command line, which holds every destination with its default.
"""
from __future__ import annotations

import argparse
from pathlib import Path


def _csv(value) -> str:
    return ",".join(str(v) for v in value) if isinstance(value, (list, tuple)) else value


def parser_dests(parser: argparse.ArgumentParser) -> list[str]:
    """Every destination ``parser`` fills, read from a defaults-only parse (``parse_known_args([])``).

    Works for parsers without required options (ours check "one of ... is required" in ``main``)."""
    known, _ = parser.parse_known_args([])
    return sorted(vars(known))


def read_yaml(path: Path, what: str = "config file"):
    """The YAML document in ``path``; FileNotFoundError / ValueError naming ``what`` and the parse error."""
    import yaml

    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None


def _read_mapping(path: Path) -> dict:
    values = read_yaml(path) or {}
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a mapping of option names to values, got {type(values).__name__}")
    return values


def load_config_file(path: str | Path, parser: argparse.ArgumentParser, csv_keys=(), aliases=None) -> dict:
    """The mapping in ``path`` checked against ``parser``'s destinations; ValueError with the reason.

    ``aliases``: ``{key: (dest, convert)}`` for names recipes commonly use (``convert`` may be None)."""
    path = Path(path)
    values = _read_mapping(path)
    aliases = aliases or {}
    values = {**{k: v for k, v in values.items() if k not in aliases},
              **{aliases[k][0]: (aliases[k][1] or (lambda x: x))(v) for k, v in values.items() if k in aliases}}
    valid = [d for d in parser_dests(parser) if d != "config"]
    unknown = [k for k in values if k not in valid]
    if unknown:
        raise ValueError(f"{path}: unknown key {unknown[0]!r}; valid keys: {', '.join(valid)}")
    return {k: (_csv(v) if k in csv_keys else v) for k, v in values.items()}


def parse_with_config(parser: argparse.ArgumentParser, argv: list[str] | None, csv_keys=(),
                      aliases=None) -> argparse.Namespace:
    """``parser.parse_args(argv)`` with ``--config FILE`` (if given) applied as defaults first.

    Uses ``parse_known_args`` on a one-option pre-parser, then ``set_defaults``: both public argparse API.
    """
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv)
    if known.config:
        parser.set_defaults(**load_config_file(known.config, parser, csv_keys, aliases))
    return parser.parse_args(argv)


def explicit_dests(parser_factory, argv: list[str] | None) -> set[str]:
    """The destinations given on the command line itself (not from defaults or a config file).

    ``argv`` is parsed into a namespace that already holds a marker for every destination (argparse fills
    in a default only where the namespace has none); a destination still holding the marker was not given."""
    p = parser_factory()
    unset = object()
    ns = argparse.Namespace(**{d: unset for d in parser_dests(p)})
    return {k for k, v in vars(p.parse_args(argv, namespace=ns)).items() if v is not unset}
