# Two commands on a fresh machine: `make demo` and `make test`.
# The virtual environment is created on first use. torch is installed only when none is importable:
# on these machines `torch==2.13.0` is a CPU wheel on local disk; an importable torch (e.g. a CUDA
# build on a GPU machine) is kept by building the venv with --system-site-packages.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.distsched-installed

.PHONY: demo test test-slow lint bench clean setup

setup: $(STAMP)

$(STAMP): pyproject.toml
	@if [ ! -x $(PY) ]; then \
	  if $(PYTHON) -c "import torch" >/dev/null 2>&1; then \
	    echo "torch found on $(PYTHON): keeping it (venv with system site-packages)"; \
	    $(PYTHON) -m venv --system-site-packages $(VENV); \
	  else \
	    $(PYTHON) -m venv $(VENV); \
	  fi; \
	fi
	@$(PY) -c "import torch" >/dev/null 2>&1 || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/distsched demo

# The layers contract (pyproject.toml [tool.importlinter]) first: a new upward import fails fast.
test: $(STAMP)
	$(VENV)/bin/lint-imports --no-logo
	$(PY) -m pytest -m "not slow" -q

test-slow: $(STAMP)
	$(PY) -m pytest -m slow -q

lint: $(STAMP)
	$(VENV)/bin/ruff check distsched tests benchmarks examples

# Every benchmark, each printing its ratios against the named peer (about 30 min on 2 cores).
# Flower pins its own Ray release, so it lives in its own environment (.venv/flower), never in .venv.
bench: $(STAMP)
	$(PY) benchmarks/schedule_overhead.py
	$(PY) benchmarks/privacy_planner.py
	$(PY) benchmarks/privacy_step_time.py
	$(PY) benchmarks/ray_train_report.py
	$(PY) benchmarks/local_sgd.py
	@test -x $(VENV)/flower/bin/python || $(PY) benchmarks/fed_vs_flower.py --setup-flower
	$(PY) benchmarks/fed_vs_flower.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
