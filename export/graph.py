"""Checkpoints → one ONNX graph: ensemble members, in-graph TTA, metadata, atomic write.

    members = load_members(["runs/x/fold0/best.pt", "runs/x/fold1/best.pt"])   # validated together
    net = EnsembleNet([model_from_checkpoint(c) for c in members], tta=("hflip",))
    export_onnx(net, "model.onnx", metadata=build_metadata(members, paths, tta=("hflip",)))

The graph takes ``image`` uint8 ``(N, H, W, 3)`` with a dynamic batch axis (the layout image
decoders produce, so no client transposes; cast and mean/std normalization happen inside each
``MaskNet``) and returns ``logits`` and ``probs``, float32 ``(N, 18)``, with
``softmax(logits) == probs``. A single model without TTA exports its own logits; an ensemble or a
TTA graph averages *probabilities* and exports ``logits = log(mean probs)``.
"""
from __future__ import annotations

import datetime as _dt
import logging
import os
import warnings
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from maskdata import labels
from maskdata.artifact import INPUT_NAME, OUTPUT_NAMES, ModelMetadata, portable_path, portable_paths
from maskdata.io import atomic_path
from maskdata.preprocess import Preprocess

log = logging.getLogger(__name__)

# Smallest probability kept before the log: float32 log(1e-30) is finite, so logits never hold -inf.
_PROB_FLOOR = 1e-30
MAX_BATCH = 65536


def flip_width(x: torch.Tensor) -> torch.Tensor:
    """Horizontal flip of a uint8 NHWC batch (width is axis 2)."""
    return torch.flip(x, dims=[2])


TTA: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"hflip": flip_width}


def parse_tta(names) -> tuple[str, ...]:
    """Validate TTA names ('hflip'); returns them as a tuple without duplicates, in order."""
    out: list[str] = []
    for name in names or ():
        if name not in TTA:
            raise ValueError(f"unknown tta {name!r}; expected one of {sorted(TTA)}")
        if name not in out:
            out.append(name)
    return tuple(out)


class EnsembleNet(nn.Module):
    """``forward(uint8 NHWC) -> (logits, probs)``: mean of softmax over members × TTA views."""

    def __init__(self, models: list[nn.Module], tta: tuple[str, ...] = ()):
        super().__init__()
        if not models:
            raise ValueError("an ensemble needs at least one model")
        self.members = nn.ModuleList(models)
        self.tta = parse_tta(tta)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        views = [x] + [TTA[name](x) for name in self.tta]
        if len(self.members) == 1 and len(views) == 1:
            logits = self.members[0](x).float()
            return logits, torch.softmax(logits, dim=1)
        # views go through each member as one batch of V*N: one larger call beats V small ones on a GPU
        xs = torch.cat(views, dim=0) if len(views) > 1 else x
        probs = torch.stack([torch.softmax(m(xs).float(), dim=1) for m in self.members])  # (M, V*N, C)
        mean = probs.reshape(len(self.members) * len(views), -1, probs.shape[-1]).mean(dim=0)
        return torch.log(mean.clamp_min(_PROB_FLOOR)), mean


def load_members(paths: list[str | os.PathLike]) -> list[dict]:
    """Load and cross-check checkpoints meant for one graph (same arch, head, labels, preprocessing)."""
    from training.checkpoint import load_checkpoint

    if not paths:
        raise ValueError("no checkpoint given; pass --checkpoint CKPT [CKPT ...]")
    ckpts = [load_checkpoint(p) for p in paths]
    first, first_path = ckpts[0], paths[0]
    for ckpt, path in zip(ckpts[1:], paths[1:]):
        for key, what in (("arch", "architectures"), ("head", "head types"), ("labels", "label tables"),
                          ("age_bins", "label tables (age bins)"), ("preprocess", "preprocessing")):
            a, b = _comparable(key, first[key]), _comparable(key, ckpt[key])
            if a != b:
                raise ValueError(f"cannot ensemble checkpoints with different {what}: {first_path} has "
                                 f"{_short(first[key])}, {path} has {_short(ckpt[key])}")
    return ckpts


def _comparable(key: str, value):
    if key == "preprocess":
        return Preprocess.from_dict(value)
    if key == "age_bins":
        return tuple(int(v) for v in value)
    return value


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def mean_metrics(ckpts: list[dict]) -> dict[str, float]:
    """Mean of each numeric validation metric every member reports."""
    keys = set.intersection(*(set(c.get("metrics") or {}) for c in ckpts)) if ckpts else set()
    out = {}
    for k in sorted(keys):
        values = [c["metrics"][k] for c in ckpts]
        if all(isinstance(v, (int, float)) for v in values):
            out[k] = float(sum(values) / len(values))
    return out


