"""Lesson 04 "The conditional GAN": the reference for each exercise and the checks the notebook calls.

Exercises (one concept each):
  1. ``conditional_generator``     - G(z, y): z and y each projected to 4x4, concatenated, DCGAN up-blocks, tanh
  2. ``conditional_discriminator`` - D(x, y): the image and y's constant label maps each through a conv,
                                     concatenated, DCGAN down-blocks (no BatchNorm on the first layer), a logit
  3. ``discriminator_loss``        - BCE on logits, real target 0.9 (one-sided smoothing), fake target 0
  4. ``generator_loss``            - the non-saturating -log D(G(z))
  5. ``dcgan_init``                - conv weights N(0, 0.02), BatchNorm gamma N(1, 0.02), biases 0
  6. ``train_step``                - one alternating step: faces to [-1, 1], D on real and detached fakes, then G
  7. ``diversity``                 - the mean pairwise distance of a set of features (mode collapse -> 0)

Each ``check_<exercise>(fn, hidden=False)`` compares ``fn`` with the reference on fixed and seeded random
inputs and properties, and raises :class:`~faceedu.grading.core.CheckFailed` with a hint at the first
mistake. The references (faceedu's own networks, losses, init and metrics) are blocked while ``fn`` runs.
"""

from __future__ import annotations

import copy
import math
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from faceedu import losses as L
from faceedu.grading.core import Check, CheckFailed, describe
from faceedu.metrics import mean_pairwise_distance
from faceedu.models import cgan
from faceedu.models.cgan import CGANConfig, DCGANDiscriminator, Generator

__all__ = [
    "conditional_generator", "conditional_discriminator", "discriminator_loss", "generator_loss", "dcgan_init",
    "train_step", "diversity", "LESSON_CONFIG",
    "check_conditional_generator", "check_conditional_discriminator", "check_discriminator_loss",
    "check_generator_loss", "check_dcgan_init", "check_train_step", "check_diversity",
]

# The lesson's network sizes: the quick preset (the seed's layers at an eighth of the width).
LESSON_CONFIG = cgan.preset("quick")

# --- reference implementations ---------------------------------------------------------------------


def conditional_generator(config: CGANConfig) -> nn.Module:
    """G(z, y) as the seed builds it: z and y each through ConvTranspose 4x4 (1x1 -> 4x4) + BatchNorm + ReLU to
    config.g_project channels, concatenated, then one `up_block` per width in config.g_widths and a final
    ConvTranspose 4x4 stride 2 to 3 channels with tanh."""
    return Generator(config)


def conditional_discriminator(config: CGANConfig) -> nn.Module:
    """D(x, y) as the seed builds it: the image and y's k constant label maps each through a conv 4x4 stride 2
    + LeakyReLU (no BatchNorm) to config.d_first channels, concatenated (image first), then one `down_block`
    per width in config.d_widths and a conv 4x4 (no bias) to one logit per image, shape (B,)."""
    return DCGANDiscriminator(config)


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor, real_label: float = 0.9) -> torch.Tensor:
    """-[t log D(x) + (1 - t) log(1 - D(x))] - log(1 - D(G(z))), each term a batch mean, t = real_label."""
    return L.discriminator_loss(real_logits, fake_logits, "bce", real_label)


def generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """The non-saturating generator loss -log D(G(z)), a batch mean."""
    return L.generator_loss(fake_logits, "bce")


def dcgan_init(module: nn.Module) -> None:
    """For `model.apply(dcgan_init)`: Conv2d/ConvTranspose2d weights N(0, 0.02) and biases 0; BatchNorm2d
    weights N(1, 0.02) and biases 0; every other module untouched."""
    centre = {nn.Conv2d: 0.0, nn.ConvTranspose2d: 0.0, nn.BatchNorm2d: 1.0}.get(type(module))
    if centre is None:
        return
    with torch.no_grad():
        module.weight.normal_(centre, 0.02)
        if module.bias is not None:
            module.bias.zero_()


