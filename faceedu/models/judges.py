"""Judges: the course's referees. Every editing lesson asks "did the edit work, and is it still the same
person?"; these three small networks answer with numbers.

- `AttributeJudge`: multi-label classifier over the CelebA attributes in use (on SynthFaces, the 25 it
  renders: `faceedu.data.synthfaces.SYNTH_ATTRIBUTES`); one sigmoid logit per attribute.
- `ExpressionJudge`: JAFFE's seven expressions (AN DI FE HA NE SA SU) from a grayscale face; judged on
  subjects it never saw (JAFFE's splits are subject-disjoint).
- `IdentityJudge`: a unit-length embedding trained to classify the training identities with a cosine
  margin (CosFace, Wang et al. 2018); two faces are the same person when the cosine of their embeddings
  exceeds a threshold chosen on the validation identities. Judged on held-out identities.

All three share one small backbone (a stride-2 stem and three stride-2 stages, 64x64 -> 4x4) and take images as the course
passes them around: (N, C, H, W) floats in [0, 1], any size, RGB or grayscale; they resize and convert
themselves. Small weights trained on SynthFaces ship in `faceedu/weights/` (about 1 MB each, float16) and
load with no download (`load_judges()`). They were made by exactly this command (SynthFaces: `faceedu data
synth`, seed 0, 30,000 faces; 2 CPU cores, about 25 minutes), which trains the three judges on the shared
loop (the identity judge starting from the attribute judge's backbone) and writes their weights with their
test-split figures (`faceedu eval judges` prints them again):

    OMP_NUM_THREADS=1 faceedu train judge --kind all --root datasets/synthfaces --run runs/judges --export faceedu/weights

Another thread count gives slightly different weights (floating-point summation order), not other figures.

On real data (`--data celeba` / `--data jaffe`) the same command trains judges for that data.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

INPUT_SIZE = 64
WIDTHS = (32, 64, 128, 160)
WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"
WEIGHT_FILES = {"attributes": "judge_attributes.pt", "expression": "judge_expression.pt",
                "identity": "judge_identity.pt"}
REPRODUCE = "OMP_NUM_THREADS=1 faceedu train judge --kind all --root datasets/synthfaces --run runs/judges --export faceedu/weights"


# --- input handling -------------------------------------------------------------------------------------

def prepare(images: torch.Tensor, channels: int, size: int = INPUT_SIZE) -> torch.Tensor:
    """(N, 1|3, H, W) in [0, 1] (or uint8 0-255) -> (N, channels, size, size) in [-1, 1]: grey <-> RGB, antialiased resize."""
    if images.dim() == 3:
        images = images.unsqueeze(0)
    assert images.dim() == 4 and images.shape[1] in (1, 3), f"expected (N, 1|3, H, W) images, got {tuple(images.shape)}"
    images = images.float().div(255) if images.dtype == torch.uint8 else images.float()
    if images.shape[1] == 3 and channels == 1:  # ITU-R 601 luma, as PIL's convert("L")
        images = (images * images.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    elif images.shape[1] == 1 and channels == 3:
        images = images.expand(-1, 3, -1, -1)
    if images.shape[-2:] != (size, size):
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return images * 2 - 1


# --- the shared backbone --------------------------------------------------------------------------------

def conv_bn_relu(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class Backbone(nn.Module):
    """A 4x4 stride-2 stem, then three stages of a stride-2 conv and a conv:
    (N, C, 64, 64) -> (N, 32, 32, 32) -> (N, 64, 16, 16) -> (N, 128, 8, 8) -> (N, 160, 4, 4) -> pooled (N, 160).
    Deliberately light (about 30 MFLOPs a face): it trains at ~900 images/s on 2 CPU cores."""

    def __init__(self, in_channels: int = 3, widths: Sequence[int] = WIDTHS):
        super().__init__()
        stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 4, 2, 1, bias=False), nn.BatchNorm2d(widths[0]),
                             nn.ReLU(inplace=True))
        stages, c = [stem], widths[0]
        for w in widths[1:]:
            stages.append(nn.Sequential(conv_bn_relu(c, w, stride=2), conv_bn_relu(w, w)))
            c = w
        self.stages = nn.ModuleList(stages)
        self.out_features = c

    def feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every stage's output: (N, 32, 32, 32), (N, 64, 16, 16), (N, 128, 8, 8), (N, 160, 4, 4)."""
        maps = []
        for stage in self.stages:
            x = stage(x)
            maps.append(x)
        return maps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.feature_maps(x)[-1].mean(dim=(2, 3))  # (N, 160)


# --- the three judges -----------------------------------------------------------------------------------

class Judge(nn.Module):
    """What every judge shares: input preparation, the backbone, and metadata saved with its weights."""

    kind = "judge"
    channels = 3

    def __init__(self, outputs: int, channels: int | None = None, meta: dict | None = None):
        super().__init__()
        self.channels = channels or self.channels
        self.backbone = Backbone(self.channels)
        self.head = nn.Linear(self.backbone.out_features, outputs)
        self.meta: dict[str, Any] = dict(meta or {})

    def feature_maps(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The backbone's stage outputs on `images` in [0, 1] (the last tier of the feature networks)."""
        return self.backbone.feature_maps(prepare(images, self.channels))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(prepare(images, self.channels)))