def build_metadata(ckpts: list[dict], paths: list[str | os.PathLike], tta: tuple[str, ...] = (),
                   precision: str = "fp32") -> ModelMetadata:
    """The self-description stored in the ONNX file (docs/ARCHITECTURE.md)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        producer = f"mask-classifier {version('mask-classifier')}, torch {torch.__version__}"
    except PackageNotFoundError:
        producer = f"mask-classifier (not installed), torch {torch.__version__}"
    from training.loop.calibration import calibration_metadata

    first = ckpts[0]
    # a distilled / pseudo-labelled member shows its teacher and how many pseudo-labelled images it took
    sources = [{"path": portable_path(p), "metrics": dict(c.get("metrics") or {}),
                "fingerprint": str(c.get("data_fingerprint", "")), "epoch": int(c.get("epoch", 0)),
                **({"distill": portable_paths(dict(c["distill"]))} if c.get("distill") else {})}
               for c, p in zip(ckpts, paths)]
    return ModelMetadata(
        preprocess=Preprocess.from_dict(first["preprocess"]), arch=first["arch"], head=first["head"],
        labels=list(first["labels"]), age_bins=tuple(int(b) for b in first["age_bins"]), sources=sources,
        metrics=mean_metrics(ckpts), tta=tuple(tta), precision=precision, calibration=calibration_metadata(ckpts),
        exported_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        producer_version=producer)


def set_metadata(model_proto, metadata: ModelMetadata) -> None:
    """Replace the ``mask.*`` entries of an ONNX ModelProto's ``metadata_props``."""
    keep = [(p.key, p.value) for p in model_proto.metadata_props if not p.key.startswith("mask.")]
    del model_proto.metadata_props[:]
    for key, value in keep + sorted(metadata.to_props().items()):
        entry = model_proto.metadata_props.add()
        entry.key, entry.value = key, value
    model_proto.doc_string = (f"mask/gender/age classifier ({metadata.arch}, {len(metadata.sources)} model(s), "
                              f"tta={list(metadata.tta)}, {metadata.precision}); input {INPUT_NAME} uint8 "
                              f"(N,{metadata.preprocess.height},{metadata.preprocess.width},3)")


def save_checked(model_proto, path: str | os.PathLike) -> Path:
    """onnx.checker (full, with shape inference), then write atomically: no partial file on failure."""
    import onnx

    try:
        onnx.checker.check_model(model_proto, full_check=True)
    except onnx.checker.ValidationError as e:
        raise ValueError(f"exported graph fails onnx.checker: {str(e).splitlines()[0]}") from None
    with atomic_path(path, suffix=".onnx.tmp") as tmp:
        onnx.save(model_proto, str(tmp))
    return Path(path)


def export_onnx(model: nn.Module, path: str | os.PathLike, *, metadata: ModelMetadata,
                opset: int | None = None, dynamo: bool = True) -> Path:
    """Export ``model`` (uint8 NHWC → (logits, probs)) to ``path`` with a dynamic batch axis.

    ``dynamo=True`` is torch's recommended exporter (torch.export + onnxscript; default opset
    chosen by torch); ``dynamo=False`` is the legacy TorchScript exporter (opset 17 unless given).
    The file is validated with ``onnx.checker`` and written atomically.
    """
    if not isinstance(model, EnsembleNet):
        model = EnsembleNet([model])
    model = model.eval()
    pre = metadata.preprocess
    # Batch 2: torch.export specializes a size-1 dimension to a constant, which would pin the batch axis.
    example = (torch.zeros(2, pre.height, pre.width, 3, dtype=torch.uint8),)
    try:
        proto = _export_proto(model, example, opset, dynamo,
                              list(OUTPUT_NAMES) + list(getattr(model, "extra_outputs", ())))
    except Exception as e:  # torch.export/onnxscript raise many types; the CLI needs one line
        log.debug("torch.onnx.export failed", exc_info=True)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        other = "torchscript" if dynamo else "dynamo"
        raise ValueError(f"torch.onnx.export ({'dynamo' if dynamo else 'torchscript'}) failed for "
                         f"{metadata.arch}: {first} (try --exporter {other})") from None
    set_metadata(proto, metadata)
    out = save_checked(proto, path)
    log.debug("wrote %s (opset %s, %d nodes)", out, [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")],
              len(proto.graph.node))
    return out


def _export_proto(model: nn.Module, example: tuple, opset: int | None, dynamo: bool,
                  output_names: list[str]):
    import onnx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporters' deprecation/tracer chatter is not actionable here
        if dynamo:
            batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
            program = torch.onnx.export(model, example, input_names=[INPUT_NAME], output_names=output_names,
                                        opset_version=opset, dynamo=True, external_data=False,
                                        dynamic_shapes={"x": {0: batch}}, verbose=False)
            proto = program.model_proto
        else:
            import io

            buf = io.BytesIO()
            torch.onnx.export(model, example, buf, input_names=[INPUT_NAME], output_names=output_names,
                              opset_version=opset or 17, dynamo=False,
                              dynamic_axes={n: {0: "batch"} for n in (INPUT_NAME, *output_names)})
            proto = onnx.load_from_string(buf.getvalue())
    return proto


def describe_members(ckpts: list[dict]) -> str:
    first = ckpts[0]
    pre = Preprocess.from_dict(first["preprocess"])
    return (f"{len(ckpts)} x {first['arch']}/{first['head']} at {pre.height}x{pre.width}, "
            f"{labels.NUM_CLASSES} classes, age bins {tuple(first['age_bins'])}")
