# The README's two set-up commands: `make demo` and `make test`. Each creates .venv when needed.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO ?= runs/demo
PIP_INSTALL := $(BIN)/python -m pip install --disable-pip-version-check -c constraints.txt

.PHONY: demo test clean

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11 or newer is needed (set PYTHON=...)")'
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: setup.cfg pyproject.toml constraints.txt | $(BIN)/python
	$(PIP_INSTALL) -e .
	@touch $@

$(VENV)/.installed-test: setup.cfg pyproject.toml constraints.txt | $(BIN)/python
	$(PIP_INSTALL) -e '.[test]'
	@touch $@ $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/synthgen build --n 3000 --out $(DEMO)/synth
	$(BIN)/synthgen inspect $(DEMO)/synth
	$(BIN)/synthgen verify $(DEMO)/synth --no-progress
	@echo
	@echo "Demo outputs:"
	@echo "  synthetic set  $(DEMO)/synth  (manifest.json, HDF5 shards; format in docs/SHARD_FORMAT.md)"
	@echo "  figures        $(DEMO)/synth/inspect/count_vs_area.png, $(DEMO)/synth/inspect/contact_sheet.png"

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) runs
