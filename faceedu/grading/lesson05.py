"""Lesson 05 "Fader Networks": the reference for each exercise and the checks the notebook calls.

Exercises (one concept each):
  1. ``decode_layers``             - the decoder, with the attributes as constant one-hot maps [1 - y, y]
                                     concatenated after the features at the input of every layer
  2. ``lat_dis_loss``              - the latent discriminator's loss: cross-entropy of each attribute's pair of
                                     logits against y, summed over attributes (eq. 1)
  3. ``encoder_adversarial_loss``  - the encoder's adversarial term: the same against the flipped 1 - y (eq. 2)
  4. ``lambda_schedule``           - lambda_E: 0 until `start`, then linear to `lambda_max` over `ramp` steps (eq. 3)
  5. ``fader_step``                - one iteration: a discriminator update on a detached latent, then an
                                     auto-encoder update with lambda_E times the flipped loss

Each ``check_<exercise>(fn, hidden=False)`` compares ``fn`` with the reference (``faceedu.models.fader``)
on fixed and seeded random inputs: "probe" layers that record what each decoder layer receives (so a map
in the wrong place or order is named), and a tiny Fader Network whose one step, with SGD and a small clip,
shows every mistake in its weights. The references are blocked while ``fn`` runs.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn import functional as F

from faceedu.grading.core import Check
from faceedu.models import fader as FN
from faceedu.models.fader import (AutoEncoder, FaderConfig, LatentDiscriminator, decode_layers, encoder_adversarial_loss,
                                  fader_step, lambda_schedule, lat_dis_loss)

__all__ = ["decode_layers", "lat_dis_loss", "encoder_adversarial_loss", "lambda_schedule", "fader_step",
           "check_decode_layers", "check_lat_dis_loss", "check_encoder_adversarial_loss", "check_lambda_schedule",
           "check_fader_step", "tiny_fader"]

# What each exercise may not call (fader_step may use the networks, whose decoder is the reference decode_layers).
DECODE = (decode_layers, FN.one_hot, FN.attribute_maps, AutoEncoder.decode, AutoEncoder.forward)
LOSSES = (FN.attr_loss, lat_dis_loss, encoder_adversarial_loss)
SCHEDULE = (lambda_schedule, FN.config_lambda)
STEP = (fader_step,)


# --- shared inputs ---------------------------------------------------------------------------------------


class Probe(nn.Module):
    """Stands in for a decoder layer: records its input and passes the first `keep` channels on, doubled in
    size (so the next layer's features are this layer's)."""

    def __init__(self, keep: int):
        super().__init__()
        self.keep, self.seen = keep, []

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        self.seen.append(h.detach().clone())
        return F.interpolate(h[:, :self.keep], scale_factor=2.0, mode="nearest")


def probes(channels=(6, 5, 4)) -> nn.ModuleList:
    return nn.ModuleList(Probe(c) for c in channels[1:] + (3,))


def tiny_fader(attrs=("Male", "Smiling"), every_layer: bool = True, seed: int = 0, dropout: float = 0.0):
    """A 16x16 Fader Network (latent 8x4x4) and its latent discriminator (two conv layers with BatchNorm, then
    Linear 16), in eval mode; no dropout unless asked, so one step is deterministic."""
    torch.manual_seed(seed)
    config = FaderConfig(attrs=attrs, image_size=16, init_fm=4, max_fm=8, n_layers=2, hid_dim=16,
                         attr_layers="all" if every_layer else "input", lat_dis_dropout=dropout)
    ae, dis = AutoEncoder(config), LatentDiscriminator(config)
    with torch.no_grad():                                  # running statistics unlike any batch's own
        ae.train(), dis.train()
        for _ in range(3):
            x = torch.rand(8, 3, 16, 16) * 0.5
            dis(ae.encode(x))
            ae.decode(ae.encode(x), torch.ones(8, len(attrs)))
    return ae.eval(), dis.eval()


def _bound(c: Check, fn, *models) -> Check:
    """A Check that passes `models` (layers, networks, optimisers: changed in place by design) first without
    snapshotting them."""
    return Check(c.exercise, lambda *args, **kwargs: fn(*models, *args, **kwargs), c.hidden, blocked=c.blocked)


def _maps_of(h: torch.Tensor, channels: int) -> torch.Tensor:
    """The (B, channels) values of the last `channels` maps of h if they are constant over space, else NaN."""
    maps = h[:, -channels:]
    flat = maps.flatten(2)
    constant = (flat - flat[:, :, :1]).abs().amax(2) < 1e-6
    return torch.where(constant, flat[:, :, 0], torch.full_like(flat[:, :, 0], float("nan")))


# --- checks ------------------------------------------------------------------------------------------


def check_decode_layers(fn, hidden: bool = False) -> None:
    """Visible: probe layers record every layer's input: the features first, then 2 maps per attribute,
    constant over space, [1 - y_a, y_a] in attribute order, at every layer (every_layer=True) or the first
    only (False); fractional y (the fader) kept as is; then real transposed-conv layers against the reference.
    Hidden: one attribute, batch of 1, y as bool, a decoder with maps at the input only."""
    __tracebackhide__ = True
    c = Check("decode_layers", fn, hidden, blocked=DECODE)
    g = c.rng
    z = torch.randn(3, 6, 2, 2, generator=g)
    y = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.25, 1.0]])
    layers = probes()
    out = _bound(c, fn, layers).call(z, y)
    c.expect_tensor(out, shape=(3, 3, 16, 16), what="the decoded output of three probe layers",
                    hint="Run every layer in turn; each doubles the side (2 -> 4 -> 8 -> 16).")
    seen = [p.seen[-1] if p.seen else None for p in layers]
    c.expect(all(s is not None for s in seen), "some decoder layer was never called: run every layer of `layers`.")
    feats = (6, 5, 4)
    for i, (s, f) in enumerate(zip(seen, feats)):
        if s.shape[1] == f and i > 0:
            c.fail(f"decoder layer {i} received {f} channels, only the features: the attributes reach only the first "
                   f"layer. Fader Networks concatenate the attribute maps to the input of EVERY decoder layer "
                   f"(every_layer=True).")
        if s.shape[1] == f + 2 - 0 and s.shape[1] != f + 4:
            c.fail(f"decoder layer {i} received {s.shape[1]} channels for {f} features and 2 attributes: one "
                   f"channel per attribute? Each binary attribute is a one-hot PAIR of maps [1 - y, y] "
                   f"(2 channels), so 2 attributes add 4.")
        c.expect(s.shape[1] == f + 4, f"decoder layer {i} should receive {f} feature channels + 4 attribute maps "
                                      f"(2 attributes x 2), got {s.shape[1]} channels.")
        c.expect(s.shape[-1] == 2 * 2 ** i, f"decoder layer {i} received maps of side {s.shape[-1]}, expected "
                                            f"{2 * 2 ** i}: the maps must have the side of the features they join.")
        before = z if i == 0 else F.interpolate(seen[i - 1][:, :f], scale_factor=2.0, mode="nearest")
        if torch.allclose(s[:, -f:], before, atol=1e-6) and not torch.allclose(s[:, :f], before, atol=1e-6):
            c.fail("the attribute maps come BEFORE the features in your concatenation: put the features first, "
                   "torch.cat([h, maps], dim=1), as the layers' weights expect (the official code does).")
        c.expect_close(s[:, :f], before, what=f"the features at the input of decoder layer {i}", atol=1e-6,
                       hint="Layer i receives the previous layer's output, then the maps.")
        maps = _maps_of(s, 4)
        c.expect(not torch.isnan(maps).any(), f"the last 4 channels at decoder layer {i} are not constant over "
                                              "space: each attribute value becomes a map filled with that value "
                                              "(expand the (B, 2A) codes to (B, 2A, s, s)).")
        expected = FN.one_hot(y)
        swapped = torch.stack([y, 1 - y], 2).flatten(1)
        grouped = torch.cat([1 - y, y], 1)
        if torch.allclose(maps, swapped, atol=1e-6):
            c.fail("your one-hot maps are in the wrong channel order: per attribute the pair is [1 - y, y] "
                   "(channel 2a = absent, 2a + 1 = present), as the trained decoder expects; yours is [y, 1 - y].")
        if torch.allclose(maps, grouped, atol=1e-6):
            c.fail("your maps list every 'absent' channel first, then every 'present' one: keep each attribute's "
                   "pair together, [1 - y_0, y_0, 1 - y_1, y_1] (stack on a new last dim, then flatten).")
        if torch.allclose(maps, FN.one_hot(y.round()), atol=1e-6):
            c.fail("the fractional value y = 0.25 became a hard 0/1: build the pair as [1 - y, y] from the values "
                   "themselves (not F.one_hot of rounded labels), so the fader can slide between them.")
        c.expect_close(maps, expected, what=f"the attribute maps at decoder layer {i}",
                       hint="Per attribute a, two constant maps with values 1 - y_a and y_a, in attribute order.")
    first_only = probes()
    _bound(c, fn, first_only).call(z, y, every_layer=False)
    c.expect(first_only[0].seen[-1].shape[1] == 10 and first_only[1].seen[-1].shape[1] == 5,
             "with every_layer=False only the first layer receives the maps (the 2018 variant); the others get "
             "the features alone.")
    ae, _ = tiny_fader()
    zz = torch.randn(4, 8, 4, 4, generator=g)
    yy = (torch.rand(4, 2, generator=g) > 0.5).float()
    with torch.no_grad():
        expected = decode_layers(ae.dec_layers, zz, yy)
    got = _bound(c, fn, ae.dec_layers).call(zz, yy)
    c.expect_close(got, expected, what="the output of a real decoder (transposed convs)", atol=1e-5)
    if hidden:
        one = probes((6, 5, 4))
        y1 = torch.tensor([[0.7]])
        _bound(c, fn, one).call(z[:1], y1)
        c.expect_close(_maps_of(one[2].seen[-1], 2), torch.tensor([[0.3, 0.7]]),
                       what="the maps of one attribute with y = 0.7 at the last layer", atol=1e-6)
        c.expect_close(_bound(c, fn, ae.dec_layers).call(zz, yy.bool()), expected, what="the output for bool attributes", atol=1e-5,
                       hint="Convert y with y.float() (or .to(h.dtype)) before building the maps.")
        ae_in, _ = tiny_fader(every_layer=False)
        with torch.no_grad():
            expected = decode_layers(ae_in.dec_layers, zz, yy, every_layer=False)
        c.expect_close(_bound(c, fn, ae_in.dec_layers).call(zz, yy, every_layer=False), expected,
                       what="the output of a decoder with the maps at its input only", atol=1e-5)
    c.done()


def _loss_inputs(c: Check, n: int = 12, attrs: int = 3):
    logits = torch.randn(n, 2 * attrs, generator=c.rng) * 2
    y = (torch.rand(n, attrs, generator=c.rng) > 0.5).float()
    return logits, y


def _common_loss_mistakes(c: Check, out: torch.Tensor, logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor,
                          flipped_name: str) -> None:
    __tracebackhide__ = True
    pairs = logits.view(len(logits), -1, 2)
    per = torch.stack([F.cross_entropy(pairs[:, a], target[:, a].long()) for a in range(pairs.shape[1])])
    if torch.allclose(out, per.mean(), atol=1e-5):
        c.fail("you averaged over the attributes; the official loss SUMS the cross-entropies of the attributes "
               "(each averaged over the faces).")
    bce = F.binary_cross_entropy_with_logits(pairs[:, :, 1], target.float())
    if torch.allclose(out, bce, atol=1e-5) or torch.allclose(out, bce * pairs.shape[1], atol=1e-5):
        c.fail("you used a sigmoid on one logit per attribute; the discriminator gives a PAIR of logits per "
               "attribute (absent, present): a softmax cross-entropy over each pair.")
    other = 1 - target
    wrong = sum(F.cross_entropy(pairs[:, a], other[:, a].long()) for a in range(pairs.shape[1]))
    if torch.allclose(out, wrong, atol=1e-5):
        c.fail(flipped_name)


def check_lat_dis_loss(fn, hidden: bool = False) -> None:
    """Visible: a scalar; equal to the reference on random logits; not the flipped labels, not a mean over
    attributes, not a sigmoid BCE; gradients reach the logits; 0 in the limit of perfect logits. Hidden:
    logits of +-200 (stable: log_softmax, not log(softmax)), one attribute, long and bool labels."""
    __tracebackhide__ = True
    c = Check("lat_dis_loss", fn, hidden, blocked=LOSSES)
    logits, y = _loss_inputs(c)
    logits.requires_grad_(True)
    out = c.call(logits, y)
    c.expect_tensor(out, shape=(), what="the discriminator's loss", hint="Return one number (a 0-d tensor).")
    _common_loss_mistakes(c, out.detach(), logits.detach(), y, y,
                          "you used the flipped labels 1 - y: that is the ENCODER's adversarial loss. The "
                          "discriminator learns to read the true attributes: cross-entropy against y.")
    c.expect_close(out, lat_dis_loss(logits.detach(), y), what="the loss", atol=1e-5,
                   hint="For each attribute a: F.cross_entropy(logits[:, 2a:2a+2], y[:, a].long()); sum them.")
    c.expect(out.requires_grad, "the loss carries no gradient: compute it from `logits` with torch operations "
                                "(no .item(), no numpy, no torch.no_grad()).")
    perfect = (torch.stack([1 - y, y], 2).flatten(1) * 2 - 1) * 50
    c.expect(float(c.call(perfect, y)) < 1e-6, "a discriminator that is certain and right should have a loss of "
                                               "~0; yours is not.")
    if hidden:
        extreme = (torch.stack([y, 1 - y], 2).flatten(1) * 2 - 1) * 200
        got = c.call(extreme, y)
        c.expect(torch.isfinite(got), "logits of +-200 gave inf or NaN: use F.cross_entropy (log_softmax), "
                                      "not torch.log(torch.softmax(...)), which underflows.")
        c.expect_close(got, lat_dis_loss(extreme, y), what="the loss for logits of +-200", atol=1e-3, rtol=1e-5)
        l1, y1 = _loss_inputs(c, 9, 1)
        c.expect_close(c.call(l1, y1), lat_dis_loss(l1, y1), what="the loss for one attribute", atol=1e-5)
        c.expect_close(c.call(logits.detach(), y.long()), lat_dis_loss(logits.detach(), y), what="the loss for long labels",
                       atol=1e-5)
        c.expect_close(c.call(logits.detach(), y.bool()), lat_dis_loss(logits.detach(), y), what="the loss for bool labels",
                       atol=1e-5, hint="Turn y into class indices with y.long() whatever its dtype.")
    c.done()


def check_encoder_adversarial_loss(fn, hidden: bool = False) -> None:
    """Visible: a scalar equal to the reference (cross-entropy against 1 - y, summed over attributes); not
    the unflipped loss, not its negative, not random flips; gradients reach the logits; ~0 when the
    discriminator confidently reads the flipped attributes. Hidden: logits of +-200, one attribute, long labels."""
    __tracebackhide__ = True
    c = Check("encoder_adversarial_loss", fn, hidden, blocked=LOSSES)
    logits, y = _loss_inputs(c)
    logits.requires_grad_(True)
    out = c.call(logits, y)
    c.expect_tensor(out, shape=(), what="the encoder's adversarial loss", hint="Return one number (a 0-d tensor).")
    plain = lat_dis_loss(logits.detach(), y)
    if torch.allclose(out.detach(), -plain, atol=1e-5):
        c.fail("you returned minus the discriminator's loss. Maximising P's error has no floor (it rewards a P that "
               "is confidently WRONG, which still reveals y); Fader Networks instead train the encoder so that P "
               "predicts the flipped attributes: cross-entropy against 1 - y.")
    _common_loss_mistakes(c, out.detach(), logits.detach(), 1 - y, 1 - y,
                          "the labels are not flipped: this is the discriminator's own loss, which the encoder would "
                          "then help to minimise - the latent would carry the attributes MORE. Use 1 - y.")
    again = c.call(logits.detach(), y)
    c.expect(torch.allclose(again, out.detach(), atol=1e-6),
             "two calls on the same input gave different losses: flip every label (1 - y); for a binary attribute "
             "the 'other value' is not random.")
    c.expect_close(out, encoder_adversarial_loss(logits.detach(), y), what="the loss", atol=1e-5,
                   hint="For each attribute a: F.cross_entropy(logits[:, 2a:2a+2], (1 - y[:, a]).long()); sum them.")
    c.expect(out.requires_grad, "the loss carries no gradient: the encoder learns through it.")
    fooled = (torch.stack([y, 1 - y], 2).flatten(1) * 2 - 1) * 50
    c.expect(float(c.call(fooled, y)) < 1e-6, "when the discriminator confidently reads the flipped attributes the "
                                              "encoder has won: its loss should be ~0.")
    if hidden:
        extreme = (torch.stack([1 - y, y], 2).flatten(1) * 2 - 1) * 200
        got = c.call(extreme, y)
        c.expect(torch.isfinite(got), "logits of +-200 gave inf or NaN: use F.cross_entropy (log_softmax).")
        c.expect_close(got, encoder_adversarial_loss(extreme, y), what="the loss for logits of +-200", atol=1e-3,
                       rtol=1e-5)
        l1, y1 = _loss_inputs(c, 9, 1)
        c.expect_close(c.call(l1, y1), encoder_adversarial_loss(l1, y1), what="the loss for one attribute", atol=1e-5)
        c.expect_close(c.call(logits.detach(), y.long()), encoder_adversarial_loss(logits.detach(), y),
                       what="the loss for long labels", atol=1e-5, hint="1 - y works on long labels too.")
    c.done()


def check_lambda_schedule(fn, hidden: bool = False) -> None:
    """Visible: the official schedule (1e-4 over 500,000 steps, start 0) at several steps; a delayed start
    (the 2018 variant); non-negative and rising, flat after the ramp. Hidden: ramp 0 (a step at `start`),
    float steps, a large lambda_max."""
    __tracebackhide__ = True
    c = Check("lambda_schedule", fn, hidden, blocked=SCHEDULE)
    steps = [0, 1, 1000, 250_000, 499_999, 500_000, 800_000]
    got = [c.call(s, 1e-4) for s in steps]
    for s, v in zip(steps, got):
        c.expect(isinstance(v, (float, int)) or (isinstance(v, torch.Tensor) and v.numel() == 1),
                 f"lambda at step {s} should be a number, got {type(v).__name__}.")
    got = [float(v) for v in got]
    if all(v == 0 for v in got):
        c.fail("lambda is stuck at 0: the encoder would never be asked to hide the attributes. It rises linearly "
               "from `start` to `lambda_max` over `ramp` steps.")
    if any(v < 0 for v in got):
        c.fail("lambda is negative: with the wrong sign the encoder HELPS the discriminator and the latent keeps "
               "the attributes. lambda_E = lambda_max * clip((step - start) / ramp, 0, 1) >= 0.")
    expected = [lambda_schedule(s, 1e-4) for s in steps]
    if got[-1] > 1.01e-4:
        c.fail(f"lambda keeps rising after the ramp (step 800,000: {got[-1]:.3g}); it stays at lambda_max "
               "(min(..., 1)).")
    for s, v, e in zip(steps, got, expected):
        c.expect(abs(v - e) <= 1e-12 + 1e-6 * e, f"lambda at step {s:,} should be {e:.4g} (the official schedule, "
                                                 f"1e-4 over 500,000 steps), got {v:.4g}.")
    delayed = {s: float(c.call(s, 0.02, start=300, ramp=700)) for s in (0, 300, 650, 1000, 1500)}
    for s, v in delayed.items():
        e = lambda_schedule(s, 0.02, 300, 700)
        if s == 650 and abs(v - 0.02 * 650 / 700) < 1e-9:
            c.fail("you ignored `start`: the ramp begins at step `start`, lambda is 0 before it: "
                   "(step - start) / ramp.")
        c.expect(abs(v - e) < 1e-9, f"with start=300, ramp=700, lambda_max=0.02: lambda at step {s} should be "
                                    f"{e:.4g}, got {v:.4g}.")
    if hidden:
        c.expect(float(c.call(99, 1.0, start=100, ramp=0)) == 0.0 and float(c.call(101, 1.0, start=100, ramp=0)) == 1.0,
                 "with ramp=0 lambda jumps from 0 to lambda_max after `start` (no division by zero).")
        c.expect(abs(float(c.call(1250.0, 2.0, start=1000, ramp=500)) - 1.0) < 1e-9,
                 "float steps should work too (lambda at 1250.0 with start 1000, ramp 500, max 2 is 1.0).")
    c.done()


def _variant_step(ae, dis, opt_ae, opt_dis, x, y, lam, clip, *, flip=True, sign=1.0, combined=False,
                  dis_train_in_ae=False, encode_train=False):
    """The reference step with one thing changed, to name a learner's mistake."""
    if combined:                                       # one backward for everything, both optimisers step
        ae.train(), dis.train()
        z, out = ae(x, y)
        loss = ((out - x) ** 2).mean() + lam * encoder_adversarial_loss(dis(z), y) + lat_dis_loss(dis(z), y)
        opt_ae.zero_grad(), opt_dis.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(dis.parameters(), clip)
        nn.utils.clip_grad_norm_(ae.parameters(), clip)
        opt_dis.step(), opt_ae.step()
        return
    ae.train(encode_train)
    with torch.no_grad():
        z = ae.encode(x)
    dis.train()
    loss = lat_dis_loss(dis(z), y)
    opt_dis.zero_grad()
    loss.backward()
    nn.utils.clip_grad_norm_(dis.parameters(), clip)
    opt_dis.step()
    ae.train()
    dis.train(dis_train_in_ae)
    z, out = ae(x, y)
    adv = encoder_adversarial_loss(dis(z), y) if flip else lat_dis_loss(dis(z), y)
    loss = ((out - x) ** 2).mean() + sign * lam * adv
    opt_ae.zero_grad()
    loss.backward()
    nn.utils.clip_grad_norm_(ae.parameters(), clip)
    opt_ae.step()


