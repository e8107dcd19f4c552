"""Lesson 02 "Masks and losses": the reference for each exercise and the checks the notebook calls.

Exercises (one concept each):
  1. ``ssim``               - structural similarity from scratch: Gaussian window, local statistics, constants
  2. ``dice``               - the soft Dice coefficient of two masks, with smoothing, per image
  3. ``mask_loss``          - the mask decoder's loss: BCE + (1 - Dice)
  4. ``masked_mae``         - an l1 loss restricted to the pixels of a mask
  5. ``forward_with_mask``  - the two-decoder forward pass with Toledo & Antonelo's composition

Each ``check_<exercise>(fn, hidden=False)`` compares ``fn`` with the reference (faceedu.losses, which
agrees with scikit-image's SSIM to 1e-4) on fixed and seeded random inputs, recognises the usual
mistakes by name (a box window, missing constants, 'same' padding, no smoothing, a mask on the target
only, ...) and raises :class:`~faceedu.grading.core.CheckFailed` with a hint at the first one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from faceedu import losses as L
from faceedu.grading.core import Check
from faceedu.models.vae import FaceVAE, VAEConfig

__all__ = [
    "ssim", "dice", "mask_loss", "masked_mae", "forward_with_mask",
    "check_ssim", "check_dice", "check_mask_loss", "check_masked_mae", "check_forward_with_mask",
]

# --- reference implementations ---------------------------------------------------------------------


def ssim(x: torch.Tensor, y: torch.Tensor, window_size: int = 11, sigma: float = 1.5,
         data_range: float = 1.0) -> torch.Tensor:
    """Mean SSIM of two (B, C, H, W) batches: Gaussian-weighted local means, variances and covariance of
    each channel over 'valid' windows, C1 = (0.01 L)^2, C2 = (0.03 L)^2; a 0-dim tensor."""
    return L.ssim(x, y, data_range=data_range, window_size=window_size, sigma=sigma)


def dice(p: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """(2 sum(p t) + smooth) / (sum p + sum t + smooth) per image (sums over C, H, W), averaged over the batch."""
    return L.dice(p, target, smooth)


def mask_loss(p: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy (mean over pixels) plus 1 - Dice (smooth 1): the mask decoder's loss."""
    return L.bce_dice(p, target)


