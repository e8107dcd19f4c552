"""Every solution notebook runs top to bottom (nbclient, fast mode) without an error, and every lesson
follows the course's notebook conventions, so each new lesson gets the same structure checks for free."""

from __future__ import annotations

import re

import nbformat
import pytest

from coursekit import CELL_TIMEOUT, course_log, executed_solution, lesson_slugs, solution_path, use_data  # course_log: autouse fixture
from faceedu.grading.course import LESSONS, lesson


@pytest.mark.parametrize("slug", lesson_slugs())
def test_solution_notebook_runs_top_to_bottom(slug, synth_root):
    use_data(synth_root)
    nb = nbformat.read(executed_solution(slug), as_version=4)   # raises CellExecutionError on any error
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    warnings = [o.text[:200] for o in outputs if o.output_type == "stream" and o.name == "stderr"
                and "Warning" in o.text]
    assert not warnings, f"the reference run shows learners warnings: {warnings}"
    test_cells = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade") and c.cell_type == "code"]
    for cell in test_cells:
        text = "".join(o.get("text", "") for o in cell.outputs)
        assert "✓" in text and "hidden checks passed" in text, f"{cell.metadata['nbgrader']['grade_id']}: {text!r}"
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 3, "a lesson shows its data: expected plots"


@pytest.mark.parametrize("slug", lesson_slugs())
def test_notebook_follows_the_lesson_conventions(slug):
    nb = nbformat.read(solution_path(slug), as_version=4)
    meta = [c.metadata.get("nbgrader", {}) for c in nb.cells]
    assert nb.cells[0].cell_type == "markdown" and "Learning goals" in nb.cells[0].source
    assert lesson(slug).status == "ready" and slug in [entry.slug for entry in LESSONS]
    graded_code = [(c, m) for c, m in zip(nb.cells, meta) if m.get("grade") and c.cell_type == "code"]
    exercises = [(i, m["grade_id"]) for i, m in enumerate(meta) if m.get("solution") and nb.cells[i].cell_type == "code"]
    assert exercises, "a lesson has exercises"
    for index, name in exercises:
        source = nb.cells[index].source
        assert "### BEGIN SOLUTION" in source and "### END SOLUTION" in source
        assert re.search(rf"^def {name}\(", source, re.M), f"exercise cell {name} defines {name}()"
        follow = nb.cells[index + 1]
        points = meta[index + 1].get("points", 0)
        stated = f"({points:g} point)" if points == 1 else f"({points:g} points)"
        assert stated in nb.cells[index - 1].source, f"{name}: the exercise text states its points"
        assert meta[index + 1].get("grade_id") == f"check_{name}", f"the check cell follows exercise {name}"
        # the grader is loaded afresh by faceedu.grading.checks (grading integrity): never imported from
        # a module a learner's cell could have rebound
        grader = f'checks("lesson{slug[:2]}").check_{name}'
        assert follow.source.startswith("from faceedu.grading import checks\n"), f"check_{name}: {follow.source!r}"
        assert f"{grader}({name})\n### BEGIN HIDDEN TESTS\n{grader}({name}, hidden=True)\n### END HIDDEN TESTS" in follow.source
        assert "import check_" not in follow.source and "faceedu.grading.lesson" not in follow.source
    assert all(m.get("points", 0) > 0 and m.get("locked") for _, m in graded_code)
    manual = [c for c, m in zip(nb.cells, meta) if m.get("grade") and m.get("solution")]
    assert len(manual) == 1 and manual[0].cell_type == "markdown", "one reflection, graded by hand"
    assert any("Train what you built" in c.source for c in nb.cells if c.cell_type == "markdown")
    assert any("ipywidgets" in c.source for c in nb.cells if c.cell_type == "code"), "a widget"
    assert "course.fast_mode()" in nb.cells[1].source, "the setup cell reads fast mode"
    assert CELL_TIMEOUT >= 60
