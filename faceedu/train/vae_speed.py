"""The face VAE's training speed on a GPU, measured recipe by recipe: one prepared script that a lent GPU
runs in a few minutes (`python -m faceedu.train.vae_speed --out DIR`), writing `vae_speed.json`.

1. The training step alone (`VAETask.step`, full preset 144x144, a synthetic batch already on the device):
   the step as it was (a Python loop of two kernels per parameter for Keras' clipnorm, NCHW), then
   foreach clipping, channels_last, torch.compile and CUDA graphs (`mode="reduce-overhead"`), and
   larger batches.
2. The whole loop (`train_vae`: data gathered on the device, logging, sample grids, atomic checkpoints)
   at the recipes that won, on 144x144 uint8 faces held on the device; and how long gathering a batch
   takes against a step, to show the GPU does not wait on data.
3. Whether the larger batch costs quality: the quick preset on SynthFaces (generated there) at batch 32
   and at batch 256 with the learning rate scaled by sqrt(8), for the same number of images, judged by
   masked SSIM on the test split.
Every section is independent: one that fails records its error and the others still run.
"""

from __future__ import annotations

import argparse
import json
import math
import time
import traceback
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from faceedu.models.vae import VAEConfig, preset
from faceedu.train.loop import LoopConfig
from faceedu.train.vae import VAETask


def _python_loop_clip(parameters, max_norm: float) -> None:
    """The clipping as it was before foreach kernels (for the 'as before' row only)."""
    for p in parameters:
        if p.grad is not None:
            p.grad.mul_((max_norm / (p.grad.norm() + 1e-12)).clamp(max=1.0))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_step(config: VAEConfig, device: torch.device, bf16: bool, compile_mode: str | None = None,
              old_clip: bool = False, warmup: int = 15, steps: int = 40) -> dict[str, Any]:
    """images/s of VAETask.step on one synthetic batch (median-free: total time of `steps` steps)."""
    import faceedu.train.vae as vae_module

    task = VAETask(config, compile_mode=compile_mode)
    task.vae.to(device).train()
    g = torch.Generator().manual_seed(0)
    size = config.image_size
    batch = {"image": torch.rand(config.batch_size, 3, size, size, generator=g).to(device),
             "mask": (torch.rand(config.batch_size, 1, size, size, generator=g) > 0.5).float().to(device)}
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16)
    clip = vae_module.clip_per_parameter
    if old_clip:
        vae_module.clip_per_parameter = _python_loop_clip
    try:
        start = time.perf_counter()
        with autocast:
            for step in range(warmup):
                task.step(batch, step + 1)
            _sync(device)
            warm = time.perf_counter() - start
            start = time.perf_counter()
            for step in range(steps):
                task.step(batch, warmup + step + 1)
            _sync(device)
    finally:
        vae_module.clip_per_parameter = clip
    seconds = time.perf_counter() - start
    return {"batch": config.batch_size, "images_per_s": round(steps * config.batch_size / seconds, 1),
            "step_ms": round(1000 * seconds / steps, 3), "warmup_s": round(warm, 1)}


def step_recipes(device: torch.device) -> list[dict[str, Any]]:
    fast = preset("full")                                  # channels_last
    nchw = replace(fast, channels_last=False)
    cases = [
        ("as before: bf16, NCHW, clip in a Python loop", nchw, True, None, True),
        ("fp32, NCHW, foreach clip", nchw, False, None, False),
        ("bf16, NCHW, foreach clip", nchw, True, None, False),
        ("bf16, channels_last, foreach clip", fast, True, None, False),
        ("bf16, channels_last, torch.compile", fast, True, "default", False),
        ("bf16, channels_last, torch.compile + CUDA graphs", fast, True, "reduce-overhead", False),
    ]
    for batch in (128, 256, 512):
        cases.append((f"bf16, channels_last, foreach clip, batch {batch}", replace(fast, batch_size=batch), True, None, False))
    rows = []
    for name, config, bf16, mode, old in cases:
        row = {"recipe": name}
        try:
            row |= time_step(config, device, bf16, mode, old)
        except Exception as error:  # noqa: BLE001 - record and go on: every row is independent
            row["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"
        print(json.dumps(row), flush=True)
        rows.append(row)
        torch.compiler.reset()
    return rows


def random_faces(count: int, size: int, device: torch.device):
    from faceedu.data.tensors import FaceTensors

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (count, 3, size, size), dtype=torch.uint8, generator=g)
    masks = (torch.rand(count, 1, size, size, generator=g) > 0.3).to(torch.uint8)
    return FaceTensors(images, torch.zeros(count, 40, dtype=torch.uint8), [f"a{i}" for i in range(40)],
                       torch.arange(count), masks)


