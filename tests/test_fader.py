"""Fader Networks (lesson 05): parameter parity with the official code, the seed's variant, the schedule,
bad input refused, and the quick preset's quality bars on SynthFaces (trained once per run: `trained_fader`)."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch

from faceedu.models import fader as FN
from faceedu.models.fader import AutoEncoder, LatentDiscriminator, count_parameters, preset


@pytest.mark.parametrize("attrs,ae,dis", [(("Smiling", "Male"), 14_032_352, 8_656_388), (("Male",), 14_000_512, 8_655_362)])
def test_full_preset_has_the_official_parameter_counts(attrs, ae, dis):
    """Measured by instantiating facebookresearch/FaderNetworks src/model.py with its defaults."""
    config = preset("full", attrs=attrs)
    assert count_parameters(AutoEncoder(config)) == ae
    assert count_parameters(LatentDiscriminator(config)) == dis
    assert config.latent_shape == (512, 4, 4)


@pytest.mark.parametrize("name", ["full", "quick"])
def test_classifier_discriminator_is_the_encoders_convs_down_to_1x1_with_the_latent_discriminators_head(name):
    """Official src/model.py: Classifier = build_layers(... n_layers = log2(img_sz) ...) without dropout, then
    Linear(hid_dim) + LeakyReLU + Linear(n_attr); the latent discriminator = the same stack's layers after the
    encoder's, the same head. So the classifier has exactly the encoder's convolutions plus the latent
    discriminator's parameters (dropout has none)."""
    config = preset(name)
    clf, ae, dis = FN.Classifier(config), AutoEncoder(config), LatentDiscriminator(config)
    assert count_parameters(clf) == count_parameters(ae.enc_layers) + count_parameters(dis)
    assert not any(isinstance(m, torch.nn.Dropout) for m in clf.modules())
    x = torch.rand(2, 3, config.image_size, config.image_size) * 2 - 1
    assert clf.eval()(x).shape == (2, config.n_attr)
    assert "clf_dis" not in FN.make_optimizers(ae, dis, config) and preset("full").n_clf_dis == 0


def test_the_classifier_learns_from_real_faces_and_pulls_the_decoder_to_the_drawn_attributes():
    """fader_step with a classifier discriminator: the classifier's update is the same whatever lam_clf (it
    sees only the real faces), the auto-encoder's is not (decoded with random attributes, judged by it), and
    the drawn attributes are 0 or 1, each about half the time (the official flip_attributes 'all')."""
    import copy

    config = preset("quick", image_size=16, init_fm=4, max_fm=8, n_layers=2, hid_dim=8, lat_dis_dropout=0.0,
                    n_clf_dis=1, lambda_clf_dis=1.0)
    torch.manual_seed(0)
    nets = AutoEncoder(config), LatentDiscriminator(config), FN.Classifier(config)
    x, y = torch.rand(4, 3, 16, 16) * 2 - 1, torch.tensor([[1.0, 0, 1], [0, 1, 0], [1, 1, 1], [0, 0, 0]])
    first = lambda m: torch.cat([p.detach().flatten() for p in m.parameters()])  # noqa: E731
    ends = []
    for lam_clf in (0.0, 10.0):
        a, d, c = (copy.deepcopy(n) for n in nets)
        opts = FN.make_optimizers(a, d, config, c)
        torch.manual_seed(1)
        logs = FN.fader_step(a, d, opts["ae"], opts["lat_dis"], x, y, lam=0.0, clip=5.0, clf_dis=c,
                             opt_clf=opts["clf_dis"], lam_clf=lam_clf)
        assert {"clf_dis", "clf_dis_acc"} <= set(logs) and ("ae_clf" in logs) == (lam_clf > 0)
        ends.append((a, c))
    assert torch.equal(first(ends[0][1]), first(ends[1][1]))
    assert not torch.equal(first(ends[0][1]), first(nets[2]))
    assert not torch.equal(first(ends[0][0]), first(ends[1][0]))
    drawn = FN.random_attributes(torch.zeros(4000, 3))
    assert set(drawn.unique().tolist()) == {0.0, 1.0} and abs(float(drawn.mean()) - 0.5) < 0.03


