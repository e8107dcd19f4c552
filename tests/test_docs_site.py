"""The course website: lesson pages built from the reference runs, `mkdocs build --strict`, then the
built site served on localhost and checked in headless Chromium - every page loads without a script
error, equations render as math, images show, internal links resolve, and no request leaves localhost.
Screenshots of the home page and lesson 00 are saved under outputs/test-artifacts/site/."""

from __future__ import annotations

import functools
import http.server
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path
from urllib.parse import urldefrag, urljoin, urlparse

import pytest

from coursekit import (  # course_log: an autouse fixture
    ARTIFACTS, REPO, SCRATCH, VENV_BIN, course_log, executed_solution, say, use_data,
)
from faceedu.grading.course import LESSONS

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@functools.cache
def built_site() -> Path:
    from faceedu.grading.site import build

    start = time.monotonic()
    for lesson in LESSONS:
        if lesson.status == "ready":
            executed_solution(lesson.slug)
    build(executed_dir=SCRATCH / "executed")
    site = SCRATCH / "site"
    done = subprocess.run([str(VENV_BIN / "mkdocs"), "build", "--strict", "--site-dir", str(site)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stdout}\n{done.stderr}"
    say(f"lesson pages + mkdocs build --strict in {time.monotonic() - start:.1f} s (lesson runs included)")
    return site


@pytest.fixture(scope="module")
def site(synth_root) -> Path:
    use_data(synth_root)
    return built_site()


def test_strict_build_has_every_page(site):
    for page in ["index.html", "setup/index.html", "instructors/index.html", "results/index.html", "api/index.html"]:
        assert (site / page).is_file(), page
    for lesson in LESSONS:
        assert (site / "lessons" / lesson.slug / "index.html").is_file(), lesson.slug
    home = (site / "index.html").read_text()
    assert home.count("lessons/0") >= len(LESSONS) and "ready" in home
    assert ("planned" in home) == any(lesson.status == "planned" for lesson in LESSONS)   # the syllabus's statuses


def test_lesson_page_is_the_student_notebook(site):
    html = (site / "lessons" / "00_faces_as_data" / "index.html").read_text()
    assert "raise NotImplementedError" in html                       # the stubs, as students see them
    assert "BEGIN SOLUTION" not in html and "hidden=True" not in html
    assert "torch.isin" not in html and "x.T @ x" not in html          # no solution code leaked
    assert "What the autograder checks" in html and "Hidden:" in html
    assert html.count("data:image/png;base64") >= 4                     # figures of the reference run
    assert "/tmp/" not in html and "cdnjs" not in html and "unpkg" not in html


def test_broken_notebook_cannot_build(site, tmp_path):
    """A lesson page holding an error output fails the build (mkdocs-jupyter does not execute pages)."""
    import nbformat

    docs = tmp_path / "docs"
    shutil.copytree(REPO / "docs", docs)
    page = docs / "lessons" / "00_faces_as_data.ipynb"
    nb = nbformat.read(page, 4)
    nb.cells[2].outputs = [nbformat.v4.new_output("error", ename="NameError", evalue="x", traceback=[])]
    nbformat.write(nb, page)
    config = (REPO / "mkdocs.yml").read_text().replace("docs_dir: docs", f"docs_dir: {docs}")
    config = config.replace("faceedu/grading/mkdocs_hooks.py", str(REPO / "faceedu/grading/mkdocs_hooks.py"))
    (tmp_path / "mkdocs.yml").write_text(config)
    done = subprocess.run([str(VENV_BIN / "mkdocs"), "build", "--strict", "-f", str(tmp_path / "mkdocs.yml"),
                           "--site-dir", str(tmp_path / "site")], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode != 0 and "error output" in done.stdout + done.stderr


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # noqa: ANN002
        pass


@pytest.fixture(scope="module")
def server(site):
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(site)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()


def _pages(site: Path) -> list[str]:
    return sorted(str(p.relative_to(site).parent).replace(".", "") for p in site.rglob("index.html")
                  if "assets" not in p.parts)


def _ids(site: Path, path: str) -> set[str]:
    target = site / path.lstrip("/")
    if target.is_dir() or path.endswith("/"):
        target = target / "index.html"
    return set(re.findall(r'\sid="([^"]+)"', target.read_text())) if target.suffix == ".html" else set()


def test_every_page_in_headless_chromium(site, server):
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is missing: `make browser` installs it as root (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    shots = ARTIFACTS / "site"
    shots.mkdir(parents=True, exist_ok=True)
    outside, problems, links = [], [], set()
    origin = urlparse(server).netloc
    start = time.monotonic()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1280, "height": 900})

        def route(r):
            url = urlparse(r.request.url)
            if url.scheme in ("data", "blob", "about") or url.netloc == origin:
                r.continue_()
            else:
                outside.append(r.request.url)
                r.abort()

        context.route("**/*", route)
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("requestfailed", lambda r: errors.append(f"request failed: {r.url}")
                if urlparse(r.url).netloc == origin else None)
        for path in _pages(site):
            url = urljoin(server, path + ("/" if path else ""))
            errors.clear()
            response = page.goto(url, wait_until="load")
            page.wait_for_load_state("networkidle")
            where = f"/{path}"
            if response is None or response.status != 200:
                problems.append(f"{where}: HTTP {response.status if response else 'no response'}")
            problems += [f"{where}: {e}" for e in errors]
            broken = page.evaluate("""() => Array.from(document.images)
                .filter(i => !i.complete || i.naturalWidth === 0).map(i => i.src.slice(0, 80))""")
            problems += [f"{where}: image does not show: {src}" for src in broken]
            math = page.evaluate("""() => {
                const a = document.querySelector('article') || document.body;
                const raw = Array.from(a.querySelectorAll('p, li, td, .arithmatex, .jp-MarkdownOutput'))
                    .map(e => e.innerText).filter(t => /\\$\\$|\\\\\\(|\\\\\\[|\\\\frac|\\\\sum/.test(t));
                return {rendered: a.querySelectorAll('.katex').length,
                        errors: a.querySelectorAll('.katex-error').length, raw: raw.slice(0, 2)};
            }""")
            source = (site / path / "index.html").read_text()
            if "arithmatex" in source or "jp-MarkdownOutput" in source and "$" in source:
                if "arithmatex" in source or re.search(r"\$[^$<]+\$", source):
                    if math["rendered"] == 0:
                        problems.append(f"{where}: page has equations but none rendered as math")
            # the API page shows docstrings as their authors wrote them; the check is on our own pages
            if math["errors"] or (math["raw"] and not path.startswith("api")):
                problems.append(f"{where}: unrendered math: {math['raw'] or math['errors']}")
            for href in page.evaluate("() => Array.from(document.querySelectorAll('a[href]')).map(a => a.href)"):
                if urlparse(href).netloc == origin:
                    links.add(href)
            if path == "":
                page.screenshot(path=str(shots / "home.png"), full_page=True)
            if path == "lessons/00_faces_as_data":
                page.screenshot(path=str(shots / "lesson00.png"))
                heatmap = page.locator("img[src^='data:image/png']").nth(3)
                heatmap.scroll_into_view_if_needed()
                page.screenshot(path=str(shots / "lesson00_figures.png"))
        browser.close()
    for href in sorted(links):
        address, fragment = urldefrag(href)
        path = urlparse(address).path
        target = site / path.lstrip("/")
        if not (target.is_file() or (target / "index.html").is_file()):
            problems.append(f"broken link: {href}")
        elif fragment and fragment not in _ids(site, path):
            problems.append(f"link to a missing anchor: {href}")
    say(f"checked {len(_pages(site))} pages and {len(links)} internal links in Chromium in "
        f"{time.monotonic() - start:.1f} s; screenshots in {shots}")
    assert not outside, f"requests left localhost: {sorted(set(outside))[:10]}"
    assert not problems, "\n".join(problems[:40])
    assert (shots / "home.png").stat().st_size > 10_000 and (shots / "lesson00.png").stat().st_size > 10_000
