"""Lesson 07 "Neural style transfer": the reference for each exercise and the checks the notebook calls.

Exercises (one concept each):
  1. ``gatys_layers``     - the paper's layers: content conv4_2; style conv1_1, conv2_1, conv3_1, conv4_1, conv5_1
  2. ``read_features``    - named feature maps out of a VGG `features` stack (conv outputs before their ReLU)
  3. ``gram_matrix``      - (B, C, H, W) -> (B, C, C) channel co-activations / (C H W)
  4. ``content_loss``     - 1/2 mean (F - P)^2
  5. ``style_loss``       - sum_l w_l 1/4 sum_ij (G - A)^2, equal weights by default
  6. ``total_variation``  - mean squared vertical + horizontal neighbour differences
  7. ``masked_gram``      - sum_p m_p F_p F_p^T / (C sum_p m_p), the mask area-resized to the layer
  8. ``optimise_lbfgs``   - L-BFGS over a copy of the image with a closure, one loss evaluation per iteration

Each ``check_<exercise>(fn, hidden=False)`` compares ``fn`` with the reference on fixed and seeded random
inputs and properties, and raises :class:`~faceedu.grading.core.CheckFailed` with a hint at the first
mistake. The references (faceedu.models.nst and the feature network's layer naming) are blocked while
``fn`` runs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from faceedu.grading.core import Check, describe
from faceedu.models import nst
from faceedu.models.features import VGGFeatures, vgg_layer_names

__all__ = [
    "gatys_layers", "read_features", "gram_matrix", "content_loss", "style_loss", "total_variation", "masked_gram",
    "optimise_lbfgs",
    "check_gatys_layers", "check_read_features", "check_gram_matrix", "check_content_loss", "check_style_loss",
    "check_total_variation", "check_masked_gram", "check_optimise_lbfgs",
]

# --- reference implementations ---------------------------------------------------------------------


def gatys_layers() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(content layers, style layers) of Gatys et al. 2016, in torchvision's naming of VGG's layers."""
    return nst.CONTENT_LAYERS, nst.STYLE_LAYERS


def read_features(features: nn.Sequential, images: torch.Tensor, layers) -> dict[str, torch.Tensor]:
    """{name: the output of that layer} for a VGG `features` stack on (already normalised) images. Layers are
    named convB_K, reluB_K (the ReLU after convB_K) and poolB; B counts the blocks that pools end, from 1."""
    index = vgg_layer_names(features)
    wanted = {index[name]: name for name in layers}
    out, x = {}, images
    for i, layer in enumerate(features[:max(wanted) + 1]):
        x = layer(x)
        if i in wanted:
            out[wanted[i]] = x.clone()      # an in-place ReLU would overwrite it
    return {name: out[name] for name in layers}


def gram_matrix(features: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, C), normalised by the layer size C * H * W."""
    return nst.gram_matrix(features)


def content_loss(features: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1/2 * mean over every entry of (features - target)^2."""
    return nst.content_loss(features, target)


def style_loss(grams: dict, targets: dict, weights: dict | None = None) -> torch.Tensor:
    """sum over layers of w_l * 1/4 * sum_ij (G - A)^2 (a batch mean); w_l = 1 / number of layers when None."""
    return nst.style_loss(grams, targets, weights)


def total_variation(image: torch.Tensor) -> torch.Tensor:
    """mean (x[i+1, j] - x[i, j])^2 + mean (x[i, j+1] - x[i, j])^2 over (B, C, H, W)."""
    return nst.total_variation(image)


