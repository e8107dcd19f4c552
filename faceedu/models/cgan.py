"""The conditional DCGAN of Fedotova, Gospodinov & Khramov, "Face generation with conditional GANs"
(2018; code ga-gospodinov/FaceGeneration), built on DCGAN (Radford et al. 2016) and the conditional GAN
(Mirza & Osindero 2014), with a modern alternative beside it: a projection discriminator (Miyato &
Koyama 2018) with spectral normalisation (Miyato et al. 2018) and the hinge loss (Lim & Ye 2017).

A generator G maps noise z ~ N(0, I) and an attribute vector y in {0, 1}^k to a face; a discriminator D
says whether a face is real *and matches y*. They play

    min_G max_D  E_x[log D(x, y)] + E_z[log(1 - D(G(z, y), y))]                    (Mirza & Osindero, eq. 2)

D minimises -log D(x, y) - log(1 - D(G(z, y), y)) on fakes detached from G; G minimises the
non-saturating -log D(G(z, y), y) (Goodfellow et al. 2014, sec. 3). One-sided label smoothing puts 0.9
instead of 1 on real faces (Salimans et al. 2016).

The seed's networks at 64x64 (the `full` preset builds exactly these):

    G:  z (100) --ConvT 4x4--> 512 x 4 x 4 ┐
        y (k)   --ConvT 4x4--> 512 x 4 x 4 ┴ concat 1024 x 4 x 4 -> 512 x 8 -> 256 x 16 -> 128 x 32 -> 3 x 64, tanh
        (transposed conv 4x4 stride 2, BatchNorm, ReLU; no BatchNorm on the output)
    D:  image (3 x 64 x 64)       --conv--> 64 x 32 x 32 ┐
        y as k constant 64x64 maps --conv--> 64 x 32 x 32 ┴ concat 128 -> 256 x 16 -> 512 x 8 -> 1024 x 4 -> 1
        (conv 4x4 stride 2, BatchNorm except on the first layer, LeakyReLU 0.2; the last conv 4x4 is the logit)

Initialisation as DCGAN: conv weights N(0, 0.02), BatchNorm gamma N(1, 0.02) and beta 0. Adam 2e-4,
beta1 0.5. Convolutions carry no bias where BatchNorm follows (pytorch/examples' DCGAN does the same).

The projection discriminator reads only the image: phi(x) is the same conv stack with spectral norm and
no BatchNorm, summed over space, and the logit is

    D(x, y) = w . phi(x) + sum_i  e_i[y_i] . phi(x)                                  (Miyato & Koyama, eq. 3)

with one learned embedding e_i[0], e_i[1] per attribute: the label enters as an inner product with the
features rather than as extra input maps.

An auxiliary attribute classifier C (AC-GAN, Odena, Olah & Shlens 2017, eq. 2-3; not in the seed, off in
`full`) reads only the image: D's conv stack without the label branch, ending in k logits. It learns the
attributes of real faces, and G's loss gains w * BCE(C(G(z, y)), y), so that G must draw faces a classifier of
real faces reads as y. AC-GAN also trains C on the fakes; ours, like the classifier discriminator of Fader
Networks (lesson 05), learns from real faces only, which we measured better (docs/cgan.md).
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, fields, replace

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.parametrizations import spectral_norm

from faceedu import losses as L

# --- configuration ------------------------------------------------------------------------------------


@dataclass
class CGANConfig:
    """Networks, loss and optimisation of one conditional GAN; presets below. Defaults = the seed (`full`)."""

    image_size: int = 64                       # the seed trains at 64x64 (4 -> 8 -> 16 -> 32 -> 64)
    attrs: tuple[str, ...] = ("Blond_Hair", "Male")   # the seed's two attributes; any CelebA names
    z_dim: int = 100                           # DCGAN's nz
    g_project: int = 512                       # z and y are each projected to this many channels at 4x4
    g_widths: tuple[int, ...] = (512, 256, 128)   # after the 2 * g_project concat: one ConvT x2 each, then RGB
    d_first: int = 64                          # the image and the label maps each get this many channels
    d_widths: tuple[int, ...] = (256, 512, 1024)  # after the 2 * d_first concat: one conv /2 each, then the logit
    discriminator: str = "dcgan"               # "dcgan": labels as input maps (seed); "projection": SN + projection
    loss: str = "bce"                          # bce (seed) | hinge (with the projection D) | lsgan
    real_label: float = 1.0                    # < 1: one-sided label smoothing (Salimans et al. 2016)
    mismatch: float = 0.0                      # > 0: a matching-aware D (Reed et al. 2016, GAN-CLS): real faces
                                               # with one attribute flipped are negatives of this weight, the
                                               # fakes get 1 - mismatch (Reed: 0.5); 0 = the seed
    lr_g: float = 2e-4                         # Adam (DCGAN)
    lr_d: float = 2e-4
    beta1: float = 0.5                         # DCGAN: 0.9 made training oscillate
    beta2: float = 0.999
    batch_size: int = 64                       # the seed uses 64 and 128
    balance: bool = False                      # resample the real faces to equal shares of the 2^k combinations
    bf16: bool = False                         # bfloat16 autocast where native (losses stay float32)
    channels_last: bool = False                # NHWC memory: faster convolutions on CPUs (oneDNN)
    g_ema: float = 0.0                         # > 0: also keep an exponential moving average of G's weights
                                               # with this decay and draw faces with it (not in the seed)
    aux_classifier: float = 0.0                # > 0: an auxiliary attribute classifier on real faces, and G's
                                               # loss gains this weight times its BCE on the fakes (AC-GAN;
                                               # not in the seed)
    epochs: float = 25.0                       # passes over the training split
    epoch_images: int = 162_770                # CelebA's training split

    def __post_init__(self) -> None:
        self.attrs, self.g_widths, self.d_widths = tuple(self.attrs), tuple(self.g_widths), tuple(self.d_widths)
        if self.discriminator not in ("dcgan", "projection"):
            raise ValueError(f"discriminator must be 'dcgan' or 'projection', got {self.discriminator!r}")
        if self.loss not in L.GAN_LOSSES:
            raise ValueError(f"loss must be one of {', '.join(L.GAN_LOSSES)}, got {self.loss!r}")
        if not self.attrs:
            raise ValueError("a conditional GAN needs at least one attribute")
        if self.aux_classifier < 0:
            raise ValueError(f"aux_classifier is the weight of G's classification loss, >= 0; "
                             f"got {self.aux_classifier}")
        if not 0.0 <= self.mismatch < 1.0:
            raise ValueError(f"mismatch is the weight of the wrong-label negatives in [0, 1), got {self.mismatch}")
        if self.image_size != 4 * 2 ** (len(self.g_widths) + 1) or self.image_size != 4 * 2 ** (len(self.d_widths) + 1):
            raise ValueError(f"image_size {self.image_size} needs image_size = 4 * 2^(len(widths) + 1); "
                             f"g_widths has {len(self.g_widths)} stages, d_widths {len(self.d_widths)}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "CGANConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


PRESETS: dict[str, CGANConfig] = {
    # The seed at 64x64: G 1024 -> 512 -> 256 -> 128 -> 3, D 128 -> 256 -> 512 -> 1024 -> 1, BCE, batch 64.
    "full": CGANConfig(),
    # CPU minutes on 64x64 SynthFaces: the same layers at an eighth of the width, one-sided smoothing,
    # real faces resampled to equal shares of the combinations (the rare blond man is 6% of the data), bf16
    # where native, and faces drawn by a moving average of G's weights (decay 0.999; not in the seed, see
    # docs/cgan.md), with an auxiliary attribute classifier on real faces (AC-GAN's, weight 1; not in the seed:
    # it lifts the worst combination, docs/cgan.md). 2,700 steps of 64 (7.2 epochs of the 24,000 training faces):
    # about 3.5 minutes on 2 idle cores.
    "quick": CGANConfig(g_project=64, g_widths=(64, 32, 16), d_first=16, d_widths=(32, 64, 128), real_label=0.9,
                        balance=True, batch_size=64, epochs=7.2, epoch_images=24_000, bf16=True, channels_last=True,
                        g_ema=0.999, aux_classifier=1.0),
}


def preset(name: str, **overrides) -> CGANConfig:
    """A copy of a named preset with some fields changed, e.g. ``preset("quick", discriminator="projection")``."""
    if name not in PRESETS:
        raise KeyError(f"no cGAN preset {name!r}; choose one of {', '.join(PRESETS)}")
    config = replace(PRESETS[name], **overrides)
    if overrides.get("discriminator") == "projection" and "loss" not in overrides:
        config = replace(config, loss="hinge", real_label=1.0)    # the projection D's own loss
    return config


# --- building blocks ----------------------------------------------------------------------------------


def up_block(c_in: int, c_out: int) -> nn.Sequential:
    """Transposed conv 4x4 stride 2 (side n -> 2n) + BatchNorm + ReLU: DCGAN's generator block."""
    return nn.Sequential(nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(True))


