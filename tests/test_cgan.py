"""Lesson 04's reference: the seed's conditional DCGAN builds exactly (parameter counts written out layer by
layer), both discriminators take a step, bad attributes are refused before training, runs resume exactly,
and the quick model trained once per session (`trained_cgan`) meets the lesson's bars under the judge."""

from __future__ import annotations

import json

import pytest
import torch

from faceedu.models.cgan import (DCGANDiscriminator, Generator, ProjectionDiscriminator, combinations, gan_step,
                                 label_maps, parameter_count, preset)

# The seed at 64x64 with k = 2 attributes, layer by layer (no conv bias where BatchNorm follows; BatchNorm
# has 2 parameters per channel).
SEED_G = (100 * 512 * 16 + 2 * 512          # z: ConvT(100 -> 512, 4x4) + BN
          + 2 * 512 * 16 + 2 * 512          # y: ConvT(2 -> 512, 4x4) + BN
          + 1024 * 512 * 16 + 2 * 512       # 1024 -> 512, 8x8
          + 512 * 256 * 16 + 2 * 256        # -> 256, 16x16
          + 256 * 128 * 16 + 2 * 128        # -> 128, 32x32
          + 128 * 3 * 16)                   # -> 3, 64x64, tanh
SEED_D = (3 * 64 * 16 + 64                  # image: conv(3 -> 64) + bias, no BN
          + 2 * 64 * 16 + 64                # label maps: conv(2 -> 64) + bias, no BN
          + 128 * 256 * 16 + 2 * 256        # 128 -> 256, 16x16
          + 256 * 512 * 16 + 2 * 512        # -> 512, 8x8
          + 512 * 1024 * 16 + 2 * 1024      # -> 1024, 4x4
          + 1024 * 16)                      # -> 1 logit


def test_full_preset_builds_the_seed_and_takes_a_step():
    config = preset("full")
    G, D = Generator(config), DCGANDiscriminator(config)
    assert parameter_count(G) == SEED_G == 11_855_616
    assert parameter_count(D) == SEED_D == 11_035_264
    assert (config.z_dim, config.lr_g, config.lr_d, config.beta1, config.batch_size, config.loss) == (100, 2e-4, 2e-4, 0.5, 64, "bce")
    torch.manual_seed(0)
    opt_g = torch.optim.Adam(G.parameters(), lr=config.lr_g, betas=(config.beta1, config.beta2))
    opt_d = torch.optim.Adam(D.parameters(), lr=config.lr_d, betas=(config.beta1, config.beta2))
    x, y = torch.rand(4, 3, 64, 64) * 2 - 1, torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    before = [p.detach().clone() for p in (*G.parameters(), *D.parameters())]
    losses = gan_step(G, D, opt_g, opt_d, x, y, config)
    assert all(torch.isfinite(v) for v in losses.values())
    after = list((*G.parameters(), *D.parameters()))
    assert all(not torch.equal(a, b) for a, b in zip(before, after))
    assert G(torch.randn(3, 100), y[:3]).shape == (3, 3, 64, 64)


def test_dcgan_init_and_label_maps():
    config = preset("full")
    G = Generator(config)
    weights = torch.cat([m.weight.detach().flatten() for m in G.modules() if isinstance(m, torch.nn.ConvTranspose2d)])
    gammas = torch.cat([m.weight.detach().flatten() for m in G.modules() if isinstance(m, torch.nn.BatchNorm2d)])
    assert abs(float(weights.std()) - 0.02) < 1e-3 and abs(float(gammas.mean()) - 1) < 5e-3
    assert abs(float(gammas.std()) - 0.02) < 5e-3
    maps = label_maps(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), 64)
    assert maps.shape == (2, 2, 64, 64) and float(maps[0, 0].min()) == 1 and float(maps[0, 1].max()) == 0
    assert combinations(2).tolist() == [[0, 0], [0, 1], [1, 0], [1, 1]]


def test_projection_discriminator_uses_the_labels_and_takes_a_step():
    config = preset("quick", discriminator="projection")
    assert (config.loss, config.real_label) == ("hinge", 1.0)
    G, D = Generator(config), ProjectionDiscriminator(config)
    x = torch.rand(8, 3, 64, 64) * 2 - 1
    D.eval()
    with torch.no_grad():
        assert not torch.allclose(D(x, torch.zeros(8, 2)), D(x, torch.ones(8, 2)))
    D.train()
    opt_g, opt_d = torch.optim.Adam(G.parameters(), 2e-4), torch.optim.Adam(D.parameters(), 2e-4)
    losses = gan_step(G, D, opt_g, opt_d, x, torch.randint(0, 2, (8, 2)).float(), config)
    assert all(torch.isfinite(v) for v in losses.values())


