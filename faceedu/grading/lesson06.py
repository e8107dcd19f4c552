"""Lesson 06 "Deep identity-aware transfer" (DIAT, arXiv 1610.05586 v1): the reference for each exercise and
the checks the notebook calls.

Exercises (one concept each):
  1. ``residual_block``   - x + norm(conv(relu(norm(conv(x))))), reflection padding: T's building block
  2. ``identity_loss``    - sum over chosen layers of w_l * mean (phi_l(x) - phi_l(out))^2 (eq. 2)
  3. ``attribute_losses`` - D's BCE (real faces WITH the attribute vs detached transformed faces) and T's
                            non-saturating BCE through D
  4. ``hull_mask``        - the convex hull of chosen 68-point landmarks, filled at pixel centres
  5. ``compose``          - mask * out + (1 - mask) * x: outside the mask the result is the input
  6. ``perceptual_terms`` - the denoiser's loss mean (f(g(x)) - (g(x) - x))^2 (g fixed) and T's regulariser
                            mean f(out)^2 (eq. 3)
  7. ``diat_step``        - one D update, then one T update on eq. (1); only T's optimiser steps in T's update

Each ``check_<exercise>(fn, hidden=False)`` compares ``fn`` with the reference (``faceedu.models.diat``) on
fixed and seeded random inputs and tiny networks, names the usual mistakes, and raises
:class:`~faceedu.grading.core.CheckFailed` at the first one. The references are blocked while ``fn`` runs.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn
from torch.nn import functional as F

from faceedu import losses as L
from faceedu.grading.core import Check, describe
from faceedu.models import diat as DM
from faceedu.models.diat import DIATConfig, compose, diat_step, hull_mask

__all__ = ["residual_block", "identity_loss", "attribute_losses", "hull_mask", "compose", "perceptual_terms",
           "diat_step", "check_residual_block", "check_identity_loss", "check_attribute_losses", "check_hull_mask",
           "check_compose", "check_perceptual_terms", "check_diat_step", "face_landmarks"]


# --- reference implementations (the exercises' signatures; the package does the work) -------------------


def residual_block(channels: int, norm: str = "batch") -> nn.Module:
    """T's residual block on `channels` channels: ``x + norm(conv3x3(relu(norm(conv3x3(x)))))``, each conv
    reflection-padded by 1 (with bias), norm BatchNorm2d ("batch") or affine InstanceNorm2d ("instance")."""
    return DM.ResidualBlock(channels, norm)


def identity_loss(phi, x: torch.Tensor, out: torch.Tensor, weights) -> torch.Tensor:
    """Eq. (2): sum over the layers of phi (a list of maps) of w_l * mean (phi_l(x) - phi_l(out))^2; the
    input's features are targets (no gradient)."""
    with torch.no_grad():
        target = phi(x)
    return DM.identity_loss(target, phi(out), weights)


def attribute_losses(D, with_attr: torch.Tensor, transformed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(D's loss, T's loss): BCE of D(with_attr) against 1 plus BCE of D(transformed.detach()) against 0; and
    BCE of D(transformed) against 1 (its gradient reaches T through D)."""
    loss_d = DM.attribute_discriminator_loss(D(with_attr), D(transformed.detach()), "bce")
    return loss_d, DM.attribute_loss(D(transformed), "bce")


def perceptual_terms(f, g, x: torch.Tensor, out: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
    """(the denoiser's loss, T's regulariser), eq. (3): mean (f(g(x)) - (g(x) - x))^2 with g fixed (no gradient
    reaches it), or None when g is None; and mean f(out)^2."""
    denoise = None
    if g is not None:
        with torch.no_grad():
            noisy = g(x)
        denoise = DM.denoiser_loss(f, noisy, x)
    return denoise, DM.perceptual_regulariser(f, out)


# What each exercise may not call. Classes are blocked through their forward (their __init__ uses super(), a
# closure that cannot be swapped).
BLOCK = (residual_block, DM.ResidualBlock.forward, DM.conv_block)
IDENTITY = (identity_loss, DM.identity_loss)
ADVERSARIAL = (attribute_losses, DM.attribute_discriminator_loss, DM.attribute_loss, L.discriminator_loss,
               L.generator_loss)
HULL = (hull_mask, DM._convex_hull, DM._fill_convex)
COMPOSE = (compose, DM.enhance)
PERCEPTUAL = (perceptual_terms, DM.denoiser_loss, DM.perceptual_regulariser, DM.denoiser_step)
STEP = (diat_step,)

# --- shared inputs ----------------------------------------------------------------------------------------


def face_landmarks(count: int, size: int = 64, generator: torch.Generator | None = None) -> torch.Tensor:
    """(count, 68, 2) plausible iBUG-order landmarks of a frontal face filling a size x size image (a jaw arc,
    brows, nose, two eye rings, two lip rings), jittered: the checks' faces, with no data files needed."""
    g = generator or torch.Generator().manual_seed(0)
    t = torch.linspace(0, 1, 17)
    jaw = torch.stack([0.18 + 0.64 * t, 0.45 + 0.38 * torch.sin(math.pi * t)], 1)
    brow = torch.linspace(0, 1, 5)
    brows = torch.cat([torch.stack([0.25 + 0.17 * brow, 0.36 - 0.04 * torch.sin(math.pi * brow)], 1),
                       torch.stack([0.58 + 0.17 * brow, 0.36 - 0.04 * torch.sin(math.pi * brow)], 1)])
    nose = torch.cat([torch.stack([torch.full((4,), 0.5), torch.linspace(0.42, 0.58, 4)], 1),
                      torch.stack([torch.linspace(0.43, 0.57, 5), torch.full((5,), 0.62)], 1)])
    a = torch.arange(6) * (2 * math.pi / 6) + math.pi
    eye = lambda cx: torch.stack([cx + 0.07 * torch.cos(a), 0.44 + 0.025 * torch.sin(a)], 1)  # noqa: E731
    outer = torch.arange(12) * (2 * math.pi / 12) + math.pi
    inner = torch.arange(8) * (2 * math.pi / 8) + math.pi
    lips = torch.cat([torch.stack([0.5 + 0.13 * torch.cos(outer), 0.74 + 0.06 * torch.sin(outer)], 1),
                      torch.stack([0.5 + 0.08 * torch.cos(inner), 0.74 + 0.025 * torch.sin(inner)], 1)])
    template = torch.cat([jaw, brows, nose, eye(0.34), eye(0.66), lips]) * (size - 1)          # (68, 2)
    scale = 1 + 0.08 * (torch.rand(count, 1, 1, generator=g) - 0.5)
    shift = (torch.rand(count, 1, 2, generator=g) - 0.5) * 0.06 * size
    jitter = (torch.rand(count, 68, 2, generator=g) - 0.5) * 0.02 * size
    centre = (size - 1) / 2
    return ((template - centre) * scale + centre + shift + jitter).float()


def _bound(c: Check, fn, *models) -> Check:
    """A Check that passes `models` (networks, optimisers, feature functions: used or changed in place by
    design) first, without snapshotting them."""
    return Check(c.exercise, lambda *args, **kwargs: fn(*models, *args, **kwargs), c.hidden, blocked=c.blocked)


def _weights(module: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in module.parameters()])


