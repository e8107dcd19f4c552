"""Training the face VAE on the shared loop: the Task (one step reads like the paper's training), the
data it wants, and `train_vae`, which `faceedu train vae`, the ablation and the tests call."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from faceedu.data.synthfaces import dataset_fingerprint
from faceedu.data.tensors import load_face_tensors
from faceedu.models.vae import (MODEL_FIELDS, FaceVAE, VAEConfig, as_float32, clip_per_parameter, lr_factor, preset,
                                vae_losses)
from faceedu.train.loop import LoopConfig, data_root, loop_from_args, train


class VAETask:
    """Adam (epsilon 1e-7 as Keras') on every parameter, the config's learning-rate schedule (`full`: / 3
    every 10 epochs down to 1e-5; `released-code` and `paper-h9`: a constant 1e-4 as the released code),
    per-parameter gradient-norm clipping as Keras' clipnorm.

    `compile_mode` ("default", "reduce-overhead", "max-autotune") runs the forward pass and the losses
    through torch.compile; "reduce-overhead" also replays them as CUDA graphs, which is what a GPU needs at
    the paper's batch of 32, where the step is bound by kernel launches rather than arithmetic."""

    def __init__(self, config: VAEConfig, seed: int = 0, vae: FaceVAE | None = None, loss_fn=None,
                 compile_mode: str | None = None):
        torch.manual_seed(seed)
        self.config = config
        self.vae = vae if vae is not None else FaceVAE(config)
        if config.channels_last:
            self.vae = self.vae.to(memory_format=torch.channels_last)
        self.loss_fn = loss_fn or vae_losses             # (config, out, x, mask) -> {"loss": ..., terms}
        self.compile_mode = compile_mode
        self._compiled: tuple | None = None               # (forward, losses), made at the first step
        optimizer = torch.optim.Adam(self.vae.parameters(), lr=config.lr, eps=config.adam_eps,   # Keras' 1e-7
                                     fused=True)                                               # one kernel per step
        self.optimizers = {"vae": optimizer}
        self.schedulers = {"vae": torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(config, step))}

    @property
    def modules(self) -> dict[str, torch.nn.Module]:
        return {"vae": self.vae}

    def step(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        x, mask = batch["image"], batch.get("mask")
        if self.config.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        forward, loss_fn = self._functions()
        out = forward(x)                                    # z = mu + sigma * eps in training mode
        with torch.autocast(device_type=x.device.type, enabled=False):    # losses in float32, always
            terms = loss_fn(self.config, as_float32(out), x.float(), mask)
        optimizer = self.optimizers["vae"]
        optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        clip_per_parameter(self.vae.parameters(), self.config.clip_norm)
        optimizer.step()
        return {k: v.detach() for k, v in terms.items()}

    def _functions(self):
        """The forward pass and the loss, compiled on first use when asked (after the loop has wrapped the
        model for DDP, so the compiled forward goes through the wrapper)."""
        if not self.compile_mode:
            return self.vae, self.loss_fn
        if self._compiled is None:
            self._compiled = (torch.compile(self.vae, mode=self.compile_mode),
                              torch.compile(self.loss_fn, mode=self.compile_mode))
        return self._compiled

    def samples(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Rows of 8 (the poster's figures 7-8): originals, reconstructions, true masks, predicted masks."""
        return sample_rows(getattr(self.vae, "module", self.vae), batch["image"][:8], batch.get("mask", None))


def sample_rows(vae: FaceVAE, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """(4N or 2N, 3, S, S): original | reconstruction | true mask | predicted mask, one row each."""
    result = vae.reconstruct(x)
    rows = [x, result["out"]]
    if "mask" in result:
        if mask is not None:
            rows.append(mask[: len(x)].expand(-1, 3, -1, -1))
        rows.append(result["mask"].expand(-1, 3, -1, -1))
    return torch.cat(rows).float()


def default_steps(config: VAEConfig) -> int:
    return max(1, round(config.epochs * config.epoch_images / config.batch_size))


def train_vae(config: VAEConfig, run_dir: Path | str, root: Path | str, steps: int | None = None,
              loop: LoopConfig | None = None, dataset: Any = None, preset_name: str = "custom",
              seed: int = 0, compile_mode: str | None = None) -> dict:
    """Train a VAE into `run_dir` (resuming if a checkpoint is there) on the train split under `root`;
    returns the loop's summary. `dataset` overrides the data (tests pass a small one); `compile_mode` as in
    VAETask (a GPU at batch 32 wants "reduce-overhead")."""
    steps = steps if steps is not None else default_steps(config)
    config = check_same_model(config, run_dir, steps)
    loop = loop or LoopConfig()
    loop = LoopConfig(**(asdict(loop) | {"steps": steps, "batch_size": config.batch_size, "seed": seed,
                                         "bf16": loop.bf16 or config.bf16}))
    fingerprint = dataset_fingerprint(root) if dataset is None else None     # a finished run is reusable on it
    if dataset is None:     # the masks only when the model learns them: --no-mask trains on folders without any
        dataset = load_face_tensors(root, "train", size=config.image_size, masks=config.use_mask, crop=config.crop)
    data_path = str(Path(root).expanduser().resolve())     # absolute: commands on the run work from anywhere
    describe = {"model": "vae", "preset": preset_name, "data": data_path, "data_fingerprint": fingerprint,
                "vae": config.to_dict()}
    return train(VAETask(config, seed=seed, compile_mode=compile_mode), dataset, run_dir, loop, describe=describe)


def run_model_differences(config: VAEConfig, run_dir: Path | str) -> list[str]:
    """The network-defining fields (MODEL_FIELDS) in which a run folder's saved VAE differs from `config`
    (empty when there is no saved run; a run saved before a field existed has the value it was trained with)."""
    import json

    described_path = Path(run_dir) / "config.json"
    if not described_path.is_file():
        return []
    described = json.loads(described_path.read_text())
    if described.get("model") != "vae" or "vae" not in described:
        return []
    saved = VAEConfig.from_dict(described["vae"])
    return [f"{name}: saved {getattr(saved, name)!r}, asked {getattr(config, name)!r}"
            for name in MODEL_FIELDS if getattr(saved, name) != getattr(config, name)]


def check_same_model(config: VAEConfig, run_dir: Path | str, steps: int | None = None) -> VAEConfig:
    """The config to train `run_dir` with. A run whose checkpoint holds another network (e.g. one saved
    before the Keras conventions of issue 17) is never resumed into this one (its weights would load into
    the wrong model without an error): if it has already trained `steps` steps it is reused as the network
    it is (its saved config is returned), otherwise this raises."""
    if not Path(run_dir, "checkpoint.pt").is_file() or not (differences := run_model_differences(config, run_dir)):
        return config
    import json

    done = torch.load(Path(run_dir, "checkpoint.pt"), map_location="cpu", weights_only=True)["step"]
    if steps is not None and done >= steps:
        print(f"{run_dir} is finished ({done} steps) with another network than asked ({'; '.join(differences)}): "
              "reused as it was trained.")
        return VAEConfig.from_dict(json.loads(Path(run_dir, "config.json").read_text())["vae"])
    raise ValueError(f"{run_dir} holds a VAE trained with another network ({'; '.join(differences)}); "
                     "train into a new --run folder (or move this one away) instead of resuming it.")


def run_data_root(run_dir: Path | str, described: dict, root: Path | str | None = None) -> Path:
    """The data a command on RUN reads: `root` if given, else the folder the run was trained on (stored
    absolute; an older run's relative path is tried from here, then from beside the run folder)."""
    if root is not None:
        return Path(root).expanduser()
    stored = Path(described["data"]).expanduser()
    if stored.is_absolute() or stored.exists():
        return stored
    beside = Path(run_dir).resolve().parent / stored
    return beside if beside.exists() else stored


def load_run(run_dir: Path | str, map_location: str | torch.device = "cpu") -> tuple[FaceVAE, dict]:
    """The trained VAE of a run folder (eval mode) and its config.json."""
    from faceedu.train.loop import read_run

    described, modules = read_run(run_dir, "vae", "a VAE", map_location)
    vae = FaceVAE(VAEConfig.from_dict(described["vae"]))
    vae.load_state_dict(modules["vae"])
    return vae.eval(), described


@torch.no_grad()
def evaluate_vae(vae: FaceVAE, dataset: Any, batch_size: int = 100, device: str | torch.device = "cpu") -> dict[str, float]:
    """Reconstruction metrics over a dataset of {"image"} or {"image", "mask"} items, with z = mu:

    - on the whole image the model returns (with a mask branch, the prediction pasted onto the input with
      the *predicted* mask, as at inference): ssim, ms_ssim, l1_x10, l2_x10 (the paper's table reports
      1 - SSIM, 1 - MS-SSIM, 10 l1 and 10 l2);
    - inside the ground-truth face+hair+hat mask, on the prediction pasted with the *true* mask (so neither
      model gains from copying input pixels: a mask decoder that predicted nothing would otherwise score
      perfectly): masked_ssim (windows centred on the mask), masked_l1_x10, masked_l2_x10;
    - the predicted mask thresholded at 0.5 against the true one: mask_dice, mask_iou.
    Without true masks (a CelebA folder with no label maps) only the whole-image figures are measured.
    SSIM values are averaged over images, l1 and l2 over the pixels of the whole split."""
    from torch.utils.data import DataLoader

    from faceedu import losses as L

    vae = vae.to(device).eval()
    sums: dict[str, float] = {}
    count = 0
    face_error = {"l1": 0.0, "l2": 0.0, "pixels": 0.0}

    def add(key: str, value: torch.Tensor, n: int) -> None:
        sums[key] = sums.get(key, 0.0) + float(value) * n

    for batch in DataLoader(dataset, batch_size=batch_size):
        x = batch["image"].to(device)
        n = len(x)
        result = vae.reconstruct(x)
        out = result["out"].clamp(0, 1)
        add("ssim", L.ssim(out, x), n)
        add("ms_ssim", L.ms_ssim(out, x), n)
        add("l1_x10", 10 * L.mae(out, x), n)
        add("l2_x10", 10 * L.mse(out, x), n)
        count += n
        if "mask" not in batch:
            continue
        mask = batch["mask"].to(device)
        face = L.compose(result["pred"].clamp(0, 1), x, mask)
        add("masked_ssim", L.ssim(face, x, mask=mask, reduction="none").mean(), n)
        weights = mask.expand_as(x)
        face_error["l1"] += float(((face - x).abs() * weights).sum())
        face_error["l2"] += float(((face - x).square() * weights).sum())
        face_error["pixels"] += float(weights.sum())
        if "mask" in result:
            predicted = (result["mask"] > 0.5).float()
            add("mask_dice", L.dice(predicted, mask, smooth=1e-6), n)
            inter = (predicted * mask).flatten(1).sum(1)
            union = ((predicted + mask) > 0).float().flatten(1).sum(1)
            add("mask_iou", (inter / union.clamp_min(1)).mean(), n)
    metrics = {k: round(v / count, 5) for k, v in sums.items()}
    if face_error["pixels"]:
        metrics["masked_l1_x10"] = round(10 * face_error["l1"] / face_error["pixels"], 5)
        metrics["masked_l2_x10"] = round(10 * face_error["l2"] / face_error["pixels"], 5)
    return metrics | {"images": count}


def reconstruction_figure(vae: FaceVAE, x: torch.Tensor, mask: torch.Tensor | None, path: Path | str,
                          title: str = "") -> Path:
    """The poster's figures 7-8: for each face a column of original, reconstruction, true mask and
    predicted mask (the masks only for a VAE with a mask branch; the true one only when the data has it)."""
    import matplotlib.pyplot as plt
    from faceedu.viz import save_figure

    result = vae.reconstruct(x)
    rows = [("original", x), ("reconstruction", result["out"].clamp(0, 1))]
    if "mask" in result:
        rows += ([("true mask", mask)] if mask is not None else []) + [("predicted mask", result["mask"])]
    fig, axes = plt.subplots(len(rows), len(x), figsize=(1.15 * len(x), 1.2 * len(rows)), squeeze=False)
    for r, (label, images) in enumerate(rows):
        for c in range(len(x)):
            image = images[c].permute(1, 2, 0).squeeze(-1).cpu().numpy()
            axes[r, c].imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=1)
            axes[r, c].set_xticks([]), axes[r, c].set_yticks([])
        axes[r, 0].set_ylabel(label, fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


LOSS_LABELS = {"loss": "total loss", "ssim": "2 - SSIM (image)", "l1": "MAE (image)", "l2": "MSE (image)",
               "bce": "BCE (mask)", "dice": "1 - Dice (mask)", "kl": "KL (nats, summed over z)"}


def eval_run(run_dir: Path | str, root: Path | str | None = None, out: Path | str | None = None,
             limit: int | None = None, device: str = "cpu", split: str = "test") -> dict:
    """`faceedu eval RUN` for a VAE run: metrics on a split (eval.json), the reconstruction figure and the
    loss curves, written to RUN/eval/SPLIT/ (or `out`). Masks are used when the data has them, whether or
    not the model learnt them (the masked figures then compare like with like). Returns the metrics."""
    import json

    from faceedu.viz import plot_loss_curves

    run_dir = Path(run_dir)
    vae, described = load_run(run_dir)
    root = run_data_root(run_dir, described, root)
    out = Path(out) if out is not None else run_dir / "eval" / split
    out.mkdir(parents=True, exist_ok=True)
    data = load_face_tensors(root, split, size=vae.config.image_size, masks=None, crop=vae.config.crop, limit=limit)
    metrics = evaluate_vae(vae, data, device=device)
    metrics |= {"split": split, "run": str(run_dir), "data": str(root.resolve()), "preset": described.get("preset"),
                "use_mask": vae.config.use_mask, "image_losses": list(vae.config.image_losses),
                "true_masks": data.masks is not None, "out": str(out)}
    (out / "eval.json").write_text(json.dumps(metrics, indent=2) + "\n")
    vae = vae.cpu()
    faces = data.images[:8].float() / 255
    masks = data.masks[:8].float() if data.masks is not None else None
    masked = f"masked SSIM {metrics['masked_ssim']:.3f}, " if "masked_ssim" in metrics else ""
    reconstruction_figure(vae, faces, masks, out / "reconstructions.png",
                          f"{split} split: {masked}SSIM {metrics['ssim']:.3f}")
    if (run_dir / "metrics.jsonl").is_file():
        plot_loss_curves(run_dir / "metrics.jsonl", out / "loss_curves.png", labels=LOSS_LABELS)  # poster's figs 3-6
    return metrics


def format_metrics(metrics: dict) -> str:
    """A short table of the figures `evaluate_vae` returns."""
    names = {"ssim": "SSIM", "ms_ssim": "MS-SSIM", "l1_x10": "10 l1", "l2_x10": "10 l2",
             "masked_ssim": "SSIM in mask", "masked_l1_x10": "10 l1 in mask", "masked_l2_x10": "10 l2 in mask",
             "mask_dice": "mask Dice", "mask_iou": "mask IoU"}
    return "\n".join(f"{label:>14}  {metrics[key]:.4f}" for key, label in names.items() if key in metrics)


__all__ = ["VAETask", "train_vae", "load_run", "check_same_model", "run_model_differences", "run_data_root", "sample_rows", "default_steps", "preset", "evaluate_vae",
           "eval_run", "reconstruction_figure", "format_metrics"]


# --- command line ----------------------------------------------------------------------------------------


def config_from_args(args) -> VAEConfig:
    """`faceedu train vae`'s config: the preset, with the flags overriding its fields."""
    overrides = {"lr": args.lr, "batch_size": args.batch_size, "latent": args.latent}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if args.nchw or args.compile:        # inductor failed on channels_last's convolution backward (torch 2.11)
        overrides["channels_last"] = False
        if not args.nchw:
            print("--compile: NCHW memory (torch.compile's channels_last convolution backward failed; docs/benchmarks.md)")
    if args.no_mask:
        overrides["use_mask"] = False
    if args.losses:
        overrides["image_losses"] = tuple(args.losses.split("+"))
    if args.data == "celeba" and args.preset == "quick":
        overrides.setdefault("crop", "center")            # the common 64x64 recipe: CenterCrop(148), Resize(64)
    return preset(args.preset, **overrides)


def command_train(args) -> int:
    """`faceedu train vae`: a preset, with flags overriding its fields; resumes if --run holds a checkpoint."""
    config = config_from_args(args)
    root = data_root(args)
    run = args.run or Path("runs") / f"vae-{args.preset}"
    loop = loop_from_args(args)
    summary = train_vae(config, run, root, steps=args.steps, loop=loop, preset_name=args.preset, seed=args.seed,
                        compile_mode=args.compile)
    print(f"Next: faceedu eval {run}")
    return 0 if summary else 1


def command_eval(run_dir: Path, args) -> int:
    """`faceedu eval RUN` for a VAE run: the test-split table, eval.json and the figures under RUN/eval/."""
    metrics = eval_run(run_dir, root=getattr(args, "run_root", None), limit=getattr(args, "limit", None),
                       split=getattr(args, "split", "test"), device="cuda" if torch.cuda.is_available() else "cpu")
    print(f"{run_dir} ({metrics['preset']}, {'with' if metrics['use_mask'] else 'without'} mask, "
          f"{metrics['images']} {metrics['split']} images of {metrics['data']})")
    print(format_metrics(metrics))
    if not metrics["true_masks"]:
        print("(no label maps in this data: whole-image figures only; `faceedu data masks` makes them)")
    print(f"Wrote {metrics['out']}/eval.json, reconstructions.png, loss_curves.png")
    return 0


def bench_tasks(preset_name: str = "quick") -> dict[str, tuple[VAETask, dict]]:
    """For `faceedu bench`: the VAE Task at a preset and one synthetic batch (images and masks)."""
    config = preset(preset_name)                      # KeyError for a preset the VAE does not have
    g = torch.Generator().manual_seed(0)
    size = config.image_size
    batch = {"image": torch.rand(config.batch_size, 3, size, size, generator=g),
             "mask": (torch.rand(config.batch_size, 1, size, size, generator=g) > 0.5).float()}
    return {"vae": (VAETask(config), batch)}
