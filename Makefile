# The README's commands. Every target sets up the virtual environment first, so each one works on a
# fresh clone: `make tour` (the course tour on SynthFaces), `make lab` (open the lessons in JupyterLab) and
# `make test` (the whole test suite; only it asks for a browser, for the website test).
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.faceedu-installed
SYNTH_ROOT ?= datasets/synthfaces
CELL_TIMEOUT ?= 0

.PHONY: setup browser tour lab test data lessons docs clean

setup: $(STAMP)

# Debian's chromium, for the website test only (headless, driven by Playwright; never `playwright install`).
# `make test` calls it; nothing else does. As root it installs the one package (apt-get, no recommends and no
# upgrade of what is installed); otherwise it says how (without it the website's browser test fails, saying so).
browser:
	@if command -v chromium >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "make browser: installing Debian's chromium for the website test (apt-get install chromium)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
			--no-upgrade chromium >/dev/null || echo "make browser: could not install chromium"; \
	else echo "note: chromium is not installed; the website test needs it (as root: apt-get install chromium)"; fi

# torch/torchvision first, with exact pins: pip takes them from this machine's disk (CPU + CUDA build).
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e ".[course,docs,dev]"
	touch $@

tour: setup
	$(VENV)/bin/faceedu tour --root $(SYNTH_ROOT) --out outputs/tour

# JupyterLab on the lessons; it refuses to run as root unless told, so root gets --allow-root.
lab: setup
	$(VENV)/bin/jupyter lab lessons/ $$([ "$$(id -u)" = 0 ] && echo --allow-root)

data: setup
	$(VENV)/bin/faceedu data synth --root $(SYNTH_ROOT)

test: setup browser
	$(PY) -m pytest

# Student notebooks (lessons/) from the instructors' sources (solutions/) with nbgrader; commit both.
lessons: setup
	@for dir in solutions/*/; do \
		PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/nbgrader generate_assignment $$(basename $$dir) --force --no-db \
			--log-level=WARN || exit 1; \
	done

# The website: lesson pages from the reference runs (executed once, then reused from outputs/executed/ until
# the notebook, the faceedu modules it ran, the data or a run it reused change; progress printed), then a
# strict build into site/.
# CELL_TIMEOUT=S limits any one notebook cell to S seconds (default 0: no limit).
docs: setup
	$(PY) -m faceedu.grading.site --cell-timeout $(CELL_TIMEOUT)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

clean:
	rm -rf $(VENV) outputs site
