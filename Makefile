# Quick start: `make run` (agent demo on embedded defaults), `make test` (installs and tests).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: run demo test deps install build lint typecheck pytest pytest-twins bench bench-quick wheel-check clean \
	test-pythons test-py312 test-py313 bench-codec-pythons test-faults faults-report

# System packages the tests need (etcd from Debian). Root only; skipped when present.
deps:
	bash scripts/install-system-deps.sh

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# build_ext --inplace runs with the venv's own build tools: keep them at the pinned ranges.
$(VENV)/.installed: $(BIN)/python pyproject.toml setup.py Makefile
	$(BIN)/pip install -q "setuptools>=77" wheel "Cython>=3.1,<3.4" "cffi>=1.17,<3"
	$(BIN)/pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

# Rebuild the compiled modules in place after editing pyx/ or csrc/.
build: install
	$(BIN)/python setup.py -q build_ext --inplace

lint: install
	$(BIN)/ruff check src tests benches setup.py
	$(BIN)/ruff format --check src tests benches setup.py

typecheck: install
	$(BIN)/mypy

# pytest exits 5 when it collected nothing: say so, and fail.
pytest: build
	$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest: no tests ran" >&2; fi; exit $$rc

# The core and VPP suites again on the stock asyncio loop with the pure-Python twins only.
pytest-twins: build
	DATASYNC_NO_EXTENSIONS=1 DATASYNC_TEST_LOOP=asyncio $(BIN)/python -m pytest -q \
	  -p no:cacheprovider $(CORE_TESTS) tests/vpp

CORE_TESTS := tests/test_resync.py tests/test_local_store.py tests/test_idx.py \
	tests/test_brief_example.py tests/test_buffer.py

test: deps build lint typecheck pytest pytest-twins

# The fault rows (docs/faults.md), slow ones included; `make faults-report` runs them and
# writes their results into docs/faults.md (FAULTS_REPORT_ARGS=--slow for the slow ones).
FAULT_TESTS := tests/faults tests/agent/test_faults_plugins.py \
	tests/agent/test_faults_agent_crash.py tests/etcd/test_etcd_failpoints.py
# ... and the fuzz tests of the value models, the codec and the frame parser, 20x longer.
FUZZ_TESTS := tests/plugins/test_models_fuzz.py tests/vpp/test_codec.py \
	tests/vpp/test_sim_bad_input.py
test-faults: build
	DATASYNC_TEST_SLOW=1 $(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS) $(FAULT_TESTS)
	DATASYNC_FUZZ_SCALE=20 $(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS) $(FUZZ_TESTS)

FAULTS_REPORT_ARGS ?=
faults-report: build
	$(BIN)/python scripts/faults_report.py $(FAULTS_REPORT_ARGS)

# The other supported CPythons (3.11 is .venv): a venv each from pyenv's interpreter
# (scripts/pyvenv.sh fails when one is missing), the extensions rebuilt in place for it,
# then the core, codec, buffer and VPP suites.
PY_TESTS = $(CORE_TESTS) tests/vpp
test-pythons: test-py312 test-py313
test-py312 test-py313: test-py%:
	@py=$$(bash scripts/pyvenv.sh $$(echo $* | sed 's/^3/3./') | tail -1) && \
	  $$py setup.py -q build_ext --inplace && \
	  $$py -c 'import sys, datasync.buffer, datasync.vpp.codec; print(sys.version.split()[0], datasync.implementation())' && \
	  $$py -m pytest $(PYTEST_ARGS) $(PY_TESTS); rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest: no tests ran" >&2; fi; exit $$rc

# The agent on its embedded defaults (store and simulator in ./.datasync, HTTP on
# 127.0.0.1:9191) with examples/config.yaml loaded; Ctrl-C stops it. `make demo`: the
# scripted fault demo, which ends by itself.
run: build
	$(BIN)/datasync agent --apply examples/config.yaml

demo: build
	$(BIN)/datasync demo

bench: build
	$(BIN)/python -m pytest benches --benchmark-only --benchmark-columns=min,median,mean,ops,rounds

# CI: each benchmark body runs once so benches keep working; no timings.
bench-quick: build
	$(BIN)/python -m pytest benches --benchmark-disable -q

# The codec benchmark on every supported Python, each against vpp-papi on that Python.
bench-codec-pythons: build
	$(BIN)/python -m pytest benches/bench_codec.py --benchmark-only $(BENCH_CODEC_ARGS)
	for v in 3.12 3.13; do py=$$(bash scripts/pyvenv.sh $$v | tail -1) && \
	  $$py setup.py -q build_ext --inplace && \
	  $$py -m pytest benches/bench_codec.py --benchmark-only $(BENCH_CODEC_ARGS) || exit 1; done
BENCH_CODEC_ARGS ?= --benchmark-columns=min,median,mean,rounds -q -p no:cacheprovider

wheel-check: install
	bash scripts/wheel-check.sh

clean:
	rm -rf build dist *.egg-info src/*.egg-info
	find src -name '*.so' -delete
	find pyx -name '*.c' -delete
