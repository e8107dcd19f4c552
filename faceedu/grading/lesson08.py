"""Lesson 08 "CycleGAN on facial expressions": the reference for each exercise and the checks the notebook calls.

Exercises (one concept each):
  1. ``residual_block``        - x + F(x), F = reflect pad, conv3x3, IN, ReLU, reflect pad, conv3x3, IN
  2. ``patch_discriminator``   - the 70x70 PatchGAN: C64 - C128 - C256 (stride 2) - C512 (stride 1) - conv to 1
  3. ``receptive_field``       - the input patch one output unit sees, from (kernel, stride) pairs
  4. ``lsgan_losses``          - least-squares GAN: D's 0.5 ((D(x) - 1)^2 + D(G(z))^2) and G's (D(G(z)) - 1)^2
  5. ``cycle_identity_losses`` - lambda |G_B(G_A(a)) - a|_1 (and for b); lambda_idt lambda |G_A(b) - b|_1 (and for a)
  6. ``make_image_pool``       - a history of 50 fakes, half of the time handing back an older one
  7. ``linear_decay``          - the learning-rate factor: 1, then linearly towards 0
  8. ``cyclegan_step``         - the generators' step, then the discriminators' step on pooled fakes

Each ``check_<exercise>(fn, hidden=False)`` compares ``fn`` with the reference on fixed and seeded inputs,
tests properties and raises :class:`~faceedu.grading.core.CheckFailed` with a hint at the first mistake.
The references (below, and faceedu's own CycleGAN pieces) are blocked while ``fn`` runs.
"""

from __future__ import annotations

import copy
import random

import torch
import torch.nn.functional as F
from torch import nn

from faceedu import losses as L
from faceedu.grading.core import Check
from faceedu.models import cyclegan as CG

__all__ = [
    "residual_block", "patch_discriminator", "receptive_field", "lsgan_losses", "cycle_identity_losses",
    "make_image_pool", "linear_decay", "cyclegan_step",
    "check_residual_block", "check_patch_discriminator", "check_receptive_field", "check_lsgan_losses",
    "check_cycle_identity_losses", "check_make_image_pool", "check_linear_decay", "check_cyclegan_step",
]

# --- reference implementations ---------------------------------------------------------------------


def residual_block(dim: int) -> nn.Module:
    """A ResNet block of the CycleGAN generator on `dim` channels (reflection padding, instance norm)."""
    return CG.ResnetBlock(dim)


def patch_discriminator(in_channels: int, ndf: int = 64) -> nn.Module:
    """The 70x70 PatchGAN (n_layers 3): (N, C, 256, 256) -> (N, 1, 30, 30)."""
    return CG.NLayerDiscriminator(in_channels, ndf, 3)


def receptive_field(layers: list[tuple[int, int]]) -> int:
    """Side of the input patch seen by one output unit of a stack of convolutions given as (kernel, stride)."""
    field, jump = 1, 1
    for kernel, stride in layers:
        field += (kernel - 1) * jump
        jump *= stride
    return field