def masked_mae(pred: torch.Tensor, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over the pixels inside `mask` (B, 1, H, W), every channel, pooled over the batch:
    sum(|pred - x| m) / (C sum(m))."""
    return L.mae(pred, x, mask)


def forward_with_mask(vae: FaceVAE, x: torch.Tensor, mask: torch.Tensor | None = None):
    """Encode, sample z in training mode (z = mu in eval mode), decode image and mask, and paste the
    prediction onto x with the given mask (training) or the predicted one (inference).
    Returns (out, pred, mask_hat, mu, logvar)."""
    mu, logvar = vae.encoder(x)
    z = vae.sampler(mu, logvar) if vae.training else mu
    pred, mask_hat = vae.image_decoder(z), vae.mask_decoder(z)
    m = mask if mask is not None else mask_hat
    return pred * m + x * (1 - m), pred, mask_hat, mu, logvar


REFERENCES = (L.ssim, L.ssim_map, L.gaussian_window, L.ms_ssim, L.dice, L.dice_loss, L.bce_dice, L.bce, L.mae,
              L.masked_mean, L.compose, FaceVAE.forward, FaceVAE.decode,
              ssim, dice, mask_loss, masked_mae, forward_with_mask)

# --- known mistakes, to name them in messages ------------------------------------------------------------


def _local(x: torch.Tensor, window: torch.Tensor, padding: int = 0) -> torch.Tensor:
    c = x.shape[1]
    return F.conv2d(x, window[None, None].expand(c, 1, *window.shape).to(x.dtype), groups=c, padding=padding)


def _ssim_variant(x, y, window, c1=1e-4, c2=9e-4, padding=0, cov_norm=1.0):
    mx, my = _local(x, window, padding), _local(y, window, padding)
    vx = cov_norm * (_local(x * x, window, padding) - mx ** 2)
    vy = cov_norm * (_local(y * y, window, padding) - my ** 2)
    cxy = cov_norm * (_local(x * y, window, padding) - mx * my)
    return (((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))).mean()


def _ssim_mistakes(x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    gauss = L.gaussian_window(11, 1.5, torch.float64)
    x, y = x.double(), y.double()
    return {
        "a uniform (box) window; SSIM here weights each window with a Gaussian of sigma 1.5 (size 11)":
            _ssim_variant(x, y, torch.full((11, 11), 1 / 121, dtype=torch.float64)),
        "'same' padding (zeros around the image); use 'valid' windows (padding=0), as scikit-image's mean does":
            _ssim_variant(x, y, gauss, padding=5),
        "the sample covariance (divide by N - 1); SSIM uses the weighted population statistics":
            _ssim_variant(x, y, gauss, cov_norm=121 / 120),
        "a Gaussian of sigma 1.0; the standard window has sigma 1.5":
            _ssim_variant(x, y, L.gaussian_window(11, 1.0, torch.float64)),
        "the channels mixed into one: filter each channel separately (groups=C in F.conv2d)":
            _ssim_variant(x.mean(1, keepdim=True), y.mean(1, keepdim=True), gauss),
    }


# --- checks ------------------------------------------------------------------------------------------


def check_ssim(fn, hidden: bool = False) -> None:
    """Visible: 1 for identical images, a 0-dim tensor, finite on flat images (the constants), the reference
    on random and structured pairs (which equals scikit-image's), gradients. Hidden: window 9, colour
    images whose channels disagree, data_range 255, non-square images."""
    __tracebackhide__ = True
    c = Check("ssim", fn, hidden, blocked=REFERENCES)
    g = c.rng
    x = torch.rand(2, 3, 32, 32, generator=g)
    same = c.call(x, x.clone())
    c.expect_tensor(same, shape=(), what="SSIM of two images", hint="Average the SSIM map: return one number.")
    c.expect_close(same, torch.tensor(1.0), what="SSIM of an image with itself", atol=1e-5,
                   hint="Identical images have SSIM 1 everywhere.")
    flat = torch.full((1, 1, 16, 16), 0.5)
    value = c.call(flat, flat.clone())
    if not bool(torch.isfinite(value)):
        c.fail("SSIM of two flat images is not a number: the variances are 0 and so is the denominator. The "
               "constants C1 = (0.01 L)^2 and C2 = (0.03 L)^2 keep it finite; add them to both factors.")
    c.expect_close(value, torch.tensor(1.0), what="SSIM of two identical flat images", atol=1e-5)
    ramp = torch.linspace(0, 1, 40).view(1, 1, 1, 40).expand(1, 3, 40, 40).contiguous()
    pairs = [("two random 32x32 colour images with noise", x, (x + 0.2 * torch.randn(x.shape, generator=g)).clamp(0, 1)),
             ("a gradient image and its blurred copy", ramp, F.avg_pool2d(F.pad(ramp, (2, 2, 2, 2), mode="replicate"), 5, 1)),
             ("two unrelated random images", torch.rand(1, 1, 24, 24, generator=g), torch.rand(1, 1, 24, 24, generator=g))]
    faint = 0.5 + 0.02 * torch.randn(2, 3, 24, 24, generator=g)            # variances comparable to C2
    pairs.append(("two low-contrast images", faint, faint + 0.02 * torch.randn(faint.shape, generator=g)))
    if hidden:
        colour = torch.rand(2, 3, 28, 36, generator=g)
        other = colour.clone()
        other[:, 0] = torch.rand(2, 28, 36, generator=g)                  # only the red channel disagrees
        pairs += [("colour images whose channels disagree (28x36)", colour, other)]
    for label, a, b in pairs:
        got = c.call(a, b)
        expected = ssim(a, b)
        if not torch.isclose(got.double(), expected.double(), atol=1e-4):
            for mistake, value in _ssim_mistakes(a, b).items():
                if abs(float(got) - float(value)) < 1e-4:
                    c.fail(f"on {label} your SSIM is {float(got):.5f}, expected {float(expected):.5f}: it matches {mistake}.")
        c.expect_close(got, expected, what=f"SSIM of {label}", atol=1e-4,
                       hint="SSIM = (2 mu_x mu_y + C1)(2 cov + C2) / ((mu_x^2 + mu_y^2 + C1)(var_x + var_y + C2)) with "
                            "Gaussian-weighted local statistics, var = E[x^2] - E[x]^2, averaged over the map.")
    y = pairs[0][2].clone().requires_grad_()
    out = c.call(x, y)
    c.expect(out.requires_grad, "SSIM carries no gradient: build it from torch operations (F.conv2d), so that "
                                "2 - SSIM can be a training loss.")
    if hidden:
        a, b = pairs[0][1], pairs[0][2]
        c.expect_close(c.call(a, b, window_size=9), ssim(a, b, window_size=9), what="SSIM with window_size=9",
                       atol=1e-4, hint="Build the window from window_size (odd) and sigma.")
        c.expect_close(c.call(a, b, sigma=0.8), ssim(a, b, sigma=0.8), what="SSIM with sigma=0.8", atol=1e-4,
                       hint="The Gaussian window's width is the sigma argument: build the window from it, not from 1.5.")
        c.expect_close(c.call(a * 255, b * 255, data_range=255.0), ssim(a, b), what="SSIM of 0-255 images with "
                       "data_range=255", atol=1e-4, hint="C1 = (0.01 L)^2 and C2 = (0.03 L)^2 with L = data_range.")
    c.done()


def check_dice(fn, hidden: bool = False) -> None:
    """Visible: 1 for identical masks, smooth / (total + smooth) for disjoint ones, 1 (not NaN) for two empty
    masks, the per-image average for masks of different sizes, soft masks, gradients. Hidden: smooth=0
    on non-empty masks, other shapes."""
    __tracebackhide__ = True
    c = Check("dice", fn, hidden, blocked=REFERENCES)
    t = torch.zeros(2, 1, 8, 8)
    t[0, :, 1:7, 1:7] = 1                                                    # 36 pixels
    t[1, :, 3:5, 3:5] = 1                                                    # 4 pixels
    same = c.call(t, t.clone())
    c.expect_tensor(same, shape=(), what="Dice of two batches", hint="Average the per-image values: one number.")
    c.expect_close(same, torch.tensor(1.0), what="Dice of identical masks", atol=1e-6)
    empty = torch.zeros(2, 1, 8, 8)
    value = c.call(empty, empty.clone())
    if not bool(torch.isfinite(value)) or abs(float(value) - 1) > 1e-6:
        c.fail(f"Dice of two empty masks should be 1 (they agree), got {float(value):.4g}: the smoothing term "
               f"(+ smooth in the numerator and the denominator) avoids 0 / 0.")
    c.passed += 1
    half = t.clone()
    half[0, :, 1:4] = 0                                                      # image 0 loses half, image 1 intact
    got = c.call(half, t)
    pooled = L.dice(half.flatten()[None], t.flatten()[None])
    if torch.isclose(got, pooled, atol=1e-5) and not torch.isclose(pooled, dice(half, t), atol=1e-5):
        c.fail("you computed one Dice for the whole batch (sums over every image); compute it per image (sums "
               "over C, H, W) and average, so a small face counts as much as a big one.")
    c.expect_close(got, dice(half, t), what="Dice of a half-covered face and an exact one", atol=1e-5,
                   hint="Per image: (2 sum(p t) + smooth) / (sum p + sum t + smooth); then .mean() over the batch.")
    shifted = torch.roll(t, 4, dims=3) * (1 - t)
    disjoint = c.call(t, shifted)
    c.expect_close(disjoint, dice(t, shifted), what="Dice of disjoint masks", atol=1e-5,
                   hint="With no overlap only the smoothing is left: smooth / (sum p + sum t + smooth).")
    soft = torch.rand(3, 1, 10, 10, generator=c.rng)
    target = (torch.rand(3, 1, 10, 10, generator=c.rng) > 0.5).float()
    c.expect_close(c.call(soft, target), dice(soft, target), what="Dice of soft predictions", atol=1e-5,
                   hint="Use the probabilities as they are (no thresholding): the loss must be differentiable.")
    p = soft.clone().requires_grad_()
    c.expect(c.call(p, target).requires_grad, "Dice carries no gradient: no thresholding, no .item().")
    if hidden:
        c.expect_close(c.call(half, t, smooth=0.0), dice(half, t, smooth=0.0), what="Dice with smooth=0", atol=1e-5,
                       hint="smooth is a parameter: use it instead of a constant.")
        three = (torch.rand(4, 3, 6, 5, generator=c.rng) > 0.3).float()
        c.expect_close(c.call(three, torch.roll(three, 1, 0)), dice(three, torch.roll(three, 1, 0)),
                       what="Dice of (4, 3, 6, 5) masks", atol=1e-5, hint="Sum over every dimension but the batch.")
    c.done()


def check_mask_loss(fn, hidden: bool = False) -> None:
    """Visible: ~0 for a perfect mask, the reference on soft predictions, finite for confident mistakes,
    larger for worse masks, gradients. Hidden: empty targets, other shapes."""
    __tracebackhide__ = True
    c = Check("mask_loss", fn, hidden, blocked=REFERENCES)
    t = torch.zeros(2, 1, 12, 12)
    t[:, :, 2:10, 3:9] = 1
    perfect = c.call(t.clone(), t)
    c.expect_tensor(perfect, shape=(), what="the mask loss")
    if float(perfect) > 0.5:
        c.fail(f"a perfect mask costs {float(perfect):.3g}: the Dice part should be 1 - Dice (0 when the masks agree), "
               f"not Dice, which would reward worse masks.")
    c.expect(abs(float(perfect)) < 1e-3, f"a perfect mask should cost about 0, got {float(perfect):.4g}.")
    confident = c.call(1 - t, t)
    c.expect(bool(torch.isfinite(confident)), "a completely wrong mask of 0s and 1s gives an infinite loss: clamp p "
                                              "to [eps, 1 - eps] before the log (F.binary_cross_entropy does this too).")
    soft = torch.rand(2, 1, 12, 12, generator=c.rng) * 0.98 + 0.01
    got = c.call(soft, t)
    bce_only = -(t * soft.log() + (1 - t) * (1 - soft).log()).mean()
    if torch.isclose(got, bce_only, atol=1e-5):
        c.fail("your loss is the BCE alone: add 1 - Dice (your dice function), which looks at the overlap of the "
               "whole mask rather than pixel by pixel.")
    if torch.isclose(got, 1 - dice(soft, t), atol=1e-5):
        c.fail("your loss is 1 - Dice alone: add the binary cross-entropy (mean over pixels).")
    c.expect_close(got, mask_loss(soft, t), what="the mask loss of a soft prediction", atol=1e-4,
                   hint="BCE = -mean(t log p + (1 - t) log(1 - p)); loss = BCE + 1 - dice(p, t).")
    better = c.call((soft + t) / 2, t)
    c.expect(float(better) < float(got), "a prediction closer to the target should cost less.")
    p = soft.clone().requires_grad_()
    c.expect(c.call(p, t).requires_grad, "the loss carries no gradient.")
    if hidden:
        empty = torch.zeros(3, 1, 5, 5)
        c.expect_close(c.call(torch.full_like(empty, 0.2), empty), mask_loss(torch.full_like(empty, 0.2), empty),
                       what="the loss for empty targets", atol=1e-4)
    c.done()


def check_masked_mae(fn, hidden: bool = False) -> None:
    """Visible: 0 when every error lies outside the mask; the error inside, whatever the background;
    the mask broadcast over colour channels; equals plain MAE for a full mask; gradients only inside.
    Hidden: soft masks weight pixels, masks of different sizes in a batch (pooled), float64."""
    __tracebackhide__ = True
    c = Check("masked_mae", fn, hidden, blocked=REFERENCES)
    x = torch.rand(2, 3, 8, 8, generator=c.rng)
    mask = torch.zeros(2, 1, 8, 8)
    mask[:, :, 2:6, 2:6] = 1
    background_wrong = x + 0.5 * (1 - mask)                                   # errors only outside the mask
    got = c.call(background_wrong, x, mask)
    c.expect_tensor(got, shape=(), what="the masked MAE")
    if float(got) > 1e-6:
        if torch.isclose(got, (background_wrong - x * mask).abs().mean(), atol=1e-5):
            c.fail("you masked the target only: |pred - x * mask| asks the prediction to be black outside the "
                   "face. Multiply the error |pred - x| by the mask instead.")
        c.fail(f"all errors lie outside the mask, so the masked MAE should be 0, got {float(got):.4g}: multiply the "
               f"error by the mask before summing.")
    c.passed += 1
    face_wrong = x + 0.3 * mask                                               # error 0.3 on every face pixel
    got = c.call(face_wrong, x, mask)
    if torch.isclose(got, 0.3 * mask.mean(), atol=1e-5):
        c.fail(f"the error inside the mask is 0.3 everywhere but you report {float(got):.4g}: you divided by all the "
               f"pixels; divide by the number of pixels inside the mask (times the channels).")
    if torch.isclose(got, torch.tensor(0.9), atol=1e-5):
        c.fail("you report 0.9 for an error of 0.3 on every face pixel: the mask has one channel but the image "
               "three; divide by C * sum(mask) (or expand the mask to the image's channels).")
    c.expect_close(got, torch.tensor(0.3), what="the masked MAE for an error of 0.3 on every face pixel", atol=1e-5)
    pred = torch.rand(2, 3, 8, 8, generator=c.rng)
    c.expect_close(c.call(pred, x, torch.ones(2, 1, 8, 8)), (pred - x).abs().mean(), what="the masked MAE with a full mask",
                   atol=1e-5, hint="With every pixel inside the mask it is the plain MAE.")
    p = pred.clone().requires_grad_()
    c.call(p, x, mask).backward()
    c.expect(p.grad is not None and float(p.grad[(mask.expand_as(p) == 0)].abs().max()) == 0,
             "pixels outside the mask receive gradient: they must not influence the loss at all.")
    if hidden:
        sizes = mask.clone()
        sizes[1] = 0
        sizes[1, :, 3:4, 3:4] = 1                                            # a tiny face next to a big one
        c.expect_close(c.call(pred, x, sizes), masked_mae(pred, x, sizes), what="the masked MAE over faces of "
                       "different sizes", atol=1e-5, hint="Pool every masked pixel of the batch: one sum over the "
                                                            "batch divided by one count.")
        soft = torch.rand(2, 1, 8, 8, generator=c.rng)
        c.expect_close(c.call(pred, x, soft), masked_mae(pred, x, soft), what="the masked MAE with a soft mask", atol=1e-5,
                       hint="Weight each pixel's error by the mask value: sum(|e| m) / (C sum(m)).")
        c.expect_close(c.call(pred.double(), x.double(), mask.double()), masked_mae(pred, x, mask).double(),
                       what="the masked MAE in float64", atol=1e-6)
    c.done()


def _tiny_vae() -> FaceVAE:
    torch.manual_seed(0)
    config = VAEConfig(image_size=16, encoder=((4,), (8,)), dense=16, latent=8, decoder_in=(8, 4),
                       decoder=(8, 4), mask_decoder=(4, 4))
    vae = FaceVAE(config)
    with torch.no_grad():                                   # BatchNorm statistics of a trained-looking model
        vae.train()
        for _ in range(3):
            vae(torch.rand(8, 3, 16, 16))
    return vae.eval()


def check_forward_with_mask(fn, hidden: bool = False) -> None:
    """Visible (a tiny VAE): five outputs of the right shapes; at inference (eval mode, no mask) z = mu
    and the prediction is pasted with the predicted mask; with a mask given it is used instead; outside
    the mask the output is the input. Hidden: training mode samples z; gradients reach both decoders."""
    __tracebackhide__ = True
    c = Check("forward_with_mask", fn, hidden, blocked=REFERENCES)
    vae = _tiny_vae()
    # the model is not an input to snapshot and compare: bind it, and pass only the tensors through the check
    bound = Check(c.exercise, lambda *args: fn(vae, *args), hidden, blocked=REFERENCES)
    x = torch.rand(4, 3, 16, 16, generator=c.rng)
    mask = torch.zeros(4, 1, 16, 16)
    mask[:, :, 4:12, 5:11] = 1
    out = bound.call(x)
    c.expect(isinstance(out, (tuple, list)) and len(out) == 5,
             "return the tuple (out, pred, mask_hat, mu, logvar).")
    shapes = {"out": (4, 3, 16, 16), "pred": (4, 3, 16, 16), "mask_hat": (4, 1, 16, 16), "mu": (4, 8), "logvar": (4, 8)}
    for (name, shape), value in zip(shapes.items(), out):
        c.expect_tensor(value, shape=shape, what=name)
    with torch.no_grad():
        expected = forward_with_mask(vae, x)
    c.expect_close(out[3], expected[3], what="mu", atol=1e-5, hint="mu, logvar = vae.encoder(x).")
    c.expect_close(out[1], expected[1], what="pred at inference", atol=1e-5,
                   hint="In eval mode decode z = mu (no sampling): vae.image_decoder(mu).")
    c.expect_close(out[2], expected[2], what="mask_hat", atol=1e-5, hint="mask_hat = vae.mask_decoder(z).")
    paste_gt = expected[1] * mask + x * (1 - mask)
    if torch.allclose(out[0], x * expected[2] + expected[1] * (1 - expected[2]), atol=1e-5):
        c.fail("out has the input inside the mask and the prediction outside: swap them, "
               "out = pred * m + x * (1 - m).")
    c.expect_close(out[0], expected[0], what="out at inference (no mask given)", atol=1e-5,
                   hint="Without a ground-truth mask, paste with the predicted one: pred * mask_hat + x * (1 - mask_hat).")
    given = bound.call(x, mask)
    if torch.allclose(given[0], expected[0], atol=1e-5):
        c.fail("with a ground-truth mask given (training), out still uses the predicted mask: use the given mask "
               "when there is one, so the image losses see exactly the face pixels.")
    c.expect_close(given[0], paste_gt, what="out with the ground-truth mask", atol=1e-5,
                   hint="out = pred * mask + x * (1 - mask).")
    outside = (mask.expand_as(x) == 0)
    c.expect(torch.equal(given[0][outside], x[outside]), "outside the given mask, out should be the input itself.")
    again = bound.call(x)
    c.expect(torch.equal(again[0], out[0]), "two calls in eval mode gave different outputs: at inference use z = mu, "
                                            "do not sample.")
    if hidden:
        seen: dict[str, list[torch.Tensor]] = {"image": [], "mask": []}   # the z each decoder was given
        hooks = [vae.image_decoder.register_forward_pre_hook(lambda m, args: seen["image"].append(args[0].detach())),
                 vae.mask_decoder.register_forward_pre_hook(lambda m, args: seen["mask"].append(args[0].detach()))]
        vae.train()
        try:
            a, b = bound.call(x, mask), bound.call(x, mask)
        finally:
            vae.eval()
            for hook in hooks:
                hook.remove()
        c.expect(not torch.allclose(a[1], b[1]), "in training mode z should be sampled (vae.sampler(mu, logvar) or "
                                                 "your reparameterise), so two calls differ.")
        if seen["image"] and seen["mask"] and not torch.equal(seen["image"][0], seen["mask"][0]):
            c.fail("in training mode the image and the mask were decoded from two different samples of z: sample z "
                   "once and decode both from it, so the mask outlines the face that was drawn.")
        vae.zero_grad()
        vae.train()
        try:
            res = bound.call(x, mask)
        finally:
            vae.eval()
        if not (res[0].requires_grad and res[2].requires_grad):
            c.fail("in training mode out or mask_hat carries no gradient (backward() would stop with 'element 0 of "
                   "tensors does not require grad'): the decoders ran under torch.no_grad() or their outputs were "
                   "detached. Keep the graph: only inference may skip it.")
        (res[0].sum() + res[2].sum()).backward()
        for name, part in (("image decoder", vae.image_decoder), ("mask decoder", vae.mask_decoder)):
            grads = [p.grad for p in part.parameters()]
            c.expect(all(g is not None for g in grads), f"no gradient reaches the {name}: keep the graph (no "
                                                        f"torch.no_grad or .detach()).")
    c.done()
