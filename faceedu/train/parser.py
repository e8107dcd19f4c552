"""Training the face parser (`faceedu train parser`) on the shared loop, measuring it (per-class IoU on its
own test split) and using it (`faceedu data masks`) to write label maps for a real CelebA folder in the
layout the CelebA loader reads (celeba/CelebAMask-HQ-mask/{k}.png for image {k+1:06d}.jpg), so that the
masked VAE trains on real faces, as Toledo & Antonelo's did with face-parsing.PyTorch's masks.

    faceedu train parser --root datasets/synthfaces --run runs/parser            # SynthFaces' label maps
    faceedu train parser --root CELEBAMASK_ROOT --run runs/parser --preset full  # CelebAMask-HQ, when present
    faceedu data masks --root CELEBA_ROOT --parser runs/parser
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from faceedu.data.layout import CELEBAMASK_FILES, CELEBAMASK_LABELS
from faceedu.losses import dice_loss
from faceedu.models.parser import CLASSES, PARSER_FILE, FaceParser, ParserConfig, confusion, export_parser, iou_table
from faceedu.train.loop import LoopConfig, train


@dataclass
class ParserTrainConfig:
    """The parser's training recipe: AdamW with a one-cycle schedule, cross-entropy per pixel."""

    steps: int = 1500
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 1e-4
    train_limit: int | None = 8000   # decoded into memory once; None: the whole training split
    test_limit: int | None = 1000
    augment: bool = True             # flips (left/right classes swapped), anisotropic scale, shift, brightness


PRESETS: dict[str, tuple[ParserConfig, ParserTrainConfig]] = {
    "quick": (ParserConfig(size=64, widths=(12, 24, 48, 96)), ParserTrainConfig()),
    "full": (ParserConfig(size=128, widths=(32, 64, 128, 256)),
             ParserTrainConfig(steps=20_000, batch_size=64, lr=2e-3, train_limit=None, test_limit=2000)),
}

# A horizontal flip turns a left eye into a right eye: the label values to swap.
_SWAP = np.arange(len(CLASSES))
for a, b in (("l_eye", "r_eye"), ("l_brow", "r_brow"), ("l_ear", "r_ear")):
    _SWAP[CELEBAMASK_LABELS[a]], _SWAP[CELEBAMASK_LABELS[b]] = CELEBAMASK_LABELS[b], CELEBAMASK_LABELS[a]
FLIP_LABELS = torch.from_numpy(_SWAP)


# --- data -------------------------------------------------------------------------------------------------

def parser_source(root: Path | str, data: str = "auto") -> str:
    """"celebamask" (CelebAMask-HQ's 30,000 hand-labelled faces) when ROOT holds it and is not SynthFaces, else
    "celeba" (label maps beside CelebA-layout images: SynthFaces' ground truth)."""
    from faceedu.models.judges import synthfaces_marker

    if data != "auto":
        return data
    root = Path(root).expanduser()
    if synthfaces_marker(root) is None and ((root / "CelebAMask-HQ").is_dir() or (root / CELEBAMASK_FILES["images"]).is_dir()):
        return "celebamask"
    return "celeba"


def _dataset(root: Path | str, source: str, split: str):
    if source == "celebamask":
        from faceedu.data.celebamask import CelebAMaskHQ

        try:
            return CelebAMaskHQ(root, split=split, target_type="mask")
        except Exception:  # no CelebA partition beside it: a fixed split by image number instead
            everything = CelebAMaskHQ(root, split="all", target_type="mask")
            cut = int(len(everything) * 0.9)
            keep = range(cut) if split == "train" else range(cut, len(everything))
            return torch.utils.data.Subset(everything, list(keep))
    from faceedu.data.celeba import CelebA

    return CelebA(root, split=split, target_type="mask")


