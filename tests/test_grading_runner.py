"""`faceedu grade`: a clean report whatever the student's code does - raise, hang, print megabytes,
exit the kernel - and never a crash, a hang or a leftover kernel."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from coursekit import VENV_BIN, course_log, release_path, say, use_data  # course_log: autouse fixture
from faceedu.grading.runner import grade


def _notebook(path: Path, cells: list[tuple[str, str, float | None]]) -> Path:
    """cells: (grade_id or "", source, points); a cell with points is an autograded test cell."""
    nb = new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    for grade_id, source, points in cells:
        if grade_id == "essay":
            cell = new_markdown_cell(source)
            cell.metadata["nbgrader"] = {"grade": True, "solution": True, "grade_id": "essay", "points": points,
                                         "locked": False, "schema_version": 3, "task": False}
        else:
            cell = new_code_cell(source)
            if points is not None:
                cell.metadata["nbgrader"] = {"grade": True, "solution": False, "grade_id": grade_id, "points": points,
                                             "locked": True, "schema_version": 3, "task": False}
        nb.cells.append(cell)
    nbformat.write(nb, path)
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead for our purposes
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "zombie" not in status.read_text()


def test_hostile_notebook_gives_a_clean_report(tmp_path):
    path = _notebook(tmp_path / "hostile.ipynb", [
        ("", "x = 1", None),
        ("check_passes", "assert x == 1", 1),
        ("check_raises", "raise ValueError('your phi has NaN\\nsecond line')", 2),
        ("check_hangs", "while True:\n    pass", 1),
        ("check_after_hang", "assert x == 1", 1),
        ("check_floods", "for _ in range(50_000):\n    print('spam ' * 40)\nassert False, 'flooded'", 1),
        ("essay", "my answer", 2),
        ("", "import os\nos._exit(3)", None),
        ("check_after_exit", "assert x == 1", 1),
    ])
    start = time.monotonic()
    report = grade(path, timeout=120, cell_timeout=5)
    seconds = time.monotonic() - start
    say(f"hostile notebook graded in {seconds:.1f} s")
    status = {e.grade_id: (e.status, e.message) for e in report.exercises}
    assert status["check_passes"] == ("passed", "")
    assert status["check_raises"] == ("failed", "ValueError: your phi has NaN")          # first line only
    assert status["check_hangs"][0] == "failed" and status["check_hangs"][1].startswith("TimeLimit: the cell ran longer than 5 s")
    assert status["check_after_hang"][0] == "passed"                                    # grading went on
    assert status["check_floods"] == ("failed", "AssertionError: flooded")
    assert status["essay"][0] == "by hand"
    assert status["check_after_exit"][0] == "not run" and "kernel died" in status["check_after_exit"][1]
    assert "kernel died" in report.problem
    assert (report.score, report.max_score, report.manual_points) == (2, 7, 2)
    table = report.table()
    assert "autograded score: 2 / 7" in table and "graded by hand" in table   # the time is printed, not asserted


def test_total_time_limit_stops_everything(tmp_path):
    # a cell that ignores the interrupt: only the total limit can stop it, and the kernel must not survive
    path = _notebook(tmp_path / "stuck.ipynb", [
        ("check_first", "assert True", 1),
        ("", "import os, signal, time\nopen('kernel.pid', 'w').write(str(os.getpid()))\n"
             "signal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True:\n    time.sleep(0.1)", None),
        ("check_never", "assert True", 1),
    ])
    start = time.monotonic()
    report = grade(path, timeout=15, cell_timeout=5)    # without the total limit this call would never return
    say(f"stuck notebook stopped after {time.monotonic() - start:.1f} s (total limit 15 s)")
    status = {e.grade_id: e.status for e in report.exercises}
    assert status == {"check_first": "passed", "check_never": "not run"}
    assert "time limit" in report.problem
    kernel = int((tmp_path / "kernel.pid").read_text())
    for _ in range(20):
        if not _alive(kernel):
            break
        time.sleep(0.25)
    assert not _alive(kernel), "the student's kernel was left running"


def test_cli_on_the_released_lesson(synth_root, tmp_path):
    use_data(synth_root)
    out = tmp_path / "report.json"
    done = subprocess.run([str(VENV_BIN / "faceedu"), "grade", str(release_path("00_faces_as_data")),
                           "--json", str(out), "--timeout", "300", "--cell-timeout", "120"],
                          capture_output=True, text=True, timeout=400)
    assert done.returncode == 1, done.stdout + done.stderr     # nothing implemented: not a pass
    assert "autograded score: 0 / 9  (+ 2 points graded by hand)" in done.stdout
    report = json.loads(out.read_text())
    auto = [e for e in report["exercises"] if e["kind"] == "auto"]
    assert [e["name"] for e in auto] == ["parse_attributes", "face_hair_hat_mask", "phi_matrix", "preprocess"]
    assert all("not implemented yet" in e["message"] for e in auto)
    assert report["problem"] == ""


def test_missing_notebook_is_a_clear_error(tmp_path):
    done = subprocess.run([sys.executable, "-m", "faceedu.grading.runner", str(tmp_path / "nope.ipynb")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "no such notebook" in done.stderr
