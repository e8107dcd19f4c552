"""One place for every loss the course uses, written from the equations so that a lesson can ask a learner
to rewrite any of them and compare with these.

Images are float tensors (B, C, H, W) with values in [0, data_range]; masks are (B, 1, H, W) in [0, 1]
and broadcast over the channels. Every function returns a scalar averaged over the batch unless it says
otherwise, so a loss does not change scale with the batch size.

- SSIM (Wang et al., 2004) with a Gaussian window, equal to ``skimage.metrics.structural_similarity(
  gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1)`` (tested to 1e-4), its
  masked form, and the ``2 - SSIM`` loss of Toledo & Antonelo's code (TensorFlow's SSIM, window 9).
- MS-SSIM (Wang, Simoncelli & Bovik, 2003).
- MAE (l1), MSE (l2) and their masked forms; binary cross-entropy and Dice (smooth = 1) for masks.
- KL divergence of a diagonal Gaussian from the standard normal (Kingma & Welling, 2014).
- Adversarial losses on discriminator logits: the original GAN's (Goodfellow et al. 2014; the generator's
  non-saturating form, optional one-sided label smoothing, Salimans et al. 2016), the hinge loss (Lim & Ye
  2017; Miyato et al. 2018) and least squares (LSGAN, Mao et al. 2017, as CycleGAN uses it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "masked_mean", "mae", "mse", "bce", "dice", "dice_loss", "bce_dice",
    "gaussian_window", "ssim_map", "ssim", "ssim_loss", "ms_ssim", "MS_SSIM_WEIGHTS",
    "kl_divergence", "compose", "GAN_LOSSES", "discriminator_loss", "generator_loss",
]

# --- pixel losses -------------------------------------------------------------------------------------


def masked_mean(values: torch.Tensor, mask: torch.Tensor | None = None, eps: float = 1e-8) -> torch.Tensor:
    """Mean of `values` (B, C, H, W) over the pixels where `mask` (B, 1|C, H, W) is on, weighting by the
    mask; the plain mean without a mask. Averages over all masked pixels of the batch together, so a
    face that covers more pixels counts more, as in a loss over a concatenated batch."""
    if mask is None:
        return values.mean()
    weights = mask.expand_as(values)
    return (values * weights).sum() / weights.sum().clamp_min(eps)


def mae(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean absolute error (l1), over every pixel or only those inside `mask`."""
    return masked_mean((x - y).abs(), mask)


def mse(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error (l2), over every pixel or only those inside `mask`."""
    return masked_mean((x - y).square(), mask)


def bce(p: torch.Tensor, target: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    r"""Binary cross-entropy of probabilities `p` against `target` in [0, 1]:
    :math:`-\mathrm{mean}[t \log p + (1 - t) \log(1 - p)]`, with p clamped to [eps, 1 - eps] (as Keras
    does) so a confident wrong pixel costs a lot but never infinity."""
    p = p.clamp(eps, 1 - eps)
    return -(target * p.log() + (1 - target) * (1 - p).log()).mean()


def dice(p: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    r"""Soft Dice coefficient per image, averaged over the batch:
    :math:`(2\sum p t + s) / (\sum p + \sum t + s)` with the sums over (C, H, W) and s = `smooth`.
    1 for a perfect mask, near 0 for disjoint ones; the smoothing keeps two empty masks at 1 (not 0/0).
    Toledo & Antonelo's code uses squares in the denominator (V-Net's form) and sums over the whole
    batch; for binary targets and confident predictions the two agree."""
    dims = tuple(range(1, p.dim()))
    intersection = (p * target).sum(dim=dims)
    total = p.sum(dim=dims) + target.sum(dim=dims)
    return ((2 * intersection + smooth) / (total + smooth)).mean()


def dice_loss(p: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """1 - Dice: 0 for a perfect mask."""
    return 1 - dice(p, target, smooth)


def bce_dice(p: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """The mask decoder's loss in Toledo & Antonelo: BCE (every pixel right) + Dice loss (the overlap
    right, whatever the mask's size)."""
    return bce(p, target) + dice_loss(p, target, smooth)


# --- SSIM ---------------------------------------------------------------------------------------------


def _gaussian(size: int, sigma: float, device: torch.device | str | None = None) -> torch.Tensor:
    """(size,) Gaussian weights summing to 1, in float64."""
    if size % 2 != 1:
        raise ValueError(f"the SSIM window size must be odd, got {size}")
    r = torch.arange(size, dtype=torch.float64, device=device) - (size - 1) / 2
    g = torch.exp(-(r ** 2) / (2 * sigma ** 2))
    return g / g.sum()


