"""CycleGAN (lesson 08): parity with the official architecture, its pieces (receptive field, init, image
pool, schedule), the JAFFE expression data and its errors, exact resume, and the command line."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from faceedu.data.expressions import load_expression_tensors, parse_domains
from faceedu.data.layout import DatasetError
from faceedu.models import cyclegan as CG
from faceedu.models.cyclegan import CycleGAN, ImagePool, NLayerDiscriminator, ResnetGenerator, count_parameters, preset


# --- architecture parity (counts measured on junyanz/pytorch-CycleGAN-and-pix2pix) ----------------------

@pytest.mark.parametrize("channels,blocks,expected", [(3, 9, 11_378_179), (3, 6, 7_837_699), (1, 9, 11_365_633)])
def test_generator_parameter_count_matches_the_official_code(channels, blocks, expected):
    assert count_parameters(ResnetGenerator(channels, channels, 64, blocks)) == expected


@pytest.mark.parametrize("channels,expected", [(3, 2_764_737), (1, 2_762_689)])
def test_patchgan_parameter_count_matches_the_official_code(channels, expected):
    assert count_parameters(NLayerDiscriminator(channels, 64, 3)) == expected


def test_full_preset_is_the_official_configuration():
    config = preset("full")
    model = CycleGAN(config)
    assert count_parameters(model.G_A) == count_parameters(model.G_B) == 11_365_633     # JAFFE: grayscale
    assert count_parameters(model.D_A) == count_parameters(model.D_B) == 2_762_689
    assert (config.image_size, config.load_size, config.n_blocks, config.ngf, config.ndf) == (256, 286, 9, 64, 64)
    assert (config.gan_loss, config.lambda_cycle, config.lambda_identity, config.pool_size) == ("lsgan", 10, 0.5, 50)
    assert (config.lr, config.beta1, config.batch_size, config.epochs_constant, config.epochs_decay) == (2e-4, 0.5, 1, 100, 100)
    rgb = CycleGAN(preset("full", channels=3))
    assert count_parameters(rgb.G_A) == 11_378_179 and count_parameters(rgb.D_A) == 2_764_737


def test_facepaint_preset():
    config = preset("facepaint")
    assert (config.lr, config.steps, config.domains) == (5e-4, 350, ("HA", "NE"))
    assert CG.schedule_steps(config, 100) == (175, 175)


def test_shapes_receptive_field_and_instance_norm():
    G, D = ResnetGenerator(1, 1, 8, 2), NLayerDiscriminator(1, 8, 3)
    x = torch.rand(2, 1, 64, 64) * 2 - 1
    y = G(x)
    assert y.shape == x.shape and float(y.detach().abs().max()) <= 1
    assert D(torch.zeros(1, 1, 256, 256)).shape == (1, 1, 30, 30)
    assert CG.receptive_field(D) == 70
    assert CG.receptive_field(NLayerDiscriminator(1, 8, 1)) == 16 and CG.receptive_field(NLayerDiscriminator(1, 8, 2)) == 34
    norms = [m for m in G.modules() if isinstance(m, nn.InstanceNorm2d)]
    assert norms and not any(m.affine for m in norms)
    assert sum(isinstance(m, nn.ReflectionPad2d) for m in G.modules()) == 2 + 2 * 2
    ups = [m for m in G.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert len(ups) == 2 and all(m.output_padding == (1, 1) and m.stride == (2, 2) for m in ups)


def test_init_is_normal_0_02():
    torch.manual_seed(0)
    model = CycleGAN(preset("quick"))
    weights = torch.cat([m.weight.detach().flatten() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))])
    assert abs(float(weights.std()) - 0.02) < 0.002 and abs(float(weights.mean())) < 0.001
    assert all(float(m.bias.detach().abs().max()) == 0 for m in model.modules() if isinstance(m, nn.Conv2d))


def test_image_pool_returns_history_half_of_the_time_and_is_saved():
    random.seed(0)
    pool = ImagePool(5, (1, 2, 2))
    first = [pool.query(torch.full((1, 1, 2, 2), float(i))) for i in range(5)]
    assert [float(x[0, 0, 0, 0]) for x in first] == [0, 1, 2, 3, 4]
    old = sum(float(pool.query(torch.full((1, 1, 2, 2), float(i)))[0, 0, 0, 0]) != i for i in range(5, 1005))
    assert 400 < old < 600
    state = pool.state_dict()
    assert int(state["count"]) == 5 and state["images"].shape == (5, 1, 2, 2)
    assert torch.equal(ImagePool(0).query(torch.ones(3, 1, 2, 2)), torch.ones(3, 1, 2, 2))


def test_linear_decay_is_constant_then_linear():
    assert CG.linear_decay(0, 100, 100) == CG.linear_decay(100, 100, 100) == 1.0
    assert CG.linear_decay(150, 100, 100) == pytest.approx(1 - 50 / 101)
    assert 0 < CG.linear_decay(200, 100, 100) < 0.01


def test_discriminator_loss_is_halved_lsgan():
    D = NLayerDiscriminator(1, 4, 3)
    real, fake = torch.rand(2, 1, 32, 32), torch.rand(2, 1, 32, 32)
    expected = 0.5 * (((D(real) - 1) ** 2).mean() + (D(fake) ** 2).mean())
    assert torch.allclose(CG.discriminator_step_loss(D, real, fake), expected)


# --- data --------------------------------------------------------------------------------------------------

def test_expression_tensors_are_subject_disjoint(synth_root):
    train = load_expression_tensors(synth_root, "HA,NE", "train", size=32)
    test = load_expression_tensors(synth_root, ("HA", "NE"), "test", size=32)
    assert train.images["HA"].shape[1:] == (1, 32, 32) and train.images["HA"].dtype == torch.uint8
    assert not set(train.subjects["HA"]) & set(test.subjects["HA"])
    assert set(test.subjects["NE"]) == set(test.test_subjects)
    other = load_expression_tensors(synth_root, "SU,SA", "test", size=32)   # any two expressions; same split
    assert other.test_subjects == test.test_subjects


def test_unknown_or_repeated_domain_is_explained():
    with pytest.raises(ValueError, match=r"Unknown JAFFE expression 'XX'.*HA \(happiness\).*NE \(neutral\)"):
        parse_domains("HA,XX")
    with pytest.raises(ValueError, match="two different expression codes"):
        parse_domains("HA,HA")
    assert parse_domains("ha, ne") == ("HA", "NE")


def _jaffe_folder(tmp_path: Path, synth_root: Path, keep) -> Path:
    folder = tmp_path / "jaffe"
    folder.mkdir(parents=True)
    for path in sorted((synth_root / "jaffe").glob("*.tiff")):
        if keep(path.name):
            shutil.copy(path, folder / path.name)
    return tmp_path


def test_an_empty_domain_after_the_split_is_explained(tmp_path, synth_root):
    test_subjects = load_expression_tensors(synth_root, "HA,NE", "test", size=16).test_subjects
    # keep the test subjects' happy faces only among them: NE is empty on the test side
    root = _jaffe_folder(tmp_path, synth_root, lambda name: name.split(".")[0] not in test_subjects
                         or name.split(".")[1].startswith("HA"))
    with pytest.raises(DatasetError, match=r"Domain NE \(neutral\) is empty on the test split"):
        load_expression_tensors(root, "HA,NE", "test", size=16, test_subjects=test_subjects)


def test_a_colour_image_is_refused_when_one_channel_is_expected(tmp_path, synth_root):
    root = _jaffe_folder(tmp_path, synth_root, lambda name: name.split(".")[1][:2] in ("HA", "NE"))
    victim = sorted((root / "jaffe").glob("*.HA1.*"))[0]
    grey = np.asarray(Image.open(victim).convert("L"))
    colour = np.stack([grey, grey // 2, grey], axis=-1)
    Image.fromarray(colour.astype(np.uint8), "RGB").save(victim)
    with pytest.raises(DatasetError, match=rf"{victim.name} is a colour image .*one channel is expected"):
        load_expression_tensors(root, "HA,NE", "all", size=16)
    assert load_expression_tensors(root, "HA,NE", "all", size=16, channels=3).images["HA"].shape[1] == 3


# --- training: exact resume, the command line ------------------------------------------------------------

def _tiny():
    # threads=0: the resume test compares train_cyclegan with the loop called directly, on the same threads
    return preset("quick", ngf=4, ndf=4, n_blocks=1, pool_size=3, batch_size=2, threads=0)


def test_resume_is_exact(tmp_path, synth_root):
    from faceedu.train.cyclegan import train_cyclegan
    from faceedu.train.loop import CHECKPOINT, LoopConfig

    loop = LoopConfig(progress=False, sample_every=0, checkpoint_every=3, log_every=1)
    train_cyclegan(_tiny(), tmp_path / "straight", synth_root, steps=6, loop=loop)
    # the same 6-step schedule stopped after 3 steps, then resumed from its checkpoint to 6
    from faceedu.train import cyclegan as T
    from faceedu.train.loop import train

    config = _tiny()
    train_data = T.load_data(synth_root, config, "train")
    test_data = T.load_data(synth_root, config, "test")
    dataset = T.UnpairedFaces(train_data.images["HA"], train_data.images["NE"], config)
    for stop in (3, 6):
        task = T.CycleGANTask(config, (3, 3), test_faces=T.fixed_test_faces(test_data, config))
        train(task, dataset, tmp_path / "resumed", LoopConfig(**{**loop.__dict__, "steps": stop, "batch_size": 2}))
    a = torch.load(tmp_path / "straight" / CHECKPOINT, weights_only=True)
    b = torch.load(tmp_path / "resumed" / CHECKPOINT, weights_only=True)
    for name in ("G_A", "G_B", "D_A", "D_B", "pool_A", "pool_B"):
        for key, value in a["modules"][name].items():
            assert torch.equal(value, b["modules"][name][key]), f"{name}.{key} differs after resuming"


@pytest.mark.parametrize("argv,message", [
    (["--domains", "HA,XX"], "Unknown JAFFE expression 'XX'"),
    (["--domains", "HA"], "two different expression codes"),
])
def test_cli_bad_domains(tmp_path, argv, message, capsys):
    from faceedu.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["train", "cyclegan", "--run", str(tmp_path / "run"), *argv])
    assert message in str(exit_info.value) and str(exit_info.value).startswith("faceedu train cyclegan:")


def test_cli_trains_and_evaluates(tmp_path, synth_root, capsys):
    from faceedu.cli import main

    status = main(["train", "cyclegan", "--preset", "quick", "--root", str(synth_root), "--steps", "4",
                   "--batch-size", "2", "--run", str(tmp_path / "run"), "--no-progress", "--sample-every", "2"])
    out = capsys.readouterr().out
    assert status == 0 and "images/s" in out and "expression judge" in out and "cycle L1" in out
    assert (tmp_path / "run" / "eval" / "cycles.png").is_file()
    assert sorted(p.name for p in (tmp_path / "run" / "samples").glob("*.png")) == ["step_000002.png", "step_000004.png"]
    assert "judged by the expression judge: trained on SynthFaces" in out and "WARNING" not in out
    # the same faces as a real JAFFE folder (no SynthFaces marker): the SynthFaces judges say so, with the fix
    real = _jaffe_folder(tmp_path / "real", synth_root, lambda name: True)
    assert main(["eval", str(tmp_path / "run"), "--root", str(real)]) == 0
    out = capsys.readouterr().out
    for kind in ("expression", "identity"):
        assert f"WARNING: the {kind} judge was trained on SynthFaces, but {real} holds JAFFE faces" in out
        assert f"faceedu train judge --data jaffe --kind {kind} --root {real.resolve()}" in out


def test_the_quick_preset_trains_on_one_thread_and_gives_the_threads_back(tmp_path, synth_root):
    """One thread while the quick preset trains (its result then does not depend on the core count); the
    caller's setting afterwards."""
    from faceedu.train.cyclegan import train_cyclegan
    from faceedu.train.loop import LoopConfig

    seen = []
    before = torch.get_num_threads()
    config = preset("quick", ngf=4, ndf=4, n_blocks=1, pool_size=3, batch_size=2)
    assert config.threads == 1
    import faceedu.train.cyclegan as T

    step = T.CycleGANTask.step
    T.CycleGANTask.step = lambda self, batch, i: seen.append(torch.get_num_threads()) or step(self, batch, i)
    try:
        train_cyclegan(config, tmp_path / "run", synth_root, steps=2,
                       loop=LoopConfig(progress=False, sample_every=0, checkpoint_every=2, log_every=1))
    finally:
        T.CycleGANTask.step = step
    assert seen == [1, 1] and torch.get_num_threads() == before


