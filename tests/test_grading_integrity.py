"""Grading integrity, for every ready lesson (its grader and its tests/test_grading_lessonNN.py, so a new
lesson gets these tests from its first commit): the cheats that beat the autograder before
`faceedu.grading.checks` existed, and their obvious variants, no longer win.

Each test plays the learner's kernel: it does what a notebook cell could do (rebind the check functions or
the grading core, put fakes into sys.modules, make the references return the wrong answers, replace
torch's comparisons, copy the reference with inspect.getsource + exec, rename its variables), then runs
a test cell's call, ``checks("lessonNN").check_<exercise>(fn)`` and its hidden twin, on a realistic
wrong implementation (the lesson's first mutant for that exercise): it must still fail."""

from __future__ import annotations

import ast
import builtins
import importlib
import inspect
import sys
import textwrap
import types

import pytest
import torch

import faceedu.grading
from faceedu.grading import checks, core
from faceedu.grading.course import LESSONS

READY = [entry for entry in LESSONS if entry.status == "ready"]


def _contract(entry):
    """The lesson's TestGrader (tests/test_grading_lessonNN.py): its grader module, checks and mutants."""
    return importlib.import_module(f"test_grading_lesson{entry.number:02d}").TestGrader


def _case_iter():
    for entry in READY:
        contract = _contract(entry)
        for exercise in sorted(contract.CHECKS):
            yield pytest.param(entry, exercise, id=f"lesson{entry.number:02d}-{exercise}")


def _cases():
    return list(_case_iter())


def _name(entry) -> str:
    return f"lesson{entry.number:02d}"


def _references(grader) -> tuple:
    """What the grader blocks: its REFERENCES, and every module-level tuple of functions or classes (a
    grader may keep one per group of exercises, as lesson 05's DECODE, LOSSES, ...)."""
    found = list(getattr(grader, "REFERENCES", ()))
    for value in vars(grader).values():
        if isinstance(value, tuple) and value and all(callable(v) and not isinstance(v, str) for v in value):
            found += [v for v in value if v not in found]
    return tuple(found)


def _test_cell(entry, exercise, fn) -> str | None:
    """What a lesson's test cell runs (visible, then hidden): the failure message, or None if it passed."""
    try:
        getattr(checks(_name(entry)), f"check_{exercise}")(fn)
        getattr(checks(_name(entry)), f"check_{exercise}")(fn, hidden=True)
    except AssertionError as failure:   # CheckFailed of the private copy of the core is an AssertionError
        return str(failure)
    return None


def _probe(entry, exercise):
    mutant = _contract(entry).MUTANTS[exercise][0]
    assert _test_cell(entry, exercise, mutant) is not None, "the probe must be wrong to begin with"
    return mutant


@pytest.mark.parametrize("entry,exercise", _cases())
def test_rebinding_the_check_functions_and_the_core_does_not_pass_a_wrong_answer(entry, exercise, monkeypatch):
    mutant = _probe(entry, exercise)
    grader = _contract(entry).LESSON
    noop = lambda *args, **kwargs: None  # noqa: E731
    # cheat 1 of the issue: the check functions replaced from a solution cell, before the test cells run
    for name in dir(grader):
        if name.startswith("check_"):
            monkeypatch.setattr(grader, name, noop)
    # ... and the grading core itself: every expectation a no-op, failures never raised
    for name in ("expect", "expect_close", "expect_equal", "expect_tensor", "expect_type", "expect_raises", "fail"):
        monkeypatch.setattr(core.Check, name, noop)
    monkeypatch.setattr(core, "CheckFailed", type("Never", (Exception,), {}))
    message = _test_cell(entry, exercise, mutant)
    assert message is not None and message.startswith(exercise)


@pytest.mark.parametrize("entry,exercise", _cases())
def test_fake_modules_in_sys_modules_do_not_pass_a_wrong_answer(entry, exercise, monkeypatch):
    mutant = _probe(entry, exercise)
    grader = _contract(entry).LESSON
    fake = types.ModuleType(grader.__name__)
    for name in dir(grader):
        setattr(fake, name, (lambda *args, **kwargs: None) if name.startswith("check_") else getattr(grader, name))
    fake_core = types.ModuleType("faceedu.grading.core")
    fake_core.Check = type("Check", (), {"__init__": lambda self, *a, **k: None, "__getattr__": lambda self, n: (lambda *a, **k: None)})
    monkeypatch.setitem(sys.modules, grader.__name__, fake)
    monkeypatch.setitem(sys.modules, "faceedu.grading.core", fake_core)
    message = _test_cell(entry, exercise, mutant)
    assert message is not None and message.startswith(exercise)
    assert sys.modules[grader.__name__] is fake, "the notebook's sys.modules is left as the notebook made it"


