"""`faceedu bench` runs and reports sane numbers (nothing here asserts a speed)."""

from __future__ import annotations

import json
import math

import torch

from faceedu import bench


def test_bench_reports_sane_numbers(tmp_path):
    report = bench.run(models=["judge-identity"], steps=2, warmup=1, verbose=False)
    assert report["matmul_peak_gflops"] > 0.1 and report["machine"]["device"] in ("cpu", "cuda:0", "mps")
    (row,) = report["results"]
    assert row["model"] == "judge-identity" and row["preset"] == "quick" and row["batch"] == 64
    assert math.isfinite(row["images_per_s"]) and row["images_per_s"] > 0
    # the backbone is ~36 M multiply-adds a face: ~0.07 GFLOP forward, about three times that with backward
    assert 0.1 < row["gflop_per_image"] < 0.4, row["gflop_per_image"]
    assert abs(row["achieved_gflops"] - row["gflop_per_image"] * row["images_per_s"]) < 1e-6 * row["achieved_gflops"] + 1e-9
    assert 0 < row["peak_fraction"] < 10  # a ratio, not a percentage; noisy on a shared machine
    assert row["peak_memory_mb"] is None or row["peak_memory_mb"] > 10
    page = bench.markdown(report)
    assert "| judge-identity | quick | 64 |" in page and "GFLOP/s" in page
    assert "judge-identity" in bench.table(report)


def test_bench_command_writes_json_and_page(tmp_path, capsys):
    from faceedu.cli import main

    out, page = tmp_path / "bench.json", tmp_path / "benchmarks.md"
    assert main(["bench", "--models", "judge-expression", "--steps", "2", "--warmup", "1",
                 "--json", str(out), "--markdown", str(page)]) == 0
    assert "judge-expression" in capsys.readouterr().out
    saved = json.loads(out.read_text())
    assert [r["model"] for r in saved["results"]] == ["judge-expression"]
    assert page.read_text().startswith("# Benchmarks")


def test_the_page_keeps_what_the_command_did_not_write(tmp_path):
    """--markdown rewrites its own device's section of the docs page and nothing else."""
    def report(images_per_s: float, device: str = "cpu") -> dict:
        machine = {"cpu": "a CPU", "cores": 2, "threads": 1, "torch": "2.14.1", "device": device}
        row = {"model": "vae", "preset": "quick", "batch": 32, "images_per_s": images_per_s}
        return {"machine": machine, "matmul_peak_gflops": 91.0, "matmul_dtype": "float32", "date": "today",
                "steps": 10, "warmup": 3, "command": "faceedu bench --threads 1", "results": [row]}

    page = tmp_path / "benchmarks.md"
    bench.write_page(page, report(100.0))
    assert page.read_text().startswith("# Benchmarks") and "| vae | quick | 32 | 100 |" in page.read_text()
    page.write_text(page.read_text() + "\n## By hand\n\nA measured comparison.\n")
    bench.write_page(page, report(250.0))
    bench.write_page(page, report(5000.0, "cuda:0"))
    text = page.read_text()
    assert "| vae | quick | 32 | 100 |" not in text and "| vae | quick | 32 | 250 |" in text
    assert text.count("# Benchmarks") == 1 and "## By hand\n\nA measured comparison." in text
    assert text.index("| 250 |") < text.index("## By hand") < text.index("| 5,000 |")     # the GPU's section added


def test_discover_skips_models_without_the_preset():
    assert bench.discover(["no-such-preset"]) == []


def test_every_trained_model_offers_bench_tasks_that_take_a_step():
    """Each model the course trains takes part in `faceedu bench` at its quick preset, and its task trains on
    the batch it offers (a batch missing what the preset's step reads once failed the whole command)."""
    cases = bench.discover(["quick"])
    names = {name for name, _, _, _ in cases}
    assert {"vae", "cgan", "cgan-projection", "fader", "cyclegan", "diat", "nst-128", "nst-256",
            "judge-attributes"} <= names, names
    for name, _, task, batch in cases:
        losses = task.step(batch, 1)
        assert all(torch.isfinite(torch.as_tensor(v)).all() for v in losses.values()), name
