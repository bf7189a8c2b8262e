"""The benchmark harness's logic (no timing assertions: figures belong in docs/benchmarks.md).

Checks that the baseline loop feeds the same network the same pixels as the product, that the
load generator counts answers and errors correctly against a local server, that the report turns
results into the right verdicts and marks absent parts "not measured", and that the CLIs reject
bad input with exit code 2.
"""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bench import baseline, common, loadgen, report
from maskdata.preprocess import Preprocess

REPO = Path(__file__).resolve().parents[1]


def test_float_input_net_matches_masknet_on_uint8():
    from training.models import create_model

    torch.manual_seed(0)
    net = create_model("tiny_cnn", "multi", preprocess=Preprocess(32, 24)).eval()
    x = torch.randint(0, 256, (3, 32, 24, 3), dtype=torch.uint8)
    pre = net.preprocess
    floats = (x.permute(0, 3, 1, 2).float() / 255 - torch.tensor(pre.mean).view(1, 3, 1, 1)) / torch.tensor(pre.std).view(1, 3, 1, 1)
    with torch.no_grad():
        want, got = net(x), baseline.float_input_net(net)(floats)
    assert torch.allclose(want, got, atol=1e-4), f"max diff {float((want - got).abs().max())}"
    assert net.normalize(x).shape == (3, 3, 32, 24), "the original network must keep its uint8 front end"


def test_baseline_dataset_gives_the_normalized_pixels_of_a_pil_resize(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "a.png"  # lossless, so decode differences cannot hide a transform mistake
    Image.fromarray(rng.integers(0, 256, (64, 48, 3), dtype=np.uint8)).save(path)
    pre = Preprocess(32, 24)
    ds = baseline.TestDataset([str(path)], (32, 24), pre.mean, pre.std)
    got = ds[0]
    pixels = np.asarray(Image.open(path).resize((24, 32), Image.BILINEAR), dtype=np.float32) / 255
    want = (pixels - np.array(pre.mean, dtype=np.float32)) / np.array(pre.std, dtype=np.float32)
    assert got.shape == (3, 32, 24), f"expected CHW float tensor, got {tuple(got.shape)}"
    assert np.allclose(got.numpy().transpose(1, 2, 0), want, atol=1e-5), "baseline transform differs from spec"


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers["content-length"]))
        ok = self.path == "/ok" and self.headers["content-type"].startswith("multipart/form-data; boundary=")
        body = b'{"class": 1}' if ok else b'{"error": "no"}'
        self.send_response(200 if ok else 400)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def local_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_loadgen_counts_answers_and_errors(local_server):
    # a request budget, not the clock, ends these runs, so a slow shared machine cannot change the counts
    bodies = [loadgen.multipart_body("image", "x.jpg", b"\xff\xd8 fake jpeg")]
    ok = asyncio.run(loadgen.run_load(local_server + "/ok", bodies, clients=3, duration_s=60, warmup_s=0,
                                      max_requests=20))
    assert ok.requests == 20 and ok.errors == 0, f"expected 20 successes, got {ok.summary()}"
    assert len(ok.latencies_ms) == ok.requests, "one latency per counted request"
    s = ok.summary()
    assert s["p50_ms"] <= s["p95_ms"] <= s["p99_ms"] <= s["max_ms"], f"percentiles out of order: {s}"
    bad = asyncio.run(loadgen.run_load(local_server + "/bad", bodies, clients=2, duration_s=60, warmup_s=0,
                                       max_requests=6))
    assert bad.requests == 0 and bad.errors == 6, f"6 answers of 400 must be 6 errors: {bad.summary()}"
    assert bad.error_kinds == {"HTTP 400": 6}, f"error kinds: {bad.error_kinds}"


