"""`faceedu grade` scores a notebook exactly as `nbgrader autograde` does, on right, wrong, tampered and
cheating submissions of lesson 00: both take the test cells, points and hidden tests from solutions/,
both put back what a learner changed, and neither is fooled by the cheats that beat the autograder
before test cells loaded their grader afresh (rebinding the check functions from a solution cell,
copying the reference with inspect.getsource, replacing torch's comparisons)."""

from __future__ import annotations

import shutil

import nbformat
import pytest

from coursekit import course_log, nbgrader, release_path, say, solution_path, temp_course, use_data  # noqa: F401
from faceedu.grading.runner import grade

SLUG = "00_faces_as_data"


def _solved(cheat: dict[str, str] | None = None):
    """The released notebook with every exercise cell replaced by the solution's (or by `cheat`'s)."""
    solved = {c.metadata["nbgrader"]["grade_id"]: c.source for c in nbformat.read(solution_path(SLUG), 4).cells
              if c.metadata.get("nbgrader", {}).get("solution") and c.cell_type == "code"}
    nb = nbformat.read(release_path(SLUG), 4)
    for cell in nb.cells:
        meta = cell.metadata.get("nbgrader", {})
        if cell.cell_type == "code" and meta.get("solution"):
            cell.source = (cheat or {}).get(meta["grade_id"], solved[meta["grade_id"]])
    return nb


def _tampered(path):
    """Right answers except face_hair_hat_mask; then the graded-cell tricks a learner might try."""
    nb = _solved({"face_hair_hat_mask": "def face_hair_hat_mask(label_map):\n    return label_map > 0\n"})
    by_id = {c.metadata.get("nbgrader", {}).get("grade_id"): c for c in nb.cells}
    by_id["check_face_hair_hat_mask"].source = "pass  # nothing to see here"          # edited test cell
    by_id["check_phi_matrix"].metadata["nbgrader"]["points"] = 100                      # inflated points
    by_id["check_preprocess"].metadata["nbgrader"]["locked"] = False                    # unlocked, then edited
    by_id["check_preprocess"].source = "print('all good')"
    nb.cells.remove(by_id["check_parse_attributes"])                                    # deleted test cell
    nbformat.write(nb, path)


def _unmarked(path):
    """A test cell no longer marked as graded: nbgrader autograde stops on such a notebook."""
    nb = _solved()
    next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == "check_preprocess"
         ).metadata["nbgrader"]["grade"] = False
    nbformat.write(nb, path)


CHEAT_REBIND = '''import faceedu.grading, faceedu.grading.lesson00 as _grader, sys, types
for _name in dir(_grader):                      # cheat 1: every check a no-op ...
    if _name.startswith("check_"):
        setattr(_grader, _name, lambda *args, **kwargs: print("✓ all checks passed"))
_fake = types.ModuleType("faceedu.grading")     # ... and a fake grading package in sys.modules
_fake.checks = lambda lesson: types.SimpleNamespace(**{n: (lambda *a, **k: None) for n in dir(_grader) if n.startswith("check_")})
try:
    faceedu.grading.checks = _fake.checks       # refused
except AttributeError:
    pass
vars(faceedu.grading)["checks"] = _fake.checks  # shadowing: no effect

def face_hair_hat_mask(label_map):
    return label_map > 0
'''

CHEAT_COPY = '''import inspect
import faceedu.grading.lesson00 as _grader
exec(inspect.getsource(_grader.{name}), globals())   # cheat 2: a copy of the grader's reference
'''

CHEAT_TORCH = '''import torch, numpy as np
torch.allclose = lambda *a, **k: True
torch.isclose = lambda a, b, **k: torch.ones_like(torch.as_tensor(a), dtype=torch.bool)
torch.equal = lambda *a, **k: True
np.array_equal = lambda *a, **k: True

def preprocess(image, size=64):
    x = image.float()[None] / 255
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True)[0]
'''


def _cheats(path):
    """Every exercise wrong or copied, with cheat 1 (check functions rebound, a fake grading package),
    cheat 2 (copies of the references, one with its variables renamed) and torch's comparisons replaced."""
    nb = _solved({
        "face_hair_hat_mask": CHEAT_REBIND,
        "parse_attributes": CHEAT_COPY.format(name="parse_attributes"),
        "phi_matrix": ("import inspect\nfrom faceedu.data import stats as _stats\n"
                       "_source = inspect.getsource(_stats.phi_matrix).replace('attrs', 'a').replace('denom', 'd')\n"
                       "exec(_source, globals())   # a copy of the package's own, variables renamed\n"),
        "preprocess": CHEAT_TORCH,
    })
    nbformat.write(nb, path)


