"""Networks held fixed while another one learns through them."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def frozen(*modules: nn.Module | None) -> Iterator[None]:
    """Within the block, the trainable parameters of `modules` (None skipped) do not require gradients, so a
    backward pass through them computes no gradients for their weights: the generator's step of a GAN, whose
    loss passes through a discriminator that its own optimiser must not step (as the official CycleGAN code's
    `set_requires_grad(D, False)`). Gradients still flow through them to the inputs, and the values computed
    are the same bit for bit; only the discarded weight gradients are skipped. Restored on exit, also after
    an error; parameters frozen before the block stay frozen."""
    params = [p for m in modules if m is not None for p in m.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)