def masked_gram(features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W), (B, 1, H0, W0) -> (B, C, C): sum_p m_p F_p F_p^T / (C sum_p m_p), mask resized by area."""
    return nst.masked_gram_matrix(features, mask)


def optimise_lbfgs(loss_fn, init: torch.Tensor, steps: int):
    """(the optimised copy of init, the list of every loss value computed) after `steps` L-BFGS iterations."""
    return nst.lbfgs(loss_fn, init, steps)


REFERENCES = (nst.gram_matrix, nst.masked_gram_matrix, nst.resize_mask, nst.content_loss, nst.style_loss,
              nst.total_variation, nst.lbfgs, nst.adam, vgg_layer_names, VGGFeatures.forward,
              gatys_layers, read_features, gram_matrix, content_loss, style_loss, total_variation, masked_gram,
              optimise_lbfgs)

# --- unblocked copies the checks compute with ---------------------------------------------------------------


def _gram(f):
    b, c, h, w = f.shape
    flat = f.reshape(b, c, h * w)
    return flat @ flat.transpose(1, 2) / (c * h * w)


def _masked(f, m, mode="area", power=1):
    b, c, h, w = f.shape
    m = F.interpolate(m, size=(h, w), mode=mode) if m.shape[-2:] != (h, w) else m
    m = m.reshape(b, 1, h * w)
    flat = f.reshape(b, c, h * w)
    return (flat * m ** power) @ flat.transpose(1, 2) / (c * m.sum(2, keepdim=True).clamp_min(1e-8))


class _Stack(nn.Sequential):
    """An nn.Sequential that compares equal to a copy with the same layers and weights, so that the check's
    "did you change your input?" test compares contents, not identities."""

    def __eq__(self, other):
        return (type(other) is type(self) and len(self) == len(other)
                and all(type(a) is type(b) for a, b in zip(self, other))
                and all(torch.equal(a, b) for a, b in zip(self.state_dict().values(), other.state_dict().values())))

    __hash__ = nn.Module.__hash__


def tiny_vgg(blocks=(2, 2, 3), width=4, seed=0) -> nn.Sequential:
    """A VGG-shaped stack (convs 3x3, in-place ReLUs, 2x2 max-pools) with few channels, for the checks."""
    g = torch.Generator().manual_seed(seed)
    layers, c_in = [], 3
    for b, n in enumerate(blocks):
        for _ in range(n):
            conv = nn.Conv2d(c_in, width * 2 ** b, 3, padding=1)
            with torch.no_grad():
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * 0.4)
                conv.bias.copy_(torch.randn(conv.bias.shape, generator=g) * 0.2)
            layers += [conv, nn.ReLU(inplace=True)]
            c_in = width * 2 ** b
        layers.append(nn.MaxPool2d(2, 2))
    stack = _Stack(*layers)
    for p in stack.parameters():
        p.requires_grad_(False)
    return stack


# --- checks ------------------------------------------------------------------------------------------


def check_gatys_layers(fn, hidden: bool = False) -> None:
    """The paper's content layer and five style layers, by name."""
    __tracebackhide__ = True
    c = Check("gatys_layers", fn, hidden, blocked=REFERENCES)
    out = c.call()
    c.expect(isinstance(out, (tuple, list)) and len(out) == 2,
             f"return two sequences (content layers, style layers), got {describe(out)}.")
    content, style = tuple(out[0]), tuple(out[1])
    names = set(content) | set(style)
    if any(str(n).startswith("relu") for n in names):
        c.fail(f"{sorted(n for n in names if str(n).startswith('relu'))} are ReLU outputs; Gatys et al. name the "
               "convolution layers (conv4_2, conv1_1, ...): take each conv's output before its ReLU.")
    if "conv2_2" in content:
        c.fail("conv2_2 is the PyTorch tutorial's 'conv_4' (the fourth conv overall), a known mistake: the paper's "
               "content layer is conv4_2, the second conv of the fourth block.")
    if set(content) & set(nst.STYLE_LAYERS):
        c.fail(f"your content layer {sorted(set(content) & set(nst.STYLE_LAYERS))} is one of the style layers. The "
               "paper reads content at conv4_2, deep enough to keep the arrangement of the face and loose about its "
               "exact pixels; the style layers are the first conv of each block.")
    c.expect(content == nst.CONTENT_LAYERS, f"content layers should be ('conv4_2',), got {content}.")
    missing = [n for n in nst.STYLE_LAYERS if n not in style]
    c.expect(not missing and len(style) == 5,
             f"style layers should be the first conv of each of the five blocks, conv1_1 ... conv5_1; got {style}"
             + (f" (missing {missing})." if missing else "."))
    c.expect(style == nst.STYLE_LAYERS, f"list the style layers from shallow to deep: {nst.STYLE_LAYERS}.")
    c.done()


