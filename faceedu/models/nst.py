"""Neural style transfer (Gatys, Ecker & Bethge, "Image style transfer using convolutional neural networks",
CVPR 2016), localised with masks as in FacePaint (2019).

The image itself is optimised. A frozen feature network (faceedu.models.features: a cached torchvision
VGG19 if present, else the offline VGG16 port, else the course's judge) describes it twice:

- content: the feature maps F^l at conv4_2, compared with the content image's P^l (paper eq. 1; here
  divided by the layer size N_l M_l so that the weights do not depend on the image size)

      L_content = 1/2 * mean_ij (F^l_ij - P^l_ij)^2

- style: the Gram matrices of conv1_1, conv2_1, conv3_1, conv4_1 and conv5_1 (equal weights w_l = 1/5),
  normalised by the layer size, G^l = F^l F^l^T / (N_l M_l), against the style image's A^l (eq. 3-5)

      E_l = 1/4 * sum_ij (G^l_ij - A^l_ij)^2        (= the paper's 1/(4 N^2 M^2) sum (F F^T - ...)^2)
      L_style = sum_l w_l E_l

- total variation, the squared differences of neighbouring pixels (Mahendran & Vedaldi 2015), which
  keeps the high-frequency noise that a feature loss cannot see out of the image.

  L = alpha L_content + beta L_style + gamma L_tv, minimised over the pixels by L-BFGS (the paper's
  choice) or Adam, from the content image (default) or from noise.

Localised style (FacePaint): a mask m (face, hair or background, from a CelebAMask-HQ label map) weights
the generated image's Gram matrices, G_m = sum_p m_p F_p F_p^T / (N_l sum_p m_p), with m resized to each
layer by area averaging; and the image that is optimised is composed, x = m * x_free + (1 - m) * content,
so that outside the mask (m = 0) the content is untouched, bit for bit.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# --- the paper's layers -----------------------------------------------------------------------------------

CONTENT_LAYERS: tuple[str, ...] = ("conv4_2",)
STYLE_LAYERS: tuple[str, ...] = ("conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1")
# torchvision's vgg19().features indices of those layers (the paper's network), and of the same names in
# vgg16().features, the offline port that stands in for it (VGG16 has 3 convs in blocks 3-5, VGG19 has 4).
VGG19_INDICES = {"conv1_1": 0, "conv2_1": 5, "conv3_1": 10, "conv4_1": 19, "conv4_2": 21, "conv5_1": 28}
VGG16_INDICES = {"conv1_1": 0, "conv2_1": 5, "conv3_1": 10, "conv4_1": 17, "conv4_2": 19, "conv5_1": 24}

MASKS = ("face", "hair", "background", "none")
# CelebAMask-HQ classes of each region (label maps: 0 is background, classes as faceedu.data.layout)
MASK_CLASSES = {
    "face": ("skin", "nose", "eye_g", "l_eye", "r_eye", "l_brow", "r_brow", "mouth", "u_lip", "l_lip"),
    "hair": ("hair",),
    "background": (),            # label 0
}


# (beta, gamma) per feature network. The balance depends on the scale of the network's features: content
# terms grow with its square, Gram terms with its fourth power. Measured by eye and by the loss curves on
# SynthFaces at 128 px for the VGG16 port (Caffe input, 0-255) and the judge; the torchvision value is the
# VGG16 port's scaled by the input ratio (255 * 0.226)^-2, an estimate (no torchvision weights here).
DEFAULT_WEIGHTS = {"caffe": (1e-4, 10.0), "imagenet": (0.3, 3e-3), "judge": (1.0, 0.1)}


def default_weights(net: nn.Module) -> tuple[float, float]:
    """(style weight, total-variation weight) suited to this feature network's scale."""
    return DEFAULT_WEIGHTS[getattr(net, "convention", "judge")]


