"""Training DIAT on the shared loop, in the paper's stages, each a loop run of its own (atomic checkpoints,
exact resume, images/s):

1. ``pretrain/g``: the reconstruction network g (x -> x; MSE + the identity loss); T starts as a copy of g
   (the paper), or, with the quick preset's skip-connected T, ``pretrain/t`` trains T as one itself.
2. ``pretrain/f``: the 2-layer denoiser f on g's outputs (their artefact n = g(x) - x).
3. ``d``: D as an attribute classifier (real faces with vs without the target state).
4. the run folder itself: the DIAT steps (eq. 1), starting from the pre-trained T and D.

Stages 1-2 do not depend on the attribute: `--pretrained DIR` reuses them across attributes (the tests
and the docs train them once). Also here: the identity feature network (which one, which layers, which
weights, and why), the data (faces split by the target state, their 68 landmarks), measuring a run with
the judges, and `faceedu train diat`.

Identity features, in the order of shared/design.md. The paper used VGG-Face; no face network ships here:
- SynthFaces: the identity judge's stages 2-4 (16x16, 8x8, 4x4 maps of the network trained to tell
  SynthFaces identities apart). Stage 1 (32x32, almost pixels) is left out: it would forbid the attribute
  change itself. This is also the network that *measures* identity afterwards, so the identity cosine
  partly rewards what the loss optimised; docs/diat.md says so, and the DIAT-A and no-identity rows show
  what the loss buys.
- photographs (`--data celeba`): a VGG16 (torchvision's ImageNet one when cached, else the HED-fine-tuned
  port that `faceedu weights get vgg16` converts), relu3_3, relu4_3 and relu5_3 (the deeper layers carry
  identity; the shallow ones texture). dlib's embedding is not differentiable: a metric, not a loss.
- DIAT-A: D's own conv features (its first three layers).
Weights: each layer's weight is the inverse of the mean squared feature difference between two *different*
training faces, measured once on 64 pairs, so that every layer counts alike and a change of person costs
about 1 per layer; the weights are written to the run's config.json.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from faceedu.models import diat as M
from faceedu.models.cyclegan import linear_decay
from faceedu.models.diat import (AttributeDiscriminator, DenoisingNetwork, DIATConfig, ReconstructionNetwork,
                                 TransformNetwork, preset)
from faceedu.train.loop import CHECKPOINT, LoopConfig, cpu_threads, data_root, loop_from_args, read_run, run_finished, train

# The mean 68 landmarks of SynthFaces' training faces (64x64) and their 5 CelebA points: a template that is
# moved onto a face's 5 landmarks (or onto the average aligned-CelebA ones) when a folder has no 68 points.
TEMPLATE_68 = torch.tensor([
    17.1, 35.3, 17.4, 39.0, 18.2, 42.5, 19.6, 45.8, 21.4, 48.6, 23.6, 50.9, 26.1, 52.7, 28.9, 53.7, 31.7, 54.1,
    34.6, 53.7, 37.3, 52.7, 39.9, 50.9, 42.1, 48.6, 43.9, 45.8, 45.3, 42.5, 46.1, 39.0, 46.4, 35.3, 21.8, 27.1,
    23.7, 26.8, 25.7, 26.8, 27.6, 27.0, 29.6, 27.5, 33.9, 27.5, 35.8, 27.0, 37.8, 26.8, 39.7, 26.8, 41.7, 27.1,
    31.7, 31.4, 31.7, 33.6, 31.7, 35.9, 31.7, 38.1, 29.8, 38.7, 30.8, 38.9, 31.7, 38.9, 32.7, 38.9, 33.7, 38.7,
    22.7, 31.0, 23.4, 30.2, 27.2, 30.2, 28.0, 31.0, 27.2, 31.9, 23.4, 31.9, 35.5, 31.0, 36.2, 30.2, 40.0, 30.2,
    40.8, 31.0, 40.0, 31.9, 36.2, 31.9, 26.4, 42.3, 28.2, 42.5, 30.0, 42.9, 31.7, 43.3, 33.5, 42.9, 35.3, 42.5,
    37.0, 42.3, 35.3, 44.8, 33.5, 46.0, 31.7, 46.3, 30.0, 46.0, 28.2, 44.8, 26.4, 42.3, 30.0, 43.9, 31.7, 44.1,
    33.5, 43.9, 37.0, 42.3, 33.5, 44.7, 31.7, 45.0, 30.0, 44.7]).view(68, 2)
TEMPLATE_5 = torch.tensor([25.3, 31.0, 38.1, 31.0, 31.7, 38.2, 26.4, 42.3, 37.0, 42.3]).view(5, 2)
# Average 5 landmarks of aligned CelebA (178x218 pixels): eyes, nose, mouth corners.
CELEBA_MEAN_5 = torch.tensor([69.0, 111.0, 108.0, 111.0, 88.0, 134.0, 72.0, 152.0, 105.0, 152.0]).view(5, 2)


# --- identity features --------------------------------------------------------------------------------------


class Features:
    """phi for the identity loss: images in [-1, 1] -> a list of feature maps, one per layer, with the
    layers' names, weights and a one-line label of the network."""

    def __init__(self, fn: Callable[[torch.Tensor], list[torch.Tensor]], layers: tuple[str, ...], label: str,
                 modules: tuple[nn.Module, ...] = ()):
        self.fn, self.layers, self.label, self.modules = fn, layers, label, modules
        self.weights: tuple[float, ...] = tuple(1.0 for _ in layers)

    def __call__(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.fn(x)

    def to(self, device) -> "Features":
        for m in self.modules:
            m.to(device)
        return self


def identity_network(config: DIATConfig, root: Path | str, D: AttributeDiscriminator | None = None,
                     verbose: bool = True) -> Features:
    """The feature network of the identity loss for `config.id_network` ("auto": the identity judge on
    SynthFaces, a VGG16 on other data; "discriminator": D's features, DIAT-A). See the module docstring."""
    from faceedu.models.judges import dataset_kind, load_judges

    kind = config.id_network
    if kind == "auto":
        kind = "identity_judge" if dataset_kind(root) == "synthfaces" else "vgg16"
    if kind == "discriminator":
        assert D is not None, "DIAT-A needs the discriminator"
        layers = config.id_layers or ("conv1", "conv2", "conv3")
        index = [int(name[4:]) - 1 for name in layers]
        feats = Features(lambda x: [D.feature_maps(x)[i] for i in index], tuple(layers),
                         "the attribute discriminator's conv features (DIAT-A)")
    elif kind == "identity_judge":
        judge = load_judges(kinds=("identity",)).require("identity")
        for p in judge.parameters():
            p.requires_grad_(False)
        judge.eval()
        names = ("stage1", "stage2", "stage3", "stage4")
        layers = config.id_layers or ("stage2", "stage3", "stage4")
        index = [names.index(n) for n in layers]
        feats = Features(lambda x: [judge.feature_maps((x + 1) / 2)[i] for i in index], tuple(layers),
                         "the identity judge's stages (SynthFaces-trained)", (judge,))
    else:
        from faceedu.models.features import load_feature_network

        net = load_feature_network(prefer="vgg16", verbose=verbose)
        layers = config.id_layers or tuple(n for n in ("relu3_3", "relu4_3", "relu5_3") if n in net.layers) \
            or net.perceptual_layers[-3:]
        feats = Features(lambda x: list(net((x + 1) / 2, layers).values()), tuple(layers), net.label, (net,))
    if config.id_weights:
        feats.weights = config.id_weights
    if verbose:
        print(f"Identity features: {feats.label}, layers {', '.join(feats.layers)}")
    return feats


@torch.no_grad()
def calibrate_weights(phi: Features, images: torch.Tensor) -> tuple[float, ...]:
    """Each layer's weight = 1 / the mean squared feature difference between different faces (`images`
    (2N, 3, S, S) in [-1, 1], its halves paired), rounded to 3 significant digits."""
    half = len(images) // 2
    a, b = phi(images[:half]), phi(images[half:2 * half])
    return tuple(float(f"{1.0 / max(((u - v) ** 2).mean().item(), 1e-12):.3g}") for u, v in zip(a, b))


# --- data ---------------------------------------------------------------------------------------------------------


def load_landmarks(root: Path | str, split: str, size: int, crop: str = "center", limit: int | None = None,
                   images: torch.Tensor | None = None, verbose: bool = True) -> tuple[torch.Tensor, str]:
    """(N, 68, 2) landmarks in the pixel coordinates of the size x size faces, and where they came from:
    list_landmarks_68.txt (SynthFaces writes it); else dlib's 68 points on `images` (uint8, the `faces` extra);
    else the SynthFaces template moved onto the 5 CelebA landmarks of each face; else onto the average
    aligned-CelebA ones (the same region for every face: approximate, and said so)."""
    from faceedu.data.celeba import CelebA
    from faceedu.data.transforms import FaceCrop

    data = CelebA(root, split=split, target_type="attr")
    count = len(data) if limit is None else min(limit, len(data))
    fit = FaceCrop(size, crop)
    from PIL import Image

    with Image.open(data.images / data.filenames[0]) as header:      # aligned photos share one size
        width, height = header.size
    left, top, right, bottom = fit.box(width, height)
    scale = torch.tensor([size / (right - left), size / (bottom - top)])
    offset = torch.tensor([float(left), float(top)])

    def to_crop(points: torch.Tensor) -> torch.Tensor:        # image pixels -> model pixels (centres)
        return (points + 0.5 - offset) * scale - 0.5

    if data.has_annotation("landmarks68"):
        return to_crop(data.annotation("landmarks68")[:count].float().view(-1, 68, 2)), "list_landmarks_68.txt"
    if images is not None:
        try:
            from faceedu.models.faces import DlibFaces

            return DlibFaces().landmarks68(images[:count].float() / 255), "dlib's 68-point shape predictor"
        except Exception:             # the faces extra is not installed
            pass
    if data.has_annotation("landmarks"):
        five = to_crop(data.annotation("landmarks")[:count].float().view(-1, 5, 2))
        source = "the SynthFaces template fitted to each face's 5 CelebA landmarks"
    else:
        five = to_crop(CELEBA_MEAN_5 * torch.tensor([width / 178, height / 218])).expand(count, 5, 2)
        source = "the SynthFaces template at aligned CelebA's average landmarks (no landmark file, no dlib)"
    if verbose:
        print(f"68 landmarks: {source}. For exact ones install the `faces` extra (dlib).")
    return torch.stack([fit_template(p) for p in five]), source


def fit_template(five: torch.Tensor) -> torch.Tensor:
    """The 68-point template moved by the least-squares similarity (scale, rotation, shift) that takes its
    5 points onto `five` (5, 2)."""
    src, dst = TEMPLATE_5, five.float()
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    a = (s * d).sum() / (s ** 2).sum()
    b = (s[:, 0] * d[:, 1] - s[:, 1] * d[:, 0]).sum() / (s ** 2).sum()
    rot = torch.tensor([[a, -b], [b, a]])
    return (TEMPLATE_68 - mu_s) @ rot.T + mu_d


class DIATData:
    """One split for one attribute: `faces` (FaceTensors), the 0/1 column `state` of the attribute, the
    `source` faces (state != target) and the `real` ones (state == target), and landmarks (N, 68, 2)."""

    def __init__(self, faces, config: DIATConfig, landmarks: torch.Tensor | None, landmark_source: str):
        from faceedu.data.tensors import FaceTensors

        if config.attr not in faces.attr_names:
            raise ValueError(f"{config.attr!r} is not among this dataset's attributes.")
        self.faces, self.config = faces, config
        self.state = faces.attribute(config.attr).long()
        if bool((self.state == self.state[0]).all()):
            raise ValueError(f"{config.attr!r} has the same value in every face of {faces.folder}: DIAT needs "
                             "faces with and without it.")
        self.landmarks, self.landmark_source = landmarks, landmark_source
        self.source_index = torch.nonzero(self.state != config.target).flatten()
        self.real_index = torch.nonzero(self.state == config.target).flatten()
        pick = (lambda t, i: None if t is None else t[i])
        self.source = FaceTensors(faces.images[self.source_index], faces.attr[self.source_index], faces.attr_names,
                                  pick(faces.identity, self.source_index), None, faces.folder, faces.split)

    def images(self, index: torch.Tensor) -> torch.Tensor:
        return self.faces.images[index].float().div(255)

    def source_faces(self, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The first `limit` source faces in [0, 1] and their landmarks."""
        index = self.source_index[:limit]
        return self.images(index), (None if self.landmarks is None else self.landmarks[index])


def replace_masks(faces, masks: torch.Tensor):
    """The same FaceTensors with `masks` (N, 1, S, S) as their per-face masks (batches carry them as "mask")."""
    from faceedu.data.tensors import FaceTensors

    return FaceTensors(faces.images, faces.attr, faces.attr_names, identity=faces.identity, masks=masks,
                       folder=faces.folder, split=faces.split)


def load_data(root: Path | str, split: str, config: DIATConfig, limit: int | None = None,
              verbose: bool = True) -> DIATData:
    from faceedu.data.tensors import load_face_tensors

    faces = load_face_tensors(root, split=split, size=config.image_size, masks=False, crop="center", limit=limit)
    if config.enhancement == "local":
        landmarks, source = load_landmarks(root, split, config.image_size, "center", len(faces), faces.images,
                                           verbose=verbose)
    else:
        landmarks, source = None, "not needed (global attribute)"
    return DIATData(faces, config, landmarks, source)


def hflip(x: torch.Tensor) -> torch.Tensor:
    """Each image mirrored left-right with probability 1/2."""
    flip = torch.rand(len(x), device=x.device) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


# --- the stages as loop tasks ----------------------------------------------------------------------------------------


def _adam(params, lr: float, config: DIATConfig) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=lr, betas=(config.beta1, 0.999))


class ReconstructionTask:
    """Stage 1: g (or a skip-connected T) as a reconstruction network (MSE + identity loss between x and T(x))."""

    def __init__(self, config: DIATConfig, phi: Features, seed: int = 0, network: type = TransformNetwork):
        torch.manual_seed(seed)
        self.config, self.phi = config, phi
        self.T = network(config)
        M.init_weights(self.T)
        self.optimizers = {"T": _adam(self.T.parameters(), config.lr_t, config)}
        self.schedulers: dict[str, Any] = {}

    @property
    def modules(self) -> dict[str, nn.Module]:
        return {"T": self.T}

    def step(self, batch, step: int):
        self.phi.to(batch["image"].device)
        x = M.to_model(batch["image"])
        if self.config.hflip:
            x = hflip(x)
        return M.pretrain_transform_step(self.T, self.optimizers["T"], x, self.phi, self.phi.weights)

    def samples(self, batch) -> torch.Tensor:
        x = M.to_model(batch["image"][:8])
        return torch.cat([M.to_image(x), M.to_image(self.T(x))])


class DenoiserTask:
    """Stage 2: f learns the artefacts of g (the pre-trained T, frozen)."""

    def __init__(self, config: DIATConfig, g: ReconstructionNetwork, seed: int = 0):
        torch.manual_seed(seed)
        self.config, self.g = config, g.eval()
        for p in self.g.parameters():
            p.requires_grad_(False)
        self.f = DenoisingNetwork(config.f_width)
        self.optimizers = {"f": _adam(self.f.parameters(), 1e-3, config)}
        self.schedulers: dict[str, Any] = {}

    @property
    def modules(self) -> dict[str, nn.Module]:
        return {"f": self.f}

    def step(self, batch, step: int):
        self.g.to(batch["image"].device).eval()
        return M.denoiser_step(self.f, self.optimizers["f"], self.g, M.to_model(batch["image"]))

    def samples(self, batch) -> torch.Tensor:
        x = M.to_model(batch["image"][:8])
        y = self.g(x)
        return torch.cat([M.to_image(x), M.to_image(y), M.to_image(y - self.f(y))])


class ClassifierTask:
    """Stage 3: D as an attribute classifier on real faces (label: the face is in the target state)."""

    def __init__(self, config: DIATConfig, column: int, seed: int = 0):
        torch.manual_seed(seed)
        self.config, self.column = config, column
        self.D = AttributeDiscriminator(config)
        M.init_weights(self.D)
        self.optimizers = {"D": _adam(self.D.parameters(), config.lr_d, config)}
        self.schedulers: dict[str, Any] = {}

    @property
    def modules(self) -> dict[str, nn.Module]:
        return {"D": self.D}

    def step(self, batch, step: int):
        x = M.to_model(batch["image"])
        if self.config.hflip:
            x = hflip(x)
        label = (batch["attr"][:, self.column] == self.config.target).float()
        return M.pretrain_discriminator_step(self.D, self.optimizers["D"], x, label)

    def samples(self, batch) -> torch.Tensor:
        return batch["image"][:8]


class DIATTask:
    """Stage 4, the DIAT steps: batches of source faces from the loop, real faces with the target state
    drawn from `real` (uint8, on the device at the first step) with the global RNG (saved: exact resume)."""

    def __init__(self, config: DIATConfig, T: TransformNetwork, D: AttributeDiscriminator,
                 f: DenoisingNetwork | None, phi: Features, real: torch.Tensor, seed: int = 0, step_fn=None):
        torch.manual_seed(seed)
        self.config, self.T, self.D, self.f, self.phi, self.real = config, T, D, f, phi, real
        self.step_fn = step_fn or M.diat_step
        if f is not None:
            for p in f.parameters():
                p.requires_grad_(False)
        lr_d = config.lr_d_diat_a if config.diat_a else config.lr_d
        self.optimizers = {"T": _adam(T.parameters(), config.lr_t, config), "D": _adam(D.parameters(), lr_d, config)}
        decay = round(config.lr_decay_share * config.steps)
        constant = config.steps - decay
        self.schedulers: dict[str, Any] = {
            k: torch.optim.lr_scheduler.LambdaLR(o, lambda step: linear_decay(step, constant, decay))
            for k, o in self.optimizers.items()} if decay else {}

    @property
    def modules(self) -> dict[str, nn.Module]:
        out = {"T": self.T, "D": self.D}
        if self.f is not None:
            out["f"] = self.f
        return out

    def step(self, batch, step: int):
        device = batch["image"].device
        if self.real.device != device:
            self.real = self.real.to(device)
        self.phi.to(device)
        if self.f is not None:
            self.f.eval()
        source = M.to_model(batch["image"])
        # the edit masks of the batch's faces (train_enhanced, local attribute; flipped with their faces)
        mask = batch["mask"] if (self.config.train_enhanced and self.config.enhancement == "local") else None
        pick = torch.randint(0, len(self.real), (len(source),), device=device)
        real = M.to_model(self.real[pick])
        if self.config.hflip:
            if mask is not None:
                both = hflip(torch.cat([source, mask], 1))
                source, mask = both[:, :3], both[:, 3:]
            else:
                source = hflip(source)
            real = hflip(real)
        T = M.Enhanced(self.T, self.config, mask) if self.config.train_enhanced else self.T
        return self.step_fn(T, self.D, self.f, self.phi, self.optimizers["T"], self.optimizers["D"], source, real,
                            self.config, self.phi.weights)

    def samples(self, batch) -> torch.Tensor:
        x = M.to_model(batch["image"][:8])
        return torch.cat([M.to_image(x), M.to_image(self.T(x))])


# --- training all stages ----------------------------------------------------------------------------------------------


def _loop(base: LoopConfig, steps: int, config: DIATConfig, seed: int) -> LoopConfig:
    return LoopConfig(**(asdict(base) | {"steps": steps, "batch_size": config.batch_size, "seed": seed,
                                         "bf16": base.bf16 or config.bf16}))


def pretrain(config: DIATConfig, pretrained_dir: Path | str, root: Path | str, faces=None,
             loop: LoopConfig | None = None, seed: int = 0, verbose: bool = True) -> dict:
    """Stages 1-2 (attribute-independent) into `pretrained_dir`/g, /f and (skip-connected T) /t; each
    resumable. Returns the identity description, the time and the loop summaries."""
    from faceedu.data.tensors import load_face_tensors

    pretrained_dir = Path(pretrained_dir)
    loop = loop or LoopConfig()
    faces = faces if faces is not None else load_face_tensors(root, "train", config.image_size, masks=False)
    # DIAT-A changes the identity features of the DIAT steps only: T is pre-trained as DIAT's is
    phi = identity_network(replace(config, id_network="auto") if config.diat_a else config, root, verbose=verbose)
    weights = calibrate_weights(phi, M.to_model(faces.images[:128].float() / 255))
    if not config.id_weights:
        phi.weights = weights
    describe = {"model": "diat-pretrain", "data": str(Path(root).expanduser().resolve()), "diat": config.to_dict(),
                "identity": {"network": phi.label, "layers": list(phi.layers), "weights": list(phi.weights)}}
    start = time.perf_counter()
    task_g = ReconstructionTask(config, phi, seed, network=ReconstructionNetwork)
    summaries = [train(task_g, faces, pretrained_dir / "g", _loop(loop, config.pretrain_g_steps, config, seed), describe)]
    task_f = DenoiserTask(config, task_g.T, seed)
    summaries.append(train(task_f, faces, pretrained_dir / "f", _loop(loop, config.pretrain_f_steps, config, seed), describe))
    if config.skip:
        task_t = ReconstructionTask(config, phi, seed)
        summaries.append(train(task_t, faces, pretrained_dir / "t", _loop(loop, config.pretrain_t_steps, config, seed),
                               describe))
    return {"identity": describe["identity"], "seconds": round(time.perf_counter() - start, 1), "summaries": summaries}


def _pretrained_done(config: DIATConfig, pretrained_dir: Path) -> bool:
    def done(part: str, steps: int) -> bool:
        return run_finished(pretrained_dir / part, "diat-pretrain", steps)

    return (done("g", config.pretrain_g_steps) and done("f", config.pretrain_f_steps)
            and (not config.skip or done("t", config.pretrain_t_steps)))


def load_pretrained(config: DIATConfig, pretrained_dir: Path | str) -> tuple[TransformNetwork, DenoisingNetwork, dict]:
    """The pre-trained T (a copy of g, or its own stage with `skip`) and f of a finished `pretrain`, and
    its identity description."""
    pretrained_dir = Path(pretrained_dir)
    described = json.loads((pretrained_dir / "g" / "config.json").read_text())
    T, f = TransformNetwork(config), DenoisingNetwork(config.f_width)
    stage = "t" if config.skip else "g"
    T.load_state_dict(torch.load(pretrained_dir / stage / CHECKPOINT, map_location="cpu", weights_only=True)["modules"]["T"])
    f.load_state_dict(torch.load(pretrained_dir / "f" / CHECKPOINT, map_location="cpu", weights_only=True)["modules"]["f"])
    return T, f, described["identity"]


def train_diat(config: DIATConfig, run_dir: Path | str, root: Path | str, loop: LoopConfig | None = None,
               pretrained_dir: Path | str | None = None, seed: int = 0, preset_name: str = "custom",
               data: DIATData | None = None, verbose: bool = True, step_fn=None) -> dict:
    """All four stages for one attribute into `run_dir` (each resumable), on `config.threads` CPU threads.
    `pretrained_dir` (default `run_dir`/pretrain) holds stages 1-2 and may be shared by runs of other
    attributes. Returns a summary with the time and images/s of every stage."""
    with cpu_threads(config.threads):
        return _train_stages(config, run_dir, root, loop, pretrained_dir, seed, preset_name, data, verbose, step_fn)


def _train_stages(config: DIATConfig, run_dir: Path | str, root: Path | str, loop: LoopConfig | None,
                  pretrained_dir: Path | str | None, seed: int, preset_name: str, data: DIATData | None,
                  verbose: bool, step_fn) -> dict:
    from faceedu.data.synthfaces import dataset_fingerprint

    run_dir = Path(run_dir)
    loop = loop or LoopConfig()
    data = data if data is not None else load_data(root, "train", config, verbose=verbose)
    start, cpu = time.perf_counter(), time.process_time()
    pretrained_dir = Path(pretrained_dir) if pretrained_dir is not None else run_dir / "pretrain"
    done = _pretrained_done(config, pretrained_dir)
    pre = None if done else pretrain(config, pretrained_dir, root, data.faces, loop, seed, verbose)
    T, f, identity = load_pretrained(config, pretrained_dir)
    stages = {"pretrain": {"seconds": pre["seconds"] if pre else 0.0, "reused": done}}
    # 3. D as a classifier
    column = data.faces.attr_names.index(config.attr)
    task_d = ClassifierTask(config, column, seed)
    s = train(task_d, data.faces, run_dir / "d", _loop(loop, config.pretrain_d_steps, config, seed),
              {"model": "diat-classifier", "diat": config.to_dict()})
    stages["classifier"] = {"seconds": s["seconds"], "images_per_s": s["images_per_s"]}
    D = task_d.D
    # 4. DIAT
    if config.diat_a:
        phi = identity_network(config, root, D, verbose=verbose)
        phi.weights = config.id_weights or calibrate_weights(phi, M.to_model(data.faces.images[:128].float() / 255).to(
            next(D.parameters()).device))
        identity = {"network": phi.label, "layers": list(phi.layers), "weights": list(phi.weights)}
    else:
        phi = identity_network(replace(config, id_layers=tuple(identity["layers"])), root, verbose=False)
        phi.weights = tuple(identity["weights"])
    f_used = f if config.lambda_pr > 0 else None
    real = data.faces.images[data.real_index]
    task = DIATTask(config, T, D, f_used, phi, real, seed, step_fn=step_fn)
    describe = {"model": "diat", "preset": preset_name, "data": str(Path(root).expanduser().resolve()),
                "data_fingerprint": dataset_fingerprint(root), "diat": config.to_dict(), "identity": identity,
                "pretrained": str(pretrained_dir.resolve()), "landmarks": data.landmark_source,
                "source_faces": len(data.source), "real_faces": len(data.real_index)}
    source = data.source
    if config.train_enhanced and config.enhancement == "local":     # each source face's edit mask rides along
        masks = M.edit_mask(config, data.landmarks[data.source_index], config.image_size, len(data.source_index))
        source = replace_masks(source, masks.half())
    s = train(task, source, run_dir, _loop(loop, config.steps, config, seed), describe)
    stages["diat"] = {"seconds": s["seconds"], "images_per_s": s["images_per_s"]}
    total = round(time.perf_counter() - start, 1)
    # CPU seconds: on a busy shared machine, about what the wall time would be on an idle core
    summary = {"seconds": total, "cpu_seconds": round(time.process_time() - cpu, 1), "stages": stages,
               "identity": identity, "losses": s["losses"]}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if verbose:
        print(f"DIAT {config.attr} -> {config.target}: {total:.1f} s in all "
              + ", ".join(f"{k} {v['seconds']} s" + (f" ({v['images_per_s']:,.0f} images/s)" if v.get('images_per_s') else "")
                          for k, v in stages.items()))
    return summary


def load_run(run_dir: Path | str, map_location: str | torch.device = "cpu") -> tuple[TransformNetwork, AttributeDiscriminator, dict]:
    """T, D (eval mode) and the run's config.json of a finished DIAT run."""
    described, modules = read_run(run_dir, "diat", "a DIAT run", map_location)
    config = DIATConfig.from_dict(described["diat"])
    T, D = TransformNetwork(config), AttributeDiscriminator(config)
    T.load_state_dict(modules["T"])
    D.load_state_dict(modules["D"])
    return T.eval(), D.eval(), described


# --- measuring -----------------------------------------------------------------------------------------------------------


def high_frequency_ratio(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Artefact measure: the energy of the Laplacian (a 3x3 high-pass) of y over that of x, per image.
    1 = as much fine detail as the input; above 1 = extra high-frequency content (noise, checkerboards)."""
    k = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]).view(1, 1, 3, 3).repeat(3, 1, 1, 1)

    def energy(t):
        return (torch.nn.functional.conv2d(t.float(), k.to(t.device), groups=3) ** 2).flatten(1).mean(1)

    return energy(y) / energy(x).clamp_min(1e-8)


@torch.no_grad()
def evaluate(T: TransformNetwork, config: DIATConfig, test: DIATData, judges, faces: int = 500) -> dict[str, Any]:
    """The run's figures on up to `faces` test faces that lack the target state: transfer rate by the
    attribute judge (raw T and after enhancement), identity cosine by the identity judge, SSIM outside the
    edit mask (local), the artefact measure (Laplacian energy ratio) and the Fréchet distance in the
    attribute judge's feature space to real test faces with the target state (not FID); `transfer_ceiling`:
    the judge's rate on those real faces, what a transfer that drew a real face would score."""
    from faceedu.metrics import edit_success_rate, generation_report, identity_similarity, ssim

    x, lm = test.source_faces(faces)
    raw = M.transform(T, x)
    out = M.enhance(x, raw, config, lm).clamp(0, 1)
    attr_judge, id_judge = judges.require("attributes"), judges.require("identity")
    result: dict[str, Any] = {"attr": config.attr, "target": config.target, "faces": len(x),
                              "judges": judges.describe(), "warnings": list(judges.warnings),
                              "landmarks": test.landmark_source, "enhancement": config.enhancement}
    result["transfer_rate"] = edit_success_rate(attr_judge, out, config.attr, float(config.target))
    result["transfer_rate_raw"] = edit_success_rate(attr_judge, raw, config.attr, float(config.target))
    result["identity_cosine"] = identity_similarity(id_judge, x, out)["mean_cosine"]
    result["identity_cosine_raw"] = identity_similarity(id_judge, x, raw)["mean_cosine"]
    result["same_person_rate"] = identity_similarity(id_judge, x, out)["same_person_rate"]
    if config.enhancement == "local":
        outside = 1 - (M.edit_mask(config, lm, x.shape[-1], len(x)) > 0).float()
        s = ssim(x, out, mask=outside)
        result["ssim_outside_mask"] = float(s.mean())
        result["ssim_outside_mask_min"] = float(s.min())
    result["ssim_raw"] = float(ssim(x, raw).mean())
    result["artefacts_raw"] = float(high_frequency_ratio(x, raw).mean())
    result["artefacts"] = float(high_frequency_ratio(x, out).mean())
    real = test.images(test.real_index[:faces])
    # the transfer rate's ceiling: the judge on real faces that have the target state
    result["transfer_ceiling"] = edit_success_rate(attr_judge, real, config.attr, float(config.target))
    result["frechet"] = generation_report(attr_judge, real, out)
    return result


def report(run_dir: Path | str, root: Path | str | None = None, faces: int = 500, verbose: bool = True) -> dict:
    """Evaluate a finished run on its data's test split with the judges for that data; writes
    run_dir/eval/eval.json and before_after.png."""
    from faceedu.models.judges import judges_for
    from faceedu.viz import save_grid

    run_dir = Path(run_dir)
    T, _, described = load_run(run_dir)
    config = DIATConfig.from_dict(described["diat"])
    root = root or described["data"]
    test = load_data(root, "test", config, verbose=verbose)
    judges = judges_for(root, kinds=("attributes", "identity"), verbose=verbose)
    result = evaluate(T, config, test, judges, faces)
    result["preset"] = described.get("preset")
    out_dir = run_dir / "eval"
    out_dir.mkdir(exist_ok=True)
    (out_dir / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
    x, lm = test.source_faces(8)
    raw = M.transform(T, x)
    save_grid(torch.cat([x, raw, M.enhance(x, raw, config, lm).clamp(0, 1)]), out_dir / "before_after.png")
    return result


def format_report(result: dict) -> str:
    lines = [f"DIAT {result['attr']} -> {result['target']} on {result['faces']} test faces "
             f"({result['enhancement']} enhancement; landmarks: {result['landmarks']})"]
    lines += [f"  judge: {line}" for line in result["judges"]] + [f"  warning: {w}" for w in result["warnings"]]
    keys = ["transfer_rate", "transfer_rate_raw", "transfer_ceiling", "identity_cosine", "identity_cosine_raw",
            "same_person_rate", "ssim_outside_mask", "ssim_outside_mask_min", "ssim_raw", "artefacts", "artefacts_raw"]
    lines += [f"  {k:24s} {result[k]:.3f}" for k in keys if k in result]
    fd = result["frechet"]
    lines.append(f"  Frechet (attribute judge features, not FID) {fd.get('frechet', float('nan')):.3f}")
    return "\n".join(lines)


# --- the command ------------------------------------------------------------------------------------------------------


def command_train(args) -> int:
    """`faceedu train diat --attr A --preset quick|full [--data celeba] [--target 0|1] ...`."""
    overrides: dict[str, Any] = {"attr": args.attr}
    if args.target is not None:
        overrides["target"] = args.target
    for name in ("steps", "batch_size", "lambda_id", "lambda_pr", "id_network"):
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = value
    try:
        config = preset(args.preset, **overrides)
    except (KeyError, AssertionError) as error:
        raise SystemExit(f"faceedu train diat: {error}") from None
    root = data_root(args)
    run = args.run or Path("runs") / f"diat-{args.preset}-{config.attr}-{config.target}"
    loop = loop_from_args(args)
    try:
        train_diat(config, run, root, loop, pretrained_dir=args.pretrained, seed=args.seed, preset_name=args.preset)
    except ValueError as error:
        raise SystemExit(f"faceedu train diat: {error}") from None
    result = report(run, root)
    print(format_report(result))
    print(f"Wrote {run / 'eval'}/eval.json and before_after.png")
    return 0


def command_eval(run_dir: Path, args) -> int:
    result = report(run_dir, root=getattr(args, "run_root", None), faces=getattr(args, "limit", None) or 500)
    print(format_report(result))
    print(f"Wrote {run_dir / 'eval'}/eval.json and before_after.png")
    return 0


# --- the quick suite: what the tests train and the docs report ---------------------------------------------------------

# (name, preset overrides): the quick models trained in one test run, sharing one pre-training, and the two
# ablations of the mouth-opening model.
QUICK_SUITE: tuple[tuple[str, dict], ...] = (
    ("Mouth_Slightly_Open-1", {"attr": "Mouth_Slightly_Open", "target": 1}),
    ("Mouth_Slightly_Open-0", {"attr": "Mouth_Slightly_Open", "target": 0}),
    ("Eyeglasses-0", {"attr": "Eyeglasses", "target": 0}),
    ("ablation-no-identity", {"attr": "Mouth_Slightly_Open", "target": 1, "lambda_id": 0.0}),
    ("ablation-no-regulariser", {"attr": "Mouth_Slightly_Open", "target": 1, "lambda_pr": 0.0}),
)
MORE_ATTRIBUTES: tuple[tuple[str, dict], ...] = (
    ("Male-1", {"attr": "Male", "target": 1}),
    ("Young-0", {"attr": "Young", "target": 0}),
    ("DIAT-A-Mouth_Slightly_Open-1", {"attr": "Mouth_Slightly_Open", "target": 1, "id_network": "discriminator"}),
)


def _finished_model(run: Path, config: DIATConfig) -> bool:
    """Whether `run` holds a finished DIAT model of exactly `config` (its summary.json written at the end)."""
    try:
        described = json.loads((run / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return ((run / "summary.json").is_file() and run_finished(run, "diat", config.steps)
            and DIATConfig.from_dict(described.get("diat", {})) == config)


def train_suite(root: Path | str, out: Path | str, suite=QUICK_SUITE, loop: LoopConfig | None = None,
                faces: int = 300, verbose: bool = True, workers: int = 2, **overrides) -> dict:
    """Train every (name, overrides) of `suite` with the quick preset into out/NAME, sharing out/pretrain,
    and evaluate each on `faces` test faces; writes out/results.json. Returns {"results", "seconds"}. A model
    already finished in out/NAME with the same configuration is evaluated, not trained again (its summary,
    with "reused", and its training seconds are reported).

    The shared pre-training runs first; then the models train `workers` at a time, each in its own process
    on its preset's threads (one for `quick`: two such processes use two cores, and every model's trajectory
    is the one a lone run draws, seeded afresh; workers=1 trains them here, one after another)."""
    out = Path(out)
    loop = loop or LoopConfig(progress=False, sample_every=0, log_every=25, checkpoint_every=100)
    jobs = [(root, out, name, preset("quick", **(change | overrides)), loop, faces, verbose) for name, change in suite]
    first = jobs[0][3]
    if not _pretrained_done(first, out / "pretrain"):
        with cpu_threads(first.threads):
            pretrain(first, out / "pretrain", root, load_data(root, "train", first, verbose=False).faces, loop, 0, verbose)
    if workers > 1 and len(jobs) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=multiprocessing.get_context("spawn")) as pool:
            done = list(pool.map(_suite_model, jobs))
    else:
        done = [_suite_model(job) for job in jobs]
    payload = {"results": {name: result for name, result, _ in done}, "seconds": {name: s for name, _, s in done}}
    (out / "results.json").write_text(json.dumps(payload, indent=2) + "\n")
    return payload


def _suite_model(job: tuple) -> tuple[str, dict, float]:
    """One model of `train_suite` (trained unless finished with the same configuration, then evaluated on the
    model's threads): (name, evaluate(...) with its training summary, training seconds)."""
    from faceedu.models.judges import judges_for

    root, out, name, config, loop, faces, verbose = job
    start = time.perf_counter()
    if _finished_model(out / name, config):          # trained before, with this configuration: kept
        summary = json.loads((out / name / "summary.json").read_text()) | {"reused": str(out / name)}
    else:
        summary = train_diat(config, out / name, root, loop, pretrained_dir=out / "pretrain", preset_name="quick",
                             data=load_data(root, "train", config, verbose=False), verbose=verbose)
    seconds = summary["seconds"] if "reused" in summary else round(time.perf_counter() - start, 1)
    with cpu_threads(config.threads):
        T, _, _ = load_run(out / name)
        judges = judges_for(root, kinds=("attributes", "identity"), verbose=False)
        result = evaluate(T, config, load_data(root, "test", config, verbose=False), judges, faces) | {"train": summary}
    if verbose:
        print(format_report(result), flush=True)
    return name, result, seconds


# --- identity against lessons 03 and 05 on the same faces -----------------------------------------------------------------


@torch.no_grad()
def identity_comparison(root: Path | str, diat_runs: dict[str, Path], vae_run: Path | None = None,
                        fader_run: Path | None = None, faces: int = 300, vae_scale: float = 2.0) -> list[dict]:
    """For each DIAT run (name -> folder): the identity judge's cosine between the same test faces and their
    edit by DIAT, by lesson 03's latent arithmetic (the VAE's attribute vector, +-`vae_scale`) and by lesson
    05's Fader Network (the attribute set to the target, the others to the faces' labels), with each edit's
    transfer rate by the attribute judge. Methods whose model lacks the attribute are left out."""
    from faceedu.metrics import edit_success_rate, identity_similarity
    from faceedu.models.judges import judges_for

    judges = judges_for(root, kinds=("attributes", "identity"), verbose=False)
    attr_judge, id_judge = judges.require("attributes"), judges.require("identity")
    rows = []
    for name, run in diat_runs.items():
        T, _, described = load_run(run)
        config = DIATConfig.from_dict(described["diat"])
        test = load_data(root, "test", config, verbose=False)
        x, lm = test.source_faces(faces)
        index = test.source_index[:faces]
        edits = {"DIAT": M.transfer(T, x, config, lm)}
        if vae_run is not None and Path(vae_run, CHECKPOINT).is_file():
            from faceedu.editing import LatentSpace, edit_faces

            space = LatentSpace.from_run(vae_run, root, limit=5_000, cache=False)
            if config.attr in space.names:
                sign = 1.0 if config.target == 1 else -1.0
                edits[f"latent arithmetic (lesson 03, scale {vae_scale:g})"] = edit_faces(
                    space.vae, x, space.vector(config.attr), sign * vae_scale).clamp(0, 1)
        if fader_run is not None and Path(fader_run, CHECKPOINT).is_file():
            from faceedu.models.fader import edit as fader_edit
            from faceedu.train.fader import load_run as load_fader

            ae, _, _ = load_fader(fader_run)
            if config.attr in ae.config.attrs:
                columns = [test.faces.attr_names.index(a) for a in ae.config.attrs]
                alpha = test.faces.attr[index][:, columns].float() * 2 - 1
                alpha[:, list(ae.config.attrs).index(config.attr)] = 2.0 * config.target - 1
                edits["Fader Network (lesson 05)"] = fader_edit(ae, x, alpha)
        for method, edited in edits.items():
            rows.append({"edit": name, "method": method, "faces": len(x),
                         "identity_cosine": identity_similarity(id_judge, x, edited)["mean_cosine"],
                         "transfer_rate": edit_success_rate(attr_judge, edited, config.attr, float(config.target))})
    return rows


def ageing_counterfactuals(judges, identities: int = 150, seed: int = 7) -> dict[str, Any]:
    """What the judges make of ageing a SynthFaces face and nothing else (the Young bar, docs/diat.md): young
    identities (`make_identity(seed, i)`, natural hair not grey) rendered in one scene as drawn, with
    `who.young` False (age lines), and with grey hair as well; and, for scale, in another scene (pose, light
    and background) with the same attributes: another photo of the same person. Per change: the identity
    judge's mean cosine to the face as drawn and the share the attribute judge reads as old. "images": the
    first 8 faces of each of the first three rows, (24, 3, 64, 64) in [0, 1]."""
    from faceedu.data import synthfaces as S
    from faceedu.metrics import attribute_rate, identity_similarity

    rows: dict[str, list[torch.Tensor]] = {"as drawn": [], "age lines": [], "age lines and grey hair": [],
                                           "another photo": []}
    index = 0
    while len(rows["as drawn"]) < identities:
        index += 1
        who = S.make_identity(seed, index)
        if not who.young or who.hair == "Gray_Hair":
            continue
        another = S.render_face(64, seed, 4, index, who)            # its attributes sampled, then kept
        attrs, old = another["attrs"], replace(who, young=False)
        scenes = {"as drawn": (who, attrs), "age lines": (old, attrs | {"Young": False}),
                  "age lines and grey hair": (old, attrs | {"Young": False, "_hair": "Gray_Hair"})}
        drawn = {name: S.render_face(64, seed, 3, index, person, a)["image"] for name, (person, a) in scenes.items()}
        for name, image in (drawn | {"another photo": another["image"]}).items():
            rows[name].append(torch.from_numpy(image).permute(2, 0, 1).float() / 255)
    faces = {name: torch.stack(images) for name, images in rows.items()}
    attr_judge, id_judge = judges.require("attributes"), judges.require("identity")
    out: dict[str, Any] = {"identities": identities}
    for name, images in faces.items():
        out[name] = {"identity_cosine": 1.0 if name == "as drawn" else
                     identity_similarity(id_judge, faces["as drawn"], images)["mean_cosine"],
                     "read_old": attribute_rate(attr_judge, images, "Young", present=False)}
    out["images"] = torch.cat([faces[name][:8] for name in ("as drawn", "age lines", "age lines and grey hair")])
    return out


def bench_tasks(preset_name: str = "quick") -> dict[str, tuple[DIATTask, dict]]:
    """For `faceedu bench`: the DIAT steps' Task at a preset (identity judge features, untrained networks)
    and one synthetic batch of source faces."""
    config = preset(preset_name)
    config = replace(config, id_network="identity_judge" if config.id_network == "auto" else config.id_network)
    g = torch.Generator().manual_seed(0)
    size = config.image_size
    T, D, f = TransformNetwork(config), AttributeDiscriminator(config), DenoisingNetwork(config.f_width)
    M.init_weights(T)
    M.init_weights(D)
    phi = identity_network(config, ".", D, verbose=False)
    real = (torch.rand(64, 3, size, size, generator=g) * 255).to(torch.uint8)
    batch = {"image": torch.rand(config.batch_size, 3, size, size, generator=g),
             "mask": M.edit_mask(config, None, size, config.batch_size)}    # the edit masks train_enhanced reads
    return {"diat": (DIATTask(config, T, D, f, phi, real), batch)}