class AttributeJudge(Judge):
    """Multi-label attribute classifier: logits (N, A), one per name in `self.attributes`."""

    kind = "attributes"

    def __init__(self, attributes: Sequence[str], meta: dict | None = None):
        super().__init__(len(attributes), 3, meta)
        self.attributes = list(attributes)

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """0/1 float (N, A): the attributes the judge sees in each image."""
        return (self(images) > 0).float()

    def index(self, name: str) -> int:
        if name not in self.attributes:
            raise KeyError(f"The attribute judge knows {', '.join(self.attributes)}; not {name!r}. "
                           "Train one for your attributes with `faceedu train judge --kind attributes`.")
        return self.attributes.index(name)


class ExpressionJudge(Judge):
    """Seven-way expression classifier on grayscale faces: logits (N, 7) in `self.expressions` order."""

    kind = "expression"

    def __init__(self, expressions: Sequence[str], meta: dict | None = None):
        super().__init__(len(expressions), 1, meta)
        self.expressions = list(expressions)

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Class index (N,) into `self.expressions`."""
        return self(images).argmax(1)


class IdentityJudge(Judge):
    """Face embedding: unit vectors (N, D); `similarity` is their cosine, `same` compares it with the
    threshold chosen on validation identities."""

    kind = "identity"

    def __init__(self, dim: int = 64, threshold: float = 0.5, meta: dict | None = None):
        super().__init__(dim, 3, meta)
        self.threshold = threshold

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(super().forward(images), dim=1)  # (N, D), |e| = 1

    @torch.no_grad()
    def similarity(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Cosine similarity (N,) of the embeddings of image batches `a` and `b`, pair by pair."""
        return (self(a) * self(b)).sum(1)

    @torch.no_grad()
    def same(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.similarity(a, b) > self.threshold


class CosFaceHead(nn.Module):
    """Training-only classifier over identities on the unit sphere: logits s*(cos - m) for the true class
    and s*cos for the others (CosFace, eq. 4). It is not shipped: only the embedding is."""

    def __init__(self, dim: int, classes: int, scale: float = 16.0, margin: float = 0.2):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, dim) / math.sqrt(dim))
        self.scale, self.margin = scale, margin

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cosine = embeddings @ F.normalize(self.weight, dim=1).t()  # (N, classes)
        return self.scale * (cosine - self.margin * F.one_hot(labels, cosine.shape[1]))


# --- saving and loading ---------------------------------------------------------------------------------

def export_judge(judge: Judge, path: Path | str) -> Path:
    """Write a judge's weights (float16, a few hundred kB) and metadata; `torch.load(weights_only=True)` reads it."""
    state = {k: v.half() if v.is_floating_point() else v for k, v in judge.state_dict().items()}
    info = {"kind": judge.kind, "meta": judge.meta, "state_dict": state}
    if isinstance(judge, AttributeJudge):
        info["attributes"] = judge.attributes
    elif isinstance(judge, ExpressionJudge):
        info["expressions"] = judge.expressions
    elif isinstance(judge, IdentityJudge):
        info["dim"], info["threshold"] = judge.head.out_features, judge.threshold
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(info, tmp)
    tmp.replace(path)
    return path


def load_judge(path: Path | str, device: torch.device | str = "cpu") -> Judge:
    """A judge from a file written by `export_judge`, in eval mode."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No judge weights at {path}. The shipped ones are in {WEIGHTS_DIR}; "
                                f"make them again with:\n    {REPRODUCE}")
    info = torch.load(path, map_location="cpu", weights_only=True)
    kind = info["kind"]
    if kind == "attributes":
        judge: Judge = AttributeJudge(info["attributes"], info["meta"])
    elif kind == "expression":
        judge = ExpressionJudge(info["expressions"], info["meta"])
    elif kind == "identity":
        judge = IdentityJudge(info["dim"], info["threshold"], info["meta"])
    else:
        raise ValueError(f"{path} holds a {kind!r}, not a judge.")
    judge.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in info["state_dict"].items()})
    return judge.to(device).eval()


@dataclass
class Judges:
    """The three referees together; `None` where no weights were found."""

    attributes: AttributeJudge | None = None
    expression: ExpressionJudge | None = None
    identity: IdentityJudge | None = None
    paths: dict[str, Path] = field(default_factory=dict)

    def require(self, kind: str) -> Judge:
        judge = getattr(self, kind)
        if judge is None:
            raise FileNotFoundError(f"No {kind} judge weights were found. Train them with:\n    {REPRODUCE}")
        return judge


def load_judges(folder: Path | str | None = None, device: torch.device | str = "cpu",
                kinds: Sequence[str] = tuple(WEIGHT_FILES)) -> Judges:
    """The judges whose weights are in `folder` (default: the ones shipped in the package)."""
    folder = Path(folder) if folder is not None else WEIGHTS_DIR
    judges = Judges()
    for kind in kinds:
        path = folder / WEIGHT_FILES[kind]
        if path.is_file():
            setattr(judges, kind, load_judge(path, device))
            judges.paths[kind] = path
    return judges


# --- how good they are ----------------------------------------------------------------------------------

@torch.no_grad()
def _batched(model: nn.Module, images: torch.Tensor, batch: int = 500) -> torch.Tensor:
    device = next(model.parameters()).device
    return torch.cat([model(images[i:i + batch].to(device)).cpu() for i in range(0, len(images), batch)])


def attribute_accuracy(judge: AttributeJudge, images: torch.Tensor, attr: torch.Tensor,
                       names: Sequence[str]) -> dict:
    """Mean and per-attribute accuracy of `judge` against 0/1 labels `attr` (N, len(names)); also each
    attribute's positive rate, since 95% accuracy means little for an attribute that 3% of faces have."""
    columns = [judge.index(n) for n in names]
    predicted = (_batched(judge, images)[:, columns] > 0).float()
    correct = (predicted == attr).float().mean(0)
    positives = attr.float().mean(0)
    return {"mean_accuracy": float(correct.mean()), "images": len(images),
            "per_attribute": {n: float(c) for n, c in zip(names, correct)},
            "positive_rate": {n: float(p) for n, p in zip(names, positives)}}


