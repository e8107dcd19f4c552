"""What every lesson's checks share: a failure type whose message a learner can act on, a way to call
the learner's function that turns crashes into explanations, comparisons that say where and by how much
two results differ, and a guard that makes faceedu's own reference unreachable while the learner's
code runs.

A lesson's grader module (``lesson00.py``, ``lesson01.py``, ...) writes one ``check_<exercise>(fn,
hidden=False)`` per exercise in this shape::

    def check_phi_matrix(fn, hidden=False):
        c = Check("phi_matrix", fn, hidden, blocked=[phi_matrix])
        attrs = ...                       # fixed and random inputs
        out = c.call(attrs)               # the learner's code runs with the reference blocked
        c.expect_tensor(out, shape=(k, k), dtype=torch.float32)
        c.expect_close(out, phi_matrix(attrs), what="phi", hint="did you centre the columns?")
        c.done()                          # prints "✓ phi_matrix: 7 checks passed"

The visible checks run in the notebook's test cell; ``hidden=True`` adds stricter ones, called from the
cell's ``### BEGIN HIDDEN TESTS`` block that nbgrader strips from the released notebook and restores at
autograde time.
"""

from __future__ import annotations

import builtins
import copy
import dis
import sys
import types
import zlib
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np
import torch

__all__ = [
    "CheckFailed",
    "ReferenceUsed",
    "CopiedReference",
    "Tampered",
    "Check",
    "reference_unreachable",
    "rng",
    "describe",
]


class CheckFailed(AssertionError):
    """A check found a mistake. The message names the exercise, what was expected, what came back, and
    a hint about the likely cause. It subclasses AssertionError so nbgrader scores the cell as failed."""


class ReferenceUsed(CheckFailed):
    """The learner's function called faceedu's own implementation of the exercise."""


class CopiedReference(CheckFailed):
    """The learner's function is a copy of faceedu's own implementation (same code, whatever the names)."""


class Tampered(CheckFailed):
    """The notebook replaced something the checks rely on (torch's comparisons, Python's builtins)."""


# --- the reference guard --------------------------------------------------------------------------
# Swapping a function's code object (rather than a module attribute) blocks every way of reaching it:
# `faceedu.x.f(...)`, `from faceedu.x import f`, an alias taken before the check, a functools.partial.

_reference_calls: list[str] = []  # names of blocked references called during the current student call

# This module may be loaded more than once (faceedu.grading.checks loads a private copy for every test
# cell); a blocked reference finds *this* copy's call list and error type under a key no other copy shares.
_SELF_KEY = f"_faceedu_grading_core@{id(_reference_calls):x}"
sys.modules[_SELF_KEY] = types.SimpleNamespace(_reference_calls=_reference_calls,  # type: ignore[assignment]
                                               ReferenceUsed=ReferenceUsed)

_BLOCKED_TEMPLATE = '''
def {name}(*args, **kwargs):
    core = __import__("sys").modules[{key!r}]
    core._reference_calls.append({qualname!r})
    raise core.ReferenceUsed({message!r})
'''


def _blocked_code(target: Callable, exercise: str) -> Any:
    qualname = f"{target.__module__}.{target.__qualname__}"
    message = (
        f"{exercise}: your code called faceedu's own `{qualname}`. The point of this exercise is to "
        f"write it yourself: remove that call (and its import) and implement the steps in the notebook."
    )
    namespace: dict[str, Any] = {}
    exec(_BLOCKED_TEMPLATE.format(name=target.__name__, key=_SELF_KEY, qualname=qualname, message=message), namespace)
    return namespace[target.__name__].__code__


def _functions_of(obj: Any) -> list[Any]:
    """The plain Python functions to block for `obj`: the function itself, or a class's methods."""
    if isinstance(obj, type):
        return [v for v in vars(obj).values() if hasattr(v, "__code__")]
    obj = getattr(obj, "__func__", obj)
    obj = getattr(obj, "__wrapped__", obj)
    if not hasattr(obj, "__code__"):
        raise TypeError(f"cannot block {obj!r}: not a Python function or class")
    return [obj]


def _twins(fn: Any) -> list[Any]:
    """`fn` and, when the grader runs on a private copy of faceedu (see faceedu.grading.checks), the
    same function in the modules the learner's notebook imported: both must be unreachable."""
    found = [fn]
    owner: Any = sys.modules.get(getattr(fn, "__module__", None) or "")
    for part in getattr(fn, "__qualname__", "").split("."):
        owner = getattr(owner, part, None)
    owner = getattr(owner, "__func__", owner)
    owner = getattr(owner, "__wrapped__", owner)
    if owner is not None and owner is not fn and isinstance(owner, types.FunctionType) and not owner.__closure__:
        found.append(owner)
    return found


