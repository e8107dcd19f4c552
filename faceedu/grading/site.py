"""Build the website's lesson pages: `python -m faceedu.grading.site [--executed DIR]`.

A lesson page is the *student* notebook (lessons/NN/NN.ipynb, no solutions) with the outputs of the
reference run copied into the cells that are neither exercises nor checks - so learners see the figures
they are about to produce - plus a header and a "What the autograder checks" section written from the
checks' docstrings. The reference run is the solution notebook executed by nbclient with
allow_errors=False: a lesson that fails cannot produce a page. Pages go to docs/lessons/NN.ipynb and
selected figures to docs/generated/ (both build outputs, git-ignored); `mkdocs build` then renders them
with mkdocs-jupyter (execute: false, allow_errors: false).
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import time
from pathlib import Path
from typing import Any

from faceedu.grading.course import LESSONS, REPO, Lesson, data_root, fast_mode

DOCS = REPO / "docs"
WIDGET_NOTE = "[An interactive widget appears here when you run the notebook in JupyterLab.]\n"


def execute(path: Path, timeout: int = 900) -> Any:
    """Run a notebook top to bottom (the reference run); any error stops the build."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=timeout, kernel_name="python3", allow_errors=False,
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    return nb


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


def build(executed_dir: Path | None = None, docs: Path = DOCS) -> list[Path]:
    """Write every ready lesson's page and figures; execute the solutions unless `executed_dir` already
    holds executed copies (the tests pass theirs). Returns the files written."""
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
            start = time.monotonic()
            executed = execute(REPO / "solutions" / lesson.slug / f"{lesson.slug}.ipynb")
            print(f"reference run of {lesson.slug}: {time.monotonic() - start:.1f} s")
        page = docs / "lessons" / f"{lesson.slug}.ipynb"
        nbformat.write(lesson_page(lesson, executed), page)
        written += [page, *figures(lesson, executed, docs / "generated")]
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m faceedu.grading.site", description=__doc__.splitlines()[0])
    parser.add_argument("--executed", type=Path, default=None,
                        help="folder of already executed solution notebooks (NN_name.ipynb) to use")
    args = parser.parse_args(argv)
    for path in build(args.executed):
        print(f"wrote {path.relative_to(REPO) if path.is_relative_to(REPO) else path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
