"""Diagrams drawn by code (matplotlib boxes and arrows), so that they stay true to the models they show:
the VAE's architecture is read from its VAEConfig, the reparameterisation and the ELBO from their
equations. Lessons call these from a notebook cell; a new lesson draws its own model with `flow`.

    from faceedu.viz_diagrams import flow, vae_architecture, reparameterisation, elbo
    vae_architecture(VAEConfig.quick())          # returns the Figure (shown inline in a notebook)
    flow([("x", "image\\n3x64x64"), ("G", "generator")], [("x", "G", "")], title="...")
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import matplotlib.pyplot as plt
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

__all__ = ["flow", "vae_architecture", "reparameterisation", "elbo"]

COLOURS = {"data": "#dbe9f6", "net": "#fde2c8", "latent": "#e3d7f4", "loss": "#f8d0d0", "op": "#e2f0d9",
           "plain": "#f2f2f2"}


def flow(boxes: Sequence[tuple[Any, ...]], arrows: Sequence[tuple[str, str, str]], *, title: str = "",
         size: tuple[float, float] = (11, 3.4), ax: Any = None) -> Any:
    """Draw boxes and arrows. A box is (key, text, x, y[, kind[, width]]) in axis units (0..10 across,
    0..3 up), kind one of COLOURS; an arrow is (from key, to key, label). Returns the Figure."""
    if ax is None:
        fig, ax = plt.subplots(figsize=size)
    else:
        fig = ax.figure
    ax.set_xlim(0, 10)
    ax.set_ylim(0, 3)
    ax.axis("off")
    centres: dict[str, tuple[float, float, float, float]] = {}
    for box in boxes:
        key, text, x, y = box[:4]
        kind = box[4] if len(box) > 4 else "plain"
        width = box[5] if len(box) > 5 else 1.15
        height = 0.35 + 0.22 * text.count("\n")
        ax.add_patch(FancyBboxPatch((x - width / 2, y - height / 2), width, height,
                                    boxstyle="round,pad=0.04,rounding_size=0.08", fc=COLOURS[kind], ec="#555555", lw=1))
        ax.text(x, y, text, ha="center", va="center", fontsize=8.5)
        centres[key] = (x, y, width, height)
    for start, end, label in arrows:
        x0, y0, w0, h0 = centres[start]
        x1, y1, w1, h1 = centres[end]
        # leave each box at the side facing the other one
        if abs(x1 - x0) >= abs(y1 - y0):
            p0 = (x0 + (w0 / 2 + 0.05) * (1 if x1 > x0 else -1), y0)
            p1 = (x1 - (w1 / 2 + 0.05) * (1 if x1 > x0 else -1), y1)
        else:
            p0 = (x0, y0 + (h0 / 2 + 0.05) * (1 if y1 > y0 else -1))
            p1 = (x1, y1 - (h1 / 2 + 0.05) * (1 if y1 > y0 else -1))
        ax.add_patch(FancyArrowPatch(p0, p1, arrowstyle="-|>", mutation_scale=11, color="#333333", lw=1))
        if label:
            ax.text((p0[0] + p1[0]) / 2, (p0[1] + p1[1]) / 2 + 0.12, label, ha="center", va="bottom",
                    fontsize=7.5, color="#333333")
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def _stages(image_size: int, stages: int) -> list[int]:
    sides = [image_size]
    for _ in range(stages):
        sides.append(sides[-1] // 2)
    return sides


def vae_architecture(config: Any, *, with_mask: bool | None = None) -> Any:
    """The face VAE of lessons 01-02 as its VAEConfig builds it: encoder stages (widths and sides), the
    dense layer, mu and logvar, the sampler, the image decoder and (if the config has one) the mask
    decoder, and the paste that composes the output."""
    with_mask = config.use_mask if with_mask is None else with_mask
    sides = _stages(config.image_size, len(config.encoder))
    enc = "\n".join(f"{'+'.join(str(w) for w in widths)} @ {side}px" for widths, side in zip(config.encoder, sides))
    enc += f"\n-> {config.encoder[-1][-1]} x {sides[len(config.encoder)]}px"
    final = config.decoder_in[1] * 2 ** len(config.decoder)
    dec = "widths " + ", ".join(str(w) for w in config.decoder) + f"\n{config.decoder_in[1]}px -> {final}px (x2 each)"
    boxes = [
        ("x", f"face x\n3x{config.image_size}x{config.image_size}", 0.7, 1.5, "data", 1.1),
        ("enc", f"encoder\n(conv3x3+BN+ELU,\nmax-pool)\n{enc}", 2.25, 1.5, "net", 1.55),
        ("dense", f"dense {config.dense}\n+ ELU", 3.85, 1.5, "net", 1.0),
        ("mu", f"mu ({config.latent})", 5.0, 2.05, "latent", 1.0),
        ("lv", f"logvar ({config.latent})", 5.0, 0.95, "latent", 1.0),
        ("z", "z = mu +\nsigma * eps", 6.25, 1.5, "op", 1.05),
        ("dec", f"image decoder (transposed conv)\n{dec}", 7.75, 2.3 if with_mask else 1.5, "net", 1.9),
        ("pred", f"pred\n3x{config.image_size}x{config.image_size}", 9.4, 2.3 if with_mask else 1.5, "data", 0.95),
    ]
    arrows = [("x", "enc", ""), ("enc", "dense", ""), ("dense", "mu", ""), ("dense", "lv", ""),
              ("mu", "z", ""), ("lv", "z", ""), ("z", "dec", ""), ("dec", "pred", "")]
    if with_mask:
        mdec = "mask decoder (same layout)\nwidths " + ", ".join(str(w) for w in config.mask_decoder) + "\nsigmoid, 1 channel"
        boxes += [("mdec", mdec, 7.75, 0.7, "net", 1.9), ("mask", "mask_hat\n1x{0}x{0}".format(config.image_size), 9.4, 0.7, "data", 0.95)]
        arrows += [("z", "mdec", ""), ("mdec", "mask", "")]
    title = (f"The face VAE ({sum(len(w) for w in config.encoder)} encoder convolutions, latent {config.latent}"
             + (", with the mask decoder" if with_mask else "") + ")")
    return flow(boxes, arrows, title=title, size=(12, 3.8))


def reparameterisation() -> Any:
    """z = mu + sigma * eps: the noise enters from the side, so gradients flow through mu and sigma."""
    boxes = [("mu", "mu", 1.0, 2.2, "latent", 0.9), ("lv", "logvar", 1.0, 0.8, "latent", 0.9),
             ("sig", "sigma =\nexp(logvar / 2)", 3.0, 0.8, "op", 1.3), ("eps", "eps ~ N(0, I)\n(no parameters)", 5.0, 0.45, "plain", 1.5),
             ("mul", "sigma * eps", 5.0, 1.4, "op", 1.1), ("add", "z = mu + sigma * eps", 7.0, 1.8, "op", 1.7),
             ("dec", "decoder", 9.0, 1.8, "net", 0.9)]
    arrows = [("lv", "sig", ""), ("sig", "mul", ""), ("eps", "mul", ""), ("mu", "add", "dz/dmu = 1"),
              ("mul", "add", ""), ("add", "dec", "")]
    return flow(boxes, arrows, title="The reparameterisation trick: gradients reach mu and logvar; the randomness is eps's",
                size=(11, 3.0))


def elbo(kl_weight: float | None = None) -> Any:
    """The negative ELBO as a sum: a reconstruction term (decoder) and a KL term (encoder vs the prior)."""
    weight = "beta" if kl_weight is None else f"{kl_weight:g}"
    boxes = [("x", "x", 0.6, 1.5, "data", 0.6), ("q", "q(z|x) = N(mu, sigma^2)\n(encoder)", 2.4, 1.5, "net", 1.9),
             ("z", "z ~ q(z|x)", 4.4, 2.2, "latent", 1.1), ("p", "p(x|z)\n(decoder)", 6.1, 2.2, "net", 1.1),
             ("rec", "reconstruction\n-log p(x|z)", 8.3, 2.2, "loss", 1.5),
             ("prior", "prior p(z) = N(0, I)", 4.4, 0.65, "plain", 1.6),
             ("kl", f"{weight} x KL(q(z|x) || p(z))\n= -1/2 sum(1 + logvar - mu^2 - e^logvar)", 7.6, 0.65, "loss", 3.0)]
    arrows = [("x", "q", ""), ("q", "z", "sample"), ("z", "p", ""), ("p", "rec", ""), ("q", "kl", "compare"),
              ("prior", "kl", "")]
    fig = flow(boxes, arrows, title="negative ELBO = reconstruction + KL: the first asks for faithful faces, "
                                    "the second for codes that look like the prior", size=(11, 3.0))
    return fig
