"""`make docs`'s reference runs (faceedu.grading.site): no per-cell limit unless asked, progress printed
while a cell trains, executed notebooks reused by content, a clean error when a set limit is exceeded.
(tests/test_docs_site.py builds and browses the whole site.)"""

from __future__ import annotations

from types import SimpleNamespace

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from faceedu.grading import site

TRAINING = "from tqdm.auto import tqdm\nimport time\nfor step in tqdm(range(30), unit='step'):\n    time.sleep(0.1)"


def _notebook(path, last: str = "print('done')"):
    cells = [new_code_cell("from faceedu.grading import course"), new_code_cell(TRAINING), new_code_cell(last)]
    nbformat.write(new_notebook(cells=cells), path)
    return path


def test_reference_runs_are_cached_by_content_and_show_progress(tmp_path, capsys, monkeypatch):
    source, cache, lesson = _notebook(tmp_path / "toy.ipynb"), tmp_path / "cache", SimpleNamespace(slug="toy")
    executed = site.reference_run(lesson, cache=cache, progress=0.5, source=source)      # no per-cell limit
    out = capsys.readouterr().out
    assert executed.cells[2].outputs[0]["text"] == "done\n"
    assert "per-cell limit: none" in out and "[toy] cell 2/3 running for" in out
    assert "step/s]" in out, out                                       # the training cell's progress bar
    [copy] = cache.glob("toy-*.ipynb")
    recorded = nbformat.read(copy, 4).metadata["faceedu_reference_run"]
    assert "faceedu/grading/course.py" in recorded["modules"] and "fast" in recorded["environment"]
    assert len(nbformat.read(copy, 4).cells) == 3                      # the module probe is not kept

    again = site.reference_run(lesson, cache=cache, progress=0.5, source=source)
    assert "reused" in capsys.readouterr().out and again.cells[2].outputs == executed.cells[2].outputs

    real = site.environment()                                          # e.g. the data or a reused run changed
    monkeypatch.setattr(site, "environment", lambda: real | {"fast": not real["fast"]})
    site.reference_run(lesson, cache=cache, progress=None, source=source)
    assert "executing toy.ipynb (changed since the last run: fast;" in capsys.readouterr().out
    monkeypatch.setattr(site, "environment", lambda: real)

    _notebook(source, last="print('changed')")                         # new content: executed again
    changed = site.reference_run(lesson, cache=cache, progress=None, source=source)
    assert "executing" in capsys.readouterr().out and changed.cells[2].outputs[0]["text"] == "changed\n"
    assert len(list(cache.glob("toy-*.ipynb"))) == 1                   # the stale copy is gone


def test_a_set_cell_limit_fails_with_a_clean_message(tmp_path):
    source = _notebook(tmp_path / "slow.ipynb")
    with pytest.raises(site.ReferenceRunFailed, match=r"slow: code cell 2/3 ran longer than the 1 s per-cell limit"):
        site.execute(source, timeout=1, progress=None)


def test_the_site_command_takes_a_cell_limit_and_no_limit_by_default(capsys):
    with pytest.raises(SystemExit):
        site.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--cell-timeout" in text and "0: no limit" in text and "--no-cache" in text