def test_multipart_body_is_parsed_by_python_multipart():
    from python_multipart.multipart import MultipartParser, parse_options_header

    body, ctype = loadgen.multipart_body("image", "a.jpg", b"DATA\r\n--not-a-boundary")
    _, params = parse_options_header(ctype.encode())
    parts = []
    MultipartParser(params[b"boundary"], {"on_part_data": lambda d, a, b: parts.append(d[a:b])}).write(body)
    assert b"".join(parts) == b"DATA\r\n--not-a-boundary", f"payload mangled: {parts}"


def test_time_calls_counts_repeats():
    calls = []
    t = common.time_calls(lambda: calls.append(1), warmup=2, min_repeats=3, max_repeats=5, budget_s=1e9)
    assert len(calls) == 7 and t.to_dict()["repeats"] == 5, f"2 warm-up + 5 timed calls expected, got {len(calls)}"


def _results(ratio_identical=(4.0, 0.999), on_off=(60.0, 30.0)):
    machine = common.machine_info()
    base = {"machine": machine, "cpu_monitor": {"wall_s": 10, "other_cores": 0.05, "loadavg_start": [0.1],
                                                "loadavg_end": [0.2]},
            "started": "t0", "finished": "t1", "quick": False}
    stages = {"seconds": {"read": 1.0, "decode": 3.0, "infer": 1.0}, "fraction": {"read": 0.2, "decode": 0.6, "infer": 0.2}}
    job = {**base, "command": "python -m bench.batch_job", "runs": [{
        "arch": "small_cnn", "input_size": [128, 96], "images": 2100, "ratio": ratio_identical[0], "loop_ratio": 4.2,
        "identical": ratio_identical[1], "distinct_classes_predicted": 12, "accuracy": {"baseline": 0.8, "submit": 0.8},
        "baseline": {"command": "b", "img_per_s": 50.0, "loop_img_per_s": 55.0},
        "submit": {"command": "s", "img_per_s": 200.0, "loop_img_per_s": 230.0},
        "stages": {"images": 640, "baseline": stages, "submit": stages},
        "ceilings": {"infer_img_per_s": 400.0, "decode_img_per_s_all_cores": 800.0, "decode_img_per_s_1_thread": 500.0}}]}

    def level(c, rps):
        return {"clients": c, "req_per_s": rps, "p50_ms": 10.0, "p95_ms": 20.0, "p99_ms": 30.0, "max_ms": 40.0,
                "errors": 0, "error_kinds": {}, "duration_s": 5, "requests": int(rps * 5)}
    rest = {**base, "command": "python -m bench.rest", "config": {"images": 64, "warmup_s": 1, "duration_s": 5, "model": "m.onnx"},
            "modes": [{"mode": "batching_on", "status": "measured", "env": {}, "levels": [level(32, on_off[0])]},
                      {"mode": "batching_off", "status": "measured", "env": {}, "levels": [level(32, on_off[1])]}]}
    return {"batch_job": job, "rest": rest}


def test_report_verdicts_follow_the_targets(tmp_path):
    text = report.render(_results(), tmp_path)
    targets = text.split("## Targets", 1)[1].split("## Machine", 1)[0]
    assert targets.count("**met**") == 2 and "missed" not in targets, f"both targets should be met:\n{targets}"
    assert "2.00×" in targets, f"REST ratio 60/30 should read 2.00×:\n{targets}"
    assert "## 1. Model only\n\nNot measured yet" in text, "absent model-only results must say not measured"
    assert (tmp_path / "bench_latency.png").stat().st_size > 1000, "latency plot missing"
    assert (tmp_path / "bench_stages.png").stat().st_size > 1000, "stage plot missing"

    missed = report.render(_results(ratio_identical=(2.5, 0.999), on_off=(40.0, 30.0)), tmp_path)
    targets = missed.split("## Targets", 1)[1].split("## Machine", 1)[0]
    assert targets.count("**missed**") == 2, f"2.5x and 1.33x must both be reported missed:\n{targets}"


