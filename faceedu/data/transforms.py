"""Geometry that turns any aligned face image (SynthFaces 64x64, CelebA 178x218, a downscaled 89x109
copy) into the square tensor a model wants, applied identically to the image and its label map."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

# The common 64x64 CelebA recipe: centre-crop 148 of the 178-wide aligned image, then resize.
CELEBA_CROP_FRACTION = 148 / 178


@dataclass(frozen=True)
class FaceCrop:
    """`mode`: "center" crops a centred square of `crop_fraction` x width (square inputs are left whole),
    "squash" resizes the whole image to size x size (Toledo & Antonelo squash 178x218 to 144x144)."""

    size: int = 64
    mode: str = "center"
    crop_fraction: float = CELEBA_CROP_FRACTION

    def __post_init__(self) -> None:
        if self.mode not in ("center", "squash"):
            raise ValueError(f"FaceCrop mode must be 'center' or 'squash', not {self.mode!r}.")

    def box(self, width: int, height: int) -> tuple[int, int, int, int]:
        """The (left, top, right, bottom) box that is kept before resizing."""
        if self.mode == "squash" or width == height:
            return 0, 0, width, height
        side = min(round(self.crop_fraction * width), width, height)
        left, top = (width - side) // 2, (height - side) // 2
        return left, top, left + side, top + side

    def image(self, image: Image.Image) -> Image.Image:
        box = self.box(*image.size)
        if box == (0, 0, *image.size) and image.size == (self.size, self.size):
            return image
        return image.resize((self.size, self.size), Image.BICUBIC, box=box)

    def label_map(self, labels: np.ndarray) -> np.ndarray:
        height, width = labels.shape
        box = self.box(width, height)
        if box == (0, 0, width, height) and labels.shape == (self.size, self.size):
            return labels
        return np.asarray(Image.fromarray(labels).resize((self.size, self.size), Image.NEAREST, box=box))

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """PIL image -> float tensor (C, size, size) in [0, 1]."""
        return to_tensor(self.image(image))


def to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL image -> float (C, H, W) in [0, 1]."""
    array = np.asarray(image, dtype=np.uint8)
    if array.ndim == 2:
        array = array[..., None]
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255)
