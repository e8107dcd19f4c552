"""Lesson 01 "The face VAE": the reference for each exercise and the checks the notebook calls.

Exercises (one concept each):
  1. ``encoder_head``    - the last layers of the encoder: features -> (mu, logvar), two affine maps
  2. ``reparameterise``  - z = mu + sigma * eps with sigma = exp(logvar / 2), differentiable in mu and logvar
  3. ``kl_divergence``   - KL(N(mu, sigma^2) || N(0, I)) summed over latent dimensions, averaged over the batch
  4. ``negative_elbo``   - the VAE's loss: squared error summed over pixels + kl_weight * KL, batch mean

Each ``check_<exercise>(fn, hidden=False)`` compares ``fn`` with the reference on fixed and seeded random
inputs, tests properties (KL is 0 only at the prior, z has the right spread, gradients reach mu and
logvar) and raises :class:`~faceedu.grading.core.CheckFailed` with a hint at the first mistake. The
references (faceedu's own ``EncoderHead``, ``reparameterise``, ``kl_divergence`` and the
``negative_elbo`` below) are blocked while ``fn`` runs.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from faceedu.grading.core import Check
from faceedu.losses import kl_divergence
from faceedu.models.vae import EncoderHead, reparameterise

__all__ = [
    "encoder_head", "reparameterise", "kl_divergence", "negative_elbo",
    "check_encoder_head", "check_reparameterise", "check_kl_divergence", "check_negative_elbo",
]

# --- reference implementations ---------------------------------------------------------------------


def encoder_head(in_features: int, latent: int) -> nn.Module:
    """A module mapping encoder features (B, in_features) to (mu, logvar), each (B, latent), with two
    independent Linear layers and no activation (logvar may be any real number)."""
    return EncoderHead(in_features, latent)


def negative_elbo(x: torch.Tensor, x_hat: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor,
                  kl_weight: float = 1.0) -> torch.Tensor:
    """The VAE loss for a batch: per image, the squared error summed over all pixels (a Gaussian decoder,
    up to constants) plus kl_weight times the KL term; averaged over the batch. A 0-dim tensor."""
    reconstruction = (x - x_hat).square().flatten(1).sum(1).mean()
    return reconstruction + kl_weight * kl_divergence(mu, logvar)


REFERENCES = (encoder_head, EncoderHead.forward, reparameterise, kl_divergence, negative_elbo)

# --- checks ------------------------------------------------------------------------------------------


def check_encoder_head(fn, hidden: bool = False) -> None:
    """Visible: returns an nn.Module; (mu, logvar) of shape (B, latent); both affine in the features (no
    activation), different from each other, 2 (F K + K) parameters, gradients reach every parameter.
    Hidden: other sizes, a batch of one, logvar takes negative values."""
    __tracebackhide__ = True
    c = Check("encoder_head", fn, hidden, blocked=REFERENCES)
    sizes = [(20, 6)] + ([(512, 128), (7, 1)] if hidden else [])
    for features, latent in sizes:
        torch.manual_seed(0)
        head = c.call(features, latent)
        c.expect(isinstance(head, nn.Module),
                 f"encoder_head({features}, {latent}) should return an nn.Module (e.g. an instance of a class "
                 f"with two nn.Linear layers), got {type(head).__name__}.")
        n = sum(p.numel() for p in head.parameters())
        expected = 2 * (features * latent + latent)
        c.expect(n == expected,
                 f"encoder_head({features}, {latent}) has {n} parameters, expected {expected}: two Linear layers "
                 f"{features} -> {latent} with bias (one for mu, one for logvar), nothing else.")
        h1 = torch.randn(8, features, generator=c.rng)
        h2 = torch.randn(8, features, generator=c.rng)
        out = _forward(c, head, h1)
        c.expect(isinstance(out, (tuple, list)) and len(out) == 2,
                 f"the module should return a pair (mu, logvar), got {type(out).__name__}.")
        mu, logvar = out
        for name, value in (("mu", mu), ("logvar", logvar)):
            c.expect_tensor(value, shape=(8, latent), what=f"{name} for features of shape (8, {features})",
                            hint="Each Linear maps in_features to latent.")
        c.expect(not torch.allclose(mu, logvar),
                 "mu and logvar are identical: they need separate weights (two Linear layers), or the model "
                 "cannot choose the mean and the spread independently.")
        a = 0.3
        mixed = _forward(c, head, a * h1 + (1 - a) * h2)
        mu2, logvar2 = _forward(c, head, h2)
        for name, got, v1, v2 in (("mu", mixed[0], mu, mu2), ("logvar", mixed[1], logvar, logvar2)):
            c.expect(torch.allclose(got, a * v1 + (1 - a) * v2, atol=1e-4),
                     f"{name} is not an affine function of the features: is there an activation after its Linear "
                     f"layer? logvar = log(sigma^2) must be able to take any real value (negative for sigma < 1), "
                     f"and mu any mean; no ReLU, exp or softplus.")
        c.expect(float(logvar.detach().std()) > 0, "logvar does not depend on the features: compute it from them with a Linear layer.")
        (mu.sum() + logvar.sum()).backward()
        missing = [name for name, p in head.named_parameters() if p.grad is None or not bool(p.grad.abs().sum() > 0)]
        c.expect(not missing, f"no gradient reaches {missing}: both outputs must come from the module's own layers.")
        if hidden:
            one = _forward(c, head, torch.randn(1, features, generator=c.rng))
            c.expect(one[0].shape == (1, latent), "a batch of one image should give mu of shape (1, latent).")
            big = _forward(c, head, 10 * torch.randn(64, features, generator=c.rng))
            c.expect(bool((big[1] < 0).any()), "logvar never goes below 0: it must be able to (a variance below 1).")
    c.done()


def _forward(c: Check, head: nn.Module, h: torch.Tensor):
    """Run the learner's module with the references blocked, explaining a crash."""
    __tracebackhide__ = True
    return Check(c.exercise, head, c.hidden, blocked=c.blocked).call(h)