def test_celeba_smiling_pairing_loads_both_domains_from_the_partition(synth_root):
    from faceedu.data.expressions import load_attribute_domains, parse_attribute_domains
    from faceedu.data.tensors import load_face_tensors

    assert parse_attribute_domains("Smiling") == parse_attribute_domains("Smiling,not_Smiling") == ("Smiling", "not_Smiling")
    faces = load_face_tensors(synth_root, split="test", size=32, masks=False, limit=300)
    pairing = load_attribute_domains(synth_root, "Smiling", "test", size=32, limit=300)
    smiling = faces.attr[:, faces.attr_names.index("Smiling")].bool()
    assert torch.equal(pairing.images["Smiling"], faces.images[smiling])
    assert torch.equal(pairing.images["not_Smiling"], faces.images[~smiling])
    assert pairing.subjects["Smiling"] == [str(int(i)) for i in faces.identity[smiling]]
    train_ids = set(load_attribute_domains(synth_root, "Smiling", "train", size=32, limit=2000).subjects["Smiling"])
    assert not train_ids & set(pairing.subjects["Smiling"])          # CelebA's partition keeps identities apart


@pytest.mark.parametrize("argv,message", [
    (["--preset", "quick-celeba", "--domains", "Smiles"], "Unknown CelebA attribute 'Smiles'"),
    (["--preset", "quick-celeba", "--domains", "Smiling,Male"], "Give one CelebA attribute"),
    (["--data", "celeba", "--preset", "quick"], "use --preset quick-celeba"),
    (["--preset", "quick-celeba", "--data", "jaffe"], "preset is for CelebA faces"),
])
def test_cli_bad_celeba_pairing(tmp_path, synth_root, argv, message):
    from faceedu.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["train", "cyclegan", "--root", str(synth_root), "--run", str(tmp_path / "run"), "--steps", "2", *argv])
    assert message in str(exit_info.value) and str(exit_info.value).startswith("faceedu train cyclegan:")


