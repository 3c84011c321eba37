# Set-up and test entry points. Each target creates .venv when missing, installs the pinned CPU torch
# first (an unpinned torch would pull CUDA wheels), then the package; a stamp file keeps reruns quick.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TORCH_PIN := torch==2.13.0
REPORT := runs/report

.PHONY: install demo test test-browser chromium bench bench-gpu clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q $(TORCH_PIN)
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# The four papers' methods and their baselines on the offline digits (sweeps/quickstart_grid.yaml: 13
# pruning settings x 3 sparsities x 3 seeds + dense, 120 runs) in 2 worker processes, then the report:
# one figure per family, tables, plots and HTML from the store.
demo: $(STAMP)
	$(VENV)/bin/prunekit sweep sweeps/quickstart_grid.yaml --workers 2
	$(VENV)/bin/prunekit report --store runs/results.sqlite --out $(REPORT)

# The HTML report's browser test runs in `make test` whenever Chromium is installed (and skips otherwise).
test: $(STAMP)
	$(PY) -m pytest -q --durations=12 tests

# Debian's chromium for that test (about 20 s: 25 packages, 113 MB), then only the browser test, required.
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q --no-install-recommends chromium; }

test-browser: $(STAMP) chromium
	PRUNEKIT_REQUIRE_CHROMIUM=1 $(PY) -m pytest -q tests/test_report_browser.py

bench: $(STAMP)
	$(PY) -m benchmarks.run_all

# The CUDA-only checks and a ResNet-20 CIFAR-10 epoch timed five ways (eager, channels_last + bf16,
# compiled, CUDA graphs, packed), written to docs/benchmarks-gpu.md; under 8 minutes on one H100/H200.
# Needs a CUDA build of torch. Without CUDA it prints one line and exits 0.
bench-gpu: $(STAMP)
	$(PY) -m benchmarks.bench_gpu

clean:
	rm -rf $(VENV) runs .pytest_cache
