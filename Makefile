# The two commands a new user runs: `make demo` and `make test`.
# Both create .venv when it is missing and install meshnode into it.
# While working: `make test-fast` (the tests not marked slow, under a minute);
# `make coverage` (the whole suite under coverage.py, subprocesses included).
SHELL := /bin/bash
PYTHON ?= $(shell for p in python3.13 python3.12 python3.11 python3; do \
	command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null && { echo $$p; break; }; done)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.meshnode-installed

.PHONY: demo test test-fast coverage bench lint protos clean

$(STAMP): pyproject.toml
	@if [ -z "$(PYTHON)" ]; then echo "meshnode needs Python 3.11 or newer on PATH (python3.11, python3.12, ...)"; exit 1; fi
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@# xds-protos ships an old copy of opentelemetry/proto that overwrites opentelemetry-proto's
	@# files (grpc/grpc#42926); put the real ones back so the OTLP exporter imports.
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --force-reinstall --no-deps \
		"opentelemetry-proto==$$($(BIN)/python -c 'import importlib.metadata as m; print(m.version("opentelemetry-proto"))')"
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/meshnode demo

# the whole suite: what CI runs (.ci/run)
test: $(STAMP)
	$(BIN)/python -m pytest -q

# everything but the tests marked slow (processes, rotations under load, the benchmark)
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

# line coverage of the whole suite, the processes it starts included ([tool.coverage] in
# pyproject.toml); then the library's figure: meshnode/ without the benchmark, demo and CLI
LIBRARY_OMIT := meshnode/bench/*,meshnode/demo/*,meshnode/cli/*
LIBRARY_TARGET := 93
coverage: $(STAMP)
	@rm -f .coverage .coverage.*
	@status=0; $(BIN)/python -m coverage run -m pytest -q || status=$$?; \
	$(BIN)/python -m coverage combine -q || exit 1; \
	$(BIN)/python -m coverage report; \
	echo "library (meshnode/ without bench, demo, cli): $$($(BIN)/python -m coverage report \
		--omit='$(LIBRARY_OMIT)' --format=total)% (target $(LIBRARY_TARGET)%)"; \
	$(BIN)/python -m coverage report --omit='$(LIBRARY_OMIT)' --fail-under=$(LIBRARY_TARGET) >/dev/null \
		|| { echo "library coverage is below $(LIBRARY_TARGET)%"; status=2; }; \
	exit $$status

bench: $(STAMP)
	$(BIN)/meshnode bench

lint: $(STAMP)
	$(BIN)/ruff check meshnode tests
	$(BIN)/mypy meshnode

# Regenerate protobuf code with the grpcio-tools that matches the lowest
# grpcio we support (see pyproject.toml); the result is committed.
protos:
	@test -x .venv-protoc/bin/python || $(PYTHON) -m venv .venv-protoc
	.venv-protoc/bin/python -m pip install --quiet 'grpcio-tools==1.78.0'
	.venv-protoc/bin/python -m grpc_tools.protoc -Iprotos --python_out=. --grpc_python_out=. --pyi_out=. \
		protos/meshnode/demo/v1/demo.proto

clean:
	rm -rf $(VENV) .venv-protoc build *.egg-info .pytest_cache .mypy_cache .ruff_cache .coverage .coverage.* htmlcov
