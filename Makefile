# Two commands matter: `make serve` and `make test`. Each creates/updates .venv itself: `make serve`
# installs only the serving runtime (`pip install -e .`: ONNX Runtime, BentoML; no torch), every other
# target the whole project with the test tools (`pip install -e '.[dev]'`). `. .venv/bin/activate`
# puts the mask-* and bentoml commands on PATH.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
SERVE_STAMP := $(VENV)/.installed-serve
DEV_STAMP   := $(VENV)/.installed-dev

.PHONY: venv test test-fast serve demo-model bench gpu-check clean docs-ui lock

$(SERVE_STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -e .
	@touch $(SERVE_STAMP)

# the dev install is a superset of the serving one, so it stamps both
$(DEV_STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $(DEV_STAMP) $(SERVE_STAMP)

venv: $(DEV_STAMP)

test: $(DEV_STAMP)
	$(BIN)/python -m pytest -q

# the inner loop (a few minutes): everything but the tests marked slow (servers, Ray, the browser,
# training beyond a few steps, subprocess-heavy tests); `make test` runs those too
test-fast: $(DEV_STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

# `make serve`: environment, then the demo model if the BentoML store has no mask-classifier (the
# shipped demo/model.onnx, checked on 350 fresh synthetic images and imported: seconds, no training),
# then `bentoml serve` on PORT with a ready-to-paste curl command once /readyz answers. Ctrl-C stops it.
PORT ?= 3000
serve: $(SERVE_STAMP)
	$(BIN)/python -m demo
	@$(BIN)/bentoml serve --port $(PORT) & pid=$$!; \
	trap 'kill $$pid 2>/dev/null; wait $$pid 2>/dev/null' INT TERM; \
	$(BIN)/python -m demo --wait-ready http://localhost:$(PORT) --server-pid $$pid || { kill $$pid; exit 1; }; \
	wait $$pid

# Rebuild the shipped demo model from scratch (synthetic data -> the default training recipe -> export ->
# the same check), replace demo/model.onnx + demo/model.json and store it: minutes on 2 CPUs.
demo-model: $(DEV_STAMP)
	$(BIN)/python -m demo --rebuild

# Throughput/latency harness (minutes; results in bench/results/, rendered into docs/benchmarks.md).
# The batch and REST parts run the default recipe's model, trained once into $(BENCH_RUN).
BENCH_RUN ?= runs/default
$(BENCH_RUN)/best.pt: | $(DEV_STAMP)
	$(BIN)/mask-data synth --out data/synth300 --people 300 --eval-people 0 --seed 0 --overwrite
	$(BIN)/mask-train --data-dir data/synth300/train --out $(BENCH_RUN) --no-progress

bench: $(DEV_STAMP) $(BENCH_RUN)/best.pt
	$(BIN)/python -m bench.model_only
	$(BIN)/python -m bench.batch_job --checkpoint $(BENCH_RUN)/best.pt
	$(BIN)/python -m bench.rest
	$(BIN)/python -m bench.ray_job

# GPU tests + GPU bench rows in one run -> $${OUT:-bench/results}/gpu_check.json. Uses the system
# python3 on purpose (no venv target, installs nothing): the lent GPU machines have torch but no
# registry, no bentoml and no pytest. Checks skip with their reason where CUDA is absent.
gpu-check:
	python3 -m bench.gpu_check

# serving/requirements.txt -> serving/requirements.lock.txt: every package the image and the bento
# install, pinned with its hashes, for every Python >= 3.11 and platform at once (uv's universal
# resolution; the CUDA base's Python 3.12 and Debian's 3.11 read the same file). Needs the package
# index; uv trusts the system's CA store here (--native-tls), as pip does.
lock: $(DEV_STAMP)
	$(BIN)/uv pip compile --quiet --universal --generate-hashes --python-version 3.11 --native-tls \
	    --index-url https://pypi.org/simple --custom-compile-command "make lock" \
	    -o serving/requirements.lock.txt serving/requirements.txt

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info

# Regenerate docs/ui.png (the README's screenshot) with the browser test serving the shipped demo model
# (demo/model.onnx, what `make serve` serves); needs chromium + chromium-driver.
docs-ui: $(DEV_STAMP)
	MASK_UI_SCREENSHOT=$(CURDIR)/docs/ui.png $(BIN)/python -m pytest -q tests/test_ui_browser.py