def test_report_marks_gpu_rows_not_measured(tmp_path):
    mo = {"machine": common.machine_info(), "cpu_monitor": {}, "started": "t0", "finished": "t1", "quick": True,
          "command": "python -m bench.model_only --quick", "torch_threads": 2,
          "config": {"calib_images": 8, "min_repeats": 3, "budget_s": 1.0, "cap_s": 4.0, "gpu_sizes": [[224, 224]],
                     "gpu_batches": [1, 64, 256]},
          "gpu": {"measured": False, "reason": "no CUDA device on this machine"}, "gpu_rows": [],
          "cpu_rows": [{"arch": "resnet18", "height": 128, "width": 96, "batch": b, "backend": k, "status": "measured",
                        "img_per_s": v * b, "ratio_to_eager": v / 10, "repeats": 3}
                       for b in (1, 32) for k, v in (("torch_eager", 10.0), ("ort_fp32", 20.0), ("ort_int8", 30.0))]}
    text = report.render({"model_only": mo}, tmp_path)
    assert "**Not measured** (no CUDA device on this machine)" in text, "GPU rows must be marked not measured"
    assert "| resnet18 | 128×96 | 32 | 320.0 | 640.0 (2.00×) | 960.0 (3.00×) | 3 |" in text, text
    assert (tmp_path / "bench_throughput.png").stat().st_size > 1000, "throughput plot missing"


