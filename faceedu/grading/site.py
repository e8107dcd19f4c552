"""Build the website's lesson pages: `python -m faceedu.grading.site [--executed DIR]`.

A lesson page is the *student* notebook (lessons/NN/NN.ipynb, no solutions) with the outputs of the
reference run copied into the cells that are neither exercises nor checks - so learners see the figures
they are about to produce - plus a header and a "What the autograder checks" section written from the
checks' docstrings. The reference run is the solution notebook executed by nbclient with
allow_errors=False: a lesson that fails cannot produce a page. Pages go to docs/lessons/NN.ipynb and
selected figures to docs/generated/ (both build outputs, git-ignored); `mkdocs build` then renders them
with mkdocs-jupyter (execute: false, allow_errors: false).

Reference runs are cached by content in outputs/executed/: one is reused while the solution notebook, the
faceedu modules its kernel loaded, the shipped weights, the runs it may reuse (runs/*/checkpoint.pt), the
data and fast mode are unchanged, so a rebuild re-executes only the lessons that changed; lesson 03 reuses
the tour's runs/vae-quick. While a lesson runs, its cell and training progress are printed. No cell has a
time limit unless `--cell-timeout S` sets one.
"""

from __future__ import annotations

import argparse
import hashlib
import html
import importlib
import inspect
import json
import re
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from faceedu.grading.course import LESSONS, REPO, Lesson, data_root, fast_mode

DOCS = REPO / "docs"
CACHE = REPO / "outputs" / "executed"
WIDGET_NOTE = "[An interactive widget appears here when you run the notebook in JupyterLab.]\n"
_TQDM = re.compile(r"\d+/\d+ \[[^\]]*\]")            # "450/1200 [02:01<03:22, 3.71step/s, img/s=119]"


class ReferenceRunFailed(RuntimeError):
    """A lesson's reference run stopped: an error in a cell, or a cell over the --cell-timeout limit."""


# run after a reference run, in its kernel: the faceedu modules it loaded (what its outputs depend on)
PROBE = ("import json as _json, sys as _sys\n"
         "print(_json.dumps(sorted({_m.__file__ for _n, _m in list(_sys.modules.items())\n"
         "                          if _n.split('.')[0] == 'faceedu' and getattr(_m, '__file__', None)})))")


