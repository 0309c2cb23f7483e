# mdmflow: `make run` starts everything, `make test` checks everything (offline),
# `make check` is the fast inner loop (no real Temporal dev server).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test check e2e browser lint typecheck unit bench chaos clean

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q -r requirements.lock
	$(BIN)/pip install --disable-pip-version-check -q --no-deps -e .
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/mdmflow up

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest

test: lint typecheck browser unit

# The Web UI codec test drives Debian's chromium; without it that one test skips.
browser:
	@command -v chromium >/dev/null 2>&1 || apt-get install -y -q chromium >/dev/null 2>&1 \
		|| echo "chromium not installed (apt-get install chromium): the browser test skips"

# Test tiers (markers set in tests/conftest.py): unit, workflow, e2e, chaos, postgres.
# The fast tier leaves the PostgreSQL variants to `make test` and runs side by side.
check: lint typecheck
	$(BIN)/python -m tests.fast_tier

e2e: $(STAMP)
	$(BIN)/pytest -m "e2e or chaos"

bench: $(STAMP)
	$(BIN)/python bench/run.py

chaos: $(STAMP)
	$(BIN)/python -m bench.chaos

clean:
	rm -rf $(VENV) var .mypy_cache .pytest_cache .ruff_cache