def load_parsing_data(root: Path | str, split: str, size: int, limit: int | None = None,
                      source: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """(images uint8 (N, 3, S, S), label maps uint8 (N, S, S)) of a split, each squashed to S x S (the label
    map with nearest neighbours), decoded into memory."""
    from faceedu.data.transforms import FaceCrop

    dataset = _dataset(root, parser_source(root, source), split)
    count = len(dataset) if limit is None else min(limit, len(dataset))
    fit = FaceCrop(size, "squash")
    images = torch.empty(count, 3, size, size, dtype=torch.uint8)
    labels = torch.empty(count, size, size, dtype=torch.uint8)
    for i in range(count):
        image, label = dataset[i]
        images[i] = torch.from_numpy(np.asarray(fit.image(image)).copy()).permute(2, 0, 1)
        labels[i] = torch.from_numpy(fit.label_map(label.numpy().astype(np.uint8)).copy())
    return images, labels


class Parsed(Dataset):
    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"image": self.images[index].float().div(255), "label": self.labels[index].long()}


def augment(images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The same random geometry for images (bilinear) and label maps (nearest): flip with left/right classes
    swapped, x-scale 0.8-1.25 (real CelebA is squashed from 178x218), y-scale +-10%, rotation +-8 deg, shift
    +-5%; then brightness and contrast +-15%."""
    n = images.shape[0]
    flip = torch.rand(n) < 0.5
    labels = torch.where(flip.to(labels.device)[:, None, None], FLIP_LABELS.to(labels.device)[labels], labels)
    sign = torch.where(flip, -1.0, 1.0)
    sx = torch.exp((torch.rand(n) * 2 - 1) * math.log(1.25))
    sy = 1 + (torch.rand(n) * 2 - 1) * 0.1
    angle = (torch.rand(n) * 2 - 1) * math.radians(8)
    shift = (torch.rand(n, 2) * 2 - 1) * 0.1
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack([torch.stack([cos / sx * sign, -sin / sx, shift[:, 0]], 1),
                         torch.stack([sin / sy * sign, cos / sy, shift[:, 1]], 1)], 1).to(images)  # (N, 2, 3)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    images = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
    labels = F.grid_sample(labels[:, None].float(), grid, mode="nearest", padding_mode="border",
                           align_corners=False)[:, 0].long()
    gain = 1 + (torch.rand(n, 1, 1, 1, device=images.device) * 2 - 1) * 0.15
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    contrast = 1 + (torch.rand(n, 1, 1, 1, device=images.device) * 2 - 1) * 0.15
    return (((images - mean) * contrast + mean) * gain).clamp(0, 1), labels


# --- the task ---------------------------------------------------------------------------------------------

class ParserTask:
    """One network, AdamW, one-cycle schedule; per-pixel cross-entropy against the label map plus the soft
    Dice loss per class (the overlap of each class right, whatever its size: without it the small parts -
    eyes, brows, lips - stay at IoU 0 for hundreds of steps while the background and skin are learnt)."""

    def __init__(self, parser: FaceParser, config: ParserTrainConfig):
        self.parser, self.config = parser, config
        self.modules = {"parser": parser}
        self.optimizers = {"adamw": torch.optim.AdamW(parser.parameters(), lr=config.lr, weight_decay=config.weight_decay)}
        self.schedulers = {"onecycle": torch.optim.lr_scheduler.OneCycleLR(
            self.optimizers["adamw"], max_lr=config.lr, total_steps=config.steps + 1, pct_start=0.15)}

    def step(self, batch: dict, step: int) -> dict[str, torch.Tensor]:
        images, labels = batch["image"], batch["label"]
        if self.config.augment:
            images, labels = augment(images, labels)
        logits = self.parser(images)                       # (N, classes, S, S)
        onehot = F.one_hot(labels, logits.shape[1]).permute(0, 3, 1, 2).float()
        # Dice per class over the batch (classes first), averaged: a 2%-of-pixels eye counts like the background
        overlap = dice_loss(logits.softmax(1).transpose(0, 1), onehot.transpose(0, 1))
        loss = F.cross_entropy(logits, labels) + overlap
        optimizer = self.optimizers["adamw"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return {"loss": loss.detach(), "dice_loss": overlap.detach(), "pixel_accuracy": (logits.argmax(1) == labels).float().mean().detach()}

    @torch.no_grad()
    def samples(self, batch: dict) -> torch.Tensor:
        """Faces over their predicted label maps (coloured): what the parser sees."""
        images = batch["image"][:8]
        was = self.parser.training
        self.parser.eval()
        predicted = self.parser(images).argmax(1)
        self.parser.train(was)
        return torch.cat([images, colourise(predicted), colourise(batch["label"][:8])])


PALETTE = torch.tensor(np.random.default_rng(3).integers(40, 255, size=(len(CLASSES), 3)), dtype=torch.float32) / 255
PALETTE[0] = 0


def colourise(labels: torch.Tensor) -> torch.Tensor:
    """Label maps (N, H, W) -> RGB (N, 3, H, W) in [0, 1], one colour per class (background black)."""
    return PALETTE.to(labels.device)[labels.long()].permute(0, 3, 1, 2)


# --- training and measuring --------------------------------------------------------------------------------

@torch.no_grad()
def evaluate_parser(parser: FaceParser, images: torch.Tensor, labels: torch.Tensor, batch: int = 200) -> dict[str, Any]:
    """Per-class IoU, mIoU, pixel accuracy and the face+hair+hat mask's IoU on (images, label maps)."""
    device = next(parser.parameters()).device
    parser.eval()
    total = torch.zeros(len(CLASSES), len(CLASSES), dtype=torch.long)
    for i in range(0, len(images), batch):
        predicted = parser.parse(images[i:i + batch].to(device), size=tuple(labels.shape[-2:])).cpu()
        total += confusion(predicted, labels[i:i + batch], len(CLASSES))
    return iou_table(total) | {"images": len(images)}


def train_parser(root: Path | str, run: Path | str, preset: str = "quick", data: str = "auto",
                 overrides: dict[str, Any] | None = None, loop: dict | None = None,
                 model: ParserConfig | None = None) -> dict[str, Any]:
    """Train a parser on the label maps under `root`, measure it on the test split and write RUN/parser.pt
    (weights, config, what it was trained on, the test figures). `model` replaces the preset's network
    (e.g. a smaller one for tests). Returns the test figures."""
    from faceedu.models.judges import provenance

    model_config, config = PRESETS[preset]
    model_config = model or model_config
    config = replace(config, **{k: v for k, v in (overrides or {}).items() if v is not None})
    source = parser_source(root, data)
    run = Path(run)
    start = time.perf_counter()
    images, labels = load_parsing_data(root, "train", model_config.size, config.train_limit, source)
    print(f"parser: {len(images):,} training faces from {source} at {model_config.size}x{model_config.size} "
          f"decoded in {time.perf_counter() - start:.0f} s")
    command = _command(root, run, preset, data, overrides)
    parser = FaceParser(model_config, {"trained_on": provenance(root, "celebamask-hq" if source == "celebamask" else "celeba",
                                                                command, len(images))})
    loop = {"sample_every": 500, "checkpoint_every": 500, "log_every": 25} | (loop or {})
    summary = train(ParserTask(parser, config), Parsed(images, labels), run,
                    LoopConfig(steps=config.steps, batch_size=config.batch_size, **loop),
                    describe={"model": "parser", "preset": preset, "data": str(Path(root).expanduser().resolve()),
                              "source": source, "parser": asdict(model_config), "config": asdict(config)})
    test_images, test_labels = load_parsing_data(root, "test", model_config.size, config.test_limit, source)
    figures = evaluate_parser(parser, test_images, test_labels)
    parser.meta |= {"test": figures, "command": command,
                    "train": {k: summary[k] for k in ("steps", "seconds", "images_per_s", "device")}}
    export_parser(parser, run / PARSER_FILE)
    (run / "parser.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(iou_text(figures))
    print(f"-> {run / PARSER_FILE}; write masks for a CelebA folder with:\n"
          f"    faceedu data masks --root CELEBA_ROOT --parser {run}")
    return figures


def _command(root, run, preset, data, overrides) -> str:
    flags = "".join(f" --{k.replace('_', '-')} {v}" for k, v in (overrides or {}).items() if v is not None)
    return (f"faceedu train parser --root {root} --run {run} --preset {preset}"
            f"{'' if data == 'auto' else ' --data ' + data}{flags}")


def iou_text(figures: dict[str, Any]) -> str:
    """The per-class IoU table, printed."""
    from faceedu.metrics import format_table

    rows = [{"class": n, "IoU": v, "pixel share": figures["pixel_share"][n]} for n, v in figures["per_class"].items()]
    return (f"parser on {figures['images']} test faces: mIoU {figures['mean_iou']:.3f} over "
            f"{len(figures['per_class'])} classes, pixel accuracy {figures['pixel_accuracy']:.3f}, "
            f"face+hair+hat mask IoU {figures['face_hair_hat_iou']:.3f}\n" + format_table(rows))


# --- using it: label maps for a CelebA folder --------------------------------------------------------------

MASKS_INFO = "faceedu-masks.json"


def write_masks(root: Path | str, parser_path: Path | str, batch: int = 64, device: str = "cpu",
                overwrite: bool = False, limit: int | None = None) -> dict[str, Any]:
    """Parse every image listed in ROOT's list_attr_celeba and write its label map, at the image's own size,
    to celeba/CelebAMask-HQ-mask/{k}.png (000001.jpg -> 0.png), where the CelebA loader reads masks. Existing
    maps are kept unless `overwrite`. SynthFaces is refused: its label maps are ground truth."""
    from faceedu.data.celeba import CelebA
    from faceedu.data.loading import open_image
    from faceedu.models.judges import synthfaces_marker
    from faceedu.models.parser import load_parser

    if synthfaces_marker(root) is not None:
        raise SystemExit(f"faceedu data masks: {root} is SynthFaces, whose label maps are ground truth; "
                         "masks are for real CelebA folders.")
    parser = load_parser(parser_path, device)
    dataset = CelebA(root, split="all", target_type="attr")
    folder = dataset.folder / CELEBAMASK_FILES["label_maps"]
    folder.mkdir(exist_ok=True)
    count = len(dataset) if limit is None else min(limit, len(dataset))
    todo = [i for i in range(count) if overwrite or not dataset.label_map_path(i).is_file()]
    start, written = time.perf_counter(), 0
    for first in range(0, len(todo), batch):
        chunk = todo[first:first + batch]
        pictures = [open_image(dataset.images / dataset.filenames[i], "celeba", "RGB", listed_in=dataset.attr_file)
                    for i in chunk]
        by_size: dict[tuple[int, int], list[int]] = {}
        for j, picture in enumerate(pictures):
            by_size.setdefault(picture.size, []).append(j)
        for (width, height), members in by_size.items():
            x = torch.stack([torch.from_numpy(np.asarray(pictures[j]).copy()).permute(2, 0, 1) for j in members])
            maps = parser.parse(x.to(device), size=(height, width)).cpu().numpy()
            for j, labels in zip(members, maps):
                path = dataset.label_map_path(chunk[j])
                tmp = path.with_name(path.stem + ".tmp.png")
                Image.fromarray(labels).save(tmp)
                tmp.replace(path)
                written += 1
    seconds = time.perf_counter() - start
    info = {"parser": str(Path(parser_path).expanduser().resolve()), "images": count, "written": written,
            "kept": count - len(todo), "parser_test": {k: parser.meta.get("test", {}).get(k) for k in ("mean_iou", "face_hair_hat_iou")},
            "parser_trained_on": parser.meta.get("trained_on", {}).get("dataset"),
            "date": time.strftime("%Y-%m-%d", time.gmtime())}
    (folder / MASKS_INFO).write_text(json.dumps(info, indent=2) + "\n")
    rate = written / seconds if seconds > 0 else 0.0
    print(f"Wrote {written} label maps to {folder} ({count - len(todo)} kept) in {seconds:.0f} s ({rate:.0f} images/s). "
          f"Train the masked VAE on them with:\n    faceedu train vae --data celeba --root {root}")
    return info


# --- the command line ---------------------------------------------------------------------------------------

def command_train(args) -> int:
    overrides = {"steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "train_limit": args.train_limit,
                 "test_limit": args.test_limit}
    loop = {"device": args.device, "progress": not args.no_progress, "seed": args.seed}
    train_parser(args.root, args.run, args.preset, args.data, overrides, loop)
    return 0


def command_masks(args) -> int:
    from faceedu.train.loop import pick_device

    write_masks(args.root, args.parser, batch=args.batch_size, device=str(pick_device(args.device)),
                overwrite=args.overwrite, limit=args.limit)
    return 0