def execute(path: Path, timeout: float | None = None, progress: float | None = 30.0, probe: str | None = None) -> Any:
    """Run a notebook top to bottom (the reference run); any error stops the build. `timeout`: seconds
    per cell (None: no limit). `progress`: every so many seconds, print which cell runs and the
    latest training progress bar it shows (None: quiet). `probe`: code run last, in the same kernel; its
    printed output is returned in nb.metadata["probe"] and its cell removed."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError

    nb = nbformat.read(path, as_version=4)
    code = [i for i, cell in enumerate(nb.cells) if cell.cell_type == "code"]
    if probe is not None:
        nb.cells.append(nbformat.v4.new_code_cell(probe))
    state = {"cell": None, "since": time.monotonic(), "bar": ""}
    start = time.monotonic()

    def say(line: str) -> None:
        if progress is not None:
            print(f"  [{path.stem}] {line}", flush=True)

    class Client(NotebookClient):
        def handle_comm_msg(self, outs, msg, cell_index):        # tqdm's notebook bar is a widget
            value = msg["content"].get("data", {}).get("state", {}).get("value")
            if isinstance(value, str) and (found := _TQDM.search(re.sub(r"\s+", " ", html.unescape(value)))):
                state["bar"] = found.group(0)
            return super().handle_comm_msg(outs, msg, cell_index)

    def cell_started(cell, cell_index, **_):
        if cell.cell_type == "code":                            # nbclient calls this for markdown cells too
            state.update(cell=cell_index, since=time.monotonic(), bar="")

    done = threading.Event()

    def heartbeat() -> None:
        while not done.wait(progress):
            if state["cell"] in code:
                bar = f" · {state['bar']}" if state["bar"] else ""
                say(f"cell {code.index(state['cell']) + 1}/{len(code)} running for "
                    f"{time.monotonic() - state['since']:.0f} s{bar} ({time.monotonic() - start:.0f} s in all)")

    client = Client(nb, timeout=None if timeout is None else max(1, round(timeout)), kernel_name="python3", allow_errors=False, on_cell_start=cell_started,
                    resources={"metadata": {"path": str(path.parent)}})
    watcher = threading.Thread(target=heartbeat, daemon=True)
    if progress is not None:
        watcher.start()
    # the kernel process's own stderr (transport warnings; a zmq traceback when a stopped kernel is killed)
    log = Path(tempfile.gettempdir()) / f"faceedu-{path.stem}-kernel.log"
    try:
        with log.open("w") as kernel_stderr:
            client.execute(stderr=kernel_stderr)
    except CellTimeoutError as err:
        raise ReferenceRunFailed(
            f"{path.stem}: code cell {code.index(state['cell']) + 1 if state['cell'] in code else '(probe)'}/{len(code)} "
            f"ran longer than the "
            f"{timeout:g} s per-cell limit; raise it (`make docs CELL_TIMEOUT=S`, 0 for none)") from err
    except CellExecutionError as err:
        raise ReferenceRunFailed(f"{path.stem}: the reference run failed:\n{err}") from err
    finally:
        done.set()
    if probe is not None:
        ran = nb.cells.pop()
        nb.metadata["probe"] = "".join(o.get("text", "") for o in ran.outputs if o.output_type == "stream")
    return nb


def _sha(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    except OSError:
        return None


def _stat(path: Path) -> list:
    info = path.stat()
    return [info.st_size, info.st_mtime_ns]


def environment() -> dict[str, Any]:
    """What any reference run may depend on besides its notebook and modules: the data, fast mode, the
    shipped weights and the finished runs a lesson may reuse (runs/*/checkpoint.pt)."""
    from faceedu.data.synthfaces import dataset_fingerprint

    weights = REPO / "faceedu" / "weights"
    return {"data": [str(data_root()), dataset_fingerprint(data_root())], "fast": fast_mode(),
            "weights": {p.name: _sha(p) for p in sorted(weights.glob("*")) if p.is_file()},
            "runs": {str(p.relative_to(REPO)): _stat(p) for p in sorted((REPO / "runs").glob("*/checkpoint.pt"))}}


def _dependencies(files: list[str]) -> dict[str, str | None]:
    return {name: _sha(REPO / name if not Path(name).is_absolute() else Path(name)) for name in files}


def _changed(executed: Any) -> list[str]:
    """What changed among the inputs a cached reference run recorded (empty: it is still valid)."""
    recorded = executed.metadata.get("faceedu_reference_run", {})
    modules = recorded.get("modules")
    if modules is None:
        return ["no record of its inputs"]
    now = _dependencies(list(modules))
    changed = [name for name in modules if now[name] != modules[name]]
    current = json.loads(json.dumps(environment()))
    return changed + [key for key in current if recorded.get("environment", {}).get(key) != current[key]]


def reference_run(lesson: Lesson, timeout: float | None = None, cache: Path | None = CACHE,
                  progress: float | None = 30.0, source: Path | None = None) -> Any:
    """The executed solution notebook of `lesson` (or `source`): from the cache when its content has not
    changed, else executed (with progress) and cached."""
    import nbformat

    source = source or REPO / "solutions" / lesson.slug / f"{lesson.slug}.ipynb"
    copy = cache / f"{lesson.slug}-{_sha(source)}.ipynb" if cache is not None else None
    why = "no executed copy of this notebook"
    if copy is not None and copy.is_file():
        executed = nbformat.read(copy, as_version=4)
        changed = _changed(executed)
        if not changed:
            print(f"reference run of {lesson.slug}: reused {copy.relative_to(REPO) if copy.is_relative_to(REPO) else copy}")
            return executed
        why = "changed since the last run: " + ", ".join(changed[:4]) + (", ..." if len(changed) > 4 else "")
    print(f"reference run of {lesson.slug}: executing {source.name} ({why}; "
          f"per-cell limit: {f'{timeout:g} s' if timeout else 'none'})", flush=True)
    start = time.monotonic()
    executed = execute(source, timeout, progress, probe=PROBE)
    print(f"reference run of {lesson.slug}: {time.monotonic() - start:.1f} s", flush=True)
    loaded = json.loads(executed.metadata.pop("probe").strip().splitlines()[-1])
    if cache is not None:
        names = [str(Path(f).relative_to(REPO)) if Path(f).is_relative_to(REPO) else f for f in loaded]
        executed.metadata["faceedu_reference_run"] = {"modules": _dependencies(names), "environment": environment()}
        cache.mkdir(parents=True, exist_ok=True)
        for stale in cache.glob(f"{lesson.slug}-*.ipynb"):
            stale.unlink()
        nbformat.write(executed, copy)
        executed.metadata.pop("faceedu_reference_run")
    return executed


def autograder_section(lesson: Lesson, release: Any) -> str:
    """Markdown: per exercise, its points and what its visible and hidden checks test."""
    grader = importlib.import_module(lesson.grader)
    lines = ["## What the autograder checks", "",
             "Each check cell runs the visible checks below as you work; when your instructor grades the "
             "notebook (`nbgrader autograde`), the hidden checks run too. A check compares your function "
             "with the course's reference on fixed and random inputs and tests properties; calling "
             "faceedu's own implementation instead of writing yours fails.", ""]
    for cell in release.cells:
        meta = cell.metadata.get("nbgrader", {})
        if not meta.get("grade"):
            continue
        points = f"{meta.get('points', 0):g} points"
        if cell.cell_type != "code":
            lines.append(f"- **{meta['grade_id']}** ({points}): graded by hand by your instructor.")
            continue
        name = meta["grade_id"].removeprefix("check_")
        doc = inspect.getdoc(getattr(grader, meta["grade_id"])) or ""
        lines.append(f"- **`{name}`** ({points}): " + " ".join(doc.split()))
    return "\n".join(lines) + "\n"


def lesson_page(lesson: Lesson, executed: Any) -> Any:
    """The page notebook: the released cells, reference outputs where they teach, header and checks."""
    import nbformat
    from nbformat.v4 import new_markdown_cell, new_output

    release = nbformat.read(REPO / "lessons" / lesson.slug / f"{lesson.slug}.ipynb", as_version=4)
    assert len(release.cells) == len(executed.cells), f"{lesson.slug}: run `make lessons` (release out of date)"
    root = str(data_root())
    for cell, ran in zip(release.cells, executed.cells):
        assert cell.cell_type == ran.cell_type and cell.get("id") == ran.get("id"), f"{lesson.slug}: cells differ"
        if cell.cell_type != "code":
            continue
        meta = cell.metadata.get("nbgrader", {})
        if meta.get("solution") or meta.get("grade"):
            cell.outputs, cell.execution_count = [], None   # exercises and checks: the learner's to run
            continue
        outputs = []
        for out in ran.outputs:
            if out.output_type == "error":
                raise RuntimeError(f"{lesson.slug}: the reference run has an error output: {out.ename}")
            data = out.get("data", {})
            if "application/vnd.jupyter.widget-view+json" in data:
                outputs.append(new_output("stream", name="stdout", text=WIDGET_NOTE))
                continue
            if out.output_type == "stream":
                out.text = out.text.replace(root, "datasets/synthfaces")
            outputs.append(out)
        cell.outputs, cell.execution_count = outputs, ran.get("execution_count")
    release.metadata.pop("widgets", None)  # widget state would make nbconvert load widget JS from a CDN
    notebook = f"lessons/{lesson.slug}/{lesson.slug}.ipynb"
    mode = ", fast mode" if fast_mode() else ""
    header = (f'<div class="admonition info"><p class="admonition-title">Lesson {lesson.number:02d} · '
              f'{lesson.title}</p><p>This page is the student notebook <code>{notebook}</code> as you will see it '
              f'in JupyterLab, with the figures of the reference run (SynthFaces{mode}) filled in; exercise '
              f'and check cells are left for you to run. Open it from your checkout with '
              f'<code>jupyter lab {notebook}</code>, or download it with the button above. '
              f'Sources: {lesson.sources}.</p></div>')
    release.cells.insert(1, new_markdown_cell(header))
    release.cells.append(new_markdown_cell(autograder_section(lesson, release)))
    return release


def figures(lesson: Lesson, executed: Any, out: Path) -> list[Path]:
    """Save the PNG of every cell marked `"faceedu": {"figure": NAME}` as out/NN_NAME.png."""
    import base64

    saved = []
    for cell in executed.cells:
        name = cell.metadata.get("faceedu", {}).get("figure")
        pngs = [o["data"]["image/png"] for o in cell.get("outputs", []) if "image/png" in o.get("data", {})]
        if name and pngs:
            path = out / f"{lesson.number:02d}_{name}.png"
            path.write_bytes(base64.b64decode(pngs[-1]))
            saved.append(path)
    return saved


def build(executed_dir: Path | None = None, docs: Path = DOCS, cell_timeout: float | None = None,
          cache: Path | None = CACHE, progress: float | None = 30.0) -> list[Path]:
    """Write every ready lesson's page and figures; execute the solutions (or take them from the cache)
    unless `executed_dir` already holds executed copies (the tests pass theirs). Returns the files written."""
    import nbformat

    (docs / "lessons").mkdir(parents=True, exist_ok=True)
    (docs / "generated").mkdir(parents=True, exist_ok=True)
    written = []
    for lesson in LESSONS:
        if lesson.status != "ready":
            continue
        cached = executed_dir / f"{lesson.slug}.ipynb" if executed_dir else None
        if cached and cached.is_file():
            executed = nbformat.read(cached, as_version=4)
        else:
            executed = reference_run(lesson, cell_timeout, cache, progress)
        page = docs / "lessons" / f"{lesson.slug}.ipynb"
        nbformat.write(lesson_page(lesson, executed), page)
        written += [page, *figures(lesson, executed, docs / "generated")]
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m faceedu.grading.site", description=__doc__.splitlines()[0])
    parser.add_argument("--executed", type=Path, default=None,
                        help="folder of already executed solution notebooks (NN_name.ipynb) to use")
    parser.add_argument("--cell-timeout", type=float, default=0,
                        help="seconds any one cell of a reference run may take; 0: no limit (progress is printed)")
    parser.add_argument("--no-cache", action="store_true",
                        help=f"execute every lesson afresh instead of reusing {CACHE.relative_to(REPO)}/")
    parser.add_argument("--progress", type=float, default=30, help="seconds between progress lines; 0: quiet")
    args = parser.parse_args(argv)
    try:
        written = build(args.executed, cell_timeout=args.cell_timeout or None, cache=None if args.no_cache else CACHE,
                        progress=args.progress or None)
    except ReferenceRunFailed as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for path in written:
        print(f"wrote {path.relative_to(REPO) if path.is_relative_to(REPO) else path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