def test_the_classifier_learns_from_its_view_of_the_real_faces_and_the_decoder_is_judged_on_its_own():
    """`clf_view` (the quick preset: the attribute judge's augmentation) is what the classifier's update sees;
    the auto-encoder's update is the same whatever the view, and the task builds the view from the preset."""
    import copy

    from faceedu.train.fader import FaderTask, judge_view

    config = preset("quick", image_size=16, init_fm=4, max_fm=8, n_layers=2, hid_dim=8, lat_dis_dropout=0.0,
                    n_clf_dis=1, lambda_clf_dis=1.0)
    torch.manual_seed(0)
    nets = AutoEncoder(config), LatentDiscriminator(config), FN.Classifier(config)
    x, y = torch.rand(4, 3, 16, 16) * 2 - 1, torch.tensor([[1.0, 0, 1], [0, 1, 0], [1, 1, 1], [0, 0, 0]])
    seen, ends = [], []
    for view in (None, lambda faces: seen.append(faces) or -faces):
        a, d, c = (copy.deepcopy(n) for n in nets)
        opts = FN.make_optimizers(a, d, config, c)
        torch.manual_seed(1)
        FN.fader_step(a, d, opts["ae"], opts["lat_dis"], x, y, lam=0.0, clip=5.0, clf_dis=c, opt_clf=opts["clf_dis"],
                      lam_clf=0.0, clf_view=view)
        ends.append((a, c))
    assert len(seen) == 1 and seen[0] is x
    flat = lambda m: torch.cat([p.detach().flatten() for p in m.parameters()])  # noqa: E731
    assert not torch.equal(flat(ends[0][1]), flat(ends[1][1]))          # the classifier learnt from -x
    assert torch.equal(flat(ends[0][0]), flat(ends[1][0]))              # the decoder's update did not change
    torch.manual_seed(2)
    faces = torch.rand(64, 3, 16, 16) * 2 - 1
    augmented = judge_view(faces, 0.1)
    assert augmented.shape == faces.shape and augmented.min() >= -1 and augmented.max() <= 1
    assert not torch.equal(augmented, faces)
    assert preset("quick").clf_augment == 0.1 and preset("full").clf_augment == 0.0 == preset("seed").clf_augment
    assert FaderTask(preset("full", image_size=16, n_layers=2, init_fm=4, max_fm=8)).ae_ema is None


def test_a_run_edits_with_the_moving_average_and_its_own_statistics_and_resumes_exactly(synth_root, tmp_path):
    """The quick preset keeps a moving average of the auto-encoder's weights; a finished run stores it with
    BatchNorm statistics re-estimated for it, `load_run` returns it, and a run cut in two ends where an
    uninterrupted one does, module by module."""
    from faceedu.data.tensors import load_face_tensors
    from faceedu.train.fader import load_run, train_fader
    from faceedu.train.loop import CHECKPOINT, LoopConfig

    config = preset("quick", lambda_start=2, lambda_steps=2)
    data = load_face_tensors(synth_root, split="train", size=64, masks=False, limit=64)
    loop = LoopConfig(progress=False, sample_every=0, log_every=2, checkpoint_every=3)
    train_fader(config, tmp_path / "whole", synth_root, steps=8, dataset=data, loop=loop)
    train_fader(config, tmp_path / "cut", synth_root, steps=4, dataset=data, loop=loop)
    train_fader(config, tmp_path / "cut", synth_root, steps=8, dataset=data, loop=loop)
    whole, cut = (torch.load(tmp_path / run / CHECKPOINT, weights_only=True)["modules"] for run in ("whole", "cut"))
    assert set(whole) == {"ae", "lat_dis", "clf_dis", "ae_ema"}
    for name, state in whole.items():
        assert all(torch.equal(state[k], cut[name][k]) for k in state), name
    raw, average = whole["ae"], whole["ae_ema"]
    assert any(not torch.equal(raw[k], average[k]) for k in raw if k.endswith("weight"))
    assert all(not torch.equal(raw[k], average[k]) for k in raw if k.endswith("running_mean"))
    ae, _, _ = load_run(tmp_path / "whole")
    assert all(torch.equal(ae.state_dict()[k], average[k]) for k in average)


