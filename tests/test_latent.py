"""Latent arithmetic on a world where the truth is known: latents linear in the attributes."""

import pytest
import torch

from faceedu.latent import (
    apply_edit, attribute_vectors, entanglement_matrix, interpolate, orthogonalise, spectrum, stratified_vector,
)


def linear_world(n=4000, correlated=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    attrs = (torch.rand(n, 3, generator=g) < 0.5).float()
    if correlated:  # attribute 2 copies attribute 0 for 40% of the faces (phi ~ 0.4, as Blond/Eyeglasses)
        copy = torch.rand(n, generator=g) < 0.4
        attrs[copy, 2] = attrs[copy, 0]
    directions = torch.linalg.qr(torch.randn(16, 3, generator=g)).Q.T * 2.0   # (3, 16) orthogonal, norm 2
    mu = attrs @ directions + 0.1 * torch.randn(n, 16, generator=g)
    return mu, attrs, directions


def test_attribute_vectors_recover_the_true_directions():
    mu, attrs, directions = linear_world()
    vectors = attribute_vectors(mu, attrs)
    assert vectors.shape == (3, 16)
    assert torch.allclose(vectors, directions, atol=0.1)


def test_attribute_vector_needs_positives_and_negatives():
    mu, attrs, _ = linear_world(n=50)
    attrs[:, 1] = 1
    with pytest.raises(ValueError, match=r"\[1\].*no positive or no negative"):
        attribute_vectors(mu, attrs)


def test_correlation_leaks_into_the_vector_and_the_fixes_remove_it():
    mu, attrs, directions = linear_world(correlated=True)
    vectors = attribute_vectors(mu, attrs)
    along = lambda v, k: (v @ directions[k]) / directions[k].norm() ** 2  # noqa: E731 (units of attribute k)
    assert along(vectors[0], 2) > 0.3                   # v_0 carries attribute 2 along
    projected = orthogonalise(vectors[0], vectors[2:3])
    assert (projected @ vectors[2]).abs() < 1e-3
    assert abs(along(projected, 2)) < along(vectors[0], 2) and along(projected, 0) > 0.6
    stratified = stratified_vector(mu, attrs, target=0, hold=[2])
    assert torch.allclose(stratified, directions[0], atol=0.1)   # the true direction, no leak


def test_edits_spectra_and_interpolation_shapes_and_values():
    z = torch.zeros(4, 16)
    v = torch.ones(16)
    assert torch.equal(apply_edit(z, v, 2.0), torch.full((4, 16), 2.0))
    per_face = apply_edit(z, v, torch.tensor([0.0, 1.0, -1.0, 2.0]))
    assert torch.equal(per_face[:, 0], torch.tensor([0.0, 1.0, -1.0, 2.0]))
    decode = lambda z: z[:, :3].reshape(-1, 3, 1, 1)  # noqa: E731
    rows = spectrum(decode, z, v, scales=(-2, 0, 2))
    assert rows.shape == (4, 3, 3, 1, 1) and rows[0, 0, 0, 0, 0] == -2 and rows[0, 2, 0, 0, 0] == 2
    path = interpolate(torch.zeros(16), torch.ones(16), steps=5)
    assert torch.allclose(path[:, 0], torch.tensor([0, 0.25, 0.5, 0.75, 1.0]))


def test_entanglement_matrix_sees_success_and_leakage():
    mu, attrs, directions = linear_world(correlated=True)
    vectors = attribute_vectors(mu, attrs)
    judge = lambda images: (images.flatten(1) @ directions.T / 4.0)  # noqa: E731 (projection: ~attribute)
    decode = lambda z: z.reshape(-1, 16, 1, 1)  # noqa: E731
    negatives = mu[(attrs == 0).all(1)][:200]
    matrix = entanglement_matrix(decode, judge, negatives, vectors, scale=1.5)
    assert matrix.shape == (3, 3)
    assert matrix[0, 0] > 0.9 and matrix[1, 1] > 0.9
    assert matrix[0, 2] > 0.5 and matrix[1, 0] < 0.1      # v_0 flips attribute 2 too; v_1 is clean
    cleaned = orthogonalise(vectors[0], vectors[2:3])
    fixed = entanglement_matrix(decode, judge, negatives, cleaned[None], scale=1.5)
    assert fixed[0, 2] < 0.5 * matrix[0, 2] and fixed[0, 0] > 0.9
