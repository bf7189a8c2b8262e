"""The optional extras of the package, and the one-line refusal of a command whose extra is missing.

``pip install mask-classifier`` (the base) is the serving and submission runtime: ``bentoml serve``,
``mask-submit``, ``mask-data``. Everything else comes with an extra (pyproject.toml's
``[project.optional-dependencies]``, whose names these are). A command started without its extra
stops before it imports anything of it, with one line that names the extra::

    error: mask-train needs the 'train' extra (torch is not installed): pip install 'mask-classifier[train]'

Standard library only: this module runs where nothing optional is installed.
"""
from __future__ import annotations

import importlib.util
import sys

# extra -> the modules it brings that the project imports (import names, not distribution names)
_TRAIN = ("torch", "torchvision", "timm", "onnx", "onnxscript", "tensorboard", "matplotlib", "yaml")
EXTRAS: dict[str, tuple[str, ...]] = {
    "train": _TRAIN,
    "tune": (*_TRAIN, "optuna"),    # a study trains runs and plots them
    "audit": ("cleanlab",),
    "ray": ("ray",),
    "s3": ("pyarrow",),
}


def installed(module: str) -> bool:
    """Whether ``module`` can be imported here (found, not imported: this is cheap)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):   # a broken or half-removed install counts as missing
        return False


def missing(extra: str) -> list[str]:
    """The modules of ``extra`` that cannot be imported here."""
    return [name for name in EXTRAS[extra] if not installed(name)]


def install_hint(extra: str, what: str, gone: list[str] | None = None) -> str:
    """``"<what> needs the '<extra>' extra (...): pip install 'mask-classifier[<extra>]'"``."""
    why = f" ({', '.join(gone)} {'is' if len(gone) == 1 else 'are'} not installed)" if gone else ""
    return f"{what} needs the '{extra}' extra{why}: pip install 'mask-classifier[{extra}]'"


def require(extra: str, what: str) -> None:
    """Raise ValueError with :func:`install_hint` when any module of ``extra`` is missing."""
    gone = missing(extra)
    if gone:
        raise ValueError(install_hint(extra, what, gone))


def exit_unless_installed(extra: str, command: str) -> None:
    """For console-script entry points: print ``error: <hint>`` and exit 2 when ``extra`` is missing."""
    try:
        require(extra, command)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
