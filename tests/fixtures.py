"""Tiny datasets in the real CelebA, CelebAMask-HQ and JAFFE file formats, drawn with numpy (geometric
shapes, no face photographs), so the loaders are tested on exactly the layouts the real downloads have.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from faceedu.data.layout import (
    CELEBA_ATTRIBUTES, CELEBA_FILES, CELEBA_LANDMARKS, CELEBAMASK_CLASSES, CELEBAMASK_FILES, CELEBAMASK_LABELS,
)

CLASS_COLOURS = np.random.default_rng(0).integers(30, 200, size=(len(CELEBAMASK_CLASSES) + 1, 3), dtype=np.uint8)


def class_shapes(width: int, height: int, index: int) -> dict[str, np.ndarray]:
    """Overlapping boolean regions per CelebAMask-HQ class (like the official per-class masks, where
    e.g. hair covers part of the skin); item `index` decides glasses, hat, earring and necklace."""
    y, x = np.mgrid[0:height, 0:width]
    y, x = (y + 0.5) / height, (x + 0.5) / width

    def ellipse(cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
        return ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1

    def box(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
        return (x >= x0) & (x < x1) & (y >= y0) & (y < y1)

    shapes = {
        "skin": ellipse(0.5, 0.47, 0.27, 0.33),
        "nose": box(0.46, 0.42, 0.54, 0.58),
        "l_eye": ellipse(0.38, 0.42, 0.06, 0.04), "r_eye": ellipse(0.62, 0.42, 0.06, 0.04),
        "l_brow": box(0.30, 0.33, 0.45, 0.36), "r_brow": box(0.55, 0.33, 0.70, 0.36),
        "l_ear": ellipse(0.22, 0.47, 0.05, 0.08), "r_ear": ellipse(0.78, 0.47, 0.05, 0.08),
        "mouth": box(0.40, 0.665, 0.60, 0.685),
        "u_lip": box(0.40, 0.64, 0.60, 0.67), "l_lip": box(0.40, 0.68, 0.60, 0.71),
        "hair": ellipse(0.5, 0.35, 0.33, 0.28) & (y < 0.38),
        "neck": box(0.40, 0.72, 0.60, 0.95),
        "cloth": y >= 0.88,
    }
    if index % 2:
        shapes["eye_g"] = box(0.28, 0.38, 0.72, 0.46)
    if index % 3 == 1:
        shapes["hat"] = y < 0.18
    if index % 4 == 2:
        shapes["ear_r"] = ellipse(0.22, 0.56, 0.02, 0.02)
        shapes["neck_l"] = box(0.38, 0.84, 0.62, 0.87)
    return shapes


def combine(shapes: dict[str, np.ndarray]) -> np.ndarray:
    """The combined label map: classes painted in CelebAMask-HQ order, later over earlier (as g_mask.py)."""
    labels = np.zeros(next(iter(shapes.values())).shape, dtype=np.uint8)
    for name in CELEBAMASK_CLASSES:
        if name in shapes:
            labels[shapes[name]] = CELEBAMASK_LABELS[name]
    return labels


def draw_image(labels: np.ndarray, index: int, size: tuple[int, int] | None = None) -> np.ndarray:
    """A flat-coloured RGB picture of a label map (plus a per-item tint), resized to `size` (W, H)."""
    tint = np.array([index * 7 % 40, index * 13 % 40, index * 29 % 40], dtype=np.uint8)
    image = CLASS_COLOURS[labels] + tint
    if size is not None and size != (labels.shape[1], labels.shape[0]):
        image = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))
    return image


def attribute_values(n: int, seed: int = 0) -> np.ndarray:
    """Seeded -1/1 values for all 40 CelebA attributes; Eyeglasses and Wearing_Hat follow the drawings."""
    values = np.random.default_rng(seed).choice(np.array([-1, 1], dtype=np.int8), size=(n, len(CELEBA_ATTRIBUTES)))
    for i in range(n):
        values[i, CELEBA_ATTRIBUTES.index("Eyeglasses")] = 1 if i % 2 else -1
        values[i, CELEBA_ATTRIBUTES.index("Wearing_Hat")] = 1 if i % 3 == 1 else -1
    return values


def attribute_lines(names: Sequence[str], values: np.ndarray) -> list[str]:
    """list_attr_celeba.txt's format: count line, header (with CelebA's trailing space), aligned -1/1 rows."""
    rows = [f"{name} " + " ".join(f"{v:2d}" for v in row) for name, row in zip(names, values)]
    return [str(len(names)), " ".join(CELEBA_ATTRIBUTES) + " ", *rows]


def write_celeba(root: Path, n: int = 8, size: tuple[int, int] = (64, 64),
                 partition: Sequence[int] | None = None, label_map_size: tuple[int, int] | None = None) -> Path:
    """Write ROOT/celeba/ as in the official release (plus 68 landmarks and label maps); return ROOT.

    `partition` gives each image's split code (default 0,0,0,0,0,1,1,2,... cycling in fives); label maps are
    drawn at `label_map_size` (default: the image size) in celeba/CelebAMask-HQ-mask/{k}.png.
    """
    celeba = Path(root) / "celeba"
    (celeba / CELEBA_FILES["images"]).mkdir(parents=True)
    (celeba / CELEBAMASK_FILES["label_maps"]).mkdir()
    names = [f"{i + 1:06d}.jpg" for i in range(n)]
    partition = list(partition) if partition is not None else [(0, 0, 0, 0, 0, 1, 1, 2)[i % 8] for i in range(n)]
    width, height = label_map_size or size
    for i, name in enumerate(names):
        labels = combine(class_shapes(width, height, i))
        Image.fromarray(draw_image(labels, i, size)).save(celeba / CELEBA_FILES["images"] / name, quality=95)
        Image.fromarray(labels).save(celeba / CELEBAMASK_FILES["label_maps"] / f"{i}.png")
    points = landmarks68(n, size)
    five = np.rint(points[:, [36, 45, 30, 48, 54]]).astype(int).reshape(n, 10)
    files = {
        "attributes": attribute_lines(names, attribute_values(n)),
        "partition": [f"{name} {code}" for name, code in zip(names, partition)],
        "identity": [f"{name} {i // 2 + 1}" for i, name in enumerate(names)],
        "landmarks": [str(n), " ".join(f"{p}_x {p}_y" for p in CELEBA_LANDMARKS) + " ",
                      *(f"{name} " + " ".join(f"{v:4d}" for v in row) for name, row in zip(names, five))],
        "bbox": [str(n), "image_id x_1 y_1 width height ",
                 *(f"{name}    {i + 1:3d} {i + 2:3d} {size[0] - 2:3d} {size[1] - 3:3d}"
                   for i, name in enumerate(names))],
        "landmarks68": [str(n), " ".join(f"x{k} y{k}" for k in range(68)),
                        *(f"{name} " + " ".join(f"{v:.1f}" for v in row)
                          for name, row in zip(names, points.reshape(n, -1)))],
    }
    for key, lines in files.items():
        (celeba / CELEBA_FILES[key]).write_text("\n".join(lines) + "\n")
    return Path(root)


def landmarks68(n: int, size: tuple[int, int]) -> np.ndarray:
    """Plausible-looking 68-point sets (n x 68 x 2 floats) on a circle, one per image."""
    angle = np.linspace(0, 2 * np.pi, 68, endpoint=False)
    base = np.stack([0.5 + 0.3 * np.cos(angle), 0.5 + 0.3 * np.sin(angle)], axis=1) * size
    return np.stack([base + i for i in range(n)]).round(1)


def write_celebamask_hq(root: Path, n: int = 4, image_size: int = 32, mask_size: int = 16,
                        per_class: bool = True, combined: bool = False) -> Path:
    """Write ROOT/CelebAMask-HQ/ (images at `image_size`, masks at `mask_size`, as real 1024 vs 512) with
    per-class PNGs in {k // 2000}/{k:05d}_{class}.png and/or combined label maps; return ROOT."""
    hq = Path(root) / "CelebAMask-HQ"
    (hq / CELEBAMASK_FILES["images"]).mkdir(parents=True)
    for k in range(n):
        shapes = class_shapes(mask_size, mask_size, k)
        labels = combine(shapes)
        image = draw_image(labels, k, (image_size, image_size))
        Image.fromarray(image).save(hq / CELEBAMASK_FILES["images"] / f"{k}.jpg")
        if per_class:
            folder = hq / CELEBAMASK_FILES["mask_anno"] / str(k // 2000)
            folder.mkdir(parents=True, exist_ok=True)
            for name, shape in shapes.items():
                Image.fromarray(shape.astype(np.uint8) * 255).save(folder / f"{k:05d}_{name}.png")
        if combined:
            (hq / CELEBAMASK_FILES["label_maps"]).mkdir(exist_ok=True)
            Image.fromarray(labels).save(hq / CELEBAMASK_FILES["label_maps"] / f"{k}.png")
    names = [f"{k}.jpg" for k in range(n)]
    attributes = attribute_lines(names, attribute_values(n, seed=1))
    (hq / CELEBAMASK_FILES["attributes"]).write_text("\n".join(attributes) + "\n")
    mapping = ["idx         orig_idx    orig_file   ", *(f"{k:<11d} {k:<11d} {k + 1:06d}.jpg  " for k in range(n))]
    (hq / CELEBAMASK_FILES["mapping"]).write_text("\n".join(mapping) + "\n")
    return Path(root)


def write_jaffe(root: Path, subjects: Sequence[str] = ("KA", "KL", "KM", "NA", "YM"),
                expressions: Sequence[str] = ("HA", "NE", "SU"), takes: int = 2, size: int = 32) -> Path:
    """Write ROOT/jaffe/SUBJECT.EXPRn.NUMBER.tiff 8-bit grayscale images (plus a README); return ROOT."""
    folder = Path(root) / "jaffe"
    folder.mkdir(parents=True)
    number = 0
    for subject in subjects:
        for code in expressions:
            for take in range(1, takes + 1):
                number += 1
                labels = combine(class_shapes(size, size, number))
                gray = Image.fromarray(draw_image(labels, number)).convert("L")
                gray.save(folder / f"{subject}.{code}{take}.{number}.tiff")
    (folder / "README_FIRST.txt").write_text("Not an image: the loader must ignore it.\n")
    return Path(root)