def train_step(G: nn.Module, D: nn.Module, opt_g: torch.optim.Optimizer, opt_d: torch.optim.Optimizer,
               images: torch.Tensor, y: torch.Tensor, z: torch.Tensor, real_label: float = 0.9,
               y_fake: torch.Tensor | None = None) -> dict[str, float]:
    """One alternating step on faces `images` in [0, 1] with attributes y and noise z: D first (real, then
    fakes detached), then G through the updated D. G is asked for `y_fake` (default: y), and D judges the
    fakes with the attributes G was asked for. Returns the two losses as floats."""
    return _step(G, D, opt_g, opt_d, images, y, z, real_label, y_fake=y_fake)


def diversity(features: torch.Tensor) -> float:
    """Mean Euclidean distance between the N (N - 1) ordered pairs of distinct rows of (N, D) features."""
    return mean_pairwise_distance(features, max_items=len(features))


def _d_loss(real, fake, real_label=0.9):          # unblocked copies the step's reference uses
    return (F.binary_cross_entropy_with_logits(real, torch.full_like(real, real_label))
            + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake)))


def _g_loss(fake):
    return F.binary_cross_entropy_with_logits(fake, torch.ones_like(fake))


def _step(G, D, opt_g, opt_d, images, y, z, real_label=0.9, *, y_fake=None, map_range=True, detach=True,
          zero_g_first=False, g_updates_d=False, reuse_logits=False, fake_labels_to_d=True):
    """The reference step and the usual mistakes, for the check's diagnosis."""
    x = images * 2 - 1 if map_range else images
    y_fake = y if y_fake is None else y_fake
    if zero_g_first:
        opt_g.zero_grad()
    fake = G(z, y_fake)
    y_d = y_fake if fake_labels_to_d else torch.zeros_like(y)
    real_logits = D(x, y)
    fake_logits = D(fake.detach() if detach else fake, y_d)
    loss_d = _d_loss(real_logits, fake_logits, real_label)
    opt_d.zero_grad()
    loss_d.backward(retain_graph=reuse_logits or not detach)
    opt_d.step()
    loss_g = _g_loss(fake_logits if reuse_logits else D(fake, y_fake))
    if not zero_g_first:
        opt_g.zero_grad()
    loss_g.backward()
    opt_g.step()
    if g_updates_d:
        opt_d.step()
    return {"loss_d": loss_d.item(), "loss_g": loss_g.item()}


REFERENCES = (Generator.forward, DCGANDiscriminator.forward, cgan.dcgan_init, cgan.gan_step, cgan.label_maps,
              L.discriminator_loss, L.generator_loss, mean_pairwise_distance,
              conditional_generator, conditional_discriminator, discriminator_loss, generator_loss, dcgan_init,
              train_step, diversity)

# --- helpers ------------------------------------------------------------------------------------------


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _small_config(k: int = 2, hidden: bool = False) -> CGANConfig:
    attrs = ("Blond_Hair", "Male", "Eyeglasses")[:k]
    if hidden:
        return CGANConfig(attrs=attrs, z_dim=16, g_project=12, g_widths=(16, 8, 8), d_first=6, d_widths=(10, 12, 14))
    return replace(LESSON_CONFIG, attrs=attrs)


def _run(c: Check, module: nn.Module, *args):
    """Call the learner's module with the references blocked, explaining a crash."""
    __tracebackhide__ = True
    return Check(c.exercise, module, c.hidden, blocked=c.blocked).call(*args)


def _build(c: Check, config: CGANConfig, what: str) -> nn.Module:
    __tracebackhide__ = True
    torch.manual_seed(0)
    module = c.call(config)
    c.expect(isinstance(module, nn.Module), f"{c.exercise}(config) should return an nn.Module, got {describe(module)}.")
    return module


def _transplant(source: nn.Module, target: nn.Module) -> bool:
    """Copy `source`'s conv and BatchNorm parameters and buffers into `target`'s layers of the same kind and
    shape, in order of appearance; False if the layers do not correspond one to one."""
    kinds = (nn.Conv2d, nn.ConvTranspose2d, nn.BatchNorm2d)
    src = [m for m in source.modules() if isinstance(m, kinds)]
    dst = [m for m in target.modules() if isinstance(m, kinds)]
    if len(src) != len(dst):
        return False
    used = [False] * len(dst)
    for s in src:
        for j, d in enumerate(dst):
            if not used[j] and type(d) is type(s) and d.weight.shape == s.weight.shape and \
                    (d.bias is None) == (s.bias is None):
                d.load_state_dict(s.state_dict())
                used[j] = True
                break
        else:
            return False
    return True