def check_read_features(fn, hidden: bool = False) -> None:
    """Visible: a small VGG-shaped stack with in-place ReLUs; conv outputs before the ReLU, ReLU outputs after it,
    pools; the same values as the reference; gradients reach the images. Hidden: a block of three convs, names in
    any order, a batch of two."""
    __tracebackhide__ = True
    c = Check("read_features", fn, hidden, blocked=REFERENCES)
    cases = [(tiny_vgg((2, 2, 2)), ["conv1_1", "relu1_2", "conv2_1", "pool2", "conv3_1"])]
    if hidden:
        cases.append((tiny_vgg((2, 3, 3), width=3, seed=1), ["conv3_2", "relu2_3", "conv2_3", "conv1_2"]))
    for stack, layers in cases:
        names = vgg_layer_names(stack)
        images = torch.rand(2 if hidden else 1, 3, 16, 16, generator=c.rng) - 0.5
        with torch.no_grad():
            expected, x = {}, images
            for i, layer in enumerate(stack):
                x = layer(x)
                for name, j in names.items():
                    if j == i and name in layers:
                        expected[name] = x.clone()
        out = c.call(stack, images, layers)
        c.expect(isinstance(out, dict), f"return a dict {{layer name: tensor}}, got {describe(out)}.")
        c.expect(set(out) == set(layers), f"the dict should have exactly the keys {layers}, got {sorted(out)}.")
        for name in layers:
            got, want = out[name], expected[name]
            c.expect_tensor(got, shape=tuple(want.shape), what=f"features[{name!r}]",
                            hint="Count the convs within a block (conv2_1 is the first conv after the first pool).")
            if name.startswith("conv") and not torch.allclose(got, want, atol=1e-5):
                if torch.allclose(got, want.clamp_min(0), atol=1e-5):
                    c.fail(f"features[{name!r}] has no negative values: it is the output after the ReLU. VGG's ReLUs are "
                           "in place (nn.ReLU(inplace=True)): the conv output you stored was overwritten by the next "
                           "layer. Store x.clone(), or the conv layer's own output, not a reference to x.")
                c.fail(f"features[{name!r}] is not the output of that convolution. Name the layers by walking the "
                       "stack: a conv increments the conv count, a ReLU takes the name of the conv before it, a pool "
                       "ends the block (block + 1, count back to 0).")
            if name.startswith("relu") and not torch.allclose(got, want, atol=1e-5):
                if bool((got < 0).any()):
                    c.fail(f"features[{name!r}] has negative values: it is the conv output before the ReLU. {name} is "
                           "the output of the ReLU that follows conv" + name[4:] + ".")
            c.expect_close(got, want, what=f"features[{name!r}]", atol=1e-5,
                           hint="Run the layers in order on the images and keep each wanted layer's output.")
        leaf = images.clone().requires_grad_(True)
        out = c.call(stack, leaf, ["conv2_1"])
        c.expect(out["conv2_1"].requires_grad,
                 "the features carry no gradient: style transfer differentiates them with respect to the image. "
                 "Do not use torch.no_grad() or .detach() here.")
    c.done()


