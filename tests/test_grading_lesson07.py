"""Lesson 07's grader: the solutions pass, the stubs fail, the reference is unreachable, and realistic
wrong implementations (the issue's mutants and more) are rejected with a message that says what to fix."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from faceedu.grading import lesson07
from faceedu.grading.core import ReferenceUsed
from gradertests import GraderContract, run_checks

SLUG = "07_nst"
CHECKS = {name: getattr(lesson07, f"check_{name}") for name in (
    "gatys_layers", "read_features", "gram_matrix", "content_loss", "style_loss", "total_variation", "masked_gram",
    "optimise_lbfgs")}

# --- mutants: the layers ----------------------------------------------------------------------------------


def layers_content_at_style_layer():
    """Content read at conv4_1, one of the style layers."""
    return ("conv4_1",), ("conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1")


def layers_tutorial_conv_4():
    """The PyTorch tutorial's 'conv_4' (the fourth conv overall, conv2_2) as content layer."""
    return ("conv2_2",), ("conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1")


def layers_after_relu():
    """ReLU outputs named instead of the convolutions."""
    return ("relu4_2",), ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")


def layers_four_style_layers():
    """conv5_1 forgotten."""
    return ("conv4_2",), ("conv1_1", "conv2_1", "conv3_1", "conv4_1")


# --- mutants: reading features -----------------------------------------------------------------------------


def _positions(features, global_count=False, from_zero=False):
    position, block, conv, total = {}, 0 if from_zero else 1, 0, 0
    for i, module in enumerate(features):
        if isinstance(module, nn.Conv2d):
            conv, total = conv + 1, total + 1
            position[f"conv{block}_{total if global_count else conv}"] = i
        elif isinstance(module, nn.ReLU):
            position[f"relu{block}_{total if global_count else conv}"] = i
        elif isinstance(module, nn.MaxPool2d):
            position[f"pool{block}"] = i
            block, conv = block + 1, 0
    return position


def features_no_clone(features, images, layers):
    """Keeps a reference to x: the next in-place ReLU turns conv outputs into ReLU outputs (after ReLU when asked before)."""
    position = _positions(features)
    wanted = {position[n]: n for n in layers}
    out, x = {}, images
    for i in range(max(wanted) + 1):
        x = features[i](x)
        if i in wanted:
            out[wanted[i]] = x
    return out


def features_relu_is_conv(features, images, layers):
    """A reluB_K name mapped to the conv's index: before the ReLU when asked after it."""
    position = _positions(features)
    index = {n: (position[n] - 1 if n.startswith("relu") else position[n]) for n in layers}
    out, x = {}, images
    for i in range(max(index.values()) + 1):
        x = features[i](x)
        for n, j in index.items():
            if j == i:
                out[n] = x.clone()
    return out


def features_global_conv_count(features, images, layers):
    """Counts convolutions over the whole network (the tutorial's conv_4 mistake): conv2_1 is not found right."""
    position = _positions(features, global_count=True)
    out, x = {}, images
    for i, module in enumerate(features):
        x = module(x)
        for n in layers:
            if position.get(n) == i:
                out[n] = x.clone()
    return {n: out.get(n, x) for n in layers}


def features_no_grad(features, images, layers):
    """Reads the features under torch.no_grad(): nothing to differentiate."""
    position = _positions(features)
    out, x = {}, images
    with torch.no_grad():
        for i, module in enumerate(features):
            x = module(x)
            for n in layers:
                if position[n] == i:
                    out[n] = x.clone()
    return out


def features_blocks_from_zero(features, images, layers):
    """Blocks numbered from 0: every name is one block too deep."""
    position = _positions(features, from_zero=True)
    out, x = {}, images
    for i, module in enumerate(features):
        x = module(x)
        for n in layers:
            if position.get(n) == i:
                out[n] = x.clone()
    return {n: out.get(n, x.clone()) for n in layers}


# --- mutants: the Gram matrix ------------------------------------------------------------------------------


def gram_unnormalised(features):
    """F F^T without dividing by the layer size."""
    b, c, h, w = features.shape
    flat = features.reshape(b, c, h * w)
    return flat @ flat.transpose(1, 2)


def gram_over_pixels(features):
    """F^T F: positions x positions instead of channels x channels."""
    b, c, h, w = features.shape
    flat = features.reshape(b, c, h * w)
    return flat.transpose(1, 2) @ flat / (c * h * w)


def gram_by_positions_only(features):
    """Divided by H * W only."""
    b, c, h, w = features.shape
    flat = features.reshape(b, c, h * w)
    return flat @ flat.transpose(1, 2) / (h * w)


def gram_centred(features):
    """A covariance: the features centred first."""
    b, c, h, w = features.shape
    flat = features.reshape(b, c, h * w)
    flat = flat - flat.mean(2, keepdim=True)
    return flat @ flat.transpose(1, 2) / (c * h * w)


def gram_batch_merged(features):
    """The batch folded into the channels: one Gram for the whole batch."""
    b, c, h, w = features.shape
    flat = features.transpose(0, 1).reshape(c, b * h * w)
    return (flat @ flat.T / (c * b * h * w)).expand(b, c, c)


