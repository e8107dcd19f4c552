# The README's commands. Every target sets up the virtual environment first, so each one works on a
# fresh clone: `make tour` (the course tour on SynthFaces) and `make test` (the whole test suite).
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.faceedu-installed
SYNTH_ROOT ?= datasets/synthfaces

.PHONY: setup tour test data clean

setup: $(STAMP)

# torch/torchvision first, with exact pins: pip takes them from this machine's disk (CPU + CUDA build).
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e ".[course,docs,dev]"
	touch $@

tour: setup
	$(VENV)/bin/faceedu tour --root $(SYNTH_ROOT) --out outputs/tour

data: setup
	$(VENV)/bin/faceedu data synth --root $(SYNTH_ROOT)

test: setup
	$(PY) -m pytest

clean:
	rm -rf $(VENV) outputs site
