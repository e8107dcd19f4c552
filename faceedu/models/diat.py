"""DIAT: Deep Identity-aware Transfer of facial attributes (Li, Zuo & Zhang, arXiv 1610.05586 v1, 2016).
Pinned to the first version: the later revision (mask network, U-Net, WGAN) is a different model.

A feed-forward transform network T turns a face x that lacks an attribute into T(x) that has it. T is
trained against three terms:

    L_T = lambda_attr * l_attr(T(x)) + lambda_id * l_id(x, T(x)) + lambda_pr * l_pr(T(x))        (1)

- the attribute loss l_attr: an attribute discriminator D learns to tell real faces that *have* the
  target attribute from transformed ones; T is rewarded when D takes T(x) for real (a GAN loss);
- the identity-aware loss l_id: weighted squared differences of a face network's feature maps,

    l_id(x, y) = sum_l w_l * mean_{c,h,w} (phi_l(x) - phi_l(y))^2                                  (2)

  (VGG-Face in the paper; here the identity judge's stages on SynthFaces and a VGG16 on photographs, see
  `faceedu.train.diat.identity_network`). DIAT-A takes phi from D's own convolutional features instead;
- the perceptual regulariser l_pr: a reconstruction network g (T's architecture, trained to rebuild x)
  makes images with the artefacts such networks make, g(x) = x + n; a 2-layer 3x3 denoising network f
  learns to predict that artefact n from g(x). Its prediction on T(x) is then the artefact T(x) carries:

    l_f = mean (f(g(x)) - (g(x) - x))^2          (training f)        l_pr(y) = mean f(y)^2        (3)

Training starts from pre-trained networks, as in the paper: T as a reconstruction network (x -> x), D as
an attribute classifier (real faces with vs without the attribute). Then the enhancement stage improves
the visual quality: for local attributes (mouth open/closed, glasses) only the region of the convex hull
of the relevant 68 landmarks changes, ``mask * T(x) + (1 - mask) * x``; for global attributes (gender,
age) the low frequencies come from T(x) and the details from x, ``blur(T(x)) + x - blur(x)`` (the
closed-form minimiser of the paper's enhancement objective, which asks the Gaussian-blurred output to
match the blurred T(x) and the rest to match the input).

Images are in [-1, 1] inside the networks (tanh output); `transfer` takes and returns [0, 1].
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from faceedu.losses import discriminator_loss, generator_loss
from faceedu.models.freeze import frozen
from faceedu.models.pixels import to_image, to_model

# --- which attributes, and where they live ----------------------------------------------------------------

# iBUG 68-point indices (0-based): jaw 0-16, brows 17-26, nose 27-35, eyes 36-47, mouth 48-67.
MOUTH = tuple(range(48, 68))
# Glasses cover the eyes and brows and reach the temples and the nose bridge: the brows, the eyes, the
# upper nose (27-29) and the jaw's top points (0, 16), at eye level, that bound the frames at the sides.
EYE_REGION = (0, 16, *range(17, 27), 27, 28, 29, *range(36, 48))
LOCAL_ATTRIBUTES: dict[str, tuple[int, ...]] = {"Mouth_Slightly_Open": MOUTH, "Eyeglasses": EYE_REGION}
# How far each hull is grown, as a share of the image side: an opening mouth reaches below its closed
# landmarks' hull (6% of the side: 4 pixels at 64x64), frames a little beyond the eye landmarks (3%).
HULL_GROW: dict[str, float] = {"Mouth_Slightly_Open": 0.06, "Eyeglasses": 0.03}
GLOBAL_ATTRIBUTES: tuple[str, ...] = ("Male", "Young")
ATTRIBUTES: tuple[str, ...] = (*LOCAL_ATTRIBUTES, *GLOBAL_ATTRIBUTES)
# The paper's four tasks: expression transfer (mouth open), accessory removal, gender transfer, age progression.
DEFAULT_TARGETS: dict[str, int] = {"Mouth_Slightly_Open": 1, "Eyeglasses": 0, "Male": 1, "Young": 0}


def enhancement_kind(attr: str) -> str:
    """"local" (a landmark hull mask) or "global" (blur-based detail transfer) for one of `ATTRIBUTES`."""
    if attr in LOCAL_ATTRIBUTES:
        return "local"
    if attr in GLOBAL_ATTRIBUTES:
        return "global"
    raise KeyError(f"DIAT transfers {', '.join(ATTRIBUTES)}; not {attr!r}.")


# --- configuration ------------------------------------------------------------------------------------------


@dataclass
class DIATConfig:
    """One DIAT model: one attribute, one direction (`target`: the value T gives every face). Defaults:
    the paper's configuration (`full`)."""

    attr: str = "Mouth_Slightly_Open"
    target: int = 1                       # 1: add the attribute, 0: remove it
    image_size: int = 128                 # the paper: 128x128 aligned CelebA faces
    # T (Johnson et al.'s transform network: 9x9 conv, two stride-2 3x3 convs, 5 residual blocks, two
    # stride-2 transposed convs, 9x9 conv to RGB + tanh)
    ngf: int = 32
    n_res: int = 5
    outer_kernel: int = 9
    norm: str = "batch"                   # "batch" or "instance"
    skip: bool = False                    # T(x) = x + T's output (quick preset only: starts T at the identity)
    # D (4x4 stride-2 convs doubling from ndf, LeakyReLU 0.2, a linear logit)
    ndf: int = 64
    d_layers: int = 4
    # f: the 2-layer 3x3 denoising network
    f_width: int = 64
    # losses, eq. (1)-(3)
    gan: str = "bce"
    lambda_attr: float = 1.0
    lambda_id: float = 1.0
    lambda_pr: float = 1.0
    id_network: str = "auto"              # auto | identity_judge | vgg16 | discriminator (DIAT-A)
    id_layers: tuple[str, ...] = ()       # () = the network's default (see faceedu.train.diat)
    id_weights: tuple[float, ...] = ()
    # optimisation (Adam); DIAT-A trains D more slowly (D's features are T's identity loss)
    lr_t: float = 2e-4
    lr_d: float = 2e-4
    lr_d_diat_a: float = 2e-5
    beta1: float = 0.5
    batch_size: int = 32
    # schedule: pre-training of T (reconstruction), D (classifier), g and f, then the DIAT steps
    pretrain_g_steps: int = 10_000         # g (and, without `skip`, T: the paper initialises T as g)
    pretrain_t_steps: int = 0              # T's own reconstruction steps (with `skip`)
    pretrain_d_steps: int = 5_000
    pretrain_f_steps: int = 2_000
    steps: int = 100_000
    lr_decay_share: float = 0.0           # > 0: over this last share of `steps` both learning rates fall linearly
                                          # to 0 (CycleGAN's 'linear' policy; quick only: the paper gives none)
    # enhancement
    blur_sigma: float = 3.0               # global: Gaussian sigma in pixels at 128x128 (scaled with the size)
    hull_grow: float = -1.0               # local: grow the hull by this share of the side (-1: HULL_GROW's)
    feather: float = 1.0                  # local: soft edge of the mask (Gaussian sigma in pixels at 64x64)
    # the enhancement inside training (quick preset): D and T's losses see the enhanced output (hull
    # composition / global detail transfer) instead of T's raw output -- see `Enhanced`
    train_enhanced: bool = False
    hflip: bool = True
    bf16: bool = False
    threads: int = 0                      # CPU threads while training; 0: torch's default (all cores)

    def __post_init__(self) -> None:
        self.id_layers, self.id_weights = tuple(self.id_layers), tuple(float(w) for w in self.id_weights)
        enhancement_kind(self.attr)
        assert self.target in (0, 1), "target is 1 (add the attribute) or 0 (remove it)"
        assert self.norm in ("batch", "instance")
        assert self.image_size % 4 == 0, "T halves the side twice"
        assert len(self.id_weights) in (0, len(self.id_layers)), "give one weight per identity layer"
        assert self.id_network in ("auto", "identity_judge", "vgg16", "discriminator")
        assert 0 <= self.lr_decay_share <= 1, "lr_decay_share is a share of the DIAT steps, in [0, 1]"

    @property
    def diat_a(self) -> bool:
        return self.id_network == "discriminator"

    @property
    def enhancement(self) -> str:
        return enhancement_kind(self.attr)

    def hull_pixels(self, size: int) -> tuple[float, float]:
        """(grow, feather) of the local mask in pixels at image side `size`."""
        share = HULL_GROW.get(self.attr, 0.0) if self.hull_grow < 0 else self.hull_grow
        return share * size, self.feather * size / 64

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "DIATConfig":
        known = {f.name for f in fields(cls)}
        tuples = ("id_layers", "id_weights")
        return cls(**{k: (tuple(v) if k in tuples else v) for k, v in values.items() if k in known})


