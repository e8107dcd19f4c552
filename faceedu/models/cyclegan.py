"""CycleGAN (Zhu, Park, Isola & Efros, "Unpaired Image-to-Image Translation using Cycle-Consistent
Adversarial Networks", ICCV 2017), as the official code junyanz/pytorch-CycleGAN-and-pix2pix builds it
(models/networks.py, models/cycle_gan_model.py, util/image_pool.py), here between two facial expressions.

Two generators translate between domains A and B (e.g. happy and neutral), G_A: A -> B and G_B: B -> A;
two discriminators judge each domain, D_A real B vs G_A(A), D_B real A vs G_B(B). With the least-squares
GAN loss (LSGAN, Mao et al. 2017) one step minimises, for the generators,

    L_G = (D_A(G_A(a)) - 1)^2 + (D_B(G_B(b)) - 1)^2                              (adversarial)
        + lambda_cyc (|G_B(G_A(a)) - a|_1 + |G_A(G_B(b)) - b|_1)                 (cycle consistency, eq. 2)
        + lambda_idt lambda_cyc (|G_A(b) - b|_1 + |G_B(a) - a|_1)                (identity, sec. 5.2)

and for each discriminator 0.5 ((D(real) - 1)^2 + D(fake)^2), where `fake` is drawn from a pool of the
last 50 generated images half of the time (Shrivastava et al. 2017). Adam 2e-4, beta1 0.5, batch 1; the
learning rate is constant for the first half of training and decays linearly to 0 in the second.
Weights are initialised N(0, 0.02), biases 0.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, fields, replace

import torch
import torch.nn.functional as F
from torch import nn

from faceedu.losses import discriminator_loss, generator_loss

# --- configuration ------------------------------------------------------------------------------------


@dataclass
class CycleGANConfig:
    """One CycleGAN; defaults = the official code (`full`) at JAFFE's 256 px grayscale."""

    channels: int = 1              # JAFFE is grayscale; 3 for colour faces
    image_size: int = 256          # crop size fed to the networks
    load_size: int = 286           # resized to this, then randomly cropped to image_size (official 286 -> 256)
    flip: bool = True              # random horizontal flip
    ngf: int = 64                  # generator's first-layer filters
    ndf: int = 64                  # discriminator's first-layer filters
    n_blocks: int = 9              # residual blocks: 9 at 256 px, 6 at 128 px
    n_layers_d: int = 3            # PatchGAN depth: 3 gives the 70x70 receptive field
    gan_loss: str = "lsgan"
    lambda_cycle: float = 10.0     # lambda_A = lambda_B
    lambda_identity: float = 0.5   # the identity loss weighs lambda_identity * lambda_cycle
    pool_size: int = 50
    lr: float = 2e-4
    beta1: float = 0.5
    batch_size: int = 1
    epochs_constant: float = 100   # n_epochs: constant learning rate
    epochs_decay: float = 100      # n_epochs_decay: linear decay to 0
    steps: int | None = None       # overrides the epochs (the facepaint preset counts iterations)
    data: str = "jaffe"            # "jaffe": two expression codes; "celeba": an attribute and its absence
    domains: tuple[str, str] = ("HA", "NE")   # celeba: e.g. ("Smiling", "not_Smiling")
    threads: int = 0               # CPU threads while training; 0: torch's default (all cores)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> CycleGANConfig:
        known = {f.name for f in fields(cls)}
        values = {k: tuple(v) if k == "domains" else v for k, v in values.items() if k in known}
        return cls(**values)