def test_the_matching_aware_term_shows_d_real_faces_with_one_wrong_attribute():
    """GAN-CLS (Reed et al. 2016): with `mismatch` > 0, D's step also scores the real faces under labels with
    exactly one attribute flipped, as negatives; off (0) in the seed's `full` preset, so its step is the seed's."""
    from faceedu.models.cgan import flip_one

    assert preset("full").mismatch == 0.0
    torch.manual_seed(0)
    y = torch.randint(0, 2, (512, 3)).float()
    wrong = flip_one(y)
    assert ((wrong - y).abs().sum(1) == 1).all(), "exactly one attribute wrong per face"
    assert set((wrong - y).abs().argmax(1).tolist()) == {0, 1, 2}, "every attribute gets flipped"
    with pytest.raises(ValueError, match="mismatch"):
        preset("quick", mismatch=1.0)

    config = preset("quick", batch_size=4, bf16=False, mismatch=0.5)
    G, D = Generator(config), DCGANDiscriminator(config)
    seen: list[torch.Tensor] = []
    D.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[1].detach().clone()))
    opt_g, opt_d = torch.optim.Adam(G.parameters(), 2e-4), torch.optim.Adam(D.parameters(), 2e-4)
    x, y = torch.rand(4, 3, 64, 64) * 2 - 1, combinations(2)
    losses = gan_step(G, D, opt_g, opt_d, x, y, config)
    assert len(seen) == 4, "D: real, fake, real with a wrong label; then G's pass"
    assert torch.equal(seen[0], y) and ((seen[2] - y).abs().sum(1) == 1).all()
    assert all(torch.isfinite(v) for v in losses.values())
    seen.clear()
    gan_step(G, D, opt_g, opt_d, x, y, preset("quick", batch_size=4, bf16=False))
    assert len(seen) == 3, "without the term D sees real and fake only"


def test_the_auxiliary_classifier_learns_real_faces_only_and_pulls_g_towards_the_asked_attributes():
    """AC-GAN's term (quick only; `full` is the seed): C's update is its BCE on the real faces alone, and G's loss
    adds aux_classifier x C's BCE on G's faces under the asked labels, through the freshly updated C."""
    import copy

    import torch.nn.functional as F

    from faceedu.models.cgan import AttributeClassifier

    assert preset("full").aux_classifier == 0.0 and preset("quick").aux_classifier == 1.0
    with pytest.raises(ValueError, match="aux_classifier"):
        preset("quick", aux_classifier=-1.0)
    config = preset("quick", batch_size=4, bf16=False, channels_last=False)
    torch.manual_seed(0)
    G, D, C = Generator(config), DCGANDiscriminator(config), AttributeClassifier(config)
    assert C(torch.zeros(2, 3, 64, 64)).shape == (2, 2)
    opt_g, opt_d, opt_c = (torch.optim.Adam(m.parameters(), 2e-4, betas=(0.5, 0.999)) for m in (G, D, C))
    x, y = torch.rand(4, 3, 64, 64) * 2 - 1, combinations(2)

    # C's expected update: one Adam step on BCE(C(x), y), the real faces only
    C_ref = copy.deepcopy(C)
    opt_ref = torch.optim.Adam(C_ref.parameters(), 2e-4, betas=(0.5, 0.999))
    F.binary_cross_entropy_with_logits(C_ref(x), y).backward()
    opt_ref.step()
    torch.manual_seed(1)
    G_copy = copy.deepcopy(G)
    losses = gan_step(G, D, opt_g, opt_d, x, y, config, C=C, opt_c=opt_c)
    for p, q in zip(C.parameters(), C_ref.parameters()):
        assert torch.allclose(p, q, atol=1e-6), "C learns from the real faces, not from G's"
    torch.manual_seed(1)                                   # the same z: the fakes of the step, from G before it
    fake = G_copy(torch.randn(4, config.z_dim), y)
    expected = F.binary_cross_entropy_with_logits(C_ref(fake), y)
    assert torch.allclose(losses["loss_g_c"], expected, atol=1e-5), "G's term: C (after its update) on G's faces"
    assert float(losses["loss_g"]) > float(losses["loss_g_c"]) > 0, "the term is added to G's adversarial loss"


def test_bad_attributes_are_refused_before_training(synth_root, tmp_path, capsys):
    from faceedu.cli import main

    run = tmp_path / "run"
    with pytest.raises(SystemExit) as error:
        main(["train", "cgan", "--root", str(synth_root), "--attrs", "Blond_Hiar,Male", "--run", str(run), "--no-progress"])
    assert "Unknown attribute 'Blond_Hiar'" in str(error.value) and "'Blond_Hair'" in str(error.value)
    with pytest.raises(SystemExit) as error:
        main(["train", "cgan", "--root", str(synth_root), "--attrs", "Blond_Hair,Attractive", "--run", str(run), "--no-progress"])
    assert "'Attractive'" in str(error.value) and "constant" in str(error.value)
    assert not run.exists(), "nothing is trained on a refused attribute"