PRESETS: dict[str, DIATConfig] = {
    # The paper's setting: 128x128 faces, Johnson's transform network at 32-64-128 channels, VGG-Face-like
    # identity features (a VGG16 here), pre-training then adversarial training.
    "full": DIATConfig(),
    # CPU seconds on 64x64 SynthFaces (set in faceedu.train.diat.QUICK: the same networks, narrower).
    # train_enhanced: D and T's losses see the enhanced output (the hull composition for mouth and glasses).
    # Trained on T's raw output, D judged hair and background that the composition then throws away:
    # glasses removal 29 % by the judge, 60 % trained through the composition (docs/diat.md lists every
    # configuration measured: lambda_id 0.1/0.2, D's lr 2e-4, D pre-trained 1,000 steps, LSGAN, R1, an average
    # of T). 1,200 steps, the last 600 with both learning rates falling linearly to 0: at a constant rate the
    # transfer rate swings by 30-60 points every few hundred steps (docs/diat.md). One CPU thread on every
    # machine: the figures the docs and tests quote are the 1-thread trajectory.
    "quick": DIATConfig(image_size=64, ngf=8, ndf=16, d_layers=4, f_width=32, batch_size=16, skip=True,
                        lr_t=1e-3, lr_d=1e-3, lr_d_diat_a=2e-4, lambda_id=0.5, pretrain_g_steps=100,
                        pretrain_t_steps=20, pretrain_d_steps=100, pretrain_f_steps=100, steps=1200,
                        lr_decay_share=0.5, blur_sigma=3.0, train_enhanced=True, threads=1),
}