def _backward(value) -> None:
    """Backpropagate from a learner's result if it carries a graph (a missing one is reported by the caller)."""
    if isinstance(value, torch.Tensor) and value.requires_grad:
        value.backward()


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _transplant(source: nn.Module, target: nn.Module) -> bool:
    """Copy `source`'s conv and norm parameters and buffers into `target`'s layers of the same kind and shape, in
    order of appearance; False if the layers do not correspond one to one."""
    kinds = (nn.Conv2d, nn.ConvTranspose2d, nn.BatchNorm2d, nn.InstanceNorm2d)
    src = [m for m in source.modules() if isinstance(m, kinds)]
    dst = [m for m in target.modules() if isinstance(m, kinds)]
    if len(src) != len(dst):
        return False
    for s, d in zip(src, dst):
        if type(s) is not type(d) or getattr(s, "weight", None) is None or d.weight.shape != s.weight.shape \
                or (d.bias is None) != (s.bias is None):
            return False
        d.load_state_dict(s.state_dict())
    return True


class _Features(nn.Module):
    """A fixed little feature network: three conv stages (the side halves twice), each stage's map returned."""

    def __init__(self, seed: int, widths=(4, 6, 8)):
        super().__init__()
        torch.manual_seed(seed)
        chans = (3, *widths)
        self.stages = nn.ModuleList(nn.Sequential(nn.Conv2d(a, b, 3, 2 if i else 1, 1), nn.Tanh())
                                    for i, (a, b) in enumerate(zip(chans[:-1], chans[1:])))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        maps = []
        for stage in self.stages:
            x = stage(x)
            maps.append(x)
        return maps


class _LittleD(nn.Module):
    """A small discriminator without BatchNorm (so that calling it twice gives the same logits)."""

    def __init__(self, seed: int, size: int = 16):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Sequential(nn.Conv2d(3, 6, 4, 2, 1), nn.LeakyReLU(0.2), nn.Conv2d(6, 8, 4, 2, 1),
                                  nn.LeakyReLU(0.2))
        self.logit = nn.Linear(8 * (size // 4) ** 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logit(self.conv(x).flatten(1)).squeeze(1)


# --- exercise 1: the residual block ------------------------------------------------------------------------


def _block_variant(ref: nn.Module, x: torch.Tensor, *, pad="reflect", relu_after=False, skip=True,
                   relu_second=False) -> torch.Tensor:
    """The reference block's computation with its own weights, and the usual mistakes."""
    convs = [m for m in ref.modules() if isinstance(m, nn.Conv2d)]
    norms = [m for m in ref.modules() if isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d))]
    h = x
    for i, (conv, norm) in enumerate(zip(convs, norms)):
        h = F.conv2d(F.pad(h, (1, 1, 1, 1), mode=pad) if pad == "reflect" else F.pad(h, (1, 1, 1, 1)),
                     conv.weight, conv.bias)
        h = norm(h)
        if i == 0 or relu_second:
            h = F.relu(h)
    out = x + h if skip else h
    return F.relu(out) if relu_after else out