# --- checks ------------------------------------------------------------------------------------------


def check_conditional_generator(fn, hidden: bool = False) -> None:
    """Visible: an nn.Module with the seed's parameter count at the lesson's sizes; (B, 3, 64, 64) in
    [-1, 1] using both signs (tanh); faces depend on y and on z; with the reference's weights copied in, the
    same faces. Hidden: three attributes and other widths, a batch of one in eval mode."""
    __tracebackhide__ = True
    c = Check("conditional_generator", fn, hidden, blocked=REFERENCES)
    configs = [_small_config(2)] + ([_small_config(3, hidden=True)] if hidden else [])
    for config in configs:
        G = _build(c, config, "G")
        reference = Generator(config)
        k, p = len(config.attrs), config.g_project
        n, expected = _count(G), _count(reference)
        if n != expected:
            hint = ("Check every layer: the z branch ConvTranspose2d(z_dim, g_project, 4, 1, 0, bias=False) + BatchNorm + ReLU, "
                    "the same for y with k input channels, then up_block(2 * g_project, g_widths[0]), ... and "
                    "ConvTranspose2d(g_widths[-1], 3, 4, 2, 1, bias=False) + Tanh (no BatchNorm on the output).")
            first = config.g_widths[0]
            if n == expected - p * first * 16:
                hint = ("It looks as if z's and y's projections were added instead of concatenated: the first "
                        "up_block must read 2 * g_project channels.")
            if n == expected - p * first * 16 - (k * p * 16 + 2 * p):
                hint = ("It has no label branch: G ignores y, so it cannot be asked for attributes. Project y with "
                        "ConvTranspose2d(k, g_project, 4, 1, 0) + BatchNorm + ReLU and concatenate it with z's projection.")
            if n == expected + 6:
                hint = "There is a BatchNorm on the RGB output: DCGAN's last layer has none (only tanh)."
            c.fail(f"your generator has {n:,} parameters; the seed's layers at these sizes have {expected:,}. {hint}")
        c.passed += 1
        B = 6
        z = torch.randn(B, config.z_dim, generator=c.rng)
        y = torch.randint(0, 2, (B, k), generator=c.rng).float()
        G.train()
        out = _run(c, G, z, y).detach()
        c.expect_tensor(out, shape=(B, 3, config.image_size, config.image_size), what=f"G(z, y) for a batch of {B}",
                        hint="Four stride-2 transposed convs take 4x4 to 64x64.")
        c.expect(float(out.abs().max()) <= 1.0 + 1e-6 and float(out.min()) < 0,
                 f"G's faces should lie in [-1, 1] and use both signs (tanh); yours range over [{float(out.min()):.3g}, "
                 f"{float(out.max()):.3g}]. End with nn.Tanh(), not a sigmoid or nothing.")
        same_z = z[:1].expand(4, -1).contiguous()
        ys = torch.tensor([[0.0] * k, [1.0] * k, [1.0] + [0.0] * (k - 1), [0.0] + [1.0] * (k - 1)])
        faces = _run(c, G, same_z, ys).detach()
        c.expect(float((faces[0] - faces[1]).abs().max()) > 1e-3,
                 "with the same z, different attributes y give the same face: G ignores y. Project y with its own "
                 "ConvTranspose2d to 4x4 and concatenate it with z's projection (torch.cat on dim 1).")
        other = _run(c, G, torch.randn(4, config.z_dim, generator=c.rng), ys).detach()
        c.expect(float((other - faces).abs().max()) > 1e-3, "different z give the same faces: G ignores z.")
        if not _transplant(reference, G):
            c.fail("your generator's layers do not match the seed's one to one (conv and BatchNorm layers of the "
                   "same shapes). Build exactly: project_z, project_y, the up_blocks, the RGB layer.")
        G.eval()
        reference.eval()
        zz, yy = torch.randn(5, config.z_dim, generator=c.rng), torch.randint(0, 2, (5, k), generator=c.rng).float()
        c.expect_close(_run(c, G, zz, yy), reference(zz, yy), what="G(z, y) with the seed's weights", atol=1e-4,
                       hint="Order matters: concatenate [z's projection, y's projection] (z first) on the channel dimension.")
        if hidden:
            one = _run(c, G, zz[:1], yy[:1])
            c.expect(one.shape == (1, 3, config.image_size, config.image_size), "a batch of one (eval mode) should work.")
    c.done()


