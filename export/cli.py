"""``mask-export``: checkpoints → one parity-checked, self-describing ONNX file (+ FP16/INT8, model store).

    mask-export --checkpoint runs/x/best.pt --out model.onnx
    mask-export --checkpoint runs/x/fold*/best.pt --tta hflip --out model.onnx --int8 --fp16 \
                --bento-tag mask-classifier
    mask-export --import-onnx model.onnx --bento-tag mask-classifier     # store an existing export

Every output (``model.onnx``, ``model.fp16.onnx``, ``model.int8.onnx``) is written to a temporary
file first and renamed only after the whole run (export, onnx.checker, parity, variants) succeeded,
so a failure leaves no ``.onnx`` behind. See docs/export.md.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import tempfile
from pathlib import Path

from maskdata.io import atomic_path, atomic_write_text

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    from export.parity import DEFAULT_ATOL, DEFAULT_MAX_IMAGES, DEFAULT_MIN_AGREEMENT

    p = argparse.ArgumentParser(
        prog="mask-export", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Export mask-train checkpoints to ONNX (input 'image' uint8 NHWC, dynamic batch; outputs "
                    "'logits' and 'probs' float32 (N,18); metadata inside), prove parity with PyTorch on real "
                    "images, optionally build FP16/INT8 variants and import into the BentoML model store.",
        epilog="examples:\n"
               "  mask-export --checkpoint runs/x/best.pt --out model.onnx\n"
               "  mask-export --checkpoint runs/x/fold*/best.pt --tta hflip --out model.onnx --int8 "
               "--bento-tag mask-classifier\n"
               "  mask-export --import-onnx model.onnx --bento-tag mask-classifier")
    p.add_argument("--config", metavar="FILE.yaml",
                   help="YAML mapping of option names (argparse destinations, e.g. tta: [hflip], fp16: true) to "
                        "values; flags on the command line win")
    # not required=True: argparse would not count a --config value; main() checks that one is given
    src = p.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", nargs="+", metavar="CKPT",
                     help="checkpoint(s) from mask-train; several become one ensemble graph averaging probabilities")
    src.add_argument("--import-onnx", metavar="MODEL.onnx",
                     help="import an existing mask-export ONNX file into the model store without re-exporting "
                          "(its .fp16/.int8 siblings come along when present)")
    p.add_argument("--out", metavar="MODEL.onnx", help="output file (required with --checkpoint)")
    p.add_argument("--tta", nargs="+", default=[], metavar="NAME",
                   help="test-time augmentation averaged inside the graph: hflip")
    p.add_argument("--parity-images", metavar="DIR",
                   help="folder of real images for the parity proof (default: the checkpoints' recorded "
                        "validation images, when they exist on this machine)")
    p.add_argument("--max-images", type=int, default=DEFAULT_MAX_IMAGES,
                   help=f"at most this many parity/evaluation images, evenly sampled (default {DEFAULT_MAX_IMAGES})")
    p.add_argument("--atol", type=float, default=DEFAULT_ATOL,
                   help=f"max allowed |prob difference| PyTorch vs ONNX Runtime (default {DEFAULT_ATOL:g})")
    p.add_argument("--min-agreement", type=float, default=DEFAULT_MIN_AGREEMENT,
                   help=f"min fraction of images with the same argmax (default {DEFAULT_MIN_AGREEMENT:g})")
    p.add_argument("--labels", metavar="CSV",
                   help="answers file (ImageID,ans) for the parity images, for the variants' macro-F1 delta "
                        "(images in the training layout are labelled from their folder names without it)")
    p.add_argument("--no-explain", dest="explain", action="store_false",
                   help="leave out the class-activation-map output 'cam' (POST /explain then answers 501)")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's choice)")
    p.add_argument("--exporter", choices=("dynamo", "torchscript"), default="dynamo",
                   help="torch.onnx exporter: dynamo (torch.export, recommended) or the legacy torchscript one")
    p.add_argument("--fp16", action="store_true", help="also write MODEL.fp16.onnx (for GPUs)")
    p.add_argument("--int8", action="store_true", help="also write MODEL.int8.onnx (static quantization, CPU)")
    from export.variants import CALIBRATION_METHODS, DEFAULT_CALIBRATION, DEFAULT_CALIBRATION_IMAGES

    p.add_argument("--calibration-images", metavar="DIR",
                   help="images for INT8 calibration (default: the checkpoints' training data folder, else the "
                        "parity images)")
    p.add_argument("--int8-calibration-images", type=int, default=DEFAULT_CALIBRATION_IMAGES, metavar="N",
                   help="INT8: calibrate on N images evenly drawn from the calibration folder (default %(default)s)")
    p.add_argument("--int8-calibration", choices=CALIBRATION_METHODS, default=DEFAULT_CALIBRATION,
                   help="INT8 activation-range calibration (default %(default)s; measured in docs/benchmarks.md)")
    p.add_argument("--int8-check-images", metavar="DIR",
                   help="INT8: held-out images to measure agreement with FP32 on (at most --int8-check-max, "
                        "calibration images left out; default: the parity images). Use >= 1,000: on 64 images "
                        "99%% means 64 of 64")
    p.add_argument("--int8-check-max", type=int, default=2000, metavar="N",
                   help="at most this many --int8-check-images, evenly sampled (default %(default)s)")
    p.add_argument("--int8-min-agreement", type=float, default=None, metavar="X",
                   help="refuse (exit 2, nothing written) when the INT8 model's argmax agreement with FP32 on the "
                        "check images is below X (0..1), e.g. 0.99; default: report only")
    p.add_argument("--bento-tag", metavar="NAME[:VERSION]",
                   help="import the result into the BentoML model store ($BENTOML_HOME), e.g. mask-classifier")
    p.add_argument("--report", metavar="FILE.json", help="also write the figures as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors on stderr")
    return p


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


def parity_image_paths(args, ckpts: list[dict]) -> list[Path]:
    from export.parity import list_images, recorded_images

    if args.parity_images:
        return list_images(args.parity_images, args.max_images)
    images = recorded_images(ckpts, args.max_images)
    if not images:
        raise FileNotFoundError("no parity images: the checkpoints' recorded validation images do not exist "
                                "on this machine; pass --parity-images DIR")
    log.info("parity images: %d of the checkpoints' recorded validation images", len(images))
    return images


def calibration_report(args, images, meta, onnx_path) -> dict:
    """ECE of the exported (calibrated, averaged) output on the labelled parity images: each member was
    calibrated on its own validation split, so this checks the ensemble on the images given here."""
    from export.parity import labels_for, labels_from_csv, load_batch, onnx_probs, onnx_session
    from training.calibration import ece

    out = dict(meta.calibration)
    y = labels_from_csv(images, args.labels, args.parity_images) if args.labels else labels_for(images)
    if y is not None:
        probs = onnx_probs(onnx_session(onnx_path), load_batch(images, meta.preprocess))
        out.update(ece=ece(probs, y), ece_images=len(y))
        print(f"calibration: temperatures {[round(t, 4) for t in out['temperatures']]}, ECE of the exported "
              f"output on {len(y)} labelled parity images {out['ece']:.4f}")
    return out


def int8_image_sets(args, ckpts: list[dict], parity: list[Path]) -> tuple[list[Path], list[Path] | None]:
    """(calibration images, held-out check images or None for the parity batch), disjoint."""
    from export.parity import list_images

    n = args.int8_calibration_images
    if n < 1:
        raise ValueError(f"--int8-calibration-images must be >= 1, got {n}")
    folder = args.calibration_images or next(
        (c["data_dir"] for c in ckpts if c.get("data_dir") and Path(c["data_dir"]).is_dir()), None)
    calib = list_images(folder, n) if folder else list(parity)
    log.info("INT8 calibration: %d images from %s", len(calib), folder or "the parity images")
    if not args.int8_check_images:
        return calib, None
    taken = {p.resolve() for p in calib}
    check = [p for p in list_images(args.int8_check_images, 0) if p.resolve() not in taken]
    from export.parity import sample_evenly

    return calib, sample_evenly(check, args.int8_check_max)


def build_int8(args, ckpts, parity, meta, fp32_path, dst, parity_set):
    """Calibrate, quantize and measure the INT8 variant; below --int8-min-agreement raise (nothing written)."""
    from export.parity import labels_for, load_batch
    from export.variants import compare_variant, to_int8

    calib_paths, check_paths = int8_image_sets(args, ckpts, parity)
    to_int8(fp32_path, dst, load_batch(calib_paths, meta.preprocess), method=args.int8_calibration)
    batch, y = parity_set if check_paths is None else (load_batch(check_paths, meta.preprocess),
                                                      labels_for(check_paths))
    report = compare_variant(fp32_path, dst, batch, y, timing=True, timing_images=64)
    if report.images < 1000:
        log.warning("INT8 agreement measured on only %d images (pass --int8-check-images DIR with >= 1,000)",
                    report.images)
    if args.int8_min_agreement is not None and report.argmax_agreement < args.int8_min_agreement:
        raise ValueError(f"INT8 argmax agreement with FP32 {report.argmax_agreement:.2%} on {report.images} images "
                         f"is below --int8-min-agreement {args.int8_min_agreement:g}; nothing written")
    return report


def run_export(args) -> dict:
    from dataclasses import replace

    from export.cam import explained_net
    from export.graph import EnsembleNet, build_metadata, describe_members, export_onnx, load_members, parse_tta
    from export.parity import (check_parity, check_tolerances, labels_for, labels_from_csv, load_batch)
    from export.variants import compare_variant, to_fp16, variant_path
    from training.checkpoint import model_from_checkpoint

    if not args.out:
        raise ValueError("--out MODEL.onnx is required with --checkpoint")
    out = Path(args.out)
    tta = parse_tta(args.tta)
    check_tolerances(args.atol, args.min_agreement)
    if args.max_images < 1:
        raise ValueError(f"--max-images must be >= 1, got {args.max_images}")
    precisions = [p for p, on in (("fp16", args.fp16), ("int8", args.int8)) if on]
    if args.int8_min_agreement is not None and (args.int8_min_agreement < 0 or not args.int8):
        raise ValueError(f"--int8-min-agreement {args.int8_min_agreement:g}: needs --int8 and a fraction >= 0 "
                         f"(1 or more: only identical answers pass)")
    for path in [out] + [variant_path(out, p) for p in precisions]:
        check_output(path)
    if args.labels and not Path(args.labels).is_file():
        raise FileNotFoundError(f"--labels {args.labels}: file not found")

    ckpts = load_members(args.checkpoint)
    log.info("exporting %s, tta=%s", describe_members(ckpts), list(tta) or "none")
    images = parity_image_paths(args, ckpts)
    models = [model_from_checkpoint(c) for c in ckpts]
    meta = build_metadata(ckpts, args.checkpoint, tta=tta)
    net, explain = explained_net(models, tta) if args.explain else (EnsembleNet(models, tta), {
        "available": False, "reason": "exported with --no-explain"})
    if not explain["available"]:
        log.info("no class-activation maps: %s", explain["reason"])
    meta = replace(meta, explain=explain)
    result: dict = {"out": str(out), "members": [str(p) for p in args.checkpoint], "tta": list(tta)}

    with contextlib.ExitStack() as stack:  # every file renamed into place only if all of this succeeds
        tmp = stack.enter_context(atomic_path(out, suffix=".onnx.tmp"))
        export_onnx(net, tmp, metadata=meta, opset=args.opset,
                    dynamo=args.exporter == "dynamo")
        parity = check_parity(models, tmp, images, tta=tta, preprocess=meta.preprocess, atol=args.atol,
                              min_agreement=args.min_agreement)
        result["parity"] = parity.to_dict()
        print(parity.summary())
        result["calibration"] = calibration_report(args, images, meta, tmp)
        if precisions:
            batch = load_batch(images, meta.preprocess)
            # the competition's age groups (as training's validation uses), not the training-target bins
            y_true = (labels_from_csv(images, args.labels, args.parity_images) if args.labels
                      else labels_for(images))
            result["variants"] = {}
            for precision in precisions:
                vtmp = stack.enter_context(atomic_path(variant_path(out, precision), suffix=".onnx.tmp"))
                if precision == "fp16":
                    to_fp16(tmp, vtmp)
                    # FP16 is for GPUs: its CPU time says nothing, so only INT8 is timed
                    report = compare_variant(tmp, vtmp, batch, y_true, timing=False)
                else:
                    report = build_int8(args, ckpts, images, meta, tmp, vtmp, (batch, y_true))
                result["variants"][precision] = report.to_dict() | {"path": str(variant_path(out, precision))}
                print(report.summary())
    print(f"wrote {out}" + "".join(f", {variant_path(out, p)}" for p in precisions))
    if args.bento_tag:
        from export.store import import_to_store

        tag = import_to_store(out, args.bento_tag, {p: variant_path(out, p) for p in precisions})
        result["bento_tag"] = tag
        print(f"imported into the BentoML model store as {tag}")
    return result


def run_import(args) -> dict:
    from export.store import DEFAULT_NAME, import_to_store
    from export.variants import variant_path

    if args.out:
        raise ValueError("--out is not used with --import-onnx (the file is imported as it is)")
    path = Path(args.import_onnx)
    variants = {p: variant_path(path, p) for p in ("fp16", "int8") if variant_path(path, p).is_file()}
    tag = import_to_store(path, args.bento_tag or DEFAULT_NAME, variants)
    print(f"imported {path}" + "".join(f" (+{p})" for p in variants) + f" into the BentoML model store as {tag}")
    return {"imported": str(path), "variants": {k: str(v) for k, v in variants.items()}, "bento_tag": tag}


def main(argv: list[str] | None = None) -> int:
    from training.yamlconfig import parse_with_config

    parser = build_parser()
    try:
        args = parse_with_config(parser, argv)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not args.checkpoint and not args.import_onnx:
        parser.error("one of the arguments --checkpoint --import-onnx is required")
    if args.checkpoint and args.import_onnx:
        parser.error("argument --import-onnx: not allowed with argument --checkpoint")
    # INFO for this project only: torch.onnx/onnxscript/ORT quantization log every rewrite at INFO
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for name in ("export", "training", "maskdata", __name__):
        logging.getLogger(name).setLevel(logging.WARNING if args.quiet else logging.INFO)
    try:
        if args.report:
            check_report = Path(args.report)
            if not check_report.parent.is_dir():
                raise FileNotFoundError(f"--report {check_report}: folder {check_report.parent} does not exist")
        result = run_import(args) if args.import_onnx else run_export(args)
        if args.report:
            atomic_write_text(args.report, json.dumps(result, indent=2, sort_keys=True) + "\n")
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # disk full, permissions changing under us ...: still one line
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
