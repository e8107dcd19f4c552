"""Lesson 06's checks can fail: the reference solution passes every check (visible and hidden), the
released stubs fail every one, calling faceedu's own implementation is rejected, and every mutant - a
realistic mistake, written below next to its exercise - is rejected with a message. The kill rate is printed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from faceedu.grading import lesson06
from faceedu.grading.core import ReferenceUsed
from gradertests import GraderContract, run_checks

SLUG = "06_diat"
CHECKS = {
    "residual_block": lesson06.check_residual_block,
    "identity_loss": lesson06.check_identity_loss,
    "attribute_losses": lesson06.check_attribute_losses,
    "hull_mask": lesson06.check_hull_mask,
    "compose": lesson06.check_compose,
    "perceptual_terms": lesson06.check_perceptual_terms,
    "diat_step": lesson06.check_diat_step,
}

# --- mutants: the residual block ----------------------------------------------------------------------------


class _Block(nn.Module):
    def __init__(self, channels, norm="batch", pad="reflect", relu_after=False, skip=True, relu_second=False,
                 bias=True):
        super().__init__()
        make = (lambda c: nn.BatchNorm2d(c)) if norm == "batch" else (lambda c: nn.InstanceNorm2d(c, affine=True))
        padding = 0 if pad == "reflect" else 1
        self.pad = pad
        self.conv1, self.norm1 = nn.Conv2d(channels, channels, 3, padding=padding, bias=bias), make(channels)
        self.conv2, self.norm2 = nn.Conv2d(channels, channels, 3, padding=padding, bias=bias), make(channels)
        self.relu_after, self.skip, self.relu_second = relu_after, skip, relu_second

    def _p(self, h):
        return F.pad(h, (1, 1, 1, 1), mode="reflect") if self.pad == "reflect" else h

    def forward(self, x):
        h = F.relu(self.norm1(self.conv1(self._p(x))))
        h = self.norm2(self.conv2(self._p(h)))
        if self.relu_second:
            h = F.relu(h)
        out = x + h if self.skip else h
        return F.relu(out) if self.relu_after else out


def block_zero_padding(channels, norm="batch"):
    """Zero padding (padding=1 in the convs) instead of reflection padding."""
    return _Block(channels, norm, pad="zeros")


def block_relu_after_sum(channels, norm="batch"):
    """A ReLU after the sum (the original ResNet's block), which the transform network leaves out."""
    return _Block(channels, norm, relu_after=True)


def block_no_skip(channels, norm="batch"):
    """Forgets the skip: returns F(x) alone."""
    return _Block(channels, norm, skip=False)


def block_relu_on_both(channels, norm="batch"):
    """A ReLU after the second norm too."""
    return _Block(channels, norm, relu_second=True)


def block_no_bias(channels, norm="batch"):
    """Convolutions without bias."""
    return _Block(channels, norm, bias=False)


def block_ignores_norm(channels, norm="batch"):
    """Always BatchNorm, whatever `norm` asks for."""
    return _Block(channels, "batch")


# --- mutants: the identity loss ------------------------------------------------------------------------------


def id_output_only(phi, x, out, weights):
    """Identity features from the output only (no input branch): sum w * mean(phi(out)^2)."""
    return sum(w * (b ** 2).mean() for w, b in zip(weights, phi(out)))


def id_weights_ignored(phi, x, out, weights):
    """The layer weights ignored: every layer counts 1."""
    with torch.no_grad():
        fx = phi(x)
    return sum(((a - b) ** 2).mean() for a, b in zip(fx, phi(out)))


def id_last_layer_only(phi, x, out, weights):
    """Only the deepest layer."""
    with torch.no_grad():
        fx = phi(x)
    return weights[-1] * ((fx[-1] - phi(out)[-1]) ** 2).mean()


def id_summed(phi, x, out, weights):
    """Squared differences summed instead of averaged per layer."""
    with torch.no_grad():
        fx = phi(x)
    return sum(w * ((a - b) ** 2).sum() for w, a, b in zip(weights, fx, phi(out)))


def id_pixels(phi, x, out, weights):
    """Compares pixels instead of features."""
    return sum(weights) * ((x - out) ** 2).mean()


def id_input_detached_output_too(phi, x, out, weights):
    """Everything under no_grad: the right value, but no gradient reaches T."""
    with torch.no_grad():
        return sum(w * ((a - b) ** 2).mean() for w, a, b in zip(weights, phi(x), phi(out)))


# --- mutants: the attribute losses --------------------------------------------------------------------------


def _bce(logits, target):
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


def adv_not_detached(D, with_attr, transformed):
    """D's loss on the transformed faces without detach(): D's update would move T too."""
    return _bce(D(with_attr), 1.0) + _bce(D(transformed), 0.0), _bce(D(transformed), 1.0)


def adv_saturating(D, with_attr, transformed):
    """T's loss as the saturating log(1 - D(T(x)))."""
    return _bce(D(with_attr), 1.0) + _bce(D(transformed.detach()), 0.0), -_bce(D(transformed), 0.0)


def adv_swapped_labels(D, with_attr, transformed):
    """D's real and fake targets swapped."""
    return _bce(D(with_attr), 0.0) + _bce(D(transformed.detach()), 1.0), _bce(D(transformed), 1.0)


def adv_smoothed(D, with_attr, transformed):
    """One-sided label smoothing 0.9 carried over from lesson 04."""
    return _bce(D(with_attr), 0.9) + _bce(D(transformed.detach()), 0.0), _bce(D(transformed), 1.0)


def adv_t_detached(D, with_attr, transformed):
    """T's loss on detached faces: no gradient reaches T."""
    return _bce(D(with_attr), 1.0) + _bce(D(transformed.detach()), 0.0), _bce(D(transformed.detach()), 1.0)


def adv_wrong_order(D, with_attr, transformed):
    """Returns (loss_t, loss_d)."""
    return _bce(D(transformed), 1.0), _bce(D(with_attr), 1.0) + _bce(D(transformed.detach()), 0.0)


def adv_sigmoid_log(D, with_attr, transformed):
    """sigmoid then log by hand: overflows for confident logits."""
    p, q = torch.sigmoid(D(with_attr)), torch.sigmoid(D(transformed.detach()))
    return -(torch.log(p).mean() + torch.log(1 - q).mean()), -torch.log(torch.sigmoid(D(transformed))).mean()


# --- mutants: the hull mask -----------------------------------------------------------------------------------


def _fill(points_per_face, size, transpose=False):
    from matplotlib.path import Path as Polygon
    from scipy.spatial import ConvexHull

    rows, cols = np.mgrid[0:size, 0:size]
    centres = np.stack([cols.ravel(), rows.ravel()], 1).astype(np.float64)
    masks = []
    for points in points_per_face:
        corners = points[ConvexHull(points).vertices]
        inside = Polygon(corners).contains_points(centres, radius=1e-9).reshape(size, size)
        masks.append(inside.T if transpose else inside)
    return torch.from_numpy(np.stack(masks)).float().unsqueeze(1)


def hull_wrong_indices_one_based(landmarks, indices, size):
    """Hull from the wrong landmark indices: the chart's 1-based numbers turned 0-based twice (index - 1)."""
    return _fill(landmarks[:, [i - 1 for i in indices]].double().numpy(), size)


def hull_swapped_xy(landmarks, indices, size):
    """Reads the landmarks as (y, x)."""
    return _fill(landmarks[:, list(indices)].flip(-1).double().numpy(), size)


def hull_transposed(landmarks, indices, size):
    """The mask indexed [x, y] instead of [row = y, column = x]."""
    return _fill(landmarks[:, list(indices)].double().numpy(), size, transpose=True)


def hull_all_landmarks(landmarks, indices, size):
    """The hull of all 68 points (the whole face), ignoring `indices`."""
    return _fill(landmarks.double().numpy(), size)


def hull_bounding_box(landmarks, indices, size):
    """The landmarks' bounding box instead of their convex hull."""
    pts = landmarks[:, list(indices)]
    lo, hi = pts.amin(1), pts.amax(1)
    ys, xs = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    return ((xs >= lo[:, None, None, 0]) & (xs <= hi[:, None, None, 0]) & (ys >= lo[:, None, None, 1])
            & (ys <= hi[:, None, None, 1])).float()[:, None]


def hull_points_only(landmarks, indices, size):
    """Marks only the pixels under the landmarks themselves, not the region they enclose."""
    mask = torch.zeros(len(landmarks), 1, size, size)
    pts = landmarks[:, list(indices)].round().long().clamp(0, size - 1)
    for b in range(len(landmarks)):
        mask[b, 0, pts[b, :, 1], pts[b, :, 0]] = 1
    return mask


# --- mutants: compose -----------------------------------------------------------------------------------------


def compose_masks_target_only(x, out, mask):
    """The mask applied to the target (T's output) instead of composing: mask * out, zeros outside."""
    return mask * out


def compose_swapped(x, out, mask):
    """Input inside the mask, output outside."""
    return mask * x + (1 - mask) * out


def compose_adds_input(x, out, mask):
    """mask * out + x: the input is not weighted by 1 - mask."""
    return mask * out + x


def compose_thresholds(x, out, mask):
    """Rounds a soft mask to 0/1 first."""
    hard = (mask > 0.5).float()
    return hard * out + (1 - hard) * x


# --- mutants: the perceptual terms ------------------------------------------------------------------------------


def pr_clean_target(f, g, x, out):
    """f trained to output the clean face (a denoiser that returns the image), regulariser f(out) - out."""
    den = None
    if g is not None:
        with torch.no_grad():
            noisy = g(x)
        den = ((f(noisy) - x) ** 2).mean()
    return den, ((f(out) - out) ** 2).mean()


def pr_sign_flipped(f, g, x, out):
    """The artefact's sign flipped: x - g(x)."""
    den = None
    if g is not None:
        with torch.no_grad():
            noisy = g(x)
        den = ((f(noisy) - (x - noisy)) ** 2).mean()
    return den, (f(out) ** 2).mean()


def pr_g_not_frozen(f, g, x, out):
    """g(x) computed with gradients: the denoiser's loss trains g as well."""
    den = None
    if g is not None:
        noisy = g(x)
        den = ((f(noisy) - (noisy - x)) ** 2).mean()
    return den, (f(out) ** 2).mean()


def pr_regulariser_summed(f, g, x, out):
    """The regulariser summed instead of averaged."""
    den = None
    if g is not None:
        with torch.no_grad():
            noisy = g(x)
        den = ((f(noisy) - (noisy - x)) ** 2).mean()
    return den, (f(out) ** 2).sum()


def pr_regulariser_detached(f, g, x, out):
    """The regulariser on out.detach(): no gradient reaches T."""
    den = None
    if g is not None:
        with torch.no_grad():
            noisy = g(x)
        den = ((f(noisy) - (noisy - x)) ** 2).mean()
    return den, (f(out.detach()) ** 2).mean()


# --- mutants: the step ------------------------------------------------------------------------------------------


def _parts(D, f, phi, source, real, out, weights):
    with torch.no_grad():
        fx = phi(source)
    idl = sum(w * ((a - b) ** 2).mean() for w, a, b in zip(weights, fx, phi(out)))
    pr = (f(out) ** 2).mean() if f is not None else torch.zeros(())
    return idl, pr


def _logs(loss_d, loss_t, adv, idl, pr):
    return {"d": loss_d.item(), "t": loss_t.item(), "attr": adv.item(), "id": float(idl.detach()), "pr": float(pr.detach())}


def step_d_updated_through_t(T, D, f, phi, opt_t, opt_d, source, real, config, weights):
    """D updated through T's loss: opt_d.step() after T's backward as well."""
    out = T(source)
    loss_d = _bce(D(real), 1.0) + _bce(D(out.detach()), 0.0)
    opt_d.zero_grad(); loss_d.backward(); opt_d.step()
    adv = _bce(D(out), 1.0)
    idl, pr = _parts(D, f, phi, source, real, out, weights)
    loss_t = config.lambda_attr * adv + config.lambda_id * idl + config.lambda_pr * pr
    opt_t.zero_grad(); opt_d.zero_grad(); loss_t.backward(); opt_t.step(); opt_d.step()
    return _logs(loss_d, loss_t, adv, idl, pr)


def step_one_backward(T, D, f, phi, opt_t, opt_d, source, real, config, weights):
    """One backward for D's and T's losses together, then both optimisers step."""
    out = T(source)
    loss_d = _bce(D(real), 1.0) + _bce(D(out.detach()), 0.0)
    adv = _bce(D(out), 1.0)
    idl, pr = _parts(D, f, phi, source, real, out, weights)
    loss_t = config.lambda_attr * adv + config.lambda_id * idl + config.lambda_pr * pr
    opt_t.zero_grad(); opt_d.zero_grad(); (loss_d + loss_t).backward(); opt_d.step(); opt_t.step()
    return _logs(loss_d, loss_t, adv, idl, pr)


def step_real_is_source(T, D, f, phi, opt_t, opt_d, source, real, config, weights):
    """D shown the input faces as its real ones (they lack the attribute)."""
    out = T(source)
    loss_d = _bce(D(source), 1.0) + _bce(D(out.detach()), 0.0)
    opt_d.zero_grad(); loss_d.backward(); opt_d.step()
    adv = _bce(D(out), 1.0)
    idl, pr = _parts(D, f, phi, source, real, out, weights)
    loss_t = config.lambda_attr * adv + config.lambda_id * idl + config.lambda_pr * pr
    opt_t.zero_grad(); loss_t.backward(); opt_t.step()
    return _logs(loss_d, loss_t, adv, idl, pr)


def step_no_identity(T, D, f, phi, opt_t, opt_d, source, real, config, weights):
    """Leaves the identity term out of T's loss."""
    out = T(source)
    loss_d = _bce(D(real), 1.0) + _bce(D(out.detach()), 0.0)
    opt_d.zero_grad(); loss_d.backward(); opt_d.step()
    adv = _bce(D(out), 1.0)
    idl, pr = _parts(D, f, phi, source, real, out, weights)
    loss_t = config.lambda_attr * adv + config.lambda_pr * pr
    opt_t.zero_grad(); loss_t.backward(); opt_t.step()
    return _logs(loss_d, loss_t, adv, idl, pr)


def step_t_moved_by_d(T, D, f, phi, opt_t, opt_d, source, real, config, weights):
    """D's loss on undetached faces and T's gradients zeroed only at the start: T also descends D's loss."""
    opt_t.zero_grad(); opt_d.zero_grad()
    out = T(source)
    loss_d = _bce(D(real), 1.0) + _bce(D(out), 0.0)
    loss_d.backward(retain_graph=True); opt_d.step()
    adv = _bce(D(out), 1.0)
    idl, pr = _parts(D, f, phi, source, real, out, weights)
    loss_t = config.lambda_attr * adv + config.lambda_id * idl + config.lambda_pr * pr
    opt_d.zero_grad(); loss_t.backward(); opt_t.step()
    return _logs(loss_d, loss_t, adv, idl, pr)


def step_lambdas_ignored(T, D, f, phi, opt_t, opt_d, source, real, config, weights):
    """Adds the three terms with weight 1 (config's lambdas ignored)."""
    out = T(source)
    loss_d = _bce(D(real), 1.0) + _bce(D(out.detach()), 0.0)
    opt_d.zero_grad(); loss_d.backward(); opt_d.step()
    adv = _bce(D(out), 1.0)
    idl, pr = _parts(D, f, phi, source, real, out, weights)
    loss_t = adv + idl + pr
    opt_t.zero_grad(); loss_t.backward(); opt_t.step()
    return _logs(loss_d, loss_t, adv, idl, pr)


MUTANTS = {
    "residual_block": [block_zero_padding, block_relu_after_sum, block_no_skip, block_relu_on_both, block_no_bias,
                       block_ignores_norm],
    "identity_loss": [id_output_only, id_weights_ignored, id_last_layer_only, id_summed, id_pixels,
                      id_input_detached_output_too],
    "attribute_losses": [adv_not_detached, adv_saturating, adv_swapped_labels, adv_smoothed, adv_t_detached,
                         adv_wrong_order, adv_sigmoid_log],
    "hull_mask": [hull_wrong_indices_one_based, hull_swapped_xy, hull_transposed, hull_all_landmarks,
                  hull_bounding_box, hull_points_only],
    "compose": [compose_masks_target_only, compose_swapped, compose_adds_input, compose_thresholds],
    "perceptual_terms": [pr_clean_target, pr_sign_flipped, pr_g_not_frozen, pr_regulariser_summed,
                         pr_regulariser_detached],
    "diat_step": [step_d_updated_through_t, step_one_backward, step_real_is_source, step_no_identity,
                  step_t_moved_by_d, step_lambdas_ignored],
}


# --- tests -------------------------------------------------------------------------------------------------------


def grade(exercise, fn) -> str | None:
    return run_checks(CHECKS, exercise, fn)


class TestGrader(GraderContract):
    SLUG, LESSON, CHECKS, MUTANTS = SLUG, lesson06, CHECKS, MUTANTS


def test_the_package_implementations_are_blocked_too():
    from faceedu.models import diat as DM

    with pytest.raises(ReferenceUsed):
        CHECKS["residual_block"](lambda channels, norm="batch": DM.ResidualBlock(channels, norm))
    with pytest.raises(ReferenceUsed):
        CHECKS["identity_loss"](lambda phi, x, out, w: DM.identity_loss(phi(x), phi(out), w))
    with pytest.raises(ReferenceUsed):
        CHECKS["attribute_losses"](lambda D, r, t: (DM.attribute_discriminator_loss(D(r), D(t.detach())),
                                                    DM.attribute_loss(D(t))))
    with pytest.raises(ReferenceUsed):
        CHECKS["hull_mask"](lambda lm, indices, size: DM.hull_mask(lm, indices, size))
    with pytest.raises(ReferenceUsed):
        CHECKS["compose"](lambda x, out, mask: DM.compose(x, out, mask))
    with pytest.raises(ReferenceUsed):
        CHECKS["perceptual_terms"](lambda f, g, x, out: (None if g is None else DM.denoiser_loss(f, g(x).detach(), x),
                                                         DM.perceptual_regulariser(f, out)))
    with pytest.raises(ReferenceUsed):
        CHECKS["diat_step"](lambda *args: DM.diat_step(*args))


def test_failure_messages_are_actionable():
    assert "INPUT's" in grade("identity_loss", id_output_only) or "input's" in grade("identity_loss", id_output_only)
    assert "weight" in grade("identity_loss", id_weights_ignored)
    assert "0-based" in grade("hull_mask", hull_wrong_indices_one_based)
    assert "bounding box" in grade("hull_mask", hull_bounding_box)
    assert "IS x" in grade("compose", compose_masks_target_only)
    assert "D was updated through T's loss" in grade("diat_step", step_d_updated_through_t)
    assert "WITH the attribute" in grade("diat_step", step_real_is_source)
    assert "detach" in grade("attribute_losses", adv_not_detached)
    assert "saturating" in grade("attribute_losses", adv_saturating)
    assert "ARTEFACT" in grade("perceptual_terms", pr_clean_target)
    assert "g is a fixed" in grade("perceptual_terms", pr_g_not_frozen)
    assert "reflection" in grade("residual_block", block_zero_padding).lower()
    assert "after the sum" in grade("residual_block", block_relu_after_sum)
