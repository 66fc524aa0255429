# The two commands a new user runs: `make demo` and `make test`.
# Both create .venv when it is missing and install meshnode into it: `demo` with
# its runtime dependencies only, `test` with the dev extras too (pytest, mypy, ...).
# While working: `make test-fast` (the tests not marked slow, under a minute);
# `make coverage` (the whole suite under coverage.py, subprocesses included).
SHELL := /bin/bash
PYTHON ?= $(shell for p in python3.13 python3.12 python3.11 python3; do \
	command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null && { echo $$p; break; }; done)
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip install --quiet --disable-pip-version-check
RUNTIME := $(VENV)/.meshnode-runtime
DEV := $(VENV)/.meshnode-dev

.PHONY: demo test test-fast coverage bench lint protos clean

$(BIN)/python:
	@if [ -z "$(PYTHON)" ]; then echo "meshnode needs Python 3.11 or newer on PATH (python3.11, python3.12, ...)"; exit 1; fi
	$(PYTHON) -m venv $(VENV)

$(RUNTIME): pyproject.toml | $(BIN)/python
	$(PIP) -e .
	@touch $(RUNTIME)

$(DEV): pyproject.toml | $(BIN)/python
	$(PIP) -e '.[dev]'
	@touch $(RUNTIME) $(DEV)

demo: $(RUNTIME)
	$(BIN)/meshnode demo
	@echo "meshnode is installed in .venv: '. .venv/bin/activate' puts meshnode (and python with it) on your PATH"

# the whole suite: what CI runs (.ci/run)
test: $(DEV)
	$(BIN)/python -m pytest -q

# everything but the tests marked slow (processes, rotations under load, the benchmark)
test-fast: $(DEV)
	$(BIN)/python -m pytest -q -m "not slow"

# line coverage of the whole suite, the processes it starts included ([tool.coverage] in
# pyproject.toml); then the library's figure: meshnode/ without the benchmark, demo and CLI, and
# without generated protobuf modules (protoc's output: its pure-Python descriptor branch never runs)
LIBRARY_OMIT := meshnode/bench/*,meshnode/demo/*,meshnode/cli/*,meshnode/*/v3/*_pb2.py
LIBRARY_TARGET := 93
coverage: $(DEV)
	@rm -f .coverage .coverage.*
	@status=0; $(BIN)/python -m coverage run -m pytest -q || status=$$?; \
	$(BIN)/python -m coverage combine -q || exit 1; \
	$(BIN)/python -m coverage report; \
	echo "library (meshnode/ without bench, demo, cli, generated protobuf): $$($(BIN)/python -m coverage report \
		--omit='$(LIBRARY_OMIT)' --format=total)% (target $(LIBRARY_TARGET)%)"; \
	$(BIN)/python -m coverage report --omit='$(LIBRARY_OMIT)' --fail-under=$(LIBRARY_TARGET) >/dev/null \
		|| { echo "library coverage is below $(LIBRARY_TARGET)%"; status=2; }; \
	exit $$status

bench: $(RUNTIME)
	$(BIN)/meshnode bench

lint: $(DEV)
	$(BIN)/ruff check meshnode tests
	$(BIN)/mypy meshnode

# Regenerate protobuf code with the grpcio-tools that matches the lowest
# grpcio we support (see pyproject.toml); the result is committed. The .proto
# files sit next to their code and ship in the wheel. demo_pb2_grpc.pyi comes
# from mypy-protobuf; meshnode/xds/v3 holds the few Envoy xDS messages the
# embedded control plane needs (see the comment in envoy.proto).
protos:
	@test -x .venv-protoc/bin/python || $(PYTHON) -m venv .venv-protoc
	.venv-protoc/bin/python -m pip install --quiet 'grpcio-tools==1.78.0' 'mypy-protobuf==5.1.0'
	.venv-protoc/bin/python -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. --pyi_out=. \
		--plugin=protoc-gen-mypy_grpc=.venv-protoc/bin/protoc-gen-mypy_grpc \
		--mypy_grpc_out=generate_concrete_servicer_stubs:. meshnode/demo/v1/demo.proto
	.venv-protoc/bin/python -m grpc_tools.protoc -I. --python_out=. --pyi_out=. meshnode/xds/v3/envoy.proto

clean:
	rm -rf $(VENV) .venv-protoc build *.egg-info .pytest_cache .mypy_cache .ruff_cache .coverage .coverage.* htmlcov
