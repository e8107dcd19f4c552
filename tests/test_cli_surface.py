"""What a learner sees of the command line: `faceedu` alone prints its help, every flag is explained (with
its default where it has one), `eval RUN --json/--markdown` write what they say, and the grade report
keeps a long message whole."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils.data import Dataset

from faceedu.cli import build_parser, main
from faceedu.grading.runner import Exercise, Report


def test_faceedu_alone_prints_its_help(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: faceedu") and "tour" in out and "grade" in out


def _help(*words: str) -> str:
    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args([*words, "--help"])
    return ""


def test_tour_flags_have_help_and_data_synth_shows_its_defaults(capsys):
    _help("tour")
    text = " ".join(capsys.readouterr().out.split())
    assert "--root ROOT SynthFaces folder" in text and "--out OUT where the figures" in text
    _help("data", "synth")
    text = " ".join(capsys.readouterr().out.split())
    for default in ("(default: datasets/synthfaces)", "(default: 30000)", "(default: 64)", "(default: 0)"):
        assert default in text, default


class TinyFaces(Dataset):
    def __init__(self, n: int = 8, size: int = 64):
        g = torch.Generator().manual_seed(0)
        self.images = torch.rand(n, 3, size, size, generator=g)
        self.mask = torch.ones(1, size, size)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return {"image": self.images[i], "mask": self.mask}


def test_eval_run_writes_the_json_and_markdown_it_promises(tmp_path, synth_root, capsys):
    from faceedu.models.vae import preset
    from faceedu.train.loop import LoopConfig
    from faceedu.train.vae import train_vae

    config = preset("quick")
    run = tmp_path / "run"
    train_vae(config, run, synth_root, steps=1, loop=LoopConfig(progress=False, sample_every=0),
              dataset=TinyFaces(n=config.batch_size), preset_name="quick")
    out_json, out_md = tmp_path / "report" / "eval.json", tmp_path / "report" / "eval.md"
    assert main(["eval", str(run), "--root", str(synth_root), "--limit", "40", "--json", str(out_json),
                 "--markdown", str(out_md)]) == 0
    printed = capsys.readouterr().out
    figures = json.loads(out_json.read_text())
    assert figures["images"] == 40 and 0 <= figures["ssim"] <= 1
    table = out_md.read_text()
    assert "| figure | value |" in table and f"| ssim | {figures['ssim']:.4f} |" in table
    assert f"Wrote {out_json}" in printed and f"Wrote {out_md}" in printed


def test_grade_report_wraps_long_messages_whole():
    hint = "write the exercise yourself from the notebook's explanation."
    message = "CopiedReference: encoder_head: your function is a copy of faceedu's own code; " + "x" * 60 + " " + hint
    report = Report("lesson.ipynb", [Exercise("check_encoder_head", 2, "auto", "failed", message)], 1.0)
    table = report.table()
    assert hint.split()[-1] in table and "..." not in table
    assert " ".join(table.split()).count(hint) == 1                       # every word is there, in order
    rows = table.split("autograded score")[0].splitlines()                  # the exercise table (not its notes)
    assert max(len(line) for line in rows) <= 110
