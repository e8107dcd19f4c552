"""The one way every model, lesson, report and judge reaches CelebA-layout faces (real CelebA, Kaggle's CSV
copy or SynthFaces): a split decoded once into uint8 tensors, cached under the user's cache directory, so the
quick presets train from memory instead of decoding JPEGs each epoch (24,000 SynthFaces images at 64x64 are
~300 MB). Nothing is ever written into the dataset folder: it may be read-only or shared.

Only images, attributes and the partition are required. Identities are read when identity_CelebA.txt is
there (or demanded), face masks when label maps are there (or demanded, with the way to make them)."""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from faceedu.data.celeba import KIND, CelebA, annotation_file
from faceedu.data.celebamask import face_hair_hat_mask
from faceedu.data.layout import CELEBA_FILES, CELEBA_MASKS_HINT, dataset_error
from faceedu.data.transforms import FaceCrop

CACHE_VERSION = 2
CACHE_ENV = "FACEEDU_DATA_CACHE"      # where decoded splits go; `--cache-dir` on the commands sets it


class FaceTensors(Dataset):
    """Items are dicts: "image" float (3, S, S) in [0, 1], "attr" float (A,) of 0/1, and, when the data has
    them, "identity" long and "mask" float (1, S, S), the face+hair+hat mask (Toledo & Antonelo).
    `identity` and `masks` are None when the folder has no identities or label maps."""

    def __init__(self, images: torch.Tensor, attr: torch.Tensor, attr_names: Sequence[str],
                 identity: torch.Tensor | None = None, masks: torch.Tensor | None = None,
                 folder: Path | None = None, split: str = ""):
        self.images, self.attr, self.identity, self.masks = images, attr, identity, masks
        self.attr_names = list(attr_names)
        self.folder, self.split = folder, split

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        item = {"image": self.images[index].float().div(255), "attr": self.attr[index].float()}
        if self.identity is not None:
            item["identity"] = self.identity[index]
        if self.masks is not None:
            item["mask"] = self.masks[index].float()
        return item

    def gather(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        """The batch of items `index` in one indexing operation each (what a DataLoader would collate)."""
        batch = {"image": self.images[index].float().div_(255), "attr": self.attr[index].float()}
        if self.identity is not None:
            batch["identity"] = self.identity[index]
        if self.masks is not None:
            batch["mask"] = self.masks[index].float()
        return batch

    def to(self, device: torch.device | str) -> "FaceTensors":
        """The same faces with their tensors on `device` (uint8 stays uint8: 4x less memory than floats)."""
        move = (lambda t: None if t is None else t.to(device))
        return FaceTensors(move(self.images), move(self.attr), self.attr_names, move(self.identity),
                           move(self.masks), folder=self.folder, split=self.split)

    @property
    def synthetic(self) -> bool:
        """Whether these faces are SynthFaces (its generator writes synthfaces.json beside celeba/)."""
        return self.folder is not None and any((f / "synthfaces.json").is_file()
                                               for f in (self.folder, self.folder.parent))

    def attribute(self, name: str) -> torch.Tensor:
        """The 0/1 column of one attribute, by its CelebA name."""
        if name not in self.attr_names:
            raise KeyError(f"{name!r} is not among this dataset's attributes: {', '.join(self.attr_names)}")
        return self.attr[:, self.attr_names.index(name)]

    def require_identity(self, purpose: str = "this") -> torch.Tensor:
        """The identities, or a DatasetError saying which file `purpose` needs."""
        if self.identity is None:
            raise _missing_identity(self.folder, purpose)
        return self.identity


def _missing_identity(folder: Path | None, purpose: str):
    path = (folder or Path(".")) / CELEBA_FILES["identity"]
    return dataset_error(KIND, f"Missing annotation file {path.name}: {purpose} needs identities (which photos "
                               f"show the same person); nothing else does. Many CelebA downloads lack it; get "
                               f"it from CelebA's Anno/ folder.", path)


# --- the cache ------------------------------------------------------------------------------------------

def data_cache_dir(cache_dir: Path | str | None = None) -> Path:
    """Where decoded splits live: `cache_dir`, else $FACEEDU_DATA_CACHE, else the data/ folder of
    $FACEEDU_CACHE, $XDG_CACHE_HOME/faceedu or ~/.cache/faceedu."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser().absolute()
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser().absolute()
    if os.environ.get("FACEEDU_CACHE"):
        base = Path(os.environ["FACEEDU_CACHE"]).expanduser()
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "faceedu"
    return base.absolute() / "data"


def _stamp(path: Path) -> list:
    """What changes when a file or folder is replaced, rewritten or gains/loses entries."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return [path.name, None]
    return [path.name, stat.st_size if path.is_file() else None, stat.st_mtime_ns]


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


class _Cache:
    """Cache files of one dataset folder: <cache>/celeba-<hash of its absolute path>/<split>-<size>-<crop>-
    <what>-<fingerprint>.pt, the fingerprint made from the annotation files, the image (or label-map) folder,
    a sample of 33 of the split's files and its file names, so a changed folder is decoded again (files
    added, removed, re-extracted or relisted). Each cache file may hold the first N items."""

    def __init__(self, dataset: CelebA, crop: FaceCrop, cache_dir: Path | str | None, enabled: bool):
        folder = dataset.folder.resolve()
        self.enabled = enabled
        self.dir = data_cache_dir(cache_dir) / f"celeba-{_digest(str(folder))[:12]}"
        self.folder = folder
        files = [annotation_file(dataset.folder, "attributes"), annotation_file(dataset.folder, "partition")]
        self.base = {"v": CACHE_VERSION, "folder": str(folder), "split": dataset.split,
                     "crop": [crop.size, crop.mode, crop.crop_fraction], "annotations": [_stamp(f) for f in files],
                     "names": _digest(dataset.filenames)}
        self.prefix = f"{dataset.split}-{crop.size}-{crop.mode}"
        self.sources = {"images": dataset.images, "masks": dataset.label_maps}
        self.dataset = dataset

    def _sample(self, what: str) -> list[Path]:
        """33 files spread over the split (images, or label maps: asked for only when masks are)."""
        rows = range(0, len(self.dataset), max(1, len(self.dataset) // 32))[:33]
        if what == "images":
            return [self.dataset.images / self.dataset.filenames[i] for i in rows]
        return [self.dataset.label_map_path(i) for i in rows]

    def path(self, what: str) -> Path:
        key = self.base | {"what": what, "source": _stamp(self.sources[what]),
                           "sample": [_stamp(f) for f in self._sample(what)]}
        return self.dir / f"{self.prefix}-{what}-{_digest(key)}.pt"

    def load(self, what: str, count: int) -> torch.Tensor | None:
        """The first `count` items of `what` if a matching cache file holds at least that many."""
        path = self.path(what)
        if not self.enabled or not path.is_file():
            return None
        try:
            saved = torch.load(path, weights_only=True)
        except Exception:                      # a damaged cache file is only a cache miss
            return None
        return saved["tensor"][:count] if len(saved["tensor"]) >= count else None

    def save(self, what: str, tensor: torch.Tensor) -> None:
        if not self.enabled:
            return
        path = self.path(what)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            (self.dir / "source.txt").write_text(f"{self.folder}\n")
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            torch.save({"tensor": tensor}, tmp)
            os.replace(tmp, path)
            for stale in self.dir.glob(f"{self.prefix}-{what}-*.pt"):   # older versions of this folder
                if stale != path:
                    stale.unlink(missing_ok=True)
            _prune(self.dir.parent)
        except OSError as error:
            warnings.warn(f"Cannot write the decoded-data cache in {self.dir} ({error}); going on without it. "
                          f"Choose another place with --cache-dir or ${CACHE_ENV}.", stacklevel=3)


def _prune(root: Path) -> None:
    """Remove the caches of dataset folders that no longer exist (temporary copies, moved downloads)."""
    import shutil

    for folder in root.glob("celeba-*"):
        source = folder / "source.txt"
        if source.is_file() and not Path(source.read_text().strip()).exists():
            shutil.rmtree(folder, ignore_errors=True)


# --- the entry point ------------------------------------------------------------------------------------

def load_face_tensors(root: Path | str, split: str = "train", size: int = 64, masks: bool | None = True,
                      crop: str = "center", limit: int | None = None, cache: bool = True,
                      identities: bool | None = None, cache_dir: Path | str | None = None) -> FaceTensors:
    """Decode a CelebA-layout split (images, all attributes, and identities and face masks when present)
    into memory, reusing the decoded-data cache (see `data_cache_dir`) when it matches the folder.

    `masks`: True needs label maps (an error says how to make them), False skips them, None loads them when
    the folder has them. `identities`: True needs identity_CelebA.txt, False skips it, None reads it when
    present. `limit` keeps the first N items (and decodes only those)."""
    dataset = CelebA(root, split=split, target_type="attr")
    fit = FaceCrop(size, crop)
    count = len(dataset) if limit is None else max(0, min(limit, len(dataset)))
    has_masks = dataset.label_maps.is_dir()
    if masks and not has_masks:
        raise dataset_error(KIND, f"No face masks for {dataset.folder}: the masked VAE and the masked metrics need "
                                  f"label maps in {dataset.label_maps.name}/ (000001.jpg -> 0.png). "
                                  f"{CELEBA_MASKS_HINT}", dataset.label_maps)
    want_masks = has_masks if masks is None else bool(masks)
    if identities and not dataset.has_annotation("identity"):
        raise _missing_identity(dataset.folder, "identities=True")
    identity = dataset.identity[:count].clone() if identities is not False and dataset.has_annotation("identity") \
        else None

    store = _Cache(dataset, fit, cache_dir, cache)
    images = store.load("images", count)
    face = store.load("masks", count) if want_masks else None
    if images is None or (want_masks and face is None):
        images, face = _decode(dataset, fit, count, images, want_masks and face is None, face)
        store.save("images", images)
        if want_masks:
            store.save("masks", face)
    return FaceTensors(images, dataset.attr[:count].to(torch.uint8), dataset.attr_names, identity,
                       face if want_masks else None, folder=dataset.folder.resolve(), split=split)


def _decode(dataset: CelebA, fit: FaceCrop, count: int, images: torch.Tensor | None, decode_masks: bool,
            face: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Decode the first `count` items: the images unless given, the face masks when asked."""
    size = fit.size
    decode_images = images is None
    if decode_images:
        images = torch.empty((count, 3, size, size), dtype=torch.uint8)
    if decode_masks:
        face = torch.empty((count, 1, size, size), dtype=torch.uint8)
    for i in range(count):
        if decode_images:
            image, _ = dataset[i]
            images[i] = torch.from_numpy(np.asarray(fit.image(image)).copy()).permute(2, 0, 1)
            image_size = image.size
        elif decode_masks:
            path = dataset.images / dataset.filenames[i]
            try:
                with Image.open(path) as header:                    # the size only: no decoding
                    image_size = header.size
            except FileNotFoundError:
                raise dataset_error(KIND, f"Image {path.name} is listed in {dataset.attr_file.name} but is "
                                          f"missing on disk.", path) from None
        if decode_masks:
            labels = fit.label_map(dataset.label_map(i, image_size))
            face[i, 0] = torch.from_numpy(np.asarray(face_hair_hat_mask(labels), dtype=np.uint8))
    return images, face
