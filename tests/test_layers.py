"""The package's layers: no module imports from a layer above it (issue 10, "the house"), so data fixes
reach every model, lesson and report through one path and no import cycle can form. Read from the source
(every import, lazy ones in functions included), not by importing it."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "faceedu"

# Lowest first. A module may import its own layer and those below it.
LAYERS: list[tuple[str, ...]] = [
    ("faceedu", "faceedu.data.layout"),
    ("faceedu.data",),                                           # loaders, SynthFaces, the one tensor entry point
    ("faceedu.losses", "faceedu.viz", "faceedu.latent", "faceedu.weights"),
    ("faceedu.models",),
    ("faceedu.metrics",),
    ("faceedu.train", "faceedu.editing", "faceedu.bench"),      # training, and reports on trained models
    ("faceedu.grading",),                                        # lessons' checks, site, runner
    ("faceedu.tour", "faceedu.cli"),
]

# Known upward imports being removed, each with who removes it; the test fails on any other.
KNOWN: dict[tuple[str, str], str] = {}


def layer(module: str) -> int:
    """The index in LAYERS of the longest prefix naming `module`."""
    best, depth = None, -1
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and prefix.count(".") > depth:
                best, depth = index, prefix.count(".")
    assert best is not None, f"{module} is in no layer: add it to LAYERS"
    return best


def imports(path: Path) -> set[str]:
    """The faceedu modules `path` imports (`from faceedu import x` counts as faceedu.x)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "faceedu":
            if node.module == "faceedu":
                found.update(f"faceedu.{alias.name}" for alias in node.names)
            else:
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "faceedu")
    return found


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_no_module_imports_from_a_layer_above_it():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = module_name(path)
        for target in sorted(imports(path)):
            if layer(target) > layer(name) and (name, target) not in KNOWN:
                upward.append(f"{name} (layer {layer(name)}) imports {target} (layer {layer(target)})")
    assert not upward, "imports from a layer above:\n  " + "\n  ".join(upward)


def test_the_layer_rule_sees_an_upward_import(tmp_path):
    """The checker itself: an upward import (lazy, inside a function) is found."""
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from faceedu.cli import main\n    from faceedu import editing\n")
    assert imports(source) == {"faceedu.cli", "faceedu.editing"}
    assert layer("faceedu.cli") > layer("faceedu.grading.runner") > layer("faceedu.data.tensors")
    assert layer("faceedu.data.layout") < layer("faceedu.data.tensors")


def test_the_known_exceptions_still_exist():
    """An exception that is fixed must leave KNOWN, so it cannot come back unnoticed."""
    for name, target in KNOWN:
        path = PACKAGE.parent / (name.replace(".", "/") + ".py")
        assert target in imports(path), f"{name} no longer imports {target}: remove it from KNOWN"