def check_gram_matrix(fn, hidden: bool = False) -> None:
    """Visible: shape (B, C, C); the reference value; a hint for the unnormalised and the pixel-axis Gram.
    Hidden: invariance to shuffling positions, the same value at twice the size, gradients."""
    __tracebackhide__ = True
    c = Check("gram_matrix", fn, hidden, blocked=REFERENCES)
    f = torch.randn(2, 5, 4, 6, generator=c.rng)
    out = c.call(f)
    c.expect_type(out, torch.Tensor, "the Gram matrix")
    if tuple(out.shape) in ((2, 24, 24), (24, 24)):
        c.fail("your Gram matrix is (positions x positions): it compares pixels, not channels. Flatten to (B, C, H*W) "
               "and multiply by the transpose on the right, F @ F.transpose(1, 2), which gives (B, C, C).")
    c.expect_tensor(out, shape=(2, 5, 5), what="gram_matrix of (2, 5, 4, 6) features",
                    hint="One C x C matrix per image: reshape to (B, C, H*W), keep the batch dimension.")
    want = _gram(f)
    if torch.allclose(out, want * (5 * 24), rtol=1e-4):
        c.fail("your Gram matrix is not normalised: divide F F^T by the layer size C * H * W, or its scale grows with "
               "the image and the style weight means something else at every size.")
    for scale, what in ((5, "C"), (24, "H * W"), (5 * 5 * 24, "C^2 * H * W")):
        if torch.allclose(out, want * (5 * 24) / scale, rtol=1e-4):
            c.fail(f"you divided by {what}; divide by the layer size C * H * W.")
    flat = f.reshape(2, 5, 24)
    if torch.allclose(out, _gram((flat - flat.mean(2, keepdim=True)).reshape(2, 5, 4, 6)), rtol=1e-4):
        c.fail("you centred the features first (a covariance): Gatys' Gram matrix uses the raw features.")
    c.expect_close(out, want, what="the Gram matrix", atol=1e-5, hint="G = F F^T / (C H W), F of shape (B, C, H*W).")
    if hidden:
        shuffled = flat[:, :, torch.randperm(24, generator=c.rng)].reshape(2, 5, 4, 6)
        c.expect_close(c.call(shuffled), want, what="the Gram of the same features at shuffled positions", atol=1e-5,
                       hint="A Gram matrix sums over positions: it must not depend on where a feature is.")
        c.expect_close(c.call(f.repeat(1, 1, 2, 2)), want, what="the Gram of the features tiled 2 x 2", atol=1e-5,
                       hint="Normalised by the size, the same statistics give the same Gram at any size.")
        leaf = f.clone().requires_grad_(True)
        c.call(leaf).sum().backward()
        c.expect(leaf.grad is not None and bool(leaf.grad.abs().sum() > 0), "no gradient reaches the features.")
    c.done()


def check_content_loss(fn, hidden: bool = False) -> None:
    """Visible: 0 for equal features, the reference on random ones. Hidden: size invariance, gradients."""
    __tracebackhide__ = True
    c = Check("content_loss", fn, hidden, blocked=REFERENCES)
    f, p = torch.randn(1, 8, 4, 4, generator=c.rng), torch.randn(1, 8, 4, 4, generator=c.rng)
    c.expect_tensor(c.call(f, f), shape=(), what="content_loss(F, F)", hint="Return one number (a 0-dim tensor).")
    c.expect_close(c.call(f, f), torch.tensor(0.0), what="content_loss(F, F)")
    out = c.call(f, p)
    want = 0.5 * (f - p).pow(2).mean()
    if torch.isclose(out, 2 * want, rtol=1e-4):
        c.fail("it is twice the expected value: Gatys' content loss has a factor 1/2 (its gradient is then F - P).")
    if torch.isclose(out, want * f.numel(), rtol=1e-4) or torch.isclose(out, 2 * want * f.numel(), rtol=1e-4):
        c.fail("you summed the squared differences: take the mean over every entry (the paper's sum divided by "
               "the layer size), so that the weights do not depend on the image size.")
    if torch.isclose(out, 0.5 * (f - p).abs().mean(), rtol=1e-4):
        c.fail("that is an L1 distance: square the differences.")
    c.expect_close(out, want, what="content_loss", atol=1e-6, hint="1/2 * mean((F - P)^2).")
    if hidden:
        c.expect_close(c.call(f.repeat(1, 1, 2, 2), p.repeat(1, 1, 2, 2)), want, what="the loss at twice the size",
                       atol=1e-6, hint="A mean does not grow with the size.")
        leaf = f.clone().requires_grad_(True)
        c.call(leaf, p).backward()
        c.expect_close(leaf.grad, (f - p) / f.numel(), what="the gradient", atol=1e-6)
    c.done()


