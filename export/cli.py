"""``mask-export``: checkpoints → one parity-checked, self-describing ONNX file (+ FP16/INT8, model store).

    mask-export --checkpoint runs/x/best.pt --out model.onnx
    mask-export --checkpoint runs/x/fold*/best.pt --tta hflip --out model.onnx --int8 --fp16 \
                --bento-tag mask-classifier
    mask-export --import-onnx model.onnx --bento-tag mask-classifier     # store an existing export

Every output (``model.onnx``, ``model.fp16.onnx``, ``model.int8.onnx``) is written to a temporary
file first and renamed only after the whole run (export, onnx.checker, parity, variants) succeeded,
so a failure leaves no ``.onnx`` behind. See docs/export.md.

This module is the command line only: ``main`` parses (``--config FILE.yaml`` through
``maskdata.yamlconfig``), validates into an :class:`export.config.ExportConfig` and hands it to
``export.pipeline``. The console script enters through ``export/entry.py``.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys

from export.config import ExportConfig
from export.parity import DEFAULT_ATOL, DEFAULT_MAX_IMAGES, DEFAULT_MIN_AGREEMENT
from export.pipeline import run_export, run_import
from export.variants import (CALIBRATION_METHODS, DEFAULT_CALIBRATION, DEFAULT_CALIBRATION_IMAGES,
                             DEFAULT_INT8_FORMAT, INT8_FORMATS, MIN_INT8_AGREEMENT)
from maskdata.io import atomic_write_text
from maskdata.yamlconfig import parse_with_config


def build_parser() -> argparse.ArgumentParser:
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
    p.add_argument("--calibration-images", metavar="DIR",
                   help="images for INT8 calibration (default: the checkpoints' training data folder, else the "
                        "parity images)")
    p.add_argument("--int8-calibration-images", type=int, default=DEFAULT_CALIBRATION_IMAGES, metavar="N",
                   help="INT8: calibrate on N images evenly drawn from the calibration folder (default %(default)s)")
    p.add_argument("--int8-calibration", choices=CALIBRATION_METHODS, default=DEFAULT_CALIBRATION,
                   help="INT8 activation-range calibration (default %(default)s; measured in docs/benchmarks.md)")
    p.add_argument("--int8-check-images", metavar="DIR",
                   help="INT8: held-out images to measure agreement with FP32 on (at most --int8-check-max, "
                        "calibration images left out; default: the calibration folder's images of the people the "
                        "checkpoints held out, else the parity images). Use >= 1,000: on 64 images 99%% means 64 of 64")
    p.add_argument("--int8-check-max", type=int, default=2000, metavar="N",
                   help="at most this many --int8-check-images, evenly sampled (default %(default)s)")
    p.add_argument("--int8-min-agreement", type=float, default=None, metavar="X",
                   help="refuse (exit 2, nothing written) when the INT8 model's argmax agreement with FP32 on the "
                        f"check images is below X (0..1), e.g. 0.99; default: report only. Also the agreement the "
                        f"float-layer ladder aims for (default {MIN_INT8_AGREEMENT:g})")
    p.add_argument("--int8-format", choices=tuple(INT8_FORMATS), default=DEFAULT_INT8_FORMAT,
                   help="INT8 weights: portable (7-bit range: the same answers on every CPU, VNNI or AVX2-only; "
                        "default), u8u8 (uint8 weights: also the same everywhere, slower here) or vnni "
                        "(full range: exact only on CPUs with VNNI; serving warns elsewhere)")
    p.add_argument("--int8-float-convs", type=int, default=None, metavar="K",
                   help="keep the first K convolutions float (default: measured, the fewest of 0, 1, a quarter, "
                        "a half that keeps the agreement; the artifact records every rung measured)")
    p.add_argument("--bento-tag", metavar="NAME[:VERSION]",
                   help="import the result into the BentoML model store ($BENTOML_HOME), e.g. mask-classifier")
    p.add_argument("--report", metavar="FILE.json", help="also write the figures as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors on stderr")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="also the libraries' INFO logs (torch.onnx, onnxscript, onnx_ir, ONNX Runtime's "
                        "quantizer: every graph rewrite); default: this project's progress only")
    return p


PROJECT_LOGGERS = ("export", "training", "maskdata")


def configure_logging(quiet: bool, verbose: bool = False) -> None:
    """INFO for this project only, unless ``verbose``: torch.onnx/onnxscript/onnx_ir/ORT quantization log
    every rewrite at INFO, which drowns the export's own lines."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(logging.INFO if verbose else logging.WARNING)  # also when already configured
    for name in PROJECT_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING if quiet else logging.INFO)


def main(argv: list[str] | None = None) -> int:
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
    configure_logging(args.quiet, args.verbose)
    try:
        cfg = ExportConfig.from_args(args)
        result = run_import(cfg) if cfg.import_onnx else run_export(cfg)
        if cfg.report:
            atomic_write_text(cfg.report, json.dumps(result, indent=2, sort_keys=True) + "\n")
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # disk full, permissions changing under us ...: still one line
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
