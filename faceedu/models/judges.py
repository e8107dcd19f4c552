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

On real data the same command trains judges for that data: `--data celeba` the attribute judge on
CelebA (no identity file needed), `--data jaffe` the expression judge on JAFFE (subject-disjoint split),
and `--kind identity` on either the identity judge from dlib's 128-D face embedding (`faces` extra), its
threshold chosen from the data. Every judge records what it was trained on (`trained_on` in its meta:
dataset kind, root, fingerprint, date, command); `judges_for(root)` loads judges for a data folder and
warns, with the command that trains the right ones, when they were trained on another kind of faces.
"""

from __future__ import annotations

import datetime
import hashlib
import json
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

    @staticmethod
    def pair_similarity(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        """Similarity (N,) of two rows of embeddings (N, D): their cosine (the embeddings are unit vectors)."""
        return (first * second).sum(1)


class DlibIdentityJudge(nn.Module):
    """The identity judge for photographs: dlib's pretrained 128-D face-recognition embedding (a ResNet that
    dlib trained on about three million faces; the optional `faces` extra). Nothing is trained here: only its
    same-person threshold is chosen from the data (`train judge --kind identity` on real faces). Similarity is
    minus the Euclidean distance of the descriptors, the way dlib measures it (its customary cut is 0.6)."""

    kind = "identity"
    engine = "dlib"
    channels = 3

    def __init__(self, threshold: float = -0.6, meta: dict | None = None):
        super().__init__()
        from faceedu.models.faces import DlibFaces

        self.faces = DlibFaces()
        self.threshold = threshold
        self.meta: dict[str, Any] = dict(meta or {})
        self.anchor = nn.Parameter(torch.zeros(0), requires_grad=False)  # so callers can ask for its device

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 1|3, H, W) in [0, 1] (or uint8) -> (N, 128) dlib descriptors."""
        images = images.float().div(255) if images.dtype == torch.uint8 else images.float()
        return self.faces.embed(images.cpu()).to(self.anchor.device)

    @staticmethod
    def pair_similarity(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        """Minus the Euclidean distance of two rows of descriptors (N,): higher is more alike."""
        return -(first - second).norm(dim=1)

    @torch.no_grad()
    def similarity(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.pair_similarity(self(a), self(b))

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

def export_judge(judge: Judge | DlibIdentityJudge, path: Path | str) -> Path:
    """Write a judge's weights (float16, a few hundred kB) and metadata; `torch.load(weights_only=True)` reads it."""
    state = {k: (v.half() if v.is_floating_point() else v).cpu() for k, v in judge.state_dict().items()}
    info = {"kind": judge.kind, "meta": judge.meta, "state_dict": state}
    if isinstance(judge, AttributeJudge):
        info["attributes"] = judge.attributes
    elif isinstance(judge, ExpressionJudge):
        info["expressions"] = judge.expressions
    elif isinstance(judge, IdentityJudge):
        info["dim"], info["threshold"] = judge.head.out_features, judge.threshold
    elif isinstance(judge, DlibIdentityJudge):
        info["engine"], info["threshold"], info["state_dict"] = "dlib", judge.threshold, {}
    info["meta"] = judge.meta | {"state_sha256": state_digest(info["state_dict"])}
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
    elif kind == "identity" and info.get("engine") == "dlib":
        return DlibIdentityJudge(info["threshold"], info["meta"]).to(device).eval()
    elif kind == "identity":
        judge = IdentityJudge(info["dim"], info["threshold"], info["meta"])
    else:
        raise ValueError(f"{path} holds a {kind!r}, not a judge.")
    judge.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in info["state_dict"].items()})
    return judge.to(device).eval()


def state_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 of a saved state dict's tensors (names, dtypes, shapes and bytes, in name order): the same
    weights give the same digest whatever device or file they come from."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def add_provenance(path: Path | str, trained_on: dict) -> Path:
    """Write `trained_on` into the meta of a saved judge file, leaving its weights byte for byte as they are
    (moved to the CPU): how the shipped SynthFaces judges gained their provenance without retraining."""
    path = Path(path)
    info = torch.load(path, map_location="cpu", weights_only=True)
    before = state_digest(info["state_dict"])
    info["meta"] = dict(info["meta"]) | {"trained_on": trained_on, "state_sha256": before}
    tmp = path.with_suffix(".tmp")
    torch.save(info, tmp)
    assert state_digest(torch.load(tmp, map_location="cpu", weights_only=True)["state_dict"]) == before
    tmp.replace(path)
    return path


