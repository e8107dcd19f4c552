"""The README's make targets do what they say (dry runs: `make -n`): the tour and JupyterLab never install
a browser, only `make test` asks for one, `make lab` works as root, `make docs` passes CELL_TIMEOUT on."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def dry_run(*args: str) -> str:
    done = subprocess.run(["make", "-n", "-C", str(REPO), *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_tour_and_lab_never_install_a_browser():
    for target in ("tour", "lab", "setup", "docs"):
        commands = dry_run(target)
        assert "apt-get" not in commands and "chromium" not in commands, target


def test_only_make_test_asks_for_the_browser_and_says_so():
    commands = dry_run("test")
    assert "apt-get install" in commands and "for the website test" in commands
    assert "--no-upgrade" in commands and "pytest" in commands


def test_lab_allows_root_and_docs_takes_a_cell_limit():
    assert '--allow-root' in dry_run("lab") and "jupyter lab lessons/" in dry_run("lab")
    assert "faceedu.grading.site --cell-timeout 0" in dry_run("docs")                  # default: no limit
    assert "faceedu.grading.site --cell-timeout 1800" in dry_run("docs", "CELL_TIMEOUT=1800")