def gaussian_window(size: int = 11, sigma: float = 1.5, dtype: torch.dtype = torch.float32,
                    device: torch.device | str | None = None) -> torch.Tensor:
    """(size, size) Gaussian weights summing to 1. skimage's default (truncate 3.5, sigma 1.5) is size 11;
    TensorFlow's ``tf.image.ssim(filter_size=9)`` in Toledo & Antonelo's code is size 9."""
    g = _gaussian(size, sigma, device)
    return torch.outer(g, g).to(dtype)


def _band(g: torch.Tensor, n: int) -> torch.Tensor:
    """(n - w + 1, n): row i holds the w weights g at columns i .. i + w - 1 ('valid' filtering as a matrix)."""
    w = len(g)
    rows = n - w + 1
    columns = torch.arange(rows, device=g.device)[:, None] + torch.arange(w, device=g.device)
    return torch.zeros(rows, n, dtype=g.dtype, device=g.device).scatter_(1, columns, g.expand(rows, w))


def _bands(g: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The banded matrices that filter x's columns (H) and rows (W) with g, in x's dtype."""
    g = g.to(x.dtype)
    return _band(g, x.shape[-2]), _band(g, x.shape[-1])


def _filter(x: torch.Tensor, bands: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Weighted local mean of every channel under the window g g^T: a 'valid' filtering (no padding, so no
    border effects; skimage crops the same border after filtering). The Gaussian window is separable, so it
    is two matrix products with banded matrices (`_bands`), along the rows then the columns: equal to the
    depthwise convolution with the 2D window to float rounding, and 1.5x faster for the VAE's SSIM loss on a
    CPU (batch 32, 144 x 144, forward and backward), where oneDNN's depthwise kernels idle on 3 channels."""
    columns, rows = bands
    return columns @ (x @ rows.T)                     # (B, C, H, W - w + 1), then (B, C, H - w + 1, W - w + 1)


def ssim_map(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0, window_size: int = 11,
             sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03, return_cs: bool = False):
    r"""The local SSIM of every window position, (B, C, H - w + 1, W - w + 1):

    .. math:: \mathrm{SSIM} = \frac{(2\mu_x\mu_y + C_1)(2\sigma_{xy} + C_2)}
                                   {(\mu_x^2 + \mu_y^2 + C_1)(\sigma_x^2 + \sigma_y^2 + C_2)},
              \quad C_1 = (k_1 L)^2,\ C_2 = (k_2 L)^2

    with Gaussian-weighted means, (population) variances and covariance, L = `data_range`. The
    constants keep flat dark regions from dividing by zero. With `return_cs` also returns the
    contrast-structure term (the second factor), which MS-SSIM needs."""
    if x.shape != y.shape or x.dim() != 4:
        raise ValueError(f"ssim wants two (B, C, H, W) tensors of one shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    if min(x.shape[-2:]) < window_size:
        raise ValueError(f"images of {tuple(x.shape[-2:])} are smaller than the {window_size}x{window_size} SSIM window")
    bands = _bands(_gaussian(window_size, sigma, x.device), x)   # the window is g g^T (gaussian_window)
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    mu_x, mu_y = _filter(x, bands), _filter(y, bands)
    var_x = _filter(x * x, bands) - mu_x ** 2
    var_y = _filter(y * y, bands) - mu_y ** 2
    cov = _filter(x * y, bands) - mu_x * mu_y
    luminance = (2 * mu_x * mu_y + c1) / (mu_x ** 2 + mu_y ** 2 + c1)
    cs = (2 * cov + c2) / (var_x + var_y + c2)
    return (luminance * cs, cs) if return_cs else luminance * cs


def _crop_mask(mask: torch.Tensor, window_size: int) -> torch.Tensor:
    """The mask at the centres of the valid SSIM windows."""
    pad = (window_size - 1) // 2
    return mask[..., pad:mask.shape[-2] - pad, pad:mask.shape[-1] - pad]


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0, window_size: int = 11, sigma: float = 1.5,
         mask: torch.Tensor | None = None, reduction: str = "mean") -> torch.Tensor:
    """Mean SSIM (1 = identical). Without a mask the average over all windows and channels, as skimage
    (per image with ``reduction="none"``); with a mask (B, 1, H, W) only windows centred on the mask."""
    s = ssim_map(x, y, data_range, window_size, sigma)
    if mask is not None:
        m = _crop_mask(mask, window_size).expand_as(s)
        if reduction == "none":
            return (s * m).flatten(1).sum(1) / m.flatten(1).sum(1).clamp_min(1e-8)
        return masked_mean(s, m)
    return s.flatten(1).mean(1) if reduction == "none" else s.mean()


def ssim_loss(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0, window_size: int = 9,
              sigma: float = 1.5) -> torch.Tensor:
    """``2 - SSIM`` as in Toledo & Antonelo's code (window 9, like their ``tf.image.ssim(filter_size=9)``):
    the constant 2 only keeps the loss positive; its gradient is that of ``1 - SSIM``."""
    return 2 - ssim(x, y, data_range, window_size, sigma)


MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang et al. 2003, from fine to coarse


def ms_ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0, window_size: int = 11, sigma: float = 1.5,
            weights: tuple[float, ...] = MS_SSIM_WEIGHTS) -> torch.Tensor:
    r"""Multi-scale SSIM: :math:`\prod_j cs_j^{w_j}` over scales halved by 2x2 average pooling, times the
    luminance term at the coarsest, :math:`l_M^{w_M}`. Five scales need images of at least
    16 x window; smaller images (64 x 64 faces) use the first scales that fit the window, with the
    weights renormalised to sum to 1 — said here because published MS-SSIM numbers assume all five.
    Negative cs values are clamped to 0 before the power (as pytorch-msssim does)."""
    scales = 1
    while scales < len(weights) and min(x.shape[-2:]) // 2 ** scales >= window_size:
        scales += 1
    w = torch.tensor(weights[:scales], dtype=x.dtype, device=x.device)
    w = w / w.sum()
    values = []
    for j in range(scales):
        s, cs = ssim_map(x, y, data_range, window_size, sigma, return_cs=True)
        if j == scales - 1:
            values.append(s.flatten(2).mean(-1).relu())  # (B, C): luminance x cs at the coarsest scale
        else:
            values.append(cs.flatten(2).mean(-1).relu())
            x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
    stacked = torch.stack(values, dim=0)  # (scales, B, C)
    return torch.prod(stacked ** w[:, None, None], dim=0).mean()


