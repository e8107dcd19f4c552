"""Fader Networks (Lample, Zeghidour, Usunier, Bordes, Denoyer, Ranzato, "Fader Networks: Manipulating
Images by Sliding Attributes", NeurIPS 2017; code facebookresearch/FaderNetworks, src/model.py and
src/training.py), and the variant of Fedotova, Gospodinov & Khramov (2018; ga-gospodinov/FaceGeneration).

An encoder E maps a face x to a latent E(x); a decoder D rebuilds the face from the latent *and* the
attributes y, given to it as constant one-hot maps (2 channels per binary attribute, [absent, present]).
A latent discriminator P tries to read y back from E(x). The two are trained in turn:

    L_dis(P) = - log P(y | E(x))                                          (1)  discriminator step
    L(E, D)  = || D(E(x), y) - x ||^2  +  lambda_E * (- log P(1 - y | E(x)))   (2)  auto-encoder step

(2) asks the encoder to make the discriminator predict the *flipped* attributes 1 - y: at the equilibrium
the latent carries no information about y, so the decoder must take the attributes from its input, and a
new value of y - even a value in between, the "fader" alpha - changes the face. lambda_E rises linearly
from 0 (the official schedule: to 1e-4 over 500,000 iterations, eq. (3)):

    lambda_E(t) = lambda_max * clip((t - t_0) / T, 0, 1)                  (3)

with t_0 = 0 in the official code and t_0 > 0 (a first phase as a plain auto-encoder) in the 2018 variant.

Images are in [-1, 1] inside this module (tanh output, as the official code); `edit` takes and returns [0, 1].
An attribute's strength alpha is signed here: alpha = +1 present, -1 absent, decoded as the one-hot pair
[(1 - alpha) / 2, (1 + alpha) / 2]; |alpha| > 1 extrapolates (the paper's interpolation goes beyond 1 too).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace

import torch
from torch import nn
from torch.nn import functional as F

from faceedu.models.freeze import frozen
from faceedu.models.pixels import to_image, to_model


# --- configuration ------------------------------------------------------------------------------------


@dataclass
class FaderConfig:
    """Architecture and training of one Fader Network. Defaults = the official code's (`full`)."""

    attrs: tuple[str, ...] = ("Smiling", "Male")     # binary CelebA attributes, 2 one-hot channels each
    image_size: int = 256                             # 178x178 centre of CelebA resized to 256 (paper)
    crop: str = "center"
    img_fm: int = 3
    init_fm: int = 32                                 # first conv's channels, doubled each layer ...
    max_fm: int = 512                                 # ... up to this
    n_layers: int = 6                                 # 256 / 2^6: a 512x4x4 latent
    attr_layers: str = "all"                          # "all": maps at every decoder layer; "input": first only (2018)
    hid_dim: int = 512                                # latent discriminator's hidden Linear
    lat_dis: str = "official"                         # "official" or "seed" (conv to 16 maps, FC 256-50)
    lat_dis_dropout: float = 0.3
    # losses and schedule
    lambda_max: float = 1e-4                          # lambda_E at the end of the ramp, eq. (3)
    lambda_start: int = 0                             # t_0: steps at lambda 0 before the ramp (2018 variant)
    lambda_steps: int = 500_000                       # T: length of the linear ramp
    # (the official --smooth_label 0.2 only enters the patch discriminator's loss, off by default: the latent
    # discriminator trains on hard labels there and here; lambda_ae, the MSE weight, is 1 there and here)
    ssim_weight: float = 0.0                          # + ssim_weight * (1 - SSIM) in eq. (2): NOT the paper's (quick only)
    # the official code's classifier discriminator (--n_clf_dis, --lambda_clf_dis; 0 there by default, not in the
    # paper): a classifier of the attributes trained on real faces, and an auto-encoder loss asking it to read
    # randomly drawn attributes on the faces decoded with them, weighted by lambda_clf_dis on the schedule of eq. (3)
    n_clf_dis: int = 0                                # classifier updates per step (0: no classifier)
    lambda_clf_dis: float = 0.0                       # its weight in eq. (2) at the end of the ramp
    clf_augment: float = 0.0                          # > 0: C learns from real faces augmented as the attribute judge
                                                      # (flips, small rotations, scales, shifts, brightness, pixel noise
                                                      # up to this sigma on half): NOT the official code's (quick only)
    ema_decay: float = 0.0                            # > 0: the run reconstructs and edits with a moving average of the
                                                      # auto-encoder's weights: NOT the official code's (quick only)
    # optimisation (both networks alike)
    lr: float = 2e-4
    beta1: float = 0.5
    clip_grad_norm: float = 5.0
    batch_size: int = 32
    hflip: bool = True                                # random horizontal flips (the official loader's v_flip/h_flip)
    steps: int = 5_000_000                            # the official 1000 "epochs" of 50,000 images / 32... capped by the user
    bf16: bool = False
    threads: int = 0                                  # CPU threads while training; 0: torch's default (all cores)

    def __post_init__(self) -> None:
        self.attrs = tuple(self.attrs)
        assert self.init_fm <= self.max_fm, "init_fm must not exceed max_fm"
        assert math.log2(self.image_size).is_integer(), "the image side must be a power of 2"
        assert 1 <= self.n_layers <= int(math.log2(self.image_size))
        assert self.attr_layers in ("all", "input"), "attr_layers is 'all' or 'input'"
        assert self.lat_dis in ("official", "seed")
        assert len(self.attrs) == len(set(self.attrs)) >= 1, "give each attribute once"
        assert self.lambda_clf_dis == 0 or self.n_clf_dis > 0, "lambda_clf_dis needs a classifier (n_clf_dis >= 1)"

    @property
    def n_attr(self) -> int:
        return 2 * len(self.attrs)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        channels = min(self.init_fm * 2 ** (self.n_layers - 1), self.max_fm)
        side = self.image_size // 2 ** self.n_layers
        return channels, side, side

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "FaderConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: (tuple(v) if k == "attrs" else v) for k, v in values.items() if k in known})