def bench_cli(module: str, *argv: str) -> subprocess.CompletedProcess:
    """``python -m bench.<module> ARGV`` from the repository root, as a user runs it."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", f"bench.{module}", *argv], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=240)


@pytest.mark.parametrize("module", ["model_only", "batch_job", "rest", "report", "loadgen", "baseline", "eval_scale",
                                    "thread_budget", "int8_calibration", "bf16", "label_audit"])
def test_every_script_has_help(module):
    r = bench_cli(module, "--help")
    assert r.returncode == 0, f"bench.{module} --help exited {r.returncode}: {r.stderr[-500:]}"
    assert "usage:" in r.stdout, f"bench.{module} --help printed no usage"


def test_bad_input_exits_2(tmp_path, capsys):
    from bench import model_only, rest

    assert model_only.main(["--sizes", "big", "--no-report", "--out", str(tmp_path / "x.json")]) == 2
    assert "HEIGHTxWIDTH" in capsys.readouterr().err, "size error should say the expected form"
    assert model_only.main(["--archs", "nope", "--no-report", "--out", str(tmp_path / "x.json")]) == 2
    assert rest.main(["--model", str(tmp_path / "missing.onnx"), "--no-report", "--out", str(tmp_path / "r.json")]) == 2
    assert loadgen.main(["http://example.com/predict", str(tmp_path / "a.jpg")]) == 2
    assert not (tmp_path / "x.json").exists() and not (tmp_path / "r.json").exists(), "no result file on bad input"


def test_rest_side_by_side_targets_follow_the_ratios(tmp_path):
    from bench import rest_report

    def lv(label, rps, p50, errors=0):
        return {"clients": int(label.split()[0]), "label": label, "req_per_s": rps, "p50_ms": p50, "p99_ms": p50 * 3,
                "errors": errors, "error_kinds": {"HTTP 503": errors} if errors else {}, "requests": int(rps * 5)}

    def mode(name, at32, fresh=10.0, after=12.0, errors=0):
        return {"mode": name, "status": "measured", "levels": [lv("1", 50, fresh), lv("32", at32, 50),
                                                              lv("128", at32, 300, errors), lv("1 after 128", 50, after)]}
    rest = {"config": {"model": "m.onnx", "warmup_s": 1, "duration_s": 5}, "machine": {"usable_cpus": 2},
            "cpu_monitor": {"loadavg_start": [5.0], "loadavg_end": [6.0]},
            "modes": [mode("batching_on", 130.0), mode("batching_off", 120.0), mode("gallery", 100.0), mode("noop", 300.0)]}
    rows = {r[0]: r for r in rest_report.targets(rest)}
    verdicts = [r[2] for r in rows.values()]
    assert verdicts.count("**met**") == 4 and verdicts.count("**missed**") == 1, rows
    assert rows["32 clients: ≥ 50% of the no-op ceiling"][1].startswith("0.43×"), rows
    rest["modes"][0] = mode("batching_on", 130.0, after=20.0, errors=3)
    rows = {r[0]: r for r in rest_report.targets(rest)}
    assert rows["after a burst: 1-client p50 within 1.5× of fresh"][2] == "**missed**", rows
    assert rows["128 clients: 0 errors within the default queue bound"][1].startswith("3 errors"), rows
    text = rest_report.compare_section(rest, tmp_path)
    assert "| as shipped (dynamic batching) | 1 after 128 |" in text and "shared with other jobs" in text, text
    assert (tmp_path / "bench_rest_compare.png").stat().st_size > 1000, "side-by-side plot missing"


def _ceiling_row(int8_agreement: float) -> dict:
    return {"arch": "resnet18", "input_size": [128, 96], "ratio": 2.0, "identical": 0.999,
            "distinct_classes_predicted": 12, "baseline": {"img_per_s": 100.0},
            "submit": {"img_per_s": 200.0, "share_of_ceiling": 0.95},
            "submit_int8": {"img_per_s": 450.0, "share_of_ceiling": 0.92, "identical_to_fp32": int8_agreement}}


@pytest.mark.parametrize("flags, int8_counts", [(["avx2", "avx512_vnni"], True), (["avx2", "fma"], False)])
def test_int8_targets_count_only_where_the_cpu_has_vnni(flags, int8_counts):
    from bench import targets_report

    job = {"machine": {"cpu_flags": flags}, "runs": [_ceiling_row(0.995)]}
    rows = {r[0]: r for r in targets_report.batch_targets(job)}
    fastest = rows["resnet18 128×96: fastest precision keeping ≥ 99 % agreement ≥ 3× the faithful baseline"]
    int8_ceiling = rows["resnet18 128×96 INT8: ≥ 90 % of the combined ceiling"]
    if int8_counts:
        assert fastest[1].startswith("INT8: 4.50×") and fastest[2] == "**met**", f"VNNI: INT8 is the fastest: {fastest}"
        assert int8_ceiling[2] == "**met**", f"92% of the ceiling meets 90%: {int8_ceiling}"
    else:
        assert fastest[1].startswith("FP32: 2.00×") and fastest[2] == "**missed**", \
            f"without VNNI INT8 must not count toward the target: {fastest}"
        assert int8_ceiling[2].startswith("not applicable"), f"INT8 ceiling target without VNNI: {int8_ceiling}"


def test_int8_below_agreement_never_counts_as_the_fast_precision():
    from bench import targets_report

    job = {"machine": {"cpu_flags": ["avx512_vnni"]}, "runs": [_ceiling_row(0.985)]}
    rows = {r[0]: r for r in targets_report.batch_targets(job)}
    fastest = rows["resnet18 128×96: fastest precision keeping ≥ 99 % agreement ≥ 3× the faithful baseline"]
    assert fastest[1].startswith("FP32: 2.00×") and "98.50 %" in fastest[1], f"INT8 at 98.5% must not count: {fastest}"


@pytest.mark.parametrize("flags, verdict", [(["avx512_bf16"], "**met**"), (["avx2"], "not applicable")])
def test_bf16_target_is_judged_only_with_bf16_hardware(flags, verdict):
    from bench import targets_report

    row = targets_report.bf16_target({"machine": {"cpu_flags": flags}, "img_per_s": {"fp32": 250.0, "onnx_fp32": 340.0,
                                      "bf16": 800.0}, "argmax_agreement": 0.995, "ships": True})
    assert row[2].startswith(verdict), f"flags {flags}: {row}"
    assert "3.20× PyTorch FP32, 2.35× ONNX Runtime FP32" in row[1], row[1]
    slower = targets_report.bf16_target({"machine": {"cpu_flags": ["amx_bf16"]}, "img_per_s": {"bf16": 300.0},
                                         "argmax_agreement": 0.999, "ships": False})
    assert slower[2] == "**missed**", f"bf16 that does not ship must not meet the target: {slower}"


def test_scale_target_reads_linearity_and_memory():
    from bench import targets_report

    ok = targets_report.scale_target({"short": {"images": 2100, "img_per_s": 600.0, "max_rss_mb": 280.0},
                                      "full": {"images": 12600, "img_per_s": 590.0, "max_rss_mb": 290.0}})
    assert ok[2] == "**met**" and "0.98×" in ok[1], f"590 vs 600 img/s, 290 vs 280 MB is linear and flat: {ok}"
    grows = targets_report.scale_target({"short": {"images": 2100, "img_per_s": 600.0, "max_rss_mb": 280.0},
                                         "full": {"images": 12600, "img_per_s": 590.0, "max_rss_mb": 900.0}})
    assert grows[2] == "**missed**", f"memory tripling with 6x the images is not flat: {grows}"


def test_eval_scale_takes_the_first_rows(tmp_path):
    from bench import eval_scale

    info = tmp_path / "info.csv"
    info.write_text("ImageID,ans\n" + "".join(f"{i}.jpg,0\n" for i in range(10)), encoding="utf-8")
    short = eval_scale.head_csv(info, 3, tmp_path / "short.csv")
    assert short.read_text().splitlines() == ["ImageID,ans", "0.jpg,0", "1.jpg,0", "2.jpg,0"], short.read_text()
    assert eval_scale.main(["--model", str(tmp_path / "missing.onnx"), "--no-report",
                            "--out", str(tmp_path / "x.json")]) == 2, "a missing model must exit 2"


def test_peak_rss_is_the_commands_own_not_the_harness():
    """ru_maxrss of a direct child inherits the parent's RSS across exec on Linux; run_measured must not."""
    ballast = bytearray(400 << 20)            # the harness holds 400 MB more than the command ever will
    ballast[::4096] = b"\x01" * len(ballast[::4096])
    stdout, _, wall, rss = common.run_measured([sys.executable, "-c", "x = bytearray(64 << 20); print('ok')"])
    assert stdout.strip() == "ok" and wall > 0, (stdout, wall)
    assert 64 <= rss < 300, f"peak RSS {rss:.0f} MB: expected the 64 MB command plus an interpreter, not the harness"
    del ballast