# --- mutants: the content loss -------------------------------------------------------------------------------


def content_no_half(features, target):
    """Without the 1/2."""
    return ((features - target) ** 2).mean()


def content_summed(features, target):
    """The paper's sum, not divided by the layer size."""
    return 0.5 * ((features - target) ** 2).sum()


def content_l1(features, target):
    """Absolute differences."""
    return 0.5 * (features - target).abs().mean()


# --- mutants: the style loss ---------------------------------------------------------------------------------


def style_no_quarter(grams, targets, weights=None):
    """The 1/4 dropped."""
    weights = weights or {k: 1 / len(grams) for k in grams}
    return sum(weights[k] * ((g - targets[k]) ** 2).sum((-2, -1)).mean() for k, g in grams.items())


def style_weights_one(grams, targets, weights=None):
    """Layers summed with weight 1 each."""
    weights = weights or {k: 1.0 for k in grams}
    return sum(weights[k] * 0.25 * ((g - targets[k]) ** 2).sum((-2, -1)).mean() for k, g in grams.items())


def style_mean_over_entries(grams, targets, weights=None):
    """A mean over the Gram's entries instead of the sum."""
    weights = weights or {k: 1 / len(grams) for k in grams}
    return sum(weights[k] * 0.25 * ((g - targets[k]) ** 2).mean() for k, g in grams.items())


def style_ignores_weights(grams, targets, weights=None):
    """Always equal weights, whatever is passed."""
    return sum(0.25 * ((g - targets[k]) ** 2).sum((-2, -1)).mean() for k, g in grams.items()) / len(grams)


# --- mutants: total variation ----------------------------------------------------------------------------------


def tv_one_direction(image):
    """Vertical differences only."""
    return ((image[:, :, 1:] - image[:, :, :-1]) ** 2).mean()


def tv_absolute(image):
    """TV-L1: absolute differences."""
    return (image[:, :, 1:] - image[:, :, :-1]).abs().mean() + (image[..., 1:] - image[..., :-1]).abs().mean()


def tv_summed(image):
    """Sums instead of means."""
    return ((image[:, :, 1:] - image[:, :, :-1]) ** 2).sum() + ((image[..., 1:] - image[..., :-1]) ** 2).sum()


def tv_wraps_around(image):
    """torch.roll: the last row is compared with the first."""
    return ((image - image.roll(1, 2)) ** 2).mean() + ((image - image.roll(1, 3)) ** 2).mean()


# --- mutants: the masked Gram --------------------------------------------------------------------------------


def masked_gram_ignores_mask(features, mask):
    """The mask not applied to the Gram."""
    b, c, h, w = features.shape
    flat = features.reshape(b, c, h * w)
    return flat @ flat.transpose(1, 2) / (c * h * w)


def masked_gram_normalised_by_size(features, mask):
    """Masked, but divided by C H W instead of C times the mask's area."""
    b, c, h, w = features.shape
    m = F.interpolate(mask, size=(h, w), mode="area").reshape(b, 1, h * w)
    flat = features.reshape(b, c, h * w)
    return (flat * m) @ flat.transpose(1, 2) / (c * h * w)


def masked_gram_mask_squared(features, mask):
    """(F m)(F m)^T: a soft mask counted twice."""
    b, c, h, w = features.shape
    m = F.interpolate(mask, size=(h, w), mode="area").reshape(b, 1, h * w)
    flat = features.reshape(b, c, h * w) * m
    return flat @ flat.transpose(1, 2) / (c * m.sum(2, keepdim=True))


def masked_gram_nearest(features, mask):
    """The mask resized by nearest neighbour."""
    b, c, h, w = features.shape
    m = F.interpolate(mask, size=(h, w), mode="nearest").reshape(b, 1, h * w)
    flat = features.reshape(b, c, h * w)
    return (flat * m) @ flat.transpose(1, 2) / (c * m.sum(2, keepdim=True).clamp_min(1e-8))


def masked_gram_one_area_for_batch(features, mask):
    """One mask area for the whole batch."""
    b, c, h, w = features.shape
    m = F.interpolate(mask, size=(h, w), mode="area").reshape(b, 1, h * w)
    flat = features.reshape(b, c, h * w)
    return (flat * m) @ flat.transpose(1, 2) / (c * m.sum() / b)


# --- mutants: the L-BFGS loop ---------------------------------------------------------------------------------


def lbfgs_no_closure(loss_fn, init, steps):
    """The loss computed once, outside any closure; L-BFGS gets a function returning that stale loss."""
    x = init.detach().clone().requires_grad_(True)
    optimizer = torch.optim.LBFGS([x], lr=1, max_iter=steps, max_eval=steps + 1)
    optimizer.zero_grad()
    loss = loss_fn(x)
    loss.backward()
    losses = [loss.item()]

    def stale():
        losses.append(loss.item())
        return loss

    optimizer.step(stale)
    return x.detach(), losses[: len(losses)]


