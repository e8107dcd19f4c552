"""Lesson 02's checks can fail: the reference solution passes every check (visible and hidden), the
released stubs fail every one, calling faceedu's own implementation is rejected, and every mutant - a
realistic mistake, written below next to its exercise - is rejected. The kill rate is printed."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from faceedu.grading import lesson02
from faceedu.grading.core import ReferenceUsed
from gradertests import GraderContract, run_checks

SLUG = "02_masks_and_losses"
CHECKS = {
    "ssim": lesson02.check_ssim,
    "dice": lesson02.check_dice,
    "mask_loss": lesson02.check_mask_loss,
    "masked_mae": lesson02.check_masked_mae,
    "forward_with_mask": lesson02.check_forward_with_mask,
}

# --- mutants: realistic wrong implementations -------------------------------------------------------


def _gauss(size, sigma, dtype):
    r = torch.arange(size, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-r ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    return torch.outer(g, g)


def _ssim(x, y, window, c1=1e-4, c2=9e-4, padding=0, cov_norm=1.0, raw_moments=False):
    c = x.shape[1]
    w = window.to(x.dtype).expand(c, 1, *window.shape)

    def local(t):
        return F.conv2d(t, w, groups=c, padding=padding)

    mx, my = local(x), local(y)
    if raw_moments:
        vx, vy, cxy = local(x * x), local(y * y), local(x * y)
    else:
        vx = cov_norm * (local(x * x) - mx ** 2)
        vy = cov_norm * (local(y * y) - my ** 2)
        cxy = cov_norm * (local(x * y) - mx * my)
    return ((2 * mx * my + c1) * (2 * cxy + c2) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))).mean()


def ssim_box_window(x, y, window_size=11, sigma=1.5, data_range=1.0):
    """A uniform 11x11 window instead of the Gaussian."""
    return _ssim(x, y, torch.full((window_size, window_size), 1 / window_size ** 2),
                 (0.01 * data_range) ** 2, (0.03 * data_range) ** 2)


def ssim_no_constants(x, y, window_size=11, sigma=1.5, data_range=1.0):
    """C1 = C2 = 0: 0/0 on flat regions."""
    return _ssim(x, y, _gauss(window_size, sigma, x.dtype), 0.0, 0.0)


def ssim_same_padding(x, y, window_size=11, sigma=1.5, data_range=1.0):
    """Zero padding keeps the map full size, but the borders are wrong."""
    return _ssim(x, y, _gauss(window_size, sigma, x.dtype), (0.01 * data_range) ** 2, (0.03 * data_range) ** 2,
                 padding=window_size // 2)


def ssim_sample_covariance(x, y, window_size=11, sigma=1.5, data_range=1.0):
    """N / (N - 1) on the (co)variances: skimage's use_sample_covariance=True."""
    return _ssim(x, y, _gauss(window_size, sigma, x.dtype), (0.01 * data_range) ** 2, (0.03 * data_range) ** 2,
                 cov_norm=window_size ** 2 / (window_size ** 2 - 1))


def ssim_grayscale(x, y, window_size=11, sigma=1.5, data_range=1.0):
    """Averages the colour channels first."""
    return _ssim(x.mean(1, keepdim=True), y.mean(1, keepdim=True), _gauss(window_size, sigma, x.dtype),
                 (0.01 * data_range) ** 2, (0.03 * data_range) ** 2)


def ssim_raw_moments(x, y, window_size=11, sigma=1.5, data_range=1.0):
    """Forgets to subtract the means from the second moments."""
    return _ssim(x, y, _gauss(window_size, sigma, x.dtype), (0.01 * data_range) ** 2, (0.03 * data_range) ** 2,
                 raw_moments=True)


def ssim_fixed_range(x, y, window_size=11, sigma=1.5, data_range=1.0):
    """Ignores data_range (constants always for L = 1)."""
    return _ssim(x, y, _gauss(window_size, sigma, x.dtype))


def dice_no_smoothing(p, target, smooth=1.0):
    """No smoothing: 0 / 0 for two empty masks."""
    dims = tuple(range(1, p.dim()))
    return (2 * (p * target).sum(dims) / (p.sum(dims) + target.sum(dims))).mean()


def dice_whole_batch(p, target, smooth=1.0):
    """One Dice for the batch: big faces outweigh small ones."""
    return (2 * (p * target).sum() + smooth) / (p.sum() + target.sum() + smooth)


def dice_iou(p, target, smooth=1.0):
    """Intersection over union instead of Dice."""
    dims = tuple(range(1, p.dim()))
    inter = (p * target).sum(dims)
    return ((inter + smooth) / (p.sum(dims) + target.sum(dims) - inter + smooth)).mean()


