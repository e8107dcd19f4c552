"""`faceedu bench`: how fast each model trains here, and how close that is to what the machine can do.

For every available model and preset: training throughput (images/s from the median of timed steps after
warm-up), forward+backward FLOPs per image (counted by `torch.utils.flop_counter` over one real training
step), the achieved GFLOP/s, its ratio to this machine's measured matmul peak, and peak memory.

A model takes part by exposing, in its training module, `bench_tasks(preset) -> {name: (task, batch)}`:
the same Task the shared loop trains, and one batch. The modules listed in `MODULES` are tried; one
that does not exist yet (or has no `bench_tasks`) is skipped.

Timings on a shared machine move with its load: the load average is recorded with every result.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from faceedu.train.loop import pick_device, to_device

MODULES = ("faceedu.train.judge", "faceedu.train.vae", "faceedu.train.cgan", "faceedu.train.fader",
           "faceedu.train.diat", "faceedu.train.nst", "faceedu.train.cyclegan")


def discover(presets: Sequence[str], wanted: Sequence[str] | None = None) -> list[tuple[str, str, Any, dict]]:
    """(model, preset, task, batch) for every model that offers `bench_tasks` for these presets."""
    import importlib

    cases = []
    for module_name in MODULES:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        if not hasattr(module, "bench_tasks"):
            continue
        for preset in presets:
            try:
                tasks = module.bench_tasks(preset)
            except KeyError:  # this model has no such preset
                continue
            for name, (task, batch) in tasks.items():
                if not wanted or name in wanted or any(name.startswith(w + "-") for w in wanted):
                    cases.append((name, preset, task, batch))
    return cases


# --- machine --------------------------------------------------------------------------------------------

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: torch.device, dtype: torch.dtype = torch.float32, n: int = 2048, repeats: int = 5) -> float:
    """GFLOP/s of a square n x n matmul on `device` (median of `repeats`, after one warm-up)."""
    if device.type == "cuda":
        n = 8192
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        _sync(device)
        times.append(time.perf_counter() - start)
    return 2 * n ** 3 / statistics.median(times) / 1e9


def machine(device: torch.device) -> dict[str, Any]:
    info = {"torch": torch.__version__, "device": str(device), "threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _load() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


# --- memory ---------------------------------------------------------------------------------------------

def _rss_mb(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _reset_peak(device: torch.device) -> float | None:
    """Start a fresh peak; return the memory held now (MB)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device) / 2 ** 20
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: resets the peak resident set (VmHWM)
    except OSError:
        pass
    return _rss_mb("VmRSS")


def _peak(device: torch.device) -> float | None:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return _rss_mb("VmHWM")


# --- one case -------------------------------------------------------------------------------------------

def count_flops(task, batch: Any) -> int:
    """Forward + backward FLOPs of one training step (matmuls and convolutions, as FlopCounterMode counts)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        task.step(batch, 1)
    return counter.get_total_flops()


def bench_case(task, batch: Any, device: torch.device, steps: int = 10, warmup: int = 3, bf16: bool = False,
               peak_gflops: float | None = None) -> dict[str, Any]:
    """Time `task.step` on `batch`: warm-up steps, then `steps` timed ones; FLOPs from one counted step."""
    from faceedu.train.loop import batch_size

    for module in task.modules.values():
        module.to(device).train()
    for optimizer in task.optimizers.values():  # fresh optimisers made on CPU: move any state
        for state in optimizer.state.values():
            for k, v in state.items():
                if isinstance(v, torch.Tensor):
                    state[k] = v.to(device)
    batch = to_device(batch, device)
    images = batch_size(batch)
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16 and device.type == "cuda")
    before = _reset_peak(device)
    with autocast:
        for step in range(warmup):
            task.step(batch, step + 1)
        _sync(device)
        times = []
        for step in range(steps):
            start = time.perf_counter()
            task.step(batch, warmup + step + 1)
            _sync(device)
            times.append(time.perf_counter() - start)
        flops = count_flops(task, batch)
    peak = _peak(device)
    seconds = statistics.median(times)
    throughput = images / seconds
    per_image = flops / images
    achieved = per_image * throughput / 1e9
    return {"batch": images, "images_per_s": throughput, "step_ms": seconds * 1000,
            "step_ms_min": min(times) * 1000, "step_ms_max": max(times) * 1000,
            "gflop_per_image": per_image / 1e9, "achieved_gflops": achieved,
            "peak_fraction": achieved / peak_gflops if peak_gflops else None,
            "peak_memory_mb": peak, "memory_over_start_mb": max(0.0, peak - before) if peak is not None and before is not None else None,
            "bf16": bf16 and device.type == "cuda"}


def run(models: Sequence[str] | None = None, presets: Sequence[str] = ("quick",), device: str = "auto",
        steps: int = 10, warmup: int = 3, bf16: bool = False, verbose: bool = True,
        threads: int | None = None) -> dict[str, Any]:
    """Benchmark every available model x preset; return {"machine", "matmul_peak_gflops", "results"}.
    `threads` sets torch's CPU threads for the run (peak and models alike), then restores them."""
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _run(models, presets, device, steps, warmup, bf16, verbose)
    finally:
        torch.set_num_threads(previous)