@dataclass
class NSTConfig:
    """One style transfer. The weights are for the losses as normalised here (layer-size means)."""

    size: int = 256               # the content is centre-cropped to a square and resized to size x size
    steps: int = 300              # L-BFGS iterations (one loss evaluation each) or Adam steps
    optimizer: str = "lbfgs"      # "lbfgs" (Gatys) or "adam"
    lr: float = 0.02              # Adam's step on the [0, 1] pixel scale; L-BFGS uses lr 1 (jcjohnson/neural-style)
    content_weight: float = 1.0   # alpha
    style_weight: float | None = None   # beta; None: the feature network's default (DEFAULT_WEIGHTS)
    tv_weight: float | None = None      # gamma; None: likewise
    init: str = "content"         # "content" or "noise"
    mask: str = "none"            # face | hair | background | none
    content_layers: tuple[str, ...] = CONTENT_LAYERS
    style_layers: tuple[str, ...] = STYLE_LAYERS
    style_layer_weights: tuple[float, ...] | None = None   # None: equal, 1 / len(style_layers)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.optimizer not in ("lbfgs", "adam"):
            raise ValueError(f"optimizer must be 'lbfgs' or 'adam', not {self.optimizer!r}.")
        if self.init not in ("content", "noise"):
            raise ValueError(f"init must be 'content' or 'noise', not {self.init!r}.")
        if self.mask not in MASKS:
            raise ValueError(f"unknown mask {self.mask!r}: choose one of {', '.join(MASKS)}.")
        if self.size < 32 or self.steps < 1:
            raise ValueError(f"size must be at least 32 pixels and steps at least 1 (got {self.size}, {self.steps}).")


# --- building blocks --------------------------------------------------------------------------------------

def gram_matrix(features: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, C): channel co-activations summed over positions, divided by the layer size C*H*W."""
    b, c, h, w = features.shape
    flat = features.reshape(b, c, h * w)                    # (B, C, M)
    return flat @ flat.transpose(1, 2) / (c * h * w)        # (B, C, C)


def resize_mask(mask: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """(B, 1, H, W) in [0, 1] -> (B, 1, h, w): the fraction of each feature cell the mask covers (area averaging)."""
    if tuple(mask.shape[-2:]) == tuple(size):
        return mask
    return F.interpolate(mask, size=tuple(size), mode="area")


def masked_gram_matrix(features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W), mask (B, 1, H0, W0) -> (B, C, C): sum_p m_p F_p F_p^T / (C sum_p m_p), m resized to (H, W).
    A mask of ones gives `gram_matrix`."""
    b, c, h, w = features.shape
    m = resize_mask(mask.to(features.dtype), (h, w)).reshape(b, 1, h * w)   # (B, 1, M)
    flat = features.reshape(b, c, h * w)
    area = m.sum(dim=2, keepdim=True).clamp_min(1e-8)                       # (B, 1, 1)
    return (flat * m) @ flat.transpose(1, 2) / (c * area)


