"""Lesson 04's checks can fail: the reference solution passes every check (visible and hidden), the
released stubs fail every one, calling faceedu's own implementation is rejected, and every mutant - a
realistic mistake, written below next to its exercise - is rejected with a message. The kill rate is printed."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from faceedu.grading import lesson04
from faceedu.grading.core import ReferenceUsed
from faceedu.models.cgan import down_block, up_block
from gradertests import GraderContract, run_checks

SLUG = "04_cgan"
CHECKS = {
    "conditional_generator": lesson04.check_conditional_generator,
    "conditional_discriminator": lesson04.check_conditional_discriminator,
    "discriminator_loss": lesson04.check_discriminator_loss,
    "generator_loss": lesson04.check_generator_loss,
    "dcgan_init": lesson04.check_dcgan_init,
    "train_step": lesson04.check_train_step,
    "diversity": lesson04.check_diversity,
}

# --- mutants: the generator ----------------------------------------------------------------------------


class _G(nn.Module):
    def __init__(self, config, use_y=True, join="cat", out=nn.Tanh, out_bn=False, y_first=False):
        super().__init__()
        p, k = config.g_project, len(config.attrs)
        self.use_y, self.join, self.y_first = use_y, join, y_first
        self.project_z = nn.Sequential(nn.ConvTranspose2d(config.z_dim, p, 4, 1, 0, bias=False), nn.BatchNorm2d(p), nn.ReLU())
        if use_y:
            self.project_y = nn.Sequential(nn.ConvTranspose2d(k, p, 4, 1, 0, bias=False), nn.BatchNorm2d(p), nn.ReLU())
        widths = ((2 * p if join == "cat" and use_y else p), *config.g_widths)
        self.body = nn.Sequential(*[up_block(a, b) for a, b in zip(widths[:-1], widths[1:])])
        layers = [nn.ConvTranspose2d(widths[-1], 3, 4, 2, 1, bias=False)] + ([nn.BatchNorm2d(3)] if out_bn else []) + [out()]
        self.to_rgb = nn.Sequential(*layers)

    def forward(self, z, y):
        h = self.project_z(z[:, :, None, None])
        if self.use_y:
            hy = self.project_y(y[:, :, None, None])
            h = (torch.cat([hy, h], 1) if self.y_first else torch.cat([h, hy], 1)) if self.join == "cat" else h + hy
        return self.to_rgb(self.body(h))


def generator_ignores_y(config):
    """No label branch at all: an unconditional DCGAN."""
    return _G(config, use_y=False)


def generator_adds_labels(config):
    """z's and y's projections are added instead of concatenated."""
    return _G(config, join="add")


def generator_sigmoid_output(config):
    """A sigmoid on the output: faces in [0, 1] while the data is mapped to [-1, 1]."""
    return _G(config, out=nn.Sigmoid)


def generator_batchnorm_on_output(config):
    """BatchNorm before the tanh of the RGB layer."""
    return _G(config, out_bn=True)


def generator_labels_first(config):
    """Concatenates [y, z] instead of [z, y] (the seed's order)."""
    return _G(config, y_first=True)


# --- mutants: the discriminator ------------------------------------------------------------------------


class _D(nn.Module):
    def __init__(self, config, maps="right", first_bn=False, feed=True, image_first=True):
        super().__init__()
        k, f = len(config.attrs), config.d_first
        self.maps, self.feed, self.image_first = maps, feed, image_first
        self.image_in = down_block(3, f, batchnorm=first_bn)
        self.label_in = down_block(k, f, batchnorm=first_bn)
        widths = (2 * f, *config.d_widths)
        self.body = nn.Sequential(*[down_block(a, b) for a, b in zip(widths[:-1], widths[1:])])
        self.logit = nn.Conv2d(widths[-1], 1, 4, 1, 0, bias=False)

    def forward(self, x, y):
        B, k, S = len(y), y.shape[1], x.shape[-1]
        if not self.feed:
            y = torch.zeros_like(y)
        if self.maps == "right":
            maps = y[:, :, None, None].expand(-1, -1, S, S)
        elif self.maps == "repeat":
            maps = y.repeat(1, S * S).view(B, k, S, S)
        else:  # "one_row": the label written into the first row only, zeros elsewhere
            maps = torch.zeros(B, k, S, S)
            maps[:, :, 0, :] = y[:, :, None]
        a, b = self.image_in(x), self.label_in(maps)
        return self.logit(self.body(torch.cat([a, b] if self.image_first else [b, a], 1))).flatten()


def discriminator_labels_not_fed(config):
    """The label branch exists but is fed zeros: D never sees y."""
    return _D(config, feed=False)


def discriminator_maps_repeat_view(config):
    """Label maps from y.repeat(1, S*S).view(B, k, S, S): the attributes are interleaved, not constant maps."""
    return _D(config, maps="repeat")


def discriminator_maps_one_row(config):
    """The label written into one row of an otherwise empty map (the wrong broadcast)."""
    return _D(config, maps="one_row")


def discriminator_batchnorm_first_layer(config):
    """BatchNorm on the first layer of both branches."""
    return _D(config, first_bn=True)


def discriminator_labels_first(config):
    """Concatenates [label features, image features]."""
    return _D(config, image_first=False)


# --- mutants: the losses -------------------------------------------------------------------------------


def d_loss_smooths_fakes(real_logits, fake_logits, real_label=0.9):
    """Two-sided smoothing: the fakes' target is 1 - real_label instead of 0."""
    return (F.binary_cross_entropy_with_logits(real_logits, torch.full_like(real_logits, real_label))
            + F.binary_cross_entropy_with_logits(fake_logits, torch.full_like(fake_logits, 1 - real_label)))


def d_loss_fake_target_one(real_logits, fake_logits, real_label=0.9):
    """Real/fake labels swapped in the fake term: fakes are pushed towards 1."""
    return (F.binary_cross_entropy_with_logits(real_logits, torch.full_like(real_logits, real_label))
            + F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits)))


