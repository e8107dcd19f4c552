"""Lesson 08's checks can fail: the reference solution passes every check (visible and hidden), the
released stubs fail every one, calling faceedu's own implementation is rejected, and every mutant - a
realistic mistake, written below next to its exercise - is rejected. The kill rate is printed."""

from __future__ import annotations

import random

import pytest
import torch
from torch import nn

from faceedu.grading import lesson08
from faceedu.grading.core import CopiedReference, ReferenceUsed
from gradertests import GraderContract, run_checks

SLUG = "08_cyclegan"
CHECKS = {name: getattr(lesson08, f"check_{name}") for name in (
    "residual_block", "patch_discriminator", "receptive_field", "lsgan_losses", "cycle_identity_losses",
    "make_image_pool", "linear_decay", "cyclegan_step")}

# --- mutants: realistic wrong implementations -------------------------------------------------------


class _Block(nn.Module):
    def __init__(self, dim, pad="reflect", skip=True, norm="instance", relu_after=False, second_relu=False):
        super().__init__()
        Pad = {"reflect": nn.ReflectionPad2d, "zero": nn.ZeroPad2d, "replicate": nn.ReplicationPad2d}[pad]
        Norm = {"instance": nn.InstanceNorm2d, "batch": lambda d: nn.BatchNorm2d(d, affine=False),
                "none": lambda d: nn.Identity()}[norm]
        self.body = nn.Sequential(Pad(1), nn.Conv2d(dim, dim, 3), Norm(dim), nn.ReLU(), Pad(1), nn.Conv2d(dim, dim, 3),
                                  Norm(dim), *( [nn.ReLU()] if second_relu else []))
        self.skip, self.relu_after = skip, relu_after

    def forward(self, x):
        out = self.body(x) + (x if self.skip else 0)
        return torch.relu(out) if self.relu_after else out


def block_zero_padding(dim):
    """Zero padding (Conv2d(padding=1)) instead of reflection."""
    return _Block(dim, pad="zero")


def block_no_skip(dim):
    """Forgets to add the input: a plain two-conv stack."""
    return _Block(dim, skip=False)


def block_relu_after_sum(dim):
    """A ReLU after the sum (the original ResNet's block, not CycleGAN's)."""
    return _Block(dim, relu_after=True)


def block_batch_norm(dim):
    """Batch norm instead of instance norm."""
    return _Block(dim, norm="batch")


def block_affine_instance_norm(dim):
    """InstanceNorm2d(affine=True): extra parameters the official block does not have."""
    block = _Block(dim)
    block.body[2], block.body[6] = nn.InstanceNorm2d(dim, affine=True), nn.InstanceNorm2d(dim, affine=True)
    return block


def _patch(in_channels, ndf, strides=(2, 2, 2, 1, 1), kernel=4, norm_first=False, sigmoid=False, widths=(1, 2, 4, 8)):
    layers, c_in = [], in_channels
    for i, (w, s) in enumerate(zip(widths, strides)):
        layers += [nn.Conv2d(c_in, ndf * w, kernel, s, 1)]
        if i > 0 or norm_first:
            layers.append(nn.InstanceNorm2d(ndf * w))
        layers.append(nn.LeakyReLU(0.2))
        c_in = ndf * w
    layers.append(nn.Conv2d(c_in, 1, kernel, strides[-1], 1))
    if sigmoid:
        layers.append(nn.Sigmoid())
    return nn.Sequential(*layers)


def patch_stride2_fourth(in_channels, ndf=64):
    """The fourth conv with stride 2 too: the receptive field grows past 70 (94) and the map shrinks."""
    return _patch(in_channels, ndf, strides=(2, 2, 2, 2, 1))


def patch_all_stride2(in_channels, ndf=64):
    """Stride 2 everywhere: a much larger field, a 7x7 map at 256 px."""
    return _patch(in_channels, ndf, strides=(2, 2, 2, 2, 2))


def patch_3x3_kernels(in_channels, ndf=64):
    """3x3 kernels: a 46-pixel field and fewer parameters."""
    return _patch(in_channels, ndf, kernel=3)