def preset(name: str, **overrides) -> DIATConfig:
    """A copy of a named preset with some fields changed, e.g. ``preset("quick", attr="Eyeglasses", target=0)``."""
    if name not in PRESETS:
        raise KeyError(f"no DIAT preset {name!r}; choose one of {', '.join(PRESETS)}")
    if "attr" in overrides and "target" not in overrides:
        overrides["target"] = DEFAULT_TARGETS.get(overrides["attr"], 1)
    return replace(PRESETS[name], **overrides)


# --- building blocks ------------------------------------------------------------------------------------------


def norm_layer(kind: str, channels: int) -> nn.Module:
    return nn.BatchNorm2d(channels) if kind == "batch" else nn.InstanceNorm2d(channels, affine=True)


def conv_block(c_in: int, c_out: int, kernel: int, stride: int = 1, norm: str = "batch", relu: bool = True) -> nn.Sequential:
    """Reflection-padded conv + norm (+ ReLU): the side is kept (stride 1) or halved (stride 2)."""
    layers: list[nn.Module] = [nn.ReflectionPad2d(kernel // 2), nn.Conv2d(c_in, c_out, kernel, stride),
                               norm_layer(norm, c_out)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class ResidualBlock(nn.Module):
    """Two 3x3 convs with a skip: ``x + norm(conv(relu(norm(conv(x)))))`` (He et al. 2016, as Johnson et al.
    use them in the transform network). Shape kept: (B, C, H, W) -> (B, C, H, W)."""

    def __init__(self, channels: int, norm: str = "batch"):
        super().__init__()
        self.body = nn.Sequential(conv_block(channels, channels, 3, 1, norm, relu=True),
                                  conv_block(channels, channels, 3, 1, norm, relu=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def up_block(c_in: int, c_out: int, norm: str = "batch") -> nn.Sequential:
    """Transposed 3x3 conv, stride 2 (the side doubles) + norm + ReLU."""
    return nn.Sequential(nn.ConvTranspose2d(c_in, c_out, 3, 2, 1, output_padding=1), norm_layer(norm, c_out),
                         nn.ReLU(inplace=True))


# --- the networks ------------------------------------------------------------------------------------------------


class TransformNetwork(nn.Module):
    """T: 3 convs (k x k, then two 3x3 stride 2), 5 residual blocks of 2 convs, 2 transposed convs, 1 conv
    (16 conv layers, as the paper). (B, 3, S, S) in [-1, 1] -> (B, 3, S, S) in [-1, 1]:
    S -> S/2 -> S/4 (n_res blocks at S/4 with 4*ngf channels) -> S/2 -> S.
    With `config.skip` (the quick preset) the last conv's output is added to x (clamped to [-1, 1]) and
    starts at zero, so T starts as the identity: CPU minutes are too few to pre-train 16 layers into one."""

    def __init__(self, config: DIATConfig):
        super().__init__()
        c, k, norm = config.ngf, config.outer_kernel, config.norm
        self.skip = config.skip
        self.down = nn.Sequential(conv_block(3, c, k, 1, norm),              # (B, c, S, S)
                                  conv_block(c, 2 * c, 3, 2, norm),          # (B, 2c, S/2, S/2)
                                  conv_block(2 * c, 4 * c, 3, 2, norm))      # (B, 4c, S/4, S/4)
        self.res = nn.Sequential(*(ResidualBlock(4 * c, norm) for _ in range(config.n_res)))
        self.up = nn.Sequential(up_block(4 * c, 2 * c, norm), up_block(2 * c, c, norm))  # (B, c, S, S)
        self.out = nn.Sequential(nn.ReflectionPad2d(k // 2), nn.Conv2d(c, 3, k), nn.Identity() if self.skip else nn.Tanh())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.out(self.up(self.res(self.down(x))))
        return (x + y).clamp(-1, 1) if self.skip else y


class ReconstructionNetwork(TransformNetwork):
    """g: T's architecture (always without the skip) trained to rebuild its input (x -> x). Its outputs
    g(x) = x + n carry the artefacts n that such a network makes (checkerboards, colour noise); they are the
    noisy examples of the denoising network f (eq. 3). The paper starts T from this network."""

    def __init__(self, config: DIATConfig):
        super().__init__(replace(config, skip=False))


class AttributeDiscriminator(nn.Module):
    """D: d_layers 4x4 stride-2 convs (ndf doubling; LeakyReLU 0.2; BatchNorm after the first) and a linear
    logit. Pre-trained as an attribute classifier (logit > 0: the face has the attribute), then trained as
    the GAN's discriminator (real faces with the target attribute vs T's outputs).
    (B, 3, S, S) in [-1, 1] -> logits (B,); `feature_maps` gives each conv layer's output (DIAT-A's phi)."""

    def __init__(self, config: DIATConfig):
        super().__init__()
        layers, c_in, c_out = [], 3, config.ndf
        for i in range(config.d_layers):
            block: list[nn.Module] = [nn.Conv2d(c_in, c_out, 4, 2, 1)]
            if i > 0:
                block.append(nn.BatchNorm2d(c_out))
            block.append(nn.LeakyReLU(0.2, inplace=True))
            layers.append(nn.Sequential(*block))
            c_in, c_out = c_out, min(2 * c_out, 8 * config.ndf)
        self.convs = nn.ModuleList(layers)
        side = config.image_size // 2 ** config.d_layers
        self.logit = nn.Linear(c_in * side * side, 1)

    def feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every conv layer's output: (B, ndf, S/2, S/2), (B, 2 ndf, S/4, S/4), ..."""
        maps = []
        for conv in self.convs:
            x = conv(x)
            maps.append(x)
        return maps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logit(self.feature_maps(x)[-1].flatten(1)).squeeze(1)


class DenoisingNetwork(nn.Module):
    """f: two 3x3 convs (3 -> width, ReLU, width -> 3) that predict the artefact n of a noisy image y = x + n.
    (B, 3, S, S) -> (B, 3, S, S), the predicted n (not the clean image)."""

    def __init__(self, width: int = 64):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1), nn.ReLU(inplace=True), nn.Conv2d(width, 3, 3, 1, 1))

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.net(y)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def init_weights(module: nn.Module) -> None:
    """N(0, 0.02) conv weights, BatchNorm gamma N(1, 0.02) (the DCGAN init the course's GANs share); a
    skip-connected T's last conv at zero (T starts as the identity)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d)) and m.weight is not None:
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)
    if isinstance(module, TransformNetwork) and module.skip:
        nn.init.zeros_(module.out[1].weight)
        nn.init.zeros_(module.out[1].bias)


# --- the losses ---------------------------------------------------------------------------------------------------


def identity_loss(features_of_input: Sequence[torch.Tensor], features_of_output: Sequence[torch.Tensor],
                  weights: Sequence[float]) -> torch.Tensor:
    """Eq. (2): sum over layers l of w_l * the mean squared difference between phi_l(x) and phi_l(T(x)).
    Each argument lists one (B, C_l, H_l, W_l) map per layer, in the same order as `weights`. The input's
    features are targets (no gradient flows into them); the output's carry T's gradient."""
    assert len(features_of_input) == len(features_of_output) == len(weights), \
        "one feature map of the input, one of the output and one weight per layer"
    total = features_of_output[0].new_zeros(())
    for a, b, w in zip(features_of_input, features_of_output, weights):
        total = total + float(w) * ((b.float() - a.detach().float()) ** 2).mean()
    return total


def attribute_discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor, kind: str = "bce") -> torch.Tensor:
    """D's loss: real faces that have the target attribute -> real, transformed faces (detached) -> fake."""
    return discriminator_loss(real_logits, fake_logits, kind)


def attribute_loss(fake_logits: torch.Tensor, kind: str = "bce") -> torch.Tensor:
    """l_attr, T's adversarial loss: D should take T(x) for a real face with the attribute."""
    return generator_loss(fake_logits, kind)


def classifier_loss(logits: torch.Tensor, has_attribute: torch.Tensor) -> torch.Tensor:
    """D's pre-training as an attribute classifier: BCE of its logit against the 0/1 label."""
    return F.binary_cross_entropy_with_logits(logits.float(), has_attribute.float())


def denoiser_loss(f: nn.Module, noisy: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """Eq. (3), left: f learns to predict the artefact n = noisy - clean from the noisy image g(x)."""
    return ((f(noisy) - (noisy - clean).detach()) ** 2).mean()


def perceptual_regulariser(f: nn.Module, y: torch.Tensor) -> torch.Tensor:
    """Eq. (3), right: l_pr(y) = mean f(y)^2, the artefact the denoiser finds in T's output y."""
    return (f(y).float() ** 2).mean()


# --- enhancement: local masks and global detail transfer -----------------------------------------------------------


def _convex_hull(points: np.ndarray) -> np.ndarray:
    """Andrew's monotone chain: the hull of (n, 2) points, counter-clockwise (y down), without repeats."""
    pts = sorted(set(map(tuple, np.round(points.astype(np.float64), 6))))
    if len(pts) < 3:
        return np.asarray(pts)

    def cross(o, a, b):
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower: list = []
    for p in pts:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    upper: list = []
    for p in reversed(pts):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    return np.asarray(lower[:-1] + upper[:-1])


def _fill_convex(hull: np.ndarray, grid: tuple[torch.Tensor, torch.Tensor], grow: float = 0.0) -> torch.Tensor:
    """(size, size) booleans: the pixels (i, j) of `grid` (float64 (ys, xs) from `torch.meshgrid`, centred at
    x = j, y = i as the landmarks are) within `grow` pixels of the convex polygon `hull` (its vertices in the
    monotone chain's order), edges pushed out."""
    ys, xs = grid
    inside = torch.ones(ys.shape, dtype=torch.bool)
    if len(hull) < 3:
        return ~inside
    h = torch.from_numpy(hull.astype(np.float64))
    for a, b in zip(h, torch.roll(h, -1, 0)):
        inside &= (b[0] - a[0]) * (ys - a[1]) - (b[1] - a[1]) * (xs - a[0]) >= -grow * torch.linalg.norm(b - a)
    return inside


def hull_mask(landmarks68: torch.Tensor, indices: Sequence[int], size: int, grow: float = 0.0,
              feather: float = 0.0) -> torch.Tensor:
    """The convex hull of the landmarks `indices` (e.g. `MOUTH`) filled as a mask.

    landmarks68: (68, 2) or (B, 68, 2) (x, y) in pixel coordinates of the size x size image
    (or (B, 136) as x0 y0 x1 y1 ...). `grow` pushes every edge of the hull out by that many pixels;
    `feather` > 0 softens the edge outwards (Gaussian sigma in pixels): the hull itself stays at 1.
    Returns (B, 1, size, size) floats in [0, 1] ((1, 1, size, size) for one face)."""
    lm = torch.as_tensor(landmarks68, dtype=torch.float64).detach().cpu()
    if lm.dim() == 2 and lm.shape[-1] == 136:
        lm = lm.view(-1, 68, 2)
    if lm.dim() == 2:
        lm = lm.unsqueeze(0)
    assert lm.shape[1:] == (68, 2), f"expected (B, 68, 2) landmarks, got {tuple(lm.shape)}"
    grid = torch.meshgrid(torch.arange(size, dtype=torch.float64), torch.arange(size, dtype=torch.float64),
                          indexing="ij")
    mask = torch.empty(len(lm), 1, size, size)               # filled in place: one face's temporaries at a time
    for i, face in enumerate(lm[:, list(indices)].numpy()):
        mask[i, 0] = _fill_convex(_convex_hull(face), grid, grow)
    if feather > 0:
        mask = torch.maximum(mask, gaussian_blur(mask, feather)).clamp(0, 1)
    return mask


def compose(input: torch.Tensor, output: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked composition (local enhancement): the output inside the mask, the input outside,
    ``mask * output + (1 - mask) * input``. Outside the mask the result *is* the input."""
    return mask * output + (1 - mask) * input


def gaussian_kernel(sigma: float, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    radius = max(1, int(round(3 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=dtype)
    k = torch.exp(-x ** 2 / (2 * sigma ** 2))
    return k / k.sum()


def gaussian_blur(images: torch.Tensor, sigma: float, chunk: int = 512) -> torch.Tensor:
    """Separable Gaussian blur of (B, C, H, W) with reflected borders; shape kept. `chunk` images at a time:
    the convolutions' buffers grow with the batch (about 0.3 MB per 64x64 image), the values do not."""
    k = gaussian_kernel(sigma, images.dtype).to(images.device)
    c, r = images.shape[1], len(k) // 2
    rows, columns = k.view(1, 1, 1, -1).expand(c, 1, 1, -1), k.view(1, 1, -1, 1).expand(c, 1, -1, 1)

    def blur(x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(F.pad(x, (r, r, r, r), mode="reflect"), rows, groups=c)
        return F.conv2d(x, columns, groups=c)

    return blur(images) if len(images) <= chunk else torch.cat([blur(x) for x in images.split(chunk)])


def global_enhance(input: torch.Tensor, output: torch.Tensor, sigma: float) -> torch.Tensor:
    """Global enhancement: the low frequencies of T's output (where gender and age live) and the high
    frequencies of the input (its sharp identity details): ``blur(output) + input - blur(input)``."""
    return gaussian_blur(output, sigma) + input - gaussian_blur(input, sigma)


def enhance(input: torch.Tensor, output: torch.Tensor, config: DIATConfig,
            landmarks68: torch.Tensor | None = None) -> torch.Tensor:
    """The enhancement stage for `config.attr`: hull-masked composition (local, needs the landmarks) or
    global detail transfer. Any range; same shape as `input`."""
    if config.enhancement == "local":
        if landmarks68 is None:
            raise ValueError(f"{config.attr} is a local attribute: its enhancement needs 68 landmarks per face.")
        mask = edit_mask(config, landmarks68, input.shape[-1], len(input)).to(input.device, input.dtype)
        return compose(input, output, mask)
    return global_enhance(input, output, config.blur_sigma * input.shape[-1] / 128)


class Enhanced(nn.Module):
    """T followed by the enhancement stage, as one network to train through (`config.train_enhanced`): with a
    local attribute ``compose(x, T(x), mask)`` for the batch's edit masks (B, 1, S, S), with a global one
    ``blur(T(x)) + x - blur(x)``. Images in [-1, 1]. The paper applies the enhancement after training; then D
    is free to judge T(x) on what lies outside the region the enhancement keeps (hair, background), and T to
    answer there, so that what T learns is thrown away by the composition. Trained through it, D and T meet
    only inside the region. No parameters of its own: T's optimiser trains it."""

    def __init__(self, T: nn.Module, config: DIATConfig, mask: torch.Tensor | None = None):
        super().__init__()
        self.T, self.config, self.mask = T, config, mask
        if config.enhancement == "local":
            assert mask is not None, f"{config.attr} is local: training through its enhancement needs the edit masks"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.T(x)
        if self.config.enhancement == "local":
            return compose(x, y, self.mask.to(y.dtype))
        return global_enhance(x, y, self.config.blur_sigma * x.shape[-1] / 128).clamp(-1, 1)


def edit_mask(config: DIATConfig, landmarks68: torch.Tensor | None, size: int, count: int) -> torch.Tensor:
    """Where the enhanced output may differ from the input: the hull mask (local) or everywhere (global)."""
    if config.enhancement == "local" and landmarks68 is not None:
        return hull_mask(landmarks68, LOCAL_ATTRIBUTES[config.attr], size, *config.hull_pixels(size))
    return torch.ones(count, 1, size, size)


# --- the steps ------------------------------------------------------------------------------------------------------


def pretrain_transform_step(T: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, phi=None,
                            weights: Sequence[float] = ()) -> dict[str, torch.Tensor]:
    """Pre-training T (and so g) as a reconstruction network: MSE(T(x), x) (+ the identity loss of eq. 2
    between x and T(x) when a feature network `phi` is given)."""
    y = T(x)
    rec = ((y.float() - x.float()) ** 2).mean()
    loss = rec
    if phi is not None:
        with torch.no_grad():
            fx = phi(x)
        loss = loss + identity_loss(fx, phi(y), weights)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return {"rec": rec.detach(), "loss": loss.detach()}


def pretrain_discriminator_step(D: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor,
                                has_attribute: torch.Tensor) -> dict[str, torch.Tensor]:
    """Pre-training D as an attribute classifier on real faces (label 1: the face has the target attribute)."""
    logits = D(x)
    loss = classifier_loss(logits, has_attribute)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    accuracy = ((logits.detach() > 0).float() == has_attribute.float()).float().mean()
    return {"cls": loss.detach(), "cls_acc": accuracy}


def denoiser_step(f: nn.Module, opt: torch.optim.Optimizer, g: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Training f on the reconstruction network's outputs: g(x) = x + n, f(g(x)) -> n (eq. 3, left)."""
    with torch.no_grad():
        noisy = g(x)
    loss = denoiser_loss(f, noisy, x)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return {"denoise": loss.detach()}


def diat_step(T: nn.Module, D: nn.Module, f: nn.Module | None, phi, opt_t: torch.optim.Optimizer,
              opt_d: torch.optim.Optimizer, source: torch.Tensor, real: torch.Tensor, config: DIATConfig,
              weights: Sequence[float]) -> dict[str, torch.Tensor]:
    """One DIAT iteration on faces in [-1, 1]: `source` lacks the target state, `real` has it.

    1. D: real faces with the target attribute -> real, y = T(source) (detached) -> fake.
    2. T: eq. (1), lambda_attr * l_attr + lambda_id * l_id(source, T(source)) + lambda_pr * f(T(source))^2.
       Only T's optimiser steps: D and f are frozen while T's loss passes through them (no weight gradients).
    `phi(images)` returns the identity network's feature maps (a list, one per layer of `weights`); for
    DIAT-A it is D's `feature_maps`. `f` None (or lambda_pr 0) leaves the perceptual regulariser out."""
    y = T(source)
    # 1. the attribute discriminator, on T's output cut from T's graph
    d_loss = attribute_discriminator_loss(D(real), D(y.detach()), config.gan)
    opt_d.zero_grad(set_to_none=True)
    d_loss.backward()
    opt_d.step()
    # 2. the transform network, judged by the updated D (frozen, with f: their weights get no gradient here)
    with frozen(D, f):
        adv = attribute_loss(D(y), config.gan)
        with torch.no_grad():
            fx = phi(source)
        idl = identity_loss(fx, phi(y), weights) if config.lambda_id > 0 else y.new_zeros(())
        pr = perceptual_regulariser(f, y) if (f is not None and config.lambda_pr > 0) else y.new_zeros(())
        loss = config.lambda_attr * adv + config.lambda_id * idl + config.lambda_pr * pr
        opt_t.zero_grad(set_to_none=True)
        loss.backward()
    opt_t.step()
    opt_d.zero_grad(set_to_none=True)      # no gradient of D's is left behind
    return {"d": d_loss.detach(), "t": loss.detach(), "attr": adv.detach(), "id": idl.detach(), "pr": pr.detach()}


# --- using a trained model ------------------------------------------------------------------------------------------


@torch.no_grad()
def transform(T: nn.Module, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """T alone (no enhancement) on faces (N, 3, S, S) in [0, 1] -> [0, 1]. Eval mode, restored afterwards."""
    was_training = T.training
    T.eval()
    device = next(T.parameters()).device
    try:
        out = [to_image(T(to_model(x).to(device))).cpu() for x in images.split(batch_size)]
    finally:
        T.train(was_training)
    return torch.cat(out)


@torch.no_grad()
def transfer(T: nn.Module, images: torch.Tensor, config: DIATConfig, landmarks68: torch.Tensor | None = None,
             batch_size: int = 256) -> torch.Tensor:
    """DIAT's result: T, then the enhancement stage. Faces (N, 3, S, S) in [0, 1] (with their 68 landmarks
    (N, 68, 2) for a local attribute) -> (N, 3, S, S) in [0, 1]."""
    raw = transform(T, images, batch_size)
    return enhance(images.float(), raw, config, landmarks68).clamp(0, 1)


__all__ = ["MOUTH", "EYE_REGION", "LOCAL_ATTRIBUTES", "HULL_GROW", "GLOBAL_ATTRIBUTES", "ATTRIBUTES", "DEFAULT_TARGETS",
           "enhancement_kind", "DIATConfig", "PRESETS", "preset", "ResidualBlock", "TransformNetwork",
           "ReconstructionNetwork", "AttributeDiscriminator", "DenoisingNetwork", "count_parameters", "init_weights",
           "identity_loss", "attribute_discriminator_loss", "attribute_loss", "classifier_loss", "denoiser_loss",
           "perceptual_regulariser", "hull_mask", "compose", "Enhanced", "gaussian_blur", "global_enhance", "enhance", "edit_mask",
           "pretrain_transform_step", "pretrain_discriminator_step", "denoiser_step", "diat_step", "to_model",
           "to_image", "transform", "transfer"]
