"""`faceedu grade NOTEBOOK`: run a lesson notebook the way the autograder does and report each exercise.

The notebook runs in a separate worker process (which starts its own Jupyter kernel) under a total time
limit; each cell also has its own limit, after which the kernel is interrupted and grading goes on with
the next cell. The worker streams one JSON line per executed cell to a file, so whatever happens to the
student's code - an exception, an endless loop, megabytes of output, a kernel that exits - the parent
still reads back everything that did run and prints a clean report. Exercises are the cells nbgrader
grades (``"grade": true`` in their nbgrader metadata): a test cell passes when it runs without error.
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

    @property
    def name(self) -> str:
        return self.grade_id.removeprefix("check_")

    @property
    def score(self) -> float:
        return self.points if self.status == "passed" else 0.0


@dataclass
class Report:
    notebook: str
    exercises: list[Exercise] = field(default_factory=list)
    seconds: float = 0.0
    problem: str = ""         # set when the run did not finish normally (time limit, kernel died, ...)

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


def _first_error(outputs: list[Any]) -> str | None:
    for out in outputs:
        if out.get("output_type") == "error":
            value = str(out.get("evalue", "")).strip().splitlines()
            return f"{out.get('ename', 'Error')}: {value[0] if value else ''}".strip().rstrip(":")
    return None


# --- the worker: runs in its own process, writes one JSON line per event ---------------------------


def _worker(notebook: Path, events: Path, cell_timeout: int) -> None:
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
                          resources={"metadata": {"path": str(notebook.parent)}})
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
                start = time.monotonic()
                try:
                    client.execute_cell(cell, index)
                except DeadKernelError:
                    emit(event="dead", index=index)
                    return
                seconds = time.monotonic() - start
                error = _first_error(cell.outputs)
                if error and seconds >= cell_timeout:  # interrupted by us, whatever the kernel reported
                    error = f"TimeLimit: the cell ran longer than {cell_timeout} s and was stopped (an endless loop?)"
                emit(event="cell", index=index, error=error, seconds=round(seconds, 3))
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


def grade(notebook: Path | str, timeout: float = 900, cell_timeout: float | None = None) -> Report:
    """Run `notebook` in a worker process within `timeout` seconds in total (each cell at most
    `cell_timeout`, default the total) and return the report. Never raises because of the notebook's
    own code."""
    import nbformat

    notebook = Path(notebook).resolve()
    nb = nbformat.read(notebook, as_version=4)
    exercises = _exercises(nb)
    report = Report(notebook.name, list(exercises.values()))
    cell_limit = max(1, int(cell_timeout or timeout))
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="faceedu-grade-") as scratch:
        events, output = Path(scratch) / "events.jsonl", Path(scratch) / "worker.log"
        with output.open("wb") as sink:
            worker = subprocess.Popen(
                [sys.executable, "-m", "faceedu.grading.runner", "--worker", str(notebook), str(events), str(cell_limit)],
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
            error = ran[index]["error"]
            exercise.status = "failed" if error else "passed"
            exercise.message = error or ""
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
        _worker(Path(argv[1]), Path(argv[2]), int(argv[3]))
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
