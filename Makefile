# fedarches: `make demo` and `make test` set everything up from a fresh clone.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: venv demo test test-fast lint compare bench bench-unknown bench-backends bench-scpoli scarches-env privacy-eval clean

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	# torch first, pinned: its CPU build (an unpinned torch pulls GBs of CUDA wheels)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -c requirements.lock -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

# FEDARCHES_PARENT_PID (make's pid) and exec: if make dies, even by SIGKILL, the demo stops every process it started
DEMO_OUT ?= demo-output
DEMO_ARGS ?=
demo: $(STAMP)
	FEDARCHES_PARENT_PID=$$PPID exec $(PY) scripts/demo.py $(DEMO_OUT) $(DEMO_ARGS)

# the checks first (seconds): ruff (numpy docstrings on), then the import contracts in pyproject.toml
test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports --no-cache
	$(PY) -m pytest

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow and not e2e"

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports --no-cache

compare: $(STAMP)
	$(PY) scripts/compare_scvi.py

# the benchmark suite on ../shared/data: PBMC (86 min on 2 cores, measured), then CellBench (about an hour); regenerates docs/benchmarks.md and docs/benchmarks_cellbench.md
bench: $(STAMP)
	$(PY) -m pip install --quiet -c requirements.lock -e '.[dev,bench]'
	$(PY) scripts/bench.py

bench-unknown: $(STAMP)
	$(PY) scripts/bench_unknown.py

# every model backend on real data beside plain scvi-tools (6-10 min on 2 cores, 1 torch thread); regenerates docs/benchmarks_backends.md
bench-backends: $(STAMP)
	$(PY) scripts/bench_backends.py

# scPoli on PBMC beside the scArches package (when `make scarches-env` has run) and new cell types learned from labs (about 10 min on 2 cores); regenerates docs/benchmarks_scpoli.md
bench-scpoli: $(STAMP)
	$(PY) -m fedarches.bench scpoli

# the original scArches 0.6.1 for bench/original, in its own venv with the older versions it needs (requirements-scarches.lock); torch pinned on both lines so pip never swaps in a CUDA build
scarches-env:
	$(PYTHON) -m venv .venv-scarches
	.venv-scarches/bin/python -m pip install --quiet torch==2.13.0
	.venv-scarches/bin/python -m pip install --quiet -c requirements-scarches.lock scarches==0.6.1 torch==2.13.0 setuptools

privacy-eval: $(STAMP)
	$(PY) scripts/eval_privacy_utility.py
	$(PY) scripts/eval_membership.py
	$(PY) scripts/eval_membership.py --pbmc
	$(PY) scripts/privacy_doc.py

clean:
	rm -rf demo-output bench-output