def _decoder_inputs(ae, z, y):
    seen = []
    hooks = [layer.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[1])) for layer in ae.dec_layers]
    with torch.no_grad():
        ae.eval().decode(z, y)
    for hook in hooks:
        hook.remove()
    return seen


def test_attributes_reach_every_decoder_layer_in_full_and_only_the_input_in_seed():
    full = preset("full", attrs=("Smiling", "Male"), image_size=64, n_layers=4)
    ae = AutoEncoder(full)
    z = torch.randn(2, *full.latent_shape)
    assert _decoder_inputs(ae, z, torch.ones(2, 2)) == [256 + 4, 128 + 4, 64 + 4, 32 + 4]
    seed = preset("seed")
    ae = AutoEncoder(seed)
    assert seed.latent_shape == (512, 2, 2)
    assert _decoder_inputs(ae, torch.randn(1, 512, 2, 2), torch.ones(1, 1)) == [512 + 2, 512, 256, 128, 64, 32, 16]
    dis = LatentDiscriminator(seed)
    assert dis(torch.randn(3, 512, 2, 2)).shape == (3, 2)


def test_one_hot_pairs_and_schedule():
    y = torch.tensor([[1.0, 0.0], [0.25, 1.0]])
    assert torch.equal(FN.one_hot(y), torch.tensor([[0.0, 1.0, 1.0, 0.0], [0.75, 0.25, 0.0, 1.0]]))
    assert FN.lambda_schedule(0, 1e-4) == 0.0
    assert FN.lambda_schedule(250_000, 1e-4) == pytest.approx(5e-5)
    assert FN.lambda_schedule(10**7, 1e-4) == pytest.approx(1e-4)
    quick = preset("quick")
    assert FN.config_lambda(quick, quick.lambda_start) == 0.0
    assert FN.config_lambda(quick, quick.steps) == pytest.approx(quick.lambda_max)


def test_spearman_is_scipys_and_exact_at_the_sliders_bar():
    """The slider bar reads rho >= 0.9; one swapped neighbour among five alphas is rho = 9/10 exactly."""
    from scipy.stats import spearmanr

    from faceedu.train.fader import spearman

    g = torch.Generator().manual_seed(0)
    for n in (5, 9, 17):
        x, y = torch.linspace(-2, 2, n, dtype=torch.float64), torch.rand(n, generator=g, dtype=torch.float64)
        assert spearman(x, y) == pytest.approx(spearmanr(x.numpy(), y.numpy()).statistic, abs=1e-12)
    x = torch.linspace(-2, 2, 5, dtype=torch.float64)
    assert spearman(x, torch.tensor([0.1, 0.3, 0.2, 0.4, 0.5])) == 0.9
    assert spearman(x, x.flip(0)) == -1.0 and spearman(x, x) == 1.0