def d_loss_swapped(real_logits, fake_logits, real_label=0.9):
    """Real and fake logits swapped (D rewarded for preferring fakes)."""
    return (F.binary_cross_entropy_with_logits(fake_logits, torch.full_like(fake_logits, real_label))
            + F.binary_cross_entropy_with_logits(real_logits, torch.zeros_like(real_logits)))


def d_loss_sigmoid_then_log(real_logits, fake_logits, real_label=0.9):
    """sigmoid then log by hand: overflows to inf for confident logits."""
    p, q = torch.sigmoid(real_logits), torch.sigmoid(fake_logits)
    return -(real_label * torch.log(p) + (1 - real_label) * torch.log(1 - p)).mean() - torch.log(1 - q).mean()


def d_loss_no_smoothing_default(real_logits, fake_logits, real_label=1.0):
    """Default real_label 1.0: no smoothing unless asked for."""
    return (F.binary_cross_entropy_with_logits(real_logits, torch.full_like(real_logits, real_label))
            + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits)))


def d_loss_half(real_logits, fake_logits, real_label=0.9):
    """Halves the sum (CycleGAN's 0.5 factor carried over)."""
    return 0.5 * (F.binary_cross_entropy_with_logits(real_logits, torch.full_like(real_logits, real_label))
                  + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits)))


def g_loss_saturating(fake_logits):
    """The minimax form log(1 - D(G(z))): saturates when D rejects the fakes."""
    return -F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))


def g_loss_smoothed(fake_logits):
    """Label smoothing applied to G's target too (0.9)."""
    return F.binary_cross_entropy_with_logits(fake_logits, torch.full_like(fake_logits, 0.9))


def g_loss_hinge(fake_logits):
    """The hinge/Wasserstein generator loss -D(G(z)) in place of -log D(G(z))."""
    return -fake_logits.mean()


def g_loss_summed(fake_logits):
    """Summed over the batch instead of averaged."""
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits), reduction="sum")


# --- mutants: the initialisation -----------------------------------------------------------------------


