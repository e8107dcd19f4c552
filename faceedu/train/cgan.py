"""Training the conditional GAN on the shared loop: the Task (one alternating step, `gan_step`), the data
(faces in [-1, 1] for the tanh generator, with the chosen attributes checked against the data), the
measurements (the attribute judge on every combination, diversity and the Fréchet distance in the judge's
feature space) and `faceedu train cgan`."""

from __future__ import annotations

import copy
import difflib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from faceedu.models.cgan import (AttributeClassifier, CGANConfig, Generator, combinations, discriminator, gan_step,
                                 parameter_count, preset)
from faceedu.train.loop import (LoopConfig, data_root, loop_from_args, read_run, recompute_batchnorm, train,
                                update_ema)

# --- data -----------------------------------------------------------------------------------------------


class AttributeFaces(Dataset):
    """Faces with the chosen attributes only: items {"image": (3, S, S) in [0, 1], "attr": (k,) of 0/1}."""

    def __init__(self, faces: Any, attrs: tuple[str, ...], balance: bool = False, seed: int = 0):
        self.faces, self.attrs = faces, tuple(attrs)
        self.columns = [faces.attr_names.index(a) for a in attrs]
        self.attr = faces.attr[:, self.columns].float()
        self.order = balanced_order(self.attr, seed) if balance else None

    def __len__(self) -> int:
        return len(self.faces)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        index = int(self.order[index]) if self.order is not None else index
        return {"image": self.faces.images[index].float().div(255), "attr": self.attr[index]}

    def images(self, limit: int | None = None) -> torch.Tensor:
        """(N, 3, S, S) floats in [0, 1], the first `limit` of the split as it is (never resampled)."""
        return self.faces.images[:limit].float().div(255)


