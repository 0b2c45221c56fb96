# Caviar: `make test` sets up .venv and runs the checks CI runs; `make demo` runs the quick study.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch: small and fast on machines without a GPU. For CUDA, e.g.
#   make setup TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
TORCH ?= torch==2.13.0

.PHONY: setup demo test lint unit e2e bench-smoke clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# torch first, then the rest through uv's installer: about 33 s against about 110 s with pip's on
# 2 cores, the same versions (torch, installed first, satisfies the project's range); pip's where uv
# cannot run. Compiled to bytecode at install, as pip does: where Python may not write it
# (PYTHONDONTWRITEBYTECODE, as on CI's machines, or a read-only venv) every process would compile
# Ray, Optuna and the rest from source at each start (the end-to-end tests took 1.5x as long)
$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet uv && $(BIN)/uv pip install --quiet --compile-bytecode --python $(BIN)/python -e '.[test,bench]' \
	  || $(BIN)/pip install --quiet -e '.[test,bench]'
	touch $@

setup: $(VENV)/.installed

lint: setup
	$(BIN)/ruff check service trainables search_spaces tests bench
	$(BIN)/mypy

# the fast tests first (in-process API, store, search spaces, trainables: about three minutes, two
# at a time with pytest-xdist), then the few end-to-end ones that start Ray heads and servers (one at
# a time: each trains on every core)
unit: setup
	$(BIN)/pytest -q -n 2 -m "not ray and not slow and not ui"

# the UI tests drive Debian's Chromium (/usr/bin/chromium: apt-get install chromium; .ci/run installs it)
e2e: setup
	$(BIN)/pytest -q -m "ray or slow or ui" --durations=10

# lint beside the fast tests (CI's 25 minutes on 2 cores), then the end-to-end tests and the benchmarks' smoke runs
test: setup
	$(MAKE) --no-print-directory -j2 --output-sync=target lint unit
	$(MAKE) --no-print-directory e2e
	$(MAKE) --no-print-directory bench-smoke

# each benchmark in its smoke form (what each asserts: docs/benchmarks.md) but bench.refine's, bench.mo_asha's
# and bench.startup's, whose invariants e2e tests check (test_workflows_e2e, test_multi_objective_e2e,
# test_warm_driver_e2e; bench.service_overhead's smoke checks start-up < 2 s) (CI's 25 minutes);
# the store-under-load smoke runs on PostgreSQL too when CAVIAR_TEST_POSTGRES_URL is set (CI sets it)
bench-smoke: setup
	$(BIN)/python -m bench.trainable_throughput --smoke
	$(BIN)/python -m bench.gpu_packing --smoke
	$(BIN)/python -m bench.search_efficiency --smoke
	$(BIN)/python -m bench.service_overhead --smoke
	$(BIN)/python -m bench.sampler_store_cost --smoke
	$(BIN)/python -m bench.tpe_history --smoke
	$(BIN)/python -m bench.api_load --smoke
	$(BIN)/python -m bench.store_load --smoke
	if [ -n "$$CAVIAR_TEST_POSTGRES_URL" ]; then $(BIN)/python -m bench.store_load --smoke --database-url "$$CAVIAR_TEST_POSTGRES_URL"; fi
	$(BIN)/python -m bench.ui_load --smoke
	$(BIN)/python -m bench.control_plane --smoke $${CAVIAR_TEST_POSTGRES_URL:+--database-url "$$CAVIAR_TEST_POSTGRES_URL"}

demo: setup
	bash examples/quickstart.sh

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