PRESETS: dict[str, CycleGANConfig] = {
    # The official code: 286 -> 256 crops, 9 blocks, 200 epochs of batch 1.
    "full": CycleGANConfig(),
    # FacePaint (2019): happy <-> neutral, 350 iterations, Adam 5e-4 with linear decay. They do not say when the
    # decay starts; as CycleGAN, half constant, half decay. At 128 px (their size is not stated): 6 blocks.
    "facepaint": CycleGANConfig(image_size=128, load_size=143, n_blocks=6, lr=5e-4, steps=350),
    # CPU minutes on SynthFaces-JAFFE: 32x32 faces (the judges still read their expression: 98% / 95% of
    # real HA / NE faces), narrow networks (ngf = ndf = 16), 6 blocks, batch 4, no random crop (flip only),
    # 1,600 steps (800 constant + 800 decay). Losses, weights, pool, init and Adam as the official code.
    # At 32 px the 70-pixel field of the PatchGAN covers the whole face. One CPU thread: these tensors are too
    # small to gain much from a second (about 0.1 s a step with one or two on an idle machine; 25x slower with
    # two on a busy one), and the run's result then does not change with the machine's core count. It does change with the
    # summation order: one and two threads read 89 / 83 % and 78 / 89 % (HA->NE / NE->HA; 83 / 89 % and
    # 89 / 67 % at 2,400 steps): the expression bars are met on average, not by every run (docs/results.md).
    "quick": CycleGANConfig(image_size=32, load_size=32, ngf=16, ndf=16, n_blocks=6, batch_size=4, steps=1600,
                            threads=1),
    # The second pairing, on larger data: CelebA-layout faces with and without Smiling, in colour at the
    # attribute judge's 64 px, the quick preset's narrow networks otherwise (flip only, 1,600 steps of 4).
    "quick-celeba": CycleGANConfig(data="celeba", domains=("Smiling", "not_Smiling"), channels=3, image_size=64,
                                   load_size=64, ngf=16, ndf=16, n_blocks=6, batch_size=4, steps=1600, threads=1),
}


def preset(name: str, **overrides) -> CycleGANConfig:
    """A copy of a named preset with some fields changed, e.g. ``preset("quick", domains=("SU", "NE"))``."""
    if name not in PRESETS:
        raise KeyError(f"no CycleGAN preset {name!r}; choose one of {', '.join(PRESETS)}")
    return replace(PRESETS[name], **overrides)


# --- the generator: ResNet blocks between two downsamplings and two upsamplings ------------------------


class ResnetBlock(nn.Module):
    """x + F(x) with F = reflect pad 1, conv 3x3, IN, ReLU, reflect pad 1, conv 3x3, IN. Reflection padding keeps
    the borders free of the zero-padding artefacts a translator would otherwise learn to paint."""

    def __init__(self, dim: int):
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=True), nn.InstanceNorm2d(dim), nn.ReLU(True),
            nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=True), nn.InstanceNorm2d(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


class ResnetGenerator(nn.Module):
    """c7s1-ngf, d(2ngf), d(4ngf), n_blocks x R(4ngf), u(2ngf), u(ngf), c7s1-out, tanh (the paper's appendix):
    (N, C, S, S) in [-1, 1] -> (N, C, S, S) in [-1, 1]; S a multiple of 4. Instance norm without affine
    parameters, so every conv keeps its bias (as the official code)."""

    def __init__(self, in_channels: int = 3, out_channels: int = 3, ngf: int = 64, n_blocks: int = 9):
        super().__init__()
        layers: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(in_channels, ngf, 7), nn.InstanceNorm2d(ngf),
                                   nn.ReLU(True)]
        for i in range(2):                                    # S -> S/2 -> S/4
            mult = 2 ** i
            layers += [nn.Conv2d(ngf * mult, ngf * mult * 2, 3, stride=2, padding=1), nn.InstanceNorm2d(ngf * mult * 2),
                       nn.ReLU(True)]
        layers += [ResnetBlock(ngf * 4) for _ in range(n_blocks)]
        for i in range(2):                                    # S/4 -> S/2 -> S
            mult = 2 ** (2 - i)
            layers += [nn.ConvTranspose2d(ngf * mult, ngf * mult // 2, 3, stride=2, padding=1, output_padding=1),
                       nn.InstanceNorm2d(ngf * mult // 2), nn.ReLU(True)]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, out_channels, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


# --- the discriminator: a 70x70 PatchGAN ----------------------------------------------------------------


class NLayerDiscriminator(nn.Module):
    """C64 (no norm) - C128 - C256 (stride 2) - C512 (stride 1) - conv to 1 channel, 4x4 kernels, LeakyReLU 0.2:
    one real/fake score per overlapping 70x70 patch, (N, C, 256, 256) -> (N, 1, 30, 30)."""

    def __init__(self, in_channels: int = 3, ndf: int = 64, n_layers: int = 3):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, ndf, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers):
            previous, mult = mult, min(2 ** n, 8)
            layers += [nn.Conv2d(ndf * previous, ndf * mult, 4, stride=2, padding=1), nn.InstanceNorm2d(ndf * mult),
                       nn.LeakyReLU(0.2, True)]
        previous, mult = mult, min(2 ** n_layers, 8)
        layers += [nn.Conv2d(ndf * previous, ndf * mult, 4, stride=1, padding=1), nn.InstanceNorm2d(ndf * mult),
                   nn.LeakyReLU(0.2, True), nn.Conv2d(ndf * mult, 1, 4, stride=1, padding=1)]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def receptive_field(module: nn.Module) -> int:
    """Side of the input patch one output unit sees, from the convolutions' kernels and strides in order:
    r = 1 + sum_l (k_l - 1) prod_{j<l} s_j. The 3-layer PatchGAN: 1 + 3 (1 + 2 + 4 + 8) + 3 * 8 = 70."""
    field, jump = 1, 1
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)):
            field += (layer.kernel_size[0] - 1) * jump
            jump *= layer.stride[0]
    return field


