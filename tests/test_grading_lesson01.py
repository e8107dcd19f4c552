"""Lesson 01's checks can fail: the reference solution passes every check (visible and hidden), the
released stubs fail every one, calling faceedu's own implementation is rejected, and every mutant - a
realistic mistake, written below next to its exercise - is rejected. The kill rate is printed."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from faceedu.grading import lesson01
from faceedu.grading.core import ReferenceUsed
from gradertests import GraderContract, run_checks

SLUG = "01_vae"
CHECKS = {
    "encoder_head": lesson01.check_encoder_head,
    "reparameterise": lesson01.check_reparameterise,
    "kl_divergence": lesson01.check_kl_divergence,
    "negative_elbo": lesson01.check_negative_elbo,
}

# --- mutants: realistic wrong implementations -------------------------------------------------------


class _Head(nn.Module):
    def __init__(self, f, k, activation=None, shared=False, bias=True):
        super().__init__()
        self.mu = nn.Linear(f, k, bias=bias)
        self.logvar = self.mu if shared else nn.Linear(f, k, bias=bias)
        self.activation = activation

    def forward(self, h):
        logvar = self.logvar(h)
        return self.mu(h), self.activation(logvar) if self.activation else logvar


def head_relu_logvar(in_features, latent):
    """A ReLU on logvar: variances below 1 become impossible."""
    return _Head(in_features, latent, torch.relu)


def head_exp_logvar(in_features, latent):
    """Outputs the variance exp(.) where the log-variance is expected."""
    return _Head(in_features, latent, torch.exp)


def head_shared_layer(in_features, latent):
    """One Linear layer for both: mu and logvar are the same numbers."""
    return _Head(in_features, latent, shared=True)


def head_one_layer_unsplit(in_features, latent):
    """One Linear to 2 x latent, returned twice without splitting it."""
    class Unsplit(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(in_features, 2 * latent)

        def forward(self, h):
            out = self.fc(h)
            return out, out
    return Unsplit()


def head_hidden_layer(in_features, latent):
    """An extra hidden layer with a ReLU before the two heads (not affine, extra parameters)."""
    class Deep(nn.Module):
        def __init__(self):
            super().__init__()
            self.hidden = nn.Sequential(nn.Linear(in_features, in_features), nn.ReLU())
            self.mu, self.logvar = nn.Linear(in_features, latent), nn.Linear(in_features, latent)

        def forward(self, h):
            h = self.hidden(h)
            return self.mu(h), self.logvar(h)
    return Deep()


def reparam_var_not_std(mu, logvar):
    """Scales the noise by the variance exp(logvar) instead of the standard deviation."""
    return mu + torch.exp(logvar) * torch.randn_like(mu)


def reparam_toledo_quirk(mu, logvar):
    """The original code's z = mu + eps * logvar."""
    return mu + logvar * torch.randn_like(mu)


def reparam_no_noise(mu, logvar):
    """Returns the mean: an autoencoder in disguise."""
    return mu.clone()


def reparam_uniform_noise(mu, logvar):
    """torch.rand_like: uniform noise in [0, 1) instead of a standard normal."""
    return mu + torch.exp(0.5 * logvar) * torch.rand_like(mu)


def reparam_detached(mu, logvar):
    """Samples without a graph, so no gradient reaches the encoder."""
    with torch.no_grad():
        return mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)


def reparam_numpy_noise(mu, logvar):
    """Right formula, noise from numpy: not reproducible with torch.manual_seed, always float32."""
    import numpy as np
    eps = torch.from_numpy(np.random.standard_normal(tuple(mu.shape))).to(torch.float32)
    return mu + torch.exp(0.5 * logvar) * eps


def reparam_randn_shape(mu, logvar):
    """torch.randn(mu.shape): ignores mu's dtype and device (passed even the hidden checks once)."""
    return mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape)


def kl_sign_flipped(mu, logvar):
    """Forgets the minus sign in front of 1/2."""
    return (0.5 * (1 + logvar - mu ** 2 - logvar.exp()).sum(1)).mean()


def kl_summed_over_batch(mu, logvar):
    """Sums over the batch as well: the loss grows with the batch size."""
    return -0.5 * (1 + logvar - mu ** 2 - logvar.exp()).sum()


def kl_mean_over_dims(mu, logvar):
    """Averages over latent dimensions instead of summing them (as the paper's code does)."""
    return (-0.5 * (1 + logvar - mu ** 2 - logvar.exp())).mean()


def kl_forgets_one(mu, logvar):
    """Drops the 1 in 1 + logvar."""
    return (-0.5 * (logvar - mu ** 2 - logvar.exp()).sum(1)).mean()


