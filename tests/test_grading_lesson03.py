"""Lesson 03's checks can fail: the reference solution passes every check (visible and hidden), the
released stubs fail every one, calling faceedu's own implementation is rejected, and every mutant - a
realistic mistake, written below next to its exercise - is rejected. The kill rate is printed."""

from __future__ import annotations

import torch

from faceedu.grading import lesson03
from gradertests import GraderContract, run_checks

SLUG = "03_latent_arithmetic"
CHECKS = {
    "encode": lesson03.check_encode,
    "attribute_vectors": lesson03.check_attribute_vectors,
    "edit_faces": lesson03.check_edit_faces,
    "spectrum": lesson03.check_spectrum,
    "entanglement_matrix": lesson03.check_entanglement_matrix,
    "orthogonalise": lesson03.check_orthogonalise,
}

# --- mutants: realistic wrong implementations -------------------------------------------------------


def _batches(images, batch_size):
    return [images[i:i + batch_size] for i in range(0, len(images), batch_size)]


def encode_logvar(vae, images, batch_size=256):
    """Keeps the second output of the encoder."""
    vae.eval()
    with torch.no_grad():
        return torch.cat([vae.encoder(b)[1] for b in _batches(images, batch_size)])


def encode_sampled(vae, images, batch_size=256):
    """Samples z = mu + sigma * eps, as in training."""
    vae.eval()
    with torch.no_grad():
        out = []
        for b in _batches(images, batch_size):
            mu, logvar = vae.encoder(b)
            out.append(mu + torch.exp(0.5 * logvar) * torch.randn_like(mu))
        return torch.cat(out)


def encode_train_mode(vae, images, batch_size=256):
    """Never calls vae.eval(): BatchNorm normalises with each batch's statistics."""
    with torch.no_grad():
        return torch.cat([vae.encoder(b)[0] for b in _batches(images, batch_size)])


def encode_keeps_graph(vae, images, batch_size=256):
    """Right codes, but with the autograd graph attached."""
    vae.eval()
    return torch.cat([vae.encoder(b)[0] for b in _batches(images, batch_size)])