def down_block(c_in: int, c_out: int, batchnorm: bool = True) -> nn.Sequential:
    """Conv 4x4 stride 2 (side n -> n/2) + BatchNorm (not on the first layer) + LeakyReLU 0.2."""
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 4, 2, 1, bias=not batchnorm)]
    if batchnorm:
        layers.append(nn.BatchNorm2d(c_out))
    return nn.Sequential(*layers, nn.LeakyReLU(0.2, True))


def down_stack(widths: tuple[int, ...]) -> nn.Sequential:
    """One `down_block` (with BatchNorm) per consecutive pair of widths: D's body, and the classifier's."""
    return nn.Sequential(*[down_block(a, b) for a, b in zip(widths[:-1], widths[1:])])


def label_maps(y: torch.Tensor, size: int) -> torch.Tensor:
    """(B, k) attributes -> (B, k, size, size): attribute i as a constant map of value y_i."""
    return y[:, :, None, None].expand(-1, -1, size, size)


def dcgan_init(module: nn.Module) -> None:
    """DCGAN's initialisation, applied with `model.apply`: conv weights N(0, 0.02), BatchNorm gamma
    N(1, 0.02), beta 0 (Radford et al. 2016, sec. 4)."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, nn.Embedding)):
        weight = getattr(module, "parametrizations", None)
        target = weight.weight.original if weight is not None and hasattr(weight, "weight") else module.weight
        nn.init.normal_(target, 0.0, 0.02)
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def combinations(k: int) -> torch.Tensor:
    """(2^k, k) every 0/1 attribute combination, in binary counting order."""
    return torch.tensor(list(itertools.product((0.0, 1.0), repeat=k)))


# --- the networks -------------------------------------------------------------------------------------


class Generator(nn.Module):
    """G(z, y): z (B, z_dim) and y (B, k) in {0, 1} -> faces (B, 3, S, S) in [-1, 1]."""

    def __init__(self, config: CGANConfig):
        super().__init__()
        p, k = config.g_project, len(config.attrs)
        self.z_dim = config.z_dim
        # each input is a 1x1 "image" whose transposed conv 4x4 is a dense projection to 4x4
        self.project_z = nn.Sequential(nn.ConvTranspose2d(config.z_dim, p, 4, 1, 0, bias=False), nn.BatchNorm2d(p), nn.ReLU(True))
        self.project_y = nn.Sequential(nn.ConvTranspose2d(k, p, 4, 1, 0, bias=False), nn.BatchNorm2d(p), nn.ReLU(True))
        widths = (2 * p, *config.g_widths)
        self.body = nn.Sequential(*[up_block(a, b) for a, b in zip(widths[:-1], widths[1:])])
        self.to_rgb = nn.Sequential(nn.ConvTranspose2d(widths[-1], 3, 4, 2, 1, bias=False), nn.Tanh())
        self.apply(dcgan_init)

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = torch.cat([self.project_z(z[:, :, None, None]),           # (B, p, 4, 4)
                       self.project_y(y[:, :, None, None].to(z.dtype))], dim=1)  # (B, 2p, 4, 4)
        return self.to_rgb(self.body(h))                               # (B, 3, S, S)


class DCGANDiscriminator(nn.Module):
    """The seed's D(x, y): logits (B,) for faces (B, 3, S, S) in [-1, 1] and attributes (B, k)."""

    def __init__(self, config: CGANConfig):
        super().__init__()
        k, f = len(config.attrs), config.d_first
        self.image_in = down_block(3, f, batchnorm=False)             # no BatchNorm on the first layer (DCGAN)
        self.label_in = down_block(k, f, batchnorm=False)
        widths = (2 * f, *config.d_widths)
        self.body = down_stack(widths)
        self.logit = nn.Conv2d(widths[-1], 1, 4, 1, 0, bias=False)    # 4x4 -> 1x1
        self.apply(dcgan_init)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        maps = label_maps(y.to(x.dtype), x.shape[-1])                 # (B, k, S, S)
        h = torch.cat([self.image_in(x), self.label_in(maps)], dim=1)  # (B, 2f, S/2, S/2)
        return self.logit(self.body(h)).flatten()                      # (B,)