def balanced_order(attr: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """(N,) indices drawn so that every attribute combination present in `attr` (N, k) fills an equal share
    (rare ones repeated, common ones subsampled), in a fixed order: an epoch stays N items."""
    g = torch.Generator().manual_seed(seed)
    codes = (attr.long() * (2 ** torch.arange(attr.shape[1]))).sum(1)
    groups = [torch.nonzero(codes == c).flatten() for c in codes.unique()]
    share = -(-len(attr) // len(groups))
    picks = [group[torch.randint(0, len(group), (share,), generator=g)] for group in groups]
    return torch.cat(picks)[torch.randperm(share * len(groups), generator=g)][:len(attr)]


def check_attributes(attrs: tuple[str, ...] | list[str], names: list[str], attr: torch.Tensor,
                     source: str = "the data") -> None:
    """Refuse attribute names the data lacks (with the closest valid names) and attributes that never vary
    in it (a cGAN cannot learn what it never sees both ways: SynthFaces writes 15 of CelebA's 40 as all -1)."""
    if len(set(attrs)) != len(attrs):
        raise ValueError(f"--attrs lists an attribute twice: {', '.join(attrs)}")
    for name in attrs:
        if name not in names:
            close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
            hint = f"did you mean {', '.join(map(repr, close))}?" if close else "valid: " + ", ".join(names)
            raise ValueError(f"Unknown attribute {name!r}: {hint}")
        column = attr[:, names.index(name)]
        if bool((column == column[0]).all()):
            value = "present" if float(column[0]) > 0 else "absent"
            raise ValueError(f"Attribute {name!r} is {value} in every image of {source}: it is constant, so a "
                             f"conditional GAN has nothing to learn from it. Pick attributes that vary "
                             f"(on SynthFaces: faceedu.data.synthfaces.SYNTH_ATTRIBUTES).")


def load_data(root: Path | str, split: str, config: CGANConfig, limit: int | None = None) -> AttributeFaces:
    """The split as in-memory faces at the model's size with the config's attributes (checked)."""
    from faceedu.data.tensors import load_face_tensors

    faces = load_face_tensors(root, split=split, size=config.image_size, masks=False, crop="center", limit=limit)
    check_attributes(config.attrs, faces.attr_names, faces.attr, f"the {split} split under {root}")
    return AttributeFaces(faces, config.attrs, balance=config.balance and split == "train")


# --- the task -------------------------------------------------------------------------------------------


class CGANTask:
    """G and D (and the auxiliary classifier C when the config has one) with their own Adam (DCGAN: 2e-4,
    beta1 0.5; C at D's rate); one alternating step per batch."""

    def __init__(self, config: CGANConfig, seed: int = 0):
        torch.manual_seed(seed)
        self.config = config
        self.G, self.D = Generator(config), discriminator(config)
        self.C = AttributeClassifier(config) if config.aux_classifier > 0 else None
        if config.channels_last:
            for module in (self.G, self.D, self.C):
                if module is not None:
                    module.to(memory_format=torch.channels_last)     # in place
        betas = (config.beta1, config.beta2)
        self.optimizers = {"G": torch.optim.Adam(self.G.parameters(), lr=config.lr_g, betas=betas),
                           "D": torch.optim.Adam(self.D.parameters(), lr=config.lr_d, betas=betas)}
        if self.C is not None:
            self.optimizers["C"] = torch.optim.Adam(self.C.parameters(), lr=config.lr_d, betas=betas)
        self.schedulers: dict[str, Any] = {}
        # G_ema: a moving average of G's weights (Karras et al. 2018; Yazici et al. 2019) that draws the faces;
        # it smooths the oscillation of the adversarial game. Not in the seed: off unless config.g_ema > 0.
        self.G_ema = copy.deepcopy(self.G).requires_grad_(False) if config.g_ema > 0 else None
        g = torch.Generator().manual_seed(1234)                      # the fixed z of every sample grid
        self.grid_y = combinations(len(config.attrs))[:16]
        self.grid_z = torch.randn(8, config.z_dim, generator=g)

    @property
    def modules(self) -> dict[str, torch.nn.Module]:
        return ({"G": self.G, "D": self.D} | ({"G_ema": self.G_ema} if self.G_ema is not None else {})
                | ({"C": self.C} if self.C is not None else {}))

    def step(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        x = batch["image"] * 2 - 1                                    # [0, 1] -> [-1, 1], the range of tanh
        if self.config.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        losses = gan_step(_plain(self.G), self.D, self.optimizers["G"], self.optimizers["D"], x, batch["attr"], self.config,
                          C=self.C, opt_c=self.optimizers.get("C"))
        if self.G_ema is not None:
            update_ema(self.G_ema, _plain(self.G), self.config.g_ema, step)
        return losses

    def samples(self, batch: Any) -> torch.Tensor:
        """A grid: one row per attribute combination (up to 16), the same 8 z in every row."""
        return combination_grid(_plain(self.G_ema if self.G_ema is not None else self.G), self.grid_z, self.grid_y)


def _plain(module: torch.nn.Module) -> torch.nn.Module:
    return getattr(module, "module", module)


@torch.no_grad()
def generate(G: Generator, y: torch.Tensor, z: torch.Tensor | None = None, seed: int = 0, batch: int = 500) -> torch.Tensor:
    """Faces (N, 3, S, S) in [0, 1] for attributes y (N, k); z drawn from `seed` unless given."""
    device = next(G.parameters()).device
    if z is None:
        z = torch.randn(len(y), G.z_dim, generator=torch.Generator().manual_seed(seed))
    was_training = G.training
    G.eval()
    try:
        out = [G(z[i:i + batch].to(device), y[i:i + batch].to(device)).float().add(1).div(2).clamp(0, 1).cpu()
               for i in range(0, len(y), batch)]
    finally:
        G.train(was_training)
    return torch.cat(out)


def combination_grid(G: Generator, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(len(y) * len(z), 3, S, S): row r is combination y[r] for every z."""
    rows = y.repeat_interleave(len(z), 0)                          # (R * Z, k)
    return generate(G, rows, z.repeat(len(y), 1))


def default_steps(config: CGANConfig) -> int:
    return max(1, round(config.epochs * config.epoch_images / config.batch_size))


def train_cgan(config: CGANConfig, run_dir: Path | str, root: Path | str, steps: int | None = None,
               loop: LoopConfig | None = None, dataset: Any = None, preset_name: str = "custom", seed: int = 0) -> dict:
    """Train a cGAN into `run_dir` (resuming if a checkpoint is there) on the train split under `root`;
    returns the loop's summary. `dataset` overrides the data (tests pass a small one)."""
    steps = steps if steps is not None else default_steps(config)
    loop = loop or LoopConfig()
    loop = LoopConfig(**(asdict(loop) | {"steps": steps, "batch_size": config.batch_size, "seed": seed,
                                         "bf16": loop.bf16 or config.bf16}))
    from faceedu.data.synthfaces import dataset_fingerprint

    fingerprint = dataset_fingerprint(root) if dataset is None else None     # a finished run is reusable on it
    dataset = dataset if dataset is not None else load_data(root, "train", config)   # refuses bad attributes
    describe = {"model": "cgan", "preset": preset_name, "data": str(Path(root).expanduser().resolve()),
                "data_fingerprint": fingerprint, "cgan": config.to_dict()}
    return train(CGANTask(config, seed=seed), dataset, run_dir, loop, describe=describe)


def load_run(run_dir: Path | str, map_location: str | torch.device = "cpu") -> tuple[Generator, dict]:
    """The trained generator of a run folder (eval mode; its moving average when the run kept one) and its config.json."""
    described, modules = read_run(run_dir, "cgan", "a cGAN", map_location)
    return _generator(described, modules), described


def load_classifier(run_dir: Path | str, map_location: str | torch.device = "cpu") -> AttributeClassifier | None:
    """The run's auxiliary classifier C (eval mode, its statistics as training left them), or None when the
    run trained none."""
    return _classifier(*read_run(run_dir, "cgan", "a cGAN", map_location))


def _generator(described: dict, modules: dict) -> Generator:
    G = Generator(CGANConfig.from_dict(described["cgan"]))
    G.load_state_dict(modules.get("G_ema", modules["G"]))          # the moving average when the run kept one
    if "G_ema" in modules:
        standing_statistics(G)
    return G.eval()


def _classifier(described: dict, modules: dict) -> AttributeClassifier | None:
    if "C" not in modules:
        return None
    C = AttributeClassifier(CGANConfig.from_dict(described["cgan"]))
    C.load_state_dict(modules["C"])
    return C.eval()


@torch.no_grad()
def classifier_reads(C: AttributeClassifier, faces: torch.Tensor, batch: int = 500) -> torch.Tensor:
    """(N, k) 0/1: the attributes C reads on faces (N, 3, S, S) in [0, 1]."""
    device = next(C.parameters()).device
    return torch.cat([(C(f.to(device) * 2 - 1) > 0).float().cpu() for f in faces.split(batch)])


@torch.no_grad()
def standing_statistics(G: Generator, batches: int = 20, batch: int = 256, seed: int = 0) -> Generator:
    """Re-estimate G's BatchNorm running statistics for its own weights: `batches` forward passes in train
    mode on z ~ N(0, I) and every attribute combination in equal shares, averaged (BigGAN's "standing
    statistics", Brock et al. 2019). A moving average of G's weights carries G's last statistics, which do
    not match the averaged weights; measured on the quick preset (docs/cgan.md) this lowers the Fréchet
    distance and raises diversity. Deterministic (`seed`); returns G in eval mode."""
    g = torch.Generator().manual_seed(seed)
    combos = combinations(G.project_y[0].in_channels)               # ConvTranspose2d(k -> p): in_channels = k
    device = next(G.parameters()).device
    y = combos[torch.arange(batch) % len(combos)].to(device)
    return recompute_batchnorm(G, ((torch.randn(batch, G.z_dim, generator=g).to(device), y) for _ in range(batches)))


# --- measurements ---------------------------------------------------------------------------------------


def evaluate_cgan(G: Generator, attrs: tuple[str, ...], real: torch.Tensor, per_combination: int = 500,
                  judge=None, seed: int = 0, real_attr: torch.Tensor | None = None,
                  classifier: AttributeClassifier | None = None) -> dict:
    """The lesson's bars on a trained G:

    - for every attribute combination, the share of `per_combination` generated faces on which the
      attribute judge sees exactly the requested attributes (all k agree), and per attribute;
    - diversity (mean pairwise distance in judge feature space) of the generated faces against the real
      faces' `real` (N, 3, S, S) in [0, 1], and the Fréchet distance on the same features with its
      real-vs-real floor (`faceedu.metrics.generation_report`; not FID: the features are the judge's), and
      the density and coverage of the same features (Naeem et al. 2020) beside two halves of the real faces':
      fidelity and diversity apart, where the diversity ratio mixes them.
    The generated set mixes the combinations in equal shares. Given `real_attr` (N, k), the real faces' own
    0/1 attributes, each row also has `real_agreement`: the same share on the real faces of that combination
    (None when there are none), what a G that drew the data itself would score: the bar's ceiling with this
    judge, beside the agreement as the floor is beside the Fréchet distance. Given the run's auxiliary
    `classifier` C, each row also has `classifier_agreement`: the same share as read by C, the critic G was
    pulled towards (docs/cgan.md: C agrees on faces where the judge does not), and with `real_attr`
    `classifier_real_agreement`, C's share on the real faces of the row."""
    from faceedu.metrics import generation_report
    from faceedu.models.judges import load_judges

    judge = judge if judge is not None else load_judges(kinds=("attributes",)).require("attributes")
    columns = [judge.index(a) for a in attrs]
    combos = combinations(len(attrs))
    rows, generated = [], []
    for c, y in enumerate(combos):
        faces = generate(G, y.expand(per_combination, -1).contiguous(), seed=seed + c)
        seen = judge.predict(faces)[:, columns]                    # (N, k) 0/1
        agree = (seen == y).float()
        rows.append({"attributes": {a: int(v) for a, v in zip(attrs, y.tolist())},
                     "agreement": float(agree.all(1).float().mean()),
                     "per_attribute": {a: float(agree[:, i].mean()) for i, a in enumerate(attrs)}})
        if classifier is not None:
            rows[-1]["classifier_agreement"] = float((classifier_reads(classifier, faces) == y).all(1).float().mean())
        generated.append(faces)
    if real_attr is not None:
        seen_real = judge.predict(real)[:, columns]
        read_real = classifier_reads(classifier, real) if classifier is not None else None
        for row, y in zip(rows, combos):
            mine = (real_attr == y).all(1)
            row["real_faces"] = int(mine.sum())
            row["real_agreement"] = float((seen_real[mine] == y).all(1).float().mean()) if mine.any() else None
            if read_real is not None:
                row["classifier_real_agreement"] = (float((read_real[mine] == y).all(1).float().mean())
                                                    if mine.any() else None)
    mixed = torch.cat(generated)[torch.randperm(len(combos) * per_combination, generator=torch.Generator().manual_seed(seed))]
    report = generation_report(judge, real, mixed[:len(real)])
    return {"combinations": rows, "min_agreement": min(r["agreement"] for r in rows), **report}


def format_report(result: dict) -> str:
    with_c = all("classifier_agreement" in row for row in result["combinations"])
    lines = [f"{'attributes':<40} {'judge agrees':>12} {'on real faces':>14}"
             + (f" {'C agrees':>9} {'C on real':>9}" if with_c else "")]
    for row in result["combinations"]:
        real = row.get("real_agreement")
        real = f"{real:.1%} of {row['real_faces']}" if real is not None else "-"
        lines.append(f"{', '.join(f'{a}={v}' for a, v in row['attributes'].items()):<40} {row['agreement']:>12.1%} {real:>14}"
                     + (f" {row['classifier_agreement']:>9.1%} {_share(row.get('classifier_real_agreement')):>9}"
                        if with_c else ""))
    lines.append(f"diversity {result['diversity']:.3f} vs real {result['real_diversity']:.3f} "
                 f"(ratio {result['diversity_ratio']:.2f}); Fréchet distance in judge features "
                 f"{result['frechet']:.3f} (real-vs-real floor {result['frechet_floor']:.3f}; not FID)")
    if result.get("coverage") is not None:
        lines.append(f"coverage {result['coverage']:.3f} (real faces {result['coverage_real']:.3f}: the share of real "
                     f"neighbourhoods that hold a generated face), density {result['density']:.3f} (real faces "
                     f"{result['density_real']:.3f}: fidelity)")
    lines += [f"judged by the {line}" for line in result.get("judges", [])] + result.get("judge_warnings", [])
    return "\n".join(lines)


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def eval_run(run_dir: Path | str, root: Path | str | None = None, out: Path | str | None = None,
             real_limit: int = 2000, per_combination: int = 500, judges: Path | str | None = None) -> dict:
    """`faceedu eval RUN` for a cGAN run: the bars on the test split (eval.json), the combination grid and
    the D(x)/D(G(z)) curves, written to RUN/eval/ (or `out`). `judges`: a judges folder (default: the shipped
    SynthFaces ones); the report names what they were trained on and warns when that is not the kind of
    faces under `root` (the SynthFaces judges on real CelebA photographs)."""
    from faceedu.models.judges import judges_for
    from faceedu.viz import plot_loss_curves, save_grid

    run_dir = Path(run_dir)
    described, modules = read_run(run_dir, "cgan", "a cGAN")        # one read for G and C
    G = _generator(described, modules)
    config = G_config(described)
    root = Path(root) if root is not None else Path(described["data"])
    out = Path(out) if out is not None else run_dir / "eval"
    out.mkdir(parents=True, exist_ok=True)
    test = load_data(root, "test", config, limit=real_limit)
    referees = judges_for(root, judges, kinds=("attributes",), verbose=False)
    result = evaluate_cgan(G, config.attrs, test.images(), per_combination=per_combination,
                           judge=referees.require("attributes"), real_attr=test.attr,
                           classifier=_classifier(described, modules))
    result |= {"run": str(run_dir), "preset": described.get("preset"), "discriminator": config.discriminator,
               "loss": config.loss, "steps": described["loop"]["steps"], "g_ema": config.g_ema,
               "judges": referees.describe(), "judge_warnings": referees.warnings}
    (out / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
    task_grid = combination_grid(G, torch.randn(8, config.z_dim, generator=torch.Generator().manual_seed(1234)),
                                 combinations(len(config.attrs))[:16])
    save_grid(task_grid, out / "combinations.png")
    if (run_dir / "metrics.jsonl").is_file():
        plot_loss_curves(run_dir / "metrics.jsonl", out / "curves.png", labels=CURVE_LABELS)
    return result


def G_config(described: dict) -> CGANConfig:
    return CGANConfig.from_dict(described["cgan"])


CURVE_LABELS = {"loss_d": "D loss", "loss_g": "G loss (with the classifier's term when there is one)",
                "loss_c": "C loss on real faces", "loss_g_c": "C's loss on G's faces", "D_x": "D(x): mean sigmoid on real faces",
                "D_G_z": "D(G(z)): mean sigmoid on fakes (D's step)"}


# --- command line ----------------------------------------------------------------------------------------


def command_train(args) -> int:
    """`faceedu train cgan`: a preset, flags overriding its fields; resumes if --run holds a checkpoint."""
    overrides: dict[str, Any] = {"lr_g": args.lr, "lr_d": args.lr, "batch_size": args.batch_size}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if args.attrs:
        overrides["attrs"] = tuple(a.strip() for a in args.attrs.split(",") if a.strip())
    if args.discriminator:
        overrides["discriminator"] = args.discriminator
    if args.loss:
        overrides["loss"] = args.loss
    if getattr(args, "mismatch", None) is not None:
        overrides["mismatch"] = args.mismatch
    if getattr(args, "aux_classifier", None) is not None:
        overrides["aux_classifier"] = args.aux_classifier
    config = preset(args.preset, **overrides)
    root = data_root(args)
    run = args.run or Path("runs") / f"cgan-{args.preset}{'-projection' if config.discriminator == 'projection' else ''}"
    loop = loop_from_args(args)
    print(f"cGAN ({config.discriminator} D, {config.loss} loss) on {', '.join(config.attrs)}: "
          f"G {parameter_count(Generator(config)):,} parameters, D {parameter_count(discriminator(config)):,}")
    train_cgan(config, run, root, steps=args.steps, loop=loop, preset_name=args.preset, seed=args.seed)
    print(f"Next: faceedu eval {run}")
    return 0


def command_eval(run_dir: Path, args) -> int:
    result = eval_run(run_dir, root=getattr(args, "run_root", None), real_limit=getattr(args, "limit", None) or 2000,
                      judges=getattr(args, "judges", None))
    print(f"{run_dir} ({result['preset']}, {result['discriminator']} D, {result['steps']} steps)")
    print(format_report(result))
    print(f"Wrote {run_dir / 'eval'}/eval.json, combinations.png, curves.png")
    return 0


def bench_tasks(preset_name: str = "quick") -> dict[str, tuple[CGANTask, dict]]:
    """For `faceedu bench`: the cGAN Tasks (both discriminators) at a preset and one synthetic batch."""
    config = preset(preset_name)
    g = torch.Generator().manual_seed(0)
    batch = {"image": torch.rand(config.batch_size, 3, config.image_size, config.image_size, generator=g),
             "attr": torch.randint(0, 2, (config.batch_size, len(config.attrs)), generator=g).float()}
    return {"cgan": (CGANTask(config), batch),
            "cgan-projection": (CGANTask(preset(preset_name, discriminator="projection")), batch)}


__all__ = ["CGANTask", "AttributeFaces", "check_attributes", "load_data", "train_cgan", "load_run", "standing_statistics", "generate",
           "combination_grid", "evaluate_cgan", "format_report", "eval_run", "default_steps"]
