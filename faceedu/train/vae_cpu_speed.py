"""The face VAE's training step on a CPU: wall, user and system seconds per step, and where the user time
goes. One side of the side-by-side timing against the original Keras code (docs/benchmarks.md, "The
face VAE on a CPU against the original"); the other side runs outside this project.

    python -m faceedu.train.vae_cpu_speed --preset full --threads 1 --warmup 2 --steps 3
    python -m faceedu.train.vae_cpu_speed --preset full --profile            # top operators by self CPU time

Prints one JSON line: images/s, seconds per step (wall, user, system), whether `import faceedu`'s
allocator setting is in effect (faceedu/allocator.py; FACEEDU_MALLOC=default turns it off to compare).
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from dataclasses import replace

import torch

from faceedu.allocator import STATE
from faceedu.models.vae import preset
from faceedu.train.vae import VAETask


def synthetic_batch(config, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    size = config.image_size
    return {"image": torch.rand(config.batch_size, 3, size, size, generator=g),
            "mask": (torch.rand(config.batch_size, 1, size, size, generator=g) > 0.5).float()}


def time_cpu_step(preset_name: str = "full", steps: int = 3, warmup: int = 2, batch_size: int | None = None,
                  **overrides) -> dict:
    """Seconds per `VAETask.step` (wall, and the process's user and system CPU time) after `warmup` steps."""
    config = preset(preset_name, **overrides)
    if batch_size:
        config = replace(config, batch_size=batch_size)
    task = VAETask(config)
    task.vae.train()
    batch = synthetic_batch(config)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.bf16)
    with autocast:
        for step in range(warmup):
            task.step(batch, step)
        usage, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        for step in range(steps):
            task.step(batch, warmup + step)
        wall = time.perf_counter() - start
    end = resource.getrusage(resource.RUSAGE_SELF)
    return {"preset": preset_name, "batch": config.batch_size, "threads": torch.get_num_threads(),
            "channels_last": config.channels_last, "bf16": config.bf16, "steps": steps,
            "images_per_s": round(steps * config.batch_size / wall, 3), "wall_s": round(wall / steps, 3),
            "user_s": round((end.ru_utime - usage.ru_utime) / steps, 3),
            "sys_s": round((end.ru_stime - usage.ru_stime) / steps, 3),
            "allocator": STATE["reason"] if not STATE["applied"] else "mallopt", "torch": torch.__version__}


def profile_cpu_step(preset_name: str = "full", warmup: int = 1, rows: int = 15, **overrides) -> str:
    """torch.profiler's table of one step, operators sorted by self CPU time."""
    from torch.profiler import ProfilerActivity, profile

    config = preset(preset_name, **overrides)
    task = VAETask(config)
    batch = synthetic_batch(config)
    for step in range(warmup):
        task.step(batch, step)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        task.step(batch, warmup)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="full")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--channels-last", choices=["preset", "on", "off"], default="preset")
    parser.add_argument("--bf16", choices=["preset", "on", "off"], default="preset")
    parser.add_argument("--profile", action="store_true", help="print the operator table of one step instead")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    overrides = {}
    if args.channels_last != "preset":
        overrides["channels_last"] = args.channels_last == "on"
    if args.bf16 != "preset":
        overrides["bf16"] = args.bf16 == "on"
    if args.profile:
        print(profile_cpu_step(args.preset, **overrides))
        return 0
    print(json.dumps(time_cpu_step(args.preset, args.steps, args.warmup, args.batch_size, **overrides)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
