"""Pictures a learner looks at: image grids, label-map overlays with landmarks, correlation heat maps."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

# Files, not windows: the course renders to PNG. A notebook's inline backend is kept, or importing the
# training loop (which saves its figures through this module) would silence every later plt.show().
if "inline" not in matplotlib.get_backend():
    matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from faceedu.data.layout import CELEBAMASK_CLASSES  # noqa: E402

# One colour per CelebAMask-HQ class (index 0 = background), chosen to tell neighbours apart.
CLASS_COLOURS = np.array([
    (0, 0, 0), (204, 153, 120), (255, 140, 0), (0, 200, 255), (60, 90, 255), (90, 60, 255), (130, 70, 20),
    (160, 90, 30), (255, 200, 170), (255, 180, 150), (140, 0, 40), (230, 40, 80), (180, 20, 60),
    (90, 50, 20), (30, 170, 60), (255, 230, 0), (200, 200, 200), (150, 120, 110), (80, 120, 160),
], dtype=np.uint8)
assert len(CLASS_COLOURS) == len(CELEBAMASK_CLASSES) + 1


def save_figure(fig: "plt.Figure", path: Path | str, dpi: int = 110, **savefig: object) -> Path:
    """Write `fig` to `path` (its folder made when missing), close it, and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, **savefig)
    plt.close(fig)
    return path


def colour_label_map(label: np.ndarray) -> np.ndarray:
    """(H, W) CelebAMask-HQ label map -> (H, W, 3) uint8 picture."""
    return CLASS_COLOURS[np.asarray(label, dtype=np.int64)]


def contact_sheet(images: Sequence[np.ndarray], label_maps: Sequence[np.ndarray], landmarks: Sequence[np.ndarray],
                  captions: Sequence[str], path: Path | str, columns: int = 3) -> Path:
    """A grid of faces, each as a pair: the image with its 68 landmarks, and its label map; the caption
    (file name and positive attributes) underneath. Written to `path` as PNG."""
    import textwrap

    rows = -(-len(images) // columns)
    fig, axes = plt.subplots(rows, columns * 2, figsize=(columns * 4.2, rows * 2.75),
                             gridspec_kw={"hspace": 0.55, "wspace": 0.04})
    axes = np.atleast_2d(axes)
    for ax in axes.ravel():
        ax.axis("off")
    for k, (image, label, points, caption) in enumerate(zip(images, label_maps, landmarks, captions)):
        face_ax, label_ax = axes[k // columns, 2 * (k % columns)], axes[k // columns, 2 * (k % columns) + 1]
        face_ax.imshow(image, interpolation="nearest")
        face_ax.scatter(points[:, 0], points[:, 1], s=2.5, c="#00ff66", linewidths=0)
        label_ax.imshow(colour_label_map(label), interpolation="nearest")
        face_ax.text(0, -0.03, textwrap.fill(caption, 62), transform=face_ax.transAxes, va="top", fontsize=6.5)
    handles = [plt.Rectangle((0, 0), 1, 1, color=CLASS_COLOURS[i + 1] / 255) for i in range(len(CELEBAMASK_CLASSES))]
    fig.legend(handles, CELEBAMASK_CLASSES, loc="lower center", ncol=9, fontsize=8, frameon=False,
               bbox_to_anchor=(0.5, -0.02))
    return save_figure(fig, path, bbox_inches="tight")


def correlation_heatmap(matrix: np.ndarray, names: Sequence[str], path: Path | str, title: str) -> Path:
    """A labelled heat map of a square correlation matrix in [-1, 1], values printed in the cells."""
    n = len(names)
    fig, ax = plt.subplots(figsize=(0.5 * n + 2.5, 0.5 * n + 2))       # cells large enough for readable numbers
    im = ax.imshow(matrix, cmap="RdBu_r", vmin=-1, vmax=1)
    ax.set_xticks(range(n), names, rotation=90, fontsize=10)
    ax.set_yticks(range(n), names, fontsize=10)
    for i in range(n):
        for j in range(n):
            if i != j and abs(matrix[i, j]) >= 0.1:
                ax.text(j, i, f"{matrix[i, j]:+.1f}".replace("0.", "."), ha="center", va="center", fontsize=8.5,
                        color="white" if abs(matrix[i, j]) > 0.5 else "black")
    fig.colorbar(im, ax=ax, shrink=0.7, label="phi coefficient")
    ax.set_title(title, fontsize=13)
    return save_figure(fig, path, bbox_inches="tight")


def save_grid(images, path: Path | str, columns: int = 8) -> Path:
    """Save a (N, C, H, W) tensor in [0, 1] as one PNG grid (torchvision's make_grid)."""
    from torchvision.utils import save_image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(images.clamp(0, 1), path, nrow=columns, padding=2, pad_value=1.0)
    return path


def plot_loss_curves(metrics_jsonl: Path | str, path: Path | str, labels: dict[str, str] | None = None) -> Path:
    """One panel per logged loss against the step (four to a row, lightly smoothed), from a run's
    metrics.jsonl. `labels` picks the terms and titles them (default: every logged loss, by its key)."""
    import json

    records = [json.loads(line) for line in Path(metrics_jsonl).read_text().splitlines() if line.strip()]
    if not records:  # a checkpoint can come before the first logged step: nothing to plot yet
        return Path(path)
    if labels is None:
        labels = {k: k for k in records[-1] if k not in ("step", "epoch", "images_per_s") and not k.startswith("lr_")}
    keys = [k for k in labels if k in records[-1]]
    columns = max(1, min(4, len(keys)))
    rows = max(1, -(-len(keys) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(2.7 * columns, 2.3 * rows), squeeze=False)
    for ax in axes.flat[len(keys):]:
        ax.axis("off")
    steps = np.array([r["step"] for r in records])
    for ax, key in zip(axes.flat, keys):
        values = np.array([r.get(key, np.nan) for r in records], dtype=float)
        ax.plot(steps, values, lw=0.6, alpha=0.35, color="tab:blue")
        if len(values) >= 5:
            ax.plot(steps[2:-2], np.convolve(values, np.ones(5) / 5, mode="valid"), lw=1.3, color="tab:blue")
        ax.set_title(labels[key], fontsize=8)
        ax.set_xlabel("step", fontsize=7)
        ax.tick_params(labelsize=6)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)
