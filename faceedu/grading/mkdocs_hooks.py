"""mkdocs hooks for the course website (mkdocs.yml: `hooks: [faceedu/grading/mkdocs_hooks.py]`).

- the syllabus table on the home page and the API reference are written from the code (LESSONS and
  the faceedu package), so they cannot drift from it;
- a planned lesson gets a generated page; a ready lesson must have its notebook page, built by
  `python -m faceedu.grading.site` (`make docs` does it), and that page must hold no error output;
- mkdocs-jupyter's empty MathJax <script src=""> and nbconvert's CDN Mermaid loader are removed: math
  is rendered by the local KaTeX copy.
"""

from __future__ import annotations

import json
import pkgutil
import re
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files

import faceedu
from faceedu.grading.course import LESSONS, Lesson

STATUS = {"ready": "**ready**", "planned": "planned"}


def _page_path(lesson: Lesson) -> str:
    return f"lessons/{lesson.slug}.ipynb" if lesson.status == "ready" else f"lessons/{lesson.slug}.md"


def syllabus_table() -> str:
    rows = ["| # | Lesson | What you build | Follows | Status |", "|---|---|---|---|---|"]
    for lesson in LESSONS:
        rows.append(f"| {lesson.number:02d} | [{lesson.title}]({_page_path(lesson)}) | {lesson.teaches} | "
                    f"{lesson.sources} | {STATUS.get(lesson.status, lesson.status)} |")
    return "\n".join(rows)


def _planned_page(lesson: Lesson) -> str:
    return (f"# {lesson.number:02d} · {lesson.title}\n\n"
            f"!!! note \"Planned\"\n    This lesson is being written. It will follow the pattern of "
            f"[lesson 00](00_faces_as_data.ipynb): theory, one exercise per concept with instant checks, a "
            f"training run on SynthFaces, a widget, and a reflection.\n\n"
            f"**What you will build:** {lesson.teaches}.\n\n**Follows:** {lesson.sources}.\n")


def api_reference() -> str:
    """One section per public module of the faceedu package, rendered by mkdocstrings."""
    names = sorted(m.name for m in pkgutil.walk_packages(faceedu.__path__, "faceedu.")
                   if not any(part.startswith("_") for part in m.name.split(".")) and not m.name.endswith("mkdocs_hooks"))
    parts = ["# API reference", "",
             "Every public module of the `faceedu` package, generated from its docstrings. The lesson "
             "notebooks' exercises share their names and signatures with the reference functions here.", ""]
    for name in names:
        parts += [f"## `{name}`", "", f"::: {name}", "    options:", "      heading_level: 3",
                  "      show_root_heading: false", "      show_root_toc_entry: false", ""]
    return "\n".join(parts)


def on_files(files: Files, config) -> Files:
    for lesson in LESSONS:
        path = _page_path(lesson)
        if lesson.status != "ready":
            if files.get_file_from_path(path) is None:
                files.append(File.generated(config, path, content=_planned_page(lesson)))
            continue
        page = files.get_file_from_path(path)
        if page is None:
            raise PluginError(f"lesson page {path} is missing: build it with `python -m faceedu.grading.site` "
                              f"(`make docs` does this before `mkdocs build`)")
        errors = [c for c in json.loads(Path(page.abs_src_path).read_text())["cells"]
                  for o in c.get("outputs", []) if o.get("output_type") == "error"]
        if errors:  # the build must not publish a broken notebook, even though it does not execute it
            raise PluginError(f"{path} holds {len(errors)} error output(s); fix the lesson and rebuild")
    if files.get_file_from_path("api.md") is None:
        files.append(File.generated(config, "api.md", content=api_reference()))
    return files


def on_page_markdown(markdown: str, page, config, files) -> str:
    return markdown.replace("{{ syllabus }}", syllabus_table())


_EMPTY_SCRIPT = re.compile(r'<script src="">\s*</script>')
# nbconvert's Mermaid loader imports mermaid from a CDN when a page has diagrams; lessons have none, and
# the site must not point at the internet.
_MERMAID_LOADER = re.compile(r'<script type="module">(?:(?!</script>).)*?mermaid(?:(?!</script>).)*?</script>', re.S)


def on_post_page(output: str, page, config) -> str:
    return _MERMAID_LOADER.sub("", _EMPTY_SCRIPT.sub("", output))