def dice_thresholded(p, target, smooth=1.0):
    """Thresholds the prediction at 0.5: right for hard masks, no gradient."""
    hard = (p > 0.5).float()
    dims = tuple(range(1, p.dim()))
    return ((2 * (hard * target).sum(dims) + smooth) / (hard.sum(dims) + target.sum(dims) + smooth)).mean()


def dice_constant_smooth(p, target, smooth=1.0):
    """Hard-codes smooth = 1 and ignores the argument."""
    dims = tuple(range(1, p.dim()))
    return ((2 * (p * target).sum(dims) + 1) / (p.sum(dims) + target.sum(dims) + 1)).mean()


def _dice(p, t):
    dims = tuple(range(1, p.dim()))
    return ((2 * (p * t).sum(dims) + 1) / (p.sum(dims) + t.sum(dims) + 1)).mean()


def _bce(p, t):
    q = p.clamp(1e-7, 1 - 1e-7)
    return -(t * q.log() + (1 - t) * (1 - q).log()).mean()


def mask_loss_plus_dice(p, target):
    """Adds Dice instead of 1 - Dice: rewards worse masks."""
    return _bce(p, target) + _dice(p, target)


def mask_loss_bce_only(p, target):
    """Forgets the Dice part."""
    return _bce(p, target)


def mask_loss_unclamped(p, target):
    """log(0) for confident mistakes: infinite loss."""
    return -(target * p.log() + (1 - target) * (1 - p).log()).mean() + 1 - _dice(p, target)


def mask_loss_dice_only(p, target):
    """Forgets the BCE part."""
    return 1 - _dice(p, target)


def mask_loss_with_logits(p, target):
    """Treats the probabilities as logits (BCE-with-logits on a sigmoid output)."""
    return F.binary_cross_entropy_with_logits(p, target) + 1 - _dice(p, target)


def masked_mae_target_only(pred, x, mask):
    """The mask on the target only: the background must become black."""
    return (pred - x * mask).abs().mean()


def masked_mae_all_pixels(pred, x, mask):
    """Masks the error but divides by every pixel: the loss shrinks with the face."""
    return ((pred - x).abs() * mask).mean()


def masked_mae_forgets_channels(pred, x, mask):
    """Divides by the mask's pixel count, not times the 3 channels."""
    return ((pred - x).abs() * mask).sum() / mask.sum()


def masked_mae_per_image(pred, x, mask):
    """Averages per image, then over the batch: a tiny face counts as much as a big one."""
    e = ((pred - x).abs() * mask).flatten(1).sum(1)
    return (e / (mask.flatten(1).sum(1) * pred.shape[1]).clamp_min(1e-8)).mean()


def masked_mae_pred_only(pred, x, mask):
    """Masks the prediction only: the target's background still counts."""
    return (pred * mask - x).abs().mean()


def forward_always_predicted_mask(vae, x, mask=None):
    """Composes with the predicted mask even when the true one is given."""
    mu, logvar = vae.encoder(x)
    z = vae.sampler(mu, logvar) if vae.training else mu
    pred, mask_hat = vae.image_decoder(z), vae.mask_decoder(z)
    return pred * mask_hat + x * (1 - mask_hat), pred, mask_hat, mu, logvar


def forward_swapped(vae, x, mask=None):
    """Input inside the mask, prediction outside."""
    mu, logvar = vae.encoder(x)
    z = vae.sampler(mu, logvar) if vae.training else mu
    pred, mask_hat = vae.image_decoder(z), vae.mask_decoder(z)
    m = mask if mask is not None else mask_hat
    return x * m + pred * (1 - m), pred, mask_hat, mu, logvar


def forward_no_composition(vae, x, mask=None):
    """Returns the raw prediction as out."""
    mu, logvar = vae.encoder(x)
    z = vae.sampler(mu, logvar) if vae.training else mu
    pred, mask_hat = vae.image_decoder(z), vae.mask_decoder(z)
    return pred, pred, mask_hat, mu, logvar


def forward_always_samples(vae, x, mask=None):
    """Samples z at inference too: the same image gives a different output every time."""
    mu, logvar = vae.encoder(x)
    z = vae.sampler(mu, logvar)
    pred, mask_hat = vae.image_decoder(z), vae.mask_decoder(z)
    m = mask if mask is not None else mask_hat
    return pred * m + x * (1 - m), pred, mask_hat, mu, logvar


def forward_never_samples(vae, x, mask=None):
    """Decodes mu in training too: the VAE degenerates into an autoencoder."""
    mu, logvar = vae.encoder(x)
    pred, mask_hat = vae.image_decoder(mu), vae.mask_decoder(mu)
    m = mask if mask is not None else mask_hat
    return pred * m + x * (1 - m), pred, mask_hat, mu, logvar


