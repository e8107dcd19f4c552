"""Toledo & Antonelo's ablation: five image losses (l1, l2, SSIM, SSIM+l1, SSIM+l2), each with and
without the face mask, trained alike and measured on the test split (`faceedu ablate vae`)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from faceedu.models.vae import VAEConfig, preset
from faceedu.train.loop import LoopConfig

LOSSES: dict[str, tuple[str, ...]] = {
    "l1": ("l1",), "l2": ("l2",), "ssim": ("ssim",), "ssim+l1": ("ssim", "l1"), "ssim+l2": ("ssim", "l2"),
}

# The paper's figures (CelebA 144x144, from the repository's results chart, +-0.001) for the rows it quotes.
PAPER = {
    ("ssim+l2", True): {"1-ssim": 0.307, "1-ms_ssim": 0.077, "l1_x10": 0.487, "l2_x10": 0.681},
    ("l1", False): {"1-ssim": 0.373, "1-ms_ssim": 0.103, "l1_x10": 0.587, "l2_x10": 0.826},
}


def run_name(loss: str, mask: bool) -> str:
    return f"{loss.replace('+', '_')}-{'mask' if mask else 'nomask'}"


def ablate_vae(out: Path | str, root: Path | str, base: VAEConfig | None = None, steps: int | None = None,
               losses: list[str] | None = None, eval_limit: int | None = None, loop: LoopConfig | None = None,
               train_limit: int | None = None, seed: int = 0) -> list[dict]:
    """Train every (loss, mask) pair into out/<loss>-<mask|nomask>/ (each run resumes if interrupted),
    evaluate it on the test split and write out/ablation.json and out/ablation.md. Returns the rows."""
    from faceedu.data.tensors import load_face_tensors
    from faceedu.train.vae import evaluate_vae, load_run, train_vae

    out = Path(out)
    base = base or preset("quick")
    losses = losses or list(LOSSES)
    size, crop = base.image_size, base.crop          # half the cases learn the mask: the data must have masks
    train_data = load_face_tensors(root, "train", size=size, masks=True, crop=crop, limit=train_limit)
    test_data = load_face_tensors(root, "test", size=size, masks=True, crop=crop, limit=eval_limit)
    rows = []
    for loss in losses:
        for mask in (True, False):
            config = replace(base, image_losses=LOSSES[loss], use_mask=mask)
            run_dir = out / run_name(loss, mask)
            summary = train_vae(config, run_dir, root, steps=steps, loop=loop, dataset=train_data,
                                preset_name=f"ablation {loss} {'mask' if mask else 'no mask'}", seed=seed)
            vae, _ = load_run(run_dir)
            metrics = evaluate_vae(vae, test_data)
            row = {"loss": loss, "mask": mask, "seconds": summary["seconds"], **metrics}
            (run_dir / "eval.json").write_text(json.dumps(row, indent=2) + "\n")
            rows.append(row)
            print(f"{loss:>8} {'mask' if mask else 'no mask':>8}: SSIM {metrics['ssim']:.4f}, "
                  f"masked SSIM {metrics['masked_ssim']:.4f}")
    (out / "ablation.json").write_text(json.dumps(rows, indent=2) + "\n")
    (out / "ablation.md").write_text(ablation_table(rows) + "\n")
    comparison_figure(out, rows, test_data)
    print(ablation_table(rows))
    return rows


def ablation_table(rows: list[dict]) -> str:
    """Markdown: the paper's columns (lower is better) plus the inside-the-mask SSIM, with the paper's
    figures beside ours where it quotes them."""
    lines = ["| image loss | mask | 1-SSIM | 1-MS-SSIM | 10 l1 | 10 l2 | 1-SSIM in mask | paper 1-SSIM / 1-MS-SSIM / 10 l1 / 10 l2 |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        paper = PAPER.get((row["loss"], row["mask"]))
        quoted = " / ".join(f"{v:.3f}" for v in paper.values()) if paper else ""
        lines.append(f"| {row['loss'].replace('ssim', 'SSIM')} | {'yes' if row['mask'] else 'no'} | "
                     f"{1 - row['ssim']:.3f} | {1 - row['ms_ssim']:.3f} | {row['l1_x10']:.3f} | {row['l2_x10']:.3f} | "
                     f"{1 - row['masked_ssim']:.3f} | {quoted} |")
    return "\n".join(lines)


def comparison_figure(out: Path, rows: list[dict], test_data, faces: int = 6) -> Path:
    """One column per test face, one row per hypothesis (as the repository's visual comparisons)."""
    import matplotlib.pyplot as plt
    import torch

    from faceedu.train.vae import load_run
    from faceedu.viz import save_figure

    x = torch.stack([test_data[i]["image"] for i in range(faces)])
    images = [("original", x)]
    for row in rows:
        vae, _ = load_run(out / run_name(row["loss"], row["mask"]))
        images.append((f"{row['loss']}\n{'mask' if row['mask'] else 'no mask'}", vae.reconstruct(x)["out"].clamp(0, 1)))
    fig, axes = plt.subplots(faces, len(images), figsize=(1.0 * len(images), 1.0 * faces), squeeze=False)
    for c, (label, batch) in enumerate(images):
        axes[0, c].set_title(label, fontsize=6)
        for r in range(faces):
            axes[r, c].imshow(batch[r].permute(1, 2, 0).numpy())
            axes[r, c].axis("off")
    fig.tight_layout()
    return save_figure(fig, out / "comparison.png", dpi=120)


def command_ablate(args) -> int:
    """`faceedu ablate vae`."""
    from faceedu.data.synthfaces import ensure

    root = ensure(args.root, verbose=True) if args.data == "synth" else args.root
    loop = LoopConfig(device=args.device, progress=not args.no_progress, sample_every=0, log_every=args.log_every)
    losses = args.losses.split(",") if args.losses else None
    ablate_vae(args.out, root, preset(args.preset), steps=args.steps, losses=losses, eval_limit=args.eval_limit,
               loop=loop, train_limit=args.train_limit, seed=args.seed)
    print(f"Wrote {args.out}/ablation.md, ablation.json and comparison.png")
    return 0