def lsgan_losses(d_real: torch.Tensor, d_fake: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(the discriminator's loss, the generator's loss) on the scores of real and generated images."""
    return 0.5 * L.discriminator_loss(d_real, d_fake, "lsgan"), L.generator_loss(d_fake, "lsgan")


def cycle_identity_losses(real_A: torch.Tensor, real_B: torch.Tensor, G_A: nn.Module, G_B: nn.Module,
                          lambda_cycle: float = 10.0, lambda_identity: float = 0.5) -> dict[str, torch.Tensor]:
    """The weighted cycle and identity terms of CycleGAN's generator loss (G_A: A -> B, G_B: B -> A)."""
    return {"cycle_A": lambda_cycle * CG.cycle_loss(real_A, G_B(G_A(real_A))),
            "cycle_B": lambda_cycle * CG.cycle_loss(real_B, G_A(G_B(real_B))),
            "idt_A": lambda_identity * lambda_cycle * CG.identity_loss(real_B, G_A(real_B)),
            "idt_B": lambda_identity * lambda_cycle * CG.identity_loss(real_A, G_B(real_A))}


class _ListPool:
    """The reference pool on a Python list (shape-free), as util/image_pool.py."""

    def __init__(self, size: int):
        self.size, self.images = size, []

    def query(self, images: torch.Tensor) -> torch.Tensor:
        if self.size == 0:
            return images
        out = []
        for image in images.detach():
            if len(self.images) < self.size:
                self.images.append(image)
                out.append(image)
            elif random.uniform(0, 1) > 0.5:
                index = random.randint(0, self.size - 1)
                out.append(self.images[index].clone())
                self.images[index] = image
            else:
                out.append(image)
        return torch.stack(out)


def make_image_pool(size: int = 50):
    """An object whose ``query(images)`` returns as many images, drawn from the history as CycleGAN's pool."""
    return _ListPool(size)


def linear_decay(step: int, constant: int, decay: int) -> float:
    """The learning-rate factor after `step` steps: 1 for `constant` steps, then linearly towards 0."""
    return CG.linear_decay(step, constant, decay)


def cyclegan_step(real_A: torch.Tensor, real_B: torch.Tensor, G_A: nn.Module, G_B: nn.Module, D_A: nn.Module,
                  D_B: nn.Module, opt_G, opt_D, pool_A, pool_B, lambda_cycle: float = 10.0,
                  lambda_identity: float = 0.5) -> dict[str, float]:
    """One CycleGAN step on images in [-1, 1]: the generators' update (D frozen), then the discriminators'
    on real images and pooled fakes (D_A judges domain B; pool_A holds fakes of A)."""
    fake_B, fake_A = G_A(real_A), G_B(real_B)
    for D in (D_A, D_B):
        D.requires_grad_(False)
    terms = cycle_identity_losses(real_A, real_B, G_A, G_B, lambda_cycle, lambda_identity)
    terms["G_A"] = L.generator_loss(D_A(fake_B), "lsgan")
    terms["G_B"] = L.generator_loss(D_B(fake_A), "lsgan")
    loss_G = sum(terms.values())
    opt_G.zero_grad()
    loss_G.backward()
    opt_G.step()
    for D in (D_A, D_B):
        D.requires_grad_(True)
    opt_D.zero_grad()
    loss_D_A = 0.5 * L.discriminator_loss(D_A(real_B), D_A(pool_B.query(fake_B).detach()), "lsgan")
    loss_D_B = 0.5 * L.discriminator_loss(D_B(real_A), D_B(pool_A.query(fake_A).detach()), "lsgan")
    (loss_D_A + loss_D_B).backward()
    opt_D.step()
    return {k: float(v.detach()) for k, v in terms.items()} | {"D_A": float(loss_D_A.detach()), "D_B": float(loss_D_B.detach())}


# Functions and methods only: a class whose __init__ calls super() cannot be blocked (a closure), so the
# networks are blocked through their forward methods - and only in the checks that do not hand the learner
# faceedu's own networks to run (the losses and the step receive CG.ResnetGenerator / NLayerDiscriminator).
REFERENCES = (residual_block, patch_discriminator, receptive_field, lsgan_losses, cycle_identity_losses,
              make_image_pool, _ListPool, linear_decay, cyclegan_step, CG.receptive_field, CG.ImagePool.query,
              CG.linear_decay, CG.cycle_loss, CG.identity_loss, CG.generator_losses, CG.discriminator_step_loss)
NETWORKS = (CG.ResnetBlock.forward, CG.NLayerDiscriminator.forward, CG.ResnetGenerator.forward)

# --- helpers ---------------------------------------------------------------------------------------


def _run(c: Check, fn, *args, **kwargs):
    """Run a learner's module or method with the references blocked, explaining a crash."""
    __tracebackhide__ = True
    return Check(c.exercise, fn, c.hidden, blocked=c.blocked).call(*args, **kwargs)


def _convs(module: nn.Module) -> list[nn.Conv2d]:
    return [m for m in module.modules() if isinstance(m, nn.Conv2d)]


def _copy_convs(c: Check, source: nn.Module, target: nn.Module, what: str) -> None:
    """Load the learner's convolution weights into the reference, in order, explaining a shape mismatch."""
    __tracebackhide__ = True
    mine, theirs = _convs(source), _convs(target)
    c.expect(len(mine) == len(theirs), f"{what} should have {len(theirs)} nn.Conv2d layers, found {len(mine)}.")
    for i, (a, b) in enumerate(zip(mine, theirs)):
        shape = lambda m: (m.in_channels, m.out_channels, m.kernel_size, m.stride, m.bias is not None)  # noqa: E731
        c.expect(shape(a) == shape(b),
                 f"{what}: conv {i + 1} is (in, out, kernel, stride, bias) = {shape(a)}, expected {shape(b)}.")
        with torch.no_grad():
            b.weight.copy_(a.weight)
            b.bias.copy_(a.bias)


# --- checks ------------------------------------------------------------------------------------------


def check_residual_block(fn, hidden: bool = False) -> None:
    """Visible: an nn.Module keeping the shape; 2 (9 dim^2 + dim) parameters (two 3x3 convs with bias,
    instance norm without affine parameters); the identity when its convolutions are zero (the skip);
    with the learner's weights loaded into the reference block, the same output (reflection padding,
    norm and ReLU in the right places). Hidden: another width, a non-square input, gradients."""
    __tracebackhide__ = True
    c = Check("residual_block", fn, hidden, blocked=REFERENCES + NETWORKS)
    for dim, shape in [(8, (2, 8, 12, 12))] + ([(16, (1, 16, 9, 14))] if hidden else []):
        torch.manual_seed(0)
        block = c.call(dim)
        c.expect(isinstance(block, nn.Module), f"residual_block({dim}) should return an nn.Module, got {type(block).__name__}.")
        n, expected = sum(p.numel() for p in block.parameters()), 2 * (9 * dim * dim + dim)
        c.expect(n == expected, f"residual_block({dim}) has {n} parameters, expected {expected}: two 3x3 convs {dim} -> "
                                f"{dim} with bias, and nn.InstanceNorm2d (affine=False by default) adds none.")
        x = torch.randn(*shape, generator=c.rng)
        out = _run(c, block, x)
        c.expect_tensor(out, shape=shape, what="the block's output", hint="Padding 1 on each side keeps the size.")
        reference = CG.ResnetBlock(dim)
        _copy_convs(c, block, reference, f"residual_block({dim})")
        with torch.no_grad():
            zeroed = copy.deepcopy(block)
            for p in zeroed.parameters():
                p.zero_()
        c.expect_close(_run(c, zeroed, x), x, what="the output with every weight zero", atol=1e-5,
                       hint="The block returns x + F(x): did you forget to add the input (the skip connection)?")
        reference.eval(), block.eval()
        with torch.no_grad():
            expected_out = reference(x)
        got = _run(c, block, x)
        zero_padded = nn.Sequential(nn.ZeroPad2d(1), *list(reference.conv_block)[1:4], nn.ZeroPad2d(1),
                                    *list(reference.conv_block)[5:])
        with torch.no_grad():
            if torch.allclose(got, x + zero_padded(x), atol=1e-4):
                c.fail("the borders differ from the reference: the block pads with zeros; CycleGAN pads by "
                       "reflection (nn.ReflectionPad2d(1) before each conv, with padding=0 in the conv).")
        c.expect_close(got, expected_out, what="the block's output (your weights in the reference block)", atol=1e-4,
                       hint="Order: ReflectionPad2d(1), Conv2d 3x3, InstanceNorm2d, ReLU, ReflectionPad2d(1), "
                            "Conv2d 3x3, InstanceNorm2d; no ReLU after the sum, no batch norm.")
        if hidden:
            out = _run(c, block, x.requires_grad_())
            out.sum().backward()
            c.expect(all(p.grad is not None for p in block.parameters()), "no gradient reaches some of the block's weights.")
    c.done()


def check_patch_discriminator(fn, hidden: bool = False) -> None:
    """Visible: 2,764,737 parameters for RGB and 2,762,689 for grayscale (the official 70x70 PatchGAN); a
    256 x 256 input gives 30 x 30 scores; a 70-pixel receptive field; with the learner's weights in the
    reference, the same scores. Hidden: another width, a 70 x 70 input gives one score."""
    __tracebackhide__ = True
    c = Check("patch_discriminator", fn, hidden, blocked=REFERENCES + NETWORKS)
    cases = [(3, 64, 2_764_737), (1, 64, 2_762_689)] if not hidden else [(1, 16, None), (3, 8, None)]
    for channels, ndf, count in cases:
        torch.manual_seed(0)
        D = c.call(channels, ndf)
        c.expect(isinstance(D, nn.Module), f"patch_discriminator should return an nn.Module, got {type(D).__name__}.")
        reference = CG.NLayerDiscriminator(channels, ndf, 3)
        count = count or sum(p.numel() for p in reference.parameters())
        n = sum(p.numel() for p in D.parameters())
        convs = _convs(D)
        field = receptive_field([(m.kernel_size[0], m.stride[0]) for m in convs])
        if field != 70 and convs:
            c.fail(f"your convolutions' receptive field is {field} pixels, not 70: the 70x70 PatchGAN has 4x4 kernels "
                   "with strides 2, 2, 2, 1, 1 (three stride-2 convs, then two stride-1 convs).")
        c.expect(n == count, f"patch_discriminator({channels}, {ndf}) has {n:,} parameters, expected {count:,}: C{ndf} "
                             f"(no norm) - C{2 * ndf} - C{4 * ndf} - C{8 * ndf} - conv to 1, 4x4 kernels with bias, "
                             "InstanceNorm2d (no parameters) after every conv but the first and the last.")
        side = 256 if not hidden else 70
        x = torch.randn(1, channels, side, side, generator=c.rng)
        out = _run(c, D, x)
        with torch.no_grad():
            want = reference(x).shape[-1]  # 30 for 256 x 256; the reference's own for other sizes
        c.expect_tensor(out, shape=(1, 1, want, want), what=f"the scores of a {side} x {side} image",
                        hint="Padding 1 everywhere; strides 2, 2, 2, 1, 1; one output channel (a score per patch).")
        _copy_convs(c, D, reference, "patch_discriminator")
        x = torch.randn(2, channels, 96, 96, generator=c.rng)
        with torch.no_grad():
            expected = reference(x)
        c.expect_close(_run(c, D, x), expected, what="the scores (your weights in the reference)", atol=1e-4,
                       hint="LeakyReLU(0.2) after every conv but the last, InstanceNorm2d on the middle three, no "
                            "sigmoid at the end (the LSGAN loss takes raw scores).")
    c.done()


def check_receptive_field(fn, hidden: bool = False) -> None:
    """Visible: a single conv; two stacked 3x3 convs (5); the 70x70 PatchGAN's five 4x4 convs (70).
    Hidden: the 1-, 2- and 4-layer PatchGANs (16, 34, 142), stride 1 everywhere, an empty stack."""
    __tracebackhide__ = True
    c = Check("receptive_field", fn, hidden, blocked=REFERENCES)
    cases = [[(7, 1)], [(3, 1), (3, 1)], [(4, 2), (4, 2), (4, 2), (4, 1), (4, 1)]]
    if hidden:
        cases += [[(4, 2), (4, 1), (4, 1)], [(4, 2), (4, 2), (4, 1), (4, 1)],
                  [(4, 2)] * 4 + [(4, 1), (4, 1)], [(5, 1)] * 3, [], [(3, 2), (3, 2), (1, 1)]]
    for layers in cases:
        got = c.call(list(layers))
        want = receptive_field(layers)
        hint = ""
        if layers and got == sum(k for k, _ in layers):
            hint = " You added the kernel sizes: each layer adds (k - 1) times the product of the strides before it."
        elif got == 1 + sum((k - 1) for k, _ in layers):
            hint = " The strides matter: a layer after a stride-2 layer sees twice as far (multiply by the jump)."
        c.expect(got == want, f"receptive_field({layers}) returned {got}, expected {want}.{hint}")
    c.done()


def check_lsgan_losses(fn, hidden: bool = False) -> None:
    """Visible: zero where D is right and G fools nobody/everybody as it should; the values against the
    reference on random scores; swapped targets and a missing 0.5 named. Hidden: patch-shaped scores, gradients."""
    __tracebackhide__ = True
    c = Check("lsgan_losses", fn, hidden, blocked=REFERENCES)
    ones, zeros = torch.ones(4, 1, 3, 3), torch.zeros(4, 1, 3, 3)
    out = c.call(ones, zeros)
    c.expect(isinstance(out, (tuple, list)) and len(out) == 2, "return a pair (d_loss, g_loss).")
    d_loss, g_loss = out
    c.expect_tensor(d_loss, shape=(), what="d_loss", hint="Average over every score: one number.")
    if float(d_loss) > 0.5:
        c.fail("with D(real) = 1 and D(fake) = 0 the discriminator is perfect and its loss should be 0, got "
               f"{float(d_loss):.3g}: are the targets swapped? Real images have target 1, fakes target 0.")
    c.expect_close(d_loss, torch.tensor(0.0), what="d_loss for a perfect discriminator", atol=1e-6)
    c.expect_close(g_loss, torch.tensor(1.0), what="g_loss when D calls every fake 0",
                   hint="The generator wants D(G(z)) = 1: (D(G(z)) - 1)^2 averaged.")
    shape = (4, 1, 6, 6) if hidden else (8, 1, 2, 2)
    real, fake = torch.randn(*shape, generator=c.rng), torch.randn(*shape, generator=c.rng)
    d_loss, g_loss = c.call(real, fake)
    want_d, want_g = lsgan_losses(real, fake)
    if torch.isclose(d_loss, 2 * want_d, rtol=1e-4):
        c.fail("d_loss is twice the expected value: CycleGAN halves the discriminator's loss, "
               "0.5 * ((D(x) - 1)^2 + D(G(z))^2), so D learns slower than G.")
    c.expect_close(d_loss, want_d, what="d_loss on random scores", atol=1e-5,
                   hint="0.5 * (mean((D(x) - 1)^2) + mean(D(G(z))^2)): squares, not logs (no sigmoid).")
    c.expect_close(g_loss, want_g, what="g_loss on random scores", atol=1e-5, hint="mean((D(G(z)) - 1)^2).")
    if hidden:
        fake = fake.clone().requires_grad_()
        _, g_loss = c.call(real, fake)
        g_loss.backward()
        c.expect(fake.grad is not None and bool(fake.grad.abs().sum() > 0), "no gradient reaches the fake scores.")
    c.done()


def _tiny_generators(seed: int, channels: int = 1) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(seed)
    make = lambda: CG.init_weights(CG.ResnetGenerator(channels, channels, 4, 1), 0.2)  # noqa: E731
    return make(), make()


def check_cycle_identity_losses(fn, hidden: bool = False) -> None:
    """Visible: the four terms with the reference's values for two different small generators; the cycle
    and identity pairs named when they are wrong; the weights. Hidden: other weights, gradients reach both
    generators, RGB images."""
    __tracebackhide__ = True
    c = Check("cycle_identity_losses", fn, hidden, blocked=REFERENCES)
    channels = 3 if hidden else 1
    G_A, G_B = _tiny_generators(1, channels)
    a = torch.rand(2, channels, 16, 16, generator=c.rng) * 2 - 1
    b = torch.rand(2, channels, 16, 16, generator=c.rng) * 2 - 1
    for lambdas in [(10.0, 0.5)] + ([(3.0, 0.0), (1.0, 2.0)] if hidden else []):
        got = c.call(a, b, G_A=G_A, G_B=G_B, lambda_cycle=lambdas[0], lambda_identity=lambdas[1])
        c.expect(isinstance(got, dict) and {"cycle_A", "cycle_B", "idt_A", "idt_B"} <= set(got),
                 "return a dict with the keys cycle_A, cycle_B, idt_A, idt_B.")
        with torch.no_grad():
            want = cycle_identity_losses(a, b, G_A, G_B, *lambdas)
            l1 = lambda x, y: lambdas[0] * (x - y).abs().mean()  # noqa: E731
            wrong = {"cycle_A": [(l1(G_B(G_A(a)), b), "G_B(G_A(a)) is compared with b: a round trip from A returns "
                                                      "to A, so compare it with a"),
                                 (l1(G_A(G_B(a)), a), "the round trip from A starts with G_A (A -> B), then G_B")],
                     "cycle_B": [(l1(G_A(G_B(b)), a), "G_A(G_B(b)) is compared with a: compare it with b"),
                                 (l1(G_B(G_A(b)), b), "the round trip from B starts with G_B (B -> A), then G_A")],
                     "idt_A": [(lambdas[1] * l1(G_A(a), a), "G_A is fed a: the identity loss feeds each generator "
                                                           "images already in its TARGET domain, G_A(b) ~ b")],
                     "idt_B": [(lambdas[1] * l1(G_B(b), b), "G_B is fed b: feed it a, G_B(a) ~ a")]}
        for key in ("cycle_A", "cycle_B", "idt_A", "idt_B"):
            value = got[key]
            c.expect_tensor(value, shape=(), what=key)
            for candidate, reason in wrong[key]:
                if not torch.isclose(candidate, want[key], rtol=1e-4) and torch.isclose(value.detach(), candidate, rtol=1e-4):
                    c.fail(f"{key} is wrong: {reason}.")
            hint = ("the weight is lambda_identity * lambda_cycle (0.5 x 10 = 5)" if key.startswith("idt")
                    else "the weight is lambda_cycle (10); an L1 (mean absolute) difference, not squared")
            c.expect_close(value, want[key], what=key, atol=1e-5, rtol=1e-4, hint=f"Check the pair compared; {hint}.")
        if hidden and lambdas == (1.0, 2.0):
            for G in (G_A, G_B):
                G.zero_grad()
            sum(got[k] for k in ("cycle_A", "cycle_B", "idt_A", "idt_B")).backward()
            c.expect(all(p.grad is not None for G in (G_A, G_B) for p in G.parameters()),
                     "no gradient reaches one of the generators: do not detach or use torch.no_grad() here.")
    c.done()


def check_make_image_pool(fn, hidden: bool = False) -> None:
    """Visible: size 0 returns the images unchanged; while filling, the images themselves; once full, about
    half of the returned images come from the history, each returned old image was stored earlier, and
    stored images are replaced by new ones. Hidden: several images per query, another size."""
    __tracebackhide__ = True
    c = Check("make_image_pool", fn, hidden, blocked=REFERENCES)
    empty = c.call(0)
    x = torch.randn(3, 1, 4, 4, generator=c.rng)
    c.expect_close(_run(c, empty.query, x), x, what="query on a pool of size 0", atol=0,
                   hint="A pool of size 0 is no pool: return the images as they are.")
    size, per_query = (7, 3) if hidden else (5, 1)
    random.seed(0)
    pool = c.call(size)
    seen, returned_old, fresh_returned, n_after_full = [], 0, 0, 0
    tag = 0
    recent_old = 0
    for q in range(400):
        images = torch.stack([torch.full((1, 2, 2), float(tag + i)) for i in range(per_query)])
        tag += per_query
        out = _run(c, pool.query, images)
        c.expect_tensor(out, shape=tuple(images.shape), what="query's result",
                        hint="Return as many images as were given, stacked into one tensor.")
        values = out[:, 0, 0, 0].tolist()
        given = images[:, 0, 0, 0].tolist()
        for v, g in zip(values, given):
            if len(seen) < size:
                if v != g:
                    c.fail("while the pool is not full it should return the images it was given (and store them).")
                seen.append(g)
                continue
            n_after_full += 1
            if v == g:
                fresh_returned += 1
            else:
                if v not in seen:
                    c.fail(f"query returned an image ({v:g}) it was never given: return a stored one, or the new one.")
                returned_old += 1
                if q >= 100 and v > tag - 60 * per_query:
                    recent_old += 1
            seen.append(g)
    share = returned_old / max(n_after_full, 1)
    c.expect(share > 0.3, f"once the pool is full, only {share:.0%} of the returned images came from the history; "
                          "about half should: with probability 0.5 return a random stored image (and store the new "
                          "one in its place).")
    c.expect(share < 0.7, f"once the pool is full, {share:.0%} of the returned images came from the history; about half "
                          "should: with probability 0.5 return the new image itself.")
    c.expect(recent_old > 0, "the history never changes: when you hand back a stored image, put the new image in its "
                             "place, so the pool keeps the last ~50 fakes rather than the first.")
    c.done()


def check_linear_decay(fn, hidden: bool = False) -> None:
    """Visible: exactly 1 for the constant phase, the official values 1 - (step - constant) / (decay + 1)
    afterwards; decay starting at step 0 named. Hidden: no constant phase, a long run, monotonic."""
    __tracebackhide__ = True
    c = Check("linear_decay", fn, hidden, blocked=REFERENCES)
    cases = [(100, 100)] + ([(0, 50), (1000, 3000), (7, 1)] if hidden else [])
    for constant, decay in cases:
        steps = sorted({0, 1, constant // 2, constant, constant + 1, constant + decay // 2, constant + decay})
        values = [c.call(s, constant, decay) for s in steps]
        for s, v in zip(steps, values):
            want = linear_decay(s, constant, decay)
            if s <= constant and constant > 0 and abs(float(v) - 1.0) > 1e-9:
                c.fail(f"linear_decay({s}, {constant}, {decay}) = {float(v):.4g}: the learning rate must stay constant "
                       f"(factor 1) for the first {constant} steps; the decay starts after them, not at step 0.")
            c.expect(abs(float(v) - want) < 1e-9,
                     f"linear_decay({s}, {constant}, {decay}) = {float(v):.6g}, expected {want:.6g} = 1 - max(0, step - "
                     f"constant) / (decay + 1), as the official code (it never quite reaches 0).")
        c.expect(all(a >= b for a, b in zip(values, values[1:])), "the factor should never increase.")
    c.done()


class _StalePool:
    """A pool that always hands back the images it was first given (for a deterministic step check)."""

    def __init__(self):
        self.first = None

    def query(self, images):
        if self.first is None:
            self.first = images.detach().clone() * 0.5
        return self.first.clone()


def _step_setup(seed: int, channels: int = 1):
    torch.manual_seed(seed)
    G_A, G_B = (CG.init_weights(CG.ResnetGenerator(channels, channels, 4, 1), 0.1) for _ in range(2))
    D_A, D_B = (CG.init_weights(CG.NLayerDiscriminator(channels, 4, 3), 0.1) for _ in range(2))
    nets = {"G_A": G_A, "G_B": G_B, "D_A": D_A, "D_B": D_B}
    # plain SGD: Adam's first step is lr * sign(grad), and the biases before an instance norm have gradients
    # of ~1e-9 whose sign is rounding noise; SGD moves them by ~0 and every other weight by lr * grad
    opt_G = torch.optim.SGD(list(G_A.parameters()) + list(G_B.parameters()), lr=0.05)
    opt_D = torch.optim.SGD(list(D_A.parameters()) + list(D_B.parameters()), lr=0.05)
    return nets, opt_G, opt_D


def check_cyclegan_step(fn, hidden: bool = False) -> None:
    """Visible: after one step from the same start (pools that return fixed old fakes), every parameter of
    the four networks equals the reference's: the generators' update (cycle, identity, LSGAN with D
    frozen), then the discriminators' (real vs pooled, detached fakes; D_A on domain B). Hidden: two steps,
    other weights, RGB."""
    __tracebackhide__ = True
    c = Check("cyclegan_step", fn, hidden, blocked=REFERENCES)
    channels = 3 if hidden else 1
    a = torch.rand(2, channels, 32, 32, generator=c.rng) * 2 - 1
    b = torch.rand(2, channels, 32, 32, generator=c.rng) * 2 - 1
    mine, opt_G, opt_D = _step_setup(3 if hidden else 2, channels)
    ref, ref_G, ref_D = _step_setup(3 if hidden else 2, channels)
    pools, ref_pools = (_StalePool(), _StalePool()), (_StalePool(), _StalePool())
    for step in range(2 if hidden else 1):
        c.call(a, b, G_A=mine["G_A"], G_B=mine["G_B"], D_A=mine["D_A"], D_B=mine["D_B"], opt_G=opt_G, opt_D=opt_D,
               pool_A=pools[0], pool_B=pools[1])
        cyclegan_step(a, b, ref["G_A"], ref["G_B"], ref["D_A"], ref["D_B"], ref_G, ref_D, *ref_pools)
    for name in ("G_A", "G_B", "D_A", "D_B"):
        moved = any(not torch.equal(p, q) for p, q in zip(mine[name].parameters(), _step_setup(3 if hidden else 2, channels)[0][name].parameters()))
        c.expect(moved, f"{name}'s weights did not change: call its optimiser's step() after backward().")
    hints = {"G_A": "the generators' loss is G_A + G_B (LSGAN) + cycle + identity terms; G_A's adversarial term uses D_A, "
                    "which judges domain B",
             "G_B": "the generators' loss is G_A + G_B (LSGAN) + cycle + identity terms; G_B's adversarial term uses D_B",
             "D_A": "D_A judges domain B: real_B against pool_B.query(fake_B).detach(), 0.5 x LSGAN; update the "
                    "generators first, then the discriminators, and zero D's gradients before its backward",
             "D_B": "D_B judges domain A: real_A against pool_A.query(fake_A).detach(), 0.5 x LSGAN; use the pool's "
                    "answer, not the fresh fakes"}
    for name in ("G_A", "G_B", "D_A", "D_B"):
        for (pname, p), q in zip(mine[name].named_parameters(), ref[name].parameters()):
            c.expect_close(p, q, what=f"{name}.{pname} after the step", atol=1e-5, rtol=1e-4, hint=hints[name] + ".")
    c.done()