def test_the_encoder_loss_never_moves_the_discriminator():
    """fader_step from the same state with lambda 0 and lambda 100: the discriminator ends identical (its
    update sees a detached code, the encoder's loss never reaches it), the auto-encoder does not."""
    import copy

    config = preset("quick", image_size=16, init_fm=4, max_fm=8, n_layers=2, hid_dim=8, lat_dis_dropout=0.0)
    torch.manual_seed(0)
    ae, dis = AutoEncoder(config), LatentDiscriminator(config)
    x, y = torch.rand(4, 3, 16, 16) * 2 - 1, torch.tensor([[1.0, 0, 1], [0, 1, 0], [1, 1, 1], [0, 0, 0]])
    ends = []
    for lam in (0.0, 100.0):
        a, d = copy.deepcopy(ae), copy.deepcopy(dis)
        opts = FN.make_optimizers(a, d, config)
        for _ in range(2):
            FN.fader_step(a, d, opts["ae"], opts["lat_dis"], x, y, lam=lam, clip=5.0)
        ends.append((a, d))
    (a0, d0), (a1, d1) = ends
    first = lambda m: torch.cat([p.detach().flatten() for p in m.parameters()])  # noqa: E731
    assert not torch.equal(first(a0), first(a1))
    # after the first step the codes differ, so only the first update can be compared exactly
    a, d = copy.deepcopy(ae), copy.deepcopy(dis)
    b, e = copy.deepcopy(ae), copy.deepcopy(dis)
    oa, ob = FN.make_optimizers(a, d, config), FN.make_optimizers(b, e, config)
    FN.fader_step(a, d, oa["ae"], oa["lat_dis"], x, y, lam=0.0, clip=5.0)
    FN.fader_step(b, e, ob["ae"], ob["lat_dis"], x, y, lam=100.0, clip=5.0)
    assert torch.equal(first(d), first(e))
    assert not torch.equal(first(a), first(b))


def test_alpha_outside_the_trained_range_warns_and_unknown_attributes_are_refused():
    config = preset("quick")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        FN_alpha = __import__("faceedu.train.fader", fromlist=["check_alphas"]).check_alphas
        assert FN_alpha(config, {"Male": 1.0, "Smiling": -1.0})[0] == 1.0
    with pytest.warns(UserWarning, match="outside the trained range"):
        FN_alpha(config, {"Eyeglasses": 2.0})
    with pytest.raises(ValueError, match="Blond_Hair"):
        FN_alpha(config, {"Blond_Hair": 1.0})


def test_cli_refuses_an_unknown_attribute_by_name(synth_root, tmp_path, capsys):
    from faceedu.cli import main

    with pytest.raises(SystemExit, match="Eyeglases"):
        main(["train", "fader", "--attrs", "Male,Eyeglases", "--root", str(synth_root), "--run", str(tmp_path / "r"),
              "--steps", "1", "--no-progress"])


# --- the quick preset's bars (lesson 05) ---------------------------------------------------------------


@pytest.fixture(scope="module")
def fader_report(trained_fader, synth_root):
    from faceedu.models.judges import load_judges
    from faceedu.train.fader import evaluate_fader, load_classifier, load_data, load_run

    ae, dis, _ = load_run(trained_fader["run"])
    data = load_data(synth_root, "test", ae.config, limit=500)
    result = evaluate_fader(ae, dis, data, load_judges(kinds=["attributes", "identity"]), faces=500,
                            classifier=load_classifier(trained_fader["run"]))
    print(f"\n[fader] bars: " + json.dumps({k: v for k, v in result.items() if k not in ("originals", "reconstructions")},
                                          default=float)[:2000])
    return result


# Issue 13 stays open on one bar. The quick preset (64x8x8 latent, the official classifier discriminator at 0.3
# learning from real faces augmented as the attribute judge, edits by a moving average of the auto-encoder's weights,
# 3,000 steps, MSE + (1 - SSIM), trained on 2 CPU threads on every machine: the trajectory follows the thread count)
# measures flips of 90.0 / 99.4 / 94.4 % (Male, Eyeglasses, Smiling) on 500 test faces, slider Spearman 0.98 / 0.93
# / 1.00, and SSIM 0.622 inside the face mask (bar 0.80). The Male flip sits at its bar: 450 of the 500 faces (another
# seed: 452). Before the augmented classifier and the average: 87.0 / 95.0 / 88.0 %, 0.98 / 0.82 / 0.93 and 0.600;
# every configuration tried is in docs/fader.md. strict: the day a preset meets it, this xfail fails.
QUICK_FADER_MISSES = pytest.mark.xfail(strict=True, raises=AssertionError,
                                       reason="issue 13: the quick Fader Network does not reach this bar yet (docs/fader.md)")