PRESETS: dict[str, FaderConfig] = {
    # The official code's defaults (256x256, 32 -> 512 over 6 layers, latent 512x4x4, lambda 0 -> 1e-4 over
    # 500k iterations). AutoEncoder 14,032,352 / LatentDiscriminator 8,656,388 parameters with Smiling,Male.
    "full": FaderConfig(),
    # The 2018 variant (Fedotova, Gospodinov & Khramov): 16 -> 512 over 7 layers to a 512x2x2 latent, the
    # attributes at the decoder's input only, a plain auto-encoder first (lambda 0), then lambda raised
    # linearly (2e-10 per iteration in their code: 1e-4 after 500k); their latent discriminator.
    "seed": FaderConfig(attrs=("Male",), init_fm=16, n_layers=7, attr_layers="input", lat_dis="seed",
                        hid_dim=256, lambda_start=100_000, lambda_steps=500_000),
    # CPU minutes on 64x64 SynthFaces: the official architecture scaled down (16 -> 64 over 3 layers to a
    # 64x8x8 latent; the official code's 4x4 read the attributes at 89.7 % at best, 8x8 at 91.3 %) and a
    # compressed schedule: 3,000 steps (4 epochs of the 24,000 training faces), lambda 0 for the first 1,500
    # (the discriminator learns to read the attributes), then a ramp to 0.05 by step 2,500: the official 1e-4
    # needs 500k steps to matter. The official code's classifier discriminator (n_clf_dis 1, lambda_clf_dis
    # 0.3 on the same ramp; off by default there, not in the paper): without it the decoder ignored its attribute input at
    # this budget (flips 29 / 57 / 26 %), with it 83 / 93 / 91 %. Adam at 1e-3 instead of 2e-4 (at 2e-4,
    # 1,500 steps leave the faces a blur), and NOT the paper's loss: MSE + (1 - SSIM), which lifted the
    # masked SSIM from 0.53 to 0.67 without the classifier (0.59 with it). docs/fader.md: every configuration tried.
    # Two CPU threads on every machine: the figures the docs and tests quote are the 2-thread trajectory.
    "quick": FaderConfig(attrs=("Male", "Eyeglasses", "Smiling"), image_size=64, init_fm=16, max_fm=128, n_layers=3,
                         hid_dim=128, lr=1e-3, ssim_weight=1.0, lambda_max=0.05, lambda_start=1500, lambda_steps=1000,
                         n_clf_dis=1, lambda_clf_dis=0.3, clf_augment=0.1, ema_decay=0.995, steps=3000, threads=2),
}


def preset(name: str, **overrides) -> FaderConfig:
    """A copy of a named preset with some fields changed, e.g. ``preset("quick", attrs=("Male",))``."""
    if name not in PRESETS:
        raise KeyError(f"no Fader preset {name!r}; choose one of {', '.join(PRESETS)}")
    return replace(PRESETS[name], **overrides)