def _grams(c, layers=("a", "b"), sizes=(3, 4), batch=1):
    g = {k: torch.rand(batch, n, n, generator=c.rng) for k, n in zip(layers, sizes)}
    t = {k: torch.rand(batch, n, n, generator=c.rng) for k, n in zip(layers, sizes)}
    return g, t


def check_style_loss(fn, hidden: bool = False) -> None:
    """Visible: 0 for equal Grams; the reference with equal and with given weights; hints for a missing 1/4, a mean
    in place of the sum, weights that do not sum to one. Hidden: five layers and a batch of two."""
    __tracebackhide__ = True
    c = Check("style_loss", fn, hidden, blocked=REFERENCES)
    g, t = _grams(c)
    c.expect_close(c.call(g, g), torch.tensor(0.0), what="style_loss(G, G)")
    out = c.call(g, t)
    c.expect_tensor(out, shape=(), what="style_loss", hint="Return one number (a 0-dim tensor).")
    per = {k: 0.25 * (g[k] - t[k]).pow(2).sum() for k in g}
    want = sum(per.values()) / 2
    if torch.isclose(out, 4 * want, rtol=1e-4):
        c.fail("it is 4 times too large: E_l = 1/4 sum_ij (G_ij - A_ij)^2 (the paper's 1/(4 N^2 M^2) with the N M "
               "already in the normalised Gram).")
    if torch.isclose(out, 2 * want, rtol=1e-4):
        c.fail("it is the sum over layers with weight 1 each: Gatys weights the five layers equally, w_l = 1/5 "
               "(1 / the number of layers), so the weights sum to one.")
    if torch.isclose(out, sum(0.25 * (g[k] - t[k]).pow(2).mean() for k in g) / 2, rtol=1e-4):
        c.fail("you averaged over the Gram's entries: sum over i and j (E_l = 1/4 sum_ij (G - A)^2).")
    c.expect_close(out, want, what="style_loss with equal weights", atol=1e-6,
                   hint="sum over layers l of w_l * 1/4 * sum_ij (G^l_ij - A^l_ij)^2, with w_l = 1/L.")
    weights = {"a": 0.8, "b": 0.3}
    c.expect_close(c.call(g, t, weights), 0.8 * per["a"] + 0.3 * per["b"], what="style_loss with weights {a: 0.8, b: 0.3}",
                   atol=1e-6, hint="Use the weights you are given (weights[name]) when they are not None.")
    if hidden:
        g, t = _grams(c, layers=tuple("abcde"), sizes=(2, 3, 4, 5, 6), batch=2)
        want = sum(0.25 * (g[k] - t[k]).pow(2).sum((-2, -1)).mean() for k in g) / 5
        c.expect_close(c.call(g, t), want, what="five layers, a batch of two", atol=1e-6,
                       hint="Per image the sum over i, j; then the mean over the batch.")
    c.done()


