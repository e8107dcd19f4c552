"""Pixels between the data's [0, 1] (or uint8) and the [-1, 1] of generators with a tanh output (DCGAN's
convention), shared by the models that train in that range (the Fader Network, DIAT)."""

from __future__ import annotations

import torch


def to_model(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] (or uint8) -> [-1, 1]."""
    images = images.float().div(255) if images.dtype == torch.uint8 else images.float()
    return images * 2 - 1


def to_image(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1]."""
    return (x.float().clamp(-1, 1) + 1) / 2