def patch_sigmoid(in_channels, ndf=64):
    """A sigmoid on the scores (the BCE habit); LSGAN takes raw scores."""
    return _patch(in_channels, ndf, sigmoid=True)


def patch_norm_first(in_channels, ndf=64):
    """Instance norm after the first conv as well."""
    return _patch(in_channels, ndf, norm_first=True)


def rf_sum_kernels(layers):
    """Adds up the kernel sizes."""
    return sum(k for k, _ in layers)


def rf_ignores_strides(layers):
    """1 + sum(k - 1): right only when every stride is 1."""
    return 1 + sum(k - 1 for k, _ in layers)


def rf_jump_after(layers):
    """Multiplies by the stride before adding the layer's own (k - 1): counts each layer's stride too early."""
    field, jump = 1, 1
    for k, s in layers:
        jump *= s
        field += (k - 1) * jump
    return field


def lsgan_targets_swapped(d_real, d_fake):
    """Targets swapped: real scores pushed to 0, fakes to 1 (and G's target 0)."""
    return 0.5 * ((d_real ** 2).mean() + ((d_fake - 1) ** 2).mean()), (d_fake ** 2).mean()


def lsgan_no_half(d_real, d_fake):
    """Forgets the 0.5 on the discriminator's loss."""
    return ((d_real - 1) ** 2).mean() + (d_fake ** 2).mean(), ((d_fake - 1) ** 2).mean()


def lsgan_bce(d_real, d_fake):
    """The original GAN's cross-entropy instead of least squares."""
    bce = nn.functional.binary_cross_entropy_with_logits
    return (0.5 * (bce(d_real, torch.ones_like(d_real)) + bce(d_fake, torch.zeros_like(d_fake))),
            bce(d_fake, torch.ones_like(d_fake)))


def lsgan_abs(d_real, d_fake):
    """Absolute instead of squared differences."""
    return 0.5 * ((d_real - 1).abs().mean() + d_fake.abs().mean()), (d_fake - 1).abs().mean()


def cycle_wrong_pair(real_A, real_B, G_A, G_B, lambda_cycle=10.0, lambda_identity=0.5):
    """The cycle loss compares the round trip with the OTHER domain's image."""
    return {"cycle_A": lambda_cycle * (G_B(G_A(real_A)) - real_B).abs().mean(),
            "cycle_B": lambda_cycle * (G_A(G_B(real_B)) - real_A).abs().mean(),
            "idt_A": lambda_identity * lambda_cycle * (G_A(real_B) - real_B).abs().mean(),
            "idt_B": lambda_identity * lambda_cycle * (G_B(real_A) - real_A).abs().mean()}


def identity_wrong_domain(real_A, real_B, G_A, G_B, lambda_cycle=10.0, lambda_identity=0.5):
    """The identity loss feeds each generator its SOURCE domain: G_A(a) ~ a."""
    return {"cycle_A": lambda_cycle * (G_B(G_A(real_A)) - real_A).abs().mean(),
            "cycle_B": lambda_cycle * (G_A(G_B(real_B)) - real_B).abs().mean(),
            "idt_A": lambda_identity * lambda_cycle * (G_A(real_A) - real_A).abs().mean(),
            "idt_B": lambda_identity * lambda_cycle * (G_B(real_B) - real_B).abs().mean()}


def identity_unweighted_by_cycle(real_A, real_B, G_A, G_B, lambda_cycle=10.0, lambda_identity=0.5):
    """The identity weight is lambda_identity alone (0.5), not 0.5 x lambda_cycle."""
    return {"cycle_A": lambda_cycle * (G_B(G_A(real_A)) - real_A).abs().mean(),
            "cycle_B": lambda_cycle * (G_A(G_B(real_B)) - real_B).abs().mean(),
            "idt_A": lambda_identity * (G_A(real_B) - real_B).abs().mean(),
            "idt_B": lambda_identity * (G_B(real_A) - real_A).abs().mean()}


