# Two commands on a fresh machine: `make run` and `make test` (see README.md).
PYTHON ?= python3
VENV ?= .venv
CONFIG ?= conf/gateway.example.toml
BIN := $(VENV)/bin

.PHONY: run test lint migrate bench clean

# (Re)install when pyproject.toml changes; creates the virtualenv if it is missing.
$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

migrate: $(BIN)/.installed
	$(BIN)/gateway migrate -c $(CONFIG)

run: migrate
	$(BIN)/gateway run -c $(CONFIG)

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/mypy

test: lint
	$(BIN)/pytest

bench: $(BIN)/.installed
	$(BIN)/python tests/perf/queue.py --backend both
	$(BIN)/python tests/perf/sms_out.py --backend both
	$(BIN)/python tests/perf/sms_in.py --backend both
	$(BIN)/python tests/perf/email_out.py --backend both --signing both

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache .hypothesis