# --- attributes as maps -------------------------------------------------------------------------------


def one_hot(y: torch.Tensor) -> torch.Tensor:
    """(B, A) attribute values in {0, 1} (or signed strengths alpha mapped through (1 + alpha) / 2) ->
    (B, 2A) one-hot pairs [1 - y_a, y_a] per attribute: channel 2a = absent, 2a + 1 = present."""
    y = y.float()
    return torch.stack([1 - y, y], dim=2).flatten(1)   # (B, A, 2) -> (B, 2A)


def alpha_values(alpha: torch.Tensor) -> torch.Tensor:
    """Signed strengths alpha (B, A) (+1 present, -1 absent) -> the attribute values y = (1 + alpha) / 2."""
    return (1 + alpha.float()) / 2


def attribute_maps(codes: torch.Tensor, side: int) -> torch.Tensor:
    """(B, 2A) codes -> (B, 2A, side, side) constant maps, to concatenate to a decoder layer's input."""
    return codes[:, :, None, None].expand(-1, -1, side, side)


# --- the networks -------------------------------------------------------------------------------------


def encoder_layer(c_in: int, c_out: int, first: bool, dropout: float = 0.0) -> nn.Sequential:
    """Conv 4x4 stride 2 (side halves) + BatchNorm (not on the first layer) + LeakyReLU(0.2) [+ Dropout]."""
    layer: list[nn.Module] = [nn.Conv2d(c_in, c_out, 4, 2, 1)]
    if not first:
        layer.append(nn.BatchNorm2d(c_out))
    layer.append(nn.LeakyReLU(0.2, inplace=True))
    if dropout > 0:
        layer.append(nn.Dropout(dropout))
    return nn.Sequential(*layer)


def decoder_layer(c_in: int, c_out: int, last: bool) -> nn.Sequential:
    """ConvTranspose 4x4 stride 2 (side doubles), no bias, + BatchNorm + ReLU; Tanh on the output layer."""
    layer: list[nn.Module] = [nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False)]
    layer += [nn.Tanh()] if last else [nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
    return nn.Sequential(*layer)


def widths(config: FaderConfig, n_layers: int) -> list[tuple[int, int]]:
    """(in, out) channels of each encoder-like layer: img_fm -> init_fm, doubling up to max_fm."""
    pairs, c_in, c_out = [], config.img_fm, config.init_fm
    for _ in range(n_layers):
        pairs.append((c_in, c_out))
        c_in, c_out = c_out, min(2 * c_out, config.max_fm)
    return pairs


def decode_layers(layers: nn.ModuleList, z: torch.Tensor, y: torch.Tensor, every_layer: bool = True) -> torch.Tensor:
    """Run decoder layers from the latent z (B, C, s, s), concatenating the attribute maps of y (B, A) -
    one-hot pairs [1 - y_a, y_a], constant over space - after the features at the input of every layer
    (or of the first only, every_layer=False)."""
    codes = one_hot(y)                                                             # (B, 2A)
    h = z
    for i, layer in enumerate(layers):
        if every_layer or i == 0:
            h = torch.cat([h, attribute_maps(codes.to(h.dtype), h.shape[-1])], dim=1)  # (B, C + 2A, s, s)
        h = layer(h)                                                                  # (B, C', 2s, 2s)
    return h


class AutoEncoder(nn.Module):
    """E and D. `decode` concatenates the attribute maps to the input of every decoder layer (or of the
    first one only, attr_layers="input")."""

    def __init__(self, config: FaderConfig):
        super().__init__()
        self.config = config
        n_attr, pairs = config.n_attr, widths(config, config.n_layers)
        self.enc_layers = nn.ModuleList(encoder_layer(i, o, first=k == 0) for k, (i, o) in enumerate(pairs))
        dec = []
        for k, (c_in, c_out) in reversed(list(enumerate(pairs))):   # mirror: the deepest layer decodes first
            gets_attrs = config.attr_layers == "all" or k == config.n_layers - 1
            dec.append(decoder_layer(c_out + (n_attr if gets_attrs else 0), c_in, last=k == 0))
        self.dec_layers = nn.ModuleList(dec)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) in [-1, 1] -> the latent (B, C, S / 2^n, S / 2^n)."""
        for layer in self.enc_layers:
            x = layer(x)
        return x

    def decode(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Latent (B, C, s, s) and attribute values y (B, A) (1 present, 0 absent; in between or beyond:
        the fader) -> image (B, 3, S, S) in [-1, 1]."""
        return decode_layers(self.dec_layers, z, y, every_layer=self.config.attr_layers == "all")

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.encode(x)
        return z, self.decode(z, y)