def cycle_squared(real_A, real_B, G_A, G_B, lambda_cycle=10.0, lambda_identity=0.5):
    """Squared (L2) differences instead of L1."""
    return {"cycle_A": lambda_cycle * (G_B(G_A(real_A)) - real_A).square().mean(),
            "cycle_B": lambda_cycle * (G_A(G_B(real_B)) - real_B).square().mean(),
            "idt_A": lambda_identity * lambda_cycle * (G_A(real_B) - real_B).square().mean(),
            "idt_B": lambda_identity * lambda_cycle * (G_B(real_A) - real_A).square().mean()}


class _Pool:
    def __init__(self, size, p_history=0.5, replace=True):
        self.size, self.p, self.replace, self.stored = size, p_history, replace, []

    def query(self, images):
        if self.size == 0:
            return images
        out = []
        for image in images.detach():
            if len(self.stored) < self.size:
                self.stored.append(image)
                out.append(image)
            elif random.random() < self.p:
                i = random.randrange(self.size)
                out.append(self.stored[i])
                if self.replace:
                    self.stored[i] = image
            else:
                out.append(image)
        return torch.stack(out)


def pool_never_returns_history(size=50):
    """Stores images but always returns the new ones: no history ever reaches D."""
    return _Pool(size, p_history=0.0)


def pool_always_history(size=50):
    """Once full, always returns an old image: D never sees the current generator's fakes."""
    return _Pool(size, p_history=1.0)


def pool_frozen(size=50):
    """Returns a stored image but never stores the new one in its place: the history stays the first 50 fakes."""
    return _Pool(size, replace=False)


def pool_size_zero_crash(size=50):
    """Indexes an empty list when size is 0."""
    class P(_Pool):
        def query(self, images):
            if len(self.stored) >= self.size:
                return self.stored[random.randrange(self.size)].expand_as(images)
            return super().query(images)
    return P(size)


def decay_from_step_zero(step, constant, decay):
    """The decay starts at step 0, ignoring the constant phase."""
    return 1.0 - step / (constant + decay + 1)


def decay_without_plus_one(step, constant, decay):
    """Divides by decay, reaching exactly 0 (the official code divides by decay + 1)."""
    return 1.0 - max(0, step - constant) / decay


def decay_step_function(step, constant, decay):
    """Drops to 0 at once after the constant phase."""
    return 1.0 if step <= constant else 0.0


def decay_exponential(step, constant, decay):
    """An exponential decay after the constant phase."""
    return 1.0 if step <= constant else 0.99 ** (step - constant)


def _l1(x, y):
    return (x - y).abs().mean()


def _step(real_A, real_B, G_A, G_B, D_A, D_B, opt_G, opt_D, pool_A, pool_B, lambda_cycle=10.0, lambda_identity=0.5,
          order="GD", use_pool=True, swap_D=False, freeze=True, zero_D=True, no_cycle=False):
    fake_B, fake_A = G_A(real_A), G_B(real_B)

    def g_step():
        if freeze:
            D_A.requires_grad_(False), D_B.requires_grad_(False)
        loss = ((D_A(fake_B) - 1) ** 2).mean() + ((D_B(fake_A) - 1) ** 2).mean()
        if not no_cycle:
            loss = loss + lambda_cycle * (_l1(G_B(fake_B), real_A) + _l1(G_A(fake_A), real_B))
        loss = loss + lambda_identity * lambda_cycle * (_l1(G_A(real_B), real_B) + _l1(G_B(real_A), real_A))
        opt_G.zero_grad()
        loss.backward(retain_graph=True)
        opt_G.step()
        D_A.requires_grad_(True), D_B.requires_grad_(True)

    def d_step():
        fb = pool_B.query(fake_B) if use_pool else fake_B
        fa = pool_A.query(fake_A) if use_pool else fake_A
        DA, DB = (D_B, D_A) if swap_D else (D_A, D_B)
        if zero_D:
            opt_D.zero_grad()
        loss = 0.5 * (((DA(real_B) - 1) ** 2).mean() + (DA(fb.detach()) ** 2).mean())
        loss = loss + 0.5 * (((DB(real_A) - 1) ** 2).mean() + (DB(fa.detach()) ** 2).mean())
        loss.backward()
        opt_D.step()

    for part in order:
        (g_step if part == "G" else d_step)()
    return {}


def step_d_first(*args, **kwargs):
    """Updates the discriminators before the generators."""
    return _step(*args, order="DG", **kwargs)


