# Two commands for a fresh machine: `make demo` and `make test`. Both create .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO := demo
# make demo: easy synthetic scans, where the CPU recipe's targets are set (docs/training.md);
# make demo-luna: the same commands on the chest phantom (docs/synthetic.md), much harder
DIFFICULTY := easy
MASKS := sphere

.PHONY: venv demo demo-luna test clean

$(BIN)/luna-prep: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# the pinned CPU torch first, so nothing pulls a multi-GB CUDA build
	$(BIN)/pip install --quiet -c constraints.txt torch
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(BIN)/luna-prep

venv: $(BIN)/luna-prep

demo: venv
	rm -rf $(DEMO)
	$(BIN)/luna-prep synth --out $(DEMO)/luna16 --scans 50 --seed 0 --difficulty $(DIFFICULTY)
	$(BIN)/luna-prep build --data-root $(DEMO)/luna16 --subsets 0-9 --out $(DEMO)/patches.zarr --volumes \
		--masks $(MASKS) --workers 2 --quiet --manifests-dir $(DEMO)/manifests
	$(BIN)/luna-prep info $(DEMO)/patches.zarr
	$(BIN)/luna-prep preview $(DEMO)/patches.zarr --out $(DEMO)/preview.png
	$(BIN)/luna-train run --config configs/demo.yaml --dataset $(DEMO)/patches.zarr --out $(DEMO)/run \
		--set logging.progress=false
	$(BIN)/luna-train evaluate $(DEMO)/run --subsets 6,8,9 --postprocess --json $(DEMO)/evaluate.json
	$(BIN)/luna-train detect $(DEMO)/run --subsets 6,8,9 --overlap 0.25 --out $(DEMO)/submission.csv --plots $(DEMO)/detections \
		--annotations $(DEMO)/luna16/annotations.csv
	$(BIN)/luna-train froc $(DEMO)/submission.csv --annotations $(DEMO)/luna16/annotations.csv \
		--seriesuids $(DEMO)/submission_seriesuids.csv --json $(DEMO)/froc.json --plot $(DEMO)/froc.png
	@$(BIN)/python -c "import json; s=json.load(open('$(DEMO)/run/summary.json')); f=json.load(open('$(DEMO)/froc.json')); \
		e=json.load(open('$(DEMO)/evaluate.json')); \
		print(f\"demo: val Dice {s['val_dice']:.3f}, test Dice {s['test_dice']:.3f} raw ({e['postprocessed']['dice']:.3f} \" \
		      f\"post-processed), CPM on the test scans {f['cpm']:.3f}; see $(DEMO)/\")"

demo-luna:
	$(MAKE) demo DEMO=demo-luna DIFFICULTY=luna MASKS=labels

test: venv
	$(BIN)/pytest -q

clean:
	rm -rf $(VENV) $(DEMO) demo-luna