@pytest.mark.parametrize("entry,exercise", _cases())
def test_references_patched_to_the_wrong_answer_do_not_pass_it(entry, exercise, monkeypatch):
    """A cell that makes faceedu's own implementation compute the mutant's answer, so that reference and
    learner agree: the checks compare against a private copy of the reference, loaded from its file."""
    mutant = _probe(entry, exercise)
    grader = _contract(entry).LESSON
    monkeypatch.setattr(grader, exercise, mutant)
    for ref in _references(grader):
        owner = sys.modules.get(getattr(ref, "__module__", ""))
        if isinstance(ref, types.FunctionType) and getattr(owner, ref.__name__, None) is ref:
            monkeypatch.setattr(owner, ref.__name__, mutant)
    message = _test_cell(entry, exercise, mutant)
    assert message is not None and message.startswith(exercise)


ALWAYS_TRUE = [
    ("torch.allclose", torch, "allclose", lambda *a, **k: True),
    ("torch.isclose", torch, "isclose", lambda a, b, **k: torch.ones_like(torch.as_tensor(a), dtype=torch.bool)),
    ("torch.equal", torch, "equal", lambda *a, **k: True),
    ("torch.isclose", torch, "isclose", torch.eq),                     # a builtin under the wrong name
    ("torch.Tensor.all", torch.Tensor, "all", lambda self, *a, **k: torch.tensor(True)),
    ("torch.Tensor.__bool__", torch.Tensor, "__bool__", lambda self: True),
    ("builtins.isinstance", builtins, "isinstance", lambda *a: True),
    ("builtins.bool", builtins, "bool", type("bool", (), {})),
]


@pytest.mark.parametrize("entry", READY, ids=lambda e: f"lesson{e.number:02d}")
@pytest.mark.parametrize("shown,owner,name,fake", ALWAYS_TRUE, ids=[f"{c[0]}-{i}" for i, c in enumerate(ALWAYS_TRUE)])
def test_replaced_comparisons_and_builtins_are_refused(entry, shown, owner, name, fake, monkeypatch):
    contract = _contract(entry)
    exercise = sorted(contract.CHECKS)[0]
    mutant = _probe(entry, exercise)
    with monkeypatch.context() as patch:
        patch.setattr(owner, name, fake)
        try:
            message = _test_cell(entry, exercise, mutant)
        except Exception as error:  # noqa: BLE001 - the test cell errors: no points either
            message = f"{type(error).__name__}: {error}"
    assert message is not None, f"replacing {shown} passed a wrong answer"
    if owner is not builtins:   # a replaced builtin breaks so much that the cell may just crash: no points
        assert f"`{shown}`" in message and "replaced" in message, message


class _Rename(ast.NodeTransformer):
    """Rename every argument and local variable of a function: `mu` -> `v0`, ... (a copy in disguise)."""

    def __init__(self, names: set[str]):
        self.map = {name: f"renamed_{i}" for i, name in enumerate(sorted(names))}

    def visit_Name(self, node):  # noqa: N802 - ast's API
        node.id = self.map.get(node.id, node.id)
        return node

    def visit_arg(self, node):  # noqa: N802
        node.arg = self.map.get(node.arg, node.arg)
        return node