def init_weights(module: nn.Module, gain: float = 0.02) -> nn.Module:
    """The official 'normal' init: conv and linear weights N(0, gain), biases 0; norm scales N(1, gain)."""
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(layer.weight, 0.0, gain)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
        elif isinstance(layer, (nn.BatchNorm2d, nn.InstanceNorm2d)) and layer.weight is not None:
            nn.init.normal_(layer.weight, 1.0, gain)
            nn.init.zeros_(layer.bias)
    return module


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# --- the image pool -------------------------------------------------------------------------------------


class ImagePool(nn.Module):
    """A history of up to `size` generated images (Shrivastava et al. 2017). `query` returns, per image: while
    the pool fills, the image itself (stored); then with probability 1/2 a random stored image (replaced by
    the new one), else the new image. The discriminator so sees older fakes too and the two networks
    oscillate less. The history is a buffer, so it is saved in checkpoints and a resumed run is exact."""

    def __init__(self, size: int = 50, shape: tuple[int, int, int] = (3, 64, 64)):
        super().__init__()
        self.size = size
        self.register_buffer("images", torch.zeros((size, *shape)))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def query(self, images: torch.Tensor) -> torch.Tensor:
        if self.size == 0:
            return images
        chosen = []
        for image in images.detach():
            if int(self.count) < self.size:
                self.images[int(self.count)] = image
                self.count += 1
                chosen.append(image)
            elif random.uniform(0, 1) > 0.5:
                index = random.randint(0, self.size - 1)
                chosen.append(self.images[index].clone())
                self.images[index] = image
            else:
                chosen.append(image)
        return torch.stack(chosen)


# --- the losses and the schedule ------------------------------------------------------------------------


def cycle_loss(real: torch.Tensor, reconstructed: torch.Tensor) -> torch.Tensor:
    """|F(G(x)) - x|_1, the mean absolute error between an image and its round trip."""
    return F.l1_loss(reconstructed, real)


def identity_loss(real: torch.Tensor, same: torch.Tensor) -> torch.Tensor:
    """|G(y) - y|_1 for y already in G's target domain: G should leave it alone (keeps colour and identity)."""
    return F.l1_loss(same, real)