def check_conditional_discriminator(fn, hidden: bool = False) -> None:
    """Visible: an nn.Module with the seed's parameter count; BatchNorm only after the layers of
    config.d_widths (none on the first layer); logits of shape (B,); they depend on y; with the reference's
    weights copied in, the same logits (catches label maps of the wrong shape or order, a concatenation in the
    wrong order). Hidden: three attributes and other widths."""
    __tracebackhide__ = True
    c = Check("conditional_discriminator", fn, hidden, blocked=REFERENCES)
    configs = [_small_config(2)] + ([_small_config(3, hidden=True)] if hidden else [])
    for config in configs:
        D = _build(c, config, "D")
        reference = DCGANDiscriminator(config)
        k, f = len(config.attrs), config.d_first
        norms, after_first = [], False
        for m in D.modules():
            if isinstance(m, nn.Conv2d):
                after_first = m.in_channels in (3, k)
            elif isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d, nn.GroupNorm, nn.LayerNorm)):
                norms.append(getattr(m, "num_features", getattr(m, "num_channels", 0)))
                if after_first:
                    break
        if after_first and norms:
            c.fail(f"there is a normalisation layer on D's first layer (over {norms[-1]} channels). DCGAN leaves "
                   "the first layer without normalisation: it would normalise away the raw image statistics (and the "
                   "label maps, which are constant over a batch of one combination). Use down_block(..., batchnorm=False).")
        c.expect(sorted(norms) == sorted(config.d_widths),
                 f"D should have one BatchNorm2d after each layer of d_widths {config.d_widths}; yours has BatchNorms over "
                 f"{norms} channels.")
        n, expected = _count(D), _count(reference)
        c.expect(n == expected, f"your discriminator has {n:,} parameters; the seed's layers at these sizes have "
                                f"{expected:,}. Image: Conv2d(3, d_first, 4, 2, 1); labels: Conv2d(k, d_first, 4, 2, 1) "
                                f"(both with bias, LeakyReLU 0.2, no BatchNorm); down_block(2 * d_first, d_widths[0]), ...; "
                                f"last Conv2d(d_widths[-1], 1, 4, 1, 0, bias=False).")
        B, S = 6, config.image_size
        x = torch.rand(B, 3, S, S, generator=c.rng) * 2 - 1
        y = torch.randint(0, 2, (B, k), generator=c.rng).float()
        D.eval()
        logits = _run(c, D, x, y)
        c.expect_tensor(logits, shape=(B,), what=f"D(x, y) for a batch of {B}",
                        hint="One logit per image: flatten the (B, 1, 1, 1) output (no sigmoid: the loss takes logits).")
        same_x = x[:1].expand(4, -1, -1, -1).contiguous()
        ys = torch.tensor([[0.0] * k, [1.0] * k, [1.0] + [0.0] * (k - 1), [0.0] + [1.0] * (k - 1)])
        scores = _run(c, D, same_x, ys).detach()
        c.expect(float((scores - scores[0]).abs().max()) > 1e-6,
                 "D gives the same logit to one image whatever y says: the labels never reach D. Feed y as k constant "
                 "maps of the image's size through the label branch and concatenate its output with the image's.")
        if not _transplant(reference, D):
            c.fail("your discriminator's layers do not match the seed's one to one (conv and BatchNorm layers of the "
                   "same shapes).")
        reference.eval()
        mine, want = _run(c, D, x, y), reference(x, y)
        if not torch.allclose(mine, want, atol=1e-4):
            swapped = reference.logit(reference.body(torch.cat([reference.label_in(cgan.label_maps(y, S)),
                                                                  reference.image_in(x)], 1))).flatten()
            if torch.allclose(mine, swapped, atol=1e-4):
                c.fail("the image and label features are concatenated in the other order: torch.cat([image features, "
                       "label features], dim=1).")
            c.fail("with the seed's weights your D gives other logits. Are the label maps right? Attribute i must be a "
                   "constant (S, S) map of value y[:, i]: y[:, :, None, None].expand(-1, -1, S, S) has shape (B, k, S, S). "
                   "y.repeat(1, S * S).view(B, k, S, S) or a view of the wrong layout mixes the attributes.")
        c.passed += 1
    c.done()


