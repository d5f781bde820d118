# Two commands: `make bench` runs the default benchmark suite, `make test` the harness's tests and the smoke
# suite. Each creates .venv if it is missing and installs the project into it (then byte-compiles it:
# PYTHONDONTWRITEBYTECODE may be set, and torch imports in 5 s instead of 13 s when compiled).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.xaiharness-installed
WORKERS ?= 2
SUITE ?= default
ARGS ?=

.PHONY: bench test test-harness test-smoke benchmarks report clean-reports

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	$(BIN)/python -m compileall -q -j 0 $(VENV)/lib > /dev/null || true
	touch $(STAMP)

bench: $(STAMP)
	$(BIN)/python -m pytest cases --suite $(SUITE) -n $(WORKERS) $(ARGS)

test: test-harness test-smoke

test-harness: $(STAMP)
	$(BIN)/python -m pytest tests -n $(WORKERS) $(ARGS)

test-smoke: $(STAMP)
	$(BIN)/python -m pytest cases --suite smoke -n $(WORKERS) $(ARGS)

benchmarks: $(STAMP)
	$(BIN)/python -m pytest benchmarks -p no:xdist --benchmark-only $(ARGS)

report: $(STAMP)
	$(BIN)/python -m harness report $(RUN)
