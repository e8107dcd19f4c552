"""Helpers shared by the course-machinery tests (grading, notebooks, nbgrader, website).

The expensive steps (executing a lesson, generating the releases in a temporary nbgrader course,
building the website) are memoised here for the whole pytest session, so each runs once however many
test modules use it. Every step prints its duration to the terminal."""

from __future__ import annotations

import atexit
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
SCRATCH = Path(tempfile.mkdtemp(prefix="faceedu-course-tests-"))
atexit.register(shutil.rmtree, SCRATCH, ignore_errors=True)
ARTIFACTS = Path(os.environ.get("FACEEDU_TEST_ARTIFACTS", REPO / "outputs" / "test-artifacts"))

# Per-cell limit when tests execute a lesson in fast mode: a fast lesson's slowest cell takes ~5 s on
# 2 cores (generating data is done beforehand), so 300 s only trips on a real hang, not a slow machine.
CELL_TIMEOUT = 300


_CONFIG: list[Any] = []  # pytest's config, set by the `course_log` fixture


@pytest.fixture(autouse=True, scope="module")
def course_log(pytestconfig):
    """Lets say() print past pytest's output capture (import it into a test module to enable it)."""
    _CONFIG[:] = [pytestconfig]
    yield


def say(message: str) -> None:
    """Print past pytest's capture, so the durations of shared steps show in the log."""
    manager = _CONFIG[0].pluginmanager.getplugin("capturemanager") if _CONFIG else None
    if manager is None:
        print(f"\n[course] {message}", file=sys.stderr, flush=True)
        return
    with manager.global_and_fixture_disabled():
        print(f"\n[course] {message}", flush=True)


def use_data(root: Path) -> None:
    """Point every notebook kernel started from now on at `root`, in fast mode, with its temporary folders
    (a fast lesson trains into one) inside SCRATCH, which goes when the session ends."""
    os.environ["FACEEDU_DATA"] = str(root)
    os.environ["FACEEDU_FAST"] = "1"
    kernel_tmp = SCRATCH / "kernel-tmp"
    kernel_tmp.mkdir(exist_ok=True)
    os.environ["TMPDIR"] = str(kernel_tmp)   # read by the kernels; this process's tempfile.tempdir is already set


def env_with_venv() -> dict[str, str]:
    """The environment for nbgrader's CLI: it runs `alembic` from the virtualenv's bin/."""
    return os.environ | {"PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}


def lesson_slugs() -> list[str]:
    return sorted(p.name for p in (REPO / "solutions").iterdir() if (p / f"{p.name}.ipynb").is_file())


def solution_path(slug: str) -> Path:
    return REPO / "solutions" / slug / f"{slug}.ipynb"


def release_path(slug: str) -> Path:
    return REPO / "lessons" / slug / f"{slug}.ipynb"


@functools.cache
def executed_solution(slug: str) -> Path:
    """Execute the solution notebook top to bottom with nbclient (fast mode); return the executed copy.
    Raises CellExecutionError on the first error."""
    from nbclient import NotebookClient

    nb = nbformat.read(solution_path(slug), as_version=4)
    start = time.monotonic()
    NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3", allow_errors=False,
                   resources={"metadata": {"path": str(solution_path(slug).parent)}}).execute()
    out = SCRATCH / "executed" / f"{slug}.ipynb"
    out.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, out)
    say(f"executed solutions/{slug} in {time.monotonic() - start:.1f} s (fast mode)")
    return out


@functools.cache
def temp_course() -> Path:
    """A temporary nbgrader course: the repository's nbgrader_config.py and solutions/, with every lesson
    released by the real `nbgrader generate_assignment` (and recorded in the course's gradebook)."""
    root = SCRATCH / "course"
    root.mkdir()
    shutil.copy(REPO / "nbgrader_config.py", root)
    shutil.copytree(REPO / "solutions", root / "solutions")
    start = time.monotonic()
    for slug in lesson_slugs():
        nbgrader(root, "generate_assignment", slug, "--force")
    say(f"nbgrader generate_assignment for {len(lesson_slugs())} lesson(s) in {time.monotonic() - start:.1f} s")
    return root


def nbgrader(root: Path, *args: str) -> subprocess.CompletedProcess:
    """Run the real nbgrader CLI in course `root`; fail with its log if it fails."""
    done = subprocess.run([str(VENV_BIN / "nbgrader"), *args], cwd=root, env=env_with_venv(),
                          capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise AssertionError(f"nbgrader {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done


VOLATILE_NOTEBOOK_KEYS = ("widgets",)


def normalised(path: Path) -> dict[str, Any]:
    """A notebook's JSON without what legitimately changes between two generations (nothing today, but
    nbgrader versions differ in formatting): parsed, sources joined, volatile metadata dropped."""
    nb = json.loads(path.read_text())
    for key in VOLATILE_NOTEBOOK_KEYS:
        nb.get("metadata", {}).pop(key, None)
    for cell in nb["cells"]:
        if isinstance(cell.get("source"), list):
            cell["source"] = "".join(cell["source"])
        cell.get("metadata", {}).pop("execution", None)
    return nb


def setup_imports(slug: str) -> str:
    """The import lines of a lesson's first code cell: what its exercise cells may use."""
    nb = nbformat.read(solution_path(slug), as_version=4)
    first = next(c for c in nb.cells if c.cell_type == "code")
    return "\n".join(line for line in first.source.splitlines() if line.startswith(("import ", "from ")))


def exercise_functions(path: Path, slug: str) -> dict[str, Any]:
    """Execute only the exercise (solution) cells of a notebook, after its setup imports, and return the
    functions they define, by grade_id. On a released notebook these are the stubs."""
    namespace: dict[str, Any] = {}
    exec(setup_imports(slug), namespace)
    functions = {}
    for cell in nbformat.read(path, as_version=4).cells:
        meta = cell.metadata.get("nbgrader", {})
        if cell.cell_type == "code" and meta.get("solution") and not meta.get("grade"):
            exec(cell.source, namespace)
            functions[meta["grade_id"]] = namespace[meta["grade_id"]]
    return functions
