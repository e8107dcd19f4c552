"""The face VAE with a mask decoder of Toledo & Antonelo, "Face Reconstruction with Variational
Autoencoder and Face Masks" (ENIAC 2021, arXiv 2112.02139; code tldrafael/FaceReconstructionWithVAEAndFaceMasks).

A VAE (Kingma & Welling, 2014) encodes a face x into a Gaussian q(z|x) = N(mu, diag(sigma^2)), samples

    z = mu + sigma * eps,  eps ~ N(0, I),  sigma = exp(logvar / 2)             (reparameterisation)

and decodes z twice: an image decoder predicts the face, a mask decoder predicts the face+hair+hat mask.
The image losses see only face pixels because the prediction is pasted onto the input first:

    out = pred * m + x * (1 - m)                                               (composition)

with m the ground-truth mask in training and the predicted mask at inference (so a trained model needs
only an image). The loss of one step is

    L = image_loss(out, x) + w_mask (BCE(m_hat, m) + Dice loss(m_hat, m)) + w_kl KL(q(z|x) || N(0, I))

where image_loss is a weighted sum of (2 - SSIM, window 9), 4 MAE and 100 MSE (the weights of the code),
with w_kl = 1e-3 on the KL averaged over latent dimensions. Which terms are on is a preset's choice: the
released code's default is 2 - SSIM + 4 MAE (no MSE; preset `released-code`), the paper's best row H9
is SSIM + l2 with the mask (`paper-h9`), and `full` switches on all three (docs/vae.md).

The original code samples ``z = mu + eps * z_log_var`` (no exponential: the log-variance is used as a
standard deviation) while its KL treats the same output as log sigma. At the KL optimum (log sigma = 0) the
sampled noise is therefore zero and the model behaves like a regularised autoencoder. This module does
it right: sigma = exp(logvar / 2). Everything else follows the paper's code; differences are noted where
they occur.

Keras conventions kept (docs/vae.md, "The released code and the paper"): a stride-2 "same" transposed
convolution centres input pixel j on output pixel 2j + 1 (`SameConvTranspose2d`; PyTorch's
ConvTranspose2d(padding=1, output_padding=1) would centre it on 2j, one pixel off per stage); BatchNorm
with Keras' momentum 0.99 and epsilon 1e-3 (PyTorch's momentum=0.01); glorot_uniform weights and zero
biases; Adam's epsilon 1e-7 — in every preset of the paper's model; `quick`, our own CPU design, keeps
the PyTorch conventions it was tuned with. Runs saved before these were adopted load with the PyTorch
conventions they were trained with (`VAEConfig.from_dict` and LEGACY).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import NamedTuple

import torch
from torch import nn

from faceedu import losses as L

# --- configuration ------------------------------------------------------------------------------------


@dataclass
class VAEConfig:
    """Architecture, losses and optimisation of one VAE; presets below. Defaults = the paper's model (`full`)."""

    image_size: int = 144                     # CelebA aligned 178x218 squashed to 144x144 (paper)
    crop: str = "squash"                      # "squash" as the paper; "center" = CenterCrop(148)+Resize
    # encoder: conv3x3+BN+ELU widths per stage; every stage ends with a 2x2 max-pool (144 -> 1 in 7)
    encoder: tuple[tuple[int, ...], ...] = ((32, 32), (64, 64), (128, 128), (256, 256), (256,), (256,), (512,))
    dense: int = 512                          # Dense + ELU between the encoder and (mu, logvar)
    dense_bn: bool = False                    # the poster model adds BatchNorm after its Dense(1024)
    latent: int = 512
    # decoders: z is reshaped to (channels, side, side); a Linear projects first if the sizes differ
    decoder_in: tuple[int, int] = (512, 1)
    decoder: tuple[int, ...] = (256, 256, 256, 128, 64, 32, 32)  # one transposed-conv stage each (x2)
    decoder_convs: int = 1                    # conv3x3+BN+ELU after each transposed conv
    mask_decoder: tuple[int, ...] = (32,) * 7  # same layout, 32 filters, one sigmoid channel
    use_mask: bool = True                     # False: no mask branch, losses on the whole image
    # losses (weights as the paper's code)
    image_losses: tuple[str, ...] = ("ssim", "l1", "l2")
    ssim_weight: float = 1.0                  # (2 - SSIM)
    l1_weight: float = 4.0
    l2_weight: float = 100.0
    ssim_window: int = 9                      # tf.image.ssim(filter_size=9)
    mask_weight: float = 1.0                  # BCE + Dice(smooth 1)
    kl_weight: float = 1e-3
    kl_average_dims: bool = True              # the code averages the KL over latent dims before weighting
    # optimisation
    lr: float = 1e-4                          # Adam
    lr_min: float = 1e-5                      # lr / lr_decay every lr_decay_epochs epochs, not below this
    lr_decay: float = 3.0
    lr_decay_epochs: float = 10.0
    clip_norm: float = 1e-3                   # Keras clipnorm: each parameter's gradient norm clipped alone
    batch_size: int = 32
    bf16: bool = False                        # bfloat16 autocast where the hardware has it (losses stay float32)
    channels_last: bool = True                # NHWC memory: faster on CPUs (oneDNN; full 1.2x) and GPUs (1.4x)
    epochs: float = 100.0                     # x 4000 steps of 32 in the paper's code (128k images/epoch)
    epoch_images: int = 128_000
    # Keras' conventions, as the released code ran (LEGACY: the PyTorch ones of runs saved before them)
    transpose_align: str = "keras"            # "keras": stride-2 "same" puts input j on output 2j+1; "torch": 2j
    bn_momentum: float = 0.01                 # PyTorch's convention for Keras' momentum 0.99 (1 - 0.99)
    bn_eps: float = 1e-3                      # Keras' BatchNormalization epsilon
    init: str = "keras"                       # "keras": glorot_uniform weights, zero biases; "torch": its defaults
    adam_eps: float = 1e-7                    # Keras' Adam epsilon

    def __post_init__(self) -> None:
        self.encoder = tuple(tuple(stage) for stage in self.encoder)
        self.decoder, self.mask_decoder = tuple(self.decoder), tuple(self.mask_decoder)
        self.decoder_in, self.image_losses = tuple(self.decoder_in), tuple(self.image_losses)
        unknown = set(self.image_losses) - {"ssim", "l1", "l2"}
        if unknown or not self.image_losses:
            raise ValueError(f"image_losses must be a non-empty subset of ssim, l1, l2; got {self.image_losses}")
        if self.transpose_align not in ("keras", "torch"):
            raise ValueError(f"transpose_align must be 'keras' or 'torch'; got {self.transpose_align!r}")
        if self.init not in ("keras", "torch"):
            raise ValueError(f"init must be 'keras' or 'torch'; got {self.init!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "VAEConfig":
        """The config of a saved run; a field the run predates takes the value it was trained with (LEGACY)."""
        known = {f.name for f in fields(cls)}
        return cls(**(LEGACY | {k: v for k, v in values.items() if k in known}))


# What runs saved before the Keras conventions (issue 17) were trained with: PyTorch's defaults.
LEGACY: dict = {"transpose_align": "torch", "bn_momentum": 0.1, "bn_eps": 1e-5, "init": "torch", "adam_eps": 1e-8}
# The fields that define the network a checkpoint holds (a run may only resume into the same network).
MODEL_FIELDS = ("image_size", "encoder", "dense", "dense_bn", "latent", "decoder_in", "decoder", "decoder_convs",
                "mask_decoder", "use_mask", "transpose_align", "bn_momentum", "bn_eps", "init")


PRESETS: dict[str, VAEConfig] = {
    # The paper: 144x144 CelebA, encoder to 1x1x512, latent 512, decoders from 1x1x512.
    "full": VAEConfig(),
    # The poster's larger model: Dense(1024)+BatchNorm, latent 2048 reshaped to 2x2x512, larger decoders.
    "poster": VAEConfig(encoder=((32, 32), (64, 64), (128, 128), (256, 256), (256,), (256,), (512,)),
                        dense=1024, dense_bn=True, latent=2048, decoder_in=(512, 2),
                        decoder=(512, 256, 256, 128, 64, 32), mask_decoder=(64, 64, 32, 32, 32, 32)),
    # CPU minutes on 64x64 SynthFaces, tuned to reach SSIM 0.80 inside the face mask: the same blocks with
    # one conv per stage, 3 max-pools to 8x8x64, latent 256 projected to 8x8x64, narrow full-size layers;
    # bfloat16 where the CPU has it natively. 3,750 steps of 32 (5 epochs of the 24,000 training faces), the
    # learning rate divided by 3 for the last epoch (masked SSIM 0.798 after 4 epochs, 0.828 after 5).
    # Not the original's model, so it keeps the PyTorch conventions it was tuned with (LEGACY): with Keras'
    # glorot weights at its lr 1e-3 without clipping, the first Adam steps overshoot (tests/test_ddp.py's
    # batch: loss 11.3 -> 14.3-17.9 at step 2, against 9.2 -> 8.9 with PyTorch's initialisation).
    "quick": VAEConfig(image_size=64, crop="center", encoder=((16,), (32,), (64,)), dense=512, latent=256,
                       decoder_in=(64, 8), decoder=(64, 32, 16), decoder_convs=1, mask_decoder=(16, 8, 8),
                       lr=1e-3, lr_min=1e-4, lr_decay_epochs=4, clip_norm=0.0, batch_size=32,
                       epochs=5, epoch_images=24_000, bf16=True, **LEGACY),
}

# The paper's schedule at a GPU's pace (docs/benchmarks.md): 8x the batch, the learning rate (and its floor)
# scaled by sqrt(8) (the square-root rule for Adam; Malladi et al. 2022), the same epochs of 128,000 images
# (so 8x fewer steps, and the /3-every-10-epochs decay at the same epochs), and bf16.
PRESETS["full-large-batch"] = replace(PRESETS["full"], batch_size=256, lr=1e-4 * math.sqrt(8),
                                      lr_min=1e-5 * math.sqrt(8), bf16=True)

# Exactly the released code (training.py as `python training.py` runs it): its default add_losses() is
# 2 - SSIM + 4 MAE (add_MSE=False: no L2) + BCE + Dice + 1e-3 KL, and Adam at a constant 1e-4 (its
# decay_schedule callback is never passed to fit, and its condition lr <= 1e-5 could not fire from 1e-4).
PRESETS["released-code"] = replace(PRESETS["full"], image_losses=("ssim", "l1"), lr_decay=1.0)
# The paper's best row, H9 (SSIM + l2 with the mask; 1-SSIM 0.307) as the released code trains it:
# add_losses(add_MAE=False, add_MSE=True), i.e. 2 - SSIM + 100 MSE, the same constant 1e-4.
PRESETS["paper-h9"] = replace(PRESETS["full"], image_losses=("ssim", "l2"), lr_decay=1.0)


def preset(name: str, **overrides) -> VAEConfig:
    """A copy of a named preset with some fields changed, e.g. ``preset("quick", use_mask=False)``."""
    if name not in PRESETS:
        raise KeyError(f"no VAE preset {name!r}; choose one of {', '.join(PRESETS)}")
    return replace(PRESETS[name], **overrides)


# --- building blocks ----------------------------------------------------------------------------------


_LOG2E = math.log2(math.e)
_ELU_CHUNK = 1 << 17       # elements (512 KB of float32): the five passes over a chunk stay in the L2 cache


def _dense_flat(t: torch.Tensor) -> torch.Tensor:
    """A 1-D view of a dense tensor's elements in memory order (any memory format)."""
    return t.as_strided((t.numel(),), (1,))


class _ELUFunction(torch.autograd.Function):
    """ELU (alpha 1) as max(2^(log2(e) min(x, 0)) - 1, x): equal to elu(x) to float rounding (for x > 0 the
    first term is 0 < x; for x <= 0 it is exp(x) - 1 >= x). PyTorch's own CPU ELU calls a scalar expm1 per
    element (8x slower on AVX-512 in torch 2.14; 14 % of the full step); its vectorised exp2 is 3x faster
    than its exp. The five operations run chunk by chunk, so each chunk is read from and written to memory
    once (a 32 x 32 x 144 x 144 map, one thread: 12 ms, against 24 for the same passes over the whole map
    with exp and 210 for F.elu; 11 ms in place). bfloat16 and float16 are computed in float32 and rounded
    once. The backward is PyTorch's own, from the output as for an in-place ELU."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, inplace: bool) -> torch.Tensor:
        work = x.float() if x.dtype in (torch.bfloat16, torch.float16) else x
        if not (work.is_contiguous() or work.is_contiguous(memory_format=torch.channels_last)):
            work = work.contiguous()
        out = work if inplace else torch.empty_like(work)     # the same strides: the flat views pair up
        scratch = work.new_empty(min(_ELU_CHUNK, work.numel())) if out is work else None
        for xs, ys in zip(_dense_flat(work).split(_ELU_CHUNK), _dense_flat(out).split(_ELU_CHUNK)):
            e = ys if scratch is None else scratch[:len(xs)]   # in place, xs must outlive the clamp
            torch.clamp(xs, max=0, out=e).mul_(_LOG2E).exp2_().sub_(1)
            torch.maximum(e, xs, out=ys)
        if inplace:
            if out is not x:                                  # computed apart (float32 or made dense)
                x.copy_(out)
            ctx.mark_dirty(x)
            out = x
        else:
            out = out.to(x.dtype)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (y,) = ctx.saved_tensors
        return torch.ops.aten.elu_backward(grad, 1.0, 1, 1, True, y), None


class ELU(nn.ELU):
    """nn.ELU(alpha=1), faster on CPUs (`_ELUFunction`); on GPUs, and for other alphas, PyTorch's own. The
    VAE's are in place (after a BatchNorm or a Linear, whose backward does not need their output): no new
    buffer, and 10 % faster."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu" or self.alpha != 1.0:
            return super().forward(x)
        return _ELUFunction.apply(x, self.inplace)


def batch_norm(channels: int, config: VAEConfig | None = None, dims: int = 2) -> nn.Module:
    """BatchNorm with the config's momentum and epsilon (Keras' 0.99 / 1e-3 by default; PyTorch's
    momentum is 1 - Keras')."""
    config = config or VAEConfig()
    norm = nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d
    return norm(channels, eps=config.bn_eps, momentum=config.bn_momentum)


def _with_bias(convolution, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """convolution(x, weight, bias), in float32 with the bias added apart: the same sum, but torch 2.14's CPU
    convolutions are slower with one, forward and backward (batch 32, one thread: a 3 -> 32 convolution at
    144 x 144, 67 ms against 57; the 72 -> 144 transposed stage, 156 against 98). Under autocast (bfloat16)
    the bias stays inside, where it costs less than an addition apart."""
    if bias is None or torch.is_autocast_enabled(x.device.type):
        return convolution(x, weight, bias)
    return convolution(x, weight, None).add_(bias.view(1, -1, 1, 1))


def _shifts(h: int, w: int):
    """For each tap (kh, kw) of a 3x3 'same' kernel, the output rows and columns it reaches and the input rows
    and columns it reads: out[i, j] takes tap (kh, kw) of in[i + kh - 1, j + kw - 1] where that is inside."""
    for kh in range(3):
        for kw in range(3):
            dh, dw = kh - 1, kw - 1
            yield (kh, kw, slice(max(0, -dh), h - max(0, dh)), slice(max(0, -dw), w - max(0, dw)),
                   slice(max(0, dh), h + min(0, dh)), slice(max(0, dw), w + min(0, dw)))


def _pixels_and_taps(x: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A channels_last input as (B H W, C) (a view) and a one-map 3x3 kernel as (9, C), tap-major (kh, kw)."""
    c = x.shape[1]
    return x.permute(0, 2, 3, 1).reshape(-1, c), weight.reshape(c, 9).t()


class _OneMapConv3x3(torch.autograd.Function):
    """A 3x3 'same' convolution (stride 1, no bias) to ONE output map, on a channels_last input, as one matrix
    product and nine shifted sums: the nine taps' responses at every pixel, (9, C) @ (C, B H W), then each
    added at its offset. oneDNN has no fast kernel for one output channel (a 32 -> 1 convolution at 144 x 144,
    batch 32, one thread: 70 ms forward and backward, against 40 this way); the mask decoder ends with one."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        pixels, taps = _pixels_and_taps(x, weight)
        responses = (taps @ pixels.t()).view(3, 3, b, h, w)
        out = x.new_empty(b, 1, h, w)
        plane = out[:, 0].copy_(responses[1, 1])
        for kh, kw, out_h, out_w, in_h, in_w in _shifts(h, w):
            if (kh, kw) != (1, 1):
                plane[:, out_h, out_w] += responses[kh, kw, :, in_h, in_w]
        ctx.save_for_backward(x, weight)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        x, weight = ctx.saved_tensors
        b, c, h, w = x.shape
        grad = grad[:, 0]
        spread = grad.new_zeros(3, 3, b, h, w)                          # each tap's gradient at every pixel
        for kh, kw, out_h, out_w, in_h, in_w in _shifts(h, w):
            spread[kh, kw, :, in_h, in_w] = grad[:, out_h, out_w]
        spread = spread.view(9, -1)
        pixels, taps = _pixels_and_taps(x, weight)
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = (spread.t() @ taps).view(b, h, w, c).permute(0, 3, 1, 2)    # channels_last
        if ctx.needs_input_grad[1]:
            grad_w = (spread @ pixels).t().reshape(weight.shape)
        return grad_x, grad_w


class Conv2d(nn.Conv2d):
    """nn.Conv2d with its bias added apart (`_with_bias`). With `mirror` set it works on mirror images (both
    spatial axes reversed) with its kernel reversed to match, so that mirror-conv(flip(x)) = flip(conv(x))
    for a 'same' convolution: the Keras-aligned Decoder runs on the mirror image (SameConvTranspose2d)."""

    mirror = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.flip(2, 3) if self.mirror else self.weight
        return _with_bias(self._one_map if self._fits_one_map(x) else self._conv_forward, x, weight, self.bias)

    def _fits_one_map(self, x: torch.Tensor) -> bool:
        """Whether `_OneMapConv3x3` computes this convolution (on CPUs, in float32 or float64)."""
        return (self.out_channels == 1 and self.kernel_size == (3, 3) and self.stride == (1, 1)
                and self.padding == (1, 1) and self.dilation == (1, 1) and self.groups == 1
                and x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) and x.dim() == 4
                and not torch.is_autocast_enabled("cpu") and x.is_contiguous(memory_format=torch.channels_last))

    @staticmethod
    def _one_map(x: torch.Tensor, weight: torch.Tensor, bias: None) -> torch.Tensor:
        return _OneMapConv3x3.apply(x, weight)


def conv_block(c_in: int, c_out: int, config: VAEConfig | None = None) -> nn.Sequential:
    """Conv3x3 (same padding) + BatchNorm + ELU, the paper's ConvBlock."""
    return nn.Sequential(Conv2d(c_in, c_out, 3, padding=1), batch_norm(c_out, config), ELU(inplace=True))


class ConvTranspose2d(nn.ConvTranspose2d):
    """nn.ConvTranspose2d with its bias added apart, and `mirror` as Conv2d's (exact when the crop is the same
    on both sides and there is no output padding, as in the paper's "valid" 4 -> 9 stage)."""

    mirror = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _with_bias(self._transposed, x, self.weight, self.bias)

    def _transposed(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        weight = weight.flip(2, 3) if self.mirror else weight
        return nn.functional.conv_transpose2d(x, weight, bias, self.stride, self.padding, self.output_padding)


class SameConvTranspose2d(ConvTranspose2d):
    """Keras' Conv2DTranspose(strides=s, padding="same"): side n -> s n, input pixel j centred on output
    pixel s j + (k - 1) / 2 - (k - s) // 2, i.e. 2j + 1 for k = 3, s = 2.

    TensorFlow computes it as the gradient of a "same" convolution, which pads c = (k - s) // 2 before
    and the rest after: the full transposed convolution (side (n - 1) s + k) cropped to [c, c + s n).
    PyTorch's ConvTranspose2d(padding=1, output_padding=1) crops one pixel at the start instead, so it
    centres input j on 2j: the same parameters, every stage one pixel off.

    Computed without a crop, two ways (the weights are an ordinary ConvTranspose2d's either way: k x k, the
    same state_dict keys):
    - on the image itself: the kernel padded with q zeros at its start moves every output q pixels later,
      and PyTorch's padding p = c + q then crops exactly Keras' window (for k = 3, s = 2: a 4x4 kernel whose
      first row and column are zero, stride 2, padding 1; 1.3x faster on a CPU than the full transposed
      convolution plus a crop, as oneDNN is slow for an odd output side);
    - with `mirror`, on the mirror image: Keras' window is then the full output's [k - s - c, ...), PyTorch's
      own crop of a k x k kernel, reversed (for k = 3, s = 2: padding 1, output_padding 1). No zero taps:
      16/9 fewer multiply-adds than the 4x4 kernel, the reason the Keras-aligned Decoder mirrors its input."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int = 3, stride: int = 2):
        super().__init__(c_in, c_out, kernel_size, stride=stride, padding=0)
        k, s = kernel_size, stride
        c = (k - s) // 2                                   # what TF's "same" crops at the start
        self.shift = max(0, k - s - 2 * c)                 # q zeros before the kernel
        self.crop = c + self.shift                         # PyTorch's padding
        self.extra = s - k + 2 * c + self.shift            # PyTorch's output_padding (0 for k = 3, s = 2)
        self.mirror_crop, self.mirror_extra = k - s - c, k - s - 2 * c   # the same on the mirror image

    def _transposed(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if self.mirror:                                    # (B, C, sn, sn) either way
            return nn.functional.conv_transpose2d(x, weight.flip(2, 3), bias, self.stride, self.mirror_crop,
                                                  self.mirror_extra)
        q = self.shift
        weight = nn.functional.pad(weight, (q, 0, q, 0)) if q else weight   # (C_in, C_out, k+q, k+q)
        return nn.functional.conv_transpose2d(x, weight, bias, self.stride, self.crop, self.extra)


def up_block(c_in: int, c_out: int, odd: bool, config: VAEConfig | None = None) -> nn.Sequential:
    """Transposed conv3x3 stride 2 + BatchNorm + ELU: side n -> 2n ("same"), or 2n + 1 when `odd`, the
    paper's "valid" stage that turns 4 into 9 on the way to 144 (input j centred on 2j + 1 in both
    frameworks). `config.transpose_align` "keras" aligns "same" stages as Keras, "torch" as
    ConvTranspose2d(padding=1, output_padding=1) (runs saved before issue 17)."""
    config = config or VAEConfig()
    if odd:
        up = ConvTranspose2d(c_in, c_out, 3, stride=2, padding=0)
    elif config.transpose_align == "keras":
        up = SameConvTranspose2d(c_in, c_out, 3, stride=2)
    else:
        up = ConvTranspose2d(c_in, c_out, 3, stride=2, padding=1, output_padding=1)
    return nn.Sequential(up, batch_norm(c_out, config), ELU(inplace=True))


def keras_init(module: nn.Module) -> None:
    """Keras' defaults, applied with `module.apply`: glorot_uniform kernels (Dense, Conv2D and
    Conv2DTranspose alike: U(-a, a), a = sqrt(6 / (fan_in + fan_out)), the fans including the kernel's
    receptive field) and zero biases. BatchNorm starts at gamma 1, beta 0 in both frameworks."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def stage_sides(image_size: int, stages: int) -> list[int]:
    """Sides after each 2x2 max-pool (floor): 144, 72, 36, 18, 9, 4, 2, 1."""
    sides = [image_size]
    for _ in range(stages):
        sides.append(sides[-1] // 2)
    return sides


# --- the networks -------------------------------------------------------------------------------------


class EncoderHead(nn.Module):
    """Features (B, F) -> (mu, logvar): two independent affine maps. logvar has no activation, so any
    real value (any positive variance) is reachable."""

    def __init__(self, in_features: int, latent: int):
        super().__init__()
        self.mu = nn.Linear(in_features, latent)
        self.logvar = nn.Linear(in_features, latent)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.mu(h), self.logvar(h)


class Encoder(nn.Module):
    """x (B, 3, S, S) -> (mu, logvar), each (B, latent). `head` replaces the EncoderHead (lesson 01 plugs
    in the learner's)."""

    def __init__(self, config: VAEConfig, head: nn.Module | None = None):
        super().__init__()
        layers, c = [], 3
        for widths in config.encoder:
            for width in widths:
                layers.append(conv_block(c, width, config))
                c = width
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        side = stage_sides(config.image_size, len(config.encoder))[-1]
        if side < 1:
            raise ValueError(f"{len(config.encoder)} max-pools leave nothing of a {config.image_size}px image")
        dense = [nn.Linear(c * side * side, config.dense)]
        if config.dense_bn:
            dense.append(batch_norm(config.dense, config, dims=1))
        self.dense = nn.Sequential(*dense, ELU(inplace=True))
        self.head = head if head is not None else EncoderHead(config.dense, config.latent)
        if config.init == "keras":
            self.apply(keras_init)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.features(x).flatten(1)         # (B, C * side * side), 512 for the paper
        h = self.dense(h)                       # (B, dense)
        return self.head(h)                     # (mu, logvar), (B, latent) each


def reparameterise(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """z = mu + sigma * eps with sigma = exp(logvar / 2): a sample of N(mu, sigma^2) through which
    gradients reach mu and logvar (the noise eps carries no parameters)."""
    return mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)


class Decoder(nn.Module):
    """z (B, latent) -> (B, channels, S, S) in [0, 1]: reshape (or project) to (c, s, s), then one
    transposed-conv stage per entry of `widths`, each doubling the side, then a sigmoid conv3x3."""

    def __init__(self, config: VAEConfig, widths: tuple[int, ...], channels: int):
        super().__init__()
        c0, side = config.decoder_in
        if c0 * side * side == config.latent:
            self.project = nn.Identity()        # the paper: Reshape((1, 1, 512)) of z itself
        else:
            self.project = nn.Sequential(nn.Linear(config.latent, c0 * side * side), ELU(inplace=True))
        self.start = (c0, side, side)
        targets = stage_sides(config.image_size, len(widths))[::-1]   # e.g. 1, 2, 4, 9, 18, 36, 72, 144
        if targets[0] != side:
            raise ValueError(f"{len(widths)} decoder stages from side {side} cannot reach {config.image_size}: "
                             f"they would start from side {targets[0]}")
        layers, c = [], c0
        for width, before, after in zip(widths, targets[:-1], targets[1:]):
            layers.append(up_block(c, width, odd=after == 2 * before + 1, config=config))
            layers.extend(conv_block(width, width, config) for _ in range(config.decoder_convs))
            c = width
        layers += [Conv2d(c, channels, 3, padding=1), nn.Sigmoid()]
        self.net = nn.Sequential(*layers)
        # Keras-aligned stages run fastest on the mirror image (SameConvTranspose2d): so does every layer
        self.mirror = config.transpose_align == "keras"
        for layer in self.net.modules():
            if isinstance(layer, (Conv2d, ConvTranspose2d)):
                layer.mirror = self.mirror
        if config.init == "keras":
            self.apply(keras_init)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.project(z).view(len(z), *self.start)   # (B, c0, s, s)
        if self.mirror:                                 # mirrored in, every layer on the mirror image, back
            return self.net(h.flip(2, 3)).flip(2, 3)
        return self.net(h)                              # (B, channels, S, S)


class VAEOutput(NamedTuple):
    pred: torch.Tensor                  # (B, 3, S, S) the image decoder's output
    mask: torch.Tensor | None           # (B, 1, S, S) predicted face+hair+hat mask (None without a mask branch)
    mu: torch.Tensor                    # (B, latent)
    logvar: torch.Tensor                # (B, latent)
    z: torch.Tensor                     # (B, latent) the code that was decoded


class FaceVAE(nn.Module):
    """Encoder, reparameterisation, image decoder and (optionally) mask decoder. `head` and `sampler`
    replace the encoder head and the reparameterisation (the lessons plug in the learner's)."""

    def __init__(self, config: VAEConfig | None = None, head: nn.Module | None = None, sampler=None):
        super().__init__()
        self.config = config = config or VAEConfig()
        self.sampler = sampler or reparameterise
        self.encoder = Encoder(config, head)
        self.image_decoder = Decoder(config, config.decoder, 3)
        self.mask_decoder = Decoder(config, config.mask_decoder, 1) if config.use_mask else None

    def decode(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.image_decoder(z), self.mask_decoder(z) if self.mask_decoder is not None else None

    def forward(self, x: torch.Tensor, sample: bool | None = None) -> VAEOutput:
        """Encode and decode; `sample` (default: in training mode) draws z, otherwise z = mu."""
        mu, logvar = self.encoder(x)
        sample = self.training if sample is None else sample
        z = self.sampler(mu, logvar) if sample else mu
        pred, mask = self.decode(z)
        return VAEOutput(pred, mask, mu, logvar, z)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, sample: bool = False) -> dict[str, torch.Tensor]:
        """Inference as in the paper's predictor: z = mu, and the prediction pasted onto the input with the
        *predicted* mask. Returns "out" (the final image), "pred" and, with a mask branch, "mask"."""
        out = self(x, sample=sample)
        result = {"pred": out.pred, "out": out.pred}
        if out.mask is not None:
            result["mask"] = out.mask
            result["out"] = L.compose(out.pred, x, out.mask)
        return result


def parameter_count(module: nn.Module, with_buffers: bool = False) -> int:
    """Trainable parameters; with_buffers adds BatchNorm running statistics, which Keras counts in its
    'Total params' (so the poster's 16,630,564 compares with this form)."""
    n = sum(p.numel() for p in module.parameters())
    if with_buffers:
        n += sum(b.numel() for name, b in module.named_buffers() if not name.endswith("num_batches_tracked"))
    return n


# --- the losses of one step -----------------------------------------------------------------------------


def as_float32(out: VAEOutput) -> VAEOutput:
    """The outputs in float32, for losses computed outside a bfloat16 autocast region."""
    return out._replace(**{k: v.float() for k, v in out._asdict().items() if v is not None})


def vae_losses(config: VAEConfig, out: VAEOutput, x: torch.Tensor, mask: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """Every term of the training loss and their weighted sum "loss". With a mask branch the image losses
    compare x with the composition under the ground-truth mask, so they only see face pixels."""
    with torch.autocast(device_type=x.device.type, enabled=False):   # SSIM's E[x^2] - E[x]^2 needs float32
        return _vae_losses(config, as_float32(out), x.float(), None if mask is None else mask.float())


def _vae_losses(config: VAEConfig, out: VAEOutput, x: torch.Tensor, mask: torch.Tensor | None) -> dict[str, torch.Tensor]:
    terms: dict[str, torch.Tensor] = {}
    if config.use_mask:
        if mask is None:
            raise ValueError("this VAE trains with masks (use_mask=True) but the batch has none")
        image = L.compose(out.pred, x, mask)     # (B, 3, S, S): prediction on the face, input elsewhere
    else:
        image = out.pred
    total = x.new_zeros(())
    if "ssim" in config.image_losses:
        terms["ssim"] = L.ssim_loss(image, x, window_size=config.ssim_window)
        total = total + config.ssim_weight * terms["ssim"]
    if "l1" in config.image_losses:
        terms["l1"] = L.mae(image, x)
        total = total + config.l1_weight * terms["l1"]
    if "l2" in config.image_losses:
        terms["l2"] = L.mse(image, x)
        total = total + config.l2_weight * terms["l2"]
    if config.use_mask:
        terms["bce"] = L.bce(out.mask, mask)
        terms["dice"] = L.dice_loss(out.mask, mask)
        total = total + config.mask_weight * (terms["bce"] + terms["dice"])
    terms["kl"] = L.kl_divergence(out.mu, out.logvar)
    kl = terms["kl"] / out.mu.shape[1] if config.kl_average_dims else terms["kl"]
    terms["loss"] = total + config.kl_weight * kl
    return terms


def lr_factor(config: VAEConfig, step: int) -> float:
    """Learning-rate multiplier after `step` steps: divided by `lr_decay` every `lr_decay_epochs` epochs,
    never below lr_min / lr (the paper: 1e-4, / 3 every 10 epochs, down to 1e-5)."""
    steps_per_epoch = max(1, config.epoch_images // config.batch_size)
    drops = math.floor(step / (config.lr_decay_epochs * steps_per_epoch))
    return max(config.lr_decay ** -drops, config.lr_min / config.lr)


def clip_per_parameter(parameters, max_norm: float) -> None:
    """Keras' clipnorm: each parameter's gradient is rescaled to norm <= max_norm on its own (unlike
    torch.nn.utils.clip_grad_norm_, which clips the norm of all gradients together). All gradients at once
    with torch's multi-tensor (foreach) kernels: a handful of launches instead of two per parameter."""
    if max_norm <= 0:
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    norms = torch._foreach_norm(grads)
    torch._foreach_add_(norms, 1e-12)
    scales = torch._foreach_reciprocal(norms)
    torch._foreach_mul_(scales, max_norm)
    torch._foreach_clamp_max_(scales, 1.0)
    torch._foreach_mul_(grads, scales)
