"""faceedu.editing without a trained model: attribute vectors by name with helpful errors, correlated and
held attributes, and the conditional directions, in a latent space where the truth is known.
(test_editing_quality.py measures the real thing on the quick VAE.)"""

from __future__ import annotations

import pytest
import torch

from faceedu import editing
from faceedu.latent import orthogonalise


def linear_space(n: int = 3000, seed: int = 0) -> editing.LatentSpace:
    """Codes linear in three attributes: Blond_Hair, Eyeglasses (copies blond for 40% of faces, as
    SynthFaces does on purpose) and Smiling (independent); one constant column is dropped."""
    g = torch.Generator().manual_seed(seed)
    attrs = (torch.rand(n, 4, generator=g) < 0.5).float()
    copy = torch.rand(n, generator=g) < 0.4
    attrs[copy, 1] = attrs[copy, 0]
    attrs[:, 3] = 1                                                   # every face: no direction
    directions = torch.linalg.qr(torch.randn(12, 3, generator=g)).Q.T * 2.0
    mu = attrs[:, :3] @ directions + 0.05 * torch.randn(n, 12, generator=g)
    return editing.LatentSpace(None, mu, attrs, ["Blond_Hair", "Eyeglasses", "Smiling", "Young"]), directions


def test_vectors_by_name_and_close_matches():
    space, directions = linear_space()
    assert space.names == ["Blond_Hair", "Eyeglasses", "Smiling"]        # the constant column has no vector
    assert torch.allclose(space.vector("Smiling"), directions[2], atol=0.05)
    with pytest.raises(KeyError, match="Did you mean Eyeglasses"):
        space.vector("eyeglasses")
    with pytest.raises(KeyError, match="Did you mean Blond_Hair"):
        space.vector("Blonde_Hair")
    assert "Eyeglasses" in editing.close_matches("Glasses", space.names)
    assert editing.close_matches("Necktie", space.names) == ""


def test_correlated_held_and_conditional_directions():
    space, directions = linear_space()
    assert space.correlated("Blond_Hair") == ["Eyeglasses"] and space.held("Blond_Hair") == ["Eyeglasses"]
    assert space.correlated("Smiling") == []
    along_glasses = lambda v: float(v @ directions[1]) / 4.0              # noqa: E731 (units of the attribute)
    assert along_glasses(space.vector("Blond_Hair")) > 0.3                # the leak the data put in
    for mode in ("conditional", "stratified"):                              # the fixes remove it
        assert abs(along_glasses(space.direction("Blond_Hair", mode))) < 0.1, mode
    projected = space.direction("Blond_Hair", "projected")                # off the plain v_Eyeglasses, which
    assert abs(float(projected @ space.vector("Eyeglasses"))) < 1e-3       # carries blond too: it overshoots
    assert along_glasses(projected) < -0.1                                 # into "anti-glasses"
    conditional = space.direction("Blond_Hair", "conditional")
    assert float(conditional @ directions[0]) / 4.0 > 0.9                # blond itself is kept
    held = space.held_direction("Eyeglasses", "Blond_Hair")
    assert torch.allclose(conditional, orthogonalise(space.vector("Blond_Hair"), held[None]))
    assert torch.equal(space.direction("Smiling", "conditional"), space.vector("Smiling"))
    with pytest.raises(ValueError, match="mode must be"):
        space.direction("Smiling", "sideways")