def encode_drops_last_batch(vae, images, batch_size=256):
    """range(len // batch_size): the last, shorter batch is lost."""
    vae.eval()
    with torch.no_grad():
        return torch.cat([vae.encoder(images[i * batch_size:(i + 1) * batch_size])[0]
                          for i in range(max(1, len(images) // batch_size))])


def encode_ignores_batch_size(vae, images, batch_size=256):
    """Encodes every face in one batch, whatever batch_size says (passed even the hidden checks once)."""
    training = vae.training
    vae.eval()
    with torch.no_grad():
        codes = vae.encoder(images)[0]
    vae.train(training)
    return codes


def encode_leaves_eval_mode(vae, images, batch_size=256):
    """Right codes, but a model that was training comes back in eval mode (the text now asks to restore it)."""
    vae.eval()
    with torch.no_grad():
        return torch.cat([vae.encoder(chunk)[0] for chunk in images.split(batch_size)])


def vectors_reversed(mu, attrs):
    """Negatives minus positives."""
    y = attrs.to(mu.dtype)
    if bool(((y.sum(0) == 0) | ((1 - y).sum(0) == 0)).any()):
        raise ValueError("empty class")
    return (1 - y).T @ mu / (1 - y).sum(0)[:, None] - y.T @ mu / y.sum(0)[:, None]


def vectors_sums(mu, attrs):
    """Sums of each class instead of means."""
    y = attrs.to(mu.dtype)
    if bool(((y.sum(0) == 0) | ((1 - y).sum(0) == 0)).any()):
        raise ValueError("empty class")
    return y.T @ mu - (1 - y).T @ mu


def vectors_minus_overall_mean(mu, attrs):
    """Mean of the positives minus the mean of all faces."""
    y = attrs.to(mu.dtype)
    if bool(((y.sum(0) == 0) | ((1 - y).sum(0) == 0)).any()):
        raise ValueError("empty class")
    return y.T @ mu / y.sum(0)[:, None] - mu.mean(0)


def vectors_divide_by_n(mu, attrs):
    """Divides both class sums by the number of faces N."""
    y = attrs.to(mu.dtype)
    if bool(((y.sum(0) == 0) | ((1 - y).sum(0) == 0)).any()):
        raise ValueError("empty class")
    return (y.T @ mu - (1 - y).T @ mu) / len(mu)


def vectors_no_check(mu, attrs):
    """Right formula, but NaN instead of an error for an attribute with an empty class."""
    y = attrs.to(mu.dtype)
    return y.T @ mu / y.sum(0)[:, None] - (1 - y).T @ mu / (1 - y).sum(0)[:, None]


def vectors_float32_labels(mu, attrs):
    """Multiplies bool labels directly (fails) - works only for float labels."""
    if bool(((attrs.sum(0) == 0) | ((1 - attrs).sum(0) == 0)).any()):
        raise ValueError("empty class")
    return attrs.T @ mu / attrs.sum(0)[:, None] - (1 - attrs).T @ mu / (1 - attrs).sum(0)[:, None]


def _codes(vae, x):
    vae.eval()
    with torch.no_grad():
        return vae.encoder(x)


def edit_scale_twice(vae, x, vector, scale):
    """Scales the step, then scales it again: mu + scale * (scale * vector)."""
    step = scale * vector
    mu, _ = _codes(vae, x)
    with torch.no_grad():
        pred, mask = vae.decode(mu + scale * step)
    return pred * mask + x * (1 - mask)


def edit_sampled(vae, x, vector, scale):
    """Edits a sample z instead of mu."""
    mu, logvar = _codes(vae, x)
    with torch.no_grad():
        pred, mask = vae.decode(mu + torch.exp(0.5 * logvar) * torch.randn_like(mu) + scale * vector)
    return pred * mask + x * (1 - mask)


def edit_unedited_mask(vae, x, vector, scale):
    """Pastes the edited image with the mask of the unedited code."""
    mu, _ = _codes(vae, x)
    with torch.no_grad():
        _, mask = vae.decode(mu)
        pred, _ = vae.decode(mu + scale * vector)
    return pred * mask + x * (1 - mask)


def edit_no_composition(vae, x, vector, scale):
    """Returns the decoder's image without pasting it onto the input."""
    mu, _ = _codes(vae, x)
    with torch.no_grad():
        return vae.decode(mu + scale * vector)[0]


def edit_normalised_vector(vae, x, vector, scale):
    """Uses a unit vector: the scale no longer means 'one class-mean difference'."""
    mu, _ = _codes(vae, x)
    with torch.no_grad():
        pred, mask = vae.decode(mu + scale * vector / vector.norm())
    return pred * mask + x * (1 - mask)


def edit_train_mode(vae, x, vector, scale):
    """Right steps, but the model stays in whatever mode it was given."""
    with torch.no_grad():
        mu = vae.encoder(x)[0]
        pred, mask = vae.decode(mu + scale * vector)
    return pred * mask + x * (1 - mask)


SCALES = (-2, -1.5, -1, -0.5, 0, 0.5, 1, 1.5, 2)


def spectrum_scales_first(decode, z, vector, scales=SCALES):
    """Stacks along dim 0: (S, N, C, H, W)."""
    return torch.stack([decode(z + s * vector) for s in scales])


def spectrum_cumulative(decode, z, vector, scales=SCALES):
    """Keeps adding to the same code: each column starts from the previous one."""
    columns, code = [], z.clone()
    for s in scales:
        code = code + s * vector
        columns.append(decode(code))
    return torch.stack(columns, dim=1)


def spectrum_ignores_scales(decode, z, vector, scales=SCALES):
    """Uses its own evenly spaced scales from -2 to 2."""
    return torch.stack([decode(z + float(s) * vector) for s in torch.linspace(-2, 2, len(scales))], dim=1)


def spectrum_first_face(decode, z, vector, scales=SCALES):
    """Decodes the first face for every row."""
    return torch.stack([decode(z[:1] + s * vector).expand(len(z), *decode(z[:1]).shape[1:]) for s in scales], dim=1)


def _judged(judge, images):
    return judge(images) > 0.5


def entanglement_presence(decode, judge, z, vectors, scale):
    """How often each attribute is present after the edit, not how often it changes."""
    return torch.stack([_judged(judge, decode(z + scale * v)).float().mean(0) for v in vectors])


def entanglement_signed(decode, judge, z, vectors, scale):
    """Mean of after - before: removals cancel additions."""
    before = _judged(judge, decode(z)).float()
    return torch.stack([(_judged(judge, decode(z + scale * v)).float() - before).mean(0) for v in vectors])


def entanglement_transposed(decode, judge, z, vectors, scale):
    """(A, V) instead of (V, A)."""
    before = _judged(judge, decode(z))
    return torch.stack([(_judged(judge, decode(z + scale * v)) != before).float().mean(0) for v in vectors]).T


def entanglement_probabilities(decode, judge, z, vectors, scale):
    """Mean absolute change of the probabilities, no threshold."""
    before = judge(decode(z))
    return torch.stack([(judge(decode(z + scale * v)) - before).abs().mean(0) for v in vectors])


def entanglement_unit_scale(decode, judge, z, vectors, scale):
    """Forgets the scale: always adds the vector once."""
    before = _judged(judge, decode(z))
    return torch.stack([(_judged(judge, decode(z + v)) != before).float().mean(0) for v in vectors])


def orthogonalise_unnormalised(vector, others):
    """Subtracts (v . u) u without dividing by |u|^2."""
    out = vector.clone()
    for u in others:
        out = out - (vector @ u) * u
    return out


def orthogonalise_sequential(vector, others):
    """Projects off each direction in turn (wrong when they are not orthogonal to each other)."""
    out = vector.clone()
    for u in others:
        out = out - (out @ u) / (u @ u) * u
    return out


def orthogonalise_projection(vector, others):
    """Returns the projection instead of the residual."""
    U = others.T
    return (U @ torch.linalg.lstsq(U, vector[:, None]).solution)[:, 0]


def orthogonalise_unit_result(vector, others):
    """Right direction, but normalised to unit length."""
    U = others.T
    residual = vector - (U @ torch.linalg.lstsq(U, vector[:, None]).solution)[:, 0]
    return residual / residual.norm().clamp_min(1e-12)


def orthogonalise_summed_directions(vector, others):
    """Projects off the sum of the other directions, as if they were one."""
    u = others.sum(0)
    return vector - (vector @ u) / (u @ u) * u


MUTANTS = {
    "encode": [encode_logvar, encode_sampled, encode_train_mode, encode_keeps_graph, encode_drops_last_batch,
               encode_ignores_batch_size, encode_leaves_eval_mode],
    "attribute_vectors": [vectors_reversed, vectors_sums, vectors_minus_overall_mean, vectors_divide_by_n,
                          vectors_no_check, vectors_float32_labels],
    "edit_faces": [edit_scale_twice, edit_sampled, edit_unedited_mask, edit_no_composition, edit_normalised_vector,
                   edit_train_mode],
    "spectrum": [spectrum_scales_first, spectrum_cumulative, spectrum_ignores_scales, spectrum_first_face],
    "entanglement_matrix": [entanglement_presence, entanglement_signed, entanglement_transposed,
                            entanglement_probabilities, entanglement_unit_scale],
    "orthogonalise": [orthogonalise_unnormalised, orthogonalise_sequential, orthogonalise_projection,
                      orthogonalise_unit_result, orthogonalise_summed_directions],
}


# --- tests -------------------------------------------------------------------------------------------


def grade(exercise, fn) -> str | None:
    return run_checks(CHECKS, exercise, fn)


class TestGrader(GraderContract):
    SLUG, LESSON, CHECKS, MUTANTS = SLUG, lesson03, CHECKS, MUTANTS


def test_failure_messages_are_actionable():
    assert "logvar" in grade("encode", encode_logvar)
    assert "training mode" in grade("encode", encode_train_mode)
    assert "sample" in grade("encode", encode_sampled)
    assert "wrong way" in grade("attribute_vectors", vectors_reversed)
    assert "summed" in grade("attribute_vectors", vectors_sums)
    assert "unedited" in grade("edit_faces", edit_unedited_mask)
    assert "scale^2" in grade("edit_faces", edit_scale_twice)
    assert "(S, N, C, H, W)" in grade("spectrum", spectrum_scales_first)
    assert "accumulate" in grade("spectrum", spectrum_cumulative)
    assert "changes" in grade("entanglement_matrix", entanglement_presence)
    assert "cancel" in grade("entanglement_matrix", entanglement_signed)
    assert "unnormalised" in grade("orthogonalise", orthogonalise_unnormalised)
    assert "in turn" in grade("orthogonalise", orthogonalise_sequential)


def test_a_model_handed_over_in_training_mode_is_restored_by_the_reference():
    vae = lesson03.tiny_vae().train()
    lesson03.encode(vae, torch.rand(3, 3, 16, 16))
    assert vae.training
