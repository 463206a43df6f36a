# Two commands for a fresh machine: `make demo` and `make test`. Both create .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO := demo

.PHONY: venv demo test clean

$(BIN)/luna-prep: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# the pinned CPU torch first, so nothing pulls a multi-GB CUDA build
	$(BIN)/pip install --quiet -c constraints.txt torch
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(BIN)/luna-prep

venv: $(BIN)/luna-prep

demo: venv
	$(BIN)/luna-prep synth --out $(DEMO)/luna16 --scans 10 --seed 0
	$(BIN)/luna-prep build --data-root $(DEMO)/luna16 --subsets 0-9 --out $(DEMO)/patches.zarr --workers 2 --overwrite
	$(BIN)/luna-prep info $(DEMO)/patches.zarr
	$(BIN)/luna-prep preview $(DEMO)/patches.zarr --out $(DEMO)/preview.png

test: venv
	$(BIN)/pytest -q

clean:
	rm -rf $(VENV) $(DEMO)