class LatentDiscriminator(nn.Module):
    """P: reads the attributes from the latent. Official: the encoder's remaining conv layers down to 1x1
    (with BatchNorm and dropout 0.3), then Linear(hid_dim) + LeakyReLU + Linear(2A): logits per one-hot pair.
    "seed": a 1x1 conv to 16 maps, then fully connected layers of 256 and 50 units (the 2018 variant)."""

    def __init__(self, config: FaderConfig):
        super().__init__()
        self.config = config
        c, side, _ = config.latent_shape
        if config.lat_dis == "official":
            all_layers = widths(config, int(math.log2(config.image_size)))
            self.conv_layers = nn.Sequential(*(encoder_layer(i, o, first=False, dropout=config.lat_dis_dropout)
                                               for i, o in all_layers[config.n_layers:]))
            conv_out = all_layers[-1][1] if len(all_layers) > config.n_layers else c
            self.proj_layers = nn.Sequential(nn.Linear(conv_out, config.hid_dim), nn.LeakyReLU(0.2, inplace=True),
                                             nn.Linear(config.hid_dim, config.n_attr))
        else:
            self.conv_layers = nn.Sequential(nn.Conv2d(c, 16, 1), nn.LeakyReLU(0.2, inplace=True),
                                             nn.Dropout(config.lat_dis_dropout))
            self.proj_layers = nn.Sequential(nn.Linear(16 * side * side, config.hid_dim), nn.LeakyReLU(0.2, inplace=True),
                                             nn.Linear(config.hid_dim, 50), nn.LeakyReLU(0.2, inplace=True),
                                             nn.Linear(50, config.n_attr))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Latent (B, C, s, s) -> logits (B, 2A)."""
        return self.proj_layers(self.conv_layers(z).flatten(1))


class Classifier(nn.Module):
    """The official code's classifier discriminator (`Classifier` in src/model.py): the encoder's conv layers
    (conv 4x4 stride 2, BatchNorm from the second layer, LeakyReLU 0.2, no dropout) continued down to 1x1 on
    the image, then Linear(hid_dim) + LeakyReLU + Linear(2A): logits per one-hot pair, as the latent
    discriminator's head. Trained on real faces; the auto-encoder is asked to make it read the attributes
    it decoded with."""

    def __init__(self, config: FaderConfig):
        super().__init__()
        self.config = config
        layers = widths(config, int(math.log2(config.image_size)))
        self.conv_layers = nn.Sequential(*(encoder_layer(i, o, first=k == 0) for k, (i, o) in enumerate(layers)))
        self.proj_layers = nn.Sequential(nn.Linear(layers[-1][1], config.hid_dim), nn.LeakyReLU(0.2, inplace=True),
                                         nn.Linear(config.hid_dim, config.n_attr))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, S, S) in [-1, 1] -> logits (B, 2A)."""
        return self.proj_layers(self.conv_layers(x).flatten(1))


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# --- losses and schedule ------------------------------------------------------------------------------


def attr_loss(logits: torch.Tensor, y: torch.Tensor, flip: bool = False, smooth: float = 0.0) -> torch.Tensor:
    """The sum over attributes of the cross-entropy of each pair of logits (B, 2A) against y (B, A) in
    {0, 1} - or against the flipped 1 - y (for a binary attribute the only other value)."""
    target = (1 - y if flip else y).long()
    pairs = logits.float().view(len(logits), -1, 2)                        # (B, A, 2)
    return sum(F.cross_entropy(pairs[:, a], target[:, a], label_smoothing=smooth) for a in range(pairs.shape[1]))


def lat_dis_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Eq. (1): the latent discriminator's loss, -log P(y | E(x)), summed over attributes, mean over faces."""
    return attr_loss(logits, y, flip=False)


def encoder_adversarial_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Eq. (2)'s second term: -log P(1 - y | E(x)), the encoder rewarded when P reads the flipped attributes."""
    return attr_loss(logits, y, flip=True)


def lambda_schedule(step: int, lambda_max: float, start: int = 0, ramp: int = 500_000) -> float:
    """Eq. (3): lambda_E is 0 until `start`, then rises linearly to `lambda_max` over `ramp` steps and stays."""
    if ramp <= 0:
        return lambda_max if step > start else 0.0
    return lambda_max * min(max(step - start, 0) / ramp, 1.0)