def kl_logvar_as_log_sigma(mu, logvar):
    """Treats logvar as log sigma (exp(2 logvar), 2 logvar), the other half of the original code."""
    return (-0.5 * (1 + 2 * logvar - mu ** 2 - (2 * logvar).exp()).sum(1)).mean()


def kl_variance_as_logvar(mu, logvar):
    """Uses sigma^2 where log sigma^2 belongs and vice versa."""
    return (-0.5 * (1 + logvar.exp() - mu ** 2 - logvar).sum(1)).mean()


def _kl(mu, logvar):
    return (-0.5 * (1 + logvar - mu ** 2 - logvar.exp()).sum(1)).mean()


def elbo_mean_pixels(x, x_hat, mu, logvar, kl_weight=1.0):
    """The mean squared error per pixel instead of the sum over an image."""
    return (x - x_hat).pow(2).mean() + kl_weight * _kl(mu, logvar)


def elbo_minus_kl(x, x_hat, mu, logvar, kl_weight=1.0):
    """Subtracts the KL (confusing the ELBO with its negative)."""
    return (x - x_hat).pow(2).flatten(1).sum(1).mean() - kl_weight * _kl(mu, logvar)


def elbo_ignores_weight(x, x_hat, mu, logvar, kl_weight=1.0):
    """Forgets kl_weight."""
    return (x - x_hat).pow(2).flatten(1).sum(1).mean() + _kl(mu, logvar)


def elbo_summed_over_batch(x, x_hat, mu, logvar, kl_weight=1.0):
    """Sums the reconstruction over the batch too."""
    return (x - x_hat).pow(2).sum() + kl_weight * _kl(mu, logvar)


def elbo_absolute_error(x, x_hat, mu, logvar, kl_weight=1.0):
    """An l1 reconstruction term (a Laplace decoder, not the Gaussian asked for)."""
    return (x - x_hat).abs().flatten(1).sum(1).mean() + kl_weight * _kl(mu, logvar)


MUTANTS = {
    "encoder_head": [head_relu_logvar, head_exp_logvar, head_shared_layer, head_one_layer_unsplit, head_hidden_layer],
    "reparameterise": [reparam_var_not_std, reparam_toledo_quirk, reparam_no_noise, reparam_uniform_noise,
                       reparam_detached, reparam_numpy_noise, reparam_randn_shape],
    "kl_divergence": [kl_sign_flipped, kl_summed_over_batch, kl_mean_over_dims, kl_forgets_one, kl_logvar_as_log_sigma,
                      kl_variance_as_logvar],
    "negative_elbo": [elbo_mean_pixels, elbo_minus_kl, elbo_ignores_weight, elbo_summed_over_batch, elbo_absolute_error],
}


# --- tests -------------------------------------------------------------------------------------------


def grade(exercise, fn) -> str | None:
    return run_checks(CHECKS, exercise, fn)


class TestGrader(GraderContract):
    SLUG, LESSON, CHECKS, MUTANTS = SLUG, lesson01, CHECKS, MUTANTS


def test_the_package_implementations_are_blocked_too():
    from faceedu.losses import kl_divergence
    from faceedu.models.vae import EncoderHead, reparameterise

    with pytest.raises(ReferenceUsed):
        CHECKS["kl_divergence"](lambda mu, logvar: kl_divergence(mu, logvar))
    with pytest.raises(ReferenceUsed):
        CHECKS["reparameterise"](lambda mu, logvar: reparameterise(mu, logvar))
    with pytest.raises(ReferenceUsed):
        CHECKS["encoder_head"](lambda f, k: EncoderHead(f, k))
    assert float(kl_divergence(torch.zeros(1, 2), torch.zeros(1, 2))) == 0


def test_failure_messages_are_actionable():
    assert "var instead of std" in grade("reparameterise", reparam_var_not_std)
    assert "quirk" in grade("reparameterise", reparam_toledo_quirk)
    assert "1 + logvar" in grade("kl_divergence", kl_forgets_one)
    assert "never negative" in grade("kl_divergence", kl_sign_flipped)
    assert "average over the batch" in grade("kl_divergence", kl_summed_over_batch)
    assert "sum over the latent dimensions" in grade("kl_divergence", kl_mean_over_dims)
    assert "no activation" in grade("encoder_head", head_relu_logvar) or "affine" in grade("encoder_head", head_relu_logvar)
    assert "sums the log-likelihood" in grade("negative_elbo", elbo_mean_pixels)
    assert "PLUS the KL" in grade("negative_elbo", elbo_minus_kl)
