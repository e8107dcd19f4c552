"""Lesson 05's checks can fail: the reference solution passes every check (visible and hidden), the
released stubs fail every one, calling faceedu's own implementation is rejected, and every mutant - a
realistic mistake, written below next to its exercise - is rejected. The kill rate is printed."""

from __future__ import annotations

import random

import torch
from torch import nn
from torch.nn import functional as F

from faceedu.grading import lesson05
from gradertests import GraderContract

SLUG = "05_fader"
CHECKS = {
    "decode_layers": lesson05.check_decode_layers,
    "lat_dis_loss": lesson05.check_lat_dis_loss,
    "encoder_adversarial_loss": lesson05.check_encoder_adversarial_loss,
    "lambda_schedule": lesson05.check_lambda_schedule,
    "fader_step": lesson05.check_fader_step,
}

# --- mutants: realistic wrong implementations -------------------------------------------------------


def _maps(pairs, h):
    return pairs.to(h.dtype)[:, :, None, None].expand(-1, -1, h.shape[2], h.shape[3])


def _decode(layers, z, pairs, every_layer=True, first=False, only_first=False):
    h = z
    for i, layer in enumerate(layers):
        if (every_layer and not only_first) or i == 0:
            h = torch.cat([_maps(pairs, h), h] if first else [h, _maps(pairs, h)], dim=1)
        h = layer(h)
    return h


def decode_only_first_layer(layers, z, y, every_layer=True):
    """Attributes given only at the first decoder layer although every layer is asked."""
    y = y.float()
    return _decode(layers, z, torch.stack([1 - y, y], -1).flatten(1), every_layer, only_first=True)


def decode_swapped_pairs(layers, z, y, every_layer=True):
    """One-hot maps with the wrong channel order: [y, 1 - y]."""
    y = y.float()
    return _decode(layers, z, torch.stack([y, 1 - y], -1).flatten(1), every_layer)


def decode_grouped_pairs(layers, z, y, every_layer=True):
    """All 'absent' channels first, then all 'present' ones: torch.cat([1 - y, y], 1)."""
    y = y.float()
    return _decode(layers, z, torch.cat([1 - y, y], 1), every_layer)


def decode_maps_first(layers, z, y, every_layer=True):
    """The maps concatenated before the features."""
    y = y.float()
    return _decode(layers, z, torch.stack([1 - y, y], -1).flatten(1), every_layer, first=True)


def decode_hard_one_hot(layers, z, y, every_layer=True):
    """F.one_hot of the rounded labels: the fader's in-between values are lost."""
    return _decode(layers, z, F.one_hot(y.float().round().long(), 2).flatten(1), every_layer)


def lat_dis_mean(logits, y):
    """Averages the attributes' cross-entropies instead of summing them."""
    return torch.stack([F.cross_entropy(logits[:, 2 * a:2 * a + 2], y[:, a].long()) for a in range(y.shape[1])]).mean()


def lat_dis_flipped(logits, y):
    """The discriminator trained on the flipped labels."""
    return sum(F.cross_entropy(logits[:, 2 * a:2 * a + 2], (1 - y[:, a]).long()) for a in range(y.shape[1]))


def lat_dis_sigmoid(logits, y):
    """A sigmoid BCE on the 'present' logit of each pair."""
    return sum(F.binary_cross_entropy_with_logits(logits[:, 2 * a + 1], y[:, a].float()) for a in range(y.shape[1]))


def lat_dis_log_softmax_unstable(logits, y):
    """log(softmax) in two steps: inf for large logits."""
    total = 0
    for a in range(y.shape[1]):
        p = torch.softmax(logits[:, 2 * a:2 * a + 2], 1)
        total = total - torch.log(p.gather(1, y[:, a].long()[:, None])).mean()
    return total


def adv_not_flipped(logits, y):
    """Labels not flipped for the encoder: the discriminator's own loss."""
    return sum(F.cross_entropy(logits[:, 2 * a:2 * a + 2], y[:, a].long()) for a in range(y.shape[1]))


def adv_negated(logits, y):
    """Minus the discriminator's loss (maximise P's error) instead of the flipped labels."""
    return -adv_not_flipped(logits, y)