@contextmanager
def reference_unreachable(references: Iterable[Any], exercise: str) -> Iterator[None]:
    """While the block runs, calling any of `references` (functions or classes) raises ReferenceUsed.
    Everything is restored on exit, whatever happens inside."""
    saved: list[tuple[Any, Any]] = []
    try:
        for ref in references:
            for fn in [twin for own in _functions_of(ref) for twin in _twins(own)]:
                if fn.__closure__:  # a closure's code cannot be swapped; such references are not blockable
                    raise TypeError(f"cannot block {fn.__qualname__}: it is a closure")
                saved.append((fn, fn.__code__))
                fn.__code__ = _blocked_code(fn, exercise)
        yield
    finally:
        for fn, code in reversed(saved):
            fn.__code__ = code


# --- copies of the reference -------------------------------------------------------------------------
# A copy made with inspect.getsource + exec (or pasted, or with every variable renamed) compiles to the
# same instructions as the reference. Three tiers, so that a learner who writes a short function the
# way the package does is not accused of copying it:
#   verbatim - same instructions, names, local names and docstring as a package function (the package's
#              docstrings are not in the notebooks): any function of _VERBATIM_MIN instructions or more;
#   renamed  - same instructions and global/attribute names, any local names: _STRICT_MIN or more;
#   loose    - same instructions, any names at all: _LOOSE_MIN or more.
# (The solution notebooks' own dice and orthogonalise, written apart from the package, are 48 and 30
# instructions long and identical to the package's bar the names: hence the minimum of 50.)

_VERBATIM_MIN = 8
_STRICT_MIN = 50
_LOOSE_MIN = 90


_FAST = {"LOAD_FAST", "STORE_FAST", "DELETE_FAST", "LOAD_CLOSURE", "LOAD_DEREF", "STORE_DEREF", "MAKE_CELL"}
_SKIP = {"CACHE", "NOP", "EXTENDED_ARG", "RESUME", "PUSH_NULL"}
_JUMPS = set(dis.hasjrel) | set(dis.hasjabs)


def _fingerprint(code: types.CodeType, names: bool) -> tuple:
    """The instructions of `code`, without what a copy may change: local variable names (only their
    order counts), the docstring, line numbers, and how the compiler chose to load a method (a
    function compiled on its own in a cell uses LOAD_METHOD where its module used LOAD_ATTR)."""
    out = []
    for ins in dis.get_instructions(code):
        op = "LOAD_ATTR" if ins.opname == "LOAD_METHOD" else ins.opname
        if op in _SKIP:
            continue
        if ins.opcode in _JUMPS:
            arg: Any = None
        elif isinstance(ins.argval, types.CodeType):
            arg = _fingerprint(ins.argval, names)
        elif op in _FAST:
            arg = ins.arg
        elif ins.opcode in dis.hasname:
            arg = ins.argval if names else None
        elif ins.opcode in dis.hasconst or op == "KW_NAMES":
            arg = repr(ins.argval)
        elif op in ("PRECALL", "CALL"):
            arg = ins.arg
        else:
            arg = ins.arg
        out.append((op, arg))
    return (code.co_argcount, code.co_kwonlyargcount, tuple(out))


def _instructions(code: types.CodeType) -> int:
    return len(_fingerprint(code, False)[2])


def _codes(obj: Any) -> list[tuple[str, Any]]:
    """(qualified name, function) for a function or every method of a class."""
    try:
        functions = _functions_of(obj)
    except TypeError:
        return []
    return [(f"{getattr(f, '__module__', '?')}.{f.__qualname__}", f) for f in functions if hasattr(f, "__code__")]


def copied_reference(candidate: Any, references: Iterable[Any]) -> str | None:
    """The qualified name of the reference that `candidate` (a function or class) is a copy of, or None."""
    mine = _codes(candidate)
    if not mine:
        return None
    theirs = [(name, fn) for ref in references for name, fn in _codes(ref)]
    for _, fn in mine:
        strict, loose = _fingerprint(fn.__code__, True), _fingerprint(fn.__code__, False)
        for name, ref in theirs:
            size = _instructions(ref.__code__)
            if (size >= _VERBATIM_MIN and not ref.__module__.startswith("faceedu.grading") and ref.__doc__
                    and fn.__doc__ == ref.__doc__ and fn.__code__.co_varnames == ref.__code__.co_varnames
                    and strict == _fingerprint(ref.__code__, True)):
                return name
            if size >= _STRICT_MIN and strict == _fingerprint(ref.__code__, True):
                return name
            if size >= _LOOSE_MIN and loose == _fingerprint(ref.__code__, False):
                return name
    return None