def loop_recipes(device: torch.device, out: Path) -> list[dict[str, Any]]:
    from faceedu.train.vae import train_vae

    data = random_faces(16_000, 144, device)
    rows = []
    for name, config, steps, mode in (
        ("full, batch 32, bf16, channels_last, CUDA graphs", replace(preset("full"), bf16=True), 1000,
         "reduce-overhead"),
        ("full, batch 32, bf16, channels_last", replace(preset("full"), bf16=True), 1000, None),
        ("full-large-batch preset (256)", preset("full-large-batch"), 400, None),
    ):
        row = {"recipe": name, "steps": steps}
        try:
            loop = LoopConfig(device=str(device), progress=False, log_every=50, sample_every=250, checkpoint_every=250)
            run = out / "runs" / name.split(",")[0].replace(" ", "-") / str(len(rows))
            summary = train_vae(config, run, run, steps=steps, loop=loop, dataset=data, preset_name="speed",
                                compile_mode=mode)
            row |= {"images_per_s": summary["images_per_s"], "seconds": summary["seconds"]}
        except Exception as error:  # noqa: BLE001
            row["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"
            traceback.print_exc()
        print(json.dumps(row), flush=True)
        rows.append(row)
        torch.compiler.reset()
    rows.append(gather_vs_step(data, device))
    print(json.dumps(rows[-1]), flush=True)
    return rows


def gather_vs_step(data, device: torch.device, batch: int = 256, repeats: int = 200) -> dict[str, Any]:
    """Milliseconds to gather one batch of 144x144 faces on the device (what the loop does per step)."""
    resident = data.to(device)
    index = torch.randint(0, len(data), (repeats, batch), device=device)
    resident.gather(index[0])
    _sync(device)
    start = time.perf_counter()
    for i in range(repeats):
        resident.gather(index[i])
    _sync(device)
    return {"recipe": f"gather one batch of {batch} on the device", "ms": round(1000 * (time.perf_counter() - start) / repeats, 4)}


def batch_quality(device: torch.device, out: Path) -> list[dict[str, Any]]:
    """The quick preset at batch 32 and at batch 256 (lr x sqrt(8), and lr unchanged), same images."""
    from faceedu.data.synthfaces import SynthConfig, ensure
    from faceedu.data.tensors import load_face_tensors
    from faceedu.train.vae import evaluate_vae, train_vae

    start = time.perf_counter()
    root = ensure(out / "synthfaces", SynthConfig(), verbose=False)
    print(json.dumps({"synthfaces_s": round(time.perf_counter() - start, 1)}), flush=True)
    quick = preset("quick")
    train = load_face_tensors(root, split="train", size=64, masks=True, crop=quick.crop)
    test = load_face_tensors(root, split="test", size=64, masks=True, crop=quick.crop)
    images = round(quick.epochs * quick.epoch_images)
    rows = []
    for batch, lr_scale in ((32, 1.0), (256, math.sqrt(8)), (256, 1.0)):
        config = replace(quick, batch_size=batch, lr=quick.lr * lr_scale, lr_min=quick.lr_min * lr_scale)
        row = {"batch": batch, "lr": config.lr, "images": images}
        try:
            loop = LoopConfig(device=str(device), progress=False, log_every=50, sample_every=0, checkpoint_every=10_000)
            summary = train_vae(config, out / "quality" / f"b{batch}-lr{config.lr:.2g}", root,
                                steps=images // batch, loop=loop, dataset=train, preset_name="quick")
            metrics = evaluate_vae(_trained(out / "quality" / f"b{batch}-lr{config.lr:.2g}"), test, device=device)
            row |= {"images_per_s": summary["images_per_s"], "seconds": summary["seconds"],
                    "masked_ssim": metrics["masked_ssim"], "ssim": metrics["ssim"], "mask_dice": metrics.get("mask_dice")}
        except Exception as error:  # noqa: BLE001
            row["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"
            traceback.print_exc()
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def _trained(run: Path):
    from faceedu.train.vae import load_run

    return load_run(run)[0]


def compile_recipes(device: torch.device, work: Path) -> list[dict[str, Any]]:
    """torch.compile and CUDA graphs in NCHW (channels_last tripped an inductor stride assertion in
    convolution_backward on torch 2.11), and the large-batch loop with GPU-scale checkpoint intervals."""
    from faceedu.train.vae import train_vae

    full = replace(preset("full"), bf16=True, channels_last=False)
    rows = []
    for name, mode in (("bf16, NCHW, torch.compile", "default"), ("bf16, NCHW, torch.compile + CUDA graphs", "reduce-overhead")):
        row = {"recipe": name}
        try:
            row |= time_step(full, device, True, mode, False, warmup=20)
        except Exception as error:  # noqa: BLE001
            row["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"
        print(json.dumps(row), flush=True)
        rows.append(row)
        torch.compiler.reset()
    row = {"recipe": "full-large-batch loop, checkpoint every 1,000 steps, samples every 500", "steps": 1000}
    loop = LoopConfig(device=str(device), progress=False, log_every=100, sample_every=500, checkpoint_every=1000)
    summary = train_vae(preset("full-large-batch"), work / "runs" / "large-1000", work, steps=1000, loop=loop,
                        dataset=random_faces(16_000, 144, device), preset_name="speed")
    row |= {"images_per_s": summary["images_per_s"], "seconds": summary["seconds"]}
    print(json.dumps(row), flush=True)
    return rows + [row]


SECTIONS = {"steps": step_recipes, "loop": loop_recipes, "quality": batch_quality, "compile": compile_recipes}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for vae_speed.json (sections merge into it)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/faceedu-vae-speed"), help="folder for the runs and data")
    parser.add_argument("--sections", default="steps,loop,quality", help="comma list of: " + ", ".join(SECTIONS))
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "vae_speed.json"
    report: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
    report |= {"torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M"),
               "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}
    for name in args.sections.split(","):
        start = time.perf_counter()
        try:
            fn = SECTIONS[name]
            report[name] = fn(device) if name == "steps" else fn(device, args.work)
        except Exception as error:  # noqa: BLE001
            report[name] = {"error": f"{type(error).__name__}: {error}"}
            traceback.print_exc()
        report[f"{name}_seconds"] = round(time.perf_counter() - start, 1)
        path.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