def _run(models, presets, device, steps, warmup, bf16, verbose) -> dict[str, Any]:
    torch.manual_seed(0)
    dev = pick_device(device)
    dtype = torch.bfloat16 if bf16 and dev.type == "cuda" else torch.float32
    load_before = _load()
    peak = matmul_peak(dev, dtype)
    if verbose:
        print(f"Matmul peak on {dev} ({str(dtype).replace('torch.', '')}): {peak:,.0f} GFLOP/s")
    results = []
    for name, preset, task, batch in discover(presets, models):
        row = {"model": name, "preset": preset} | bench_case(task, batch, dev, steps, warmup, bf16, peak)
        row["load_average"] = _load()
        results.append(row)
        if verbose:
            print(f"  {name} [{preset}]: {row['images_per_s']:,.0f} images/s")
    return {"machine": machine(dev) | {"load_average_before": load_before},
            "matmul_peak_gflops": peak, "matmul_dtype": str(dtype).replace("torch.", ""),
            "command": "faceedu bench" + (" --bf16" if bf16 else "") + f" --threads {torch.get_num_threads()}", "date": time.strftime("%Y-%m-%d %H:%M"),
            "steps": steps, "warmup": warmup, "results": results}


# --- output ---------------------------------------------------------------------------------------------

COLUMNS = [("model", "model"), ("preset", "preset"), ("batch", "batch"), ("images_per_s", "images/s"),
           ("gflop_per_image", "GFLOP/image (fwd+bwd)"), ("achieved_gflops", "GFLOP/s"),
           ("peak_fraction", "of matmul peak"), ("memory_over_start_mb", "peak memory added (MB)")]


def _format(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if key == "peak_fraction":
        return f"{value:.1%}"
    if key == "gflop_per_image":
        return f"{value:.3f}"
    if isinstance(value, float):
        return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"
    return str(value)


def table(report: dict[str, Any]) -> str:
    from faceedu.metrics import format_table

    rows = [{title: _format(key, r.get(key)) for key, title in COLUMNS} for r in report["results"]]
    return format_table(rows, [title for _, title in COLUMNS]) if rows else "(no model offers bench_tasks)"


INTRO = (
    "# Benchmarks\n\n"
    "How fast each model's training step runs, from `faceedu bench` (median of the timed steps after the "
    "warm-up steps; FLOPs counted by `torch.utils.flop_counter` over one forward+backward step; the achieved "
    "GFLOP/s are those FLOPs times the images/s, next to a square matmul timed on the same threads; peak memory "
    "added is the rise of the process's resident peak during the case on CPU — approximate, as memory freed by "
    "an earlier case is reused — and the peak CUDA allocation on GPU).\n\n")


def _markers(report: dict[str, Any]) -> tuple[str, str]:
    """The comments that enclose a report's section in a docs page, one pair per device type."""
    kind = report["machine"]["device"].split(":")[0]
    return f"<!-- faceedu bench {kind}: made by the command below; edit outside the markers -->", \
        f"<!-- /faceedu bench {kind} -->"


def markdown(report: dict[str, Any]) -> str:
    """The report's section of a docs page, between its markers: the machine, the table, how to make it again."""
    m = report["machine"]
    head = "| " + " | ".join(t for _, t in COLUMNS) + " |\n|" + "|".join("---" for _ in COLUMNS) + "|\n"
    body = "".join("| " + " | ".join(_format(k, r.get(k)) for k, _ in COLUMNS) + " |\n" for r in report["results"])
    where = m.get("gpu") or f"{m['cpu']} ({m['cores']} cores), {m['threads']} thread{'s' if m['threads'] != 1 else ''}"
    begin, end = _markers(report)
    return (
        f"{begin}\n"
        f"Machine: {where}; torch {m['torch']}; device `{m['device']}`; measured matmul peak "
        f"{report['matmul_peak_gflops']:,.0f} GFLOP/s ({report['matmul_dtype']}); load average "
        f"{m.get('load_average_before')} when it started; {report['date']}; median of {report['steps']} "
        f"timed steps after {report['warmup']} warm-up steps.\n\n"
        + head + body +
        f"\nMake it again with `{report['command']} --json bench.json --markdown docs/benchmarks.md` "
        "(add `--device cuda --bf16` on a GPU): it rewrites only this section of the page. On a shared machine "
        "the numbers move with its load: compare rows taken together, not across runs. When other processes "
        "keep the cores busy, one thread per process (`--threads 1`, or `OMP_NUM_THREADS=1` for training) is "
        "more than twice as fast as two, because OpenMP's threads wait on each other.\n"
        f"{end}\n"
    )


def write_page(path: Path | str, report: dict[str, Any]) -> None:
    """Put the report's section into the docs page `path`: in place of the section of the same device type
    when the page has one, else at its end (a new page starts with its title and what the columns mean).
    Everything else on the page is kept."""
    path = Path(path)
    section = markdown(report)
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(INTRO + section)
        return
    page = path.read_text()
    begin, end = _markers(report)
    if begin in page and end in page:
        head, rest = page.split(begin, 1)
        page = head + section.rstrip("\n") + rest.split(end, 1)[1]
    else:
        page = page.rstrip("\n") + "\n\n" + section
    path.write_text(page)


def run_bench(args) -> int:
    """`faceedu bench`."""
    models = None if args.models == "all" else args.models.split(",")
    report = run(models, args.presets.split(","), args.device, args.steps, args.warmup, args.bf16, threads=args.threads)
    print(table(report))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        print(f"Wrote {args.json}")
    if args.markdown:
        write_page(args.markdown, report)
        print(f"Wrote the {report['machine']['device']} section of {args.markdown}")
    return 0
