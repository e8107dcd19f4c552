"""Neural style transfer in `faceedu bench`: one L-BFGS iteration (one loss evaluation: a forward and a
backward pass of the feature network through conv5_1) is one bench step on a batch of one image, so the
bench's images/s are iterations/s and 300 iterations take 300 / (images/s) seconds. Nothing is trained:
the pixels are the parameters (faceedu.models.nst)."""

from __future__ import annotations

import torch
from torch import nn

from faceedu.models.nst import NSTConfig, StyleTransfer

BENCH_SIZES = {"quick": (128, 256)}     # the lesson's goal (128 px) and the reference size (256 px)


class _Pixels(nn.Module):
    def __init__(self, size: int):
        super().__init__()
        self.x = nn.Parameter(torch.rand(1, 3, size, size))


class NSTBenchTask:
    """The Task interface of the shared loop around Gatys' objective: `step` is one L-BFGS iteration."""

    def __init__(self, size: int):
        from faceedu.models.features import load_feature_network

        self.size = size
        self.pixels = _Pixels(size)
        self.net = load_feature_network(verbose=False)
        self.modules = {"pixels": self.pixels, "features": self.net}
        self.optimizers = {"lbfgs": torch.optim.LBFGS(self.pixels.parameters(), lr=1.0, max_iter=1, history_size=100,
                                                      tolerance_grad=-1.0, tolerance_change=-1.0)}
        self.schedulers: dict = {}
        self.transfer: StyleTransfer | None = None

    def step(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, float]:
        if self.transfer is None or self.transfer.content.device != batch["content"].device:
            self.transfer = StyleTransfer(self.net, batch["content"], batch["style"], None, NSTConfig(size=self.size))
        optimizer = self.optimizers["lbfgs"]

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            loss = self.transfer.loss(self.pixels.x)
            loss.backward()
            return loss

        loss = optimizer.step(closure)
        return {"loss": float(loss.detach())}

    def samples(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.pixels.x.detach().clamp(0, 1)


def bench_tasks(preset_name: str = "quick") -> dict[str, tuple[NSTBenchTask, dict]]:
    """For `faceedu bench`: Gatys' L-BFGS at 128 and 256 pixels on random content and style images."""
    sizes = BENCH_SIZES[preset_name]                   # KeyError for a preset NST does not have
    g = torch.Generator().manual_seed(0)
    tasks = {}
    for size in sizes:
        batch = {"content": torch.rand(1, 3, size, size, generator=g), "style": torch.rand(1, 3, size, size, generator=g)}
        tasks[f"nst-{size}"] = (NSTBenchTask(size), batch)
    return tasks