def lbfgs_default_max_iter(loss_fn, init, steps):
    """A loop of `steps` .step(closure) calls with the default max_iter=20: 20x the evaluations."""
    x = init.detach().clone().requires_grad_(True)
    optimizer = torch.optim.LBFGS([x], lr=1)
    losses = []

    def closure():
        optimizer.zero_grad()
        loss = loss_fn(x)
        loss.backward()
        losses.append(loss.item())
        return loss

    for _ in range(steps):
        optimizer.step(closure)
    return x.detach(), losses


def lbfgs_no_zero_grad(loss_fn, init, steps):
    """The closure never zeroes the gradient: each evaluation adds to the last."""
    x = init.detach().clone().requires_grad_(True)
    optimizer = torch.optim.LBFGS([x], lr=1, max_iter=steps, max_eval=steps + 1)
    losses = []

    def closure():
        loss = loss_fn(x)
        loss.backward()
        losses.append(loss.item())
        return loss

    optimizer.step(closure)
    return x.detach(), losses


def lbfgs_is_adam(loss_fn, init, steps):
    """Adam for `steps` steps in place of L-BFGS."""
    x = init.detach().clone().requires_grad_(True)
    optimizer = torch.optim.Adam([x], lr=0.05)
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = loss_fn(x)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return x.detach(), losses


def lbfgs_in_place(loss_fn, init, steps):
    """Optimises the caller's tensor itself."""
    x = init.requires_grad_(True) if init.is_leaf else init
    optimizer = torch.optim.LBFGS([x], lr=1, max_iter=steps, max_eval=steps + 1)
    losses = []

    def closure():
        optimizer.zero_grad()
        loss = loss_fn(x)
        loss.backward()
        losses.append(loss.item())
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        init.copy_(x)
    return x.detach(), losses


MUTANTS = {
    "gatys_layers": [layers_content_at_style_layer, layers_tutorial_conv_4, layers_after_relu, layers_four_style_layers],
    "read_features": [features_no_clone, features_relu_is_conv, features_global_conv_count, features_no_grad,
                      features_blocks_from_zero],
    "gram_matrix": [gram_unnormalised, gram_over_pixels, gram_by_positions_only, gram_centred, gram_batch_merged],
    "content_loss": [content_no_half, content_summed, content_l1],
    "style_loss": [style_no_quarter, style_weights_one, style_mean_over_entries, style_ignores_weights],
    "total_variation": [tv_one_direction, tv_absolute, tv_summed, tv_wraps_around],
    "masked_gram": [masked_gram_ignores_mask, masked_gram_normalised_by_size, masked_gram_mask_squared,
                    masked_gram_nearest, masked_gram_one_area_for_batch],
    "optimise_lbfgs": [lbfgs_no_closure, lbfgs_default_max_iter, lbfgs_no_zero_grad, lbfgs_is_adam, lbfgs_in_place],
}


def grade(exercise, fn) -> str | None:
    return run_checks(CHECKS, exercise, fn)


class TestGrader(GraderContract):
    SLUG, LESSON, CHECKS, MUTANTS = SLUG, lesson07, CHECKS, MUTANTS


def test_the_package_implementations_are_blocked_too():
    from faceedu.models import nst
    from faceedu.models.features import vgg_layer_names

    with pytest.raises(ReferenceUsed):
        CHECKS["gram_matrix"](lambda f: nst.gram_matrix(f))
    with pytest.raises(ReferenceUsed):
        CHECKS["masked_gram"](lambda f, m: nst.masked_gram_matrix(f, m))
    with pytest.raises(ReferenceUsed):
        CHECKS["optimise_lbfgs"](lambda fn, x, n: nst.lbfgs(fn, x, n))
    with pytest.raises(ReferenceUsed):
        CHECKS["total_variation"](lambda x: nst.total_variation(x))

    def uses_names(features, images, layers):
        index = vgg_layer_names(features)
        return {n: features[: index[n] + 1](images) for n in layers}

    with pytest.raises(ReferenceUsed):
        CHECKS["read_features"](uses_names)


def test_failure_messages_are_actionable():
    assert "in place" in grade("read_features", features_no_clone)
    assert "before the ReLU" in grade("read_features", features_relu_is_conv)
    assert "gradient" in grade("read_features", features_no_grad)
    assert "not normalised" in grade("gram_matrix", gram_unnormalised)
    assert "pixels, not channels" in grade("gram_matrix", gram_over_pixels)
    assert "one of the style layers" in grade("gatys_layers", layers_content_at_style_layer)
    assert "tutorial" in grade("gatys_layers", layers_tutorial_conv_4)
    assert "not applied" in grade("masked_gram", masked_gram_ignores_mask)
    assert "closure" in grade("optimise_lbfgs", lbfgs_no_closure)
    assert "max_iter" in grade("optimise_lbfgs", lbfgs_default_max_iter)
    assert "changed its input" in grade("optimise_lbfgs", lbfgs_in_place)
    assert "wraps around" in grade("total_variation", tv_wraps_around)
    assert "1/4" in grade("style_loss", style_no_quarter)