@pytest.mark.parametrize("name", ["Male", "Eyeglasses", "Smiling"])
def test_flipping_an_attribute_succeeds_by_the_judge(fader_report, name):
    row = next(r for r in fader_report["flips"] if r["attribute"] == name)
    assert row["success"] >= 0.90, f"{name}: flipped on {row['success']:.1%} of test faces"


def test_flip_ceiling_weights_the_judges_accuracy_per_value_by_the_flips_targets():
    from faceedu.train.fader import flip_ceiling

    truth = torch.tensor([1.0, 1.0, 1.0, 0.0])          # three flips ask for 0, one for 1
    read = torch.tensor([1.0, 1.0, 0.0, 1.0])            # right on 2 of 3 positives, wrong on the negative
    assert flip_ceiling(read, truth) == pytest.approx(2 / 3 * 0.25 + 0.0 * 0.75)
    assert flip_ceiling(truth, truth) == 1.0
    assert math.isnan(flip_ceiling(torch.ones(3), torch.ones(3)))   # no real face with the value asked for


def test_the_runs_classifier_discriminator_reads_each_flip_beside_the_judge(synth_root):
    """`classifier_success_add` / `_remove`: the share of added / removed flips that the classifier discriminator
    reads with the new value. A classifier that reads every attribute as absent scores 0 on every addition and
    1 on every removal; a swapped direction or a wrong one-hot channel fails here."""
    from faceedu.models.judges import load_judges
    from faceedu.train.fader import evaluate_fader, format_report, load_data

    config = preset("quick")
    torch.manual_seed(0)
    ae, dis, clf = AutoEncoder(config).eval(), LatentDiscriminator(config).eval(), FN.Classifier(config).eval()
    head = clf.proj_layers[-1]
    torch.nn.init.zeros_(head.weight)
    with torch.no_grad():
        head.bias.copy_(torch.tensor([4.0, -4.0] * len(config.attrs)))   # channel 2a (absent) wins for every a
    data = load_data(synth_root, "test", config, limit=40)
    result = evaluate_fader(ae, dis, data, load_judges(kinds=["attributes", "identity"]), faces=40,
                            alphas=(-1, 1), classifier=clf)
    for row in result["flips"]:
        assert row["classifier_success_add"] == 0.0 and row["classifier_success_remove"] == 1.0, row
    columns = [data.attr_names.index(a) for a in config.attrs]
    absent = 1 - data.attr[:40][:, columns].float().mean(0)
    assert [result["classifier_on_real"][a] for a in config.attrs] == pytest.approx(absent.tolist())
    assert "by the run's classifier discriminator" in format_report(result)


def test_quick_fader_report_puts_its_classifier_discriminator_beside_the_judge(fader_report):
    assert set(fader_report["classifier_on_real"]) == {"Male", "Eyeglasses", "Smiling"}
    for row in fader_report["flips"]:
        assert 0.0 <= row["classifier_success_remove"] <= 1.0 and 0.0 <= row["classifier_success_add"] <= 1.0, row


def test_each_flip_reports_its_ceiling_the_judge_on_real_faces(fader_report):
    """Beside each flip's success, what the judge scores on real faces (measured 92-100 %): a judge that
    misreads real faces fails here, and a success far under its ceiling is the model's."""
    for row in fader_report["flips"]:
        assert 0.85 <= row["success_ceiling"] <= 1.0, row


def test_untouched_attributes_are_kept(fader_report):
    assert fader_report["kept_mean"] >= 0.90


@QUICK_FADER_MISSES
def test_reconstruction_ssim_in_the_face_mask(fader_report):
    assert fader_report["masked_ssim"] >= 0.80


def test_latent_discriminator_reads_the_attributes_while_lambda_is_zero(trained_fader):
    from faceedu.train.fader import accuracy_curve

    curve = accuracy_curve(trained_fader["run"])
    at_zero = max(r["lat_dis_acc"] for r in curve if r["lambda"] == 0)
    assert at_zero >= 0.90, f"at lambda 0 the discriminator read the attributes at {at_zero:.1%} at best"