def check_discriminator_loss(fn, hidden: bool = False) -> None:
    """Visible: a 0-dim tensor; log 4 for logits 0 with real_label 1 ... the reference with real_label 0.9 and
    1.0 on random logits; lowest when real logits are high and fake ones low; no smoothing of the fakes.
    Hidden: large logits stay finite, batch-size invariance, gradients."""
    __tracebackhide__ = True
    c = Check("discriminator_loss", fn, hidden, blocked=REFERENCES)
    zeros = torch.zeros(8)
    value = c.call(zeros, zeros, real_label=1.0)
    c.expect_tensor(value, shape=(), what="the loss", hint="Return one number: each term is a mean over the batch.")
    c.expect_close(value, torch.tensor(2 * math.log(2)), what="the loss for logits 0 (D(x) = 1/2 everywhere)", atol=1e-5,
                   hint="-log(1/2) - log(1 - 1/2) = 2 log 2: BCE of real logits against 1 plus BCE of fake logits against 0.")
    real, fake = torch.randn(16, generator=c.rng) * 2, torch.randn(16, generator=c.rng) * 2
    for t in (0.9, 1.0):
        got = c.call(real, fake, real_label=t)
        if torch.isclose(got, _d_loss(real, fake, t) + F.binary_cross_entropy_with_logits(fake, torch.full_like(fake, 1 - t))
                         - F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake)), atol=1e-5) and t < 1:
            c.fail("the fake targets are smoothed too (1 - real_label): smoothing is one-sided, the fakes' target "
                   "stays exactly 0 (Salimans et al. 2016), or D learns to accept samples that are a bit fake.")
        if torch.isclose(got, _d_loss(fake, real, t), atol=1e-5) or torch.isclose(
                got, F.binary_cross_entropy_with_logits(real, torch.full_like(real, t))
                + F.binary_cross_entropy_with_logits(fake, torch.ones_like(fake)), atol=1e-5):
            c.fail("the real/fake targets are swapped in a term: real logits go against real_label, fake logits "
                   "against 0.")
        c.expect_close(got, _d_loss(real, fake, t), what=f"the loss with real_label={t}", atol=1e-5,
                       hint="F.binary_cross_entropy_with_logits(real, full_like(real, real_label)) + "
                            "F.binary_cross_entropy_with_logits(fake, zeros_like(fake)).")
    good = c.call(torch.full((4,), 5.0), torch.full((4,), -5.0), real_label=1.0)
    bad = c.call(torch.full((4,), -5.0), torch.full((4,), 5.0), real_label=1.0)
    c.expect(float(good) < float(bad), "the loss should be low when D scores real faces high and fakes low.")
    if hidden:
        big = c.call(torch.full((4,), 80.0), torch.full((4,), -80.0), real_label=1.0)
        c.expect(bool(torch.isfinite(big)), "the loss overflows for large logits: work on logits with "
                                            "binary_cross_entropy_with_logits instead of sigmoid then log.")
        c.expect_close(c.call(real.repeat(3), fake.repeat(3)), _d_loss(real, fake, 0.9), what="the loss of a repeated batch",
                       atol=1e-5, hint="Average over the batch (and the default real_label is 0.9).")
        r, f = real.clone().requires_grad_(), fake.clone().requires_grad_()
        c.call(r, f).backward()
        c.expect(r.grad is not None and f.grad is not None and float(f.grad.abs().sum()) > 0,
                 "no gradient reaches the logits.")
    c.done()


