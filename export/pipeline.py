"""The export run as named steps over an :class:`export.config.ExportConfig`.

    run_export(cfg):  load_graph -> (in one all-or-nothing temp-file scope) export_onnx -> prove_parity
                      -> calibration_report -> build_variants;  then import_to_store
    run_import(cfg):  an existing mask-export file (and its variant siblings) into the model store

Every output file is written to a temporary name and renamed into place only when the whole scope
succeeded, so a failure anywhere leaves no ``.onnx`` behind.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, replace
from pathlib import Path

from export.cam import explained_net
from export.config import VARIANT_PRECISIONS, ExportConfig
from export.graph import EnsembleNet, build_metadata, describe_members, export_onnx, load_members
from export.parity import (check_parity, labels_for, labels_from_csv, list_images, load_batch, onnx_probs,
                           onnx_session, recorded_images, sample_evenly)
from export.store import DEFAULT_NAME, import_to_store, served_name_note
from export.int8_choice import choose_int8
from export.variants import MIN_INT8_AGREEMENT, compare_variant, to_fp16
from maskdata.artifact import ModelMetadata, variant_path
from maskdata.io import atomic_path
from maskdata.metrics import ece
from training.checkpoint import model_from_checkpoint

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Graph:
    """What is exported: the members' checkpoints and models, the wrapped graph and its metadata."""

    ckpts: list[dict]
    models: list
    net: object
    meta: ModelMetadata


def parity_image_paths(cfg: ExportConfig, ckpts: list[dict]) -> list[Path]:
    if cfg.parity_images:
        return list_images(cfg.parity_images, cfg.max_images)
    images = recorded_images(ckpts, cfg.max_images)
    if not images:
        raise FileNotFoundError("no parity images: the checkpoints' recorded validation images do not exist "
                                "on this machine; pass --parity-images DIR")
    log.info("parity images: %d of the checkpoints' recorded validation images", len(images))
    return images


def load_graph(cfg: ExportConfig, ckpts: list[dict]) -> Graph:
    """The members as one ensemble graph (with TTA), with the class-activation-map output unless
    ``cfg.explain`` is off or the architecture has no GAP + linear head."""
    models = [model_from_checkpoint(c) for c in ckpts]
    meta = build_metadata(ckpts, list(cfg.checkpoints), tta=cfg.tta)
    if cfg.explain:
        net, explain = explained_net(models, cfg.tta)
    else:
        net, explain = EnsembleNet(models, cfg.tta), {"available": False, "reason": "exported with --no-explain"}
    if not explain["available"]:
        log.info("no class-activation maps: %s", explain["reason"])
    return Graph(ckpts=ckpts, models=models, net=net, meta=replace(meta, explain=explain))


def parity_labels(cfg: ExportConfig, images: list[Path]):
    """The competition's 18-class labels of ``images`` (from ``--labels`` or their folder names), or None."""
    return labels_from_csv(images, cfg.labels, cfg.parity_images) if cfg.labels else labels_for(images)


def prove_parity(cfg: ExportConfig, graph: Graph, onnx_path: Path, images: list[Path]) -> dict:
    parity = check_parity(graph.models, onnx_path, images, tta=cfg.tta, preprocess=graph.meta.preprocess,
                          atol=cfg.atol, min_agreement=cfg.min_agreement)
    print(parity.summary())
    return parity.to_dict()


def calibration_report(cfg: ExportConfig, images: list[Path], meta: ModelMetadata, onnx_path: Path) -> dict:
    """ECE of the exported (calibrated, averaged) output on the labelled parity images: each member was
    calibrated on its own validation split, so this checks the ensemble on the images given here."""
    out = dict(meta.calibration)
    y = parity_labels(cfg, images)
    if y is not None:
        probs = onnx_probs(onnx_session(onnx_path), load_batch(images, meta.preprocess))
        out.update(ece=ece(probs, y), ece_images=len(y))
        print(f"calibration: temperatures {[round(t, 4) for t in out['temperatures']]}, ECE of the exported "
              f"output on {len(y)} labelled parity images {out['ece']:.4f}")
    return out


def int8_image_sets(cfg: ExportConfig, ckpts: list[dict], parity: list[Path]) -> tuple[list[Path], list[Path] | None]:
    """(calibration images, check images or None for the parity batch), disjoint.

    Check images: ``--int8-check-images``, else the calibration folder's images of the people the
    checkpoints held out for validation (a model is surer of the images it trained on, so those
    would flatter INT8; all its other images where the checkpoints record no split), up to
    ``--int8-check-max``, so the float-layer ladder is decided on a sample large enough to tell 99 %
    from 98.8 %; else the parity images. The agreement is with FP32: no label is read."""
    folder = cfg.calibration_images or next(
        (c["data_dir"] for c in ckpts if c.get("data_dir") and Path(c["data_dir"]).is_dir()), None)
    held_out = set().union(*((c.get("split") or {}).get("val_people", []) for c in ckpts))
    calib = list(parity)
    if folder:   # calibrate on the people trained on, where there are any, so the held-out ones stay for the check
        found = list_images(folder, 0)
        calib = sample_evenly([p for p in found if p.parent.name not in held_out] or found, cfg.int8_calibration_images)
    log.info("INT8 calibration: %d images from %s", len(calib), folder or "the parity images")
    source = cfg.int8_check_images or folder
    if not source:
        return calib, None
    taken = {p.resolve() for p in calib}
    check = [p for p in list_images(source, 0) if p.resolve() not in taken
             and (cfg.int8_check_images or not held_out or p.parent.name in held_out)]
    if not cfg.int8_check_images and len(check) < len(parity):
        return calib, None        # the folder is all calibration: the parity images say more
    log.info("INT8 check: %d images from %s", min(len(check), cfg.int8_check_max), source)
    return calib, sample_evenly(check, cfg.int8_check_max)


