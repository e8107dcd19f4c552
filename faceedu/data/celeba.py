"""CelebA in its official layout (the one torchvision.datasets.CelebA reads): splits, attributes chosen by
name, identities, landmarks, and optional CelebAMask-HQ-style label maps reduced to face + hair + hat.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from faceedu.data.celebamask import MASK_TARGETS, fit_to_image, mask_target, read_label_map
from faceedu.data.layout import (
    CELEBA_ATTRIBUTES, CELEBA_CSV_FILES, CELEBA_FILES, CELEBA_MASKS_HINT, CELEBA_SPLITS, CELEBAMASK_FILES, dataset_error,
)
from faceedu.data.loading import (
    check_split, dataset_folder, finish, open_image, read_binary_attributes, read_table, require_files,
    select_attributes, target_types,
)

KIND = "celeba"

# The per-image annotation files besides list_attr_celeba.txt: key -> (has count + header lines, values, dtype).
_ANNOTATIONS: dict[str, tuple[bool, int, type]] = {
    "identity": (False, 1, np.int64),
    "bbox": (True, 4, np.int64),
    "landmarks": (True, 10, np.int64),
    "landmarks68": (True, 136, np.float32),
}


def _looks_like_celeba(folder: Path) -> bool:
    return ((folder / CELEBA_FILES["attributes"]).is_file() or (folder / CELEBA_CSV_FILES["attributes"]).is_file()
            or (folder / CELEBA_FILES["images"]).is_dir())


def annotation_file(folder: Path, key: str) -> Path:
    """The file of annotation `key` in a CelebA folder: the official text file, else Kaggle's CSV copy;
    when neither is there, the text file's path (so the error names what to add)."""
    text = folder / CELEBA_FILES[key]
    if not text.is_file() and key in CELEBA_CSV_FILES and (folder / CELEBA_CSV_FILES[key]).is_file():
        return folder / CELEBA_CSV_FILES[key]
    return text


def _require_annotation(folder: Path, key: str, needed_for: str) -> Path:
    path = annotation_file(folder, key)
    if not path.is_file():
        other = f" (or Kaggle's {CELEBA_CSV_FILES[key]})" if key in CELEBA_CSV_FILES else ""
        raise dataset_error(KIND, f"Missing annotation file {path.name}{other}: {needed_for} needs it.", path)
    return path


def _image_folder(folder: Path) -> Path:
    """img_align_celeba/, or the img_align_celeba/img_align_celeba/ that Kaggle's archive unpacks to."""
    images = folder / CELEBA_FILES["images"]
    nested = images / CELEBA_FILES["images"]
    return nested if nested.is_dir() else images