def check_generator_loss(fn, hidden: bool = False) -> None:
    """Visible: a 0-dim tensor; log 2 at logit 0; the reference on random logits; large (with a strong
    gradient) when D rejects the fakes: the non-saturating form. Hidden: finite for large logits, batch mean."""
    __tracebackhide__ = True
    c = Check("generator_loss", fn, hidden, blocked=REFERENCES)
    value = c.call(torch.zeros(8))
    c.expect_tensor(value, shape=(), what="the loss", hint="Return one number: a mean over the batch.")
    logits = torch.randn(16, generator=c.rng) * 3
    got = c.call(logits)
    saturating = -F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits))
    if torch.isclose(got, saturating, atol=1e-5):
        c.fail("this is the saturating loss log(1 - D(G(z))) (the minimax form). When D confidently rejects the "
               "fakes, as it does early on, its gradient vanishes; minimise -log D(G(z)) instead: BCE of the fake "
               "logits against 1 (Goodfellow et al. 2014, sec. 3).")
    c.expect_close(got, _g_loss(logits), what="the loss on random logits", atol=1e-5,
                   hint="-log D(G(z)) = F.binary_cross_entropy_with_logits(fake_logits, ones_like(fake_logits)).")
    rejected = torch.full((4,), -6.0, requires_grad=True)
    loss = c.call(rejected)
    loss.backward()
    c.expect(rejected.grad is not None and float(rejected.grad.abs().mean()) > 0.1,
             "when D rejects the fakes (logit -6), G's gradient should be strong (about -1/B per logit): the "
             "non-saturating loss.")
    if hidden:
        c.expect(bool(torch.isfinite(c.call(torch.full((4,), -90.0)))), "the loss overflows for logit -90: work on logits.")
        c.expect_close(c.call(logits.repeat(2)), _g_loss(logits), what="the loss of a repeated batch", atol=1e-5,
                       hint="Average over the batch.")
    c.done()


def check_dcgan_init(fn, hidden: bool = False) -> None:
    """Visible: through model.apply, Conv2d and ConvTranspose2d weights have mean 0 and std 0.02, biases 0;
    BatchNorm2d weights mean 1 and std 0.02, biases 0; other modules and the call itself do not fail.
    Hidden: the same on the lesson's generator and discriminator."""
    __tracebackhide__ = True
    c = Check("dcgan_init", fn, hidden, blocked=REFERENCES)
    model = nn.Sequential(nn.Conv2d(256, 256, 4, bias=True), nn.BatchNorm2d(4096), nn.LeakyReLU(0.2),
                          nn.ConvTranspose2d(256, 256, 4, bias=True), nn.ReLU(), nn.Tanh())
    torch.manual_seed(0)

    def apply(module: nn.Module) -> None:
        """model.apply(fn): the learner's init is meant to change each module in place."""
        __tracebackhide__ = True
        for m in module.modules():
            Check(c.exercise, lambda m=m: fn(m), c.hidden, blocked=c.blocked).call()

    apply(model)
    for index, kind in ((0, "Conv2d"), (3, "ConvTranspose2d")):
        w, b = model[index].weight.detach(), model[index].bias.detach()
        c.expect(abs(float(w.mean())) < 1e-3 and abs(float(w.std()) - 0.02) < 1e-3,
                 f"{kind} weights should be N(0, 0.02): yours have mean {float(w.mean()):.4g} and std {float(w.std()):.4g}. "
                 f"nn.init.normal_(m.weight, 0.0, 0.02) for every {kind}.")
        c.expect(float(b.abs().max()) == 0, f"{kind} biases should be 0 (nn.init.zeros_).")
    gamma, beta = model[1].weight.detach(), model[1].bias.detach()
    c.expect(abs(float(gamma.mean()) - 1) < 2e-3 and abs(float(gamma.std()) - 0.02) < 2e-3,
             f"BatchNorm2d weights (gamma) should be N(1, 0.02), around 1 so that the layer starts close to the "
             f"identity scaling: yours have mean {float(gamma.mean()):.4g} and std {float(gamma.std()):.4g}.")
    c.expect(float(beta.abs().max()) == 0, "BatchNorm2d biases (beta) should be 0.")
    if hidden:
        for build in (Generator, DCGANDiscriminator):
            net = build(LESSON_CONFIG)
            apply(net)
            convs = torch.cat([m.weight.detach().flatten() for m in net.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))])
            c.expect(abs(float(convs.std()) - 0.02) < 1e-3, f"the conv weights of the lesson's {build.__name__} are not N(0, 0.02).")
    c.done()


def _step_nets(hidden: bool):
    config = CGANConfig(attrs=("Blond_Hair", "Male"), z_dim=8, g_project=6, g_widths=(8, 6, 4), d_first=4,
                        d_widths=(6, 8, 8))
    torch.manual_seed(11 if hidden else 3)
    return config, Generator(config), DCGANDiscriminator(config)