def test_cli_trains_and_evaluates_the_celeba_smiling_pairing(tmp_path, synth_root, capsys):
    from faceedu.cli import main

    status = main(["train", "cyclegan", "--preset", "quick-celeba", "--root", str(synth_root), "--steps", "2",
                   "--batch-size", "2", "--run", str(tmp_path / "run"), "--no-progress", "--sample-every", "2"])
    out = capsys.readouterr().out
    assert status == 0 and "images/s" in out and "attributes judge: not_Smiling on Smiling->not_Smiling" in out
    assert "judged by the attributes judge: trained on SynthFaces" in out and "WARNING" not in out
    report = json.loads((tmp_path / "run" / "eval" / "eval.json").read_text())
    assert report["data"] == "celeba" and report["domains"] == ["Smiling", "not_Smiling"]
    assert report["judge_Smiling_on_real_Smiling"] > 0.8 and report["judge_not_Smiling_on_real_not_Smiling"] > 0.8


def test_celeba_pairing_reads_a_real_layout_folder_without_identities(tmp_path):
    """Real CelebA with only images, attributes and partition: each face is its own subject."""
    from realfixtures import write_real_celeba

    from faceedu.data.expressions import load_attribute_domains

    root = write_real_celeba(tmp_path / "real", n=64)
    pairing = load_attribute_domains(root, "Smiling", "all", size=32)
    both = pairing.subjects["Smiling"] + pairing.subjects["not_Smiling"]
    assert len(both) == 64 and len(set(both)) == 64 and all(s.startswith("image ") for s in both)
    assert pairing.images["Smiling"].shape[1:] == (3, 32, 32)


def test_samples_without_fixed_faces_show_the_batch():
    """Without fixed test faces (the bench's Task) the sample grid is drawn from the batch itself."""
    from faceedu.train.cyclegan import CycleGANTask

    config = _tiny()
    task = CycleGANTask(config, (3, 3))
    batch = {k: torch.rand(2, config.channels, config.image_size, config.image_size) * 2 - 1 for k in "AB"}
    grid = task.samples(batch)
    assert grid.shape == (12, config.channels, config.image_size, config.image_size)
    assert torch.allclose(grid[:2], (batch["A"] + 1) / 2) and torch.allclose(grid[6:8], (batch["B"] + 1) / 2)
