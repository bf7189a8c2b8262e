"""The ``docs/bench_*.png`` figures of docs/benchmarks.md, drawn from the result JSON files
(:mod:`bench.report` writes the text and calls these). Nothing here measures anything.
"""
from __future__ import annotations

from pathlib import Path

from maskdata.io import atomic_path

BACKEND_NAMES = {"torch_eager": "PyTorch eager", "ort_fp32": "ORT FP32", "ort_int8": "ORT INT8",
                 "torch_fp16": "PyTorch FP16", "ort_cuda_fp16": "ORT CUDA FP16",
                 "ort_tensorrt_fp16": "ORT TensorRT FP16"}


def _pyplot():
    import matplotlib  # on first use: pyplot costs seconds of start-up on a loaded machine
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path: Path) -> None:
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")


def plot_throughput(mo: dict, path: Path) -> None:
    plt = _pyplot()

    rows = [r for r in mo["cpu_rows"] if r.get("status") == "measured"]
    archs = list(dict.fromkeys(r["arch"] for r in rows))
    sizes = list(dict.fromkeys((r["height"], r["width"]) for r in rows))
    if not rows:
        return
    fig, axes = plt.subplots(len(sizes), len(archs), figsize=(3.2 * len(archs), 2.6 * len(sizes)), squeeze=False)
    for i, size in enumerate(sizes):
        for j, arch in enumerate(archs):
            ax = axes[i][j]
            for backend in ("torch_eager", "ort_fp32", "ort_int8"):
                pts = sorted((r["batch"], r["img_per_s"]) for r in rows
                             if r["arch"] == arch and (r["height"], r["width"]) == size and r["backend"] == backend)
                if pts:
                    ax.plot(*zip(*pts), marker="o", label=BACKEND_NAMES[backend])
            ax.set_xscale("log", base=2)
            batches = sorted({r["batch"] for r in rows})
            ax.set_xticks(batches, [str(b) for b in batches])
            ax.set_ylim(bottom=0)
            ax.set_title(f"{arch} {size[0]}×{size[1]}", fontsize=9)
            ax.set_xlabel("batch size", fontsize=8)
            ax.set_ylabel("img/s", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle("Model-only CPU throughput vs batch size", fontsize=11)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def plot_latency(rest: dict, path: Path) -> None:
    plt = _pyplot()

    modes = [m for m in rest["modes"] if m.get("status") == "measured"]
    if not modes:
        return
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    clients = sorted({v["clients"] for m in modes for v in m["levels"] if "after" not in v.get("label", "")})
    for k, m in enumerate(modes):
        lv = [v for v in m["levels"] if v["p50_ms"] is not None and "after" not in v.get("label", "")]
        x = [v["clients"] for v in lv]
        color = f"C{k}"
        for key, style in (("p50_ms", "-"), ("p99_ms", "--")):
            ax1.plot(x, [v[key] for v in lv], style, color=color, marker="o", label=f"{m['mode']} {key[:3]}")
        ax2.plot(x, [v["req_per_s"] for v in lv], color=color, marker="o", label=m["mode"])
    for ax, ylabel in ((ax1, "latency (ms)"), (ax2, "requests/s")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(clients, [str(c) for c in clients])
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    ax1.set_yscale("log")
    fig.suptitle("POST /predict on loopback: latency and throughput vs concurrency")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def plot_stages(job: dict, path: Path) -> None:
    plt = _pyplot()

    names = ["read", "decode", "resize", "to_tensor", "infer", "write"]
    bars = []
    for r in job["runs"]:
        for side in ("baseline", "submit"):
            st = r["stages"][side]["seconds"]
            n = r["stages"]["images"]
            bars.append((f"{r['arch']}\n{side}", [1000 * st.get(k, 0.0) / n for k in names]))
    if not bars:
        return
    fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(bars)), 3.8))
    bottoms = [0.0] * len(bars)
    for k, name in enumerate(names):
        vals = [b[1][k] for b in bars]
        ax.bar([b[0] for b in bars], vals, bottom=bottoms, label=name)
        bottoms = [x + y for x, y in zip(bottoms, vals)]
    ax.set_ylabel("ms per image (serial pass)")
    ax.set_title("Batch job: where the time goes")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