def test_append_replaces_a_remeasured_row_in_place():
    from bench.batch_job import merge_rows

    def row(arch, size, tag):
        return {"arch": arch, "input_size": size, "tag": tag}

    old = [row("resnet18", [128, 96], "old"), row("plain_cnn", [128, 96], "old"), row("resnet18", [224, 224], "old")]
    new = [row("resnet18", [128, 96], "new"), row("small_cnn", [128, 96], "new")]
    got = [(r["arch"], r["input_size"][0], r["tag"]) for r in merge_rows(old, new)]
    assert got == [("resnet18", 128, "new"), ("plain_cnn", 128, "old"), ("resnet18", 224, "old"),
                   ("small_cnn", 128, "new")], got


@pytest.mark.parametrize("module, argv", [
    ("thread_budget", ["--models", "missing.onnx", "--data", "nowhere"]),
    ("int8_calibration", ["--onnx", "missing.onnx", "--calibration-dir", "a", "--check-dir", "b"]),
    ("bf16", ["--checkpoint", "missing.pt", "--check-dir", "nowhere"]),
])
def test_budget_scripts_refuse_missing_inputs_in_one_line(module, argv, tmp_path):
    r = bench_cli(module, *argv, "--out", str(tmp_path / "x.json"))
    assert r.returncode == 2, f"bench.{module}: a missing input must exit 2, got {r.returncode}: {r.stderr[-500:]}"
    err = r.stderr.strip()
    assert err.startswith("error: not found:") and "\n" not in err, f"bench.{module}: {err!r}"
    assert not (tmp_path / "x.json").exists(), f"bench.{module} wrote a result for a failed run"
