"""CelebAMask-HQ: face images with 18-class parsing masks, read from the official per-class PNGs or from
combined label maps, plus the face + hair + hat reduction that Toledo & Antonelo (ENIAC 2021) train with.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from faceedu.data.layout import (
    CELEBA_ATTRIBUTES, CELEBA_FILES, CELEBA_SPLITS, CELEBAMASK_CLASSES, CELEBAMASK_FILES, CELEBAMASK_LABELS,
    FACE_HAIR_HAT_CLASSES, dataset_error,
)
from faceedu.data.loading import (
    check_split, dataset_folder, finish, open_image, read_binary_attributes, read_table, require_files,
    select_attributes, target_types,
)

KIND = "celebamask"
MASK_TARGETS = frozenset({"mask", "facemask"})

_FACE_HAIR_HAT = np.zeros(256, dtype=bool)
_FACE_HAIR_HAT[[CELEBAMASK_LABELS[name] for name in FACE_HAIR_HAT_CLASSES]] = True


def face_hair_hat_mask(label_map: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """True where a CelebAMask-HQ label map shows face, hair or hat: every class except background, ears,
    earring, neck, necklace and cloth (Toledo & Antonelo). Same type, shape and device as the input."""
    if isinstance(label_map, torch.Tensor):
        return torch.from_numpy(_FACE_HAIR_HAT).to(label_map.device)[label_map.long()]
    return _FACE_HAIR_HAT[np.asarray(label_map)]


# The class order of face-parsing.PyTorch (BiSeNet trained on CelebAMask-HQ), whose predictions are the
# masks Toledo & Antonelo used for the aligned CelebA images: value i + 1 is class i, 0 is background.
FACE_PARSING_CLASSES: tuple[str, ...] = (
    "skin", "l_brow", "r_brow", "l_eye", "r_eye", "eye_g", "l_ear", "r_ear", "ear_r",
    "nose", "mouth", "u_lip", "l_lip", "neck", "neck_l", "cloth", "hair", "hat",
)
_FROM_FACE_PARSING = np.array([0] + [CELEBAMASK_LABELS[name] for name in FACE_PARSING_CLASSES], dtype=np.uint8)


def from_face_parsing(parsing: np.ndarray) -> np.ndarray:
    """Relabel a face-parsing.PyTorch prediction (values 0-18 in its own class order) into CelebAMask-HQ
    values, the order every label map on disk uses here."""
    return _FROM_FACE_PARSING[np.asarray(parsing)]


def mask_target(target_type: str, labels: np.ndarray) -> torch.Tensor:
    """The "mask" target (the label map as a LongTensor H x W) or "facemask" (face+hair+hat, float 1 x H x W)."""
    if target_type == "mask":
        return torch.from_numpy(labels.astype(np.int64))
    return torch.from_numpy(face_hair_hat_mask(labels)).float()[None]


def _single_channel(image: Image.Image) -> np.ndarray:
    """The stored values of a mask PNG (palette indices, gray levels, or the first channel of RGB)."""
    values = np.asarray(image)
    return values[..., 0] if values.ndim == 3 else values


def read_label_map(path: Path, kind: str = KIND) -> np.ndarray:
    """A combined label map (H x W uint8, 0 background, class values as CELEBAMASK_LABELS)."""
    labels = _single_channel(open_image(path, kind, mode=None))
    if labels.max(initial=0) > len(CELEBAMASK_CLASSES):
        raise dataset_error(kind, f"{path.name} is not a label map: it holds the value {int(labels.max())}, "
                                  f"but labels go from 0 (background) to {len(CELEBAMASK_CLASSES)}.", path)
    return labels.astype(np.uint8)


def class_mask_paths(anno: Path, k: int) -> dict[str, Path]:
    """The per-class PNGs that exist for CelebAMask-HQ image k: anno/{k // 2000}/{k:05d}_{class}.png."""
    paths = {name: anno / str(k // 2000) / f"{k:05d}_{name}.png" for name in CELEBAMASK_CLASSES}
    return {name: path for name, path in paths.items() if path.is_file()}


def combine_class_masks(paths: dict[str, Path], kind: str = KIND) -> np.ndarray:
    """One label map from binary per-class masks, painted in class order so that later classes overwrite
    earlier ones, exactly as the official g_mask.py does (e.g. hair over skin)."""
    labels = None
    for name in CELEBAMASK_CLASSES:
        if name not in paths:
            continue
        mask = _single_channel(open_image(paths[name], kind, mode=None))
        if labels is None:
            labels = np.zeros(mask.shape, dtype=np.uint8)
        elif mask.shape != labels.shape:
            raise dataset_error(kind, f"Mask {paths[name].name} is {mask.shape[1]}x{mask.shape[0]} but the other "
                                      f"masks of its image are {labels.shape[1]}x{labels.shape[0]}.", paths[name])
        labels[mask != 0] = CELEBAMASK_LABELS[name]
    if labels is None:
        raise ValueError("combine_class_masks needs at least one mask file")
    return labels


def fit_to_image(labels: np.ndarray, size: tuple[int, int], label_path: Path, image_path: Path,
                 kind: str = KIND) -> np.ndarray:
    """Resize a label map (nearest) to its image's `size` (W, H), as for CelebAMask-HQ's 512 masks of 1024
    images; a label map whose aspect ratio differs from its image's cannot belong to it: DatasetError."""
    height, width = labels.shape
    if (width, height) == size:
        return labels
    if abs(width * size[1] - size[0] * height) > 0.02 * width * size[1]:
        raise dataset_error(kind, f"Label map {label_path.name} is {width}x{height} but its image {image_path.name} "
                                  f"is {size[0]}x{size[1]}: their shapes differ, so they cannot belong together.",
                            label_path)
    return np.asarray(Image.fromarray(labels).resize(size, Image.Resampling.NEAREST))


def _looks_like_celebamask(folder: Path) -> bool:
    return (folder / CELEBAMASK_FILES["attributes"]).is_file() or (folder / CELEBAMASK_FILES["images"]).is_dir()


class CelebAMaskHQ(Dataset):
    """CelebAMask-HQ as (image, target): a PIL RGB image and one or several of "mask" (label map, LongTensor
    H x W), "facemask" (face+hair+hat, float 1 x H x W) and "attr" (LongTensor of 0/1 in `attr_names` order).

    Masks come from combined label maps (CelebAMask-HQ-mask/{k}.png) when that folder exists, otherwise
    from the official per-class PNGs, and are resized (nearest) to the image. Splits other than "all"
    follow CelebA's partition of each image's original (CelebA-HQ-to-CelebA-mapping.txt), as the official
    code does; they need ROOT/celeba/list_eval_partition.txt. `check=True` verifies at construction that
    every listed image and mask exists; otherwise a missing file is reported when its item is loaded.
    """

    target_types = ("mask", "facemask", "attr")
    splits = ("train", "valid", "test", "all")

    def __init__(self, root: Path | str, split: str = "all", target_type: str | Sequence[str] = "mask",
                 attributes: Sequence[str] | None = None, transform: Callable | None = None,
                 target_transform: Callable | None = None, check: bool = False) -> None:
        self.split = check_split(split, self.splits)
        self.folder = dataset_folder(root, KIND, "CelebAMask-HQ", _looks_like_celebamask)
        self.root = self.folder.parent
        self.target_type = target_types(target_type, self.target_types)
        self.transform, self.target_transform = transform, target_transform
        self.images = self.folder / CELEBAMASK_FILES["images"]
        if not self.images.is_dir():
            raise dataset_error(KIND, f"Missing image folder {self.images.name}/ in {self.folder}.", self.images)
        table = read_binary_attributes(self.folder / CELEBAMASK_FILES["attributes"], KIND)
        self.attr_file = table.path
        columns = select_attributes(table.header, attributes, KIND, table.path, known=CELEBA_ATTRIBUTES)
        rows = self._split_rows(table.keys)
        self.filenames = [table.keys[i] for i in rows]
        self.attr_names = [table.header[c] for c in columns]
        self.attr = torch.from_numpy(table.values[np.ix_(rows, columns)].astype(np.int64))
        self.mask_folder = self._mask_folder() if MASK_TARGETS & set(self.target_type) else None
        if check:
            self.check()

    def _split_rows(self, keys: list[str]) -> np.ndarray:
        """Rows of the attribute file in this split: CelebA's partition code of each image's original."""
        if self.split == "all":
            rows = np.arange(len(keys))
        else:
            mapping = read_table(self.folder / CELEBAMASK_FILES["mapping"], KIND, counted=False, header=True,
                                 columns=2, dtype=str)
            originals = mapping.aligned([Path(key).stem for key in keys], KIND)[:, 1].tolist()
            partition_path = self.root / "celeba" / CELEBA_FILES["partition"]
            if not partition_path.is_file():
                raise dataset_error(KIND, f"split={self.split!r} needs CelebA's {partition_path.name} next to "
                                          f"CelebAMask-HQ/ (at ROOT/celeba/): missing.", partition_path)
            partition = read_table(partition_path, "celeba", counted=False, header=False, columns=1)
            rows = np.flatnonzero(partition.aligned(originals, KIND)[:, 0] == CELEBA_SPLITS[self.split])
        if rows.size == 0:
            raise dataset_error(KIND, f"Split {self.split!r} of CelebAMask-HQ is empty.", self.folder)
        return rows

    def _mask_folder(self) -> Path:
        """Combined label maps when present (one read per item), else the per-class PNG tree."""
        for name in ("label_maps", "mask_anno"):
            if (self.folder / CELEBAMASK_FILES[name]).is_dir():
                return self.folder / CELEBAMASK_FILES[name]
        raise dataset_error(KIND, f"No masks in {self.folder}: neither {CELEBAMASK_FILES['mask_anno']}/ "
                                  f"nor {CELEBAMASK_FILES['label_maps']}/ exists.", self.folder)

    @property
    def combined(self) -> bool:
        """Whether masks are read from combined label maps rather than per-class PNGs."""
        return self.mask_folder is not None and self.mask_folder.name == CELEBAMASK_FILES["label_maps"]

    def check(self) -> None:
        """Verify that every listed image (and mask, when masks are targets) exists; one listing per folder."""
        require_files(self.images, self.filenames, KIND, self.attr_file)
        if self.mask_folder is None:
            return
        numbers = [Path(name).stem for name in self.filenames]
        if self.combined:
            require_files(self.mask_folder, [f"{k}.png" for k in numbers], KIND, self.attr_file)
            return
        have = {path.name[:5] for path in self.mask_folder.glob("*/*.png")}
        missing = [k for k in numbers if f"{int(k):05d}" not in have]
        if missing:
            raise dataset_error(KIND, f"{len(missing)} image(s) listed in {self.attr_file.name} have no mask "
                                      f"PNGs, e.g. {int(missing[0]):05d}_<class>.png.", self.mask_folder)

    def __len__(self) -> int:
        return len(self.filenames)

    def label_map(self, index: int, size: tuple[int, int] | None = None) -> np.ndarray:
        """The label map of item `index` (H x W uint8), resized (nearest) to `size` (W, H) when given."""
        if self.mask_folder is None:
            self.mask_folder = self._mask_folder()
        k = int(Path(self.filenames[index]).stem)
        if self.combined:
            path = self.mask_folder / f"{k}.png"
            if not path.is_file():
                raise dataset_error(KIND, f"Label map {path.name} of image {self.filenames[index]} is missing.", path)
            labels = read_label_map(path, KIND)
        else:
            paths = class_mask_paths(self.mask_folder, k)
            if not paths:
                path = self.mask_folder / str(k // 2000) / f"{k:05d}_<class>.png"
                raise dataset_error(KIND, f"No mask PNGs for image {self.filenames[index]}.", path)
            labels = combine_class_masks(paths, KIND)
            path = next(iter(paths.values()))
        return labels if size is None else fit_to_image(labels, size, path, self.images / self.filenames[index], KIND)

    def __getitem__(self, index: int) -> tuple:
        image = open_image(self.images / self.filenames[index], KIND, "RGB", listed_in=self.attr_file)
        labels = self.label_map(index, image.size) if MASK_TARGETS & set(self.target_type) else None
        targets = [self.attr[index] if t == "attr" else mask_target(t, labels) for t in self.target_type]
        return finish(image, targets, self.transform, self.target_transform)