@dataclass
class Judges:
    """The three referees together; `None` where no weights were found."""

    attributes: AttributeJudge | None = None
    expression: ExpressionJudge | None = None
    identity: IdentityJudge | DlibIdentityJudge | None = None
    paths: dict[str, Path] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def describe(self) -> list[str]:
        """One line per loaded judge naming what it was trained on."""
        return [describe(j) for j in (self.attributes, self.expression, self.identity) if j is not None]

    def require(self, kind: str) -> Judge:
        judge = getattr(self, kind)
        if judge is None:
            raise FileNotFoundError(f"No {kind} judge weights were found. Train them with:\n    {REPRODUCE}")
        return judge


def load_judges(folder: Path | str | None = None, device: torch.device | str = "cpu",
                kinds: Sequence[str] = tuple(WEIGHT_FILES)) -> Judges:
    """The judges whose weights are in `folder` (default: the ones shipped in the package)."""
    folder = Path(folder).expanduser() if folder is not None else WEIGHTS_DIR
    if not folder.is_dir():
        raise FileNotFoundError(f"No judges folder {folder}: pass the folder that holds judge_*.pt (a run of "
                                f"`faceedu train judge`, or {WEIGHTS_DIR} for the shipped SynthFaces judges).")
    judges = Judges()
    for kind in kinds:
        path = folder / WEIGHT_FILES[kind]
        if not path.is_file():  # a `faceedu train judge` run folder keeps each judge in its own subfolder
            path = folder / kind / WEIGHT_FILES[kind]
        if path.is_file():
            setattr(judges, kind, load_judge(path, device))
            judges.paths[kind] = path
    return judges


# --- provenance: what a judge was trained on, and whether it fits the faces it judges ------------------

DATASET_NAMES = {"synthfaces": "SynthFaces", "celeba": "CelebA", "jaffe": "JAFFE", "celebamask-hq": "CelebAMask-HQ"}
# What data each judge reads: the attribute and identity judges CelebA-layout faces, the expression judge JAFFE.
JUDGE_DATA = {"attributes": "celeba", "identity": "celeba", "expression": "jaffe"}
LEGACY_DATA = {"synth": "synthfaces", "celeba": "celeba", "jaffe": "jaffe"}


def synthfaces_marker(root: Path | str) -> Path | None:
    """SynthFaces' synthfaces.json for a data folder given as ROOT or as one of its dataset folders
    (ROOT/celeba, ROOT/jaffe), or None: real data has no such file."""
    root = Path(root).expanduser().resolve()
    for folder in (root, root.parent):
        if (folder / "synthfaces.json").is_file():
            return folder / "synthfaces.json"
    return None


def dataset_kind(root: Path | str, family: str = "celeba") -> str:
    """"synthfaces" when `root` is SynthFaces (its synthfaces.json marker), else `family` ("celeba", "jaffe",
    "celebamask-hq"): the kind of faces a folder holds, as judges record it."""
    return "synthfaces" if synthfaces_marker(root) is not None else family


def holds(root: Path | str, family: str) -> bool:
    """Whether `root` (or its celeba/ or jaffe/ folder) holds data of `family`: CelebA-layout faces
    (images or attribute file) or JAFFE TIFFs."""
    root = Path(root).expanduser()
    if family == "jaffe":
        return any(f.suffix.lower() in (".tif", ".tiff") for folder in (root / "jaffe", root) if folder.is_dir()
                   for f in folder.iterdir())
    return any((folder / "img_align_celeba").is_dir() or any(folder.glob("list_attr_celeba.*"))
               for folder in (root / "celeba", root) if folder.is_dir())


def _hash_files(paths: Sequence[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def data_fingerprint(root: Path | str, family: str = "celeba") -> str:
    """A short fingerprint of a data folder's content, stable across copies and machines: SynthFaces' renderer
    and config; CelebA's attribute and partition files; JAFFE's file names and sizes."""
    marker = synthfaces_marker(root)
    if marker is not None:
        saved = json.loads(marker.read_text())
        config = {k: v for k, v in saved.get("config", {}).items() if k != "workers"}
        key = json.dumps({"renderer": saved.get("renderer"), "config": config}, sort_keys=True)
        return "synthfaces-" + hashlib.sha256(key.encode()).hexdigest()[:16]
    root = Path(root).expanduser()
    if family == "jaffe":
        folder = root / "jaffe" if (root / "jaffe").is_dir() else root
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".tif", ".tiff"))
        key = "\n".join(f"{p.name} {p.stat().st_size}" for p in files)
        return "jaffe-" + hashlib.sha256(key.encode()).hexdigest()[:16]
    folder = root / "celeba" if (root / "celeba").is_dir() else root
    files = sorted(p for p in folder.glob("list_*") if p.stem in ("list_attr_celeba", "list_eval_partition"))
    return f"{family}-" + (_hash_files(files) if files else "unknown")


