"""``--config FILE.yaml`` for the console scripts, the timm/torchvision way: the file sets the parser's
defaults, flags on the command line win.

Keys are the argparse destinations (``model: resnet18``, ``age_bins: [30, 58]``, switches such as
``no_cache`` as ``true``/``false``); an unknown key is a one-line error naming it and the valid ones.
Imports neither torch nor the rest of ``training``, so ``mask-export`` can use it too.
"""
from __future__ import annotations

import argparse
from pathlib import Path


def _csv(value) -> str:
    return ",".join(str(v) for v in value) if isinstance(value, (list, tuple)) else value


def load_config_file(path: str | Path, parser: argparse.ArgumentParser, csv_keys=(), aliases=None) -> dict:
    """The mapping in ``path`` checked against ``parser``'s destinations; ValueError with the reason.

    ``aliases``: ``{key: (dest, convert)}`` for names recipes commonly use (``convert`` may be None)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    values = values or {}
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a mapping of option names to values, got {type(values).__name__}")
    aliases = aliases or {}
    values = {**{k: v for k, v in values.items() if k not in aliases},
              **{aliases[k][0]: (aliases[k][1] or (lambda x: x))(v) for k, v in values.items() if k in aliases}}
    # argparse has no public list of a parser's options; ``_actions`` has been stable since Python 2.7
    # (tests/test_config.py pins it through the "valid keys" message)
    valid = sorted(a.dest for a in parser._actions if a.dest not in ("help", "config"))
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
    """The destinations given on the command line itself (not from defaults or a config file)."""
    p = parser_factory()
    # no public API sets every default at once; see load_config_file about ``_actions``
    for a in p._actions:
        a.default = argparse.SUPPRESS
    return set(vars(p.parse_args(argv)))
