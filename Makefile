# The README's commands. Every target sets up the virtual environment first, so each one works on a
# fresh clone: `make tour` (the course tour on SynthFaces) and `make test` (the whole test suite).
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.faceedu-installed
SYNTH_ROOT ?= datasets/synthfaces

.PHONY: setup browser tour test data lessons docs clean

setup: $(STAMP) browser

# Debian's chromium, for the website test (headless, driven by Playwright; never `playwright install`).
# Learners without root can skip it: only tests/test_docs_site.py needs it, and it says so if missing.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
		echo "note: chromium is not installed; the website test needs it (apt-get install chromium)"

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

# Student notebooks (lessons/) from the instructors' sources (solutions/) with nbgrader; commit both.
lessons: setup
	@for dir in solutions/*/; do \
		PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/nbgrader generate_assignment $$(basename $$dir) --force --no-db \
			--log-level=WARN || exit 1; \
	done

# The website: lesson pages from the reference runs, then a strict build into site/.
docs: setup
	$(PY) -m faceedu.grading.site
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

clean:
	rm -rf $(VENV) outputs site