def check_residual_block(fn, hidden: bool = False) -> None:
    """Visible: an nn.Module with the reference's parameter count (two 3x3 convs with bias, two norms); the shape
    kept; with the reference's weights copied in, the same output in training and eval mode (reflection padding,
    ReLU only between the convs, the skip added last, nothing after the sum); with the last norm's scale and
    shift at 0 the block is the identity. Hidden: InstanceNorm (norm="instance"), other widths and sizes."""
    __tracebackhide__ = True
    c = Check("residual_block", fn, hidden, blocked=BLOCK)
    cases = [(8, "batch", 12)] + ([(5, "instance", 9), (16, "batch", 7)] if hidden else [])
    for channels, norm, side in cases:
        torch.manual_seed(1)
        block = c.call(channels, norm) if norm != "batch" else c.call(channels)
        c.expect(isinstance(block, nn.Module), f"residual_block({channels}) should return an nn.Module, got "
                                               f"{describe(block)}.")
        reference = DM.ResidualBlock(channels, norm)
        DM.init_weights(reference)
        n, want = _count(block), _count(reference)
        if n != want:
            hint = ("Two nn.Conv2d(channels, channels, 3) with bias, each followed by a "
                    + ("BatchNorm2d(channels)" if norm == "batch" else "InstanceNorm2d(channels, affine=True)") + ".")
            if n == want - 2 * channels:
                hint = "The convolutions have no bias: keep PyTorch's default bias=True (as the reference)."
            if n == want - 2 * channels or n == want - 4 * channels:
                hint += " Or a norm layer is missing/has no learnable scale and shift."
            c.fail(f"your block has {n:,} parameters; the reference's at {channels} channels has {want:,}. {hint}")
        c.passed += 1
        x = torch.randn(4, channels, side, side, generator=c.rng)
        if not _transplant(reference, block):
            c.fail("your block's layers do not match the reference's one to one: conv, norm, (ReLU), conv, norm — "
                   f"two nn.Conv2d(channels, channels, 3) and two {'BatchNorm2d' if norm == 'batch' else 'InstanceNorm2d(affine=True)'} "
                   "layers, registered in that order.")
        block.train(), reference.train()
        out = _bound(c, block).call(x)
        c.expect_tensor(out, shape=tuple(x.shape), what=f"the block's output for {describe(x)}",
                        hint="A residual block keeps the shape: pad by 1 before each 3x3 conv, stride 1.")
        want_out = reference(x)
        if not torch.allclose(out, want_out, atol=1e-4):
            named = [({"pad": "zeros"}, "the convolutions are zero-padded: pad with nn.ReflectionPad2d(1) before "
                                        "each 3x3 conv (padding=0 in the conv itself), as Johnson et al.'s transform "
                                        "network — zeros make dark seams at the borders of the output."),
                     ({"relu_after": True}, "there is a ReLU after the sum: the block returns x + F(x) as it is. A ReLU "
                                            "there would clip every negative value that the skip carries, so the block "
                                            "could no longer pass its input through unchanged."),
                     ({"skip": False}, "the skip connection is missing: return x + F(x), not F(x)."),
                     ({"relu_second": True}, "there is a ReLU after the second norm too: only the first conv is "
                                             "followed by ReLU; the second norm's output is added to x directly.")]
            for change, message in named:
                if torch.allclose(out, _block_variant(reference, x, **change), atol=1e-4):
                    c.fail(message)
            c.fail("with the reference's weights your block computes something else (training mode). It should be "
                   "x + norm(conv(pad(relu(norm(conv(pad(x))))))), pad = reflection by 1.")
        c.passed += 1
        block.eval(), reference.eval()
        c.expect_close(_bound(c, block).call(x), reference(x), what="the block's output in eval mode", atol=1e-4,
                       hint="Use nn.BatchNorm2d modules (not a functional normalisation of the batch): in eval mode "
                            "they use their running statistics.")
        norms = [m for m in block.modules() if isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d))]
        with torch.no_grad():
            norms[-1].weight.zero_(), norms[-1].bias.zero_()
        block.train()
        same = _bound(c, block).call(x)
        c.expect(torch.allclose(same, x, atol=1e-5),
                 "with the last norm's scale and shift at 0 (F(x) = 0) the block should return its input unchanged — "
                 "that is the point of a residual block. Return x + F(x), with nothing applied after the sum.")
    c.done()


# --- exercise 2: the identity loss ---------------------------------------------------------------------------


def _id_variants(phi, x, out, weights) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        fx, fo = phi(x), phi(out)
    mse = [((a - b) ** 2).mean() for a, b in zip(fx, fo)]
    return {
        "output_only": sum(w * (b ** 2).mean() for w, b in zip(weights, fo)),
        "unweighted": sum(mse),
        "mean_of_weights": sum(mse) * sum(weights) / len(weights),
        "last_layer": weights[-1] * mse[-1],
        "first_layer": weights[0] * mse[0],
        "summed": sum(w * ((a - b) ** 2).sum() for w, a, b in zip(weights, fx, fo)),
        "l1": sum(w * (a - b).abs().mean() for w, a, b in zip(weights, fx, fo)),
        "norm": sum(w * (a - b).norm() for w, a, b in zip(weights, fx, fo)),
        "pixels": sum(weights) * ((x - out) ** 2).mean(),
    }


_ID_HINTS = {
    "output_only": "it only looks at the output's features: sum w_l * mean(phi_l(out)^2) pushes the output's features "
                   "towards zero instead of towards the input's. Compute phi(x) too and compare: (phi_l(x) - phi_l(out))^2.",
    "unweighted": "the layer weights are ignored (every layer counts 1): multiply each layer's mean squared difference "
                  "by its weight w_l — they decide how much shallow and deep features count.",
    "mean_of_weights": "the layers share one averaged weight: multiply each layer's term by its own weight, zip(weights, ...).",
    "last_layer": "only the last layer counts: sum over all layers of phi.",
    "first_layer": "only the first layer counts: sum over all layers of phi.",
    "summed": "each layer's squared differences are summed: take their mean (divide by the number of entries, "
              "B * C_l * H_l * W_l), or large shallow maps drown the deep layers.",
    "l1": "this is an absolute (L1) difference: the identity loss squares the differences.",
    "norm": "this is the norm of the difference, not the mean of its squares.",
    "pixels": "this compares pixels, not features: pass x and out through phi and compare the feature maps.",
}