# --- the VAE's latent term ------------------------------------------------------------------------------


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    r"""KL(N(mu, diag(exp(logvar))) || N(0, I)), summed over the latent dimensions and averaged over
    the batch (Kingma & Welling 2014, appendix B):

    .. math:: D_{KL} = -\tfrac12 \sum_j \left(1 + \log\sigma_j^2 - \mu_j^2 - \sigma_j^2\right)

    It is 0 exactly when mu = 0 and logvar = 0, and positive otherwise."""
    return (-0.5 * (1 + logvar - mu ** 2 - logvar.exp()).sum(dim=1)).mean()


# --- masks ----------------------------------------------------------------------------------------------


def compose(pred: torch.Tensor, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Toledo & Antonelo's composition ``pred * mask + x * (1 - mask)``: the prediction on the face, the
    input elsewhere. With the ground-truth mask in training, every image loss computed on the result
    sees only face pixels (outside, the result equals the target exactly)."""
    return pred * mask + x * (1 - mask)


# --- adversarial losses ----------------------------------------------------------------------------------

GAN_LOSSES = ("bce", "hinge", "lsgan")


def discriminator_loss(real: torch.Tensor, fake: torch.Tensor, kind: str = "bce",
                       real_label: float = 1.0) -> torch.Tensor:
    """The discriminator's loss on its logits for real and for (detached) generated images, each term
    averaged over its own elements. `real_label` < 1 is one-sided label smoothing (0.9 in Salimans et al.
    2016): only the real targets are softened, never the fake ones.

    bce:   -log D(x) - log(1 - D(G(z)))          (Goodfellow et al. 2014, eq. 1), D = sigmoid(logit)
    hinge: relu(1 - D(x)) + relu(1 + D(G(z)))     (Lim & Ye 2017)
    lsgan: (D(x) - 1)^2 + D(G(z))^2               (Mao et al. 2017; CycleGAN scales it by 0.5 in its step)
    """
    if kind == "bce":
        return (F.binary_cross_entropy_with_logits(real, torch.full_like(real, real_label))
                + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake)))
    if kind == "hinge":
        return F.relu(1 - real).mean() + F.relu(1 + fake).mean()
    if kind == "lsgan":
        return F.mse_loss(real, torch.full_like(real, real_label)) + F.mse_loss(fake, torch.zeros_like(fake))
    raise ValueError(f"Unknown GAN loss {kind!r}: choose from {', '.join(GAN_LOSSES)}.")


def generator_loss(fake: torch.Tensor, kind: str = "bce") -> torch.Tensor:
    """The generator's loss on the discriminator's logits for its images.

    bce:   -log D(G(z)), the non-saturating form (Goodfellow et al. 2014, sec. 3): strong gradients early,
           when D rejects every fake (the saturating log(1 - D(G(z))) would give almost none)
    hinge: -D(G(z))
    lsgan: (D(G(z)) - 1)^2
    """
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(fake, torch.ones_like(fake))
    if kind == "hinge":
        return -fake.mean()
    if kind == "lsgan":
        return F.mse_loss(fake, torch.ones_like(fake))
    raise ValueError(f"Unknown GAN loss {kind!r}: choose from {', '.join(GAN_LOSSES)}.")