def expression_accuracy(judge: ExpressionJudge, images: torch.Tensor, labels: torch.Tensor,
                        expressions: Sequence[str]) -> dict:
    """Accuracy over all images and per expression; `labels` index into `expressions`."""
    columns = [judge.expressions.index(e) for e in expressions]
    predicted = _batched(judge, images)[:, columns].argmax(1)
    per = {e: float((predicted[labels == i] == i).float().mean()) for i, e in enumerate(expressions) if (labels == i).any()}
    confusion = torch.zeros(len(expressions), len(expressions), dtype=torch.long)
    confusion.index_put_((labels, predicted), torch.ones_like(labels), accumulate=True)
    return {"accuracy": float((predicted == labels).float().mean()), "images": len(images),
            "per_expression": per, "confusion": confusion.tolist()}


def verification_pairs(identity: torch.Tensor, pairs: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`pairs` same-person and `pairs` different-person index pairs (LFW-style, balanced), drawn with `seed`.
    Returns (first, second, same) with `same` 1 for a same-person pair."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.argsort(identity, stable=True)
    ids, counts = torch.unique_consecutive(identity[order], return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    usable = torch.nonzero(counts >= 2).flatten()
    pick = usable[torch.randint(len(usable), (pairs,), generator=generator)]
    u = torch.rand(pairs, generator=generator)
    v = torch.rand(pairs, generator=generator)
    i = (u * counts[pick]).long()
    j = (i + 1 + (v * (counts[pick] - 1)).long()) % counts[pick]  # a different image of the same person
    pos_a, pos_b = order[starts[pick] + i], order[starts[pick] + j]
    neg_a = torch.randint(len(identity), (pairs * 2,), generator=generator)
    neg_b = torch.randint(len(identity), (pairs * 2,), generator=generator)
    keep = torch.nonzero(identity[neg_a] != identity[neg_b]).flatten()[:pairs]
    first = torch.cat([pos_a, neg_a[keep]])
    second = torch.cat([pos_b, neg_b[keep]])
    same = torch.cat([torch.ones(pairs), torch.zeros(len(keep))])
    return first, second, same


def best_threshold(similarity: torch.Tensor, same: torch.Tensor) -> float:
    """The cosine threshold that maximises verification accuracy on these pairs (midpoint between values)."""
    values, order = torch.sort(similarity)
    labels = same[order]
    # accuracy when the threshold sits just above values[k]: negatives among 0..k right, positives above k right
    right = torch.cumsum(1 - labels, 0) + (labels.sum() - torch.cumsum(labels, 0))
    k = int(torch.argmax(right))
    upper = values[k + 1] if k + 1 < len(values) else values[k] + 1e-3
    return float((values[k] + upper) / 2)


def identity_verification(judge: IdentityJudge, images: torch.Tensor, identity: torch.Tensor, pairs: int = 3000,
                          seed: int = 0, threshold: float | None = None) -> dict:
    """Verification accuracy on balanced held-out pairs at `threshold` (default: the judge's own), plus the
    mean cosine of same-person and different-person pairs and the best threshold on these very pairs."""
    first, second, same = verification_pairs(identity, pairs, seed)
    embeddings = _batched(judge, images)
    similarity = (embeddings[first] * embeddings[second]).sum(1)
    threshold = judge.threshold if threshold is None else threshold
    accuracy = float(((similarity > threshold).float() == same).float().mean())
    return {"verification_accuracy": accuracy, "threshold": threshold, "pairs": len(same),
            "identities": int(identity.unique().numel()),
            "mean_cosine_same": float(similarity[same == 1].mean()),
            "mean_cosine_different": float(similarity[same == 0].mean()),
            "oracle_threshold": best_threshold(similarity, same)}