def check_identity_loss(fn, hidden: bool = False) -> None:
    """Visible (a fixed 3-layer feature network, weights (1, 0.5, 0.25)): a 0-dim tensor equal to the reference;
    0 for out = x; the mistakes named: features of the output only, weights ignored, one layer only, sums instead
    of means, L1, pixels instead of features; the gradient reaches `out`. Hidden: other weights (a zero weight
    switches its layer off), another feature network, a batch of one."""
    __tracebackhide__ = True
    c = Check("identity_loss", fn, hidden, blocked=IDENTITY)
    phi = _Features(seed=3)
    x = torch.rand(4, 3, 16, 16, generator=c.rng) * 2 - 1
    out = (x + 0.3 * torch.randn(4, 3, 16, 16, generator=c.rng)).clamp(-1, 1)
    cases = [(phi, (1.0, 0.5, 0.25))]
    if hidden:
        cases += [(phi, (0.0, 2.0, 0.1)), (_Features(seed=8, widths=(5, 7, 9)), (0.3, 0.3, 3.0))]
    for net, weights in cases:
        value = _bound(c, fn, net).call(x, out, weights)
        c.expect_tensor(value, shape=(), what="the identity loss",
                        hint="Return one number (a 0-dim tensor): the weighted sum of each layer's mean.")
        want = identity_loss(net, x, out, weights)
        if not torch.isclose(value.detach().double(), want.double(), rtol=1e-4, atol=1e-7):
            for name, variant in _id_variants(net, x, out, weights).items():
                if torch.isclose(value.detach().double(), variant.double(), rtol=1e-4, atol=1e-7):
                    c.fail(f"with weights {weights}: {_ID_HINTS[name]}")
        c.expect_close(value, want, what=f"the identity loss with weights {weights}", rtol=1e-4, atol=1e-7,
                       hint="sum over layers l of weights[l] * ((phi(x)[l] - phi(out)[l]) ** 2).mean().")
    zero = _bound(c, fn, phi).call(x, x.clone(), (1.0, 0.5, 0.25))
    zero = float(zero.detach()) if isinstance(zero, torch.Tensor) else zero
    c.expect(abs(float(zero)) < 1e-7, f"the identity loss of a face with itself should be 0, got {float(zero):.4g}: "
                                      "compare the output's features with the INPUT's.")
    leaf = out.clone().requires_grad_(True)
    _backward(_bound(c, fn, phi).call(x, leaf, (1.0, 0.5, 0.25)))
    c.expect(leaf.grad is not None and float(leaf.grad.abs().sum()) > 0,
             "no gradient reaches `out`: compute phi(out) with gradients on (no torch.no_grad(), no .detach() there) — "
             "this gradient is what trains T.")
    if hidden:
        one = _bound(c, fn, phi).call(x[:1], out[:1], (1.0, 0.5, 0.25))
        c.expect_close(one, identity_loss(phi, x[:1], out[:1], (1.0, 0.5, 0.25)), what="the loss for a batch of one",
                       rtol=1e-4, atol=1e-7)
    c.done()


# --- exercise 3: the attribute losses -----------------------------------------------------------------------


def _bce(logits, target):
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


def check_attribute_losses(fn, hidden: bool = False) -> None:
    """Visible (a small D without BatchNorm): a pair (loss_d, loss_t) of 0-dim tensors equal to the reference's;
    D's loss sends no gradient into the transformed faces (detached) and T's does; the mistakes named: real and
    fake swapped, label smoothing, the saturating T loss, T's loss detached, the pair in the wrong order.
    Hidden: another D and batch size; large logits stay finite."""
    __tracebackhide__ = True
    c = Check("attribute_losses", fn, hidden, blocked=ADVERSARIAL)
    seeds = [(5, 6)] + ([(9, 3)] if hidden else [])
    for seed, batch in seeds:
        D = _LittleD(seed)
        real = torch.rand(batch, 3, 16, 16, generator=c.rng) * 2 - 1
        base = torch.rand(batch, 3, 16, 16, generator=c.rng) * 2 - 1
        scale = torch.ones((), requires_grad=True)      # stands in for T: the transformed faces depend on it
        fake = base * scale
        result = _bound(c, fn, D).call(real, fake)
        c.expect(isinstance(result, (tuple, list)) and len(result) == 2,
                 f"attribute_losses should return a pair (loss_d, loss_t), got {describe(result)}.")
        loss_d, loss_t = result
        c.expect_tensor(loss_d, shape=(), what="loss_d", hint="Batch means: one number per loss.")
        c.expect_tensor(loss_t, shape=(), what="loss_t", hint="Batch means: one number per loss.")
        with torch.no_grad():
            lr, lf = D(real), D(base)
        want_d, want_t = _bce(lr, 1.0) + _bce(lf, 0.0), _bce(lf, 1.0)
        got_d, got_t = loss_d.detach(), loss_t.detach()
        if torch.isclose(got_d, want_t, atol=1e-5) and torch.isclose(got_t, want_d, atol=1e-5):
            c.fail("the pair is in the wrong order: return (loss_d, loss_t), D's loss first.")
        if not torch.isclose(got_d, want_d, atol=1e-5):
            if torch.isclose(got_d, _bce(lr, 0.0) + _bce(lf, 1.0), atol=1e-5):
                c.fail("in D's loss real and fake are swapped: D(with_attr) goes against 1 (real faces that HAVE "
                       "the attribute), D(transformed) against 0.")
            if torch.isclose(got_d, _bce(lr, 0.9) + _bce(lf, 0.0), atol=1e-5):
                c.fail("D's real target is smoothed to 0.9: DIAT's D uses 1 (no label smoothing here).")
            if torch.isclose(got_d, 0.5 * want_d, atol=1e-5):
                c.fail("D's loss is halved: add the two BCE terms, no factor 0.5.")
            c.expect_close(got_d, want_d, what="loss_d", atol=1e-5,
                           hint="F.binary_cross_entropy_with_logits(D(with_attr), ones) + "
                                "F.binary_cross_entropy_with_logits(D(transformed.detach()), zeros).")
        c.passed += 1
        if not torch.isclose(got_t, want_t, atol=1e-5):
            if torch.isclose(got_t, -_bce(lf, 0.0), atol=1e-5):
                c.fail("T's loss is the saturating log(1 - D(T(x))): it gives almost no gradient while D rejects the "
                       "transformed faces, as it does at first. Use -log D(T(x)): BCE of D(transformed) against 1.")
            if torch.isclose(got_t, _bce(lf, 0.0), atol=1e-5):
                c.fail("T's loss pushes D(transformed) towards 0 (fake): T wants D to take its faces for REAL ones, "
                       "BCE against 1.")
            c.expect_close(got_t, want_t, what="loss_t", atol=1e-5,
                           hint="F.binary_cross_entropy_with_logits(D(transformed), ones).")
        c.passed += 1
        grad_d = torch.autograd.grad(loss_d, scale, allow_unused=True)[0] if loss_d.requires_grad else None
        c.expect(grad_d is None or float(grad_d.abs()) == 0,
                 "D's loss sends a gradient into the transformed faces (into T): use transformed.detach() in D's loss, "
                 "so that D's update cannot move T.")
        grad_t = torch.autograd.grad(loss_t, scale, allow_unused=True)[0] if loss_t.requires_grad else None
        c.expect(grad_t is not None and float(grad_t.abs()) > 0,
                 "T's loss sends no gradient into the transformed faces: call D(transformed) without detach() there — "
                 "this gradient is what trains T.")
        d_grads = torch.autograd.grad(loss_d, list(D.parameters()), allow_unused=True) if loss_d.requires_grad else [None]
        c.expect(all(g is not None for g in d_grads), "D's loss does not reach all of D's parameters: compute it from "
                                                      "D's logits (no torch.no_grad() around D).")
    if hidden:
        D = _LittleD(2)
        big = torch.full((4, 3, 16, 16), 1.0)
        with torch.no_grad():
            for p in D.parameters():
                p.mul_(40)
        loss_d, loss_t = _bound(c, fn, D).call(big, -big)
        c.expect(bool(torch.isfinite(loss_d)) and bool(torch.isfinite(loss_t)),
                 "the losses overflow for large logits: use F.binary_cross_entropy_with_logits, not sigmoid then log.")
    c.done()