def provenance(root: Path | str, family: str, command: str, images: int | None = None,
               split: str = "train") -> dict[str, Any]:
    """What a judge records about its training data: dataset kind, absolute root, fingerprint, split and size,
    date (UTC) and the command that trained it."""
    return {"dataset": dataset_kind(root, family), "root": str(Path(root).expanduser().resolve()),
            "fingerprint": data_fingerprint(root, family), "split": split, "images": images,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"), "command": command}


def trained_on(judge) -> dict[str, Any]:
    """The judge's recorded training data; older files only said meta["data"] ("synth" or "celeba")."""
    meta = judge.meta if isinstance(getattr(judge, "meta", None), dict) else {}
    if "trained_on" in meta:
        return meta["trained_on"]
    legacy = meta.get("data")
    return {"dataset": LEGACY_DATA.get(legacy, "unknown") if legacy else "unknown", "command": meta.get("command")}


def describe(judge) -> str:
    """One line naming what a judge was trained on, for every report that uses it."""
    info = trained_on(judge)
    name = DATASET_NAMES.get(info.get("dataset"), info.get("dataset", "unknown data"))
    parts = [f"{judge.kind} judge{' (dlib 128-D embedding)' if getattr(judge, 'engine', None) == 'dlib' else ''}: "
             f"trained on {name}"]
    if info.get("images"):
        parts.append(f"{info['images']:,} {info.get('split', 'train')} images")
    if info.get("fingerprint"):
        parts.append(f"data {info['fingerprint']}")
    if info.get("date"):
        parts.append(f"on {info['date']}")
    line = parts[0] + (f" ({', '.join(parts[1:])})" if len(parts) > 1 else "")
    return line + (f" by `{info['command']}`" if info.get("command") else "")


def train_command(kind: str, family: str, root: Path | str) -> str:
    """The command that trains a `kind` judge on the data of `family` under `root`."""
    root = Path(root).expanduser().resolve()
    if family == "synthfaces":
        return f"faceedu train judge --kind {kind} --root {root} --run runs/judges-synthfaces"
    data = "jaffe" if family == "jaffe" else "celeba"
    return f"faceedu train judge --data {data} --kind {kind} --root {root} --run runs/judges-{data}"


def provenance_warning(judge, root: Path | str, family: str | None = None) -> str | None:
    """A plain warning when `judge` was trained on another kind of faces than those under `root` (e.g. the
    shipped SynthFaces judges on real CelebA photographs), with the command that trains the right ones."""
    family = family or JUDGE_DATA[judge.kind]
    if not holds(root, family):
        return None  # nothing of that kind here for the judge to judge
    data = dataset_kind(root, family)
    trained = trained_on(judge).get("dataset", "unknown")
    if trained == data:
        return None
    name = lambda kind: DATASET_NAMES.get(kind, kind)  # noqa: E731
    command = train_command(judge.kind, data, root)
    why = (" (the SynthFaces judges fall below the majority baseline on real photographs)"
           if trained == "synthfaces" else "")
    return (f"WARNING: the {judge.kind} judge was trained on {name(trained)}, but {root} holds {name(data)} faces: "
            f"its judgements there are not to be trusted{why}. Train {judge.kind} judges for this data with\n"
            f"    {command}\n"
            f"and pass --judges {command.rsplit('--run ', 1)[1]} (in Python: judges_for(root, judges=...)).")


def judges_for(root: Path | str, judges: Path | str | None = None, kinds: Sequence[str] = tuple(WEIGHT_FILES),
               device: torch.device | str = "cpu", verbose: bool = True, family: str | None = None) -> Judges:
    """The judges in folder `judges` (default: the shipped SynthFaces ones) for judging the faces under `root`:
    prints what each was trained on and, when that is another kind of faces than `root` holds, a warning
    with the command that trains the right ones. What the lessons and every judging command call.
    `family` ("celeba" or "jaffe") names the faces judged when it is not each judge's usual kind (JUDGE_DATA),
    e.g. the identity judge on JAFFE subjects."""
    loaded = load_judges(judges, device, kinds)
    loaded.warnings = []
    for kind in kinds:
        judge = getattr(loaded, kind)
        if judge is None:
            continue
        warning = provenance_warning(judge, root, family)
        if warning:
            loaded.warnings.append(warning)
        if verbose:
            print(describe(judge))
            if warning:
                print(warning)
    return loaded


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
    majority = torch.maximum(positives, 1 - positives)  # "always answer the commoner value"
    return {"mean_accuracy": float(correct.mean()), "images": len(images),
            "per_attribute": {n: float(c) for n, c in zip(names, correct)},
            "positive_rate": {n: float(p) for n, p in zip(names, positives)},
            "majority_baseline": {n: float(m) for n, m in zip(names, majority)},
            "mean_majority_baseline": float(majority.mean()),
            "above_baseline": int((correct > majority).sum()), "attributes": len(names)}


def grain_robustness(judge: AttributeJudge, images: torch.Tensor, attr: torch.Tensor, names: Sequence[str],
                     sigma: float = 0.06, seed: int = 0) -> dict:
    """`attribute_accuracy` on `images` (in [0, 1] or uint8) clean and with Gaussian pixel noise of `sigma`
    (fixed `seed`): {"clean": figures, "grainy": figures}. Generated faces are grainy where SynthFaces'
    renderer is clean; a judge that reads grain as an attribute scores texture (docs/judges.md, "Grain")."""
    clean, grainy = _with_grain(images, sigma, seed)
    return {"clean": attribute_accuracy(judge, clean, attr, names), "grainy": attribute_accuracy(judge, grainy, attr, names)}


def identity_grain_robustness(judge: IdentityJudge, images: torch.Tensor, identity: torch.Tensor,
                              sigma: float = 0.06, seed: int = 0) -> dict:
    """The identity judge through pixel noise of `sigma` (fixed `seed`) on `images` (in [0, 1] or uint8):
    `identity_verification` on the clean and on the grainy faces, and the cosine between each face and its own
    grainy copy ("self_cosine", mean and min). A judge that reads grain as identity calls a generator's grainy
    output another person (docs/judges.md, "Grain")."""
    clean, grainy = _with_grain(images, sigma, seed)
    embedded_clean, embedded_grainy = _batched(judge, clean), _batched(judge, grainy)
    self_cosine = judge.pair_similarity(embedded_clean, embedded_grainy)
    return {"clean": identity_verification(judge, clean, identity, embeddings=embedded_clean),
            "grainy": identity_verification(judge, grainy, identity, embeddings=embedded_grainy),
            "self_cosine": float(self_cosine.mean()), "self_cosine_min": float(self_cosine.min())}


def _with_grain(images: torch.Tensor, sigma: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`images` (in [0, 1] or uint8) as floats in [0, 1], and a copy with Gaussian pixel noise of `sigma`
    drawn from `seed` (clamped to [0, 1])."""
    images = images.float().div(255) if images.dtype == torch.uint8 else images.float()
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(seed))
    return images, (images + sigma * noise).clamp(0, 1)


def expression_accuracy(judge: ExpressionJudge, images: torch.Tensor, labels: torch.Tensor,
                        expressions: Sequence[str]) -> dict:
    """Accuracy over all images and per expression; `labels` index into `expressions`."""
    columns = [judge.expressions.index(e) for e in expressions]
    predicted = _batched(judge, images)[:, columns].argmax(1)
    per = {e: float((predicted[labels == i] == i).float().mean()) for i, e in enumerate(expressions) if (labels == i).any()}
    confusion = torch.zeros(len(expressions), len(expressions), dtype=torch.long)
    confusion.index_put_((labels, predicted), torch.ones_like(labels), accumulate=True)
    counts = torch.bincount(labels, minlength=len(expressions))
    return {"accuracy": float((predicted == labels).float().mean()), "images": len(images),
            "per_expression": per, "confusion": confusion.tolist(),
            "majority_baseline": float(counts.max() / counts.sum())}


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
                          seed: int = 0, threshold: float | None = None, embeddings: torch.Tensor | None = None) -> dict:
    """Verification accuracy on balanced held-out pairs at `threshold` (default: the judge's own), plus the
    mean cosine of same-person and different-person pairs and the best threshold on these very pairs."""
    first, second, same = verification_pairs(identity, pairs, seed)
    embeddings = _batched(judge, images) if embeddings is None else embeddings  # (N, D), given: computed once
    similarity = judge.pair_similarity(embeddings[first], embeddings[second])
    threshold = judge.threshold if threshold is None else threshold
    accuracy = float(((similarity > threshold).float() == same).float().mean())
    return {"verification_accuracy": accuracy, "threshold": threshold, "pairs": len(same),
            "identities": int(identity.unique().numel()),
            "mean_cosine_same": float(similarity[same == 1].mean()),
            "mean_cosine_different": float(similarity[same == 0].mean()),
            "oracle_threshold": best_threshold(similarity, same), "majority_baseline": 0.5}