def check_reparameterise(fn, hidden: bool = False) -> None:
    """Visible: shape and dtype of mu; z = mu when the variance is tiny; over 200,000 draws the mean is mu
    and the standard deviation exp(logvar / 2) for per-dimension variances (catches var instead of std,
    logvar used as sigma, uniform noise, no noise); dz/dlogvar = (z - mu) / 2 and dz/dmu = 1; two calls
    differ. Hidden: reproducible under torch.manual_seed, float64, a bell-shaped spread."""
    __tracebackhide__ = True
    c = Check("reparameterise", fn, hidden, blocked=REFERENCES)
    mu = torch.tensor([[0.5, -1.0, 2.0], [0.0, 3.0, -2.0]])
    n = 200_000
    centre = torch.tensor([1.5, -0.5, 0.0])
    sigma = torch.tensor([2.0, 0.5, 3.0])
    mus, logvars = centre.expand(n, 3).clone(), (2 * sigma.log()).expand(n, 3).clone()
    torch.manual_seed(1)
    z = c.call(mus, logvars)
    c.expect_tensor(z, shape=(n, 3), what="z for a batch of 200,000")
    mean, std = z.mean(0), z.std(0)
    if not torch.allclose(std, sigma, rtol=0.03):
        got = [round(v, 3) for v in std.tolist()]
        if torch.allclose(std, sigma ** 2, rtol=0.03):
            reason = "that is the variance exp(logvar): sigma = exp(logvar / 2) (var instead of std)"
        elif torch.allclose(std, (2 * sigma.log()).abs(), rtol=0.05):
            reason = "that is |logvar|: logvar is used as the standard deviation (the original code's quirk)"
        elif float(std.max()) < 1e-6:
            reason = "there is no noise at all: add sigma * eps with eps = torch.randn_like(mu)"
        else:
            reason = "the noise should be standard normal (torch.randn_like), scaled by sigma = exp(logvar / 2)"
        c.fail(f"for logvar = log({[round(v ** 2, 2) for v in sigma.tolist()]}) the standard deviation of z "
               f"should be {sigma.tolist()}, got {got}; {reason}.")
    c.passed += 1
    c.expect(torch.allclose(mean, centre, atol=0.05),
             f"the mean of z should be mu = {centre.tolist()}, got {[round(v, 3) for v in mean.tolist()]}: the noise "
             f"must have mean 0 (torch.randn_like, not torch.rand_like).")
    z = c.call(mu, torch.full_like(mu, -40.0))
    c.expect_tensor(z, shape=mu.shape, dtype=mu.dtype, what="z", hint="z has the shape of mu.")
    c.expect_close(z, mu, what="z for a variance of exp(-40)", atol=1e-5,
                   hint="With (almost) no variance, z = mu: the noise is scaled by sigma = exp(logvar / 2).")
    mu_g = torch.randn(4, 5, generator=c.rng).requires_grad_()
    lv_g = torch.randn(4, 5, generator=c.rng).requires_grad_()
    z = c.call(mu_g, lv_g)
    c.expect(z.requires_grad, "z carries no gradient: do not detach or use torch.no_grad(); the whole point of "
                              "the trick is that z is a differentiable function of mu and logvar.")
    z.sum().backward()
    c.expect(mu_g.grad is not None and torch.allclose(mu_g.grad, torch.ones_like(mu_g)),
             "dz/dmu should be 1 for every element: z = mu + sigma * eps.")
    c.expect(lv_g.grad is not None, "no gradient reaches logvar.")
    c.expect_close(lv_g.grad, 0.5 * (z - mu_g).detach(), what="dz/dlogvar", atol=1e-5,
                   hint="With sigma = exp(logvar / 2), dz/dlogvar = sigma * eps / 2 = (z - mu) / 2.")
    a, b = c.call(mu, torch.zeros_like(mu)), c.call(mu, torch.zeros_like(mu))
    c.expect(not torch.equal(a, b), "two calls gave the same z: draw fresh noise on every call.")
    if hidden:
        torch.manual_seed(7)
        a = c.call(mu, torch.zeros_like(mu))
        torch.manual_seed(7)
        b = c.call(mu, torch.zeros_like(mu))
        c.expect(torch.equal(a, b), "with the same torch.manual_seed, z should be the same: draw the noise with "
                                    "torch (torch.randn_like), not numpy or random.")
        z64 = c.call(mu.double(), torch.zeros_like(mu).double())
        c.expect_tensor(z64, shape=mu.shape, dtype=torch.float64, what="z for float64 inputs",
                        hint="torch.randn_like(mu) keeps mu's dtype.")
        noise64 = c.call(torch.zeros(2000, dtype=torch.float64), torch.zeros(2000, dtype=torch.float64))  # z = eps
        c.expect(not torch.equal(noise64.float().double(), noise64),
                 "for float64 mu the noise was drawn in float32: torch.randn(mu.shape) ignores mu's dtype (and its "
                 "device: on a GPU it would fail). Use torch.randn_like(mu), which matches both.")
        eps = c.call(torch.zeros(n), torch.zeros(n))
        inside = float((eps.abs() < 1).float().mean())
        c.expect(abs(inside - 0.6827) < 0.01,
                 f"{inside:.1%} of the noise lies within one standard deviation; a normal distribution has 68.3%. "
                 f"Use torch.randn_like.")
    c.done()


