"""The one training loop every model shares. It knows nothing of any model: a Task owns its networks,
optimisers and schedulers and says how one step reads (like the paper); the loop does the rest —
device, bf16 autocast (GPU, or a CPU with native bf16), progress with images/s, JSONL metrics, loss curves, sample grids,
atomic checkpoints with exact resume, a NaN guard, and DDP under torchrun.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
import contextlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"


@dataclass
class LoopConfig:
    """How long and how observably to train; model hyper-parameters live in each model's config."""

    steps: int = 1000
    batch_size: int = 32
    seed: int = 0
    device: str = "auto"          # auto: cuda if available, else mps, else cpu
    bf16: bool = False            # autocast to bfloat16 on CUDA, or on a CPU with native bf16 (else ignored)
    log_every: int = 25
    sample_every: int = 250       # 0: never
    checkpoint_every: int = 250   # also at the end
    num_workers: int = 0          # DataLoader workers; 0 keeps resume bit-exact on CPU
    data_on_device: bool = True   # in-memory tensor datasets (FaceTensors): moved to the device once, whole
                                  # batches gathered there (no per-item collation, no host-to-device copies)
    progress: bool = True


def loop_from_args(args) -> LoopConfig:
    """The loop's settings from a `faceedu train` command's flags: --device, --bf16 (where the command offers
    it), --no-progress, --sample-every, --checkpoint-every, --log-every."""
    return LoopConfig(device=args.device, bf16=getattr(args, "bf16", False), progress=not args.no_progress,
                      sample_every=args.sample_every, checkpoint_every=args.checkpoint_every, log_every=args.log_every)


@contextlib.contextmanager
def cpu_threads(count: int) -> Iterator[None]:
    """Run the block with `count` CPU threads (0: leave torch's default, all cores), restored afterwards. A
    quick preset whose figures the docs and the tests quote pins its count: the thread count sets how
    reductions are split, and a GAN's trajectory follows the rounding (docs/cyclegan.md, docs/fader.md)."""
    previous = torch.get_num_threads()
    if count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def data_root(args):
    """A `faceedu train` command's data folder: --root, with SynthFaces generated there first for --data synth."""
    if args.data != "synth":
        return args.root
    from faceedu.data.synthfaces import ensure

    return ensure(args.root, verbose=True)


class Task(Protocol):
    """What a model provides to the loop."""

    modules: dict[str, nn.Module]
    optimizers: dict[str, torch.optim.Optimizer]
    schedulers: dict[str, Any]

    def step(self, batch: Any, step: int) -> dict[str, torch.Tensor | float]:
        """One optimisation step on `batch` (already on the device); return the losses to log."""

    def samples(self, batch: Any) -> torch.Tensor:
        """Images (N, C, H, W) in [0, 1] that show how training goes, laid out as a grid by the loop."""


class TrainingDiverged(RuntimeError):
    """A loss became NaN or infinite; the last good checkpoint is kept."""


def pick_device(name: str = "auto") -> torch.device:
    """'auto' picks cuda, then mps, then cpu; an explicit name is checked and explained if unavailable."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"--device {name} was asked for but this torch sees no CUDA GPU; use --device cpu or auto.")
    return device


def native_bf16(device: torch.device) -> bool:
    """Whether bfloat16 autocast is fast here: a CUDA GPU with bf16, or a CPU whose oneDNN has native bf16
    (AVX512-BF16 / AMX). Elsewhere bf16 would be emulated, slower than float32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return False


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class ResumableSampler(Sampler[int]):
    """Shuffles each epoch with a seed of its own and can start mid-epoch, so a resumed run sees exactly
    the batches the uninterrupted run would have. Under DDP each rank takes every world_size-th index."""

    def __init__(self, length: int, seed: int, rank: int = 0, world_size: int = 1):
        self.length, self.seed, self.rank, self.world_size = length, seed, rank, world_size
        self.epoch, self.start = 0, 0

    def order(self) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return torch.randperm(self.length, generator=generator)[self.rank::self.world_size].tolist()

    def __iter__(self) -> Iterator[int]:
        return iter(self.order()[self.start:])

    def __len__(self) -> int:
        return len(range(self.rank, self.length, self.world_size)) - self.start


def batch_size(batch: Any) -> int:
    """Items in a batch that is a tensor, a tuple/list of tensors or a dict of tensors."""
    if isinstance(batch, dict):
        return len(next(iter(batch.values())))
    return len(batch[0] if isinstance(batch, (list, tuple)) else batch)


