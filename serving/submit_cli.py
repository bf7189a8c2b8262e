"""``mask-submit``: the competition submission file from info.csv and an images folder.

    mask-submit --info eval/info.csv --images eval/images --out submission.csv
    mask-submit --info ... --images ... --out sub.csv --model model.onnx --labels answers.csv
    mask-submit --info ... --images ... --out sub.csv --resume        # after Ctrl-C or a crash
    mask-submit --info ... --images ... --out part0.csv --shard 0/2   # half of the rows
    mask-submit merge part0.csv part1.csv --info eval/info.csv --out submission.csv
    mask-submit --info ... --images s3://bucket/images --out sub.csv --engine ray [--ray-address HOST:6379]

The model is a BentoML store tag (default ``mask-classifier:latest``), an ``.onnx`` file, or a
``.pt`` checkpoint (PyTorch backend, imported only then). See docs/submit.md.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from maskdata import labels
from maskdata.extras import install_hint, installed
from maskdata.io import read_csv
from serving.shards import Shard, merge_parts
from serving.settings import DEFAULT_MODEL, JOB_DEFAULTS, MAX_NICE, PRECISIONS, Settings, check_nice, get_settings

log = logging.getLogger("mask-submit")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mask-submit",
        description="Predict every image of info.csv and write the submission CSV (info.csv's rows and columns, "
                    f"'ans' = class index 0..{labels.NUM_CLASSES - 1}). "
                    "Use 'mask-submit merge --help' to join --shard outputs.",
        epilog="Resume, shards, archive safety and measured speed: docs/submit.md")
    p.add_argument("--info", required=True, help="info.csv with an ImageID column (other columns are kept)")
    p.add_argument("--images", required=True,
                   help="folder holding the files named by ImageID, or an object-store prefix (s3://BUCKET/PREFIX; "
                        "endpoint and credentials from the AWS_* environment variables, AWS_ENDPOINT_URL for "
                        "S3-compatible stores; docs/submit.md)")
    p.add_argument("--out", required=True, help="submission CSV to write (atomically)")
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help="BentoML store tag, .onnx file, or .pt checkpoint (PyTorch backend); default %(default)s")
    p.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="ONNX variant to run: fp32, int8 (model.int8.onnx from mask-export --int8: the fastest on "
                        "CPU for conv nets, see docs/benchmarks.md), fp16 (GPU), bf16 (a .pt checkpoint "
                        "under CPU bf16 autocast: fast with avx512_bf16/amx_bf16), or auto (FP16 on a GPU when "
                        "exported, else FP32); default: $MASK_PRECISION or auto")
    p.add_argument("--aspect", choices=("stretch", "crop", "pad"), default=None,
                   help="override the model's recorded aspect policy, as MASK_ASPECT does for the REST service "
                        "(docs/serving.md); default: $MASK_ASPECT or as recorded")
    p.add_argument("--probs", metavar="FILE",
                   help=f"also write the {labels.NUM_CLASSES} class probabilities per row (for ensembling)")
    p.add_argument("--labels", metavar="ANSWERS_CSV",
                   help="answers CSV (ImageID,ans): print macro F1, accuracy, per-head F1 and write "
                        "OUT.confusion.png")
    p.add_argument("--batch-size", type=_positive, default=JOB_DEFAULTS.batch_size,
                   help="images per model call (default %(default)s)")
    p.add_argument("--workers", type=_positive, default=JOB_DEFAULTS.workers(),
                   help=f"parallel decode workers (default: one per CPU core, at most {JOB_DEFAULTS.max_workers}: "
                        "%(default)s)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="ONNX Runtime intra-op threads (0: one per physical core); default: $MASK_THREADS or 0. "
                        "Decode workers and these threads share the cores: docs/benchmarks.md, thread budget")
    p.add_argument("--ort-spinning", choices=["on", "off"], default=None,
                   help="let ONNX Runtime's threads spin between ops; default: $MASK_ORT_SPINNING or off "
                        "(spinning takes CPU from the decode workers)")
    p.add_argument("--decode-nice", type=int, default=None, metavar="N",
                   help=f"run the decode workers N nice steps below the model (0-{MAX_NICE}; 0: same priority) so "
                        "decoding fills the model's idle gaps instead of preempting its threads; default: "
                        f"$MASK_DECODE_NICE or {Settings.model_fields['decode_nice'].default} (Linux; elsewhere ignored)")
    p.add_argument("--worker-kind", choices=["thread", "process"], default=JOB_DEFAULTS.worker_kind,
                   help="decode in threads (PIL releases the GIL) or processes (default %(default)s)")
    p.add_argument("--on-error", choices=["fail", "skip"], default=JOB_DEFAULTS.on_error,
                   help="missing or unreadable images: fail before/at inference, or mark them -1 and list them "
                        "in OUT.errors.csv")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run from OUT.journal; the output is identical to an "
                        "uninterrupted run")
    p.add_argument("--shard", metavar="I/N",
                   help="process only shard I of N (0-based contiguous block of rows); join with 'merge'")
    p.add_argument("--engine", choices=["local", "ray"], default="local",
                   help="local: this process's decode pipeline (default); ray: Ray Data actors, in-process "
                        "or on a cluster (needs pip install 'mask-classifier[ray]'; see docs/submit.md)")
    ray = p.add_argument_group("--engine ray")
    ray.add_argument("--ray-address", metavar="ADDR", default=None,
                     help="join this Ray cluster (HOST:PORT, ray://HOST:PORT or auto); default $RAY_ADDRESS, "
                          "else Ray starts in-process on this machine")
    ray.add_argument("--num-actors", type=_positive, default=None,
                     help="model actors (map_batches concurrency); default one per CPU of the cluster")
    ray.add_argument("--cpus-per-actor", type=float, default=None,
                     help="CPUs each actor reserves (default 0.5, so read/write tasks always have room)")
    ray.add_argument("--gpus-per-actor", type=float, default=0.0,
                     help="GPUs each actor reserves; > 0 runs ONNX Runtime's CUDA provider (default 0)")
    ray.add_argument("--probs-dir", metavar="DIR",
                     help="write ImageID/ans/prob_0..prob_17 as Parquet partitions from the workers (path, or a prefix "
                          "such as s3://BUCKET/PREFIX, finished by a _SUCCESS marker)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    return p


def build_merge_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mask-submit merge",
                                description="Join --shard outputs into one submission; fails unless every "
                                            "info.csv row appears exactly once across the parts.")
    p.add_argument("parts", nargs="+", help="part CSVs written by mask-submit --shard I/N")
    p.add_argument("--info", required=True, help="the info.csv all shards were run on")
    p.add_argument("--out", required=True, help="merged submission CSV to write")
    return p


def _run_ray(args: argparse.Namespace, settings: Settings):
    from serving import ray_engine

    if args.shard:
        raise ValueError("--shard is for --engine local; Ray spreads the job itself (docs/submit.md)")
    ray_engine.require_ray()
    opts = ray_engine.RayOptions(address=args.ray_address, num_actors=args.num_actors,
                                 cpus_per_actor=args.cpus_per_actor or ray_engine.DEFAULT_CPUS_PER_ACTOR,
                                 gpus_per_actor=args.gpus_per_actor)
    return ray_engine.run_ray_submission(args.model, args.info, args.images, args.out, precision=args.precision,
                                         batch_size=args.batch_size, on_error=args.on_error,
                                         probs_csv=args.probs, probs_dir=args.probs_dir, resume=args.resume,
                                         ray_options=opts, settings=settings)


def write_class_report(result, labels_csv, out) -> Path:
    """Per-class precision/recall/F1/support + macro ROC-AUC of the scored rows, beside the submission."""
    import numpy as np

    from maskdata.report import write_report_csv

    _, rows = read_csv(labels_csv, ("ImageID", "ans"))
    truth = {r["ImageID"]: int(r["ans"]) for r in rows}
    keep = ~np.isnan(result.probs).any(axis=1)
    y = np.array([truth[i] for i, k in zip(result.image_ids, keep) if k], dtype=np.int64)
    return write_report_csv(Path(out).with_suffix(".class_report.csv"), y, result.probs[keep])


def _run(args: argparse.Namespace, settings: Settings) -> int:
    from serving.predictor import load_predictor
    from serving.local_engine import run_submission

    shard = Shard.parse(args.shard) if args.shard else None
    if args.labels:   # a bad answers file should fail now, not after the whole run
        read_csv(args.labels, ("ImageID", "ans"))
    if args.engine == "ray":
        result = _run_ray(args, settings)
        print(f"wrote {result.out_csv}: {result.summary()}")
        return _score(args, result)
    if args.probs_dir:
        raise ValueError("--probs-dir needs --engine ray; the local engine writes --probs FILE")
    if args.threads is not None and args.threads < 0:
        raise ValueError(f"--threads must be 0 (one per core) or more, got {args.threads}")
    if args.decode_nice is not None:
        check_nice(args.decode_nice, "--decode-nice")
    spinning = None if args.ort_spinning is None else args.ort_spinning == "on"
    predictor = load_predictor(args.model, args.precision, settings=settings, threads=args.threads,
                               ort_spinning=spinning, aspect=args.aspect)
    log.info("model %s (%s, %s) on %s", args.model, predictor.metadata.arch,
             "x".join(map(str, predictor.input_shape[:2])), predictor.provider)
    result = run_submission(predictor, args.info, args.images, args.out, batch_size=args.batch_size,
                            workers=args.workers, worker_kind=args.worker_kind, decode_nice=args.decode_nice,
                            on_error=args.on_error,
                            resume=args.resume, probs_csv=args.probs, shard=shard,
                            progress=not args.no_progress)
    print(f"wrote {result.out_csv}: {result.summary()}")
    return _score(args, result)


def _score(args: argparse.Namespace, result) -> int:
    from maskdata.scoring import score

    if args.labels:
        # the confusion PNG needs matplotlib (the 'train' extra); the score itself does not
        drawn = installed("matplotlib")
        png = Path(args.out).with_suffix(".confusion.png")
        s = score(result.image_ids, result.ans, args.labels, png if drawn else None)
        where = f"confusion matrix {png}" if drawn else "no confusion PNG (" + install_hint(
            "train", "drawing it", ["matplotlib"]) + ")"
        print(f"score: macro F1 {s['f1']:.4f}, accuracy {s['acc']:.4f}, F1 mask {s['f1_mask']:.4f}, "
              f"gender {s['f1_gender']:.4f}, age {s['f1_age']:.4f} (n={s['n']}, skipped={s['skipped']}); "
              f"{where}")
        log.debug("score %s", json.dumps(s))
        print(f"per-class report: {write_class_report(result, args.labels, args.out)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    merging = bool(argv) and argv[0] == "merge"
    parser = build_merge_parser() if merging else build_parser()
    args = parser.parse_args(argv[1:] if merging else argv)
    quiet = getattr(args, "quiet", False)
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        if merging:
            n = merge_parts(args.parts, args.info, args.out)
            print(f"merged {len(args.parts)} part(s) into {args.out}: {n} rows, each exactly once")
            return 0
        return _run(args, get_settings())   # this process's one read of MASK_*
    except (ValueError, OSError) as e:   # OSError: FileNotFoundError, an --out that is a folder, ...
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if Path(f"{args.out}.journal").exists():
            print(f"\ninterrupted: finished batches are kept in {args.out}.journal; rerun the same command with "
                  f"--resume to continue", file=sys.stderr)
        else:
            print(f"\ninterrupted: nothing was written to {args.out}; rerun the same command", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