def content_loss(features: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Gatys eq. 1 divided by the layer size: 1/2 * mean (F - P)^2."""
    return 0.5 * (features - target).pow(2).mean()


def style_loss(grams: dict[str, torch.Tensor], targets: dict[str, torch.Tensor],
               weights: dict[str, float] | None = None) -> torch.Tensor:
    """sum_l w_l * 1/4 * sum_ij (G^l - A^l)^2 (per image, averaged over the batch); equal w_l = 1/L by default."""
    weights = weights or {name: 1.0 / len(grams) for name in grams}
    total = 0.0
    for name, gram in grams.items():
        total = total + weights[name] * 0.25 * (gram - targets[name]).pow(2).sum(dim=(-2, -1)).mean()
    return total


def total_variation(image: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of vertically and of horizontally neighbouring pixels, summed: (B, C, H, W) -> ()."""
    down = (image[:, :, 1:, :] - image[:, :, :-1, :]).pow(2).mean()
    right = (image[:, :, :, 1:] - image[:, :, :, :-1]).pow(2).mean()
    return down + right


def compose(free: torch.Tensor, content: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The image the losses see: the optimised pixels inside the mask, the content's outside it."""
    return free if mask is None else mask * free + (1 - mask) * content


# --- the optimisers ---------------------------------------------------------------------------------------

def lbfgs(loss_fn: Callable[[torch.Tensor], torch.Tensor], init: torch.Tensor, steps: int,
          on_eval: Callable[[int, float], None] | None = None, history_size: int = 100) -> tuple[torch.Tensor, list[float]]:
    """Minimise loss_fn over a copy of `init` with L-BFGS for `steps` iterations (lr 1, no line search: one
    loss evaluation per iteration, as Johnson's neural-style). Returns (the result, the loss of every evaluation)."""
    x = init.detach().clone().contiguous().requires_grad_(True)
    optimizer = torch.optim.LBFGS([x], lr=1.0, max_iter=steps, max_eval=steps + 1, history_size=history_size,
                                  tolerance_grad=-1.0, tolerance_change=-1.0)   # never stop early
    losses: list[float] = []

    def closure() -> torch.Tensor:                  # L-BFGS calls it whenever it needs the loss and its gradient
        optimizer.zero_grad()
        loss = loss_fn(x)
        loss.backward()
        losses.append(float(loss.detach()))
        if on_eval is not None:
            on_eval(len(losses), losses[-1])
        return loss

    optimizer.step(closure)
    return x.detach(), losses


def adam(loss_fn: Callable[[torch.Tensor], torch.Tensor], init: torch.Tensor, steps: int, lr: float = 0.02,
         on_eval: Callable[[int, float], None] | None = None) -> tuple[torch.Tensor, list[float]]:
    """The same with Adam: `steps` gradient steps, pixels kept in [0, 1] after each."""
    x = init.detach().clone().contiguous().requires_grad_(True)
    optimizer = torch.optim.Adam([x], lr=lr)
    losses: list[float] = []
    for step in range(steps):
        optimizer.zero_grad()
        loss = loss_fn(x)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            x.clamp_(0, 1)
        losses.append(float(loss.detach()))
        if on_eval is not None:
            on_eval(step + 1, losses[-1])
    return x.detach(), losses


# --- style transfer ---------------------------------------------------------------------------------------

@dataclass
class NSTResult:
    image: torch.Tensor                       # (1, 3, S, S) in [0, 1]
    history: dict[str, list[float]]           # per loss evaluation: total, content, style, tv
    seconds: float
    network: str
    config: dict = field(default_factory=dict)

    @property
    def drop(self) -> float:
        """How many times smaller the total loss ended than it started."""
        return self.history["total"][0] / max(self.history["total"][-1], 1e-30)


class StyleTransfer:
    """Gatys' objective for one content image, one style image and an optional mask (tensors (1, 3, H, W) in
    [0, 1]; the mask (1, 1, H, W) in [0, 1] at the content's size; the style may have any size)."""

    def __init__(self, net: nn.Module, content: torch.Tensor, style: torch.Tensor, mask: torch.Tensor | None,
                 config: NSTConfig):
        check_inputs(content, style, mask)
        self.net, self.config, self.content, self.mask = net, config, content, mask
        self.content_layers = _available(net, config.content_layers, "content_layers")
        self.style_layers = _available(net, config.style_layers, "style_layers")
        weights = config.style_layer_weights or tuple(1.0 / len(self.style_layers) for _ in self.style_layers)
        self.style_weights = dict(zip(self.style_layers, weights, strict=True))
        with torch.no_grad():
            self.content_targets = net(content, self.content_layers)
            self.style_targets = {k: gram_matrix(v) for k, v in net(style, self.style_layers).items()}
        self.last: dict[str, float] = {}
        beta, gamma = default_weights(net)
        self.style_weight = beta if config.style_weight is None else config.style_weight
        self.tv_weight = gamma if config.tv_weight is None else config.tv_weight

    def losses(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """The three terms and their weighted sum for the (already composed) image."""
        c = self.config
        maps = self.net(image, tuple(dict.fromkeys(self.content_layers + self.style_layers)))
        content = sum(content_loss(maps[k], self.content_targets[k]) for k in self.content_layers) / len(self.content_layers)
        grams = {k: gram_matrix(maps[k]) if self.mask is None else masked_gram_matrix(maps[k], self.mask)
                 for k in self.style_layers}
        style = style_loss(grams, self.style_targets, self.style_weights)
        tv = total_variation(image)
        total = c.content_weight * content + self.style_weight * style + self.tv_weight * tv
        return {"total": total, "content": content, "style": style, "tv": tv}

    def loss(self, free: torch.Tensor) -> torch.Tensor:
        if self.config.optimizer == "lbfgs":    # L-BFGS has no projection step: clamp the pixels it hands us
            with torch.no_grad():
                free.clamp_(0, 1)
        terms = self.losses(compose(free, self.content, self.mask))
        self.last = {k: float(v.detach()) for k, v in terms.items()}
        return terms["total"]

    def initial(self) -> torch.Tensor:
        if self.config.init == "content":
            return self.content.clone()
        g = torch.Generator().manual_seed(self.config.seed)
        return torch.rand(self.content.shape, generator=g).to(self.content.device)

    def run(self, progress: bool = False) -> NSTResult:
        c = self.config
        history: dict[str, list[float]] = {"total": [], "content": [], "style": [], "tv": []}
        bar = _progress(c.steps, progress)

        def on_eval(n: int, _: float) -> None:
            for k in history:
                history[k].append(self.last[k])
            if bar is not None:
                bar.update(min(n, c.steps) - bar.n)
                bar.set_postfix(loss=f"{self.last['total']:.3g}", content=f"{self.last['content']:.3g}",
                                style=f"{self.last['style']:.3g}")

        start = time.perf_counter()
        if c.optimizer == "lbfgs":
            free, _ = lbfgs(self.loss, self.initial(), c.steps, on_eval)
        else:
            free, _ = adam(self.loss, self.initial(), c.steps, c.lr, on_eval)
        seconds = time.perf_counter() - start
        if bar is not None:
            bar.close()
        image = compose(free.clamp(0, 1), self.content, self.mask).clamp(0, 1)
        used = asdict(c) | {"style_weight": self.style_weight, "tv_weight": self.tv_weight}
        return NSTResult(image, history, seconds, getattr(self.net, "label", type(self.net).__name__), used)


def style_transfer(content: torch.Tensor, style: torch.Tensor, mask: torch.Tensor | None = None,
                   config: NSTConfig | None = None, net: nn.Module | None = None, progress: bool = False) -> NSTResult:
    """Gatys' style transfer of `style` onto `content` (inside `mask` when given); see StyleTransfer."""
    config = config or NSTConfig()
    if net is None:
        from faceedu.models.features import load_feature_network

        net = load_feature_network(device=content.device)
    torch.manual_seed(config.seed)
    return StyleTransfer(net, content, style, mask, config).run(progress)


def check_inputs(content: torch.Tensor, style: torch.Tensor, mask: torch.Tensor | None) -> None:
    """Clear errors for tensors that cannot be styled."""
    for name, image in (("content", content), ("style", style)):
        if not isinstance(image, torch.Tensor) or image.dim() != 4 or image.shape[0] != 1:
            raise ValueError(f"the {name} image should be a tensor (1, 3, H, W), got "
                             f"{tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__}.")
        if image.shape[1] != 3:
            raise ValueError(f"the {name} image has {image.shape[1]} channel(s): style transfer here needs RGB "
                             f"(3 channels); repeat a grayscale channel three times if you mean it.")
    if mask is not None:
        if mask.dim() != 4 or mask.shape[:2] != (1, 1):
            raise ValueError(f"the mask should be a tensor (1, 1, H, W), got {tuple(mask.shape)}.")
        if mask.shape[-2:] != content.shape[-2:]:
            raise ValueError(f"the mask is {mask.shape[-1]}x{mask.shape[-2]} but the content image is "
                             f"{content.shape[-1]}x{content.shape[-2]}: they must have the same size.")
        if float(mask.sum()) == 0:
            raise ValueError("the mask is empty (no pixel inside it): there is nothing to style.")


def _available(net: nn.Module, layers: Sequence[str], what: str) -> tuple[str, ...]:
    """The layers if the network has them; for the small judge network (no conv4_2), its own choice."""
    names = getattr(net, "layers", ())
    if all(layer in names for layer in layers):
        return tuple(layers)
    return tuple(getattr(net, what))


def _progress(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="style transfer", unit="step")


# --- masks --------------------------------------------------------------------------------------------------

def region_mask(label_map: np.ndarray | torch.Tensor, region: str) -> torch.Tensor:
    """A CelebAMask-HQ label map (H, W) -> float mask (1, 1, H, W) of `region` (face, hair or background)."""
    from faceedu.data.layout import CELEBAMASK_LABELS

    if region not in MASK_CLASSES:
        raise ValueError(f"unknown mask {region!r}: choose one of {', '.join(MASKS)}.")
    labels = torch.as_tensor(np.array(label_map)).long()
    if region == "background":
        inside = labels == 0
    else:
        inside = torch.zeros_like(labels, dtype=torch.bool)
        for name in MASK_CLASSES[region]:
            inside |= labels == CELEBAMASK_LABELS[name]
    return inside.float()[None, None]


def find_label_map(image_path: Path) -> np.ndarray | None:
    """The label map that belongs to an image in a CelebA layout (img_align_celeba/000001.jpg ->
    CelebAMask-HQ-mask/0.png, SynthFaces writes them) or a CelebAMask-HQ layout (CelebA-HQ-img/12.jpg ->
    CelebAMask-HQ-mask-anno/0/00012_<class>.png); None when there is none."""
    from faceedu.data.celebamask import class_mask_paths, combine_class_masks, read_label_map

    image_path = Path(image_path)
    try:
        k = int(image_path.stem)
    except ValueError:
        return None
    folder = image_path.parent
    if folder.name == "img_align_celeba":
        path = folder.parent / "CelebAMask-HQ-mask" / f"{k - 1}.png"
        return read_label_map(path) if path.is_file() else None
    if folder.name == "CelebA-HQ-img":
        paths = class_mask_paths(folder.parent / "CelebAMask-HQ-mask-anno", k)
        return combine_class_masks(paths) if paths else None
    return None


def landmark_mask(image: torch.Tensor) -> torch.Tensor:
    """The face as the convex hull of dlib's 68 landmarks (the `faces` extra), (1, 1, H, W); for photographs
    without a label map. Hair and background cannot be told from landmarks."""
    from scipy.spatial import ConvexHull
    from skimage.draw import polygon

    from faceedu.models.faces import DlibFaces

    points = DlibFaces().landmarks68(image)[0].numpy()            # (68, 2) x, y
    hull = points[ConvexHull(points).vertices]
    mask = np.zeros(image.shape[-2:], dtype=np.float32)
    rows, cols = polygon(hull[:, 1], hull[:, 0], mask.shape)
    mask[rows, cols] = 1
    return torch.from_numpy(mask)[None, None]


# --- reading images -----------------------------------------------------------------------------------------

class NSTInputError(ValueError):
    """An input the command cannot use; the message says why and what to do."""


def read_image(path: Path | str, what: str) -> "PIL.Image.Image":  # noqa: F821
    """An RGB PIL image, or NSTInputError for a missing, unreadable or grayscale file."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise NSTInputError(f"the {what} image {path} does not exist.")
    try:
        with Image.open(path) as opened:
            opened.load()
            image = opened.copy()
    except (UnidentifiedImageError, OSError) as error:
        raise NSTInputError(f"the {what} image {path} cannot be read as an image ({type(error).__name__}): "
                            "give a PNG or JPEG file.") from None
    if image.mode in ("L", "LA", "I", "I;16", "F", "1") or (image.mode == "P" and _palette_is_gray(image)):
        raise NSTInputError(f"the {what} image {path} is grayscale (mode {image.mode}); style transfer here needs "
                            "a colour (RGB) image. Convert it first if you mean it, e.g. "
                            "PIL.Image.open(path).convert('RGB').save(...).")
    return image.convert("RGB")


def _palette_is_gray(image) -> bool:
    rgb = np.asarray(image.convert("RGB"))
    return bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())


def prepare(image, size: int) -> torch.Tensor:
    """PIL RGB -> (1, 3, size, size) in [0, 1]: a centred square crop (as the CelebA loaders), resized."""
    from faceedu.data.transforms import FaceCrop

    return FaceCrop(size, "center")(image)[None].contiguous()


def content_mask(path: Path, image, region: str, size: int) -> torch.Tensor | None:
    """The mask of `region` for the content image at `path`, at size x size: from its label map when one
    is found, else (face only) from dlib's landmarks; None for region "none"."""
    from faceedu.data.transforms import FaceCrop

    if region == "none":
        return None
    if region not in MASK_CLASSES:
        raise NSTInputError(f"unknown mask {region!r}: choose one of {', '.join(MASKS)}.")
    labels = find_label_map(Path(path))
    if labels is not None:
        if labels.shape != (image.size[1], image.size[0]):
            if abs(labels.shape[1] * image.size[1] - image.size[0] * labels.shape[0]) > 0.02 * labels.shape[1] * image.size[1]:
                raise NSTInputError(f"the label map of {path} is {labels.shape[1]}x{labels.shape[0]} but the image is "
                                    f"{image.size[0]}x{image.size[1]}: their sizes differ, so the mask cannot be placed.")
        from PIL import Image

        labels = np.asarray(Image.fromarray(labels).resize(image.size, Image.Resampling.NEAREST))
        mask = region_mask(FaceCrop(size, "center").label_map(labels), region)
    elif region == "face":
        from faceedu.models.faces import FacesExtraMissing

        try:
            mask = landmark_mask(prepare(image, size))
        except FacesExtraMissing as error:
            raise NSTInputError(f"{path} has no CelebAMask-HQ label map next to it, and the face mask of a "
                                f"photograph then comes from dlib's landmarks: {error}") from None
    else:
        raise NSTInputError(f"{path} has no CelebAMask-HQ label map next to it (img_align_celeba/000001.jpg -> "
                            f"CelebAMask-HQ-mask/0.png), and a {region} mask cannot be drawn from face landmarks. "
                            "Use --mask face (landmarks, `faces` extra) or none, or an image from a folder with label maps.")
    if float(mask.sum()) == 0:
        raise NSTInputError(f"the {region} mask of {path} is empty at {size}x{size}: this image has no {region}.")
    return mask


# --- figures ------------------------------------------------------------------------------------------------

def plot_losses(history: dict[str, list[float]], path: Path | str, title: str = "") -> Path:
    """The total loss and its weighted terms per evaluation, on a log scale."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from faceedu.viz import save_figure

    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    for name in ("total", "content", "style", "tv"):
        values = np.asarray(history[name])
        if len(values) and (values > 0).any():
            ax.plot(np.arange(1, len(values) + 1), values, label=name, lw=1.6 if name == "total" else 1)
    ax.set_yscale("log")
    ax.set_xlabel("loss evaluation")
    ax.set_ylabel("loss (unweighted terms)")
    ax.set_title(title or "style transfer losses", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)


def save_image(image: torch.Tensor, path: Path | str) -> Path:
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = (image[0].clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
    Image.fromarray(pixels).save(path)
    return path