def check_total_variation(fn, hidden: bool = False) -> None:
    """Visible: 0 for a constant image; stripes in either direction; the reference on noise. Hidden: no wrap-around,
    a batch, gradients."""
    __tracebackhide__ = True
    c = Check("total_variation", fn, hidden, blocked=REFERENCES)
    c.expect_close(c.call(torch.full((1, 3, 5, 5), 0.3)), torch.tensor(0.0), what="TV of a constant image")
    columns = torch.zeros(1, 1, 4, 4)
    columns[..., ::2] = 1
    rows = columns.transpose(2, 3).contiguous()
    got_c, got_r = c.call(columns), c.call(rows)
    if float(got_c) == 0 or float(got_r) == 0:
        c.fail("vertical or horizontal stripes have no total variation in yours: add both directions, the differences "
               "between rows (x[:, :, 1:] - x[:, :, :-1]) and between columns (x[..., 1:] - x[..., :-1]).")
    x = torch.rand(2, 3, 6, 7, generator=c.rng)
    out = c.call(x)
    dv, dh = x[:, :, 1:] - x[:, :, :-1], x[..., 1:] - x[..., :-1]
    want = dv.pow(2).mean() + dh.pow(2).mean()
    if torch.isclose(out, dv.abs().mean() + dh.abs().mean(), rtol=1e-4):
        c.fail("you took absolute differences (TV-L1); this lesson's total variation squares them.")
    if torch.isclose(out, dv.pow(2).sum() + dh.pow(2).sum(), rtol=1e-4):
        c.fail("you summed the squared differences: take the mean of each direction, so the weight does not depend "
               "on the image size.")
    wrapped = (x - x.roll(1, 2)).pow(2).mean() + (x - x.roll(1, 3)).pow(2).mean()
    if torch.isclose(out, wrapped, rtol=1e-4):
        c.fail("torch.roll wraps around: the last row is compared with the first. Slice instead: x[:, :, 1:] - x[:, :, :-1].")
    c.expect_close(out, want, what="total_variation", atol=1e-6,
                   hint="mean((x[:, :, 1:, :] - x[:, :, :-1, :])^2) + mean((x[:, :, :, 1:] - x[:, :, :, :-1])^2).")
    if hidden:
        edge = torch.zeros(1, 1, 4, 4)
        edge[:, :, 0] = 1
        c.expect_close(c.call(edge), torch.tensor(1 / 3), what="TV of an image whose top row is 1",
                       hint="Only the first pair of rows differs: 4 of 12 vertical differences, none horizontal.")
        leaf = x.clone().requires_grad_(True)
        c.call(leaf).backward()
        c.expect(leaf.grad is not None, "no gradient reaches the image.")
    c.done()


def check_masked_gram(fn, hidden: bool = False) -> None:
    """Visible: a mask of ones gives the Gram; a half mask gives the Gram of that half, whatever lies outside;
    the mask is resized to the layer. Hidden: a soft mask resized by area, a batch of two."""
    __tracebackhide__ = True
    c = Check("masked_gram", fn, hidden, blocked=REFERENCES)
    f = torch.randn(1, 4, 8, 8, generator=c.rng)
    ones = torch.ones(1, 1, 8, 8)
    out = c.call(f, ones)
    c.expect_tensor(out, shape=(1, 4, 4), what="masked_gram of (1, 4, 8, 8) features")
    c.expect_close(out, _gram(f), what="masked_gram with a mask of ones", atol=1e-5,
                   hint="With every m_p = 1 it must equal the ordinary Gram F F^T / (C H W).")
    left = torch.zeros(1, 1, 32, 32)
    left[..., :16] = 1
    bright = f.clone()
    bright[..., 4:] = 10.0
    got = c.call(bright, left)
    want = _gram(f[..., :4])
    if torch.allclose(got, _gram(bright), atol=1e-4):
        c.fail("the mask is not applied: features outside it still count. Multiply each position's outer product by "
               "the mask there, sum_p m_p F_p F_p^T.")
    if torch.allclose(got, want / 2, atol=1e-4):
        c.fail("you divided by C * H * W: divide by C * sum_p m_p, the area inside the mask, or the Gram shrinks with "
               "the mask and a small face gets a weaker style.")
    c.expect_close(got, want, what="masked_gram with the left half of the image (32x32 mask, 8x8 features)", atol=1e-4,
                   hint="Resize the mask to the features' (H, W) (F.interpolate(mask, size=(H, W), mode='area')), then "
                        "sum_p m_p F_p F_p^T / (C sum_p m_p).")
    if hidden:
        soft = torch.rand(2, 1, 12, 12, generator=c.rng)
        f2 = torch.randn(2, 3, 4, 4, generator=c.rng)
        got = c.call(f2, soft)
        if torch.allclose(got, _masked(f2, soft, power=2), atol=1e-5) and not torch.allclose(got, _masked(f2, soft), atol=1e-5):
            c.fail("you weighted by m^2 ((F * m) @ (F * m)^T): for a soft mask weight each position once, by m_p.")
        if torch.allclose(got, _masked(f2, soft, mode="nearest"), atol=1e-5):
            c.fail("nearest-neighbour resizing keeps one mask pixel per feature cell: use mode='area', the fraction "
                   "of the cell the mask covers.")
        c.expect_close(got, _masked(f2, soft), what="masked_gram with a soft 12x12 mask on 4x4 features, batch 2",
                       atol=1e-5, hint="Area resizing, weights m_p, per image its own mask area.")
    c.done()