def _batches(loader: DataLoader, sampler: ResumableSampler, position: dict) -> Iterator[Any]:
    """Endless batches; `position` tracks (epoch, samples consumed this epoch) for the checkpoint."""
    while True:
        sampler.epoch, sampler.start = position["epoch"], position["offset"]
        for batch in loader:
            position["offset"] += batch_size(batch)
            yield batch
        position["epoch"] += 1
        position["offset"] = 0


def _gathered(dataset: Any, sampler: ResumableSampler, position: dict, batch: int,
              device: torch.device) -> Iterator[Any]:
    """The batches `_batches` would give (same order, same resume position, last partial batch dropped),
    gathered in one indexing operation each from a dataset whose tensors already live on `device`."""
    while True:
        sampler.epoch, sampler.start = position["epoch"], position["offset"]
        order = torch.tensor(list(sampler), dtype=torch.long, device=device)
        for i in range(0, len(order) - batch + 1, batch):
            position["offset"] += batch
            yield dataset.gather(order[i:i + batch])
        position["epoch"] += 1
        position["offset"] = 0


def to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch


# --- checkpoints ---------------------------------------------------------------------------------------

def _rng_state() -> dict:
    """Every RNG a step may draw from, in types that `torch.load(weights_only=True)` accepts."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
             "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    """Inverse of `_rng_state`. RNG states are CPU byte tensors whatever `map_location` moved them to
    (resuming on a GPU loads the checkpoint onto it)."""
    torch.set_rng_state(state["torch"].cpu())
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.cpu().numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def _unwrap(module: nn.Module) -> nn.Module:
    return module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module


@torch.no_grad()
def update_ema(average: torch.nn.Module, model: torch.nn.Module, decay: float, step: int) -> None:
    """average <- decay * average + (1 - decay) * model, weight by weight, with the decay warmed up as
    (1 + step) / (10 + step) early on (TensorFlow's ExponentialMovingAverage) so the first steps' noise
    washes out; BatchNorm's running statistics are copied from the model. The moving average
    that lessons 04 and 05 draw and reconstruct with (Karras et al. 2018; Yazici et al. 2019)."""
    decay = min(decay, (1 + step) / (10 + step))
    for a, p in zip(average.parameters(), model.parameters()):
        a.lerp_(p.detach().to(a.dtype), 1 - decay)
    for a, b in zip(average.buffers(), model.buffers()):
        a.copy_(b)


@torch.no_grad()
def recompute_batchnorm(model: torch.nn.Module, passes: Iterator[tuple]) -> torch.nn.Module:
    """BigGAN's "standing statistics" (Brock et al. 2019): reset the model's BatchNorm running statistics and
    re-estimate them as the plain average over `passes` (each a tuple of the model's arguments) in training
    mode, for weights that never made them (a moving average of the weights carries the last weights'
    statistics). The momenta are restored; returns the model in eval mode."""
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None                                            # a cumulative average over the passes
    model.train()
    for args in passes:
        model(*args)
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    return model.eval()


def save_atomic(obj: Any, path: Path) -> None:
    """torch.save to a temporary file, fsync, then rename: a crash never leaves a half-written file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "wb") as handle:
        torch.save(obj, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _rng_states(world: int) -> list[dict]:
    """Every rank's RNG states, gathered (collectively, under DDP) so that rank 0's checkpoint holds them all."""
    state = _rng_state()
    if world == 1:
        return [state]
    states: list[Any] = [None] * world
    torch.distributed.all_gather_object(states, state)
    return states


def save_checkpoint(task: Task, path: Path, step: int, position: dict, extra: dict | None = None,
                    rng: list[dict] | None = None) -> None:
    """`rng`: the RNG states of every rank (default: this process's alone)."""
    rng = rng or [_rng_state()]
    save_atomic({
        "step": step, "position": dict(position), "rng": rng[0], "rng_ranks": rng, "extra": extra or {},
        "modules": {k: _unwrap(m).state_dict() for k, m in task.modules.items()},
        "optimizers": {k: o.state_dict() for k, o in task.optimizers.items()},
        "schedulers": {k: s.state_dict() for k, s in task.schedulers.items()},
    }, path)


def read_run(run_dir: Path | str, model: str, what: str,
             map_location: torch.device | str = "cpu") -> tuple[dict, dict[str, dict]]:
    """A run folder's config.json (checked to hold a `model` run; `what` names it in the error) and the
    state dicts of its checkpoint's modules, for each model's `load_run`."""
    run_dir = Path(run_dir)
    described = json.loads((run_dir / "config.json").read_text())
    if described.get("model") != model:
        raise ValueError(f"{run_dir} holds a {described.get('model')!r} run, not {what}")
    state = torch.load(run_dir / CHECKPOINT, map_location=map_location, weights_only=True)
    return described, state["modules"]


def run_finished(run_dir: Path | str, model: str, steps: int | None = None) -> bool:
    """Whether `run_dir` holds a `model` run (config.json) whose checkpoint reached `steps` (default: the
    steps its config.json asked for). An interrupted run has both files too: only the checkpoint's step
    tells the two apart."""
    run_dir = Path(run_dir)
    try:
        described = json.loads((run_dir / "config.json").read_text())
        wanted = steps if steps is not None else described["loop"]["steps"]
        reached = torch.load(run_dir / CHECKPOINT, map_location="cpu", weights_only=True)["step"]
    except (OSError, ValueError, KeyError, RuntimeError):
        return False
    return described.get("model") == model and reached >= wanted


def load_checkpoint(task: Task, path: Path, map_location: torch.device | str = "cpu") -> dict:
    """Restore every module, optimiser, scheduler and RNG from `path`; return the checkpoint dict."""
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # a file from elsewhere, or one cut short before atomic writes existed
        raise RuntimeError(f"Cannot read checkpoint {path}: {error}\nDelete it (or pass another --run) to start afresh.") from error
    for key, module in task.modules.items():
        _unwrap(module).load_state_dict(state["modules"][key])
    for key, optimizer in task.optimizers.items():
        optimizer.load_state_dict(state["optimizers"][key])
    for key, scheduler in task.schedulers.items():
        scheduler.load_state_dict(state["schedulers"][key])
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    ranks = state.get("rng_ranks") or [state["rng"]]
    _set_rng_state(ranks[rank] if rank < len(ranks) else state["rng"])   # each rank resumes its own streams
    return state


# --- the loop ------------------------------------------------------------------------------------------

def _finite_losses(losses: dict[str, torch.Tensor | float], step: int, checkpoint: Path, every: int,
                   world: int) -> dict[str, float]:
    """The step's losses as floats (averaged over the ranks under DDP), or TrainingDiverged if one is not
    finite. Called only every `every` steps and before each checkpoint: reading a loss waits for the GPU,
    so doing it every step would stall the pipeline of queued kernels."""
    names = list(losses)
    values = torch.stack([torch.as_tensor(losses[k], dtype=torch.float32).detach().reshape(()).cpu() for k in names])
    if world > 1:
        torch.distributed.all_reduce(values)
        values /= world
    result = dict(zip(names, values.tolist()))
    bad = [k for k, v in result.items() if not math.isfinite(v)]
    if bad:
        kept = f"the last good checkpoint is kept at {checkpoint}" if checkpoint.exists() else "no checkpoint was written yet"
        checked = f" (losses are checked every {every} steps)" if every > 1 else ""
        raise TrainingDiverged(
            f"Loss {', '.join(repr(k) for k in bad)} became {result[bad[0]]} at step {step}{checked}; training "
            f"stopped and {kept}. Try a lower learning rate, gradient clipping, or check the data for broken images.")
    return result


def _distributed() -> tuple[int, int, bool]:
    """(rank, world_size, whether this call made the process group): initialises it when launched by torchrun."""
    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) == 1:
        return 0, 1, False
    made = not torch.distributed.is_initialized()
    if made:
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return torch.distributed.get_rank(), torch.distributed.get_world_size(), made


def train(task: Task, dataset: Dataset, run_dir: Path | str, config: LoopConfig, describe: dict | None = None) -> dict:
    """Train `task` on `dataset` for `config.steps` steps, resuming from `run_dir` if a checkpoint is there.
    Writes config.json, metrics.jsonl, loss_curves.png, samples/step_*.png and checkpoint.pt to `run_dir`;
    returns a summary with the throughput and the last losses."""
    from tqdm.auto import tqdm

    from faceedu.viz import plot_loss_curves, save_grid

    run_dir = Path(run_dir)
    rank, world, made_group = _distributed()
    main_process = rank == 0
    device = pick_device(config.device)
    checkpoint = run_dir / CHECKPOINT
    if main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps({"loop": asdict(config)} | (describe or {}), indent=2) + "\n")
    if len(dataset) < config.batch_size * world:
        raise ValueError(f"The dataset has {len(dataset)} items, fewer than one batch of {config.batch_size * world}; "
                         "lower --batch-size or generate more data (faceedu data synth --n N).")

    seed_everything(config.seed + rank)
    for module in task.modules.values():
        module.to(device)
    for name, optimizer in task.optimizers.items():  # optimiser state follows its parameters' device
        for state in optimizer.state.values():
            for key, value in state.items():
                if isinstance(value, torch.Tensor):
                    state[key] = value.to(device)
    # the preview batch is drawn before any checkpoint's RNG state is restored, so resuming is exact
    preview = to_device(next(iter(DataLoader(dataset, batch_size=min(16, len(dataset))))), device)
    position, start_step = {"epoch": 0, "offset": 0}, 0
    if checkpoint.exists():
        saved = load_checkpoint(task, checkpoint, map_location=device)
        start_step, position = saved["step"], saved["position"]
        if main_process:
            print(f"Resuming {run_dir} from step {start_step}")
    if world > 1:
        for name, module in task.modules.items():
            if any(p.requires_grad for p in module.parameters()):
                setattr(task, name, nn.parallel.DistributedDataParallel(module))

    sampler = ResumableSampler(len(dataset), config.seed, rank, world)
    if config.data_on_device and hasattr(dataset, "gather"):
        batches = _gathered(dataset.to(device), sampler, position, config.batch_size, device)
    else:
        loader = DataLoader(dataset, batch_size=config.batch_size, sampler=sampler, drop_last=True,
                            num_workers=config.num_workers, pin_memory=device.type == "cuda",
                            generator=torch.Generator().manual_seed(config.seed))  # keeps the global RNG untouched
        batches = (to_device(batch, device) for batch in _batches(loader, sampler, position))
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=config.bf16 and native_bf16(device))

    metrics = (run_dir / METRICS).open("a") if main_process else None
    bar = tqdm(total=config.steps, initial=start_step, disable=not (config.progress and main_process),
               unit="step", dynamic_ncols=True)
    window_start, window_images, losses, rate = time.perf_counter(), 0, {}, float("nan")
    run_start = time.perf_counter()
    for step in range(start_step + 1, config.steps + 1):
        for module in task.modules.values():
            module.train()
        batch = next(batches)
        with autocast:
            step_losses = task.step(batch, step)
        for scheduler in task.schedulers.values():
            scheduler.step()
        window_images += config.batch_size * world
        saving = step % config.checkpoint_every == 0 or step == config.steps
        logging = step % config.log_every == 0 or step == config.steps
        if logging or saving:
            losses = _finite_losses(step_losses, step, checkpoint, config.log_every, world)
        if logging:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            elapsed = time.perf_counter() - window_start
            rate = window_images / elapsed
            window_start, window_images = time.perf_counter(), 0
            if main_process:
                lrs = {f"lr_{k}": o.param_groups[0]["lr"] for k, o in task.optimizers.items()}
                metrics.write(json.dumps({"step": step, "epoch": position["epoch"], "images_per_s": round(rate, 1)}
                                         | losses | lrs) + "\n")
                metrics.flush()
                bar.set_postfix({"img/s": f"{rate:,.0f}"} | {k: f"{v:.4g}" for k, v in list(losses.items())[:4]})
        bar.update(1)
        if main_process and config.sample_every and (step % config.sample_every == 0 or step == config.steps):
            for module in task.modules.values():
                module.eval()
            with torch.no_grad(), autocast:
                save_grid(task.samples(preview).float(), run_dir / "samples" / f"step_{step:06d}.png")
        if saving:
            rng = _rng_states(world)                  # collective under DDP: every rank takes part
            if main_process:
                save_checkpoint(task, checkpoint, step, position, rng=rng)
                plot_loss_curves(run_dir / METRICS, run_dir / "loss_curves.png")
    bar.close()
    if metrics:
        metrics.close()
    seconds = time.perf_counter() - run_start
    trained = config.steps - start_step
    summary = {"steps": config.steps, "steps_this_run": trained, "seconds": round(seconds, 1),
               "images_per_s": round(trained * config.batch_size * world / seconds, 1) if trained else None,
               "device": str(device), "losses": losses}
    if main_process and trained:
        print(f"Trained {trained} steps in {seconds:.1f} s on {device} "
              f"({summary['images_per_s']:,.0f} images/s); run folder: {run_dir}")
    elif main_process:
        print(f"Nothing to train: {run_dir} is already at step {config.steps}.")
    if made_group:      # every rank leaves together, with gloo's threads stopped (else a rank may abort at exit:
        torch.distributed.barrier()          # "terminate called without an active exception")
        torch.distributed.destroy_process_group()
    return summary