class CelebA(Dataset):
    """CelebA as (image, target), like torchvision.datasets.CelebA: a PIL RGB image and, per `target_type`,
    "attr" (LongTensor of 0/1 in `attr_names` order), "identity" (scalar LongTensor), "bbox" (4 ints),
    "landmarks" (10 ints: x, y of the 5 points), "landmarks68" (136 floats: x0 y0 ... x67 y67),
    "mask" (label map, LongTensor H x W) or "facemask" (face+hair+hat, float 1 x H x W). Several target
    types give a tuple.

    `root` is the folder holding celeba/ (or celeba/ itself). Label maps for image 000001.jpg live at
    celeba/CelebAMask-HQ-mask/0.png and are resized (nearest) to their image. Image sizes are left to the
    transform. `check=True` verifies at construction that every listed image (and label map) exists;
    otherwise a missing or corrupt file is reported, by name, when its item is loaded.
    """

    target_types = ("attr", "identity", "bbox", "landmarks", "landmarks68", "mask", "facemask")
    splits = ("train", "valid", "test", "all")

    def __init__(self, root: Path | str, split: str = "train", target_type: str | Sequence[str] = "attr",
                 attributes: Sequence[str] | None = None, transform: Callable | None = None,
                 target_transform: Callable | None = None, check: bool = False) -> None:
        self.split = check_split(split, self.splits)
        self.folder = dataset_folder(root, KIND, "celeba", _looks_like_celeba)
        self.root = self.folder.parent
        self.target_type = target_types(target_type, self.target_types)
        self.transform, self.target_transform = transform, target_transform
        self.images = _image_folder(self.folder)
        if not self.images.is_dir():
            raise dataset_error(KIND, f"Missing image folder {self.images.name}/ in {self.folder}.", self.images)
        table = read_binary_attributes(_require_annotation(self.folder, "attributes", "every CelebA split"), KIND)
        self.attr_file = table.path
        columns = select_attributes(table.header, attributes, KIND, table.path, known=CELEBA_ATTRIBUTES)
        self._all_files = table.keys
        self._rows = self._split_rows(table.keys)
        self.filenames: list[str] = [table.keys[i] for i in self._rows]
        self.attr_names: list[str] = [table.header[c] for c in columns]
        self.attr = torch.from_numpy(table.values[np.ix_(self._rows, columns)].astype(np.int64))
        self._annotations: dict[str, torch.Tensor] = {}
        for name in self.target_type:
            if name in _ANNOTATIONS:
                self.annotation(name)  # a missing or malformed file fails now, not mid-epoch
        self.label_maps = self.folder / CELEBAMASK_FILES["label_maps"]
        if MASK_TARGETS & set(self.target_type) and not self.label_maps.is_dir():
            raise dataset_error(KIND, f"No face masks: target_type {self.target_type} needs label maps in "
                                      f"{self.label_maps.name}/ (000001.jpg -> 0.png), and {self.folder} has none. "
                                      f"{CELEBA_MASKS_HINT}", self.label_maps)
        if check:
            self.check()

    def _split_rows(self, files: list[str]) -> np.ndarray:
        """Rows of list_attr_celeba.txt in this split, from list_eval_partition.txt."""
        if self.split == "all":
            rows = np.arange(len(files))
        else:
            path = _require_annotation(self.folder, "partition", f"the {self.split!r} split")
            partition = read_table(path, KIND, counted=False, header=False, columns=1)
            rows = np.flatnonzero(partition.aligned(files, KIND)[:, 0] == CELEBA_SPLITS[self.split])
        if rows.size == 0:
            source = annotation_file(self.folder, "attributes" if self.split == "all" else "partition")
            raise dataset_error(KIND, f"Split {self.split!r} is empty: {source.name} lists no image for it.", source)
        return rows

    def annotation(self, name: str) -> torch.Tensor:
        """One annotation ("identity", "bbox", "landmarks", "landmarks68") for every item, read on first use."""
        if name not in self._annotations:
            counted, columns, dtype = _ANNOTATIONS[name]
            path = _require_annotation(self.folder, name, f"target_type {name!r}")
            table = read_table(path, KIND, counted=counted, header=counted, columns=columns, dtype=dtype)
            values = torch.from_numpy(table.aligned(self._all_files, KIND)[self._rows])
            self._annotations[name] = values[:, 0] if columns == 1 else values
        return self._annotations[name]

    def has_annotation(self, name: str) -> bool:
        """Whether this folder holds annotation `name` ("identity", "bbox", ...): many downloads lack some."""
        return name in self._annotations or annotation_file(self.folder, name).is_file()

    @property
    def identity(self) -> torch.Tensor:
        """The identity number of every item (CelebA's identity_CelebA.txt), shape (N,)."""
        return self.annotation("identity")

    def check(self) -> None:
        """Verify that every listed image (and label map, when masks are targets) exists; one listing per folder."""
        require_files(self.images, self.filenames, KIND, self.attr_file)
        if MASK_TARGETS & set(self.target_type):
            names = [self.label_map_path(i).name for i in range(len(self))]
            require_files(self.label_maps, names, KIND, self.attr_file)

    def __len__(self) -> int:
        return len(self.filenames)

    def label_map_path(self, index: int) -> Path:
        """Where the label map of item `index` lives: 000001.jpg -> CelebAMask-HQ-mask/0.png."""
        name = self.filenames[index]
        try:
            k = int(Path(name).stem) - 1
        except ValueError:
            raise dataset_error(KIND, f"Cannot find the label map of {name}: CelebA image names are numbers "
                                      f"(000001.jpg).", self.attr_file) from None
        return self.label_maps / f"{k}.png"

    def label_map(self, index: int, size: tuple[int, int] | None = None) -> np.ndarray:
        """The label map of item `index` (H x W uint8), resized (nearest) to `size` (W, H) when given."""
        path = self.label_map_path(index)
        if not path.is_file():
            raise dataset_error(KIND, f"Label map {path.name} of image {self.filenames[index]} is missing.", path)
        labels = read_label_map(path, KIND)
        return labels if size is None else fit_to_image(labels, size, path, self.images / self.filenames[index], KIND)

    def __getitem__(self, index: int) -> tuple:
        image = open_image(self.images / self.filenames[index], KIND, "RGB", listed_in=self.attr_file)
        labels = self.label_map(index, image.size) if MASK_TARGETS & set(self.target_type) else None
        targets = []
        for name in self.target_type:
            if name == "attr":
                targets.append(self.attr[index])
            elif name in MASK_TARGETS:
                targets.append(mask_target(name, labels))
            else:
                targets.append(self.annotation(name)[index])
        return finish(image, targets, self.transform, self.target_transform)