def config_lambda(config: FaderConfig, step: int) -> float:
    return lambda_schedule(step, config.lambda_max, config.lambda_start, config.lambda_steps)


def attribute_accuracy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(A,) share of faces whose attribute the discriminator reads right (argmax of each pair)."""
    return (logits.view(len(logits), -1, 2).argmax(2) == y.long()).float().mean(0)


# --- one training step --------------------------------------------------------------------------------


def random_attributes(y: torch.Tensor) -> torch.Tensor:
    """Each binary attribute of each face drawn anew, 0 or 1 with probability 1/2 (the official
    `flip_attributes(batch_y, params, 'all')`: "randomly flip", so about half keep their value)."""
    return torch.randint(0, 2, y.shape, device=y.device).to(y.dtype)


def clf_dis_step(clf_dis: Classifier, opt_clf: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                 clip: float = 5.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The official clf_dis_step: the classifier (training mode) learns the attributes y of real faces x.
    Returns its loss and its accuracy on the batch (detached)."""
    clf_dis.train()
    logits = clf_dis(x)
    loss = attr_loss(logits, y)
    opt_clf.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(clf_dis.parameters(), clip)
    opt_clf.step()
    return loss.detach(), attribute_accuracy(logits.detach(), y).mean()


def fader_step(ae: AutoEncoder, lat_dis: LatentDiscriminator, opt_ae: torch.optim.Optimizer,
               opt_dis: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, lam: float,
               clip: float = 5.0, clf_dis: Classifier | None = None, opt_clf: torch.optim.Optimizer | None = None,
               lam_clf: float = 0.0, clf_view=None) -> dict[str, torch.Tensor]:
    """One iteration of the official training loop (lat_dis_step, then autoencoder_step) on a batch x
    (B, 3, S, S) in [-1, 1] with attributes y (B, A) in {0, 1}:

    1. discriminator update, eq. (1): encode without gradient (encoder in eval mode), P in training mode;
    2. auto-encoder update, eq. (2): MSE with the true attributes + lam * P's loss on the flipped ones,
       P in eval mode and left untouched (its gradients are never stepped). With `ae.config.ssim_weight`
       w > 0 (the quick preset only, NOT the paper) the reconstruction term is MSE + w * (1 - SSIM).
    Both updates clip the gradient norm at `clip`.

    With a classifier discriminator `clf_dis` (the official --n_clf_dis 1; off by default there and in
    the lesson), it is updated on the real faces between the two (the official clf_dis_step), and the
    auto-encoder's loss gains lam_clf * -log C(y~ | D(E(x), y~)) for attributes y~ drawn at random
    (`random_attributes`), the classifier in eval mode (the official autoencoder_step). Given `clf_view`, a
    function of the real faces (the quick preset: the attribute judge's augmentation), the classifier learns
    from clf_view(x) instead of x."""
    # 1. the latent discriminator learns to read y from a latent it cannot change
    ae.eval()
    with torch.no_grad():
        z = ae.encode(x)
    lat_dis.train()
    logits = lat_dis(z)
    dis_loss = lat_dis_loss(logits, y)
    opt_dis.zero_grad(set_to_none=True)
    dis_loss.backward()
    nn.utils.clip_grad_norm_(lat_dis.parameters(), clip)
    opt_dis.step()
    extra: dict[str, torch.Tensor] = {}
    if clf_dis is not None:                     # 1b. the classifier discriminator learns y from real faces
        seen = clf_view(x) if clf_view is not None else x
        extra["clf_dis"], extra["clf_dis_acc"] = clf_dis_step(clf_dis, opt_clf, seen, y, clip)
    # 2. the auto-encoder reconstructs x, and the encoder hides y from P
    with frozen(lat_dis, clf_dis):          # P and C judge; their weights get no gradient here
        ae.train()
        lat_dis.eval()
        z, out = ae(x, y)
        rec = ((out.float() - x.float()) ** 2).mean()
        adv = encoder_adversarial_loss(lat_dis(z), y)
        ssim_weight = getattr(getattr(ae, "config", None), "ssim_weight", 0.0)
        if ssim_weight:                             # the quick preset's departure from the paper's MSE (docs/fader.md)
            similarity = separable_ssim((out.float() + 1) / 2, (x.float() + 1) / 2)
            loss = rec + ssim_weight * (1 - similarity) + lam * adv
        else:
            loss = rec + lam * adv
        if clf_dis is not None and lam_clf > 0:     # 2b. decoded with random attributes, the classifier must read them
            clf_dis.eval()
            drawn = random_attributes(y)
            clf = attr_loss(clf_dis(ae.decode(z, drawn)), drawn)
            loss = loss + lam_clf * clf
            extra["ae_clf"] = clf.detach()
        opt_ae.zero_grad(set_to_none=True)
        loss.backward()
    nn.utils.clip_grad_norm_(ae.parameters(), clip)
    opt_ae.step()
    logs = {"lat_dis": dis_loss.detach(), "lat_dis_acc": attribute_accuracy(logits.detach(), y).mean(),
            "loss": loss.detach(), "rec": rec.detach(), "enc_adv": adv.detach()}
    return logs | ({"ssim": similarity.detach()} if ssim_weight else {}) | extra