def forward_detached_mask(vae, x, mask=None):
    """Runs the mask decoder without gradient: it never learns."""
    mu, logvar = vae.encoder(x)
    z = vae.sampler(mu, logvar) if vae.training else mu
    pred = vae.image_decoder(z)
    with torch.no_grad():
        mask_hat = vae.mask_decoder(z)
    m = mask if mask is not None else mask_hat
    return pred * m + x * (1 - m), pred, mask_hat, mu, logvar



def ssim_ignores_window_size(x, y, window_size=11, sigma=1.5, data_range=1.0):
    """Always an 11x11 window, whatever window_size says (scored full marks without the hidden checks)."""
    return _ssim(x, y, _gauss(11, sigma, x.dtype), (0.01 * data_range) ** 2, (0.03 * data_range) ** 2)


def ssim_ignores_sigma(x, y, window_size=11, sigma=1.5, data_range=1.0):
    """The Gaussian's width fixed at 1.5, whatever sigma says (passed even the hidden checks once)."""
    return _ssim(x, y, _gauss(window_size, 1.5, x.dtype), (0.01 * data_range) ** 2, (0.03 * data_range) ** 2)


def forward_mask_second_sample(vae, x, mask=None):
    """In training, decodes the mask from a second, independent sample of z (passed the hidden checks once)."""
    mu, logvar = vae.encoder(x)
    if vae.training:
        pred, mask_hat = vae.image_decoder(vae.sampler(mu, logvar)), vae.mask_decoder(vae.sampler(mu, logvar))
    else:
        pred, mask_hat = vae.image_decoder(mu), vae.mask_decoder(mu)
    m = mask if mask is not None else mask_hat
    return pred * m + x * (1 - m), pred, mask_hat, mu, logvar


def forward_decoders_no_grad(vae, x, mask=None):
    """Both decoders under torch.no_grad (scored full marks without the hidden checks; the hidden ones
    raised a bare 'element 0 of tensors does not require grad')."""
    mu, logvar = vae.encoder(x)
    z = vae.sampler(mu, logvar) if vae.training else mu
    with torch.no_grad():
        pred, mask_hat = vae.image_decoder(z), vae.mask_decoder(z)
    m = mask if mask is not None else mask_hat
    return pred * m + x * (1 - m), pred, mask_hat, mu, logvar


MUTANTS = {
    "ssim": [ssim_box_window, ssim_no_constants, ssim_same_padding, ssim_sample_covariance, ssim_grayscale,
             ssim_raw_moments, ssim_fixed_range, ssim_ignores_window_size, ssim_ignores_sigma],
    "dice": [dice_no_smoothing, dice_whole_batch, dice_iou, dice_thresholded, dice_constant_smooth],  # constant: ignores smooth
    "mask_loss": [mask_loss_plus_dice, mask_loss_bce_only, mask_loss_unclamped, mask_loss_dice_only,
                  mask_loss_with_logits],
    "masked_mae": [masked_mae_target_only, masked_mae_all_pixels, masked_mae_forgets_channels, masked_mae_per_image,
                   masked_mae_pred_only],
    "forward_with_mask": [forward_always_predicted_mask, forward_swapped, forward_no_composition,
                          forward_always_samples, forward_never_samples, forward_detached_mask,
                          forward_mask_second_sample, forward_decoders_no_grad],
}


# --- tests -------------------------------------------------------------------------------------------


def grade(exercise, fn) -> str | None:
    return run_checks(CHECKS, exercise, fn)


class TestGrader(GraderContract):
    SLUG, LESSON, CHECKS, MUTANTS = SLUG, lesson02, CHECKS, MUTANTS


def test_the_package_implementations_are_blocked_too():
    from faceedu import losses

    with pytest.raises(ReferenceUsed):
        CHECKS["ssim"](lambda x, y, **kw: losses.ssim(x, y))
    with pytest.raises(ReferenceUsed):
        CHECKS["masked_mae"](lambda pred, x, mask: losses.mae(pred, x, mask))
    with pytest.raises(ReferenceUsed):
        CHECKS["forward_with_mask"](lambda vae, x, mask=None: vae(x))
    assert float(losses.ssim(torch.ones(1, 1, 16, 16), torch.ones(1, 1, 16, 16))) == 1


def test_failure_messages_are_actionable():
    assert "box" in grade("ssim", ssim_box_window)
    assert "constants" in grade("ssim", ssim_no_constants)
    assert "valid" in grade("ssim", ssim_same_padding)
    assert "population" in grade("ssim", ssim_sample_covariance)
    assert "smoothing" in grade("dice", dice_no_smoothing)
    assert "per image" in grade("dice", dice_whole_batch)
    assert "1 - Dice" in grade("mask_loss", mask_loss_plus_dice)
    assert "target only" in grade("masked_mae", masked_mae_target_only)
    assert "swap" in grade("forward_with_mask", forward_swapped)
    assert "ground-truth mask given" in grade("forward_with_mask", forward_always_predicted_mask)