def adv_random_flip(logits, y):
    """Each label flipped at random with probability 1/2."""
    flip = (torch.rand(y.shape) < 0.5).long()
    target = (y.long() + flip) % 2
    return sum(F.cross_entropy(logits[:, 2 * a:2 * a + 2], target[:, a]) for a in range(y.shape[1]))


def adv_mean(logits, y):
    """Flipped, but averaged over the attributes."""
    return torch.stack([F.cross_entropy(logits[:, 2 * a:2 * a + 2], (1 - y[:, a]).long())
                        for a in range(y.shape[1])]).mean()


def lambda_stuck_at_zero(step, lambda_max, start=0, ramp=500_000):
    """Clips the wrong way round (min before max): always 0."""
    return lambda_max * max(min((step - start) / max(ramp, 1), 0.0), 0.0)


def lambda_integer_division(step, lambda_max, start=0, ramp=500_000):
    """(step - start) // ramp: 0 until the ramp's very end, then a jump."""
    return lambda_max * min(max(step - start, 0) // max(ramp, 1), 1)


def lambda_wrong_sign(step, lambda_max, start=0, ramp=500_000):
    """Negative lambda."""
    return -lambda_max * min(max(step - start, 0) / max(ramp, 1), 1.0)


def lambda_no_cap(step, lambda_max, start=0, ramp=500_000):
    """Keeps rising after the ramp."""
    return lambda_max * max(step - start, 0) / max(ramp, 1)


def lambda_ignores_start(step, lambda_max, start=0, ramp=500_000):
    """Ramps from step 0 whatever `start`."""
    return lambda_max * min(step / max(ramp, 1), 1.0)


def lambda_ramp_zero_crash(step, lambda_max, start=0, ramp=500_000):
    """Divides by ramp without a guard."""
    return lambda_max * min(max(step - start, 0) / ramp, 1.0)


def _step(ae, lat_dis, opt_ae, opt_dis, x, y, lam, clip, *, flip=True, sign=1.0, detach=True, dis_eval=True,
          encode_eval=True, clip_dis=True, clip_ae=True, dis_first=True):
    y = y.float()

    def dis_update():
        ae.train(not encode_eval)
        if detach:
            with torch.no_grad():
                z = ae.encode(x)
        else:
            z = ae.encode(x)
        lat_dis.train()
        logits = lat_dis(z)                  # once: each call in training mode moves BatchNorm's statistics
        loss = sum(F.cross_entropy(logits[:, 2 * a:2 * a + 2], y[:, a].long()) for a in range(y.shape[1]))
        opt_dis.zero_grad()
        loss.backward()
        if clip_dis:
            nn.utils.clip_grad_norm_(lat_dis.parameters(), clip)
        opt_dis.step()
        return loss

    def ae_update():
        ae.train()
        lat_dis.train(not dis_eval)
        z = ae.encode(x)
        out = ae.decode(z, y)
        rec = ((out - x) ** 2).mean()
        target = (1 - y) if flip else y
        logits = lat_dis(z)
        adv = sum(F.cross_entropy(logits[:, 2 * a:2 * a + 2], target[:, a].long()) for a in range(y.shape[1]))
        loss = rec + sign * lam * adv
        opt_ae.zero_grad()
        loss.backward()
        if clip_ae:
            nn.utils.clip_grad_norm_(ae.parameters(), clip)
        opt_ae.step()
        if not detach:                       # the encoder's loss also reached P, whose optimiser steps again
            opt_dis.step()
        return rec, adv

    if dis_first:
        d = dis_update()
        rec, adv = ae_update()
    else:
        rec, adv = ae_update()
        d = dis_update()
    return {"lat_dis": d.item(), "rec": rec.item(), "enc_adv": adv.item()}


def step_labels_not_flipped(ae, lat_dis, opt_ae, opt_dis, x, y, lam, clip=5.0):
    """The encoder's adversarial term uses the true labels."""
    return _step(ae, lat_dis, opt_ae, opt_dis, x, y, lam, clip, flip=False)


def step_no_detach(ae, lat_dis, opt_ae, opt_dis, x, y, lam, clip=5.0):
    """The discriminator is updated by the encoder's loss too (no detach; opt_dis steps after the AE's backward)."""
    ae.train(), lat_dis.train()
    z = ae.encode(x)
    out = ae.decode(z, y)
    logits = lat_dis(z)
    rec = ((out - x) ** 2).mean()
    d = sum(F.cross_entropy(logits[:, 2 * a:2 * a + 2], y[:, a].long()) for a in range(y.shape[1]))
    adv = sum(F.cross_entropy(logits[:, 2 * a:2 * a + 2], (1 - y[:, a]).long()) for a in range(y.shape[1]))
    opt_ae.zero_grad(), opt_dis.zero_grad()
    (rec + lam * adv + d).backward()
    nn.utils.clip_grad_norm_(lat_dis.parameters(), clip)
    nn.utils.clip_grad_norm_(ae.parameters(), clip)
    opt_dis.step(), opt_ae.step()
    return {"lat_dis": d.item(), "rec": rec.item(), "enc_adv": adv.item()}


def step_wrong_sign(ae, lat_dis, opt_ae, opt_dis, x, y, lam, clip=5.0):
    """loss = rec - lam * adv."""
    return _step(ae, lat_dis, opt_ae, opt_dis, x, y, lam, clip, sign=-1.0)


def step_lambda_ignored(ae, lat_dis, opt_ae, opt_dis, x, y, lam, clip=5.0):
    """lambda stuck at 0 inside the step: only the reconstruction trains the auto-encoder."""
    return _step(ae, lat_dis, opt_ae, opt_dis, x, y, 0.0, clip)


def step_dis_train_mode(ae, lat_dis, opt_ae, opt_dis, x, y, lam, clip=5.0):
    """The discriminator stays in training mode while it judges the encoder."""
    return _step(ae, lat_dis, opt_ae, opt_dis, x, y, lam, clip, dis_eval=False)


def step_no_clip(ae, lat_dis, opt_ae, opt_dis, x, y, lam, clip=5.0):
    """No gradient clipping."""
    return _step(ae, lat_dis, opt_ae, opt_dis, x, y, lam, clip, clip_dis=False, clip_ae=False)


def step_encoder_train_mode(ae, lat_dis, opt_ae, opt_dis, x, y, lam, clip=5.0):
    """Encodes for the discriminator's update with the encoder in training mode."""
    return _step(ae, lat_dis, opt_ae, opt_dis, x, y, lam, clip, encode_eval=False)


def step_ae_first(ae, lat_dis, opt_ae, opt_dis, x, y, lam, clip=5.0):
    """The auto-encoder updated before the discriminator."""
    return _step(ae, lat_dis, opt_ae, opt_dis, x, y, lam, clip, dis_first=False)


MUTANTS = {
    "decode_layers": [decode_only_first_layer, decode_swapped_pairs, decode_grouped_pairs, decode_maps_first,
                      decode_hard_one_hot],
    "lat_dis_loss": [lat_dis_mean, lat_dis_flipped, lat_dis_sigmoid, lat_dis_log_softmax_unstable],
    "encoder_adversarial_loss": [adv_not_flipped, adv_negated, adv_random_flip, adv_mean],
    "lambda_schedule": [lambda_stuck_at_zero, lambda_integer_division, lambda_wrong_sign, lambda_no_cap, lambda_ignores_start,
                        lambda_ramp_zero_crash],
    "fader_step": [step_labels_not_flipped, step_no_detach, step_wrong_sign, step_lambda_ignored, step_dis_train_mode,
                   step_no_clip, step_encoder_train_mode, step_ae_first],
}


class TestGrader(GraderContract):
    SLUG, LESSON, CHECKS, MUTANTS = SLUG, lesson05, CHECKS, MUTANTS


def test_mutant_messages_name_the_mistake():
    """The issue's mutants get the specific explanation, not only a generic mismatch."""
    random.seed(0)
    expected = {
        ("decode_layers", decode_only_first_layer): "EVERY decoder layer",
        ("decode_layers", decode_swapped_pairs): "wrong channel order",
        ("encoder_adversarial_loss", adv_not_flipped): "not flipped",
        ("lambda_schedule", lambda_stuck_at_zero): "stuck at 0",
        ("lambda_schedule", lambda_wrong_sign): "negative",
        ("fader_step", step_no_detach): "updated by the encoder's loss",
        ("fader_step", step_wrong_sign): "wrong sign",
        ("fader_step", step_labels_not_flipped): "not the flipped",
    }
    from gradertests import run_checks

    for (exercise, mutant), words in expected.items():
        message = run_checks(CHECKS, exercise, mutant)
        assert message is not None and words in message, f"{mutant.__name__}: {message}"