def check_train_step(fn, hidden: bool = False) -> None:
    """Visible: after one call with SGD, G's and D's parameters equal those of the reference step from the
    same start (faces mapped to [-1, 1]; D on real then on detached fakes; G through the updated D; only
    opt_g steps in G's step); the returned losses. Hidden: Adam, two steps in a row, real_label 1."""
    __tracebackhide__ = True
    # the learner's step may use faceedu's losses: only the step itself is blocked
    c = Check("train_step", fn, hidden, blocked=(train_step, cgan.gan_step))

    def step(*args, **kwargs):
        """Run the learner's step; it is meant to change the networks and optimisers in place."""
        __tracebackhide__ = True
        try:
            return Check(c.exercise, lambda: fn(*args, **kwargs), c.hidden, blocked=c.blocked).call()
        except CheckFailed as failure:
            if isinstance(failure.__cause__, RuntimeError) and "inplace" in str(failure.__cause__):
                c.fail("autograd refused G's backward: a tensor it needed was changed in place by opt_d.step(). "
                       "G's loss must come from a fresh D(fake, y_fake) computed after D's update, not from the fake "
                       "logits of D's step.")
            if isinstance(failure.__cause__, RuntimeError) and "second time" in str(failure.__cause__):
                c.fail("autograd refused a second backward through G: D's loss was backpropagated into G because the "
                       "fakes were not detached. Use D(fake.detach(), y_fake) in D's loss, so that D's step leaves G "
                       "alone, and D(fake, y_fake) only in G's loss.")
            raise

    config, G0, D0 = _step_nets(hidden)
    B = 8
    images = torch.rand(B, 3, 64, 64, generator=c.rng)
    y = torch.randint(0, 2, (B, 2), generator=c.rng).float()
    z = torch.randn(B, config.z_dim, generator=c.rng)
    cases = [("SGD", lambda p: torch.optim.SGD(p, lr=0.05), {})]
    if hidden:
        cases += [("Adam", lambda p: torch.optim.Adam(p, lr=2e-4, betas=(0.5, 0.999)), {}),
                  ("SGD, real_label 1", lambda p: torch.optim.SGD(p, lr=0.05), {"real_label": 1.0}),
                  ("SGD, y_fake given", lambda p: torch.optim.SGD(p, lr=0.05),
                   {"y_fake": torch.randint(0, 2, (B, 2), generator=c.rng).float()})]

    def fresh(make):
        G, D = copy.deepcopy(G0), copy.deepcopy(D0)
        return G, D, make(G.parameters()), make(D.parameters())

    def params(net):
        return torch.cat([p.detach().flatten() for p in net.parameters()])

    for name, make, kwargs in cases:
        G, D, og, od = fresh(make)
        G.train(), D.train()
        out = step(G, D, og, od, images, y, z, **kwargs)
        c.expect(isinstance(out, dict) and {"loss_d", "loss_g"} <= set(out),
                 f"train_step should return a dict with 'loss_d' and 'loss_g', got {describe(out)}.")
        variants = {}
        for label, flags in {"reference": {}, "no_map": {"map_range": False}, "undetached": {"detach": False, "zero_g_first": True},
                             "g_updates_d": {"g_updates_d": True}, "reuse": {"reuse_logits": True},
                             "no_fake_labels": {"fake_labels_to_d": False}}.items():
            Gr, Dr, ogr, odr = fresh(make)
            Gr.train(), Dr.train()
            try:
                result = _step(Gr, Dr, ogr, odr, images, y, z, kwargs.get("real_label", 0.9), y_fake=kwargs.get("y_fake"),
                               **flags)
            except RuntimeError:      # e.g. reusing logits of a D updated in place: autograd refuses
                continue
            variants[label] = (params(Gr), params(Dr), result)
        g_ok = torch.allclose(params(G), variants["reference"][0], atol=1e-6)
        d_ok = torch.allclose(params(D), variants["reference"][1], atol=1e-6)
        if not (g_ok and d_ok):
            hints = {"no_map": "the real faces are in [0, 1] but G's tanh draws in [-1, 1]: D can tell them apart by "
                               "brightness alone. Map the batch with images * 2 - 1 first.",
                     "undetached": "G's parameters also moved along D's loss: the fakes in D's loss must be "
                                   "fake.detach() (and zero G's gradients before G's backward).",
                     "g_updates_d": "D's parameters also moved in G's step: only opt_g.step() after G's loss (G's "
                                    "backward fills D's gradients too; opt_d.zero_grad() clears them in the next step).",
                     "reuse": "G's loss reuses the fake logits from before D's update: call D(fake, y) again after "
                              "opt_d.step(), so G plays against the updated D.",
                     "no_fake_labels": "D judged the fakes without their attributes: give D the attributes G was asked "
                                       "for, D(fake.detach(), y_fake)."}
            for label, hint in hints.items():
                if label in variants and torch.allclose(params(G), variants[label][0], atol=1e-6) and torch.allclose(params(D), variants[label][1], atol=1e-6):
                    c.fail(f"after one step ({name}) your networks differ from the reference: {hint}")
            which = "D's" if not d_ok else "G's"
            c.fail(f"after one step ({name}) {which} parameters differ from the reference step. The order is: "
                   "x = images * 2 - 1; fake = G(z, y_fake) (y_fake = y unless given); D's loss on D(x, y) and "
                   "D(fake.detach(), y_fake), with your "
                   "discriminator_loss(..., real_label); opt_d.zero_grad(), backward, opt_d.step(); then G's loss on "
                   "D(fake, y_fake), opt_g.zero_grad(), backward, opt_g.step(). Call D separately on real and fake "
                   "(BatchNorm statistics depend on the batch).")
        c.passed += 1
        ref = variants["reference"][2]
        for key in ("loss_d", "loss_g"):
            c.expect(abs(float(out[key]) - ref[key]) < 1e-4,
                     f"{key} should be {ref[key]:.5f} (the loss computed in this step), got {describe(out[key])}.")
        if hidden and name == "Adam":
            second = step(G, D, og, od, images.flip(0), y.flip(0), z.flip(0))
            c.expect(isinstance(second, dict), "a second step in a row should work too.")
    c.done()


