"""Training CycleGAN between two expressions on the shared loop: the Task (one step reads like the official
`optimize_parameters`), the unpaired data (two JAFFE expressions, or a CelebA attribute and its absence),
`train_cyclegan` (what `faceedu train cyclegan`, the tour and the tests call) and the judged evaluation on
held-out subjects."""

from __future__ import annotations

import itertools
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from faceedu.models.cyclegan import (PRESETS, CycleGAN, CycleGANConfig, ImagePool, discriminator_step_loss,
                                     generator_losses, linear_decay, preset, schedule_steps)
from faceedu.models.freeze import frozen
from faceedu.train.loop import LoopConfig, cpu_threads, loop_from_args, read_run, train

SAMPLE_FACES = 8  # fixed test faces per domain in the sample grids: one row of the loop's 8-wide grid each
CELEBA_EVAL_FACES = 1000  # CelebA pairings are judged on the first 1,000 faces of the test partition (both
                          # domains together; a rate's standard error is then under 2.3 points per domain)


class UnpairedFaces(Dataset):
    """Unaligned pairs as the official UnalignedDataset: item i is A[i mod |A|] with a random B, both
    augmented (random crop from load_size to image_size, horizontal flip), in [-1, 1]. Length max(|A|, |B|).
    Randomness comes from torch's global RNG, which the loop checkpoints, so resuming stays exact."""

    def __init__(self, A: torch.Tensor, B: torch.Tensor, config: CycleGANConfig):
        self.A, self.B = (self._fit(x, config.load_size) for x in (A, B))
        self.size, self.flip = config.image_size, config.flip

    @staticmethod
    def _fit(images: torch.Tensor, side: int) -> torch.Tensor:
        """uint8 (N, C, S, S) -> float (N, C, side, side) in [-1, 1]."""
        x = images.float() / 255
        if x.shape[-1] != side:
            x = F.interpolate(x, size=(side, side), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
        return x * 2 - 1

    def __len__(self) -> int:
        return max(len(self.A), len(self.B))

    def _augment(self, image: torch.Tensor) -> torch.Tensor:
        side = image.shape[-1]
        if side > self.size:
            top, left = torch.randint(0, side - self.size + 1, (2,)).tolist()
            image = image[:, top:top + self.size, left:left + self.size]
        if self.flip and torch.rand(()) < 0.5:
            image = image.flip(-1)
        return image

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        b = int(torch.randint(0, len(self.B), ()))
        return {"A": self._augment(self.A[index % len(self.A)]), "B": self._augment(self.B[b])}


class CycleGANTask:
    """Adam(2e-4, beta1 0.5) on both generators together and on both discriminators together, each with the
    constant-then-linear-decay schedule; one step = the generators' step, then the discriminators'."""

    def __init__(self, config: CycleGANConfig, total_steps: tuple[int, int], seed: int = 0,
                 test_faces: tuple[torch.Tensor, torch.Tensor] | None = None):
        torch.manual_seed(seed)
        self.config = config
        self.model = CycleGAN(config)
        shape = (config.channels, config.image_size, config.image_size)
        self.pool_A, self.pool_B = ImagePool(config.pool_size, shape), ImagePool(config.pool_size, shape)
        betas = (config.beta1, 0.999)
        self.optimizers = {
            "G": torch.optim.Adam(itertools.chain(self.model.G_A.parameters(), self.model.G_B.parameters()),
                                  lr=config.lr, betas=betas),
            "D": torch.optim.Adam(itertools.chain(self.model.D_A.parameters(), self.model.D_B.parameters()),
                                  lr=config.lr, betas=betas)}
        constant, decay = total_steps
        self.schedulers = {k: torch.optim.lr_scheduler.LambdaLR(o, lambda step: linear_decay(step, constant, decay))
                           for k, o in self.optimizers.items()}
        self.test_faces = test_faces  # fixed (A, B) faces in [0, 1] for the sample grids

    @property
    def modules(self) -> dict[str, torch.nn.Module]:
        return {"G_A": self.model.G_A, "G_B": self.model.G_B, "D_A": self.model.D_A, "D_B": self.model.D_B,
                "pool_A": self.pool_A, "pool_B": self.pool_B}

    def step(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        real_A, real_B = batch["A"], batch["B"]
        model, kind = self.model, self.config.gan_loss
        # generators, with the discriminators frozen
        with frozen(model.D_A, model.D_B):
            with torch.autocast(device_type=real_A.device.type, enabled=False):
                terms = generator_losses(model, real_A.float(), real_B.float())
            self.optimizers["G"].zero_grad(set_to_none=True)
            terms["loss_G"].backward()
        self.optimizers["G"].step()
        # discriminators, on real images and on fakes drawn from the history pools
        fake_B = self.pool_B.query(terms.pop("fake_B"))     # D_A judges domain B
        fake_A = self.pool_A.query(terms.pop("fake_A"))
        with torch.autocast(device_type=real_A.device.type, enabled=False):
            d_A = discriminator_step_loss(model.D_A, real_B.float(), fake_B.float(), kind)
            d_B = discriminator_step_loss(model.D_B, real_A.float(), fake_A.float(), kind)
        self.optimizers["D"].zero_grad(set_to_none=True)
        (d_A + d_B).backward()
        self.optimizers["D"].step()
        return {k: v.detach() for k, v in terms.items()} | {"D_A": d_A.detach(), "D_B": d_B.detach()}

    def samples(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Rows of the fixed test faces: A, G_A(A), G_B(G_A(A)), then B, G_B(B), G_A(G_B(B)); else the batch's."""
        if self.test_faces is not None:
            A, B = (x.to(batch["A"].device) for x in self.test_faces)
        else:
            A, B = (batch["A"][:SAMPLE_FACES] + 1) / 2, (batch["B"][:SAMPLE_FACES] + 1) / 2
        return cycle_rows(self.model, A, B)


@torch.no_grad()
def cycle_rows(model: CycleGAN, A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """(6N, C, S, S) in [0, 1]: A, A->B, A->B->A, B, B->A, B->A->B, one row of N each."""
    fake_B = model.translate(A, "AtoB")
    fake_A = model.translate(B, "BtoA")
    return torch.cat([A, fake_B, model.translate(fake_B, "BtoA"), B, fake_A, model.translate(fake_A, "AtoB")]).float()


def load_data(root: Path | str, config: CycleGANConfig, split: str = "train", seed: int = 0,
              limit: int | None = None):
    """The two domains of `config.domains` on one side of the subject-disjoint split (JAFFE's, drawn with
    `seed`; CelebA's own partition, its first `limit` faces), at load_size (train) or image_size (test)."""
    from faceedu.data.expressions import load_attribute_domains, load_expression_tensors

    size = config.load_size if split == "train" else config.image_size
    if config.data == "celeba":
        return load_attribute_domains(root, config.domains, split, size=size, limit=limit)
    return load_expression_tensors(root, config.domains, split, size=size, channels=config.channels, seed=seed)


def domain_judge(judges, config: CycleGANConfig):
    """The judge that reads the domains: the expression judge (JAFFE), the attribute judge (CelebA)."""
    return judges.require("attributes" if config.data == "celeba" else "expression")


def domain_rate(judge, config: CycleGANConfig, images: torch.Tensor, code: str) -> float:
    """Share of `images` (in [0, 1]) that `judge` reads as domain `code`."""
    from faceedu.metrics import attribute_rate, expression_transfer_rate

    if config.data == "celeba":
        return attribute_rate(judge, images, config.domains[0], present=code == config.domains[0])
    return expression_transfer_rate(judge, images, code)


def fixed_test_faces(test, config: CycleGANConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The first faces of different test subjects per domain (the sample grids' fixed faces), in [0, 1]."""
    picked = []
    for code in config.domains:
        seen, index = set(), []
        for i, subject in enumerate(test.subjects[code]):
            if subject not in seen:
                seen.add(subject)
                index.append(i)
        index = (index + [i for i in range(len(test.subjects[code])) if i not in index])[:SAMPLE_FACES]
        picked.append(test.floats(code)[index])
    return picked[0], picked[1]


def train_cyclegan(config: CycleGANConfig, run_dir: Path | str, root: Path | str, steps: int | None = None,
                   loop: LoopConfig | None = None, preset_name: str = "custom", seed: int = 0) -> dict:
    """Train a CycleGAN into `run_dir` (resuming if a checkpoint is there) on the training subjects under
    `root` (a JAFFE-layout folder or one holding jaffe/; a CelebA-layout one for config.data "celeba");
    returns the loop's summary."""
    train_data = load_data(root, config, "train")
    test_data = load_data(root, config, "test")
    A, B = (train_data.images[c] for c in config.domains)
    dataset = UnpairedFaces(A, B, config)
    constant, decay = schedule_steps(config, len(dataset))
    if steps is not None:  # a different length keeps the schedule's shape: half constant, half decay
        constant, decay = steps // 2, steps - steps // 2
    loop = loop or LoopConfig()
    loop = LoopConfig(**(asdict(loop) | {"steps": constant + decay, "batch_size": config.batch_size, "seed": seed}))
    task = CycleGANTask(config, (constant, decay), seed=seed, test_faces=fixed_test_faces(test_data, config))
    from faceedu.data.synthfaces import dataset_fingerprint

    root = Path(root).expanduser().resolve()        # absolute: commands on the run work from anywhere
    describe = {"model": "cyclegan", "preset": preset_name, "data": str(root),
                "data_fingerprint": dataset_fingerprint(root), "cyclegan": config.to_dict(),
                "schedule": {"constant": constant, "decay": decay},
                "split": {"train_images": {c: len(train_data.images[c]) for c in config.domains},
                          "test_images": {c: len(test_data.images[c]) for c in config.domains},
                          "test_subjects": test_data.test_subjects}}
    with cpu_threads(config.threads):
        return train(task, dataset, run_dir, loop, describe=describe)


def load_run(run_dir: Path | str, map_location: str | torch.device = "cpu") -> tuple[CycleGAN, dict]:
    """The trained CycleGAN of a run folder (eval mode) and its config.json."""
    described, modules = read_run(run_dir, "cyclegan", "a CycleGAN", map_location)
    model = CycleGAN(CycleGANConfig.from_dict(described["cyclegan"]))
    for name in ("G_A", "G_B", "D_A", "D_B"):
        getattr(model, name).load_state_dict(modules[name])
    return model.eval(), described


# --- evaluation on held-out subjects --------------------------------------------------------------------


def _random_pairs(subjects: list[str], seed: int = 0) -> torch.Tensor:
    """For each face, the index of a face of another subject (same domain), drawn with `seed`."""
    g = torch.Generator().manual_seed(seed)
    other = []
    for s in subjects:
        candidates = [j for j, t in enumerate(subjects) if t != s]
        other.append(candidates[int(torch.randint(0, len(candidates), (), generator=g))] if candidates else 0)
    return torch.tensor(other)


@torch.no_grad()
def evaluate_cyclegan(model: CycleGAN, test, judges, real=None) -> dict[str, Any]:
    """On the test subjects: how often the domain judge (expression; attributes for CelebA) reads each
    translation as the target domain, whether the identity judge sees the same person (against random pairs
    of other subjects), the cycle L1, and the Fréchet distance of translations to real target faces in the
    domain judge's features. `real` (an ExpressionTensors, default `test`) supplies the real faces for the
    Fréchet distance."""
    from faceedu.metrics import generation_report

    code_A, code_B = model.config.domains
    A, B = test.floats(code_A), test.floats(code_B)
    model = model.cpu().eval()
    fake_B, fake_A = model.translate(A, "AtoB"), model.translate(B, "BtoA")
    rec_A, rec_B = model.translate(fake_B, "BtoA"), model.translate(fake_A, "AtoB")
    E, I = domain_judge(judges, model.config), judges.require("identity")
    rate = lambda images, code: domain_rate(E, model.config, images, code)  # noqa: E731
    report: dict[str, Any] = {"domains": [code_A, code_B], "data": model.config.data, "domain_judge": E.kind,
                              "test_faces": {code_A: len(A), code_B: len(B)}, "test_subjects": test.test_subjects}
    report[f"judge_{code_B}_on_{code_A}_to_{code_B}"] = rate(fake_B, code_B)
    report[f"judge_{code_A}_on_{code_B}_to_{code_A}"] = rate(fake_A, code_A)
    report[f"judge_{code_A}_on_real_{code_A}"] = rate(A, code_A)
    report[f"judge_{code_B}_on_real_{code_B}"] = rate(B, code_B)
    sources, outputs = torch.cat([A, B]), torch.cat([fake_B, fake_A])
    same = I.similarity(sources, outputs)
    subjects = test.subjects[code_A] + test.subjects[code_B]
    others = torch.cat([_random_pairs(test.subjects[code_A]), len(A) + _random_pairs(test.subjects[code_B], 1)])
    random_pairs = I.similarity(sources, sources[others])
    report |= {"identity_same_rate": float((same > I.threshold).float().mean()),
               "identity_mean_cosine": float(same.mean()),
               "random_pairs_same_rate": float((random_pairs > I.threshold).float().mean()),
               "random_pairs_mean_cosine": float(random_pairs.mean()),
               "identity_threshold": I.threshold, "pairs": len(subjects)}
    rec_error = torch.cat([(rec_A - A).abs(), (rec_B - B).abs()])
    pixels = rec_error[0].numel()
    report |= {"cycle_l1_per_pixel": float(rec_error.mean()),                   # images in [0, 1]
               "cycle_l1_per_pixel_255": float(rec_error.mean() * 255),         # images in 0..255
               "cycle_l1_summed": float(rec_error.flatten(1).sum(1).mean()),   # per image, [0, 1] scale
               "cycle_l1_summed_255": float(rec_error.flatten(1).sum(1).mean() * 255),
               "pixels_per_image": pixels, "image_size": model.config.image_size}
    real = real if real is not None else test
    for code, fake in ((code_B, fake_B), (code_A, fake_A)):
        fd = generation_report(E, real.floats(code), fake)
        report[f"frechet_{code}"] = fd["frechet"]
        report[f"frechet_floor_{code}"] = fd["frechet_floor"]
    return report


def bars_met(report: dict[str, Any]) -> dict[str, bool]:
    """The lesson's bars on a report: each translation read as its target on >= 80% of test faces, the same
    person on >= 80% of pairs and at least 15 points above random pairs of other subjects."""
    A, B = report["domains"]
    return {"A_to_B": report[f"judge_{B}_on_{A}_to_{B}"] >= 0.8, "B_to_A": report[f"judge_{A}_on_{B}_to_{A}"] >= 0.8,
            "identity": report["identity_same_rate"] >= 0.8,
            "identity_above_random": report["identity_same_rate"] >= report["random_pairs_same_rate"] + 0.15}


def format_report(report: dict[str, Any]) -> str:
    A, B = report["domains"]
    lines = [f"{report.get('domain_judge', 'expression')} judge: {B} on {A}->{B} {report[f'judge_{B}_on_{A}_to_{B}']:.0%}, "
             f"{A} on {B}->{A} {report[f'judge_{A}_on_{B}_to_{A}']:.0%} "
             f"(on the real faces: {report[f'judge_{A}_on_real_{A}']:.0%}, {report[f'judge_{B}_on_real_{B}']:.0%})",
             f"identity judge: same person {report['identity_same_rate']:.0%} (mean cosine "
             f"{report['identity_mean_cosine']:.3f}); random pairs of other subjects {report['random_pairs_same_rate']:.0%} "
             f"({report['random_pairs_mean_cosine']:.3f})",
             f"cycle L1: {report['cycle_l1_per_pixel']:.4f} per pixel ({report['cycle_l1_per_pixel_255']:.2f} on 0-255), "
             f"summed {report['cycle_l1_summed']:.1f} per {report['image_size']}x{report['image_size']} image "
             f"({report['cycle_l1_summed_255']:.0f} on 0-255)",
             f"Fréchet distance ({report.get('domain_judge', 'expression')} judge's features, not FID): {B} {report[f'frechet_{B}']:.2f} "
             f"(floor {report[f'frechet_floor_{B}']:.2f}), {A} {report[f'frechet_{A}']:.2f} "
             f"(floor {report[f'frechet_floor_{A}']:.2f})"]
    lines += [f"judged by the {line}" for line in report.get("judges", [])] + report.get("judge_warnings", [])
    return "\n".join(lines)


def eval_run(run_dir: Path | str, root: Path | str | None = None, out: Path | str | None = None,
             judges: Path | str | None = None) -> dict:
    """`faceedu eval RUN` for a CycleGAN run: the judged report (eval.json) and the A->B->A / B->A->B figure.
    `judges`: a judges folder (default: the shipped SynthFaces ones); the report names what they were trained
    on and warns when that is not the kind of faces under `root`."""
    from faceedu.models.judges import judges_for
    from faceedu.viz import save_grid

    run_dir = Path(run_dir)
    model, described = load_run(run_dir)
    root = Path(root) if root is not None else Path(described["data"])
    out = Path(out) if out is not None else run_dir / "eval"
    out.mkdir(parents=True, exist_ok=True)
    config = model.config
    test = load_data(root, config, "test", limit=CELEBA_EVAL_FACES)
    # JAFFE's test side is a few faces: the Fréchet distance compares with all of a domain's real faces
    real = load_data(root, config, "all") if config.data == "jaffe" else None
    kinds = ("attributes" if config.data == "celeba" else "expression", "identity")
    referees = judges_for(root, judges, kinds=kinds, verbose=False, family=config.data)
    report = evaluate_cyclegan(model, test, referees, real=real)
    report |= {"run": str(run_dir), "preset": described.get("preset"), "bars": bars_met(report),
               "judges": referees.describe(), "judge_warnings": referees.warnings}
    (out / "eval.json").write_text(json.dumps(report, indent=2) + "\n")
    A, B = fixed_test_faces(test, config)
    save_grid(cycle_rows(model, A, B), out / "cycles.png", columns=len(A))
    return report


__all__ = ["UnpairedFaces", "CycleGANTask", "cycle_rows", "load_data", "fixed_test_faces", "train_cyclegan",
           "load_run", "evaluate_cyclegan", "bars_met", "format_report", "eval_run", "preset"]


# --- command line ----------------------------------------------------------------------------------------


def command_train(args) -> int:
    """`faceedu train cyclegan`: a preset, with flags overriding its fields; resumes if --run holds a checkpoint."""
    from faceedu.data.expressions import parse_attribute_domains, parse_domains

    data = args.data or PRESETS[args.preset].data
    if data == "celeba" and PRESETS[args.preset].data != "celeba" and PRESETS[args.preset].image_size < 64:
        raise ValueError(f"The {args.preset} preset is {PRESETS[args.preset].image_size} px grayscale JAFFE; for "
                         "CelebA faces use --preset quick-celeba (64 px colour, what the attribute judge reads).")
    if data == "celeba":
        overrides: dict[str, Any] = {"data": "celeba", "channels": 3,
                                     "domains": parse_attribute_domains(args.domains or "Smiling")}
    else:
        if PRESETS[args.preset].data != "jaffe":
            raise ValueError(f"The {args.preset} preset is for CelebA faces; for JAFFE use --preset quick.")
        overrides = {"domains": parse_domains(args.domains or "HA,NE")}
    for key in ("lr", "batch_size"):
        if getattr(args, key, None) is not None:
            overrides[key] = getattr(args, key)
    config = preset(args.preset, **overrides)
    root = args.root
    if root is None:
        from faceedu.data.synthfaces import ensure

        root = ensure(Path("datasets/synthfaces"), verbose=True)
    run = args.run or Path("runs") / f"cyclegan-{args.preset}"
    loop = loop_from_args(args)
    summary = train_cyclegan(config, run, root, steps=args.steps, loop=loop, preset_name=args.preset, seed=args.seed)
    report = eval_run(run, root)
    print(format_report(report))
    print(f"Wrote {run}/eval/eval.json and cycles.png; sample grids (A, A->B, A->B->A, B, B->A, B->A->B) in {run}/samples/")
    return 0 if summary else 1


def bench_tasks(preset_name: str = "quick") -> dict[str, tuple[CycleGANTask, dict]]:
    """For `faceedu bench`: the CycleGAN Task at a preset (its schedule half constant, half decay) and one
    synthetic batch of unpaired faces in [-1, 1]."""
    config = preset(preset_name)                      # KeyError for a preset CycleGAN does not have
    g = torch.Generator().manual_seed(0)
    shape = (config.batch_size, config.channels, config.image_size, config.image_size)
    batch = {"A": torch.rand(shape, generator=g) * 2 - 1, "B": torch.rand(shape, generator=g) * 2 - 1}
    return {"cyclegan": (CycleGANTask(config, (config.steps // 2, config.steps - config.steps // 2)), batch)}


def command_eval(run_dir: Path, args) -> int:
    report = eval_run(run_dir, root=getattr(args, "run_root", None), judges=getattr(args, "judges", None))
    print(format_report(report))
    return 0
