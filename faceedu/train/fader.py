"""Training Fader Networks on the shared loop: the Task (one step = the official lat_dis_step then
autoencoder_step), the data it wants, `train_fader` (which `faceedu train fader`, the tour and the tests
call), loading a run, and measuring it with the judges."""

from __future__ import annotations

import copy
import json
import os
import warnings
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from faceedu.models import fader as FN
from faceedu.models.fader import AutoEncoder, FaderConfig, LatentDiscriminator, preset
from faceedu.train.judge import augment
from faceedu.train.loop import (CHECKPOINT, LoopConfig, cpu_threads, data_root, loop_from_args, read_run,
                                recompute_batchnorm, run_finished, save_atomic, train, update_ema)

# Every ACCURACY_EVERY steps the latent discriminator's accuracy is measured in eval mode (no dropout,
# running BatchNorm statistics, as the official evaluation) on the batch about to be trained on, and logged
# as a moving average over about ACCURACY_WINDOW measurements (one batch of 32 is too noisy to plot).
ACCURACY_EVERY = 5
ACCURACY_WINDOW = 5


def hflip(x: torch.Tensor) -> torch.Tensor:
    """Each image mirrored left-right with probability 1/2 (the official loader's h_flip)."""
    flip = torch.rand(len(x), device=x.device) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


