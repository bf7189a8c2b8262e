"""What one ``mask-export`` run does, as a frozen, validated value.

``ExportConfig.from_args(namespace)`` is the one place the command line (and ``--config FILE.yaml``) is
checked: every bad value is a ``ValueError``/``FileNotFoundError`` naming the flag, raised before any
minutes of work, and every output path is proven writable first. The rest of the export stage
(``export/pipeline.py``) takes an ``ExportConfig`` and never sees argparse. The defaults stay where they
are written once: the parser reads them from ``export.parity`` / ``export.variants``; this class has none.
"""
from __future__ import annotations

import argparse
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from export.graph import parse_tta
from export.parity import check_tolerances
from maskdata.artifact import variant_path

VARIANT_PRECISIONS = ("fp16", "int8")   # the extra model files --fp16/--int8 build beside model.onnx


@dataclass(frozen=True)
class ExportConfig:
    """One validated run: either export ``checkpoints`` to ``out`` or store an existing ``import_onnx``."""

    checkpoints: tuple[str, ...]
    import_onnx: Path | None
    out: Path | None
    tta: tuple[str, ...]                  # validated names, in order, no duplicates
    parity_images: str | None
    max_images: int
    atol: float
    min_agreement: float
    labels: str | None
    explain: bool
    opset: int | None
    exporter: str
    precisions: tuple[str, ...]           # the variants to build, a subset of VARIANT_PRECISIONS in that order
    calibration_images: str | None
    int8_calibration_images: int
    int8_calibration: str
    int8_check_images: str | None
    int8_check_max: int
    int8_min_agreement: float | None
    int8_format: str
    int8_float_convs: int | None
    bento_tag: str | None
    report: Path | None
    quiet: bool

    @classmethod
    def from_args(cls, a: argparse.Namespace) -> ExportConfig:
        """The parsed command line as a config; raises with the flag's name on the first bad value."""
        report = Path(a.report) if a.report else None
        if report is not None and not report.parent.is_dir():
            raise FileNotFoundError(f"--report {report}: folder {report.parent} does not exist")
        if a.import_onnx:
            if a.out:
                raise ValueError("--out is not used with --import-onnx (the file is imported as it is)")
            return cls._make(a, checkpoints=(), import_onnx=Path(a.import_onnx), out=None, tta=(),
                             precisions=(), report=report)
        cfg = cls._make(a, checkpoints=tuple(a.checkpoint), import_onnx=None, out=_required_out(a.out),
                        tta=parse_tta(a.tta), precisions=tuple(p for p in VARIANT_PRECISIONS if getattr(a, p)),
                        report=report)
        cfg._check_export()
        return cfg

    @classmethod
    def _make(cls, a: argparse.Namespace, **given) -> ExportConfig:
        same = ("parity_images", "max_images", "atol", "min_agreement", "labels", "explain", "opset", "exporter",
                "calibration_images", "int8_calibration_images", "int8_calibration", "int8_check_images",
                "int8_check_max", "int8_min_agreement", "int8_format", "int8_float_convs", "bento_tag", "quiet")
        return cls(**{name: getattr(a, name) for name in same}, **given)

    @property
    def variant_paths(self) -> dict[str, Path]:
        """precision → the variant file written next to ``out``."""
        return {p: variant_path(self.out, p) for p in self.precisions}

    def _check_export(self) -> None:
        check_tolerances(self.atol, self.min_agreement)
        if self.max_images < 1:
            raise ValueError(f"--max-images must be >= 1, got {self.max_images}")
        int8 = "int8" in self.precisions
        if self.int8_min_agreement is not None and (self.int8_min_agreement < 0 or not int8):
            raise ValueError(f"--int8-min-agreement {self.int8_min_agreement:g}: needs --int8 and a fraction >= 0 "
                             f"(1 or more: only identical answers pass)")
        if self.int8_float_convs is not None and (self.int8_float_convs < 0 or not int8):
            raise ValueError(f"--int8-float-convs {self.int8_float_convs}: needs --int8 and a count >= 0")
        if int8 and self.int8_calibration_images < 1:
            raise ValueError(f"--int8-calibration-images must be >= 1, got {self.int8_calibration_images}")
        for path in [self.out, *self.variant_paths.values()]:
            check_output(path)
        if self.labels and not Path(self.labels).is_file():
            raise FileNotFoundError(f"--labels {self.labels}: file not found")


def _required_out(out) -> Path:
    if not out:
        raise ValueError("--out MODEL.onnx is required with --checkpoint")
    return Path(out)


def check_output(path: Path, what: str = "--out") -> None:
    """Fail early, with the reason, when ``path`` cannot be written (before minutes of work)."""
    if path.suffix.lower() != ".onnx":
        raise ValueError(f"{what} {path}: expected a file name ending in .onnx")
    if path.is_dir():
        raise ValueError(f"{what} {path} is a folder; expected a file path such as {path / 'model.onnx'}")
    parent = path.parent
    if not parent.exists():
        raise FileNotFoundError(f"{what} {path}: output folder {parent} does not exist")
    if not parent.is_dir():
        raise ValueError(f"{what} {path}: {parent} is not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ValueError(f"{what} {path}: cannot write to {parent} ({e.strerror or e})") from None
