"""nbgrader as instructors use it, end to end with the real CLI in a temporary course:
generate_assignment -> three submissions -> autograde -> scores read back from the gradebook database.
Also: the committed lessons/ are exactly what generate_assignment makes from solutions/."""

from __future__ import annotations

import shutil

import nbformat
import pytest

from coursekit import (  # course_log: an autouse fixture
    course_log, lesson_slugs, nbgrader, normalised, release_path, say, solution_path, temp_course, use_data,
)

SLUG = "00_faces_as_data"


@pytest.mark.parametrize("slug", lesson_slugs())
def test_committed_lessons_match_generate_assignment(slug):
    generated = temp_course() / "lessons" / slug / f"{slug}.ipynb"
    assert generated.is_file()
    assert normalised(generated) == normalised(release_path(slug)), (
        f"lessons/{slug} is out of date with solutions/{slug}: run `make lessons` and commit the result")


def test_release_hides_solutions_and_hidden_tests():
    text = release_path(SLUG).read_text()
    for marker in ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "hidden=True"):
        assert marker not in text
    code = "".join(c.source for c in nbformat.reads(text, 4).cells if c.cell_type == "code")
    assert code.count("raise NotImplementedError()") == 4
    source = solution_path(SLUG).read_text()
    assert source.count("### BEGIN HIDDEN TESTS") == 4


def _wrong_submission(path):
    """The released notebook, filled in by a student who gets two exercises right and two wrong."""
    solved = {c.metadata["nbgrader"]["grade_id"]: c.source for c in nbformat.read(solution_path(SLUG), 4).cells
              if c.metadata.get("nbgrader", {}).get("solution") and c.cell_type == "code"}
    wrong = {
        "face_hair_hat_mask": "def face_hair_hat_mask(label_map):\n    return label_map > 0\n",
        "preprocess": ("def preprocess(image, size=64):\n    x = image.float()[None] / 255\n"
                       "    return F.interpolate(x, size=(size, size), mode='bilinear', antialias=True)[0]\n"),
    }
    nb = nbformat.read(release_path(SLUG), 4)
    for cell in nb.cells:
        grade_id = cell.metadata.get("nbgrader", {}).get("grade_id")
        if cell.cell_type == "code" and cell.metadata.get("nbgrader", {}).get("solution"):
            cell.source = wrong.get(grade_id, solved[grade_id])
        elif grade_id == "reflection":
            cell.source = "Blond hair and glasses go together, so an edit of one changes the other."
    nbformat.write(nb, path)


def test_autograde_full_zero_and_partial_marks(synth_root):
    from nbgrader.api import Gradebook

    use_data(synth_root)
    root = temp_course()
    submissions = {"alice": "solution", "bob": "untouched release", "carol": "two of four right"}
    for student in submissions:
        folder = root / "submitted" / student / SLUG
        folder.mkdir(parents=True)
    shutil.copy(solution_path(SLUG), root / "submitted" / "alice" / SLUG / f"{SLUG}.ipynb")
    shutil.copy(release_path(SLUG), root / "submitted" / "bob" / SLUG / f"{SLUG}.ipynb")
    _wrong_submission(root / "submitted" / "carol" / SLUG / f"{SLUG}.ipynb")

    nbgrader(root, "autograde", SLUG, "--create", "--force")

    with Gradebook(f"sqlite:///{root / 'gradebook.db'}") as gradebook:
        notebook = gradebook.find_notebook(SLUG, SLUG)
        auto_cells = [c for c in notebook.grade_cells if c.cell_type == "code"]
        manual_cells = [c for c in notebook.grade_cells if c.cell_type == "markdown"]
        auto_max = sum(c.max_score for c in auto_cells)
        assert [c.name for c in manual_cells] == ["reflection"] and auto_max == 9
        scores = {}
        for student in submissions:
            grades = {c.name: gradebook.find_grade(c.name, SLUG, SLUG, student) for c in notebook.grade_cells}
            scores[student] = {name: g.auto_score for name, g in grades.items()}
            # an untouched answer cell scores 0 automatically; a written one waits for the instructor
            assert grades["reflection"].needs_manual_grade == (student != "bob")
        say("autograde scores (autograded points of 9): " + ", ".join(
            f"{s} ({submissions[s]}): {sum(v or 0 for v in scores[s].values()):g}" for s in submissions))

    assert all(scores["alice"][c.name] == c.max_score for c in auto_cells)                     # (a) full marks
    assert all(scores["bob"][c.name] == 0 for c in auto_cells)                                  # (b) zero
    assert scores["carol"]["check_parse_attributes"] == 2 and scores["carol"]["check_phi_matrix"] == 3
    assert scores["carol"]["check_face_hair_hat_mask"] == 0 and scores["carol"]["check_preprocess"] == 0  # (c) partial

    # the hidden tests were put back at autograde time, although carol's notebook never had them
    graded = (root / "autograded" / "carol" / SLUG / f"{SLUG}.ipynb").read_text()
    assert "hidden=True" in graded and "keeps 'l_ear' (8)" in graded
