"""A few steps of the quick face VAE on the shared loop, launched by tests/test_ddp.py both as one process
and under `torchrun --nproc_per_node 2` (gloo on CPU): python ddp_worker.py RUN_DIR STEPS PER_RANK_BATCH."""

import sys
from dataclasses import replace
from pathlib import Path

import torch

from faceedu.data.tensors import FaceTensors
from faceedu.models.vae import preset
from faceedu.train.loop import LoopConfig
from faceedu.train.vae import train_vae


def faces(count: int = 128, size: int = 64) -> FaceTensors:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (count, 3, size, size), dtype=torch.uint8, generator=g)
    masks = (torch.rand(count, 1, size, size, generator=g) > 0.4).to(torch.uint8)
    return FaceTensors(images, torch.zeros(count, 2, dtype=torch.uint8), ["A", "B"], torch.arange(count), masks)


if __name__ == "__main__":
    run, steps, batch = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    torch.set_num_threads(1)
    config = replace(preset("quick"), batch_size=batch, bf16=False, channels_last=False)
    loop = LoopConfig(device="cpu", progress=False, log_every=1, sample_every=0, checkpoint_every=2)
    train_vae(config, run, run, steps=steps, loop=loop, dataset=faces(), preset_name="quick")