def init_bn_gamma_zero_mean(module):
    """BatchNorm weights N(0, 0.02): every unit starts switched off."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 0.0, 0.02)
        nn.init.zeros_(module.bias)


def init_std_too_large(module):
    """std 0.2 instead of 0.02."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.2)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def init_conv2d_only(module):
    """Only nn.Conv2d: the generator's ConvTranspose2d layers keep PyTorch's default init."""
    if type(module) is nn.Conv2d:
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def init_keeps_biases(module):
    """Leaves the conv biases at PyTorch's default."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


# --- mutants: the alternating step ---------------------------------------------------------------------

_bce = F.binary_cross_entropy_with_logits


def _dl(real, fake, t=0.9):
    return _bce(real, torch.full_like(real, t)) + _bce(fake, torch.zeros_like(fake))


def _gl(fake):
    return _bce(fake, torch.ones_like(fake))


def step_data_in_01(G, D, opt_g, opt_d, images, y, z, real_label=0.9, y_fake=None):
    """Feeds the [0, 1] faces to D next to G's [-1, 1] ones."""
    fake = G(z, y)
    loss_d = _dl(D(images, y), D(fake.detach(), y), real_label)
    opt_d.zero_grad(); loss_d.backward(); opt_d.step()
    loss_g = _gl(D(fake, y))
    opt_g.zero_grad(); loss_g.backward(); opt_g.step()
    return {"loss_d": loss_d.item(), "loss_g": loss_g.item()}


def step_undetached_fakes(G, D, opt_g, opt_d, images, y, z, real_label=0.9, y_fake=None):
    """D trained on un-detached fakes, G's gradients zeroed only once at the start: G also descends D's loss."""
    x = images * 2 - 1
    opt_g.zero_grad(); opt_d.zero_grad()
    fake = G(z, y)
    loss_d = _dl(D(x, y), D(fake, y), real_label)
    loss_d.backward(); opt_d.step()
    loss_g = _gl(D(fake, y))
    loss_g.backward(); opt_g.step()
    return {"loss_d": loss_d.item(), "loss_g": loss_g.item()}


def step_g_updates_d(G, D, opt_g, opt_d, images, y, z, real_label=0.9, y_fake=None):
    """Steps opt_d after G's backward too: G's loss trains D to be fooled."""
    x = images * 2 - 1
    fake = G(z, y)
    loss_d = _dl(D(x, y), D(fake.detach(), y), real_label)
    opt_d.zero_grad(); loss_d.backward(); opt_d.step()
    loss_g = _gl(D(fake, y))
    opt_g.zero_grad(); loss_g.backward(); opt_g.step(); opt_d.step()
    return {"loss_d": loss_d.item(), "loss_g": loss_g.item()}


def step_reuses_old_logits(G, D, opt_g, opt_d, images, y, z, real_label=0.9, y_fake=None):
    """G's loss from the fake logits computed before D's update (and un-detached)."""
    x = images * 2 - 1
    fake = G(z, y)
    fake_logits = D(fake, y)
    loss_d = _dl(D(x, y), fake_logits, real_label)
    opt_d.zero_grad(); loss_d.backward(retain_graph=True); opt_d.step()
    loss_g = _gl(fake_logits)
    opt_g.zero_grad(); loss_g.backward(); opt_g.step()
    return {"loss_d": loss_d.item(), "loss_g": loss_g.item()}


def step_fakes_without_labels(G, D, opt_g, opt_d, images, y, z, real_label=0.9, y_fake=None):
    """D judges the fakes with all-zero attributes instead of the ones G was asked for."""
    x = images * 2 - 1
    fake = G(z, y)
    loss_d = _dl(D(x, y), D(fake.detach(), torch.zeros_like(y)), real_label)
    opt_d.zero_grad(); loss_d.backward(); opt_d.step()
    loss_g = _gl(D(fake, y))
    opt_g.zero_grad(); loss_g.backward(); opt_g.step()
    return {"loss_d": loss_d.item(), "loss_g": loss_g.item()}


def step_one_batch_for_d(G, D, opt_g, opt_d, images, y, z, real_label=0.9, y_fake=None):
    """Real and fake through D in one concatenated batch (BatchNorm mixes their statistics)."""
    x = images * 2 - 1
    fake = G(z, y)
    logits = D(torch.cat([x, fake.detach()]), torch.cat([y, y]))
    loss_d = _dl(logits[:len(x)], logits[len(x):], real_label)
    opt_d.zero_grad(); loss_d.backward(); opt_d.step()
    loss_g = _gl(D(fake, y))
    opt_g.zero_grad(); loss_g.backward(); opt_g.step()
    return {"loss_d": loss_d.item(), "loss_g": loss_g.item()}


# --- mutants: diversity --------------------------------------------------------------------------------


