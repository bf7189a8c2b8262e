"""docs/benchmarks.md section for bench.memory_soak (bench.report calls it)."""
from __future__ import annotations

from bench import fmt
from bench.fmt import f as _f, table as _table

LABELS = {"shipped": "service as shipped (`bentoml serve`, 1 worker)",
          "bentoml-timeout": "same, with BentoML's own request timeout (before the fix)",
          "predictor": "`Predictor` alone, one process"}


def _row(part: dict, checkpoints: list[int]) -> list:
    at = {r["requests"]: r["rss_mb"] for r in part["rows"]}
    cells = [_f(at.get(n), 1) if n in at else "not read" for n in [0, *checkpoints]]
    last = part["rows"][-1]
    growth = last["rss_mb"] - part["rows"][0]["rss_mb"]
    per = growth * 2**20 / last["requests"] if last["requests"] else None
    return [LABELS.get(part["variant"], part["variant"]), *cells, _f(growth, 1), _f(per, 0)]


GROWTH_TARGET_MB, AT_REQUESTS, SUBMISSION_TARGET = 10.0, 50_000, 0.10


def verdicts(result: dict) -> list[str]:
    """The two targets: < 10 MB growth over 50,000 requests after warm-up (service as shipped), and
    the /submission worker back within 10 % of its pre-job RSS after the job."""
    shipped = next((p for p in result["service"] if p["variant"] == "shipped"), None)
    at = {r["requests"]: r["rss_mb"] for r in shipped["rows"]} if shipped else {}
    growth = at[AT_REQUESTS] - at[0] if AT_REQUESTS in at and 0 in at else None
    sub = result.get("submission")
    back = abs(sub["after_over_before"] - 1) <= SUBMISSION_TARGET if sub else None
    return [f"Target: worker RSS grows < {GROWTH_TARGET_MB:.0f} MB over {AT_REQUESTS:,} requests after warm-up: "
            f"{fmt.met(None if growth is None else growth < GROWTH_TARGET_MB)} ({_f(growth, 1)} MB).",
            f"Target: the `/submission` worker returns within {SUBMISSION_TARGET:.0%} of its pre-job RSS: "
            f"{fmt.met(back)}" + (f" ({_f(100 * sub['after_over_before'], 0)} %)." if sub else ".")]


def _submission_lines(sub: dict) -> list[str]:
    rows = [["before the first job", "–", "–", _f(sub["rss_before_mb"], 0)]]
    rows += [[f"after job {i + 1} ({j['rows']:,} rows, {_f(j['wall_s'], 0)} s)", _f(j["peak_rss_mb"], 0),
              _f(j.get("job_peak_rss_mb"), 0) if "job_peak_rss_mb" in j else "in the worker",
              _f(j["rss_after_mb"], 0)] for i, j in enumerate(sub["jobs"])]
    return [f"The `/submission` task, twice, on a {sub['images']:,}-image archive ({_f(sub['archive_mb'], 0)} MB "
            "zip, bench.eval_scale's synthetic set), one worker. Peaks are the highest RSS sampled every 0.5 s; "
            "the job runs in a process of its own (`serving.task_runner`), counted apart from the worker:", "",
            _table(["when", "worker peak RSS MB", "job process peak RSS MB", "worker RSS MB"], rows), "",
            f"After the second job the worker is at {_f(100 * sub['after_over_before'], 0)} % of its pre-job RSS.", ""]


def section(result: dict | None) -> str:
    title = "## Memory under sustained load"
    if not result:
        return f"{title}\n\nNot measured yet: `python -m bench.memory_soak`.\n"
    parts = [*result["service"], *([result["predictor"]] if result.get("predictor") else [])]
    checkpoints = sorted({r["requests"] for p in parts for r in p["rows"]} - {0})
    monitors = [p.get("cpu_monitor") or {} for p in result.get("parts", [result])]
    loads = ", ".join(f"{m.get('loadavg_start', ['–'])[0]} → {m.get('loadavg_end', ['–'])[0]}" for m in monitors)
    lines = [
        title, "",
        f"`{result['command']}` — model `{result['model']}`; SIMD: {', '.join(fmt.flags(result)) or 'unknown'}; "
        f"load average {loads}, one pair per part (a high one: other work shared the machine; these are memory "
        "figures, not timings). "
        f"{result['threads']} loopback clients; 8 of 9 requests `/predict`, 1 of 9 `/predict_batch` with 4 "
        "images; RSS of the worker process(es) read after a warm-up round (row 0) and after each count of "
        "further requests. The Predictor row runs the same mix (decode → infer → labels) in one process.", "",
        _table(["what", *(f"RSS MB after {n:,}" for n in [0, *checkpoints]), "growth MB", "bytes / request"],
               [_row(p, checkpoints) for p in parts]), ""]
    sub = result.get("submission")
    if sub:
        lines += _submission_lines(sub)
    lines += [" ".join(verdicts(result)), ""]
    if result.get("partial"):
        lines += ["Partial run: a part was stopped before its last count; what it measured up to then is shown.", ""]
    return "\n".join(lines)
