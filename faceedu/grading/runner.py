"""`faceedu grade NOTEBOOK`: run a lesson notebook the way the autograder does and report each exercise.

The notebook runs in a separate worker process (which starts its own Jupyter kernel) under a total time
limit; each cell also has its own limit, after which the kernel is interrupted and grading goes on with
the next cell. The worker streams one JSON line per executed cell to a file, so whatever happens to the
student's code - an exception, an endless loop, megabytes of output, a kernel that exits - the parent
still reads back everything that did run and prints a clean report. Exercises are the cells nbgrader
grades (``"grade": true`` in their nbgrader metadata).

It scores as ``nbgrader autograde`` does (tests/test_grading_autograde_match.py compares the two):

* the graded cells come from the lesson's source, ``solutions/<lesson>/<lesson>.ipynb``, as nbgrader
  restores them from its gradebook - a test cell that was edited gets its source back (hidden tests
  included), changed points or lock flags are put back, a deleted test cell is added back after the cell
  before it (with nbgrader's comment line), a cell whose grade_id is unknown is not graded, and a test
  cell no longer marked ``grade`` scores nothing; each change is reported, as nbgrader logs it;
* a test cell scores 0 when its output holds an error *or anything written to stderr*, a number as its
  result for partial credit, else full points.

What the learner sees: per exercise pass/fail and points, the first line of a failing *visible* check,
and for a failing *hidden* check only that one failed (and its exception type): hidden checks name
the cases they try, which stay hidden as in the autograder. A notebook without a source (not one of the
course's lessons) is graded as it is, with the note that hidden tests were not run.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

OUTPUT_LIMIT = 100_000  # characters of text output kept per cell; the rest is dropped (and said so)


@dataclass
class Exercise:
    """One graded cell and what happened to it."""

    grade_id: str
    points: float
    kind: str                 # "auto" (a test cell, scored here) or "manual" (graded by hand)
    status: str = "not run"   # passed | failed | not run | by hand
    message: str = ""         # first line of the failure, or why it did not run
    partial: float | None = None   # nbgrader's partial credit (the cell's numeric result), if any

    @property
    def name(self) -> str:
        return self.grade_id.removeprefix("check_")

    @property
    def score(self) -> float:
        if self.partial is not None:
            return self.partial
        return self.points if self.status == "passed" else 0.0


@dataclass
class Report:
    notebook: str
    exercises: list[Exercise] = field(default_factory=list)
    seconds: float = 0.0
    problem: str = ""         # set when the run did not finish normally (time limit, kernel died, ...)
    source: str = ""          # the solutions/ notebook whose test cells were used ("" when none was found)
    restored: list[str] = field(default_factory=list)   # what nbgrader would put back, one line per change

    @property
    def score(self) -> float:
        return sum(e.score for e in self.exercises if e.kind == "auto")

    @property
    def max_score(self) -> float:
        return sum(e.points for e in self.exercises if e.kind == "auto")

    @property
    def manual_points(self) -> float:
        return sum(e.points for e in self.exercises if e.kind == "manual")

    def to_json(self) -> dict[str, Any]:
        return {"notebook": self.notebook, "score": self.score, "max_score": self.max_score,
                "manual_points": self.manual_points, "seconds": round(self.seconds, 2), "problem": self.problem,
                "source": self.source, "restored": self.restored,
                "exercises": [asdict(e) | {"name": e.name, "score": e.score} for e in self.exercises]}

    def table(self) -> str:
        """The per-exercise table printed for the learner."""
        width = max([len(e.name) for e in self.exercises] + [8])
        lines = [f"faceedu grade: {self.notebook} (ran in {self.seconds:.1f} s)", "",
                 f"{'exercise':<{width}}  {'result':<8}  {'points':>9}  first line of the failure"]
        for e in self.exercises:
            points = f"- / {e.points:g}" if e.kind == "manual" else f"{e.score:g} / {e.points:g}"
            row = f"{e.name:<{width}}  {e.status:<8}  {points:>9}  "
            # long messages wrap under their column, whole: the hint that tells what to fix is at the end
            message = textwrap.wrap(e.message, width=max(50, 110 - len(row)), break_on_hyphens=False) or [""]
            lines.append((row + message[0]).rstrip())
            lines.extend(" " * len(row) + more for more in message[1:])
        lines.append("")
        lines.append(f"autograded score: {self.score:g} / {self.max_score:g}"
                     + (f"  (+ {self.manual_points:g} points graded by hand)" if self.manual_points else ""))
        if self.problem:
            lines.append(f"note: {self.problem}")
        if self.restored:
            lines.append("note: graded cells of this notebook were changed; as the autograder does, faceedu grade "
                         "used the course's own:")
            lines.extend(f"  - {change}" for change in self.restored)
        if not self.source:
            lines.append("note: no source notebook under solutions/ for this notebook: its cells were graded as they "
                         "are, without hidden tests (the autograder would restore them)")
        return "\n".join(lines)


def _exercises(nb: Any) -> dict[int, Exercise]:
    graded: dict[int, Exercise] = {}
    for index, cell in enumerate(nb.cells):
        meta = cell.get("metadata", {}).get("nbgrader", {})
        if meta.get("grade"):
            manual = cell.cell_type != "code" or meta.get("solution", False) or meta.get("task", False)
            graded[index] = Exercise(meta.get("grade_id", f"cell-{index}"), float(meta.get("points", 0)),
                                     "manual" if manual else "auto", "by hand" if manual else "not run")
    return graded


# --- restoring the graded cells from the source, as nbgrader's OverwriteCells does -------------------

HIDDEN_BEGIN, HIDDEN_END = "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS"
MISSING_NOTE = "This cell (id:{cell_id}) was missing from the submission. It was added back by nbgrader.\n\n"


def source_notebook(notebook: Path) -> Path | None:
    """solutions/<name>/<name>.ipynb of the checkout faceedu runs from, for a lesson notebook <name>.ipynb."""
    from faceedu.grading.course import REPO

    candidate = REPO / "solutions" / notebook.stem / f"{notebook.stem}.ipynb"
    return candidate if candidate.is_file() else None


def _nbgrader(cell: Any) -> dict[str, Any]:
    return cell.get("metadata", {}).get("nbgrader", {})


def _without_hidden(source: str) -> str:
    """A test cell as the released notebook has it (nbgrader's ClearHiddenTests)."""
    lines, keep = [], True
    for line in source.splitlines(keepends=True):
        if line.strip() == HIDDEN_BEGIN:
            keep = False
        elif line.strip() == HIDDEN_END:
            keep = True
        elif keep:
            lines.append(line)
    return "".join(lines).rstrip("\n")


def restore(nb: Any, source: Any) -> list[str]:
    """Put back, in `nb`, what nbgrader autograde restores from the source notebook (see the module
    docstring); return one line per change, in nbgrader's words."""
    import nbformat

    changes: list[str] = []
    cells = {_nbgrader(c).get("grade_id"): c for c in source.cells if _nbgrader(c).get("grade_id")}
    order = [_nbgrader(c).get("grade_id") for c in source.cells if _nbgrader(c).get("grade_id")]
    for cell in nb.cells:
        meta = _nbgrader(cell)
        grade_id = meta.get("grade_id")
        if grade_id is None:
            continue
        original = cells.get(grade_id)
        if original is None:
            changes.append(f"{grade_id}: not a cell of this lesson: not graded")
            del meta["grade_id"]
            continue
        want = _nbgrader(original)
        if cell.cell_type != original.cell_type:
            changes.append(f"{grade_id}: cell type changed to {cell.cell_type}: put back to {original.cell_type}")
            cell.cell_type = original.cell_type
            if original.cell_type == "code":
                cell["outputs"], cell["execution_count"] = [], None
            else:
                cell.pop("outputs", None)
                cell.pop("execution_count", None)
        if bool(meta.get("locked")) != bool(want.get("locked")):
            changes.append(f"{grade_id}: lock changed: put back")
            meta["locked"] = want.get("locked", False)
        if meta.get("grade") and float(meta.get("points", 0)) != float(want.get("points", 0)):
            changes.append(f"{grade_id}: points changed to {float(meta.get('points', 0)):g}: put back to "
                           f"{float(want.get('points', 0)):g}")
            meta["points"] = want.get("points", 0)
        if want.get("grade") and not meta.get("grade"):
            # nbgrader puts the source back but not the flag, and then stops on this notebook with
            # "Inconsistent checksums for cell ..." (an error for the instructor, no score at all)
            changes.append(f"{grade_id}: no longer marked as graded: nbgrader autograde stops on this notebook "
                           f"(RuntimeError: Inconsistent checksums for cell {grade_id})")
        if want.get("locked") and cell.source != original.source:
            if cell.source.rstrip("\n") != _without_hidden(original.source):
                changes.append(f"{grade_id}: source edited: put back")
            cell.source = original.source
    present = {_nbgrader(c).get("grade_id") for c in nb.cells if _nbgrader(c).get("grade") or _nbgrader(c).get("solution")}
    for grade_id in order:
        original = cells[grade_id]
        want = _nbgrader(original)
        if not want.get("grade") or grade_id in present:
            continue
        text = MISSING_NOTE.format(cell_id=grade_id) + original.source
        meta = {"grade": True, "grade_id": grade_id, "locked": want.get("locked", False),
                "points": want.get("points", 0), "solution": bool(want.get("solution")), "schema_version": 3}
        if original.cell_type == "code":
            new = nbformat.v4.new_code_cell("# " + text, metadata={"nbgrader": meta})
        else:
            new = nbformat.v4.new_markdown_cell(text, metadata={"nbgrader": meta})
        before = order[:order.index(grade_id)]
        position = 0
        for index, cell in enumerate(nb.cells):
            if _nbgrader(cell).get("grade_id") in before:
                position = index + 1
        nb.cells.insert(position, new)
        present.add(grade_id)
        changes.append(f"{grade_id}: missing from the notebook: added back")
    return changes


def _split_hidden(source: str) -> tuple[str, str] | None:
    """(visible part, hidden part) of a test cell with a hidden block, or None."""
    lines = source.splitlines(keepends=True)
    marks = [i for i, line in enumerate(lines) if line.strip() == HIDDEN_BEGIN]
    if not marks:
        return None
    return "".join(lines[:marks[0]]), "".join(lines[marks[0]:])


def nbgrader_score(points: float, event: dict[str, Any] | None) -> float:
    """nbgrader's determine_grade for a code test cell: an error or any stderr output scores 0, a number
    as the cell's result is partial credit, anything else full points."""
    if event is None or event.get("error") or event.get("hidden_error") or event.get("stderr"):
        return 0.0
    result = event.get("result")
    if result is not None:
        try:
            return float(result)
        except ValueError:
            return points
    return points


def _first_error(outputs: list[Any]) -> str | None:
    for out in outputs:
        if out.get("output_type") == "error":
            value = str(out.get("evalue", "")).strip().splitlines()
            return f"{out.get('ename', 'Error')}: {value[0] if value else ''}".strip().rstrip(":")
    return None


# --- the worker: runs in its own process, writes one JSON line per event ---------------------------


def _worker(notebook: Path, events: Path, cell_timeout: int, folder: Path | None = None) -> None:
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import DeadKernelError

    class CappedClient(NotebookClient):
        """Keeps at most OUTPUT_LIMIT characters of text output per cell."""

        def output(self, outs, msg, display_id, cell_index):  # noqa: ANN001 - nbclient's signature
            if msg["msg_type"] == "stream":
                kept = sum(len(o.get("text", "")) for o in outs if o.get("output_type") == "stream")
                if kept >= OUTPUT_LIMIT:
                    if not any(o.get("name") == "faceedu-truncated" for o in outs):
                        outs.append(nbformat.v4.new_output("stream", name="stderr",
                                                           text="\n[faceedu grade: output truncated]\n"))
                        outs[-1]["name"] = "faceedu-truncated"
                    return None
            return super().output(outs, msg, display_id, cell_index)

    nb = nbformat.read(notebook, as_version=4)
    client = CappedClient(nb, timeout=cell_timeout, allow_errors=True, interrupt_on_timeout=True,
                          kernel_name=nb.metadata.get("kernelspec", {}).get("name", "python3"),
                          resources={"metadata": {"path": str(folder or notebook.parent)}})
    with events.open("a") as log:
        def emit(**event: Any) -> None:
            log.write(json.dumps(event) + "\n")
            log.flush()

        with client.setup_kernel():
            process = getattr(getattr(client.km, "provisioner", None), "process", None)
            emit(event="kernel", pid=getattr(process, "pid", None))
            for index, cell in enumerate(nb.cells):
                if cell.cell_type != "code":
                    continue
                parts = cell.metadata.get("faceedu_split")
                hidden_error = None
                start = time.monotonic()
                try:
                    if parts:   # a test cell: its visible checks, then (if they passed) its hidden ones
                        cell.source = parts[0]
                        client.execute_cell(cell, index)
                        if not _first_error(cell.outputs):
                            visible = list(cell.outputs)
                            cell.source = parts[1]
                            client.execute_cell(cell, index)
                            hidden_error = _first_error(cell.outputs)
                            cell.outputs = visible + list(cell.outputs)
                    else:
                        client.execute_cell(cell, index)
                except DeadKernelError:
                    emit(event="dead", index=index)
                    return
                seconds = time.monotonic() - start
                error = None if hidden_error else _first_error(cell.outputs)
                if (error or hidden_error) and seconds >= cell_timeout:  # interrupted by us
                    error = f"TimeLimit: the cell ran longer than {cell_timeout} s and was stopped (an endless loop?)"
                    hidden_error = None
                stderr = next((o.get("text", "") for o in cell.outputs
                               if o.get("output_type") == "stream" and o.get("name") == "stderr"), None)
                result = next((o.get("data", {}).get("text/plain") for o in cell.outputs
                               if o.get("output_type") == "execute_result"), None)
                emit(event="cell", index=index, error=error, hidden_error=hidden_error,
                     stderr=stderr.strip().splitlines()[0] if stderr and stderr.strip() else ("" if stderr else None),
                     result=result, seconds=round(seconds, 3))
        emit(event="finished")


# --- the parent: starts the worker, enforces the total time limit, builds the report ---------------


def _kill_group(pid: int | None) -> None:
    if not pid:
        return
    try:
        os.killpg(os.getpgid(pid), signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _kill_kernel(pid: int | None) -> None:
    """Kill a kernel left behind by a stopped worker, if that pid is still a Jupyter kernel."""
    cmdline = Path(f"/proc/{pid}/cmdline")
    if pid and (not cmdline.parent.exists() or b"ipykernel" in cmdline.read_bytes()):
        _kill_group(pid)


def grade(notebook: Path | str, timeout: float = 900, cell_timeout: float | None = None,
          source: Path | str | None = None) -> Report:
    """Run `notebook` in a worker process within `timeout` seconds in total (each cell at most
    `cell_timeout`, default the total) and return the report, scored as nbgrader autograde would with
    the graded cells of `source` (default: the lesson's solutions/ notebook, see `source_notebook`).
    Never raises because of the notebook's own code."""
    import nbformat

    notebook = Path(notebook).resolve()
    nb = nbformat.read(notebook, as_version=4)
    source = Path(source) if source is not None else source_notebook(notebook)
    report = Report(notebook.name)
    if source is not None:
        master = nbformat.read(source, as_version=4)
        report.source, report.restored = str(source), restore(nb, master)
        stops = [change for change in report.restored if "nbgrader autograde stops" in change]
        if stops:   # as nbgrader: no score at all; say which cell to put back
            report.exercises = list(_exercises(master).values())
            for exercise in report.exercises:
                if exercise.kind == "auto":
                    exercise.message = "not run: the autograder refuses this notebook (see the note below)"
            report.problem = (f"nbgrader autograde cannot grade this notebook: {stops[0].split(':', 1)[0]} was "
                              f"unmarked as a graded cell. Copy that cell back from the released notebook.")
            return report
    for cell in nb.cells:
        meta = _nbgrader(cell)
        if source is not None and cell.cell_type == "code" and meta.get("grade") and not meta.get("solution"):
            parts = _split_hidden(cell.source)
            if parts:
                cell.metadata["faceedu_split"] = list(parts)
    exercises = _exercises(nb)
    report.exercises = list(exercises.values())
    cell_limit = max(1, int(cell_timeout or timeout))
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="faceedu-grade-") as scratch:
        events, output = Path(scratch) / "events.jsonl", Path(scratch) / "worker.log"
        prepared = Path(scratch) / notebook.name
        nbformat.write(nb, prepared)
        with output.open("wb") as sink:
            worker = subprocess.Popen(
                [sys.executable, "-m", "faceedu.grading.runner", "--worker", str(prepared), str(events), str(cell_limit),
                 str(notebook.parent)],
                stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
            try:
                worker.wait(timeout=timeout)
                timed_out = False
            except subprocess.TimeoutExpired:
                timed_out = True
        lines = events.read_text().splitlines() if events.exists() else []
        log = [json.loads(line) for line in lines if line.strip()]
        kernel_pid = next((e.get("pid") for e in log if e["event"] == "kernel"), None)
        if timed_out:
            _kill_group(worker.pid)
            worker.wait()
        finished = any(e["event"] == "finished" for e in log)
        if not finished:  # the kernel runs in its own session: make sure nothing is left behind
            _kill_kernel(kernel_pid)
        report.seconds = time.monotonic() - start
        ran = {e["index"]: e for e in log if e["event"] == "cell"}
        dead = next((e["index"] for e in log if e["event"] == "dead"), None)
        if timed_out:
            last = max(ran, default=-1)
            report.problem = (f"the notebook was stopped after the {timeout:g} s time limit, "
                              f"while running cell {last + 2 if last >= 0 else 1}")
        elif dead is not None:
            report.problem = f"the kernel died (exited) while running cell {dead + 1}; later cells did not run"
        elif not finished:
            tail = output.read_text(errors="replace").strip().splitlines()[-1:] if output.exists() else []
            report.problem = f"the grader's worker stopped unexpectedly ({tail[0][:200] if tail else 'no message'})"
    for index, exercise in exercises.items():
        if exercise.kind == "manual":
            continue
        if index in ran:
            event = ran[index]
            scored = nbgrader_score(exercise.points, event)
            exercise.status = "passed" if scored >= exercise.points else "failed"
            exercise.partial = scored if 0 < scored < exercise.points else None
            if event.get("error"):
                exercise.message = event["error"]
            elif event.get("hidden_error"):
                kind = str(event["hidden_error"]).split(":", 1)[0]
                exercise.message = (f"a hidden check failed ({kind}); the visible checks passed. The autograder's "
                                    f"hidden checks try more cases (the exercise text names what to handle); "
                                    f"their details stay hidden.")
            elif event.get("stderr") is not None:
                exercise.message = ("the cell wrote to stderr, which the autograder scores as a failure"
                                    + (f": {event['stderr']}" if event["stderr"] else ""))
            elif exercise.partial is not None:
                exercise.message = f"partial credit: the cell's result is {scored:g}"
            else:
                exercise.message = ""
        else:
            exercise.status = "not run"
            exercise.message = ("kernel died before this cell" if dead is not None and index > dead
                                else "kernel died in this cell" if index == dead
                                else report.problem or "not reached")
    return report


def main(argv: list[str] | None = None) -> int:
    """`python -m faceedu.grading.runner NOTEBOOK ...` is `faceedu grade NOTEBOOK ...`; with --worker it
    is the worker process that `grade` starts."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        _worker(Path(argv[1]), Path(argv[2]), int(argv[3]), Path(argv[4]) if len(argv) > 4 else None)
        return 0
    parser = argparse.ArgumentParser(prog="python -m faceedu.grading.runner", description="faceedu grade")
    add_arguments(parser)
    return run(parser.parse_args(argv))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `faceedu grade`, defined once here: the command line (cli.py) adds them to its
    sub-command, and this module's own `main` uses them, without importing the layer above it."""
    parser.add_argument("notebook", type=Path,
                        help="the lesson notebook, e.g. lessons/00_faces_as_data/00_faces_as_data.ipynb")
    parser.add_argument("--json", type=Path, default=None, metavar="FILE", help="also write the report as JSON")
    parser.add_argument("--timeout", type=float, default=900, metavar="S",
                        help="total time limit (default: %(default)s s)")
    parser.add_argument("--cell-timeout", type=float, default=None, metavar="S",
                        help="per-cell limit; a cell over it is interrupted and grading goes on (default: the total)")


def run(args: argparse.Namespace) -> int:
    """Grade, print the table, write JSON if asked. Exit status 0 when every autograded exercise passed."""
    if not args.notebook.is_file():
        print(f"faceedu grade: no such notebook: {args.notebook}", file=sys.stderr)
        return 2
    report = grade(args.notebook, timeout=args.timeout, cell_timeout=args.cell_timeout)
    print(report.table())
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report.to_json(), indent=2) + "\n")
    complete = not report.problem and all(e.status == "passed" for e in report.exercises if e.kind == "auto")
    return 0 if complete else 1


if __name__ == "__main__":
    sys.exit(main())