def test_a_resumed_run_matches_an_uninterrupted_one(synth_root, tmp_path):
    from faceedu.train.cgan import load_data, load_run, train_cgan
    from faceedu.train.loop import LoopConfig

    config = preset("quick", batch_size=16, bf16=False, g_ema=0.999)   # the moving average of G resumes too
    data = load_data(synth_root, "train", config, limit=256)
    loop = LoopConfig(progress=False, sample_every=0, log_every=1, checkpoint_every=2)
    train_cgan(config, tmp_path / "whole", synth_root, steps=4, loop=loop, dataset=data)
    train_cgan(config, tmp_path / "split", synth_root, steps=2, loop=loop, dataset=data)
    train_cgan(config, tmp_path / "split", synth_root, steps=4, loop=loop, dataset=data)
    a, b = load_run(tmp_path / "whole")[0], load_run(tmp_path / "split")[0]     # G_ema: depends on every step's G
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name
    raw = torch.load(tmp_path / "whole" / "checkpoint.pt", weights_only=True)["modules"]
    assert not torch.equal(raw["G"]["to_rgb.0.weight"], raw["G_ema"]["to_rgb.0.weight"]), "G_ema is G's average, not G"
    assert torch.equal(a.state_dict()["to_rgb.0.weight"], raw["G_ema"]["to_rgb.0.weight"]), "load_run draws with G_ema"


@pytest.fixture(scope="module")
def cgan_report(trained_cgan, synth_root) -> dict:
    from faceedu.train.cgan import eval_run, format_report

    result = eval_run(trained_cgan["run"], synth_root)
    print("\n" + format_report(result))
    print(f"[cgan] trained in {trained_cgan['summary']['seconds']} s at {trained_cgan['summary']['images_per_s']} images/s")
    return result


def test_quick_cgan_evaluation_writes_its_figures_and_the_frechet_distance_with_its_floor(trained_cgan, cgan_report):
    assert (trained_cgan["run"] / "eval" / "combinations.png").is_file()
    saved = json.loads((trained_cgan["run"] / "eval" / "eval.json").read_text())
    assert saved["frechet"] > saved["frechet_floor"] > 0
    assert 0 < saved["coverage"] < saved["coverage_real"] <= 1 and saved["density_real"] > 0


def test_quick_cgan_draws_faces_among_real_ones_and_the_report_says_how_much_of_them_it_covers(cgan_report):
    """Density and coverage in the judge's features (Naeem et al. 2020) part what the diversity ratio mixes.
    Measured (2026-11-28): density 0.85 against 0.97 for real faces, so G's faces lie where real ones do;
    coverage 0.25 against 0.95, so they fill a quarter of the real neighbourhoods (docs/cgan.md). A G that drew
    noise or blobs has a density near 0 and fails here; the coverage is what issue 12's diversity bar lacks."""
    from faceedu.train.cgan import format_report

    assert cgan_report["density"] >= 0.7 * cgan_report["density_real"], cgan_report
    assert cgan_report["coverage_real"] >= 0.9, cgan_report
    assert "coverage" in format_report(cgan_report)


def test_the_runs_classifier_is_read_beside_the_judge_on_the_same_faces(synth_root):
    """`classifier_agreement`: the share of each row's faces on which C reads exactly the asked attributes (and
    `classifier_real_agreement` on the row's real faces). A C that always reads Blond_Hair=1, Male=0 agrees on that
    row only; a comparison against the wrong labels or on other faces fails here."""
    from faceedu.models.cgan import AttributeClassifier, Generator
    from faceedu.train.cgan import evaluate_cgan, format_report

    config = preset("quick")
    torch.manual_seed(0)
    G, C = Generator(config).eval(), AttributeClassifier(config).eval()
    torch.nn.init.zeros_(C.logit.weight)
    with torch.no_grad():
        C.logit.bias.copy_(torch.tensor([4.0, -4.0]))               # Blond_Hair read, Male not, on every face
    real = torch.rand(8, 3, 64, 64)
    real_attr = torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1]] * 2).float()
    result = evaluate_cgan(G, config.attrs, real, per_combination=8, real_attr=real_attr, classifier=C)
    rows = {tuple(r["attributes"].values()): r for r in result["combinations"]}
    assert {k: r["classifier_agreement"] for k, r in rows.items()} == {(0, 0): 0.0, (0, 1): 0.0, (1, 0): 1.0, (1, 1): 0.0}
    assert {k: r["classifier_real_agreement"] for k, r in rows.items()} == {(0, 0): 0.0, (0, 1): 0.0, (1, 0): 1.0, (1, 1): 0.0}
    assert "C agrees" in format_report(result)
    assert "C agrees" not in format_report(evaluate_cgan(G, config.attrs, real, per_combination=8))


