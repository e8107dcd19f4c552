"""Lesson 08's bars on the quick CycleGAN (trained once per run by the `trained_cyclegan` fixture), judged on
the test subjects of SynthFaces-JAFFE, whom training never saw: the expression changes, the person stays."""

from __future__ import annotations

import pytest
import torch

from faceedu.metrics import frechet_distance, judge_features
from faceedu.models.judges import load_judges
from faceedu.train.cyclegan import bars_met, evaluate_cyclegan, format_report, load_data, load_run
from training import terminal_print


@pytest.fixture(scope="module")
def judged(trained_cyclegan, synth_root, pytestconfig):
    model, _ = load_run(trained_cyclegan["run"])
    test = load_data(synth_root, model.config, "test")
    everything = load_data(synth_root, model.config, "all")
    report = evaluate_cyclegan(model, test, load_judges(), real=everything)
    summary = trained_cyclegan["summary"]
    terminal_print(pytestconfig, f"\n[cyclegan] quick run: {summary.get('seconds')} s, {summary.get('images_per_s')} "
                                 f"image pairs/s\n{format_report(report)}")
    return {"model": model, "test": test, "all": everything, "report": report}


def test_the_expression_judge_reads_the_target_expression(judged):
    report = judged["report"]
    assert report["judge_NE_on_HA_to_NE"] >= 0.8, format_report(report)
    assert report["judge_HA_on_NE_to_HA"] >= 0.8, format_report(report)


def test_identity_is_kept_and_clearly_above_random_pairs(judged):
    report = judged["report"]
    assert report["identity_same_rate"] >= 0.8, format_report(report)
    assert report["identity_same_rate"] >= report["random_pairs_same_rate"] + 0.15, format_report(report)
    assert report["identity_mean_cosine"] > report["random_pairs_mean_cosine"] + 0.2, format_report(report)


def test_cycle_error_is_reported_per_pixel_and_summed(judged):
    report = judged["report"]
    pixels = report["pixels_per_image"]
    assert report["cycle_l1_summed"] == pytest.approx(report["cycle_l1_per_pixel"] * pixels, rel=1e-4)
    assert report["cycle_l1_per_pixel_255"] == pytest.approx(report["cycle_l1_per_pixel"] * 255, rel=1e-4)
    assert report["cycle_l1_per_pixel"] < 0.08, format_report(report)     # a round trip returns the face


def test_translations_move_towards_the_target_distribution(judged):
    """Fréchet distance in the expression judge's features (not FID): translated faces are closer to real
    faces of the target expression than their sources were, and the report gives the real-vs-real floor."""
    model, test, everything = judged["model"], judged["test"], judged["all"]
    judge = load_judges().expression
    real_NE, real_HA = judge_features(judge, everything.floats("NE")), judge_features(judge, everything.floats("HA"))
    sources = judge_features(judge, test.floats("HA"))
    translated = judge_features(judge, model.translate(test.floats("HA"), "AtoB"))
    before, after = frechet_distance(real_NE, sources), frechet_distance(real_NE, translated)
    assert after < 0.5 * before, f"FD to real neutral faces: sources {before:.2f}, translations {after:.2f}"
    report = judged["report"]
    assert 0 <= report["frechet_floor_NE"] < float("inf") and 0 <= report["frechet_NE"] < float("inf")