def check_kl_divergence(fn, hidden: bool = False) -> None:
    """Visible: 0 at the prior (mu = 0, logvar = 0), a 0-dim tensor, the closed form on random inputs,
    positive, the mean over the batch (a repeated batch gives the same value) and the sum over latent
    dimensions, gradients. Hidden: a large batch, extreme logvar, float64."""
    __tracebackhide__ = True
    c = Check("kl_divergence", fn, hidden, blocked=REFERENCES)
    zero = c.call(torch.zeros(4, 8), torch.zeros(4, 8))
    c.expect_tensor(zero, shape=(), what="the KL", hint="Return one number for the batch (a 0-dim tensor): sum "
                                                         "over latent dimensions, then .mean() over the batch.")
    if abs(float(zero)) > 1e-6:
        c.fail(f"KL should be 0 when mu = 0 and logvar = 0 (the encoder outputs the prior); yours is {float(zero):.4g}. "
               f"Did you forget the 1 + logvar term? KL = -1/2 sum(1 + logvar - mu^2 - exp(logvar)).")
    c.passed += 1
    one = c.call(torch.ones(1, 1), torch.zeros(1, 1))
    if float(one) < 0:
        c.fail(f"KL for mu = 1, logvar = 0 should be +0.5, yours is {float(one):.4g}: a KL divergence is never "
               f"negative; check the sign (-1/2 times the sum).")
    c.expect_close(one, torch.tensor(0.5), what="KL for mu = 1, logvar = 0", atol=1e-5,
                   hint="One dimension with mu = 1 and sigma = 1 gives mu^2 / 2 = 0.5.")
    var2 = c.call(torch.zeros(1, 1), torch.full((1, 1), math.log(2.0)))
    c.expect_close(var2, torch.tensor(0.5 * (2 - 1 - math.log(2))), what="KL for mu = 0, sigma^2 = 2", atol=1e-5,
                   hint="exp(logvar) is the variance sigma^2; logvar itself appears once, inside 1 + logvar.")
    mu, logvar = torch.randn(8, 16, generator=c.rng), torch.randn(8, 16, generator=c.rng)
    expected = kl_divergence(mu, logvar)
    got = c.call(mu, logvar)
    c.expect_tensor(got, shape=(), what="the KL for a batch of 8")
    repeated = c.call(mu.repeat(3, 1), logvar.repeat(3, 1))
    if torch.isclose(repeated, 3 * got, rtol=1e-4):
        c.fail("the same 8 images repeated 3 times gave 3 times the KL: average over the batch (.mean()), do not "
               "sum, or the loss would grow with the batch size.")
    wide = c.call(torch.cat([mu, mu], 1), torch.cat([logvar, logvar], 1))
    if torch.isclose(wide, got, rtol=1e-4):
        c.fail("duplicating every latent dimension did not change the KL: sum over the latent dimensions (the KL of "
               "independent dimensions adds up), and average only over the batch.")
    c.expect_close(got, expected, what="the KL for random mu and logvar (8 x 16)", atol=1e-4,
                   hint="KL = mean over the batch of -1/2 sum_j (1 + logvar_j - mu_j^2 - exp(logvar_j)).")
    c.expect_close(repeated, expected, what="the KL of a repeated batch", atol=1e-4)
    mu_g, lv_g = mu.clone().requires_grad_(), logvar.clone().requires_grad_()
    out = c.call(mu_g, lv_g)
    c.expect(out.requires_grad, "the KL carries no gradient: compute it with torch operations on mu and logvar.")
    out.backward()
    c.expect_close(mu_g.grad, mu / len(mu), what="dKL/dmu", atol=1e-5, hint="dKL/dmu = mu / batch size.")
    if hidden:
        for label, (m, lv) in {
            "a batch of 512 x 128": (torch.randn(512, 128, generator=c.rng), torch.randn(512, 128, generator=c.rng)),
            "logvar in [-10, 10]": (torch.randn(16, 4, generator=c.rng), torch.linspace(-10, 10, 64).view(16, 4)),
            "float64 inputs": (torch.randn(5, 3, generator=c.rng).double(), torch.randn(5, 3, generator=c.rng).double()),
        }.items():
            value = c.call(m, lv)
            c.expect(bool(torch.isfinite(value)) and float(value) >= 0, f"the KL for {label} should be finite and >= 0.")
            c.expect_close(value, kl_divergence(m, lv), what=f"the KL for {label}", atol=1e-3, rtol=1e-5)
        for _ in range(20):
            m, lv = 3 * torch.randn(4, 6, generator=c.rng), 3 * torch.randn(4, 6, generator=c.rng)
            c.expect(float(c.call(m, lv)) >= 0, "the KL came out negative for some input: it never is.")
    c.done()


