"""faceedu.losses against independent implementations (scikit-image's SSIM, hand-computed values) and the
properties every loss must have."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage.metrics import structural_similarity

from faceedu import losses as L


def skimage_ssim(x: torch.Tensor, y: torch.Tensor) -> float:
    """scikit-image's SSIM of one (C, H, W) pair with the settings of Wang et al. (2004)."""
    return structural_similarity(x.double().numpy(), y.double().numpy(), channel_axis=0, data_range=1.0,
                                 gaussian_weights=True, sigma=1.5, use_sample_covariance=False)


@pytest.mark.parametrize("size,noise", [((3, 64, 64), 0.05), ((3, 40, 56), 0.3), ((1, 23, 31), 0.1)])
def test_ssim_matches_skimage_on_random_images(size, noise):
    g = torch.Generator().manual_seed(sum(size))
    x = torch.rand(4, *size, generator=g)
    y = (x + noise * torch.randn(x.shape, generator=g)).clamp(0, 1)
    ours = L.ssim(x, y, reduction="none")
    for i in range(4):
        assert abs(ours[i].item() - skimage_ssim(x[i], y[i])) < 1e-4
    assert abs(L.ssim(x, y).item() - ours.mean().item()) < 1e-6


def test_ssim_matches_skimage_on_faces(synth_root):
    from faceedu.data.tensors import load_face_tensors

    faces = load_face_tensors(synth_root, "test", limit=8)
    x = torch.stack([faces[i]["image"] for i in range(8)])
    blurred = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)     # a plausible reconstruction
    shifted = torch.roll(x, shifts=(1, 2), dims=(2, 3))
    for y in (blurred, shifted, x.flip(0)):
        ours = L.ssim(x, y, reduction="none")
        reference = torch.tensor([skimage_ssim(a, b) for a, b in zip(x, y)])
        assert torch.allclose(ours.double(), reference.double(), atol=1e-4)


def test_ssim_properties():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 32, 32, generator=g)
    assert torch.allclose(L.ssim(x, x), torch.tensor(1.0), atol=1e-6)
    assert L.ssim(x, 1 - x) < 0                                       # anti-correlated images
    flat = torch.zeros(1, 1, 16, 16)
    assert torch.isfinite(L.ssim(flat, flat)) and L.ssim(flat, flat) == 1   # the constants avoid 0/0
    y = x.clone().requires_grad_()
    L.ssim_loss(y, x.flip(0)).backward()
    assert torch.isfinite(y.grad).all() and y.grad.abs().sum() > 0
    assert torch.allclose(L.ssim_loss(x, x), torch.tensor(1.0), atol=1e-6)   # 2 - SSIM
    with pytest.raises(ValueError, match="smaller than"):
        L.ssim(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8))


def test_gaussian_window_is_skimage_and_tensorflow_shaped():
    w = L.gaussian_window(11, 1.5)
    assert w.shape == (11, 11) and math.isclose(w.sum().item(), 1.0, rel_tol=1e-6)
    assert torch.allclose(w, w.T) and w[5, 5] == w.max()
    r = np.arange(-5, 6)
    g = np.exp(-r ** 2 / (2 * 1.5 ** 2))
    assert np.allclose(w.numpy(), np.outer(g, g) / np.outer(g, g).sum(), atol=1e-7)
    assert L.gaussian_window(9).shape == (9, 9)


def test_ssim_filter_is_the_depthwise_convolution_with_the_window():
    """The SSIM's local means, taken as two banded matrix products, are the 'valid' depthwise convolution
    with gaussian_window, on an image that is not square (rows and columns kept apart)."""
    g = torch.Generator().manual_seed(3)
    x = torch.rand(2, 3, 20, 31, generator=g, dtype=torch.float64)
    window = L.gaussian_window(9, 1.5, torch.float64)
    expected = torch.nn.functional.conv2d(x, window[None, None].expand(3, 1, 9, 9), groups=3)
    ours = L._filter(x, L._bands(L._gaussian(9, 1.5), x))
    assert ours.shape == (2, 3, 12, 23) and torch.allclose(ours, expected)


def test_masked_ssim_only_sees_windows_centred_on_the_mask():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(1, 3, 48, 48, generator=g)
    y = x.clone()
    y[..., :, 24:] = torch.rand(1, 3, 48, 24, generator=g)             # right half wrong
    left = torch.zeros(1, 1, 48, 48)
    left[..., :, :16] = 1                                               # windows there never reach column 24
    assert torch.allclose(L.ssim(y, x, mask=left), torch.tensor(1.0), atol=1e-6)
    assert L.ssim(y, x, mask=1 - left) < 0.5
    assert torch.allclose(L.ssim(y, x, mask=torch.ones(1, 1, 48, 48)), L.ssim(y, x))


