"""Course machinery: the checks lesson notebooks call (one module per lesson, shared helpers in
:mod:`faceedu.grading.core`), the syllabus (:mod:`faceedu.grading.course`) and `faceedu grade`
(:mod:`faceedu.grading.runner`)."""

from importlib.util import module_from_spec, spec_from_file_location
from pathlib import Path
from types import ModuleType


def checks(lesson: str) -> ModuleType:
    """The grader module of `lesson` ("lesson04"), loaded afresh from its file, so a notebook's test cell
    runs checks that the learner's cells cannot have rebound. Test cells use it as::

        from faceedu.grading import checks
        checks("lesson04").check_generator(generator)
    """
    path = Path(__file__).with_name(f"{lesson}.py")
    if not path.is_file():
        raise ValueError(f"No grader module {lesson!r}: expected {path}.")
    spec = spec_from_file_location(f"faceedu.grading._fresh_{lesson}", path)
    module = module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
