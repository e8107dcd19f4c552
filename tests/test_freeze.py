"""faceedu.models.freeze.frozen: a network held fixed while another learns through it computes no gradient for
its own weights, passes the same gradient on, and is trainable again afterwards."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from faceedu.models.freeze import frozen


def _pair(seed: int = 0) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(seed)
    G = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 3, 3, padding=1))
    D = nn.Sequential(nn.Conv2d(3, 8, 4, 2, 1), nn.BatchNorm2d(8), nn.LeakyReLU(0.2), nn.Flatten(), nn.Linear(8 * 8 * 8, 1))
    return G, D


def test_a_frozen_network_passes_the_same_gradient_on_and_gets_none_itself():
    x = torch.randn(4, 3, 16, 16)
    G1, D1 = _pair()
    D1(G1(x)).mean().backward()                       # the plain way: D's weight gradients computed, then discarded
    G2, D2 = _pair()
    with frozen(D2):
        D2(G2(x)).mean().backward()
    for p, q in zip(G1.parameters(), G2.parameters()):
        assert torch.equal(p.grad, q.grad), "G's gradient must be the very same, bit for bit"
    assert all(p.grad is not None for p in D1.parameters())
    assert all(p.grad is None for p in D2.parameters()), "a frozen network's weights get no gradient"
    assert all(p.requires_grad for p in D2.parameters()), "trainable again after the block"


def test_frozen_restores_only_what_it_froze_also_after_an_error():
    G, D = _pair()
    D[0].weight.requires_grad_(False)                  # frozen before: stays frozen
    with pytest.raises(RuntimeError, match="inside"):
        with frozen(D, None, G):
            assert not any(p.requires_grad for p in [*D.parameters(), *G.parameters()])
            raise RuntimeError("inside")
    assert not D[0].weight.requires_grad
    assert all(p.requires_grad for name, p in D.named_parameters() if name != "0.weight")
    assert all(p.requires_grad for p in G.parameters())