def step_without_pool(*args, **kwargs):
    """Feeds D the fresh fakes, never querying the pools."""
    return _step(*args, use_pool=False, **kwargs)


def step_discriminators_swapped(*args, **kwargs):
    """D_A judges domain A and D_B domain B in the discriminators' step (the names read the other way)."""
    return _step(*args, swap_D=True, **kwargs)


def step_no_zero_grad_D(*args, **kwargs):
    """Neither freezes D in the G step nor zeroes D's gradients: the generators' loss leaks into D's update."""
    return _step(*args, freeze=False, zero_D=False, **kwargs)


def step_no_cycle(*args, **kwargs):
    """Leaves the cycle terms out of the generators' loss."""
    return _step(*args, no_cycle=True, **kwargs)


MUTANTS = {
    "residual_block": [block_zero_padding, block_no_skip, block_relu_after_sum, block_batch_norm,
                       block_affine_instance_norm],
    "patch_discriminator": [patch_stride2_fourth, patch_all_stride2, patch_3x3_kernels, patch_sigmoid, patch_norm_first],
    "receptive_field": [rf_sum_kernels, rf_ignores_strides, rf_jump_after],
    "lsgan_losses": [lsgan_targets_swapped, lsgan_no_half, lsgan_bce, lsgan_abs],
    "cycle_identity_losses": [cycle_wrong_pair, identity_wrong_domain, identity_unweighted_by_cycle, cycle_squared],
    "make_image_pool": [pool_never_returns_history, pool_always_history, pool_frozen, pool_size_zero_crash],
    "linear_decay": [decay_from_step_zero, decay_without_plus_one, decay_step_function, decay_exponential],
    "cyclegan_step": [step_d_first, step_without_pool, step_discriminators_swapped, step_no_zero_grad_D, step_no_cycle],
}


# --- tests -------------------------------------------------------------------------------------------


def grade(exercise, fn) -> str | None:
    return run_checks(CHECKS, exercise, fn)


class TestGrader(GraderContract):
    SLUG, LESSON, CHECKS, MUTANTS = SLUG, lesson08, CHECKS, MUTANTS


def test_the_package_implementations_are_blocked_too():
    from faceedu.models.cyclegan import ImagePool, NLayerDiscriminator, ResnetBlock, linear_decay, receptive_field

    with pytest.raises(ReferenceUsed):
        CHECKS["residual_block"](lambda dim: ResnetBlock(dim))
    with pytest.raises(ReferenceUsed):
        CHECKS["patch_discriminator"](lambda c, ndf=64: NLayerDiscriminator(c, ndf))
    with pytest.raises(ReferenceUsed):
        CHECKS["receptive_field"](lambda layers: receptive_field(nn.Sequential(*[nn.Conv2d(1, 1, k, s) for k, s in layers])))
    with pytest.raises(ReferenceUsed):
        CHECKS["linear_decay"](lambda s, c, d: linear_decay(s, c, d))
    with pytest.raises((ReferenceUsed, CopiedReference), match="faceedu's own"):   # its query is the reference's
        CHECKS["make_image_pool"](lambda size=50: ImagePool(size, (1, 4, 4)))
    assert linear_decay(150, 100, 100) == pytest.approx(1 - 50 / 101)


def test_failure_messages_are_actionable():
    assert "reflection" in grade("residual_block", block_zero_padding)
    assert "skip" in grade("residual_block", block_no_skip)
    assert "receptive field is 94" in grade("patch_discriminator", patch_stride2_fourth)
    assert "targets swapped" in grade("lsgan_losses", lsgan_targets_swapped)
    assert "halves" in grade("lsgan_losses", lsgan_no_half)
    assert "compare it with a" in grade("cycle_identity_losses", cycle_wrong_pair)
    assert "TARGET domain" in grade("cycle_identity_losses", identity_wrong_domain)
    assert "from the history" in grade("make_image_pool", pool_never_returns_history)
    assert "history never changes" in grade("make_image_pool", pool_frozen)
    assert "not at step 0" in grade("linear_decay", decay_from_step_zero)
    assert "kernel sizes" in grade("receptive_field", rf_sum_kernels)