# student: (what it is, how to make it, nbgrader's total, or None where nbgrader autograde stops on it)
SUBMISSIONS = {
    "dave": ("right and wrong answers, tampered graded cells", _tampered, 7),
    "erin": ("rebinding, copying and torch cheats", _cheats, 0),
    "gina": ("a test cell unmarked as graded", _unmarked, None),
}


@pytest.fixture(scope="module")
def autograded(synth_root):
    """Each submission autograded by the real nbgrader in the session's temporary course (one student at a
    time, so one that nbgrader stops on does not hide the others); per-cell scores from its gradebook."""
    import subprocess

    from nbgrader.api import Gradebook, MissingEntry

    from coursekit import VENV_BIN, env_with_venv

    use_data(synth_root)
    root = temp_course()
    runs = {}
    for student, (_, make, _) in SUBMISSIONS.items():
        folder = root / "submitted" / student / SLUG
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        make(folder / f"{SLUG}.ipynb")
        runs[student] = subprocess.run([str(VENV_BIN / "nbgrader"), "autograde", SLUG, "--create", "--force",
                                        f"--student={student}"], cwd=root, env=env_with_venv(),
                                       capture_output=True, text=True, timeout=900)
    scores = {}
    with Gradebook(f"sqlite:///{root / 'gradebook.db'}") as gradebook:
        cells = [c for c in gradebook.find_notebook(SLUG, SLUG).grade_cells if c.cell_type == "code"]
        for student in SUBMISSIONS:
            per_cell = {}
            for cell in cells:
                try:
                    per_cell[cell.name] = gradebook.find_grade(cell.name, SLUG, SLUG, student).auto_score or 0
                except MissingEntry:
                    per_cell[cell.name] = None
            scores[student] = per_cell
    yield root, runs, scores
    for student in SUBMISSIONS:    # the course is shared with the other nbgrader tests: leave no submission
        for stage in ("submitted", "autograded", "feedback"):
            shutil.rmtree(root / stage / student, ignore_errors=True)


@pytest.mark.parametrize("student", list(SUBMISSIONS))
def test_faceedu_grade_scores_as_nbgrader_autograde(student, autograded):
    root, runs, nbgrader_scores = autograded
    what, _, expected = SUBMISSIONS[student]
    report = grade(root / "submitted" / student / SLUG / f"{SLUG}.ipynb", timeout=600, cell_timeout=300,
                   source=solution_path(SLUG))
    say(f"{student} ({what}): nbgrader autograde exit {runs[student].returncode}, scores {nbgrader_scores[student]}; "
        f"faceedu grade {report.score:g} / {report.max_score:g}\n{report.table()}")
    if expected is None:   # nbgrader stops on it; faceedu grade says why and runs nothing
        assert runs[student].returncode != 0 and "Inconsistent checksums for cell check_preprocess" in (
            runs[student].stdout + runs[student].stderr)
        assert report.score == 0 and "cannot grade this notebook: check_preprocess" in report.problem
        return
    assert runs[student].returncode == 0, runs[student].stdout + runs[student].stderr
    ours = {e.grade_id: e.score for e in report.exercises if e.kind == "auto"}
    assert ours == nbgrader_scores[student]
    assert report.score == sum(nbgrader_scores[student].values()) == expected
    assert report.max_score == 9 and report.problem == ""
    messages = {e.name: e.message for e in report.exercises}
    if student == "dave":
        text = "\n".join(report.restored)
        for fragment in ("check_face_hair_hat_mask: source edited", "check_phi_matrix: points changed to 100",
                         "check_preprocess: lock changed", "check_preprocess: source edited",
                         "check_parse_attributes: missing"):
            assert fragment in text
        assert "points changed to 100" in report.table()
    if student == "erin":
        assert "copy of faceedu's own" in messages["parse_attributes"]
        assert "copy of faceedu's own" in messages["phi_matrix"]
        assert "replaced" in messages["preprocess"] and "`torch.allclose`" in messages["preprocess"]
    for exercise in report.exercises:   # hidden checks stay hidden: only that one failed, never its message
        if exercise.message.startswith("a hidden check failed"):
            assert "on a " not in exercise.message and "hidden=True" not in exercise.message
