# tracecap: `make run` installs and runs the daemon in personal mode; `make test` installs and runs
# the tests (system packages included, when missing and installable).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: run install install-test test-deps test bench deb clean

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "tracecap needs Python 3.11 or newer")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

install: $(BIN)/python
	$(BIN)/python -m pip install -q -e .

install-test: $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[test]'

run: install
	$(BIN)/tracecap daemon

test-deps:
	@bash packaging/install-test-deps.sh

test: test-deps install-test
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench: install-test
	$(BIN)/python -m bench.journal
	$(BIN)/python -m bench.bundle
	$(BIN)/python -m bench.review
	$(BIN)/python bench/redaction.py --quick
	$(BIN)/python -m bench.episodes --engineers 20

deb:
	bash packaging/build-deb.sh

clean:
	rm -rf $(VENV) dist build *.egg-info .pytest_cache .hypothesis
