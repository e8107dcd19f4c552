"""A CelebA-layout split decoded once into uint8 tensors and cached on disk: every quick preset trains
from memory instead of decoding JPEGs each epoch (24,000 SynthFaces images at 64x64 are ~300 MB)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from faceedu.data.celeba import CelebA
from faceedu.data.celebamask import face_hair_hat_mask
from faceedu.data.transforms import FaceCrop

CACHE_VERSION = 1


class FaceTensors(Dataset):
    """Items are dicts: "image" float (3, S, S) in [0, 1], "attr" float (A,) of 0/1, "identity" long,
    and with masks "mask" float (1, S, S), the face+hair+hat mask (Toledo & Antonelo)."""

    def __init__(self, images: torch.Tensor, attr: torch.Tensor, attr_names: Sequence[str], identity: torch.Tensor,
                 masks: torch.Tensor | None = None):
        self.images, self.attr, self.identity, self.masks = images, attr, identity, masks
        self.attr_names = list(attr_names)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        item = {"image": self.images[index].float().div(255), "attr": self.attr[index].float(),
                "identity": self.identity[index]}
        if self.masks is not None:
            item["mask"] = self.masks[index].float()
        return item

    def attribute(self, name: str) -> torch.Tensor:
        """The 0/1 column of one attribute, by its CelebA name."""
        if name not in self.attr_names:
            raise KeyError(f"{name!r} is not among this dataset's attributes: {', '.join(self.attr_names)}")
        return self.attr[:, self.attr_names.index(name)]


def _cache_path(dataset: CelebA, crop: FaceCrop, masks: bool) -> Path:
    attr_file = dataset.attr_file
    key = json.dumps({"v": CACHE_VERSION, "split": dataset.split, "crop": [crop.size, crop.mode, crop.crop_fraction],
                      "masks": masks, "attr": attr_file.stat().st_size, "mtime": int(attr_file.stat().st_mtime)})
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return dataset.folder / ".faceedu-cache" / f"{dataset.split}-{crop.size}-{digest}.pt"


def load_face_tensors(root: Path | str, split: str = "train", size: int = 64, masks: bool = True,
                      crop: str = "center", limit: int | None = None, cache: bool = True) -> FaceTensors:
    """Decode a CelebA-layout split (images, all attributes, identities, optional face masks) into memory,
    reusing a cache file under celeba/.faceedu-cache/ when one matches. `limit` keeps the first N items."""
    dataset = CelebA(root, split=split, target_type=["attr", "identity"] + (["mask"] if masks else []))
    fit = FaceCrop(size, crop)
    path = _cache_path(dataset, fit, masks)
    if cache and path.is_file():
        saved = torch.load(path, weights_only=True)
    else:
        count = len(dataset)
        images = torch.empty((count, 3, size, size), dtype=torch.uint8)
        face = torch.empty((count, 1, size, size), dtype=torch.uint8) if masks else None
        for i in range(count):
            image, targets = dataset[i]
            images[i] = torch.from_numpy(np.asarray(fit.image(image)).copy()).permute(2, 0, 1)
            if masks:
                labels = fit.label_map(targets[-1].numpy().astype(np.uint8))
                face[i, 0] = torch.from_numpy(np.asarray(face_hair_hat_mask(labels), dtype=np.uint8))
        saved = {"images": images, "masks": face, "attr": dataset.attr.to(torch.uint8),
                 "attr_names": list(dataset.attr_names), "identity": dataset.identity.clone()}
        if cache:
            path.parent.mkdir(exist_ok=True)
            tmp = path.with_suffix(".tmp")
            torch.save(saved, tmp)
            os.replace(tmp, path)
    keep = slice(0, limit)
    return FaceTensors(saved["images"][keep], saved["attr"][keep], saved["attr_names"], saved["identity"][keep],
                       None if saved["masks"] is None else saved["masks"][keep])