def linear_decay(step: int, constant: int, decay: int) -> float:
    """The official 'linear' policy per step: 1 for the first `constant` steps, then down linearly towards 0
    over `decay` steps: 1 - max(0, step - constant) / (decay + 1)."""
    return 1.0 - max(0, step - constant) / float(decay + 1)


def schedule_steps(config: CycleGANConfig, images: int) -> tuple[int, int]:
    """(constant, decay) steps: the config's `steps` split in two halves, or its epochs of `images` items."""
    if config.steps is not None:
        return config.steps // 2, config.steps - config.steps // 2
    per_epoch = max(1, images // config.batch_size)
    return round(config.epochs_constant * per_epoch), round(config.epochs_decay * per_epoch)


# --- the whole model --------------------------------------------------------------------------------------


class CycleGAN(nn.Module):
    """G_A: A -> B, G_B: B -> A, D_A judges domain B, D_B judges domain A (the official naming)."""

    def __init__(self, config: CycleGANConfig):
        super().__init__()
        self.config = config
        c = config.channels
        self.G_A = init_weights(ResnetGenerator(c, c, config.ngf, config.n_blocks))
        self.G_B = init_weights(ResnetGenerator(c, c, config.ngf, config.n_blocks))
        self.D_A = init_weights(NLayerDiscriminator(c, config.ndf, config.n_layers_d))
        self.D_B = init_weights(NLayerDiscriminator(c, config.ndf, config.n_layers_d))

    @torch.no_grad()
    def translate(self, images: torch.Tensor, direction: str = "AtoB") -> torch.Tensor:
        """Images in [0, 1] (N, C, S, S) translated A -> B ("AtoB") or B -> A ("BtoA"), in [0, 1]."""
        generator = self.G_A if direction == "AtoB" else self.G_B
        return (generator(images * 2 - 1) + 1) / 2


def generator_losses(model: CycleGAN, real_A: torch.Tensor, real_B: torch.Tensor) -> dict[str, torch.Tensor]:
    """The generators' objective on one batch (images in [-1, 1]), the official backward_G; also returns
    the fakes for the discriminators' step."""
    c = model.config
    fake_B = model.G_A(real_A)                         # G_A(A)
    rec_A = model.G_B(fake_B)                          # G_B(G_A(A))
    fake_A = model.G_B(real_B)                         # G_B(B)
    rec_B = model.G_A(fake_A)                          # G_A(G_B(B))
    terms = {"G_A": generator_loss(model.D_A(fake_B), c.gan_loss),
             "G_B": generator_loss(model.D_B(fake_A), c.gan_loss),
             "cycle_A": c.lambda_cycle * cycle_loss(real_A, rec_A),
             "cycle_B": c.lambda_cycle * cycle_loss(real_B, rec_B)}
    if c.lambda_identity > 0:
        terms["idt_A"] = c.lambda_cycle * c.lambda_identity * identity_loss(real_B, model.G_A(real_B))
        terms["idt_B"] = c.lambda_cycle * c.lambda_identity * identity_loss(real_A, model.G_B(real_A))
    terms["loss_G"] = sum(terms.values())
    return terms | {"fake_A": fake_A, "fake_B": fake_B}


def discriminator_step_loss(D: nn.Module, real: torch.Tensor, fake: torch.Tensor, kind: str = "lsgan") -> torch.Tensor:
    """0.5 (loss on real + loss on the detached fake): halved so D learns slower than G (official code)."""
    return 0.5 * discriminator_loss(D(real), D(fake.detach()), kind)


__all__ = ["CycleGANConfig", "PRESETS", "preset", "ResnetBlock", "ResnetGenerator", "NLayerDiscriminator",
           "receptive_field", "init_weights", "count_parameters", "ImagePool", "cycle_loss", "identity_loss",
           "linear_decay", "schedule_steps", "CycleGAN", "generator_losses", "discriminator_step_loss"]
