"""GPU checks, skipped without CUDA; the same functions ``make gpu-check`` runs
(bench/gpu_check.py) so the lent GPU machine, which has no pytest, runs exactly these."""
from __future__ import annotations

import pytest

from bench import gpu_check

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return gpu_check.Workdir(tmp_path_factory.mktemp("gpu"))


@pytest.mark.parametrize("name", sorted(gpu_check.CHECKS))
def test_gpu_check(name, workdir):
    try:
        result = gpu_check.CHECKS[name](workdir)
    except gpu_check.Skip as e:
        pytest.skip(str(e))
    assert isinstance(result, dict), result


def test_gpu_check_skips_cleanly_without_cuda(tmp_path, monkeypatch):
    """Here (no CUDA): every check skips with a reason, no bench row claims a figure, one JSON is written."""
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the checks run instead")
    monkeypatch.setenv("OUT", str(tmp_path))
    monkeypatch.setattr(gpu_check, "BENCH_ITERS", 1)
    assert gpu_check.main() == 0
    import json

    result = json.loads((tmp_path / "gpu_check.json").read_text())
    assert {c["status"] for c in result["checks"].values()} == {"skip"}, result["checks"]
    assert all(c["reason"] for c in result["checks"].values()), result["checks"]
    assert result["bench"] and not any(r["measured"] or "img_s" in r for r in result["bench"]), result["bench"]


def test_gpu_check_needs_neither_bentoml_nor_pytest():
    """The lent GPU machine has neither: import everything the checks use with both blocked."""
    import subprocess
    import sys

    code = ("import sys\n"
            "class Block:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] in ('bentoml', 'pytest'):\n"
            "            raise ImportError('blocked ' + name)\n"
            "sys.meta_path.insert(0, Block())\n"
            "import bench.gpu_check, serving.torch_backend, export.parity, export.variants, export.cli, training.cli\n"
            "import maskdata.synth\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