def _state(ae, dis) -> torch.Tensor:
    return torch.cat([t.detach().flatten().float() for m in (ae, dis) for t in m.state_dict().values()
                      if t.is_floating_point()])


def _weights(module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in module.parameters()])


def check_fader_step(fn, hidden: bool = False) -> None:
    """Visible (a tiny Fader Network, SGD, lam 0.5, clip 0.5): after one call every weight and BatchNorm
    statistic equals the reference's; the losses returned ("lat_dis", "rec", "enc_adv") equal the
    reference's; the mistakes named: the discriminator moved by the encoder's loss (no detach / one
    backward), lambda with the wrong sign or ignored, labels not flipped for the encoder, the discriminator
    left in training mode while it judges the encoder, the encoder in training mode for the discriminator's
    update, no gradient clipping. Hidden: a second step, lam 0, another model with 3 attributes."""
    __tracebackhide__ = True
    c = Check("fader_step", fn, hidden, blocked=STEP)
    g = c.rng
    x = torch.rand(6, 3, 16, 16, generator=g) * 2 - 1
    y = (torch.rand(6, 2, generator=g) > 0.5).float()
    lam, clip = 0.5, 0.5

    def fresh(seed=0, attrs=("Male", "Smiling")):
        ae, dis = tiny_fader(attrs, seed=seed)
        return ae, dis, torch.optim.SGD(ae.parameters(), lr=0.1), torch.optim.SGD(dis.parameters(), lr=0.1)

    def run(step_fn, **kwargs):
        ae, dis, oa, od = fresh()
        step_fn(ae, dis, oa, od, x.clone(), y.clone(), kwargs.pop("lam", lam), kwargs.pop("clip", clip), **kwargs)
        return ae, dis

    ae, dis, oa, od = fresh()
    start_ae, start_dis = _weights(ae), _weights(dis)
    logs = _bound(c, fn, ae, dis, oa, od).call(x, y, lam, clip)
    ref_ae, ref_dis = run(fader_step)
    c.expect(not torch.equal(_weights(dis), start_dis), "the latent discriminator did not change: update it first, "
                                                        "on its own loss (eq. 1), with opt_dis.step().")
    c.expect(not torch.equal(_weights(ae), start_ae), "the auto-encoder did not change: update it on eq. (2) with "
                                                      "opt_ae.step().")
    dis_ok = torch.allclose(_weights(dis), _weights(ref_dis), atol=1e-6)
    ae_ok = torch.allclose(_weights(ae), _weights(ref_ae), atol=1e-6)
    if not dis_ok:
        combined = run(_variant_step, combined=True)[1]
        if torch.allclose(_weights(dis), _weights(combined), atol=1e-6):
            c.fail("the discriminator was updated by the encoder's loss too (one backward for everything): its "
                   "update must use only its own loss on a DETACHED latent (encode under torch.no_grad() or "
                   ".detach()), and the auto-encoder's update must not step opt_dis.")
        train_encode = run(_variant_step, encode_train=True)[1]
        if torch.allclose(_weights(dis), _weights(train_encode), atol=1e-6):
            c.fail("you encoded for the discriminator's update with the encoder in training mode: as the official "
                   "lat_dis_step, put ae.eval() first (BatchNorm's running statistics; the update must not touch them).")
        noclip = run(fader_step, clip=1e9)[1]
        if torch.allclose(_weights(dis), _weights(noclip), atol=1e-6):
            c.fail("the discriminator's gradient norm was not clipped: call nn.utils.clip_grad_norm_(lat_dis.parameters(), "
                   "clip) between backward() and opt_dis.step().")
        c.fail("after your step the latent discriminator's weights differ from one update on eq. (1): encode x "
               "without gradient (encoder in eval mode), lat_dis in training mode, loss = lat_dis_loss(logits, y), "
               "zero_grad, backward, clip, opt_dis.step().")
    if not ae_ok:
        named = [("lambda has the wrong sign: the encoder must MINIMISE the flipped loss, loss = rec + lam * adv. With "
                  "-lam it helps the discriminator and the latent keeps the attributes.", dict(sign=-1.0)),
                 ("lambda was ignored (the auto-encoder moved as with lam = 0): add lam * "
                  "encoder_adversarial_loss(lat_dis(z), y) to the reconstruction loss.", dict(lam=0.0)),
                 ("the encoder's adversarial term uses the true labels, not the flipped 1 - y: the encoder would then "
                  "help the discriminator read y from the latent.", dict(flip=False)),
                 ("the discriminator was in training mode while it judged the encoder: call lat_dis.eval() before the "
                  "auto-encoder's update (no dropout; BatchNorm uses its running statistics and leaves them alone).",
                  dict(dis_train_in_ae=True))]
        for message, change in named:
            if torch.allclose(_weights(ae), _weights(run(_variant_step, **change)[0]), atol=1e-6):
                c.fail(message)
        if torch.allclose(_weights(ae), _weights(run(fader_step, clip=1e9)[0]), atol=1e-6):
            c.fail("the auto-encoder's gradient norm was not clipped: nn.utils.clip_grad_norm_(ae.parameters(), clip) "
                   "before opt_ae.step().")
        c.fail("after your step the auto-encoder's weights differ from one update on eq. (2): ae.train(), "
               "lat_dis.eval(), z, out = ae(x, y), loss = mean((out - x)^2) + lam * encoder_adversarial_loss("
               "lat_dis(z), y), zero_grad, backward, clip, opt_ae.step().")
    c.expect_close(_state(ae, dis), _state(ref_ae, ref_dis), what="the weights and BatchNorm statistics after one step",
                   atol=1e-6, hint="The discriminator must not update its BatchNorm statistics while it judges the "
                                   "encoder (lat_dis.eval()); the encoder not while it is encoded for P (ae.eval()).")
    c.expect_type(logs, dict, "what fader_step returns")
    ref_logs = fader_step(*fresh(), x.clone(), y.clone(), lam, clip)
    for key in ("lat_dis", "rec", "enc_adv"):
        c.expect(key in logs, f"the returned dict should hold {key!r} (the losses the training loop logs); it has "
                              f"{sorted(logs)}.")
        c.expect(abs(float(logs[key]) - float(ref_logs[key])) < 1e-5,
                 f"logs[{key!r}] should be {float(ref_logs[key]):.5g}, got {float(logs[key]):.5g}.")
    if hidden:
        _bound(c, fn, ae, dis, oa, od).call(x, y, lam, clip)
        fader_step(ref_ae, ref_dis, *[torch.optim.SGD(m.parameters(), lr=0.1) for m in (ref_ae, ref_dis)],
                   x.clone(), y.clone(), lam, clip)
        c.expect_close(_state(ae, dis), _state(ref_ae, ref_dis), what="the weights after a second step", atol=1e-5)
        ae0, dis0 = run(fader_step, lam=0.0)
        mine = fresh()
        _bound(c, fn, *mine).call(x, y, 0.0, clip)
        c.expect_close(_state(mine[0], mine[1]), _state(ae0, dis0), what="the weights after a step with lam = 0", atol=1e-6)
        ae3, dis3 = tiny_fader(("Male", "Smiling", "Eyeglasses"), seed=3)
        ae3r, dis3r = copy.deepcopy(ae3), copy.deepcopy(dis3)
        y3 = (torch.rand(6, 3, generator=g) > 0.5).float()
        _bound(c, fn, ae3, dis3, torch.optim.SGD(ae3.parameters(), lr=0.1),
               torch.optim.SGD(dis3.parameters(), lr=0.1)).call(x, y3, lam, clip)
        fader_step(ae3r, dis3r, torch.optim.SGD(ae3r.parameters(), lr=0.1), torch.optim.SGD(dis3r.parameters(), lr=0.1),
                   x.clone(), y3, lam, clip)
        c.expect_close(_state(ae3, dis3), _state(ae3r, dis3r), what="the weights of a 3-attribute model after one step",
                       atol=1e-6)
    c.done()
