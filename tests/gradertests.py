"""The contract every lesson's graders meet, written once: a lesson's test module defines its CHECKS and
MUTANTS (realistic wrong implementations, next to their exercise) and subclasses GraderContract as
`TestGrader`. The reference solution passes every check (visible and hidden), the released stubs fail
every one, calling faceedu's own implementation is rejected, and every mutant is rejected with a message;
the kill rate is printed."""

from __future__ import annotations

from types import ModuleType
from typing import Callable

import pytest

from coursekit import exercise_functions, release_path, solution_path
from faceedu.grading.core import CheckFailed, ReferenceUsed


def run_checks(checks: dict[str, Callable], exercise: str, fn: Callable) -> str | None:
    """Run the visible then the hidden checks of `exercise`; return the failure message, or None if all passed."""
    try:
        checks[exercise](fn)
        checks[exercise](fn, hidden=True)
    except CheckFailed as failure:
        return str(failure)
    return None


class GraderContract:
    SLUG: str                                  # e.g. "01_vae"
    LESSON: ModuleType                         # faceedu.grading.lessonNN
    CHECKS: dict[str, Callable]                # exercise -> check_<exercise>
    MUTANTS: dict[str, list[Callable]]         # exercise -> wrong implementations

    def pytest_generate_tests(self, metafunc):
        if "mutant" in metafunc.fixturenames:
            cases = self.cases()
            metafunc.parametrize("exercise,mutant", cases, ids=[f"{e}-{m.__name__}" for e, m in cases])
        elif "exercise" in metafunc.fixturenames:
            metafunc.parametrize("exercise", sorted(self.CHECKS))

    def cases(self) -> list[tuple[str, Callable]]:
        return [(exercise, mutant) for exercise, mutants in self.MUTANTS.items() for mutant in mutants]

    def grade(self, exercise: str, fn: Callable) -> str | None:
        return run_checks(self.CHECKS, exercise, fn)

    @pytest.fixture(scope="class")
    @classmethod
    def solutions(cls):
        return exercise_functions(solution_path(cls.SLUG), cls.SLUG)

    @pytest.fixture(scope="class")
    @classmethod
    def stubs(cls):
        return exercise_functions(release_path(cls.SLUG), cls.SLUG)

    def test_every_exercise_has_a_check_and_at_least_three_mutants(self, solutions):
        assert set(solutions) == set(self.CHECKS) == set(self.MUTANTS)
        assert all(len(m) >= 3 for m in self.MUTANTS.values())

    def test_solution_passes_visible_and_hidden(self, exercise, solutions, capsys):
        assert self.grade(exercise, solutions[exercise]) is None
        assert f"✓ {exercise}" in capsys.readouterr().out

    def test_released_stub_fails_with_not_implemented(self, exercise, stubs):
        message = self.grade(exercise, stubs[exercise])
        assert message is not None and "not implemented yet" in message

    def test_calling_the_reference_is_rejected(self, exercise):
        reference = getattr(self.LESSON, exercise)

        def lazy(*args, **kwargs):
            return reference(*args, **kwargs)

        with pytest.raises(ReferenceUsed, match="faceedu's own"):
            self.CHECKS[exercise](lazy)

        def sneaky(*args, **kwargs):  # ... even when the learner swallows the error and falls back
            try:
                return reference(*args, **kwargs)
            except Exception:  # noqa: BLE001
                return None

        with pytest.raises(ReferenceUsed):
            self.CHECKS[exercise](sneaky)
        # and the reference works again afterwards
        assert reference is getattr(self.LESSON, exercise)
        assert not {"blocked", "ReferenceUsed"} & set(reference.__code__.co_names)

    def test_mutant_is_rejected_with_a_message(self, exercise, mutant):
        message = self.grade(exercise, mutant)
        assert message is not None, f"{mutant.__name__} ({mutant.__doc__.strip()}) passed every check"
        assert message.startswith(f"{exercise}") and len(message) > 40

    def test_kill_rate(self, capsys):
        """Summarise the catalogue: every mutant must be rejected."""
        cases = self.cases()
        survivors = [f"{e}:{m.__name__}" for e, m in cases if self.grade(e, m) is None]
        killed = len(cases) - len(survivors)
        with capsys.disabled():
            print(f"\n[course] lesson{self.SLUG[:2]} grader kill rate: {killed}/{len(cases)} mutants rejected "
                  f"({100 * killed / len(cases):.0f}%); per exercise: "
                  + ", ".join(f"{e} {len(m)}" for e, m in self.MUTANTS.items()))
        assert not survivors, f"mutants that survived: {survivors}"