def check_negative_elbo(fn, hidden: bool = False) -> None:
    """Visible: 0 for a perfect reconstruction at the prior; the squared error summed over pixels and
    averaged over images; + kl_weight * KL; a 0-dim tensor with gradients. Hidden: kl_weight = 0, batch-size
    invariance, bigger images give proportionally bigger reconstruction terms."""
    __tracebackhide__ = True
    c = Check("negative_elbo", fn, hidden, blocked=REFERENCES)
    x = torch.rand(4, 3, 8, 8, generator=c.rng)
    prior = (torch.zeros(4, 5), torch.zeros(4, 5))
    perfect = c.call(x, x.clone(), *prior)
    c.expect_tensor(perfect, shape=(), what="the loss", hint="Return one number (a 0-dim tensor) for the batch.")
    c.expect_close(perfect, torch.tensor(0.0), what="the loss of a perfect reconstruction at the prior", atol=1e-6,
                   hint="Both terms vanish: no pixel error, and KL = 0 at mu = 0, logvar = 0.")
    x_hat = (x + 0.1).clamp(0, 1)
    recon = c.call(x, x_hat, *prior)
    expected = negative_elbo(x, x_hat, *prior)
    per_pixel = (x - x_hat).square().mean()
    if torch.isclose(recon, per_pixel, rtol=1e-4):
        c.fail(f"the reconstruction term is the mean squared error per pixel ({float(per_pixel):.4g}); the ELBO "
               f"sums the log-likelihood over the {3 * 8 * 8} pixels of an image: sum over (C, H, W), then average "
               f"over the batch (expected {float(expected):.4g}).")
    if torch.isclose(recon, len(x) * expected, rtol=1e-4):
        c.fail("the reconstruction term is summed over the batch too: sum over each image's pixels, then .mean() "
               "over the images.")
    c.expect_close(recon, expected, what="the loss with squared errors only (KL = 0)", atol=1e-4,
                   hint="reconstruction = (x - x_hat)^2 summed over (C, H, W), averaged over the batch.")
    mu, logvar = torch.randn(4, 5, generator=c.rng), torch.randn(4, 5, generator=c.rng)
    for weight in (1.0, 0.01):
        got = c.call(x, x_hat, mu, logvar, kl_weight=weight)
        want = negative_elbo(x, x_hat, mu, logvar, kl_weight=weight)
        if torch.isclose(got, expected - weight * kl_divergence(mu, logvar), rtol=1e-4):
            c.fail("the KL term is subtracted: the negative ELBO is reconstruction error PLUS the KL (the ELBO is "
                   "log-likelihood minus KL; we minimise its negative).")
        c.expect_close(got, want, what=f"the loss with kl_weight={weight}", atol=1e-4,
                       hint="loss = reconstruction + kl_weight * KL, with KL summed over latent dims and averaged "
                            "over the batch (your kl_divergence).")
    x_g = x_hat.clone().requires_grad_()
    out = c.call(x, x_g, mu, logvar)
    c.expect(out.requires_grad, "the loss carries no gradient to x_hat.")
    if hidden:
        c.expect_close(c.call(x, x_hat, mu, logvar, kl_weight=0.0), expected, what="the loss with kl_weight=0",
                       atol=1e-4, hint="kl_weight multiplies the KL only.")
        c.expect_close(c.call(x.repeat(3, 1, 1, 1), x_hat.repeat(3, 1, 1, 1), mu.repeat(3, 1), logvar.repeat(3, 1)),
                       negative_elbo(x, x_hat, mu, logvar), what="the loss of a repeated batch", atol=1e-3,
                       hint="Average over the batch, so the loss does not depend on the batch size.")
        big_x, big_hat = x.repeat(1, 1, 2, 2), x_hat.repeat(1, 1, 2, 2)
        c.expect_close(c.call(big_x, big_hat, *prior), 4 * expected, what="the loss for images tiled 2 x 2",
                       atol=1e-3, hint="Four times the pixels, four times the summed squared error.")
    c.done()