class FaderTask:
    """Two Adams (lr 2e-4, beta1 0.5), gradient norms clipped at 5; per step one discriminator update,
    then one auto-encoder update with lambda_E(step) (eq. 3)."""

    def __init__(self, config: FaderConfig, attr_index: list[int] | None = None, seed: int = 0,
                 step_fn=None, schedule_fn=None):
        torch.manual_seed(seed)
        self.step_fn = step_fn or FN.fader_step            # a lesson passes the learner's own
        self.schedule_fn = schedule_fn or FN.lambda_schedule
        self.config = config
        self.ae, self.lat_dis = AutoEncoder(config), LatentDiscriminator(config)
        self.clf_dis = FN.Classifier(config) if config.n_clf_dis else None   # the official classifier discriminator
        # the moving average the run reconstructs and edits with (config.ema_decay > 0; docs/fader.md)
        self.ae_ema = copy.deepcopy(self.ae).requires_grad_(False) if config.ema_decay > 0 else None
        self.optimizers = FN.make_optimizers(self.ae, self.lat_dis, config, self.clf_dis)
        self.schedulers: dict[str, Any] = {}
        self.attr_index = attr_index            # columns of the data's attributes to train on, in config.attrs order
        self.accuracy = None                    # moving average of the discriminator's accuracy

    @property
    def modules(self) -> dict[str, torch.nn.Module]:
        return ({"ae": self.ae, "lat_dis": self.lat_dis} | ({"clf_dis": self.clf_dis} if self.clf_dis is not None else {})
                | ({"ae_ema": self.ae_ema} if self.ae_ema is not None else {}))

    def batch_xy(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        y = batch["attr"] if self.attr_index is None else batch["attr"][:, self.attr_index]
        return FN.to_model(batch["image"]), y

    def step(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, torch.Tensor | float]:
        x, y = self.batch_xy(batch)
        if self.config.hflip:
            x = hflip(x)
        ae, lat_dis = getattr(self.ae, "module", self.ae), getattr(self.lat_dis, "module", self.lat_dis)
        if step % ACCURACY_EVERY == 1 or self.accuracy is None:
            with torch.no_grad():
                ae.eval(), lat_dis.eval()
                accuracy = float(FN.attribute_accuracy(lat_dis(ae.encode(x)), y).mean())
            self.accuracy = accuracy if self.accuracy is None else self.accuracy + (accuracy - self.accuracy) / ACCURACY_WINDOW
        c = self.config
        lam = float(self.schedule_fn(step, c.lambda_max, c.lambda_start, c.lambda_steps))
        clf: dict[str, Any] = {}
        if self.clf_dis is not None:            # official: n_clf_dis classifier updates per step, the last in step_fn
            clf_dis = getattr(self.clf_dis, "module", self.clf_dis)
            view = (lambda faces: judge_view(faces, c.clf_augment)) if c.clf_augment > 0 else None
            for _ in range(c.n_clf_dis - 1):
                FN.clf_dis_step(clf_dis, self.optimizers["clf_dis"], view(x) if view else x, y, c.clip_grad_norm)
            clf = {"clf_dis": clf_dis, "opt_clf": self.optimizers["clf_dis"],
                   "lam_clf": float(self.schedule_fn(step, c.lambda_clf_dis, c.lambda_start, c.lambda_steps))}
            clf |= {"clf_view": view} if view else {}
        logs = self.step_fn(ae, lat_dis, self.optimizers["ae"], self.optimizers["lat_dis"], x, y, lam, c.clip_grad_norm,
                            **clf)
        if self.ae_ema is not None:
            update_ema(self.ae_ema, ae, c.ema_decay, step)
        return dict(logs) | {"lat_dis_acc": self.accuracy, "lambda": lam} | ({"lambda_clf": clf["lam_clf"]} if clf else {})

    def samples(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Rows of 8: originals, reconstructions, then each attribute flipped."""
        ae = getattr(self.ae, "module", self.ae)
        x, y = batch["image"][:8], self.batch_xy(batch)[1][:8]
        rows = [x.float().cpu(), FN.reconstruct(ae, x, y)]
        for a in range(y.shape[1]):
            alpha = 2 * y - 1
            alpha[:, a] = -alpha[:, a]
            rows.append(FN.edit(ae, x, alpha))
        return torch.cat(rows)


def judge_view(x: torch.Tensor, pixel_noise: float) -> torch.Tensor:
    """Faces in [-1, 1] augmented as the attribute judge learns them (`faceedu.train.judge.augment`: flips,
    rotations of up to 6 degrees, scales and shifts, brightness, and Gaussian pixel noise of sigma ~ U(0,
    pixel_noise) on half). The quick preset's classifier discriminator learns from this view of the real faces:
    one that learns from the clean faces alone is convinced by marks the judge does not read (docs/fader.md)."""
    return augment((x.float() + 1) / 2, pixel_noise=pixel_noise) * 2 - 1


@torch.no_grad()
def standing_statistics(ae: AutoEncoder, dataset: Any, columns: list[int], faces: int = 3200,
                        batch: int = 32) -> AutoEncoder:
    """Re-estimate the auto-encoder's BatchNorm statistics for its own weights: the first `faces` training
    faces with their true attributes, in batches of `batch` (`faceedu.train.loop.recompute_batchnorm`, as
    lesson 04 does for G). Deterministic; returns the auto-encoder in eval mode."""
    device = next(ae.parameters()).device
    starts = range(0, min(faces, len(dataset.images)), batch)
    return recompute_batchnorm(ae, ((FN.to_model(dataset.images[k:k + batch]).to(device),
                                     dataset.attr[k:k + batch][:, columns].float().to(device)) for k in starts))


def _settle_average(run_dir: Path, config: FaderConfig, dataset: Any, columns: list[int]) -> None:
    """Write the finished run's moving average back with its standing statistics (atomically)."""
    state = torch.load(run_dir / CHECKPOINT, map_location="cpu", weights_only=True)
    ae = AutoEncoder(config)
    ae.load_state_dict(state["modules"]["ae_ema"])
    state["modules"]["ae_ema"] = standing_statistics(ae, dataset, columns).state_dict()
    save_atomic(state, run_dir / CHECKPOINT)


# --- data ---------------------------------------------------------------------------------------------


def load_data(root: Path | str, split: str, config: FaderConfig, limit: int | None = None):
    """The split as in-memory tensors at the model's size (with face masks where the data has them)."""
    from faceedu.data.tensors import load_face_tensors

    # masks=None: when the folder has label maps (the masked SSIM of the evaluation); training needs none
    return load_face_tensors(root, split=split, size=config.image_size, masks=None, crop=config.crop, limit=limit)


def attribute_columns(names: list[str], attrs: tuple[str, ...]) -> list[int]:
    """The data's columns of the attributes to train on; an unknown name is refused with close matches."""
    import difflib

    missing = [a for a in attrs if a not in names]
    if missing:
        hints = [f"{m!r} (did you mean {', '.join(difflib.get_close_matches(m, names, 3)) or 'none'}?)" for m in missing]
        raise ValueError(f"unknown attribute {', '.join(hints)}; the data has: {', '.join(names)}")
    return [names.index(a) for a in attrs]


def train_fader(config: FaderConfig, run_dir: Path | str, root: Path | str, steps: int | None = None,
                loop: LoopConfig | None = None, dataset: Any = None, preset_name: str = "custom",
                seed: int = 0, step_fn=None, schedule_fn=None) -> dict:
    """Train a Fader Network into `run_dir` (resuming if a checkpoint is there) on the train split under
    `root`, on `config.threads` CPU threads; returns the loop's summary. `dataset` overrides the data."""
    steps = steps if steps is not None else config.steps
    loop = loop or LoopConfig()
    loop = LoopConfig(**(asdict(loop) | {"steps": steps, "batch_size": config.batch_size, "seed": seed,
                                         "bf16": loop.bf16 or config.bf16}))
    given = dataset
    dataset = dataset if dataset is not None else load_data(root, "train", config)
    columns = attribute_columns(list(dataset.attr_names), config.attrs)
    from faceedu.data.synthfaces import dataset_fingerprint

    describe = {"model": "fader", "preset": preset_name, "data": str(Path(root).expanduser().resolve()),
                "data_fingerprint": dataset_fingerprint(root) if given is None else None,
                "fader": config.to_dict()}
    task = FaderTask(config, columns, seed=seed, step_fn=step_fn, schedule_fn=schedule_fn)
    with cpu_threads(config.threads):
        summary = train(task, dataset, run_dir, loop, describe=describe)
        if config.ema_decay > 0 and is_finished(run_dir, steps) and int(os.environ.get("RANK", "0")) == 0:
            _settle_average(Path(run_dir), config, dataset, columns)
    return summary


def lesson_fader(root: Path | str, fast: bool = False, step_fn=None, schedule_fn=None,
                 steps: int | None = None) -> tuple[AutoEncoder, LatentDiscriminator, Path]:
    """The Fader Network lesson 05 uses, and its run folder: $FACEEDU_FADER_RUN if set; else a finished
    runs/fader-quick (as lesson 03 reuses runs/vae-quick); else trained with the quick preset and the
    learner's `step_fn` / `schedule_fn` into runs/fader-lesson05 (resumable: a re-run reuses it). Fast mode trains 12 steps on 256 faces in a temporary folder (for tests: the
    pictures mean nothing, the code paths are the same)."""
    import os
    import tempfile

    from faceedu.data.tensors import load_face_tensors

    if os.environ.get("FACEEDU_FADER_RUN"):
        run = Path(os.environ["FACEEDU_FADER_RUN"]).expanduser()
        if not is_finished(run):
            raise FileNotFoundError(f"FACEEDU_FADER_RUN={run} holds no finished Fader run.")
        print(f"Using the Fader Network in {run} (FACEEDU_FADER_RUN).")
        return (*load_run(run)[:2], run)
    config = preset("quick")
    repo = Path(__file__).resolve().parents[2]
    runs = repo / "runs" if (repo / "pyproject.toml").is_file() else Path.home() / ".cache" / "faceedu" / "runs"
    quick = runs / "fader-quick"
    if not fast and is_finished(quick, config.steps) and not os.environ.get("FACEEDU_TRAIN_LESSON05"):
        print(f"Using the Fader Network that `faceedu train fader` (or `faceedu tour`) trained in {quick}; "
              "set FACEEDU_TRAIN_LESSON05=1 to train one with your own fader_step instead.")
        return (*load_run(quick)[:2], quick)
    if fast:
        run, steps = Path(tempfile.mkdtemp(prefix="faceedu-05-fader-")), 12
        config = preset("quick", lambda_start=4, lambda_steps=4)
        data = load_face_tensors(root, split="train", size=config.image_size, masks=False, crop=config.crop, limit=256)
    else:
        run, data = runs / "fader-lesson05", None
    steps = steps or config.steps
    print(f"Training the quick Fader Network for {steps} steps into {run} with your fader_step ...")
    if step_fn is not None and config.ssim_weight:
        print(f"(The reference quick preset adds {config.ssim_weight:g} x (1 - SSIM) to the paper's MSE, which your "
              "fader_step does not: expect blurrier faces than runs/fader-quick. docs/fader.md says why.)")
    if step_fn is not None and config.n_clf_dis:
        config = replace(config, n_clf_dis=0, lambda_clf_dis=0.0)
        print("(The reference quick preset also trains the official classifier discriminator, which the lesson's "
              "fader_step leaves out: your run trains without it, so expect weaker attribute flips.)")
    train_fader(config, run, root, steps=steps, preset_name="quick", dataset=data, step_fn=step_fn,
                schedule_fn=schedule_fn, loop=LoopConfig(progress=not fast, sample_every=0 if fast else 500,
                                                         log_every=2 if fast else 25))
    return (*load_run(run)[:2], run)


def load_run(run_dir: Path | str, map_location: str | torch.device = "cpu") -> tuple[AutoEncoder, LatentDiscriminator, dict]:
    """The trained auto-encoder and latent discriminator of a run folder (eval mode) and its config.json."""
    described, modules = read_run(run_dir, "fader", "a Fader Network", map_location)
    return (*_networks(described, modules), described)


def load_classifier(run_dir: Path | str, map_location: str | torch.device = "cpu") -> FN.Classifier | None:
    """The run's classifier discriminator (eval mode), or None when the run trained none."""
    return _classifier(*read_run(run_dir, "fader", "a Fader Network", map_location))


def _networks(described: dict, modules: dict) -> tuple[AutoEncoder, LatentDiscriminator]:
    config = FaderConfig.from_dict(described["fader"])
    ae, lat_dis = AutoEncoder(config), LatentDiscriminator(config)
    ae.load_state_dict(modules.get("ae_ema", modules["ae"]))        # the moving average when the run kept one
    lat_dis.load_state_dict(modules["lat_dis"])
    return ae.eval(), lat_dis.eval()


def _classifier(described: dict, modules: dict) -> FN.Classifier | None:
    if "clf_dis" not in modules:
        return None
    clf_dis = FN.Classifier(FaderConfig.from_dict(described["fader"]))
    clf_dis.load_state_dict(modules["clf_dis"])
    return clf_dis.eval()


@torch.no_grad()
def classifier_reads(clf_dis: FN.Classifier, images: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """(N, A) 0/1: the attributes the classifier discriminator reads (argmax of each pair) on images in [0, 1]."""
    device = next(clf_dis.parameters()).device
    logits = torch.cat([clf_dis(FN.to_model(b).to(device)).cpu() for b in images.split(batch)])
    return logits.view(len(images), -1, 2).argmax(2).float()


def is_finished(run_dir: Path | str, steps: int | None = None) -> bool:
    """A Fader run folder whose checkpoint reached its (or the given) number of steps."""
    return run_finished(run_dir, "fader", steps)


# --- editing with a run (faceedu edit) ----------------------------------------------------------------

TRAINED_RANGE = (-1.0, 1.0)


def check_alphas(config: FaderConfig, alphas: dict[str, float]) -> torch.Tensor:
    """{attribute: alpha} -> (A,) in the run's attribute order (unnamed attributes stay at the value the
    caller fills in later as NaN). An attribute the run was not trained on is refused by name; an alpha
    outside the trained range [-1, 1] warns (extrapolation: the paper goes to 2 for glasses and gender)."""
    alpha = torch.full((len(config.attrs),), float("nan"))
    for name, value in alphas.items():
        if name not in config.attrs:
            raise ValueError(f"this Fader run was trained on {', '.join(config.attrs)}; it cannot change {name!r}. "
                             f"Train one with `faceedu train fader --attrs {','.join(config.attrs + (name,))}`.")
        if not TRAINED_RANGE[0] <= value <= TRAINED_RANGE[1]:
            warnings.warn(f"alpha {value:g} for {name} is outside the trained range [-1, 1] (-1 absent, +1 present): "
                          "the decoder extrapolates, faces may break up beyond |alpha| = 2.", stacklevel=2)
        alpha[config.attrs.index(name)] = float(value)
    return alpha


def edit_with_run(ae: AutoEncoder, images: torch.Tensor, y: torch.Tensor | None, alphas: dict[str, float]) -> torch.Tensor:
    """Faces in [0, 1] with some attributes set to alpha; the others keep their value y (N, A) (0 if unknown)."""
    alpha = check_alphas(ae.config, alphas)
    base = 2 * (y if y is not None else torch.zeros(len(images), len(alpha))).float() - 1
    alpha = torch.where(torch.isnan(alpha), base, alpha.expand_as(base))
    return FN.edit(ae, images, alpha)


# --- measuring a run with the judges ------------------------------------------------------------------


def spearman(x: torch.Tensor, y: torch.Tensor) -> float:
    """Spearman's rank correlation of two 1-D sequences (no ties expected; a tie is ranked by position).
    The ranks are two permutations, so rho = 1 - 6 sum(d^2) / (n (n^2 - 1)) exactly, computed from integers:
    a slider whose rho is 9/10 meets a 0.9 bar (Pearson's formula on the ranks gave 0.8999999999999999)."""
    n = len(x)
    d = x.argsort().argsort() - y.argsort().argsort()
    return 1 - 6 * int((d * d).sum()) / (n * (n * n - 1))


@torch.no_grad()
def judge_probabilities(judge, images: torch.Tensor, batch: int = 500) -> torch.Tensor:
    device = next(judge.parameters()).device
    return torch.cat([torch.sigmoid(judge(images[i:i + batch].to(device)).float()).cpu()
                      for i in range(0, len(images), batch)])


def flip_ceiling(read: torch.Tensor, truth: torch.Tensor) -> float:
    """The judge's reading `read` (N,) of real faces with 0/1 labels `truth` (N,): its accuracy on the faces
    that have each value, weighted by how many flips ask for that value (the faces that have the other one)."""
    share = {v: float((truth == v).float().mean()) for v in (0.0, 1.0)}
    accuracy = {v: float((read[truth == v] == v).float().mean()) if share[v] else float("nan")
                for v in (0.0, 1.0)}
    return accuracy[1.0] * share[0.0] + accuracy[0.0] * share[1.0]


@torch.no_grad()
def evaluate_fader(ae: AutoEncoder, lat_dis: LatentDiscriminator, data: Any, judges, faces: int = 500,
                   alphas: tuple[float, ...] = (-2, -1.5, -1, -0.5, 0, 0.5, 1, 1.5, 2),
                   classifier: FN.Classifier | None = None) -> dict:
    """Everything the lesson's bars measure, on the first `faces` items of `data` (a FaceTensors split):

    - per trained attribute, flipping it (alpha = -1 where present, +1 where absent, the rest at their
      labels): success = share the attribute judge reads with the new value; kept = share of the judge's
      other attributes (those it reads reliably on the reconstructions) unchanged vs the reconstruction;
      identity cosine between reconstruction and edit (identity judge); success_ceiling = the judge's
      accuracy on the real faces themselves, per true value, weighted as the flips' targets are: what an
      edit that drew a real face with the new value would score (the bar's ceiling with this judge);
    - the slider: the judge's mean probability of the attribute over alpha, and Spearman's rho against alpha;
    - reconstruction with the true attributes: SSIM inside the face mask (faceedu.metrics.ssim);
    - the latent discriminator's accuracy on these faces vs the majority rate, per attribute and mean;
    - given the run's `classifier` discriminator: per flip, `classifier_success` (and its added / removed
      shares), the same success as that critic reads it (docs/fader.md: it is convinced where the judge is
      not), and `classifier_on_real`, its accuracy per attribute on the real faces."""
    from faceedu import metrics as M

    judge, identity = judges.attributes, judges.identity
    config = ae.config
    columns = attribute_columns(list(data.attr_names), config.attrs)
    x = data.images[:faces].float().div(255) if data.images.dtype == torch.uint8 else data.images[:faces].float()
    y = data.attr[:faces][:, columns].float()
    recon = FN.reconstruct(ae, x, y)
    out: dict[str, Any] = {"faces": len(x), "attrs": list(config.attrs)}
    if getattr(data, "masks", None) is not None:
        mask = data.masks[:faces].float()
        out["masked_ssim"] = float(M.ssim(recon, x, mask=mask).mean())
    out["ssim"] = float(M.ssim(recon, x).mean())
    seen = judge.predict(recon)
    labels = data.attr[:faces].float()
    names = list(data.attr_names)
    reliable = [i for i, n in enumerate(judge.attributes)
                if n in names and float((seen[:, i] == labels[:, names.index(n)]).float().mean()) >= 0.9]
    out["judge_on_reconstructions"] = {n: float((seen[:, i] == labels[:, names.index(n)]).float().mean())
                                       for i, n in enumerate(judge.attributes) if n in names}
    on_real = judge.predict(x)
    rows = []
    for a, name in enumerate(config.attrs):
        alpha = 2 * y - 1
        alpha[:, a] = -alpha[:, a]
        edited = FN.edit(ae, x, alpha)
        after = judge.predict(edited)
        j = judge.index(name)
        others = [i for i in reliable if i != j]
        kept = (after[:, others] == seen[:, others]).float().mean(0)
        # shares in float64: 450 of 500 faces is 0.9, where a float32 mean is 0.89999998, under a 90 % bar
        row = {"attribute": name, "success": float((after[:, j] == 1 - y[:, a]).double().mean()),
               "success_add": float(after[y[:, a] == 0, j].mean()) if (y[:, a] == 0).any() else float("nan"),
               "success_remove": float(1 - after[y[:, a] == 1, j].mean()) if (y[:, a] == 1).any() else float("nan"),
               # no other attribute read reliably on the reconstructions (a barely trained model): nothing to keep
               "kept": float(kept.mean()) if others else float("nan"),
               "kept_worst": judge.attributes[others[int(kept.argmin())]] if others else "",
               "kept_min": float(kept.min()) if others else float("nan"), "reliable": len(others),
               "success_ceiling": flip_ceiling(on_real[:, j], y[:, a])}
        if identity is not None:
            row["identity_cosine"] = float(identity.similarity(recon, edited).mean())
        if classifier is not None:
            read = classifier_reads(classifier, edited)[:, a]
            row |= {"classifier_success": float((read == 1 - y[:, a]).float().mean()),
                    "classifier_success_add": float(read[y[:, a] == 0].mean()) if (y[:, a] == 0).any() else float("nan"),
                    "classifier_success_remove": (float(1 - read[y[:, a] == 1].mean()) if (y[:, a] == 1).any()
                                                  else float("nan"))}
        slider = []
        for value in alphas:
            alpha = 2 * y - 1
            alpha[:, a] = value
            slider.append(float(judge_probabilities(judge, FN.edit(ae, x, alpha))[:, j].mean()))
        row["slider"] = dict(zip(map(float, alphas), slider))
        row["spearman"] = spearman(torch.tensor(alphas, dtype=torch.float64), torch.tensor(slider))
        rows.append(row)
    out["flips"] = rows
    if classifier is not None:
        out["classifier_on_real"] = {n: float(v) for n, v in zip(config.attrs, (classifier_reads(classifier, x) == y).float().mean(0))}
    out["kept_mean"] = sum(r["kept"] for r in rows) / len(rows)
    z = torch.cat([ae.encode(FN.to_model(b)) for b in x.split(256)])
    accuracy = FN.attribute_accuracy(lat_dis.eval()(z), y)
    majority = torch.maximum(y.mean(0), 1 - y.mean(0))
    out["lat_dis"] = {"accuracy": float(accuracy.mean()), "majority": float(majority.mean()),
                      "per_attribute": {n: float(v) for n, v in zip(config.attrs, accuracy)}}
    out["reconstructions"], out["originals"] = recon, x
    return out


@torch.no_grad()
def judged_flips(edit_fn, x: torch.Tensor, recon: torch.Tensor, labels: torch.Tensor, names: list[str],
                 attrs: tuple[str, ...], judges) -> list[dict]:
    """The same measurement for any editor: `edit_fn(x, name, targets)` returns x with attribute `name` set
    to `targets` (N,) in {0, 1}. Per attribute: success (the judge reads the target), kept (the judge's other
    attributes that it reads reliably - >= 90% against the labels - on this model's reconstructions,
    unchanged vs the reconstruction) and the identity judge's cosine between reconstruction and edit."""
    judge, identity = judges.attributes, judges.identity
    seen = judge.predict(recon)
    reliable = [i for i, n in enumerate(judge.attributes)
                if n in names and float((seen[:, i] == labels[:, names.index(n)].float()).float().mean()) >= 0.9]
    rows = []
    for name in attrs:
        target = 1 - labels[:, names.index(name)].float()
        edited = edit_fn(x, name, target)
        after = judge.predict(edited)
        j = judge.index(name)
        others = [i for i in reliable if i != j]
        kept = (after[:, others] == seen[:, others]).float().mean(0)
        row = {"attribute": name, "success": float((after[:, j] == target).float().mean()), "kept": float(kept.mean()),
               "kept_worst": judge.attributes[others[int(kept.argmin())]] if others else "",
               "reliable": len(others)}
        if identity is not None:
            row["identity_cosine"] = float(identity.similarity(recon, edited).mean())
        rows.append(row)
    return rows


def compare_with_vae(fader_run: Path | str, vae_run: Path | str, root: Path | str, faces: int = 300,
                     scale: float = 2.0, vector_faces: int = 8000, judges_folder: Path | str | None = None) -> dict:
    """Lesson 05 against lesson 03 on the same test faces and the same judges: each of the Fader run's
    attributes flipped by the Fader Network (alpha = -+1) and by the quick VAE's attribute vector
    (mu -+ scale * v_a, vectors from `vector_faces` training faces). The result names the judges (what they
    were trained on) and carries the warning when they were trained on other faces than `root` holds."""
    from faceedu import editing
    from faceedu.models.judges import judges_for

    ae, _, _ = load_run(fader_run)
    judges = judges_for(root, judges_folder, kinds=["attributes", "identity"], verbose=False)
    judges.require("attributes")
    data = load_data(root, "test", ae.config, limit=faces)
    names = list(data.attr_names)
    x, labels = data.images.float().div(255), data.attr.float()
    columns = attribute_columns(names, ae.config.attrs)
    y = labels[:, columns]

    def fader_edit(images, name, target):
        alpha = 2 * y - 1
        alpha[:, ae.config.attrs.index(name)] = 2 * target - 1
        return FN.edit(ae, images, alpha)

    space = editing.LatentSpace.from_run(vae_run, root, limit=vector_faces)
    mu = editing.encode(space.vae, x)

    def vae_edit(images, name, target):
        signs = (2 * target - 1)[:, None]                              # +scale adds the attribute, -scale removes it
        return editing.decode(space.vae, mu + signs * scale * space.vector(name), images)

    return {"faces": len(x), "scale": scale, "attrs": list(ae.config.attrs),
            "judges": judges.describe(), "judge_warnings": judges.warnings,
            "fader": judged_flips(fader_edit, x, FN.reconstruct(ae, x, y), labels, names, ae.config.attrs, judges),
            "vae": judged_flips(vae_edit, x, editing.decode(space.vae, mu, x), labels, names, ae.config.attrs, judges)}


def comparison_markdown(result: dict) -> str:
    lines = ["| attribute | method | success | kept | least kept | identity cosine |", "|---|---|---|---|---|---|"]
    for name in result["attrs"]:
        for key, label in (("fader", "Fader Network (lesson 05), α = ∓1"),
                           ("vae", f"VAE attribute vector (lesson 03), ∓{result['scale']:g} v")):
            r = next(row for row in result[key] if row["attribute"] == name)
            lines.append(f"| {name.replace('_', ' ')} | {label} | {r['success']:.0%} | {r['kept']:.0%} | "
                         f"{r['kept_worst'].replace('_', ' ')} | {r.get('identity_cosine', float('nan')):.3f} |")
    lines += [""] + [f"Judged by the {line}." for line in result.get("judges", [])] + result.get("judge_warnings", [])
    return "\n".join(lines) + "\n"


def accuracy_curve(run_dir: Path | str) -> list[dict]:
    """(step, lambda, lat_dis_acc) rows of a run's metrics.jsonl."""
    rows = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [{"step": r["step"], "lambda": r.get("lambda", 0.0), "lat_dis_acc": r["lat_dis_acc"]}
            for r in rows if "lat_dis_acc" in r]


def accuracy_figure(run_dir: Path | str, path: Path | str, majority: float | None = None) -> Path:
    """The latent discriminator's accuracy against lambda_E and against the step (the lesson's plot)."""
    import matplotlib.pyplot as plt

    from faceedu.viz import save_figure

    curve = accuracy_curve(run_dir)
    steps = [r["step"] for r in curve]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.2))
    right.plot(steps, [r["lat_dis_acc"] for r in curve], color="C0", label="discriminator accuracy")
    twin = right.twinx()
    twin.plot(steps, [r["lambda"] for r in curve], color="C1", label=r"$\lambda_E$")
    twin.set_ylabel(r"$\lambda_E$", color="C1")
    right.set_xlabel("step")
    right.set_ylabel("accuracy (moving average)")
    left.plot([r["lambda"] for r in curve], [r["lat_dis_acc"] for r in curve], ".-", ms=3)
    left.set_xlabel(r"$\lambda_E$")
    left.set_ylabel("latent discriminator accuracy")
    for ax in (left, right):
        if majority is not None:
            ax.axhline(majority, color="grey", ls="--", lw=1, label="majority rate")
        ax.set_ylim(0.3, 1.02)
    left.legend(fontsize=7)
    fig.suptitle("Reading the attributes from the latent, as the adversary's weight rises", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def slider_figure(ae: AutoEncoder, x: torch.Tensor, y: torch.Tensor, path: Path | str,
                  alphas: tuple[float, ...] = (-2, -1, -0.5, 0, 0.5, 1, 2)) -> Path:
    """For each attribute, one face per row swept over alpha (the others kept at their labels)."""
    import matplotlib.pyplot as plt

    from faceedu.viz import save_figure

    names = ae.config.attrs
    fig, axes = plt.subplots(len(names) * len(x), len(alphas), figsize=(1.1 * len(alphas), 1.15 * len(names) * len(x)),
                             squeeze=False)
    for a, name in enumerate(names):
        for f in range(len(x)):
            alpha = (2 * y[f:f + 1].float() - 1).repeat(len(alphas), 1)
            alpha[:, a] = torch.tensor(alphas)
            images = FN.edit(ae, x[f:f + 1].expand(len(alphas), -1, -1, -1), alpha)
            row = a * len(x) + f
            for c, image in enumerate(images):
                ax = axes[row, c]
                ax.imshow(image.permute(1, 2, 0).numpy())
                ax.set_xticks([]), ax.set_yticks([])
                if row == 0:
                    ax.set_title(f"α = {alphas[c]:g}", fontsize=7)
            axes[row, 0].set_ylabel(name.replace("_", " "), fontsize=7)
    fig.tight_layout(pad=0.2)
    return save_figure(fig, path)


def report(run_dir: Path | str, out: Path | str | None = None, root: Path | str | None = None, faces: int = 500,
           figures: bool = True, judges: Path | str | None = None) -> dict:
    """`faceedu eval RUN` for a Fader run: evaluate_fader on the test split, the Fréchet distance of the
    flipped faces in the judge's feature space (with its real-vs-real floor; not FID), eval.json and figures.
    `judges`: a judges folder (default: the shipped SynthFaces ones); the report names what they were trained
    on and warns when that is not the kind of faces under `root` (the SynthFaces judges on real CelebA)."""
    from faceedu import metrics as M
    from faceedu.models.judges import judges_for
    from faceedu.viz import save_grid

    run_dir = Path(run_dir)
    described, modules = read_run(run_dir, "fader", "a Fader Network")   # one read for every network
    ae, lat_dis = _networks(described, modules)
    root = Path(root) if root is not None else Path(described["data"])
    out = Path(out) if out is not None else run_dir / "eval"
    out.mkdir(parents=True, exist_ok=True)
    data = load_data(root, "test", ae.config, limit=max(faces, 1000))
    referees = judges_for(root, judges, kinds=["attributes", "identity"], verbose=False)
    referees.require("attributes")
    result = evaluate_fader(ae, lat_dis, data, referees, faces=faces, classifier=_classifier(described, modules))
    x, recon = result.pop("originals"), result.pop("reconstructions")
    y = data.attr[:faces][:, attribute_columns(list(data.attr_names), ae.config.attrs)]
    flipped = FN.edit(ae, x, 1 - 2 * y.float())       # every attribute flipped at once
    real = data.images[:1000].float().div(255)
    result["frechet"] = {"reconstructions": M.generation_report(referees.attributes, real, recon),
                         "all_flipped": M.generation_report(referees.attributes, real, flipped)}
    result |= {"run": str(run_dir), "preset": described.get("preset"), "steps": described.get("loop", {}).get("steps"),
               "judges": referees.describe(), "judge_warnings": referees.warnings}
    (out / "eval.json").write_text(json.dumps(result, indent=1) + "\n")
    if figures:
        slider_figure(ae, x[:2], y[:2], out / "sliders.png")
        accuracy_figure(run_dir, out / "lat_dis_accuracy.png", result["lat_dis"]["majority"])
        rows = [x[:8], recon[:8]]
        for a in range(len(ae.config.attrs)):
            alpha = 2 * y[:8].float() - 1
            alpha[:, a] = -alpha[:, a]
            rows.append(FN.edit(ae, x[:8], alpha))
        save_grid(torch.cat(rows), out / "flips.png")
    return result


def format_report(result: dict) -> str:
    lines = [f"{'attribute':<12} {'success':>8} {'ceiling':>8} {'kept':>6} {'least kept':>22} {'identity':>9} {'spearman':>9}"]
    for r in result["flips"]:
        lines.append(f"{r['attribute']:<12} {r['success']:>8.1%} {r.get('success_ceiling', float('nan')):>8.1%} {r['kept']:>6.1%} "
                     f"{r['kept_worst'] + ' ' + format(r['kept_min'], '.0%'):>22} "
                     f"{r.get('identity_cosine', float('nan')):>9.3f} {r['spearman']:>9.3f}")
    if "classifier_on_real" in result:
        lines.append("flip success added / removed, by the judge and by the run's classifier discriminator "
                     "(its accuracy on the real faces in brackets):")
        for r in result["flips"]:
            lines.append(f"  {r['attribute']:<12} judge {r['success_add']:.1%} / {r['success_remove']:.1%}, classifier "
                         f"{r['classifier_success_add']:.1%} / {r['classifier_success_remove']:.1%} "
                         f"({result['classifier_on_real'][r['attribute']]:.1%})")
    d = result["lat_dis"]
    lines.append(f"reconstruction SSIM in the face mask {result.get('masked_ssim', float('nan')):.3f} "
                 f"(whole image {result['ssim']:.3f})")
    lines.append(f"latent discriminator accuracy {d['accuracy']:.1%} (majority rate {d['majority']:.1%})")
    if "frechet" in result:
        for k, v in result["frechet"].items():
            lines.append(f"Fréchet distance (judge features, not FID) of {k}: {v['frechet']:.2f} "
                         f"(real-vs-real floor {v['frechet_floor']:.2f})")
    lines += [f"judged by the {line}" for line in result.get("judges", [])] + result.get("judge_warnings", [])
    return "\n".join(lines)


# --- command line ------------------------------------------------------------------------------------


def command_train(args) -> int:
    """`faceedu train fader`: a preset, flags overriding its fields; resumes if --run holds a checkpoint."""
    overrides: dict[str, Any] = {"lr": args.lr, "batch_size": args.batch_size}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if args.attrs:
        overrides["attrs"] = tuple(a.strip() for a in args.attrs.split(",") if a.strip())
    if args.data == "celeba" and args.preset == "quick":
        overrides.setdefault("crop", "center")
    config = preset(args.preset, **overrides)
    root = data_root(args)
    run = args.run or Path("runs") / f"fader-{args.preset}"
    loop = loop_from_args(args)
    try:
        summary = train_fader(config, run, root, steps=args.steps, loop=loop, preset_name=args.preset, seed=args.seed)
    except ValueError as error:
        raise SystemExit(f"faceedu train fader: {error}") from None
    print(f"Next: faceedu eval {run}   or   faceedu edit {run} --image FACE.jpg --attr {config.attrs[0]} --alpha 1")
    return 0 if summary else 1


def command_eval(run_dir: Path, args) -> int:
    result = report(run_dir, root=getattr(args, "run_root", None), faces=getattr(args, "limit", None) or 500,
                    judges=getattr(args, "judges", None))
    print(f"{run_dir} ({result['preset']}, {result['faces']} test faces)")
    print(format_report(result))
    print(f"Wrote {run_dir / 'eval'}/eval.json, sliders.png, flips.png, lat_dis_accuracy.png")
    return 0


def command_edit(args) -> int:
    """`faceedu edit RUN --image PATH --attr NAME --alpha A [...]` for a Fader run: the named attributes set
    to alpha (+1 present, -1 absent), the others at the values `--attrs-of` the image gives (default: absent)."""
    from faceedu.editing import _read_face
    from faceedu.viz import save_grid

    ae, _, _ = load_run(args.run)
    values = args.alpha if args.alpha is not None else args.scale
    values = values or [1.0]
    if len(values) not in (1, len(args.attr)):
        raise SystemExit(f"faceedu edit: give one --alpha for all attributes or one per --attr "
                         f"({len(args.attr)} attributes, {len(values)} alphas).")
    alphas = dict(zip(args.attr, values * len(args.attr) if len(values) == 1 else values))
    try:
        FN_alpha = check_alphas(ae.config, alphas)
    except ValueError as error:
        raise SystemExit(f"faceedu edit: {error}") from None

    class _Size:                                 # _read_face wants .config.image_size and .config.crop
        config = ae.config

    x = _read_face(Path(args.image), _Size)
    from faceedu.models.judges import load_judges

    judge = load_judges(kinds=["attributes"]).attributes
    if judge is not None and all(a in judge.attributes for a in ae.config.attrs):
        y = judge.predict(x)[:, [judge.index(a) for a in ae.config.attrs]]  # the others as the judge sees them
    else:
        y = torch.zeros(1, len(ae.config.attrs))
    alpha = torch.where(torch.isnan(FN_alpha), 2 * y[0] - 1, FN_alpha)
    edited = FN.edit(ae, x, alpha[None])
    images = torch.cat([x, FN.reconstruct(ae, x, y), edited]) if args.compare else edited
    save_grid(images, Path(args.out), columns=len(images))
    what = ", ".join(f"{n} alpha {s:+g}" for n, s in alphas.items())
    print(f"Wrote {args.out} ({'input | reconstruction | ' if args.compare else ''}{what}).")
    return 0


def bench_tasks(preset_name: str = "quick") -> dict[str, tuple[FaderTask, dict]]:
    """For `faceedu bench`: the Fader Task at a preset and one synthetic batch."""
    config = preset(preset_name)
    g = torch.Generator().manual_seed(0)
    size = config.image_size
    batch = {"image": torch.rand(config.batch_size, 3, size, size, generator=g),
             "attr": (torch.rand(config.batch_size, len(config.attrs), generator=g) > 0.5).float()}
    return {"fader": (FaderTask(config), batch)}


__all__ = ["FaderTask", "train_fader", "load_run", "load_data", "evaluate_fader", "flip_ceiling", "report", "format_report",
           "check_alphas", "edit_with_run", "judge_view", "standing_statistics", "lesson_fader", "compare_with_vae",
           "judged_flips", "comparison_markdown", "accuracy_figure", "slider_figure", "is_finished", "spearman"]