# --- exercise 4: the hull mask --------------------------------------------------------------------------------


def _grow(mask: torch.Tensor) -> torch.Tensor:
    return F.max_pool2d(mask, 3, 1, 1)


def _shrink(mask: torch.Tensor) -> torch.Tensor:
    return -F.max_pool2d(-mask, 3, 1, 1)


def _hull_variants(landmarks, indices, size) -> dict[str, torch.Tensor]:
    one_based = [i - 1 for i in indices]
    pts = landmarks[:, list(indices)]
    lo, hi = pts.amin(1), pts.amax(1)
    ys, xs = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32), indexing="ij")
    box = ((xs >= lo[:, None, None, 0]) & (xs <= hi[:, None, None, 0]) & (ys >= lo[:, None, None, 1])
           & (ys <= hi[:, None, None, 1])).float()[:, None]
    return {
        "one_based": hull_mask(landmarks, one_based, size),
        "swapped_xy": hull_mask(landmarks.flip(-1), indices, size),
        "transposed": hull_mask(landmarks, indices, size).transpose(-1, -2),
        "all_points": hull_mask(landmarks, range(68), size),
        "bounding_box": box,
    }


_HULL_HINTS = {
    "one_based": "the landmarks are shifted by one: the indices are already 0-based (iBUG's chart numbers the points "
                 "from 1, so chart point 49 is index 48 here) — use landmarks[:, indices] as they are.",
    "swapped_xy": "x and y are swapped: landmarks[..., 0] is x (the column), landmarks[..., 1] is y (the row).",
    "transposed": "the mask is transposed: row i is y = i and column j is x = j, so mask[b, 0, i, j] tests the point "
                  "(x=j, y=i).",
    "all_points": "this is the hull of all 68 landmarks (the whole face): take only landmarks[:, indices].",
    "bounding_box": "this is the bounding box of the landmarks, not their convex hull: its corners reach cheeks and chin. "
                    "Test each pixel centre against the hull's edges (or matplotlib.path.Path of the hull's vertices).",
}


def check_hull_mask(fn, hidden: bool = False) -> None:
    """Visible (jittered faces' 68 landmarks at 64x64; the mouth and the eye region): a float (B, 1, S, S) mask of
    0s and 1s that matches the reference's filled hull up to the pixels on its edge (within one pixel of it); the
    mistakes named: 1-based indices, x and y swapped, a transposed mask, all 68 points, the bounding box.
    Hidden: 48x48, random point clouds, a triangle of three points."""
    __tracebackhide__ = True
    c = Check("hull_mask", fn, hidden, blocked=HULL)
    cases = [(face_landmarks(3, 64, c.rng), DM.MOUTH, 64), (face_landmarks(3, 64, c.rng), DM.EYE_REGION, 64)]
    if hidden:
        cloud = torch.rand(2, 68, 2, generator=c.rng) * 30 + 9
        cases += [(face_landmarks(2, 48, c.rng), DM.MOUTH, 48), (cloud, tuple(range(10, 30)), 48),
                  (cloud, (3, 40, 41), 48)]
    for landmarks, indices, size in cases:
        where = f"indices {indices[0]}..{indices[-1]} ({len(indices)} points), size {size}"
        mask = c.call(landmarks, indices, size)
        c.expect_tensor(mask, shape=(len(landmarks), 1, size, size), what=f"the mask ({where})",
                        hint="One channel per face: (B, 1, size, size).")
        c.expect(mask.is_floating_point(), f"the mask should be a float tensor (it multiplies images), got {mask.dtype}.")
        c.expect(bool(((mask == 0) | (mask == 1)).all()), "the mask should hold only 0s and 1s (a hard hull).")
        want = hull_mask(landmarks, indices, size)
        ok = bool((mask >= _shrink(want)).all()) and bool((mask <= _grow(want)).all())
        if not ok:
            for name, variant in _hull_variants(landmarks, indices, size).items():
                if bool((mask >= _shrink(variant)).all()) and bool((mask <= _grow(variant)).all()) and \
                        not torch.equal(variant, want):
                    c.fail(f"{where}: {_HULL_HINTS[name]}")
            missing = int(((mask < _shrink(want))).sum())
            extra = int(((mask > _grow(want))).sum())
            c.fail(f"{where}: your mask differs from the filled convex hull by more than its edge pixels: {missing} "
                   f"pixels well inside the hull are 0 and {extra} pixels well outside are 1. A pixel (row i, column j) "
                   f"is 1 when its centre (x=j, y=i) lies inside the convex hull of landmarks[b, indices].")
        c.passed += 1
    c.done()