def separable_ssim(x: torch.Tensor, y: torch.Tensor, window_size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Mean SSIM of images in [0, 1]: the same quantity as `faceedu.losses.ssim` (Gaussian window 11, sigma
    1.5, no padding), computed with the window's two 1-D factors on the five maps stacked in one call -
    about 2.7x faster forward and backward on a CPU than five 11x11 depthwise convolutions (tested equal)."""
    c = x.shape[1]
    r = torch.arange(window_size, dtype=torch.float64, device=x.device) - (window_size - 1) / 2
    g = torch.exp(-(r ** 2) / (2 * sigma ** 2))
    g = (g / g.sum()).to(x.dtype)
    maps = torch.cat([x, y, x * x, y * y, x * y], dim=1)                         # (B, 5C, H, W)
    maps = F.conv2d(maps, g.view(1, 1, 1, -1).expand(5 * c, 1, 1, window_size), groups=5 * c)
    maps = F.conv2d(maps, g.view(1, 1, -1, 1).expand(5 * c, 1, window_size, 1), groups=5 * c)
    mu_x, mu_y, xx, yy, xy = maps.split(c, dim=1)
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    var_x, var_y, cov = xx - mu_x ** 2, yy - mu_y ** 2, xy - mu_x * mu_y
    return ((2 * mu_x * mu_y + c1) * (2 * cov + c2) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))).mean()


def make_optimizers(ae: AutoEncoder, lat_dis: LatentDiscriminator, config: FaderConfig,
                    clf_dis: Classifier | None = None) -> dict[str, torch.optim.Optimizer]:
    """Adam(lr 2e-4, betas (0.5, 0.999)) for each network (official ae_optimizer / dis_optimizer; the
    classifier discriminator, when there is one, gets the discriminators' optimiser as there)."""
    adam = lambda m: torch.optim.Adam(m.parameters(), lr=config.lr, betas=(config.beta1, 0.999))  # noqa: E731
    return {"ae": adam(ae), "lat_dis": adam(lat_dis)} | ({"clf_dis": adam(clf_dis)} if clf_dis is not None else {})


# --- using a trained model ----------------------------------------------------------------------------


@torch.no_grad()
def edit(ae: AutoEncoder, images: torch.Tensor, alpha: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Decode faces (N, 3, S, S) in [0, 1] with attribute strengths alpha (N, A) or (A,) (+1 present, -1
    absent, between and beyond: the fader); returns [0, 1] images. Eval mode, restored afterwards."""
    was_training = ae.training
    ae.eval()
    alpha = torch.as_tensor(alpha, dtype=torch.float32)
    alpha = alpha.expand(len(images), -1) if alpha.dim() == 1 else alpha
    device = next(ae.parameters()).device
    try:
        out = [to_image(ae(to_model(x).to(device), alpha_values(a).to(device))[1]).cpu()
               for x, a in zip(images.split(batch_size), alpha.split(batch_size))]
    finally:
        ae.train(was_training)
    return torch.cat(out)


def reconstruct(ae: AutoEncoder, images: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Decode faces with their own attributes y (N, A) in {0, 1}."""
    return edit(ae, images, 2 * y.float() - 1, batch_size)


__all__ = ["FaderConfig", "PRESETS", "preset", "one_hot", "alpha_values", "decode_layers", "attribute_maps", "AutoEncoder",
           "LatentDiscriminator", "Classifier", "count_parameters", "random_attributes", "clf_dis_step", "attr_loss", "lat_dis_loss", "encoder_adversarial_loss",
           "lambda_schedule", "config_lambda", "separable_ssim", "attribute_accuracy", "fader_step", "make_optimizers", "edit", "reconstruct", "to_model", "to_image"]