def diversity_counts_self_pairs(features):
    """Averages over all N^2 pairs, the zero self-distances included."""
    return float(torch.cdist(features, features).mean())


def diversity_squared(features):
    """Mean squared distance."""
    f = features.double()
    n = len(f)
    return float(torch.cdist(f, f).square().sum() / (n * (n - 1)))


def diversity_feature_std(features):
    """The mean per-dimension standard deviation: 0 for a collapse too, but not a distance."""
    return float(features.std(0).mean())


def diversity_first_pair(features):
    """The distance between the first two samples only."""
    return float((features[0] - features[1]).norm())


MUTANTS = {
    "conditional_generator": [generator_ignores_y, generator_adds_labels, generator_sigmoid_output,
                              generator_batchnorm_on_output, generator_labels_first],
    "conditional_discriminator": [discriminator_labels_not_fed, discriminator_maps_repeat_view, discriminator_maps_one_row,
                                  discriminator_batchnorm_first_layer, discriminator_labels_first],
    "discriminator_loss": [d_loss_smooths_fakes, d_loss_fake_target_one, d_loss_swapped, d_loss_sigmoid_then_log,
                           d_loss_no_smoothing_default, d_loss_half],
    "generator_loss": [g_loss_saturating, g_loss_smoothed, g_loss_hinge, g_loss_summed],
    "dcgan_init": [init_bn_gamma_zero_mean, init_std_too_large, init_conv2d_only, init_keeps_biases],
    "train_step": [step_data_in_01, step_undetached_fakes, step_g_updates_d, step_reuses_old_logits,
                   step_fakes_without_labels, step_one_batch_for_d],
    "diversity": [diversity_counts_self_pairs, diversity_squared, diversity_feature_std, diversity_first_pair],
}


# --- tests -------------------------------------------------------------------------------------------


def grade(exercise, fn) -> str | None:
    return run_checks(CHECKS, exercise, fn)


class TestGrader(GraderContract):
    SLUG, LESSON, CHECKS, MUTANTS = SLUG, lesson04, CHECKS, MUTANTS


def test_the_package_implementations_are_blocked_too():
    from faceedu.losses import discriminator_loss, generator_loss
    from faceedu.metrics import mean_pairwise_distance
    from faceedu.models.cgan import DCGANDiscriminator, Generator

    with pytest.raises(ReferenceUsed):
        CHECKS["discriminator_loss"](lambda r, f, real_label=0.9: discriminator_loss(r, f, "bce", real_label))
    with pytest.raises(ReferenceUsed):
        CHECKS["generator_loss"](lambda f: generator_loss(f, "bce"))
    with pytest.raises(ReferenceUsed):
        CHECKS["conditional_generator"](lambda config: Generator(config))
    with pytest.raises(ReferenceUsed):
        CHECKS["conditional_discriminator"](lambda config: DCGANDiscriminator(config))
    with pytest.raises(ReferenceUsed):
        CHECKS["diversity"](lambda f: mean_pairwise_distance(f))


def test_failure_messages_are_actionable():
    assert "saturating" in grade("generator_loss", g_loss_saturating)
    assert "one-sided" in grade("discriminator_loss", d_loss_smooths_fakes)
    assert "swapped" in grade("discriminator_loss", d_loss_fake_target_one)
    assert "[-1, 1]" in grade("train_step", step_data_in_01)
    assert "detach" in grade("train_step", step_undetached_fakes)
    assert "only opt_g.step()" in grade("train_step", step_g_updates_d)
    assert "first layer" in grade("conditional_discriminator", discriminator_batchnorm_first_layer)
    assert "never reach D" in grade("conditional_discriminator", discriminator_labels_not_fed)
    assert "label maps" in grade("conditional_discriminator", discriminator_maps_repeat_view)
    assert "ignores y" in grade("conditional_generator", generator_ignores_y) or "dropped" in grade("conditional_generator", generator_ignores_y)
    assert "tanh" in grade("conditional_generator", generator_sigmoid_output).lower()
    assert "N(1, 0.02)" in grade("dcgan_init", init_bn_gamma_zero_mean)
    assert "self" in grade("diversity", diversity_counts_self_pairs) or "itself" in grade("diversity", diversity_counts_self_pairs)