def check_diversity(fn, hidden: bool = False) -> None:
    """Visible: a float; 0 for identical rows (a collapsed generator); the reference on random features; the
    distance of two points; scales with the features. Hidden: a larger set, float64 input."""
    __tracebackhide__ = True
    c = Check("diversity", fn, hidden, blocked=REFERENCES)
    collapsed = torch.randn(1, 10, generator=c.rng).expand(20, -1).contiguous()
    value = c.call(collapsed)
    c.expect(isinstance(value, (float, int)) or (isinstance(value, torch.Tensor) and value.dim() == 0),
             f"diversity should return a number (a float), got {describe(value)}.")
    c.expect(abs(float(value)) < 1e-4, f"20 identical faces (mode collapse) should have diversity 0, got {float(value):.4g}.")
    pair = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    got = float(c.call(pair))
    if abs(got - 25.0) < 1e-4:
        c.fail("two points 5 apart gave 25: use the Euclidean distance, not its square (torch.cdist).")
    if abs(got - 2.5) < 1e-4:
        c.fail("two points 5 apart gave 2.5: the zero distance of each point to itself is counted; average over the "
               "N (N - 1) pairs of distinct points.")
    c.expect(abs(got - 5.0) < 1e-4, f"two points 5 apart should have diversity 5, got {got:.4g}.")
    features = torch.randn(7, 5, generator=c.rng)
    want = mean_pairwise_distance(features, max_items=len(features))
    got = float(c.call(features))
    c.expect(abs(got - want) < 1e-4, f"for 7 random points the mean distance over distinct pairs is {want:.5f}, got "
                                     f"{got:.5f}. Sum torch.cdist(f, f) and divide by N (N - 1).")
    c.expect(abs(float(c.call(3 * features)) - 3 * want) < 1e-3, "tripling the features should triple the diversity.")
    if hidden:
        big = torch.randn(300, 32, generator=c.rng).double()
        c.expect(abs(float(c.call(big)) - mean_pairwise_distance(big, max_items=300)) < 1e-3,
                 "wrong for 300 points in float64.")
    c.done()
