"""Statistics of attribute tables: how often each attribute occurs and how attributes co-occur."""

from __future__ import annotations

import torch


def phi_matrix(attrs: torch.Tensor) -> torch.Tensor:
    """The phi coefficient between every pair of binary attributes: for (N, K) 0/1 values, a (K, K)
    float32 matrix ``phi[i, j] = cov(a_i, a_j) / (std(a_i) std(a_j))`` (population statistics), i.e. the
    Pearson correlation of 0/1 variables. An attribute that never varies has no correlation: its row and
    column are 0 (not NaN)."""
    x = attrs.to(torch.float64)
    x = x - x.mean(dim=0)                                   # (N, K) centred
    cov = x.T @ x / x.shape[0]                              # (K, K)
    std = cov.diagonal().clamp_min(0).sqrt()                # (K,)
    denom = std[:, None] * std[None, :]
    phi = torch.where(denom > 0, cov / denom.clamp_min(1e-300), torch.zeros_like(cov))
    return phi.to(torch.float32)