def test_quick_cgan_report_puts_its_classifier_beside_the_judge(cgan_report):
    for row in cgan_report["combinations"]:
        assert 0.0 <= row["classifier_agreement"] <= 1.0 and 0.0 <= row["classifier_real_agreement"] <= 1.0, row


def test_quick_cgan_report_names_its_judges(cgan_report):
    """Every report says what its referee was trained on; SynthFaces judges on SynthFaces faces need no warning."""
    assert cgan_report["judges"] and all("SynthFaces" in line for line in cgan_report["judges"]), cgan_report["judges"]
    assert cgan_report["judge_warnings"] == []


def test_cgan_eval_on_real_layout_data_warns_that_the_judges_are_synthfaces_ones(tmp_path):
    """The shipped judges were trained on SynthFaces: judging a cGAN trained on real-layout CelebA names them
    and warns, with the command that trains judges on that data (as lessons 01-03 do)."""
    from realfixtures import write_real_celeba

    from faceedu.train.cgan import eval_run, format_report, train_cgan
    from faceedu.train.loop import LoopConfig

    root = write_real_celeba(tmp_path / "data", n=64)
    config = preset("quick", batch_size=8, bf16=False)
    train_cgan(config, tmp_path / "run", root, steps=2, loop=LoopConfig(progress=False, sample_every=0))
    result = eval_run(tmp_path / "run", real_limit=16, per_combination=8)
    assert any("SynthFaces" in line for line in result["judges"]), result["judges"]
    assert result["judge_warnings"] and "faceedu train judge --data celeba" in result["judge_warnings"][0]
    text = format_report(result)
    assert "judged by the attributes judge: trained on SynthFaces" in text and result["judge_warnings"][0] in text


# Issue 12: judge agreement is met, diversity is not. The quick preset (2,700 steps, 1/8 of the seed's width, faces
# drawn by G's moving average with re-estimated BatchNorm statistics, an auxiliary classifier beside D), trained on
# two threads as CI trains it, is read as asked on 93.0 / 97.8 / 97.8 / 91.8 % of the faces (neither / Male /
# Blond / both) by the attribute judge retrained with pixel noise on 2026-11-27; its diversity ratio is 0.65
# (bar 0.80). The judge trained on clean faces read G's grain as a beard and a man: 65.8 / 92.6 / 67.4 / 94.6 %
# from the same faces (docs/judges.md, "Grain"; docs/cgan.md). Every search for diversity (moving average,
# matching-aware D, resize-convolution, minibatch std, learning-rate decay, wider G and D, up to 5,400 steps, five
# variants of the classifier) left the ratio under 0.80.
# strict: the day the preset meets it, this xfail fails and must become a plain test.
QUICK_CGAN_MISSES = pytest.mark.xfail(strict=True, raises=AssertionError,
                                      reason="issue 12: the quick cGAN does not reach the diversity bar yet (docs/cgan.md)")


def test_quick_cgan_draws_every_attribute_combination_the_judge_agrees_with(cgan_report):
    """Each of the 4 Blond_Hair x Male combinations: the judge agrees with the request on >= 90% of 500 faces."""
    for row in cgan_report["combinations"]:
        assert row["agreement"] >= 0.90, f"{row['attributes']}: the judge agrees on {row['agreement']:.1%}"


@QUICK_CGAN_MISSES
def test_quick_cgan_does_not_collapse(cgan_report):
    """Diversity in judge features >= 80% of real test faces'."""
    assert cgan_report["diversity_ratio"] >= 0.80, f"diversity ratio {cgan_report['diversity_ratio']:.2f}: mode collapse"


def test_quick_cgan_report_gives_each_combination_the_judges_agreement_on_real_faces(cgan_report):
    """Beside each row, the ceiling of its bar: the same judge on the real test faces of that combination
    (every real face in exactly one row). Measured: 89-97 %; a judge that misreads real faces fails here."""
    from faceedu.train.cgan import format_report

    rows = cgan_report["combinations"]
    assert sum(row["real_faces"] for row in rows) == cgan_report["real"]
    for row in rows:
        assert row["real_faces"] > 0 and row["real_agreement"] >= 0.85, row
    assert "on real faces" in format_report(cgan_report)