def _quadratic(n=20, condition=3.0):
    scales = torch.logspace(0, condition, n)
    target = torch.linspace(-1, 1, n)
    calls = []

    def loss_fn(x):
        calls.append(1)
        return (scales * (x.reshape(-1) - target) ** 2).sum()

    return loss_fn, target, calls


def check_optimise_lbfgs(fn, hidden: bool = False) -> None:
    """Visible: on an ill-conditioned quadratic, 40 iterations bring the loss down a million-fold (plain gradient
    steps cannot); at most one loss evaluation per iteration (plus one); the losses list has one value per
    evaluation; the input is untouched and the result detached. Hidden: an image-shaped input, a smooth
    non-quadratic loss, few steps."""
    __tracebackhide__ = True
    c = Check("optimise_lbfgs", fn, hidden, blocked=REFERENCES)
    loss_fn, target, calls = _quadratic()
    init = torch.zeros(20)
    out = c.call(loss_fn, init, 40)
    c.expect(isinstance(out, (tuple, list)) and len(out) == 2, f"return (x, losses), got {describe(out)}.")
    x, losses = out
    c.expect_tensor(x, shape=(20,), what="the optimised x")
    c.expect(isinstance(losses, (list, tuple)) and len(losses) > 0 and all(isinstance(v, float) for v in losses),
             "losses should be a list of floats (float(loss) in your closure), one per loss evaluation.")
    if len(calls) > 41:
        c.fail(f"40 iterations called loss_fn {len(calls)} times. torch.optim.LBFGS runs up to max_iter iterations "
               "(default 20) in ONE .step(closure): either one step with max_iter=steps, or a loop of `steps` steps "
               "with max_iter=1 - not a loop of steps x 20.")
    c.expect(len(losses) == len(calls), f"losses has {len(losses)} values but loss_fn was called {len(calls)} times: "
             "record every value your closure computes.")
    start = float(loss_fn(torch.zeros(20)))
    calls.clear()
    if not math.isfinite(losses[-1]) or losses[-1] > 1e-2 * start:
        c.fail(f"the loss went from {start:.4g} to {losses[-1]:.4g} only. L-BFGS needs a closure that zeroes the "
               "gradient, recomputes the loss at the current x, calls backward() and returns the loss; it calls it "
               "several times per step. A loss computed once outside the closure gives it stale gradients.")
    final = float(loss_fn(x.detach()))
    c.expect(final < 1e-5 * start,
             f"after 40 iterations the loss is {final:.3g} (from {start:.4g}); L-BFGS brings this quadratic below "
             f"{1e-5 * start:.3g}. Use torch.optim.LBFGS([x], lr=1, max_iter=...) on a leaf tensor x with requires_grad.")
    c.expect(not x.requires_grad, "return x.detach(): the caller gets an image, not a node of the graph.")
    if hidden:
        g = torch.Generator().manual_seed(1)
        w = torch.randn(1, 3, 6, 6, generator=g)
        count = []

        def smooth(img):
            count.append(1)
            return torch.logsumexp(img.flatten() * 0.5, 0) + ((img - w) ** 2).mean() * 10

        img = torch.zeros(1, 3, 6, 6)
        x, losses = c.call(smooth, img, 5)
        c.expect_tensor(x, shape=(1, 3, 6, 6), what="the result for an image-shaped input")
        c.expect(len(count) <= 6, f"5 iterations called the loss {len(count)} times (at most 6).")
        c.expect(float(smooth(x)) < float(smooth(img)), "the loss did not go down on an image-shaped problem.")
    c.done()
