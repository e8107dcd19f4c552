"""Course machinery: the checks lesson notebooks call (one module per lesson, shared helpers in
:mod:`faceedu.grading.core`), the syllabus (:mod:`faceedu.grading.course`) and `faceedu grade`
(:mod:`faceedu.grading.runner`)."""

import importlib
import importlib.machinery
import re
import sys
from importlib.util import spec_from_file_location
from pathlib import Path
from types import ModuleType

_PACKAGE = Path(__file__).resolve().parents[1]   # the faceedu/ folder this module was loaded from


class _ThisCheckout:
    """Finds the top-level ``faceedu`` package in _PACKAGE and nowhere else (its submodules then come
    from the package's own folder through the standard PathFinder)."""

    @staticmethod
    def find_spec(name, path=None, target=None):  # noqa: ANN001, ANN205 - the importlib protocol
        if name == "faceedu":
            return spec_from_file_location("faceedu", _PACKAGE / "__init__.py",
                                           submodule_search_locations=[str(_PACKAGE)])
        return None


def _private_import(name: str) -> ModuleType:
    """Import `name` with every faceedu module it needs executed anew from the files in _PACKAGE, as
    private module objects: the notebook's own faceedu modules (whatever was rebound in them, or put in
    their place in sys.modules) are neither used nor changed, and sys.modules is left as it was."""
    ours = lambda key: key == "faceedu" or key.startswith("faceedu.")  # noqa: E731
    saved = {key: sys.modules.pop(key) for key in list(sys.modules) if ours(key)}
    finders = sys.meta_path[:]
    sys.meta_path[:] = [_ThisCheckout, importlib.machinery.BuiltinImporter, importlib.machinery.FrozenImporter,
                        importlib.machinery.PathFinder]
    try:
        return importlib.import_module(name)
    finally:
        sys.meta_path[:] = finders
        for key in [key for key in sys.modules if ours(key)]:
            del sys.modules[key]
        sys.modules.update(saved)


def checks(lesson: str) -> ModuleType:
    """The grader module of `lesson` ("lesson04"), loaded afresh - with faceedu's grading core and the
    reference implementations it compares against - from the package's files, so a notebook's test cell
    runs checks that the learner's cells cannot have rebound or patched. Test cells use it as::

        from faceedu.grading import checks
        checks("lesson04").check_generator(generator)

    Each check also refuses to run when torch's comparison helpers or Python's builtins were replaced
    (:func:`faceedu.grading.core.require_intact_runtime`) and rejects a function that is a copy of the
    reference (:func:`faceedu.grading.core.copied_reference`). See the README's "Grading integrity".
    """
    if not isinstance(lesson, str) or not re.fullmatch(r"lesson\d\d", lesson):
        raise ValueError(f"checks() takes a lesson module name like 'lesson04', got {lesson!r}.")
    path = _PACKAGE / "grading" / f"{lesson}.py"
    if not path.is_file():
        raise ValueError(f"No grader module {lesson!r}: expected {path}.")
    return _private_import(f"faceedu.grading.{lesson}")


class _GradingPackage(ModuleType):
    """faceedu.grading's own module type: `checks` is a property of the type, so a notebook cell can
    neither rebind it (``faceedu.grading.checks = ...``), nor delete it, nor shadow it through the
    module's __dict__ - a test cell's ``from faceedu.grading import checks`` always gets the loader above."""

    checks = property(lambda self, _loader=checks: _loader, doc=checks.__doc__)

    def __setattr__(self, name: str, value: object) -> None:
        if name in ("checks", "__class__"):
            raise AttributeError(f"faceedu.grading.{name} cannot be replaced: the test cells rely on it.")
        super().__setattr__(name, value)

    def __delattr__(self, name: str) -> None:
        if name in ("checks", "__class__"):
            raise AttributeError(f"faceedu.grading.{name} cannot be deleted: the test cells rely on it.")
        super().__delattr__(name)


sys.modules[__name__].__class__ = _GradingPackage