def test_latent_discriminator_is_fooled_by_the_end(fader_report):
    final = fader_report["lat_dis"]
    assert abs(final["accuracy"] - final["majority"]) <= 0.10, final


@pytest.mark.parametrize("name", ["Male", "Eyeglasses", "Smiling"])
def test_sliders_are_monotone(fader_report, name):
    row = next(r for r in fader_report["flips"] if r["attribute"] == name)
    assert row["spearman"] >= 0.9, (row["attribute"], row["spearman"], row["slider"])


def test_edit_command_on_a_fader_run(trained_fader, synth_root, tmp_path):
    from faceedu.cli import main

    image = next((synth_root / "celeba" / "img_align_celeba").glob("*.jpg"))
    out = tmp_path / "edit.png"
    with pytest.warns(UserWarning, match="outside the trained range"):
        assert main(["edit", str(trained_fader["run"]), "--image", str(image), "--attr", "Eyeglasses", "--alpha", "1.5",
                     "--out", str(out), "--compare"]) == 0
    assert out.is_file()
    with pytest.raises(SystemExit, match="Blond_Hair"):
        main(["edit", str(trained_fader["run"]), "--image", str(image), "--attr", "Blond_Hair", "--out", str(out)])


def test_fader_eval_names_its_judges_and_warns_on_real_layout_data(tmp_path, capsys):
    """The shipped judges were trained on SynthFaces: judging a Fader Network trained on a real-layout CelebA
    names them and warns, with the command that trains judges on that data (as lessons 01-04 do)."""
    from realfixtures import write_real_celeba

    from faceedu.cli import main

    root = write_real_celeba(tmp_path / "data", n=64)
    run = tmp_path / "run"
    assert main(["train", "fader", "--data", "celeba", "--root", str(root), "--run", str(run), "--steps", "2",
                 "--batch-size", "8", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["eval", str(run), "--limit", "16"]) == 0
    out = capsys.readouterr().out
    result = json.loads((run / "eval" / "eval.json").read_text())
    assert any("SynthFaces" in line for line in result["judges"]), result["judges"]
    assert result["judge_warnings"] and "faceedu train judge --data celeba" in result["judge_warnings"][0]
    assert "judged by the attributes judge: trained on SynthFaces" in out and result["judge_warnings"][0] in out


def test_fader_report_on_synthfaces_names_its_judges_without_a_warning(synth_root, tmp_path):
    from faceedu.data.tensors import load_face_tensors
    from faceedu.train.fader import format_report, report, train_fader
    from faceedu.train.loop import LoopConfig

    config = preset("quick", batch_size=8)
    data = load_face_tensors(synth_root, split="train", size=64, masks=False, crop=config.crop, limit=64)
    train_fader(config, tmp_path / "run", synth_root, steps=2, dataset=data,
                loop=LoopConfig(progress=False, sample_every=0))
    result = report(tmp_path / "run", root=synth_root, faces=16, figures=False)
    assert result["judges"] and all("SynthFaces" in line for line in result["judges"]), result["judges"]
    assert result["judge_warnings"] == []
    assert "judged by the attributes judge: trained on SynthFaces" in format_report(result)


def test_the_quick_presets_ssim_term_is_the_shared_ssim():
    """The SSIM in the quick preset's reconstruction loss (separable, one call) equals faceedu.losses.ssim."""
    from faceedu import losses

    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(4, 3, 32, 32, generator=g), torch.rand(4, 3, 32, 32, generator=g)
    y = (x + 0.3 * y).clamp(0, 1)
    assert FN.separable_ssim(x, y).item() == pytest.approx(losses.ssim(x, y, 1.0).item(), abs=1e-6)
    assert FN.separable_ssim(x, x).item() == pytest.approx(1.0, abs=1e-6)