def build_int8(cfg: ExportConfig, graph: Graph, parity: list[Path], fp32_path: Path, dst: Path, parity_set):
    """Calibrate, quantize and measure the INT8 variant (export/int8_choice.py: the format asked for, the
    float-layer rung measured); below --int8-min-agreement raise (nothing written)."""
    calib_paths, check_paths = int8_image_sets(cfg, graph.ckpts, parity)
    pre = graph.meta.preprocess
    batch, y = parity_set if check_paths is None else (load_batch(check_paths, pre), labels_for(check_paths))
    report, record = choose_int8(fp32_path, dst, load_batch(calib_paths, pre), batch, y, fmt=cfg.int8_format,
                                 method=cfg.int8_calibration, float_convs=cfg.int8_float_convs,
                                 min_agreement=cfg.int8_min_agreement or MIN_INT8_AGREEMENT)
    print(f"INT8 {record['format']} ({record['weights']}; the same answers on {record['exact_on']}), first "
          f"{record['float_convs']} of {record['convs']} convolutions float: {record['why']}")
    if report.images < 1000:
        log.warning("INT8 agreement measured on only %d images (pass --int8-check-images DIR with >= 1,000)",
                    report.images)
    if cfg.int8_min_agreement is not None and report.argmax_agreement < cfg.int8_min_agreement:
        raise ValueError(f"INT8 argmax agreement with FP32 {report.argmax_agreement:.2%} on {report.images} images "
                         f"is below --int8-min-agreement {cfg.int8_min_agreement:g}; nothing written")
    return report


def build_variants(cfg: ExportConfig, stack: contextlib.ExitStack, graph: Graph, images: list[Path],
                   fp32_path: Path) -> dict:
    """FP16 and/or INT8 next to ``cfg.out``, each compared with the FP32 file on the parity images
    (labelled with the competition's age groups, as training's validation uses, not the training bins)."""
    batch = load_batch(images, graph.meta.preprocess)
    y_true = parity_labels(cfg, images)
    variants = {}
    for precision, path in cfg.variant_paths.items():
        vtmp = stack.enter_context(atomic_path(path, suffix=".onnx.tmp"))
        if precision == "fp16":
            to_fp16(fp32_path, vtmp)
            # FP16 is for GPUs: its CPU time says nothing, so only INT8 is timed
            report = compare_variant(fp32_path, vtmp, batch, y_true, timing=False)
        else:
            report = build_int8(cfg, graph, images, fp32_path, vtmp, (batch, y_true))
        variants[precision] = report.to_dict() | {"path": str(path)}
        print(report.summary())
    return variants


def run_export(cfg: ExportConfig) -> dict:
    """Checkpoints → parity-checked ONNX (+ variants) → optionally the model store; returns the report."""
    ckpts = load_members(list(cfg.checkpoints))
    log.info("exporting %s, tta=%s", describe_members(ckpts), list(cfg.tta) or "none")
    images = parity_image_paths(cfg, ckpts)
    graph = load_graph(cfg, ckpts)
    result: dict = {"out": str(cfg.out), "members": [str(p) for p in cfg.checkpoints], "tta": list(cfg.tta)}
    with contextlib.ExitStack() as stack:  # every file renamed into place only if all of this succeeds
        tmp = stack.enter_context(atomic_path(cfg.out, suffix=".onnx.tmp"))
        export_onnx(graph.net, tmp, metadata=graph.meta, opset=cfg.opset, dynamo=cfg.exporter == "dynamo")
        result["parity"] = prove_parity(cfg, graph, tmp, images)
        result["calibration"] = calibration_report(cfg, images, graph.meta, tmp)
        if cfg.precisions:
            result["variants"] = build_variants(cfg, stack, graph, images, tmp)
    print(f"wrote {cfg.out}" + "".join(f", {p}" for p in cfg.variant_paths.values()))
    if cfg.bento_tag:
        result["bento_tag"] = import_to_store(cfg.out, cfg.bento_tag, cfg.variant_paths)
        print(f"imported into the BentoML model store as {result['bento_tag']}")
        _say_what_serves(result["bento_tag"])
    return result


def _say_what_serves(tag: str) -> None:
    note = served_name_note(tag)
    if note:
        print(note)


def run_import(cfg: ExportConfig) -> dict:
    """An existing mask-export file, with whichever variant siblings exist, into the model store."""
    path = cfg.import_onnx
    variants = {p: variant_path(path, p) for p in VARIANT_PRECISIONS if variant_path(path, p).is_file()}
    tag = import_to_store(path, cfg.bento_tag or DEFAULT_NAME, variants)
    print(f"imported {path}" + "".join(f" (+{p})" for p in variants) + f" into the BentoML model store as {tag}")
    _say_what_serves(tag)
    return {"imported": str(path), "variants": {k: str(v) for k, v in variants.items()}, "bento_tag": tag}