def _locals_of(tree: ast.FunctionDef) -> set[str]:
    names = {a.arg for a in ast.walk(tree.args) if isinstance(a, ast.arg)}
    names |= {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    return names


def _copies(fn, module):
    """The reference copied as a learner would: inspect.getsource + exec, and the same with every
    variable renamed (and the docstring dropped)."""
    source = textwrap.dedent(inspect.getsource(fn))
    plain: dict = dict(vars(module))
    exec(compile(source, "<copied in a notebook cell>", "exec"), plain)
    tree = ast.parse(source)
    func = tree.body[0]
    if ast.get_docstring(func) is not None:
        func.body = func.body[1:] or [ast.Pass()]
    tree = ast.fix_missing_locations(_Rename(_locals_of(func)).visit(tree))
    renamed: dict = dict(vars(module))
    exec(compile(tree, "<renamed in a notebook cell>", "exec"), renamed)
    return plain[fn.__name__], renamed[fn.__name__]


@pytest.mark.parametrize("entry,exercise", _cases())
def test_a_copy_of_the_reference_is_rejected(entry, exercise):
    grader = _contract(entry).LESSON
    reference = getattr(grader, exercise)
    size = core._instructions(reference.__code__)
    plain, renamed = _copies(reference, grader)
    # a reference that delegates to the package's own function is rejected as a call of it; a short one
    # (under core._STRICT_MIN instructions) only as a verbatim copy of a documented package function (its
    # docstring is not in the notebook): a learner may well write four lines the way the package does
    expect_plain = size >= core._STRICT_MIN or (not reference.__module__.startswith("faceedu.grading")
                                                 and bool(reference.__doc__))
    for copy, expected in ((plain, expect_plain), (renamed, size >= core._STRICT_MIN)):
        message = _test_cell(entry, exercise, copy)
        if expected:
            assert message is not None and "faceedu's own" in message, message
        if expected and size >= core._VERBATIM_MIN and "your code called" not in (message or ""):
            assert "is a copy of faceedu's own" in message and "inspect.getsource" in message


@pytest.mark.parametrize("entry", READY, ids=lambda e: f"lesson{e.number:02d}")
def test_every_substantial_reference_is_recognised_when_copied(entry):
    """Copies of the package's own implementations (faceedu.losses.ssim, faceedu.editing.encode, ...):
    the plain and the renamed copy are both recognised, by the grader's list of references."""
    grader = _contract(entry).LESSON
    functions = [f for ref in _references(grader) for _, f in core._codes(ref) if "." not in f.__qualname__]
    substantial = [f for f in functions if core._instructions(f.__code__) >= core._STRICT_MIN
                   or (core._instructions(f.__code__) >= core._VERBATIM_MIN and f.__doc__
                       and not f.__module__.startswith("faceedu.grading"))]
    assert substantial
    for fn in substantial:
        plain, renamed = _copies(fn, sys.modules[fn.__module__])
        assert core.copied_reference(plain, _references(grader)) is not None, fn.__qualname__
        if core._instructions(fn.__code__) >= core._STRICT_MIN:
            assert core.copied_reference(renamed, _references(grader)) is not None, fn.__qualname__


def test_an_independent_solution_is_not_called_a_copy():
    """The learner's own solutions of every ready lesson (the solution notebooks, written apart from the
    package) are not mistaken for copies."""
    from coursekit import exercise_functions, solution_path

    for entry in READY:
        grader = _contract(entry).LESSON
        for exercise, fn in exercise_functions(solution_path(entry.slug), entry.slug).items():
            assert core.copied_reference(fn, _references(grader)) is None, (entry.slug, exercise)


def test_the_loader_cannot_be_rebound_from_a_cell(monkeypatch):
    real = faceedu.grading.checks
    with pytest.raises(AttributeError, match="cannot be replaced"):
        faceedu.grading.checks = lambda lesson: types.SimpleNamespace()
    with pytest.raises(AttributeError, match="cannot be deleted"):
        del faceedu.grading.checks
    with pytest.raises(AttributeError, match="cannot be replaced"):
        faceedu.grading.__class__ = types.ModuleType
    monkeypatch.setitem(vars(faceedu.grading), "checks", lambda lesson: types.SimpleNamespace())
    from faceedu.grading import checks as imported   # what a test cell does

    assert imported is real


def test_the_reference_is_blocked_in_the_notebooks_modules_too():
    """The checks run on a private copy of faceedu; the learner's code calls the notebook's copy of the
    reference, which must be unreachable as well (also when the learner swallows the error)."""
    from faceedu.data.stats import phi_matrix

    def sneaky(attrs):
        try:
            return phi_matrix(attrs)
        except Exception:  # noqa: BLE001
            return None

    message = _test_cell(READY[0], "phi_matrix", sneaky)
    assert message is not None and "faceedu's own" in message
    assert not {"core", "ReferenceUsed"} & set(phi_matrix.__code__.co_names)   # restored afterwards


def test_checks_rejects_a_bad_lesson_name():
    with pytest.raises(ValueError, match="lesson04"):
        checks("../cli")
    with pytest.raises(ValueError, match="No grader module"):
        checks("lesson99")
