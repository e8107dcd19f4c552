"""CelebA folders as real downloads come, drawn by code (no photographs): 178x218 JPEGs with only
list_attr_celeba.txt and list_eval_partition.txt (no identities, landmarks or label maps), or Kaggle's copy
with its CSV files and nested image folder. Reusable by any test that must run on "real-layout" data:

    from realfixtures import write_real_celeba
    root = write_real_celeba(tmp_path)                 # ROOT/celeba/ with the minimum
    root = write_real_celeba(tmp_path, kaggle=True)    # ROOT/celeba/ as Kaggle's archive unpacks
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from faceedu.data.layout import CELEBA_ATTRIBUTES, CELEBA_CSV_FILES, CELEBA_FILES, CELEBA_LANDMARKS
from fixtures import attribute_lines, attribute_values, class_shapes, combine, draw_image

REAL_SIZE = (178, 218)                       # aligned CelebA's images, width x height
PARTITION = (0, 0, 0, 0, 0, 1, 2, 2)         # per 8 images: 5 train, 1 valid, 2 test


def real_partition(n: int) -> list[int]:
    """The split code of each of `n` images (64 images: 40 train, 8 valid, 16 test)."""
    return [PARTITION[i % len(PARTITION)] for i in range(n)]


def write_real_celeba(root: Path, n: int = 64, size: tuple[int, int] = REAL_SIZE, kaggle: bool = False,
                      partition: Sequence[int] | None = None) -> Path:
    """Write ROOT/celeba/ with images, attributes and partition only (kaggle=False), or Kaggle's copy: the
    four CSV files (attributes, partition, boxes, landmarks) and img_align_celeba/img_align_celeba/.
    Never identities nor label maps. Same `n` and partition: the same faces and labels in both. Returns ROOT."""
    celeba = Path(root) / "celeba"
    images = celeba / CELEBA_FILES["images"]
    if kaggle:
        images = images / CELEBA_FILES["images"]
    images.mkdir(parents=True)
    names = [f"{i + 1:06d}.jpg" for i in range(n)]
    codes = list(partition) if partition is not None else real_partition(n)
    for i, name in enumerate(names):
        labels = combine(class_shapes(*size, i))
        Image.fromarray(draw_image(labels, i)).save(images / name, quality=90)
    values = attribute_values(n)
    if not kaggle:
        (celeba / CELEBA_FILES["attributes"]).write_text("\n".join(attribute_lines(names, values)) + "\n")
        (celeba / CELEBA_FILES["partition"]).write_text("".join(f"{m} {c}\n" for m, c in zip(names, codes)))
        return Path(root)
    five = [[40 + i, 60, 80 + i, 60, 60, 80, 45, 100, 75, 100] for i in range(n)]
    tables = {
        "attributes": (["image_id", *CELEBA_ATTRIBUTES], [[*map(str, row)] for row in values]),
        "partition": (["image_id", "partition"], [[str(c)] for c in codes]),
        "bbox": (["image_id", "x_1", "y_1", "width", "height"], [[str(95 + i), "71", "226", "313"] for i in range(n)]),
        "landmarks": (["image_id", *(f"{p}_{a}" for p in CELEBA_LANDMARKS for a in "xy")],
                      [[*map(str, row)] for row in five]),
    }
    for key, (header, rows) in tables.items():
        lines = [",".join(header), *(",".join([name, *row]) for name, row in zip(names, rows))]
        (celeba / CELEBA_CSV_FILES[key]).write_text("\r\n".join(lines) + "\r\n")   # CRLF, as files saved on Windows: read alike
    return Path(root)


def expected_attributes(n: int = 64) -> np.ndarray:
    """The 0/1 attribute matrix both layouts of `write_real_celeba(n=n)` hold."""
    return (attribute_values(n) > 0).astype(np.int64)
