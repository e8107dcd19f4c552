"""A small face parser: a compact U-Net that labels every pixel of a face with CelebAMask-HQ's classes.

Why it is here: Toledo & Antonelo's masked VAE needs a face + hair + hat mask for every aligned CelebA
image, and CelebAMask-HQ's own label maps belong to other (HQ) crops, so the paper's masks came from a
face-parsing network (face-parsing.PyTorch: a BiSeNet trained on CelebAMask-HQ) run over CelebA. The
course gives the learner the same route with a network small enough to train on a CPU:
`faceedu train parser` (on CelebAMask-HQ when present, else on SynthFaces' label maps), then
`faceedu data masks --root CELEBA --parser RUN` writes label maps where the CelebA loader reads them.

The network (Ronneberger et al. 2015, U-Net, narrowed): an encoder of four stages (two 3x3 conv-BN-ReLU,
then 2x2 max-pool), a bottleneck, and a decoder that upsamples (bilinear x2), concatenates the encoder's
feature map of the same size (the skip connection that keeps edges sharp) and convolves again; a 1x1 conv
gives one logit per class. Input: faces (N, 3, S, S) in [0, 1] (any size: resized to `config.size`,
the whole image squashed to a square as Toledo & Antonelo squash 178x218 to 144x144); output logits
(N, 19, S, S): 0 background, then CelebAMask-HQ's 18 classes in `faceedu.data.layout.CELEBAMASK_CLASSES`
order, the values every label map on disk uses.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from faceedu.data.layout import CELEBAMASK_CLASSES

CLASSES: tuple[str, ...] = ("background", *CELEBAMASK_CLASSES)  # label value = index
PARSER_FILE = "parser.pt"


@dataclass
class ParserConfig:
    size: int = 64                                  # the parser's input side; faces are squashed to it
    widths: tuple[int, ...] = (16, 32, 64, 128)     # encoder stages; the bottleneck doubles the last
    classes: int = len(CLASSES)

    def __post_init__(self) -> None:
        self.widths = tuple(self.widths)
        if self.size % 2 ** len(self.widths):
            raise ValueError(f"ParserConfig.size {self.size} must be divisible by 2^{len(self.widths)} (one halving per stage).")


def double_conv(c_in: int, c_out: int) -> nn.Sequential:
    """Two 3x3 conv-BN-ReLU: the U-Net's unit."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
                         nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class FaceParser(nn.Module):
    """Compact U-Net: (N, 3, S, S) in [0, 1] -> logits (N, classes, S, S).
    With widths (16, 32, 64, 128) at S = 64: 64 -> 32 -> 16 -> 8 -> 4 (bottleneck, 256 channels) and back."""

    def __init__(self, config: ParserConfig | None = None, meta: dict | None = None):
        super().__init__()
        self.config = config or ParserConfig()
        self.meta: dict[str, Any] = dict(meta or {})
        widths = self.config.widths
        self.down = nn.ModuleList()
        c = 3
        for w in widths:
            self.down.append(double_conv(c, w))
            c = w
        self.bottleneck = double_conv(c, 2 * c)
        c = 2 * c
        self.up = nn.ModuleList()
        for w in reversed(widths):
            self.up.append(double_conv(c + w, w))  # upsampled features + the skip connection
            c = w
        self.classify = nn.Conv2d(c, self.config.classes, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float().div(255) if images.dtype == torch.uint8 else images.float()
        size = self.config.size
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        x = x * 2 - 1
        skips = []
        for stage in self.down:
            x = stage(x)
            skips.append(x)                                   # (N, w, s, s)
            x = F.max_pool2d(x, 2)                            # (N, w, s/2, s/2)
        x = self.bottleneck(x)
        for stage, skip in zip(self.up, reversed(skips)):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = stage(torch.cat([x, skip], 1))
        return self.classify(x)                               # (N, classes, S, S)

    @torch.no_grad()
    def parse(self, images: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        """Label maps (N, H, W) uint8 for images (N, 3, h, w): logits resized (bilinear) to `size` (H, W)
        (default: the images' own) before the argmax, so the map lines up with the original picture."""
        logits = self(images)
        target = size or tuple(images.shape[-2:])
        if logits.shape[-2:] != target:
            logits = F.interpolate(logits, size=target, mode="bilinear", align_corners=False)
        return logits.argmax(1).to(torch.uint8)


# --- measuring --------------------------------------------------------------------------------------------

def confusion(predicted: torch.Tensor, truth: torch.Tensor, classes: int = len(CLASSES)) -> torch.Tensor:
    """(classes, classes) pixel counts: row = true label, column = predicted label."""
    index = truth.long().flatten() * classes + predicted.long().flatten()
    return torch.bincount(index, minlength=classes * classes).view(classes, classes)


def iou_table(matrix: torch.Tensor, names: Sequence[str] = CLASSES) -> dict[str, Any]:
    """Per-class IoU = TP / (TP + FP + FN) from a confusion matrix, for the classes present in the truth;
    their mean (mIoU), pixel accuracy, and the face+hair+hat mask's IoU (what the masked VAE uses)."""
    from faceedu.data.layout import CELEBAMASK_LABELS, FACE_HAIR_HAT_CLASSES

    matrix = matrix.double()
    tp = matrix.diagonal()
    truth, predicted = matrix.sum(1), matrix.sum(0)
    per = {names[c]: float(tp[c] / (truth[c] + predicted[c] - tp[c])) for c in range(len(names)) if truth[c] > 0}
    face = torch.zeros(len(names), dtype=torch.bool)
    face[[CELEBAMASK_LABELS[n] for n in FACE_HAIR_HAT_CLASSES]] = True
    inter = matrix[face][:, face].sum()
    union = matrix[face].sum() + matrix[:, face].sum() - inter
    return {"per_class": per, "mean_iou": sum(per.values()) / max(1, len(per)),
            "pixel_accuracy": float(tp.sum() / matrix.sum()), "face_hair_hat_iou": float(inter / union),
            "pixels": int(matrix.sum()), "pixel_share": {names[c]: float(truth[c] / matrix.sum()) for c in range(len(names)) if truth[c] > 0}}


# --- saving and loading ----------------------------------------------------------------------------------

def export_parser(parser: FaceParser, path: Path | str) -> Path:
    """The parser's weights (float32), config and meta in one file; `torch.load(weights_only=True)` reads it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    info = {"config": asdict(parser.config), "meta": parser.meta,
            "state_dict": {k: v.detach().cpu() for k, v in parser.state_dict().items()}}
    tmp = path.with_suffix(".tmp")
    torch.save(info, tmp)
    tmp.replace(path)
    return path


def load_parser(path: Path | str, device: torch.device | str = "cpu") -> FaceParser:
    """A parser from a run folder (RUN/parser.pt) or the file itself, in eval mode."""
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / PARSER_FILE
    if not path.is_file():
        raise FileNotFoundError(f"No face parser at {path}. Train one with:\n    faceedu train parser --run {path.parent}")
    info = torch.load(path, map_location="cpu", weights_only=True)
    config = info["config"]
    parser = FaceParser(ParserConfig(**{**config, "widths": tuple(config["widths"])}), info["meta"])
    parser.load_state_dict(info["state_dict"])
    return parser.to(device).eval()


__all__ = ["CLASSES", "PARSER_FILE", "ParserConfig", "FaceParser", "confusion", "iou_table", "export_parser",
           "load_parser"]