# --- exercise 5: compose -------------------------------------------------------------------------------------


def check_compose(fn, hidden: bool = False) -> None:
    """Visible: mask * out + (1 - mask) * x for a soft mask (B, 1, H, W) broadcast over the channels; outside a hard
    mask the result is exactly the input; the mistakes named: the mask applied to T's output alone (no
    composition), input and output swapped. Hidden: masks of all ones and all zeros, the gradient reaches `out`
    only inside the mask."""
    __tracebackhide__ = True
    c = Check("compose", fn, hidden, blocked=COMPOSE)
    x = torch.rand(3, 3, 10, 10, generator=c.rng)
    out = torch.rand(3, 3, 10, 10, generator=c.rng)
    soft = torch.rand(3, 1, 10, 10, generator=c.rng)
    got = c.call(x, out, soft)
    c.expect_tensor(got, shape=(3, 3, 10, 10), what="the composition",
                    hint="The mask (B, 1, H, W) broadcasts over the 3 channels.")
    want = compose(x, out, soft)
    named = [(soft * out, "outside the mask your result is 0, not the input: the mask was applied to T's output "
                          "alone. Compose: mask * out + (1 - mask) * x, so that outside the mask the result IS x."),
             (soft * x + (1 - soft) * out, "input and output are swapped: T's output goes inside the mask "
                                           "(mask * out), the input outside ((1 - mask) * x)."),
             (soft * out + x, "the input is added everywhere: weight it by (1 - mask).")]
    if not torch.allclose(got, want, atol=1e-6):
        for variant, message in named:
            if torch.allclose(got, variant, atol=1e-6):
                c.fail(message)
    c.expect_close(got, want, what="the composition with a soft mask", atol=1e-6,
                   hint="mask * out + (1 - mask) * x.")
    hard = (soft > 0.5).float()
    got = c.call(x, out, hard)
    outside = (hard == 0).expand_as(x)
    c.expect(torch.equal(got[outside], x[outside]), "outside a 0/1 mask the result should be exactly the input.")
    c.expect(torch.allclose(got[~outside], out[~outside]), "inside a 0/1 mask the result should be T's output.")
    if hidden:
        c.expect_close(c.call(x, out, torch.ones(3, 1, 10, 10)), out, what="the composition with a mask of ones")
        c.expect_close(c.call(x, out, torch.zeros(3, 1, 10, 10)), x, what="the composition with a mask of zeros")
        leaf = out.clone().requires_grad_(True)
        _backward(c.call(x, leaf, hard).sum())
        c.expect(leaf.grad is not None and torch.equal(leaf.grad, hard.expand_as(out)),
                 "the gradient should reach T's output inside the mask only.")
    c.done()


# --- exercise 6: the perceptual regulariser ------------------------------------------------------------------


class _Tiny(nn.Module):
    def __init__(self, seed: int, width: int = 5):
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1), nn.ReLU(), nn.Conv2d(width, 3, 3, 1, 1))

    def forward(self, x):
        return self.net(x)


def check_perceptual_terms(fn, hidden: bool = False) -> None:
    """Visible (small f and g): a pair (denoiser_loss, regulariser) equal to the reference's — f predicts the
    artefact g(x) - x, and the regulariser is the mean of f(out)^2; no gradient reaches g, the regulariser's does
    reach `out`; with g None the first value is None; the mistakes named: f trained to output the clean face, the
    artefact's sign flipped, the regulariser written as f(out) - out, sums instead of means. Hidden: other networks
    and sizes."""
    __tracebackhide__ = True
    c = Check("perceptual_terms", fn, hidden, blocked=PERCEPTUAL)
    cases = [(4, 5, 12)] + ([(7, 8, 9)] if hidden else [])
    for seed_f, seed_g, side in cases:
        f, g = _Tiny(seed_f), _Tiny(seed_g, width=3)
        x = torch.rand(3, 3, side, side, generator=c.rng) * 2 - 1
        out = torch.rand(3, 3, side, side, generator=c.rng) * 2 - 1
        result = _bound(c, fn, f, g).call(x, out)
        c.expect(isinstance(result, (tuple, list)) and len(result) == 2,
                 f"perceptual_terms should return a pair (denoiser_loss, regulariser), got {describe(result)}.")
        den, reg = result
        c.expect_tensor(den, shape=(), what="denoiser_loss", hint="A mean over all entries: one number.")
        c.expect_tensor(reg, shape=(), what="regulariser", hint="A mean over all entries: one number.")
        with torch.no_grad():
            noisy = g(x)
            want_den, want_reg = DM.denoiser_loss(f, noisy, x), DM.perceptual_regulariser(f, out)
            den_named = [(((f(noisy) - x) ** 2).mean(), "f is trained to output the clean face: in DIAT v1 it predicts "
                                                        "the ARTEFACT of the noisy image, n = g(x) - x, so the loss is "
                                                        "mean((f(g(x)) - (g(x) - x))^2)."),
                         (((f(noisy) - (x - noisy)) ** 2).mean(), "the artefact's sign is flipped: n = g(x) - x (what g "
                                                                  "added to x), not x - g(x)."),
                         (((f(noisy) - (noisy - x)) ** 2).sum(), "the squared errors are summed: take the mean.")]
            reg_named = [(((f(out) - out) ** 2).mean(), "the regulariser compares f(out) with out: f predicts the "
                                                        "artefact itself, so the artefact T's output carries is f(out), "
                                                        "and the regulariser is mean(f(out)^2)."),
                         ((f(out) ** 2).sum(), "the regulariser sums: take the mean of f(out)^2."),
                         (f(out).abs().mean(), "the regulariser uses |f(out)|: square it, mean(f(out)^2).")]
        for value, want, named, what in ((den, want_den, den_named, "denoiser_loss"), (reg, want_reg, reg_named, "regulariser")):
            if not torch.isclose(value.detach(), want, rtol=1e-4, atol=1e-7):
                for variant, message in named:
                    if torch.isclose(value.detach(), variant, rtol=1e-4, atol=1e-7):
                        c.fail(message)
            c.expect_close(value, want, what=what, rtol=1e-4, atol=1e-7)
        g_grads = torch.autograd.grad(den, list(g.parameters()), allow_unused=True) if den.requires_grad else []
        c.expect(all(gr is None or float(gr.abs().sum()) == 0 for gr in g_grads),
                 "the denoiser's loss sends a gradient into g: g is a fixed, pre-trained network — compute g(x) under "
                 "torch.no_grad() (or detach it), so that only f learns.")
        c.expect(den.requires_grad and all(gr is not None for gr in torch.autograd.grad(den, list(f.parameters()),
                                                                                        allow_unused=True)),
                 "the denoiser's loss does not reach f's parameters: it is what trains f.")
        leaf = out.clone().requires_grad_(True)
        _, reg = _bound(c, fn, f, g).call(x, leaf)
        _backward(reg)
        c.expect(leaf.grad is not None and float(leaf.grad.abs().sum()) > 0,
                 "no gradient reaches `out` through the regulariser: compute f(out) with gradients on — it is what "
                 "pushes T towards clean images.")
        result = _bound(c, fn, f, None).call(x, out)
        c.expect(isinstance(result, (tuple, list)) and len(result) == 2 and result[0] is None,
                 "with g None the first value should be None (the step needs only the regulariser).")
        c.expect_close(result[1], want_reg, what="the regulariser with g None", rtol=1e-4, atol=1e-7)
    c.done()