def test_ms_ssim():
    g = torch.Generator().manual_seed(2)
    x = torch.rand(2, 3, 64, 64, generator=g)
    noisy = (x + 0.1 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    assert torch.allclose(L.ms_ssim(x, x), torch.tensor(1.0), atol=1e-5)
    assert 0 < L.ms_ssim(x, noisy) < 1
    # 16x16 with an 11-pixel window fits one scale only: MS-SSIM reduces to SSIM
    small = x[..., :16, :16]
    assert torch.allclose(L.ms_ssim(small, noisy[..., :16, :16]), L.ssim(small, noisy[..., :16, :16]), atol=1e-5)
    big = torch.rand(1, 1, 176, 176, generator=g)
    assert 0 < L.ms_ssim(big, (big + 0.05).clamp(0, 1)) < 1              # all five scales


def test_pixel_losses_and_their_masked_forms():
    x = torch.zeros(2, 3, 4, 4)
    y = torch.ones(2, 3, 4, 4)
    y[:, :, :2] = 3                                                     # error 3 on the top half, 1 below
    top = torch.zeros(2, 1, 4, 4)
    top[:, :, :2] = 1
    assert L.mae(y, x).item() == 2 and L.mse(y, x).item() == 5
    assert L.mae(y, x, mask=top).item() == 3 and L.mse(y, x, mask=top).item() == 9
    assert L.mae(y, x, mask=1 - top).item() == 1
    assert torch.isfinite(L.mae(y, x, mask=torch.zeros(2, 1, 4, 4)))


def test_bce_dice_and_mask_loss():
    t = torch.zeros(2, 1, 8, 8)
    t[:, :, 2:6, 2:6] = 1
    assert L.dice(t, t).item() == pytest.approx(1.0)
    assert L.dice(t, 1 - t).item() == pytest.approx(1 / 65)             # only the smoothing survives
    assert L.dice(torch.zeros_like(t), torch.zeros_like(t)).item() == 1.0   # two empty masks agree
    half = t.clone()
    half[:, :, 2:4] = 0                                                 # 8 of 16 pixels
    assert L.dice(half, t, smooth=0).item() == pytest.approx(2 * 8 / 24)
    assert L.bce(t, t).item() < 1e-5 and math.isfinite(L.bce(1 - t, t).item())
    p = torch.full_like(t, 0.3)
    assert L.bce(p, t).item() == pytest.approx(F.binary_cross_entropy(p, t).item(), rel=1e-5)
    assert L.bce_dice(t, t).item() < 1e-4
    assert L.dice_loss(half, t).item() == pytest.approx(1 - L.dice(half, t).item())


def test_kl_divergence():
    mu, logvar = torch.zeros(5, 7), torch.zeros(5, 7)
    assert L.kl_divergence(mu, logvar).item() == 0
    g = torch.Generator().manual_seed(3)
    mu, logvar = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    # closed form against torch.distributions
    q = torch.distributions.Normal(mu, (0.5 * logvar).exp())
    p = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))
    expected = torch.distributions.kl_divergence(q, p).sum(1).mean()
    assert torch.allclose(L.kl_divergence(mu, logvar), expected, atol=1e-5)
    assert torch.allclose(L.kl_divergence(mu.repeat(3, 1), logvar.repeat(3, 1)), expected, atol=1e-5)   # batch mean
    assert L.kl_divergence(mu, logvar) > 0


def test_compose_keeps_the_input_outside_the_mask():
    pred, x = torch.full((1, 3, 4, 4), 0.2), torch.full((1, 3, 4, 4), 0.9)
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., 1:3, 1:3] = 1
    out = L.compose(pred, x, mask)
    assert torch.all(out[..., 1:3, 1:3] == 0.2) and out.sum() == pytest.approx(3 * (4 * 0.2 + 12 * 0.9))


def test_gan_losses_follow_their_definitions():
    import math

    real, fake = torch.tensor([2.0, -1.0]), torch.tensor([0.5, -3.0])
    sig = torch.sigmoid
    bce_d = -(torch.log(sig(real)).mean() + torch.log(1 - sig(fake)).mean())
    assert L.discriminator_loss(real, fake, "bce").item() == pytest.approx(bce_d.item(), rel=1e-5)
    smoothed = -(0.9 * torch.log(sig(real)) + 0.1 * torch.log(1 - sig(real))).mean() - torch.log(1 - sig(fake)).mean()
    assert L.discriminator_loss(real, fake, "bce", real_label=0.9).item() == pytest.approx(smoothed.item(), rel=1e-5)
    assert L.generator_loss(fake, "bce").item() == pytest.approx(-torch.log(sig(fake)).mean().item(), rel=1e-5)
    assert L.discriminator_loss(real, fake, "hinge").item() == pytest.approx((0 + 2) / 2 + (1.5 + 0) / 2)
    assert L.generator_loss(fake, "hinge").item() == pytest.approx(1.25)
    assert L.discriminator_loss(real, fake, "lsgan").item() == pytest.approx((1 + 4) / 2 + (0.25 + 9) / 2)
    assert L.generator_loss(fake, "lsgan").item() == pytest.approx((0.25 + 16) / 2)
    assert not math.isnan(L.generator_loss(torch.tensor([-100.0]), "bce").item())  # stable on logits
    with pytest.raises(ValueError, match="choose from"):
        L.generator_loss(fake, "wgan")
