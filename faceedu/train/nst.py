"""Neural style transfer as commands: `faceedu nst`, FacePaint's experiment (does an expression travel as
style?), the docs' figures, and `faceedu bench`'s rows. In the bench, one L-BFGS iteration (one loss evaluation: a forward and a
backward pass of the feature network through conv5_1) is one bench step on a batch of one image, so the
bench's images/s are iterations/s and 300 iterations take 300 / (images/s) seconds. Nothing is trained:
the pixels are the parameters (faceedu.models.nst)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from faceedu.models.nst import (NSTConfig, NSTInputError, StyleTransfer, content_mask, plot_losses, prepare,
                                read_image, save_image)

BENCH_SIZES = {"quick": (128, 256)}     # the lesson's goal (128 px) and the reference size (256 px)


class _Pixels(nn.Module):
    def __init__(self, size: int):
        super().__init__()
        self.x = nn.Parameter(torch.rand(1, 3, size, size))


class NSTBenchTask:
    """The Task interface of the shared loop around Gatys' objective: `step` is one L-BFGS iteration."""

    def __init__(self, size: int):
        from faceedu.models.features import load_feature_network

        self.size = size
        self.pixels = _Pixels(size)
        self.net = load_feature_network(verbose=False)
        self.modules = {"pixels": self.pixels, "features": self.net}
        self.optimizers = {"lbfgs": torch.optim.LBFGS(self.pixels.parameters(), lr=1.0, max_iter=1, history_size=100,
                                                      tolerance_grad=-1.0, tolerance_change=-1.0)}
        self.schedulers: dict = {}
        self.transfer: StyleTransfer | None = None

    def step(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, float]:
        if self.transfer is None or self.transfer.content.device != batch["content"].device:
            self.transfer = StyleTransfer(self.net, batch["content"], batch["style"], None, NSTConfig(size=self.size))
        optimizer = self.optimizers["lbfgs"]

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            loss = self.transfer.loss(self.pixels.x)
            loss.backward()
            return loss

        loss = optimizer.step(closure)
        return {"loss": float(loss.detach())}

    def samples(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.pixels.x.detach().clamp(0, 1)


def bench_tasks(preset_name: str = "quick") -> dict[str, tuple[NSTBenchTask, dict]]:
    """For `faceedu bench`: Gatys' L-BFGS at 128 and 256 pixels on random content and style images."""
    sizes = BENCH_SIZES[preset_name]                   # KeyError for a preset NST does not have
    g = torch.Generator().manual_seed(0)
    tasks = {}
    for size in sizes:
        batch = {"content": torch.rand(1, 3, size, size, generator=g), "style": torch.rand(1, 3, size, size, generator=g)}
        tasks[f"nst-{size}"] = (NSTBenchTask(size), batch)
    return tasks


# --- `faceedu nst` ------------------------------------------------------------------------------------------

def command_nst(args) -> int:
    """`faceedu nst --content IMG --style IMG [--mask ...] [--size N] [--steps N] [--optimizer ...] --out OUT.png`."""
    import sys

    try:
        config = NSTConfig(size=args.size, steps=args.steps, optimizer=args.optimizer, mask=args.mask,
                           init=args.init, style_weight=args.style_weight, content_weight=args.content_weight,
                           tv_weight=args.tv_weight, lr=args.lr, seed=args.seed)
        content_image = read_image(args.content, "content")
        style_image = read_image(args.style, "style")
        content = prepare(content_image, config.size)
        style = prepare(style_image, config.size)
        mask = content_mask(Path(args.content), content_image, config.mask, config.size)
    except (NSTInputError, ValueError) as error:
        print(f"faceedu nst: {error}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    from faceedu.models.features import load_feature_network

    net = load_feature_network()
    transfer = StyleTransfer(net, content, style, mask, config)
    print(f"Style transfer at {config.size}x{config.size}, {config.steps} {config.optimizer} steps, mask {config.mask}, "
          f"alpha {config.content_weight:g}, beta {transfer.style_weight:g}, tv {transfer.tv_weight:g}")
    cpu = time.process_time()
    result = transfer.run(progress=not args.no_progress)
    cpu = time.process_time() - cpu
    out = save_image(result.image, args.out)
    plot = plot_losses(result.history, out.with_name(out.stem + "_losses.png"),
                       f"{Path(args.content).name} + style of {Path(args.style).name} ({config.mask} mask)")
    steps = len(result.history["total"])
    print(f"{steps} loss evaluations in {result.seconds:.1f} s ({steps / result.seconds:.2f} steps/s, "
          f"{torch.get_num_threads()} threads); total loss {result.history['total'][0]:.4g} -> "
          f"{result.history['total'][-1]:.4g} ({result.drop:.1f}x lower); {cpu:.1f} s of CPU time (on a busy machine "
          f"the wall time is longer, on idle cores about CPU time / threads)")
    if mask is not None:
        outside = (mask == 0).expand_as(content)
        change = float((result.image - content).abs()[outside].max()) if bool(outside.any()) else 0.0
        print(f"Largest change outside the {config.mask} mask: {change * 255:.2f}/255")
    print(f"Wrote {out} and {plot}")
    return 0



# --- FacePaint's negative finding: an expression does not travel as style ----------------------------------

def expression_as_style(root: Path | str, size: int = 64, steps: int = 100, split: str = "test",
                        limit: int | None = None, mask: str = "none", net: nn.Module | None = None,
                        verbose: bool = True, style_expression: str = "HA") -> dict:
    """Neutral JAFFE-style faces as content, a happy face of the same subject as style (the most favourable
    pairing: only the expression differs); the expression judge reads every result. FacePaint (2019) saw
    that style transfer does not carry the expression; this measures how often the judge says "happy"
    afterwards, next to how often it says so of the neutral and the happy originals. `mask` "face" needs
    label maps, which JAFFE lacks: only "none" is offered. `style_expression="NE"` is the control: another
    neutral face of the same subject as the style image (what the texture changes alone make the judge say)."""
    from faceedu.data.expressions import load_expression_tensors
    from faceedu.metrics import expression_transfer_rate
    from faceedu.models.judges import load_judges, trained_on

    if mask != "none":
        raise ValueError("JAFFE has no label maps: the expression experiment styles the whole image (mask 'none').")
    faces = load_expression_tensors(root, ("HA", "NE"), split, size=size, channels=3)
    neutral, happy = faces.floats("NE"), faces.floats("HA")
    if style_expression == "HA":
        happy_of = {s: happy[i] for i, s in enumerate(faces.subjects["HA"])}
        pairs = [(neutral[i], happy_of[s]) for i, s in enumerate(faces.subjects["NE"]) if s in happy_of]
    else:                              # the control: another neutral face of the same subject
        subjects = faces.subjects["NE"]
        pairs = [(neutral[i], neutral[j]) for i, s in enumerate(subjects)
                 for j in [next((j for j in range(len(subjects)) if subjects[j] == s and j != i), None)] if j is not None]
    pairs = pairs[:limit] if limit else pairs
    if not pairs:
        raise ValueError(f"no subject of the {split} split has both a happy and a neutral face in {root}.")
    net = net if net is not None else __import__("faceedu.models.features", fromlist=["x"]).load_feature_network(verbose=verbose)
    judge = load_judges(kinds=("expression",)).require("expression")
    results, drops, start = [], [], time.perf_counter()
    config = NSTConfig(size=size, steps=steps)
    for k, (content, style) in enumerate(pairs):
        out = StyleTransfer(net, content[None].contiguous(), style[None].contiguous(), None, config).run()
        results.append(out.image[0])
        drops.append(out.drop)
        if verbose:
            print(f"  face {k + 1}/{len(pairs)}: loss {out.drop:.0f}x lower in {out.seconds:.1f} s", flush=True)
    styled = torch.stack(results)
    contents = torch.stack([c for c, _ in pairs])
    styles = torch.stack([s for _, s in pairs])
    report = {"faces": len(pairs), "size": size, "steps": steps, "split": split, "network": getattr(net, "label", ""),
              "judge_trained_on": trained_on(judge).get("dataset", "unknown"),
              "happy_on_neutral_content": expression_transfer_rate(judge, contents, "HA"),
              "happy_on_happy_style": expression_transfer_rate(judge, styles, "HA"),
              "style_expression": style_expression,
              "happy_on_styled": expression_transfer_rate(judge, styled, "HA"),
              "said_on_styled": [judge.expressions[int(k)] for k in judge.predict(styled)],
              "neutral_on_styled": expression_transfer_rate(judge, styled, "NE"),
              "median_loss_drop": float(np.median(drops)), "seconds": time.perf_counter() - start}
    report["images"] = (contents, styles, styled)
    return report


# --- the docs' figures: `python -m faceedu.train.nst docs/assets/07_nst` -----------------------------------

def docs_figures(out: Path | str, root: Path | str = "datasets/synthfaces", size: int = 128, steps: int = 100,
                 face: int = 7) -> list[Path]:
    """One SynthFaces face styled by three skimage textures, and by one of them inside each mask."""
    from PIL import Image
    from skimage import data

    from faceedu.models.features import load_feature_network

    out = Path(out)
    net = load_feature_network()
    path = Path(root) / "celeba" / "img_align_celeba" / f"{face:06d}.jpg"
    image = read_image(path, "content")
    content = prepare(image, size)
    styles = {"tissue": data.immunohistochemistry(), "Hubble deep field": data.hubble_deep_field(), "coffee": data.coffee()}
    styles = {k: prepare(Image.fromarray(v), size) for k, v in styles.items()}
    rows = []
    for name, style in styles.items():
        result = StyleTransfer(net, content, style, None, NSTConfig(size=size, steps=steps)).run()
        rows.append((f"style: {name}", style, result))
        print(f"{name}: {result.drop:.0f}x lower in {result.seconds:.0f} s", flush=True)
    masked = []
    for region in ("face", "hair", "background"):
        mask = content_mask(path, image, region, size)
        result = StyleTransfer(net, content, styles["tissue"], mask, NSTConfig(size=size, steps=steps, mask=region)).run()
        change = float((result.image - content).abs()[(mask == 0).expand_as(content)].max()) * 255
        masked.append((region, mask, result, change))
        print(f"{region}: {result.drop:.0f}x lower, largest change outside {change:.2f}/255", flush=True)
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from faceedu.viz import save_figure

    def show(ax, picture, title):
        ax.imshow(picture[0].permute(1, 2, 0).clamp(0, 1).numpy() if picture.shape[1] == 3 else picture[0, 0].numpy(),
                  cmap=None if picture.shape[1] == 3 else "gray", vmin=0, vmax=1)
        ax.set_title(title, fontsize=8)
        ax.axis("off")

    fig, axes = plt.subplots(2, len(rows) + 1, figsize=(2.2 * (len(rows) + 1), 4.6))
    show(axes[0, 0], content, "content (SynthFaces)")
    axes[1, 0].axis("off")
    for k, (title, style, result) in enumerate(rows, 1):
        show(axes[0, k], style, title)
        show(axes[1, k], result.image, f"{result.drop:.0f}x lower loss")
    fig.suptitle(f"Gatys et al. on {net.label}: {size} px, {steps} L-BFGS steps, no mask", fontsize=9)
    fig.tight_layout()
    paths = [save_figure(fig, out / "styles.png", dpi=100)]
    fig, axes = plt.subplots(2, 3, figsize=(6.6, 4.6))
    for k, (region, mask, result, change) in enumerate(masked):
        show(axes[0, k], mask, f"{region} mask ({float(mask.mean()):.0%})")
        show(axes[1, k], result.image, f"outside changed <= {change:.2f}/255")
    fig.suptitle(f"Style (tissue) inside a mask from the label map: {size} px, {steps} L-BFGS steps", fontsize=9)
    fig.tight_layout()
    paths.append(save_figure(fig, out / "masks.png", dpi=100))
    paths.append(plot_losses(masked[0][2].history, out / "losses_face.png", "losses, tissue style inside the face mask"))
    return paths


if __name__ == "__main__":
    import sys

    torch.set_num_threads(1)
    for written in docs_figures(sys.argv[1] if len(sys.argv) > 1 else "docs/assets/07_nst"):
        print(f"Wrote {written}")