# --- exercise 7: the training step ----------------------------------------------------------------------------


def tiny_diat(seed: int = 0, **overrides) -> tuple[DIATConfig, nn.Module, nn.Module, nn.Module]:
    """A DIAT small enough for a check: 16x16 faces, T with ngf 4 and 2 residual blocks, D with 2 layers."""
    config = DM.preset("quick", **{"image_size": 16, "ngf": 4, "n_res": 2, "outer_kernel": 3, "ndf": 4, "d_layers": 2,
                                   "f_width": 4, **overrides})
    torch.manual_seed(seed)
    T, D, f = DM.TransformNetwork(config), DM.AttributeDiscriminator(config), DM.DenoisingNetwork(config.f_width)
    for net in (T, D, f):
        DM.init_weights(net)
    with torch.no_grad():        # a denoiser that finds something (init_weights leaves it almost silent)
        for p in f.parameters():
            p.mul_(10)
        last = [m for m in T.modules() if isinstance(m, nn.Conv2d)][-1]
        last.weight.normal_(0.0, 0.05)   # T away from the identity (a skip-connected T starts there): every term moves it
    return config, T, D, f


def _variant_step(T, D, f, phi, opt_t, opt_d, source, real, config, weights, *, d_after_t=False, real_is_source=False,
                  no_detach=False, skip_id=False, skip_pr=False, no_attr_weight=False, lambdas_ignored=False,
                  one_backward=False):
    """The reference step's arithmetic with the usual mistakes, for the check's diagnosis. `no_detach`: the
    transformed faces are not detached in D's loss and T's gradients are zeroed only once, at the start."""
    opt_t.zero_grad()
    opt_d.zero_grad()
    y = T(source)
    d_loss = _bce(D(source if real_is_source else real), 1.0) + _bce(D(y if no_detach else y.detach()), 0.0)
    if one_backward:
        with torch.no_grad():
            fx = phi(source)
        loss = (_bce(D(y), 1.0) + config.lambda_id * DM.identity_loss(fx, phi(y), weights)
                + config.lambda_pr * DM.perceptual_regulariser(f, y))
        (d_loss + loss).backward()
        opt_d.step()
        opt_t.step()
        return {}
    d_loss.backward(retain_graph=no_detach)
    opt_d.step()
    adv = _bce(D(y), 1.0)
    with torch.no_grad():
        fx = phi(source)
    idl = DM.identity_loss(fx, phi(y), weights)
    pr = DM.perceptual_regulariser(f, y)
    if lambdas_ignored:
        loss = adv + idl + pr
    else:
        loss = (1.0 if no_attr_weight else config.lambda_attr) * adv
        if not skip_id:
            loss = loss + config.lambda_id * idl
        if not skip_pr:
            loss = loss + config.lambda_pr * pr
    if not no_detach:
        opt_t.zero_grad()
    opt_d.zero_grad()
    loss.backward()
    opt_t.step()
    if d_after_t:
        opt_d.step()
    return {}


_STEP_HINTS = {
    "d_after_t": "D was updated through T's loss too (opt_d.step() after T's backward, or one backward for both): T's "
                 "loss fills D's gradients, and they must not move D. In T's update step only opt_t.",
    "real_is_source": "D's real faces are the inputs `source`: D must learn to tell real faces WITH the attribute "
                      "(`real`) from transformed ones — the inputs lack the attribute.",
    "no_detach": "T moved during D's update: use the transformed faces detached in D's loss (your attribute_losses "
                 "does this) and step only opt_d there.",
    "skip_id": "the identity term is missing from T's loss: add config.lambda_id * identity_loss(phi, source, out, weights).",
    "skip_pr": "the perceptual regulariser is missing from T's loss: add config.lambda_pr * the regulariser of "
               "perceptual_terms(f, None, source, out).",
    "no_attr_weight": "the attribute term is not weighted: T's loss is config.lambda_attr * adv + ...",
    "lambdas_ignored": "the three terms of T's loss are added with weight 1: weight them by config.lambda_attr, "
                       "config.lambda_id and config.lambda_pr (eq. 1).",
    "one_backward": "D's and T's losses went through one backward and both optimisers stepped: D was updated "
                    "through T's loss. Do D's update first, on its own loss, then T's, stepping only opt_t.",
}


