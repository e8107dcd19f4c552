"""The judges: the shipped weights meet their bars on the SynthFaces test splits (inference only), the
training command works end to end on the shared loop (a few steps), and the pieces behave."""

from __future__ import annotations

import json

import pytest
import torch

from faceedu.models.judges import (
    WEIGHT_FILES,
    WEIGHTS_DIR,
    AttributeJudge,
    best_threshold,
    load_judge,
    load_judges,
    prepare,
    verification_pairs,
)

BAR = 0.95
RETRAIN = ("If SynthFaces' renderer changed, the shipped judges need retraining (about 25 min on 2 cores):\n"
           "    OMP_NUM_THREADS=1 faceedu train judge --kind all --root datasets/synthfaces --run runs/judges --export faceedu/weights")


@pytest.fixture(scope="session")
def judge_results(synth_root):
    """The shipped judges evaluated once on the test splits (what `faceedu eval judges` prints)."""
    from faceedu.metrics import evaluate_judges

    return evaluate_judges(synth_root)


def test_weights_ship_small_and_load_without_download():
    sizes = {kind: (WEIGHTS_DIR / name).stat().st_size for kind, name in WEIGHT_FILES.items()}
    assert sum(sizes.values()) < 6e6, f"shipped judge weights should stay a few MB, got {sizes}"
    judges = load_judges()
    assert judges.attributes is not None and judges.expression is not None and judges.identity is not None
    for judge in (judges.attributes, judges.expression, judges.identity):
        assert "command" in judge.meta and "faceedu train judge" in judge.meta["command"]
        assert not judge.training


def test_attribute_judge_meets_bar(judge_results):
    from faceedu.data.synthfaces import SYNTH_ATTRIBUTES

    figures = judge_results["attributes"]
    assert set(figures["per_attribute"]) == set(SYNTH_ATTRIBUTES)
    per = ", ".join(f"{k} {v:.3f}" for k, v in sorted(figures["per_attribute"].items(), key=lambda kv: kv[1]))
    assert figures["mean_accuracy"] >= BAR, f"mean attribute accuracy {figures['mean_accuracy']:.4f} < {BAR}: {per}\n{RETRAIN}"


def test_expression_judge_meets_bar_on_unseen_subjects(judge_results, synth_root):
    from faceedu.data.jaffe import JAFFE

    train, test = JAFFE(synth_root, split="train"), JAFFE(synth_root, split="test")
    assert not set(train.subjects) & set(test.subjects), "expression figures must come from unseen subjects"
    figures = judge_results["expression"]
    assert figures["images"] == len(test)
    assert figures["accuracy"] >= BAR, f"expression accuracy {figures['accuracy']:.4f} < {BAR}: {figures['per_expression']}\n{RETRAIN}"


def test_identity_judge_meets_bar_on_unseen_identities(judge_results):
    figures = judge_results["identity"]
    assert figures["pairs"] == 6000 and figures["identities"] > 100
    assert figures["mean_cosine_same"] > figures["mean_cosine_different"] + 0.3
    assert figures["verification_accuracy"] >= BAR, f"verification accuracy {figures['verification_accuracy']:.4f} < {BAR}\n{RETRAIN}"


def test_eval_command_prints_table_and_writes_json(tmp_path, synth_root, judge_results, monkeypatch, capsys):
    import faceedu.metrics
    from faceedu.cli import main

    monkeypatch.setattr(faceedu.metrics, "evaluate_judges", lambda root, weights: judge_results)  # computed once above
    out, page = tmp_path / "judges.json", tmp_path / "judges.md"
    assert main(["eval", "judges", "--root", str(synth_root), "--json", str(out), "--markdown", str(page)]) == 0
    assert "| Smiling |" in page.read_text()
    text = capsys.readouterr().out
    assert "mean attribute accuracy" in text and "Smiling" in text and "verification accuracy" in text
    saved = json.loads(out.read_text())
    assert {"attributes", "expression", "identity"} <= set(saved)


# --- training: one short smoke run of all three through the CLI ------------------------------------------

@pytest.fixture(scope="session")
def smoke_judges(synth_root, trained_dir):
    from faceedu.cli import main

    run = trained_dir / "judges"
    code = main(["train", "judge", "--kind", "all", "--root", str(synth_root), "--run", str(run), "--steps", "6",
                 "--batch-size", "16", "--no-progress"])
    assert code == 0
    return run


def test_train_judge_smoke(smoke_judges):
    for kind, name in WEIGHT_FILES.items():
        folder = smoke_judges / kind
        assert (folder / "checkpoint.pt").is_file() and (folder / "metrics.jsonl").is_file()
        assert (folder / "loss_curves.png").is_file() and list((folder / "samples").glob("*.png"))
        judge = load_judge(folder / name)
        assert judge.meta["train"]["steps"] == 6 and "test" in judge.meta
    figures = json.loads((smoke_judges / "judges.json").read_text())
    assert 0 <= figures["attributes"]["mean_accuracy"] <= 1
    assert 0 <= figures["identity"]["verification_accuracy"] <= 1


# --- the pieces -----------------------------------------------------------------------------------------

def test_prepare_converts_channels_sizes_and_uint8():
    rgb = torch.rand(2, 3, 128, 96)
    assert prepare(rgb, 1).shape == (2, 1, 64, 64)
    grey = torch.full((1, 1, 64, 64), 0.5)
    assert torch.allclose(prepare(grey, 3), torch.zeros(1, 3, 64, 64))
    as_bytes = torch.full((1, 3, 64, 64), 255, dtype=torch.uint8)
    assert torch.allclose(prepare(as_bytes, 3), torch.ones(1, 3, 64, 64))


def test_attribute_judge_names_unknown_attribute():
    judge = AttributeJudge(["Smiling", "Male"])
    with pytest.raises(KeyError, match="Smiling, Male"):
        judge.index("Smilling")


def test_verification_pairs_are_balanced_and_valid():
    identity = torch.arange(50).repeat_interleave(4)[torch.randperm(200, generator=torch.Generator().manual_seed(1))]
    first, second, same = verification_pairs(identity, 300, seed=0)
    assert same.sum() == 300 and len(same) == 600
    positive, negative = same == 1, same == 0
    assert (identity[first[positive]] == identity[second[positive]]).all()
    assert (first[positive] != second[positive]).all(), "a same-person pair must be two different images"
    assert (identity[first[negative]] != identity[second[negative]]).all()


def test_best_threshold_separates_separable_scores():
    similarity = torch.tensor([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    same = torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0, 1.0])
    threshold = best_threshold(similarity, same)
    assert 0.3 < threshold < 0.7