# --- the runtime the checks rely on ---------------------------------------------------------------------
# The comparisons run on torch, numpy and Python's builtins. A notebook that replaced torch.allclose with
# `lambda *a, **k: True` (or Tensor.__bool__, or builtins.isinstance) would pass anything, so before a
# check runs: the comparison helpers must be the C builtins of their names, and no function of torch,
# numpy or builtins may be Python code from outside those libraries.

_C_HELPERS = {
    "torch": ("isclose", "allclose", "equal", "eq", "ne", "isnan", "isfinite", "nonzero", "all", "any", "abs",
              "sum", "mean", "where", "tensor", "as_tensor", "is_tensor"),
    "torch.Tensor": ("all", "any", "sum", "mean", "abs", "item", "tolist", "to", "detach", "clone", "double",
                     "float", "isnan", "nonzero", "numel", "dim", "__eq__", "__ne__", "__lt__", "__gt__",
                     "__le__", "__ge__", "__sub__", "__invert__"),
    "builtins": ("isinstance", "issubclass", "len", "abs", "all", "any", "getattr", "hasattr", "callable",
                 "print", "repr", "max", "min", "sum", "round", "sorted", "zip", "__import__", "exec"),
}
_BUILTIN_TYPES = ("bool", "int", "float", "str", "tuple", "list", "dict", "set", "type", "object", "range")


def _library_dirs() -> tuple[str, ...]:
    import os

    # torch's and numpy's site-packages (their decorators live in sibling packages) and the standard library
    return tuple(os.path.dirname(os.path.dirname(m.__file__)) + os.sep for m in (torch, np)) + (
        os.path.dirname(types.__file__) + os.sep,)


def tampered_runtime() -> list[str]:
    """What the notebook replaced among the things the checks rely on (empty when nothing was)."""
    problems = []
    owners = {"torch": torch, "torch.Tensor": torch.Tensor, "builtins": builtins}
    for owner_name, names in _C_HELPERS.items():
        owner = owners[owner_name]
        for name in names:
            value = getattr(owner, name, None)
            if isinstance(value, (types.BuiltinFunctionType, types.MethodDescriptorType,
                                  types.WrapperDescriptorType, types.MethodWrapperType)):
                ok = value.__name__ == name
            elif isinstance(value, types.FunctionType):   # torch's own Python wrappers (torch.is_tensor)
                ok = value.__name__ == name and value.__code__.co_filename.startswith(_library_dirs())
            else:                                          # zip, sorted's friends that are types
                ok = isinstance(value, type) and value.__module__ == "builtins" and value.__name__ == name
            if not ok:
                problems.append(f"{owner_name}.{name}")
    for name in _BUILTIN_TYPES:
        value = getattr(builtins, name, None)
        if not (isinstance(value, type) and value.__module__ == "builtins" and value.__name__ == name):
            problems.append(f"builtins.{name}")
    roots = _library_dirs()
    for owner_name, owner in (("torch", torch), ("torch.nn.functional", torch.nn.functional),
                              ("torch.Tensor", torch.Tensor), ("torch.nn.Module", torch.nn.Module),
                              ("numpy", np), ("builtins", builtins)):
        for name, value in list(vars(owner).items()):
            value = getattr(value, "__func__", value)
            if isinstance(value, types.FunctionType) and not value.__code__.co_filename.startswith(roots):
                problems.append(f"{owner_name}.{name}")
    return sorted(set(problems))


def require_intact_runtime(exercise: str) -> None:
    """Raise Tampered if the notebook replaced a function the checks rely on."""
    __tracebackhide__ = True
    problems = tampered_runtime()
    if problems:
        shown = ", ".join(f"`{p}`" for p in problems[:4]) + (f" and {len(problems) - 4} more" if len(problems) > 4 else "")
        raise Tampered(f"{exercise}: this notebook replaced {shown}, which the checks rely on. Remove the code that "
                       f"assigns to torch, numpy or Python's builtins, restart the kernel and run the notebook again.")


# --- helpers ----------------------------------------------------------------------------------------


def rng(exercise: str, hidden: bool = False) -> torch.Generator:
    """A generator seeded from the exercise name: the same random inputs on every run (so a grade is
    reproducible), different ones for the hidden checks."""
    return torch.Generator().manual_seed(zlib.crc32(f"{exercise}:{hidden}".encode()))