class ProjectionDiscriminator(nn.Module):
    """D(x, y) = w . phi(x) + sum_i e_i[y_i] . phi(x), phi a conv stack with spectral norm (no BatchNorm)
    summed over space. Same widths as the seed's D, where the image branch takes both halves."""

    def __init__(self, config: CGANConfig):
        super().__init__()
        k = len(config.attrs)
        widths = (3, 2 * config.d_first, *config.d_widths)
        self.body = nn.Sequential(*[nn.Sequential(spectral_norm(nn.Conv2d(a, b, 4, 2, 1)), nn.LeakyReLU(0.2, True))
                                    for a, b in zip(widths[:-1], widths[1:])])
        self.linear = spectral_norm(nn.Linear(widths[-1], 1))
        self.embed = spectral_norm(nn.Embedding(2 * k, widths[-1]))   # rows 2i, 2i+1: attribute i off, on
        self.register_buffer("offsets", 2 * torch.arange(k), persistent=False)
        self.apply(dcgan_init)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        phi = self.body(x).sum(dim=(2, 3))                                # (B, C)
        e = self.embed(self.offsets + y.round().long()).sum(1)            # (B, k, C) -> (B, C)
        return self.linear(phi).flatten() + (e * phi).sum(1)              # (B,)


class AttributeClassifier(nn.Module):
    """C(x): attribute logits (B, k) for faces (B, 3, S, S) in [-1, 1]; the seed's D without its label branch
    (the image branch takes both halves of the first layer's width, as in the projection D), k logits out."""

    def __init__(self, config: CGANConfig):
        super().__init__()
        widths = (2 * config.d_first, *config.d_widths)
        self.image_in = down_block(3, widths[0], batchnorm=False)
        self.body = down_stack(widths)
        self.logit = nn.Conv2d(widths[-1], len(config.attrs), 4, 1, 0)   # 4x4 -> 1x1, one logit per attribute
        self.apply(dcgan_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logit(self.body(self.image_in(x))).flatten(1)      # (B, k)


def discriminator(config: CGANConfig) -> nn.Module:
    return ProjectionDiscriminator(config) if config.discriminator == "projection" else DCGANDiscriminator(config)


def flip_one(y: torch.Tensor) -> torch.Tensor:
    """(B, k) 0/1 attributes with one attribute per row, drawn uniformly, flipped: a label that is wrong."""
    column = torch.randint(0, y.shape[1], (len(y),), device=y.device)
    flip = torch.nn.functional.one_hot(column, y.shape[1]).to(y.dtype)
    return (y - flip).abs()


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# --- one training step -----------------------------------------------------------------------------------


def _attribute_bce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """BCE of attribute logits (B, k) against 0/1 attributes, in float32 outside any autocast."""
    with torch.autocast(device_type=logits.device.type, enabled=False):
        return F.binary_cross_entropy_with_logits(logits.float(), y.float())


def gan_step(G: nn.Module, D: nn.Module, opt_g: torch.optim.Optimizer, opt_d: torch.optim.Optimizer,
             x: torch.Tensor, y: torch.Tensor, config: CGANConfig, C: nn.Module | None = None,
             opt_c: torch.optim.Optimizer | None = None) -> dict[str, torch.Tensor]:
    """One alternating step on real faces x in [-1, 1] with attributes y: D on real and on detached fakes,
    then G through D (D's gradients from G's step are discarded: only opt_g steps). G is asked for the real
    batch's own attributes, so that D sees the same label mix on both sides: fake labels drawn from another
    distribution would let D tell real from fake by the label alone (we measured it: uniform fake labels
    against 13% blond real faces left every blond row of the quick model garbage).

    With an auxiliary classifier C (config.aux_classifier > 0), C learns y from the real faces beside D's update,
    and G's loss gains aux_classifier * BCE(C(fake), y) (AC-GAN)."""
    y_fake = y
    z = torch.randn(len(x), config.z_dim, device=x.device)
    fake = G(z, y_fake)                                               # (B, 3, S, S)

    # D: real faces with their attributes, fakes detached so G gets no gradient from D's loss
    real_logits, fake_logits = D(x, y), D(fake.detach(), y_fake)
    with torch.autocast(device_type=x.device.type, enabled=False):
        loss_d = L.discriminator_loss(real_logits.float(), fake_logits.float(), config.loss, config.real_label)
    if config.mismatch > 0:
        # matching-aware D (Reed et al. 2016, GAN-CLS): a real face with one attribute flipped is a negative,
        # so D must read every attribute, not only "is this a face"
        wrong_logits = D(x, flip_one(y))
        with torch.autocast(device_type=x.device.type, enabled=False):
            loss_wrong = L.discriminator_loss(real_logits.float(), wrong_logits.float(), config.loss, config.real_label)
            loss_d = (1 - config.mismatch) * loss_d + config.mismatch * loss_wrong
    opt_d.zero_grad(set_to_none=True)
    loss_d.backward()
    opt_d.step()
    extra: dict[str, torch.Tensor] = {}
    if C is not None:                      # C learns the attributes of the real faces only
        loss_c = _attribute_bce(C(x), y)
        opt_c.zero_grad(set_to_none=True)
        loss_c.backward()
        opt_c.step()
        extra["loss_c"] = loss_c.detach()

    # G: the non-saturating loss through the updated D
    gen_logits = D(fake, y_fake)
    with torch.autocast(device_type=x.device.type, enabled=False):
        loss_g = L.generator_loss(gen_logits.float(), config.loss)
    if C is not None:                      # ... and a classifier of real faces must read y on G's faces
        loss_g_c = _attribute_bce(C(fake), y_fake)
        extra["loss_g_c"] = loss_g_c.detach()
        loss_g = loss_g + config.aux_classifier * loss_g_c
    opt_g.zero_grad(set_to_none=True)
    loss_g.backward()
    opt_g.step()
    return extra | {"loss_d": loss_d.detach(), "loss_g": loss_g.detach(),
            "D_x": torch.sigmoid(real_logits.detach().float()).mean(),
            "D_G_z": torch.sigmoid(fake_logits.detach().float()).mean()}


__all__ = ["CGANConfig", "PRESETS", "preset", "Generator", "DCGANDiscriminator", "ProjectionDiscriminator",
           "AttributeClassifier", "discriminator", "flip_one", "label_maps", "dcgan_init", "combinations", "gan_step",
           "parameter_count"]