def check_diat_step(fn, hidden: bool = False) -> None:
    """Visible (a tiny DIAT: T, D, f, a fixed 3-layer feature network; SGD, lambda_id 2, lambda_pr 0.5): after one
    call T's and D's weights equal those of the reference step from the same start, and the returned "d", "t",
    "attr" (and "id", "pr") equal the reference's; the mistakes named: D updated through T's loss (a second
    opt_d.step() or one backward for both), D shown the inputs as its real faces, T moved by D's loss, a term of
    eq. (1) missing or unweighted. Hidden: Adam and other lambdas, two steps in a row, DIAT-A (phi = D's own
    feature maps)."""
    __tracebackhide__ = True
    c = Check("diat_step", fn, hidden, blocked=STEP)
    phi = _Features(seed=11)
    weights = (1.0, 0.5, 0.25)
    cases = [("SGD, lambda_id 2, lambda_pr 0.5", lambda p: torch.optim.SGD(p, lr=0.1),
              {"lambda_id": 2.0, "lambda_pr": 0.5}, False)]
    if hidden:
        cases += [("Adam, lambda_id 3, lambda_pr 0.5", lambda p: torch.optim.Adam(p, lr=1e-3, betas=(0.5, 0.999)),
                   {"lambda_id": 3.0, "lambda_pr": 0.5, "lambda_attr": 0.7}, False),
                  ("SGD, DIAT-A", lambda p: torch.optim.SGD(p, lr=0.1), {"id_network": "discriminator"}, True)]
    source = torch.rand(4, 3, 16, 16, generator=c.rng) * 2 - 1
    real = torch.rand(4, 3, 16, 16, generator=c.rng) * 2 - 1
    for name, make, overrides, diat_a in cases:
        config, T0, D0, f0 = tiny_diat(seed=2, **overrides)

        def fresh():
            T, D, f = copy.deepcopy(T0), copy.deepcopy(D0), copy.deepcopy(f0)
            T.train(), D.train(), f.eval()
            features = (lambda images, D=D: D.feature_maps(images)) if diat_a else phi
            w = (1.0, 0.5) if diat_a else weights
            return T, D, f, features, make(T.parameters()), make(D.parameters()), w

        T, D, f, features, ot, od, w = fresh()
        start_t, start_d = _weights(T), _weights(D)
        logs = _bound(c, fn, T, D, f, features, ot, od).call(source, real, config, w)
        c.expect(isinstance(logs, dict) and {"d", "t", "attr"} <= set(logs),
                 f"diat_step should return a dict with 'd', 't', 'attr', 'id' and 'pr', got {describe(logs)}.")
        c.expect(not torch.equal(_weights(D), start_d), "D did not change: update it first, on its own loss, with "
                                                        "opt_d.step().")
        c.expect(not torch.equal(_weights(T), start_t), "T did not change: update it on eq. (1) with opt_t.step().")
        Tr, Dr, fr, featr, otr, odr, wr = fresh()
        ref = diat_step(Tr, Dr, fr, featr, otr, odr, source, real, config, wr)
        t_ok = torch.allclose(_weights(T), _weights(Tr), atol=1e-5)
        d_ok = torch.allclose(_weights(D), _weights(Dr), atol=1e-5)
        if not (t_ok and d_ok):
            for label, hint in _STEP_HINTS.items():
                Tv, Dv, fv, featv, otv, odv, wv = fresh()
                try:
                    _variant_step(Tv, Dv, fv, featv, otv, odv, source, real, config, wv, **{label: True})
                except RuntimeError:
                    continue
                if torch.allclose(_weights(T), _weights(Tv), atol=1e-5) and torch.allclose(_weights(D), _weights(Dv), atol=1e-5):
                    c.fail(f"after one step ({name}) your networks differ from the reference: {hint}")
            which = "D's" if not d_ok else "T's"
            c.fail(f"after one step ({name}) {which} parameters differ from the reference step. The order: out = "
                   "T(source); D's loss from attribute_losses(D, real, out) (real faces WITH the attribute, out "
                   "detached); opt_d.zero_grad(), backward, opt_d.step(); then T's loss config.lambda_attr * adv + "
                   "config.lambda_id * identity_loss(phi, source, out, weights) + config.lambda_pr * regulariser, with "
                   "adv from a fresh D(out) after D's update; opt_t.zero_grad(), backward, opt_t.step() — only opt_t.")
        c.passed += 1
        keys = ["d", "t", "attr"] + [k for k, lam in (("id", config.lambda_id), ("pr", config.lambda_pr)) if lam > 0]
        for key in keys:
            c.expect(key in logs, f"the returned dict has no '{key}' (expected keys: d, t, attr, id, pr).")
            try:
                value = float(logs[key].detach()) if isinstance(logs[key], torch.Tensor) else float(logs[key])
            except (TypeError, ValueError):
                c.fail(f"logs['{key}'] should be a number, got {describe(logs[key])}.")
            c.expect(abs(value - float(ref[key])) < 1e-4 * max(1.0, abs(float(ref[key]))),
                     f"logs['{key}'] should be {float(ref[key]):.5f} (the value of that loss in this step), got {value:.5f}.")
        if hidden and name.startswith("Adam"):
            again = _bound(c, fn, T, D, f, features, ot, od).call(source.flip(0), real.flip(0), config, w)
            c.expect(isinstance(again, dict), "a second step in a row should work too.")
    c.done()