def describe(value: Any, limit: int = 80) -> str:
    """A short description of a value for a failure message: shapes and dtypes for arrays, a clipped
    repr for the rest."""
    if isinstance(value, torch.Tensor):
        return f"tensor(shape={tuple(value.shape)}, dtype={value.dtype})"
    if isinstance(value, np.ndarray):
        return f"array(shape={value.shape}, dtype={value.dtype})"
    if isinstance(value, (list, tuple)) and len(value) > 4:
        return f"{type(value).__name__} of {len(value)} items"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _snapshot(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    return copy.deepcopy(value)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and bool(torch.equal(a, b))
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.shape == b.shape and bool(np.array_equal(a, b))
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 - incomparable objects: do not claim a mutation
        return True


class Check:
    """One run of one exercise's checks: calls the learner's function safely, counts passed checks and
    raises CheckFailed with an actionable message at the first failure."""

    def __init__(self, exercise: str, fn: Any, hidden: bool = False, blocked: Sequence[Any] = ()):
        __tracebackhide__ = True
        self.exercise = exercise
        self.fn = fn
        self.hidden = hidden
        self.blocked = list(blocked)
        self.passed = 0
        self.rng = rng(exercise, hidden)
        if not callable(fn):
            self.fail(f"expected the function `{exercise}`, got {describe(fn)}. Pass the function itself, "
                      f"e.g. check_{exercise}({exercise}).")
        require_intact_runtime(exercise)
        self._reject_copy(fn)

    def _reject_copy(self, candidate: Any) -> None:
        __tracebackhide__ = True
        source = copied_reference(candidate, self.blocked)
        if source:
            raise CopiedReference(
                f"{self.exercise}: your function is a copy of faceedu's own `{source}` (the same code, whatever "
                f"the variable names). Copying the course's implementation (with inspect.getsource, or by pasting "
                f"it) scores nothing: write the exercise yourself from the notebook's explanation.")

    # -- running the learner's code --

    def call(self, *args: Any, **kwargs: Any) -> Any:
        """Call the learner's function on copies of the inputs with the references blocked. A crash, a
        missing implementation, a call to the reference or an input modified in place becomes a
        CheckFailed that says which input caused it."""
        __tracebackhide__ = True
        originals = [_snapshot(a) for a in args]
        shown = ", ".join([describe(a) for a in args] + [f"{k}={describe(v)}" for k, v in kwargs.items()])
        _reference_calls.clear()
        try:
            with reference_unreachable(self.blocked, self.exercise):
                out = self.fn(*args, **kwargs)
        except (ReferenceUsed, Tampered):
            raise
        except NotImplementedError:
            raise CheckFailed(
                f"{self.exercise} is not implemented yet: replace the placeholder line that raises "
                f"NotImplementedError with your code, run that cell, then this check again."
            ) from None
        except CheckFailed:
            raise
        except Exception as error:  # noqa: BLE001 - any crash in learner code becomes an explanation
            first = str(error).strip().splitlines()[0] if str(error).strip() else ""
            raise CheckFailed(
                f"{self.exercise}({shown}) raised {type(error).__name__}: {first} — run it on this input "
                f"yourself to see where (the traceback above ends in your code)."
            ) from error
        if isinstance(out, torch.nn.Module) and not type(out).__module__.startswith(("torch.", "faceedu.")):
            self._reject_copy(type(out))       # a model whose class is a copy of the reference's
        require_intact_runtime(self.exercise)  # ... or that patched torch while it ran
        if _reference_calls:  # the learner caught our ReferenceUsed and carried on: still not allowed
            raise ReferenceUsed(f"{self.exercise}: your code called faceedu's own `{_reference_calls[0]}`. "
                                f"Write the exercise yourself instead of calling the course's implementation.")
        for i, (before, after) in enumerate(zip(originals, args)):
            if not _same(before, after):
                self.fail(f"your function changed its input (argument {i + 1}, {describe(before)}) in place. "
                          f"Work on a copy (e.g. `x = x.clone()`) or build a new tensor: the caller still "
                          f"needs the original.")
        return out

    # -- expectations --

    def fail(self, message: str) -> None:
        __tracebackhide__ = True
        raise CheckFailed(f"{self.exercise}: {message}")

    def expect(self, condition: Any, message: str) -> None:
        """Count a passed check, or fail with `message` (what is wrong and what to try)."""
        __tracebackhide__ = True
        if not bool(condition):
            self.fail(message)
        self.passed += 1

    def expect_type(self, value: Any, kind: type | tuple[type, ...], what: str) -> None:
        __tracebackhide__ = True
        names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        self.expect(isinstance(value, kind), f"{what} should be a {names}, got {describe(value)}.")

    def expect_tensor(self, value: Any, *, shape: Sequence[int] | None = None,
                      dtype: torch.dtype | Sequence[torch.dtype] | None = None, what: str = "the result",
                      hint: str = "") -> None:
        """The value is a torch.Tensor with this shape and one of these dtypes."""
        __tracebackhide__ = True
        self.expect_type(value, torch.Tensor, what)
        if shape is not None:
            self.expect(tuple(value.shape) == tuple(shape),
                        f"{what} should have shape {tuple(shape)}, got {tuple(value.shape)}. {hint}".rstrip())
        if dtype is not None:
            dtypes = (dtype,) if isinstance(dtype, torch.dtype) else tuple(dtype)
            wanted = " or ".join(str(d) for d in dtypes)
            self.expect(value.dtype in dtypes, f"{what} should have dtype {wanted}, got {value.dtype}. {hint}".rstrip())

    def expect_close(self, actual: torch.Tensor, expected: torch.Tensor, *, what: str, atol: float = 1e-5,
                     rtol: float = 1e-4, hint: str = "") -> None:
        """Element-wise closeness; on failure, say where the largest difference is and how large."""
        __tracebackhide__ = True
        actual_f = actual.detach().to(torch.float64)
        expected_f = expected.detach().to(torch.float64)
        if actual_f.shape != expected_f.shape:
            self.fail(f"{what} should have shape {tuple(expected_f.shape)}, got {tuple(actual_f.shape)}. {hint}".rstrip())
        if torch.isnan(actual_f).any() and not torch.isnan(expected_f).any():
            index = tuple(int(i) for i in torch.nonzero(torch.isnan(actual_f))[0])
            self.fail(f"{what} contains NaN (first at index {index}); no NaN was expected. {hint}".rstrip())
        ok = torch.isclose(actual_f, expected_f, atol=atol, rtol=rtol, equal_nan=True)
        if not bool(ok.all()) and ok.numel() == 1:   # one number: say it plainly
            got, want = actual_f.reshape(()).item(), expected_f.reshape(()).item()
            self.fail(f"{what} should be {want:.6g}, got {got:.6g} (off by {abs(got - want):.3g}, "
                      f"{'too high' if got > want else 'too low'}). {hint}".rstrip())
        if not bool(ok.all()):
            diff = (actual_f - expected_f).abs().nan_to_num(nan=float("inf"))
            flat = int(diff.argmax())
            index = tuple(int(i) for i in np.unravel_index(flat, tuple(diff.shape))) if diff.dim() else ()
            self.fail(f"{what}: {int((~ok).sum())} of {ok.numel()} entries are wrong; the largest "
                      f"difference is at index {index}: expected {expected_f[index].item():.6g}, got "
                      f"{actual_f[index].item():.6g}. {hint}".rstrip())
        self.passed += 1

    def expect_equal(self, actual: Any, expected: Any, *, what: str, hint: str = "") -> None:
        __tracebackhide__ = True
        if isinstance(expected, torch.Tensor):
            if not isinstance(actual, torch.Tensor) or actual.shape != expected.shape:
                self.fail(f"{what} should be {describe(expected)}, got {describe(actual)}. {hint}".rstrip())
            wrong = actual != expected
            if bool(wrong.any()):
                index = tuple(int(i) for i in torch.nonzero(wrong)[0])
                self.fail(f"{what} differs at {int(wrong.sum())} of {wrong.numel()} entries; first at index "
                          f"{index}: expected {expected[index].item()}, got {actual[index].item()}. {hint}".rstrip())
            self.passed += 1
        else:
            self.expect(actual == expected, f"{what} should be {describe(expected)}, got {describe(actual)}. {hint}".rstrip())

    def expect_raises(self, error: type[BaseException] | tuple[type[BaseException], ...], message: str,
                      *args: Any, **kwargs: Any) -> None:
        """Calling the learner's function on these inputs must raise `error` (a clear error beats a
        silently wrong result)."""
        __tracebackhide__ = True
        try:
            self.call(*args, **kwargs)
        except CheckFailed as failure:
            if isinstance(failure, ReferenceUsed) or not isinstance(failure.__cause__, error):
                if failure.__cause__ is None or isinstance(failure, ReferenceUsed):
                    raise
                self.fail(f"{message} It raised {type(failure.__cause__).__name__} instead.")
        else:
            self.fail(message)
        self.passed += 1

    def done(self) -> None:
        """Print the one-line success summary that the learner sees under the check cell."""
        kind = "hidden" if self.hidden else "visible"
        print(f"✓ {self.exercise}: all {self.passed} {kind} checks passed")
