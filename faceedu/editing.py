"""Editing faces with a trained face VAE (Toledo & Antonelo, ENIAC 2021; their poster's figures 10-13):
encode a data set, fit attribute vectors by name, edit faces, measure the edits with the judges, and draw
the figures. `faceedu.latent` holds the arithmetic on tensors; this module connects it to `FaceVAE`, the
data, the judges and the command line:

    faceedu edit RUN --image face.jpg --attr Eyeglasses --scale 1.5 --out glasses.png
    faceedu latent RUN --out runs/vae-quick/latent          # table, entanglement, spectra, batch edits

An edit encodes a face to the mean of q(z|x) (no sampling: the same face must give the same edit), adds
a scaled attribute vector, decodes image and mask, and pastes the prediction onto the input with the
*decoded* mask, as the paper's predictor does:

    z' = mu(x) + s v_a,   out = g(z') * m(z') + x * (1 - m(z'))

so the background stays the input's while face, hair and hat are the edited decoder's.
"""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from faceedu import latent as LT
from faceedu.data.stats import phi_matrix
from faceedu.models.vae import FaceVAE

# Poster figures 11-13: batch edits of hair colour and of beard type.
HAIR_COLOURS = ("Black_Hair", "Brown_Hair", "Blond_Hair", "Gray_Hair")
BEARDS = ("Goatee", "Mustache", "No_Beard")
# Two attributes count as correlated in the data when |phi| >= this. SynthFaces' deliberate pairs reach
# 0.15-0.9 and their knock-on effects 0.09-0.15 (glasses go with blond, hence less with brown: 0.10);
# pairs that owe nothing to each other stay below 0.05 (identity-level traits: +-0.03 of noise).
CORRELATED_PHI = 0.08
CACHE_VERSION = 1
# An attribute's judgement counts towards "kept" only where the judge reads it this well on the model's
# reconstructions (against the labels); below, the judgement is close to a coin toss and flips anyway.
RELIABLE_ACCURACY = 0.9


# --- encoding and decoding ----------------------------------------------------------------------------

def _as_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 0-255 (as FaceTensors stores them) or float 0-1 -> float 0-1."""
    return images.float().div(255) if images.dtype == torch.uint8 else images.float()


@torch.no_grad()
def encode(vae: FaceVAE, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """The latent means mu (N, latent) of images (N, 3, S, S) (float in [0, 1] or uint8), encoded in eval
    mode (BatchNorm with its running statistics, so a face's code does not depend on its batch) and in
    batches; the model's mode is restored afterwards."""
    was_training = vae.training
    vae.eval()
    device = next(vae.parameters()).device
    try:
        codes = [vae.encoder(_as_float(chunk).to(device))[0].cpu() for chunk in images.split(batch_size)]
    finally:
        vae.train(was_training)
    return torch.cat(codes) if codes else torch.zeros(0, vae.config.latent)


@torch.no_grad()
def decode(vae: FaceVAE, z: torch.Tensor, background: torch.Tensor | None = None) -> torch.Tensor:
    """Decode codes z (N, latent) to images (N, 3, S, S) in [0, 1]. With `background` (N, 3, S, S) and a
    mask decoder, the prediction is pasted onto it with the decoded mask (the paper's inference)."""
    device = next(vae.parameters()).device
    pred, mask = vae.eval().decode(z.to(device))
    if background is None or mask is None:
        return pred.cpu()
    background = _as_float(background).to(device)
    return (pred * mask + background * (1 - mask)).cpu()


def decoder(vae: FaceVAE):
    """decode(z, background=None) for `faceedu.latent`'s functions (their `images` argument is passed as the background)."""
    return lambda z, background=None: decode(vae, z, background)


@torch.no_grad()
def edit_faces(vae: FaceVAE, x: torch.Tensor, vector: torch.Tensor, scale: float | torch.Tensor) -> torch.Tensor:
    """Faces x (N, 3, S, S) in [0, 1] edited along `vector` (latent,): z = mu(x) + scale * vector, decoded
    and pasted onto x with the decoded mask. `scale` is a number or one per face (N,)."""
    mu = encode(vae, x)
    return decode(vae, LT.apply_edit(mu, vector, scale), x)


# --- the model a lesson edits ---------------------------------------------------------------------------

def lesson_vae(root: Path | str, steps: int, fast: bool = False) -> tuple[FaceVAE, Path]:
    """The VAE lesson 03 edits, and its run folder, the first of: $FACEEDU_VAE_RUN; runs/vae-quick if
    `faceedu train vae` finished one there; runs/vae-lesson03, trained here with the quick preset for
    `steps` steps (resumable: re-running the notebook reuses it). Fast mode trains a few steps in a
    temporary folder (for tests: the pictures mean nothing, the code paths are the same)."""
    import os
    import tempfile

    from faceedu.data.tensors import load_face_tensors
    from faceedu.models.vae import preset
    from faceedu.train.loop import CHECKPOINT, LoopConfig, run_finished
    from faceedu.train.vae import default_steps, load_run, run_model_differences, train_vae

    repo = Path(__file__).resolve().parents[1]         # a source checkout (not an installed package)
    if os.environ.get("FACEEDU_VAE_RUN"):
        run = Path(os.environ["FACEEDU_VAE_RUN"]).expanduser()
        if not run_finished(run, "vae", 0):
            raise FileNotFoundError(f"FACEEDU_VAE_RUN={run} holds no trained VAE (config.json and {CHECKPOINT}).")
        print(f"Using the VAE in {run} (FACEEDU_VAE_RUN).")
        return load_run(run)[0], run
    config = preset("quick")
    runs = repo / "runs" if (repo / "pyproject.toml").is_file() else Path.home() / ".cache" / "faceedu" / "runs"
    quick = runs / "vae-quick"
    if not fast and run_finished(quick, "vae", default_steps(config)):
        print(f"Using the VAE that `faceedu train vae` trained in {quick}.")
        return load_run(quick)[0], quick
    if fast:
        run, steps = Path(tempfile.mkdtemp(prefix="faceedu-03-vae-")), 12
    else:
        run = runs / "vae-lesson03"
    if not fast and run_finished(run, "vae", steps):
        print(f"Using the VAE trained earlier in {run}.")
        return load_run(run)[0], run                     # its config.json builds the network it was trained as
    if not fast and run_model_differences(config, run) and (run / CHECKPOINT).is_file():
        stale = run.with_name(run.name + "-other-model")   # an unfinished run of an older network: kept, not resumed
        print(f"{run} holds an unfinished VAE of another network; moved to {stale}, training afresh.")
        run.rename(stale)
    print(f"Training the quick VAE for {steps} steps into {run} (later runs of this notebook reuse it) ...")
    data = load_face_tensors(root, "train", size=config.image_size, masks=config.use_mask, crop=config.crop,
                             limit=256) if fast else None
    train_vae(config, run, root, steps=steps, preset_name="quick", dataset=data,
              loop=LoopConfig(progress=not fast, log_every=max(1, steps // 50), sample_every=0,
                              checkpoint_every=max(1, steps // 4)))
    return load_run(run)[0], run


# --- the latent space of a model: attribute vectors by name ------------------------------------------

def close_matches(name: str, names: Sequence[str]) -> str:
    """ 'Did you mean ...?' text for an unknown attribute name."""
    lowered = {n.lower(): n for n in names}
    found = difflib.get_close_matches(name.lower(), list(lowered), n=3, cutoff=0.5)
    found += [lowered[n] for n in lowered if name.lower() in n and lowered[n] not in found]
    found = [lowered.get(n, n) for n in found]
    return f" Did you mean {', '.join(dict.fromkeys(found))}?" if found else ""


@dataclass
class LatentSpace:
    """A trained VAE with the latent means of a labelled set of faces: what attribute vectors, their
    correlations and the conditional (orthogonalised) directions are computed from."""

    vae: FaceVAE
    mu: torch.Tensor                 # (N, latent) latent means of the faces
    attrs: torch.Tensor              # (N, A) 0/1 labels
    names: list[str]                 # the A attribute names

    def __post_init__(self) -> None:
        varying = [i for i in range(len(self.names)) if 0 < float(self.attrs[:, i].float().mean()) < 1]
        self.names = [self.names[i] for i in varying]       # attributes with both classes present
        self.attrs = self.attrs[:, varying].float()
        self.mu = self.mu.float()
        self.vectors = LT.attribute_vectors(self.mu, self.attrs)   # (A, latent)
        self.phi = phi_matrix(self.attrs)                           # (A, A) label correlations

    # -- construction --

    @classmethod
    def fit(cls, vae: FaceVAE, images: torch.Tensor, attrs: torch.Tensor, names: Sequence[str],
            batch_size: int = 256) -> "LatentSpace":
        return cls(vae, encode(vae, images, batch_size), attrs, list(names))

    @classmethod
    def from_run(cls, run: Path | str, root: Path | str | None = None, split: str = "train",
                 limit: int | None = None, cache: bool = True) -> "LatentSpace":
        """Load RUN's VAE and encode the split it was trained on (or `root`'s); the latent means are cached
        in RUN/latent/ (a few MB) and recomputed when the checkpoint changes."""
        from faceedu.train.loop import CHECKPOINT
        from faceedu.data.tensors import load_face_tensors
        from faceedu.train.vae import load_run, run_data_root

        run = Path(run)
        vae, described = load_run(run)
        root = run_data_root(run, described, root)
        stamp = (run / CHECKPOINT).stat()
        key = {"v": CACHE_VERSION, "checkpoint": [stamp.st_size, int(stamp.st_mtime)], "root": str(root.resolve()),
               "split": split, "limit": limit}
        path = run / "latent" / f"{split}-codes.pt"
        if cache and path.is_file():
            saved = torch.load(path, weights_only=True)
            if saved["key"] == json.dumps(key):
                return cls(vae, saved["mu"].float(), saved["attrs"], saved["names"])
        data = load_face_tensors(root, split, size=vae.config.image_size, masks=False, crop=vae.config.crop,
                                 limit=limit)
        space = cls(vae, encode(vae, data.images), data.attr, data.attr_names)
        if cache:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            torch.save({"key": json.dumps(key), "mu": space.mu.half(), "attrs": data.attr.to(torch.uint8),
                        "names": list(data.attr_names)}, tmp)
            tmp.replace(path)
        return space

    # -- attribute vectors --

    def index(self, name: str) -> int:
        if name not in self.names:
            raise KeyError(f"No attribute vector for {name!r}.{close_matches(name, self.names)} "
                           f"Attributes of this data: {', '.join(self.names)}.")
        return self.names.index(name)

    def vector(self, name: str) -> torch.Tensor:
        """v_a = mean mu of faces with `name` minus mean mu of faces without it."""
        return self.vectors[self.index(name)]

    def correlated(self, name: str, threshold: float = CORRELATED_PHI) -> list[str]:
        """Attributes whose labels correlate with `name` (|phi| >= threshold): an edit of `name` is
        expected to move them too, by design of the data or by definition (one hair colour at a time)."""
        row = self.phi[self.index(name)]
        return [n for i, n in enumerate(self.names) if n != name and abs(float(row[i])) >= threshold]

    def held(self, name: str, threshold: float = CORRELATED_PHI) -> list[str]:
        """The correlated attributes an edit of `name` should leave alone: correlated ones that can co-occur
        with it (not Black_Hair for Blond_Hair: a face cannot have both, so blond must remove black)."""
        a = self.attrs[:, self.index(name)]
        return [n for n in self.correlated(name, threshold) if float((a * self.attrs[:, self.index(n)]).sum()) > 0]

    def held_direction(self, held: str, name: str) -> torch.Tensor:
        """The direction of attribute `held` measured among faces that agree on `name` (a stratified
        vector): for Eyeglasses held while editing Blond_Hair, glasses as they differ within blond faces
        and within the others - not contaminated by blond, unlike the plain v_Eyeglasses."""
        return LT.stratified_vector(self.mu, self.attrs, self.index(held), [self.index(name)])

    def conditional(self, name: str, hold: Sequence[str] | None = None, against: str = "stratified") -> torch.Tensor:
        """v_a projected off the directions of the attributes in `hold` (default: `held(name)`), InterFaceGAN's
        conditional manipulation. `against="stratified"` projects off each held attribute's direction
        measured among faces that agree on `name` (`held_direction`); `against="plain"` off the plain
        vectors v_h, which fails when v_h is itself mostly v_a (correlation runs both ways: v_Eyeglasses
        is mostly blond, so removing it removes blond too)."""
        hold = self.held(name) if hold is None else list(hold)
        if not hold:
            return self.vector(name)
        if against not in ("stratified", "plain"):
            raise ValueError(f"against must be stratified or plain, not {against!r}")
        basis = [self.held_direction(h, name) if against == "stratified" else self.vector(h) for h in hold]
        return LT.orthogonalise(self.vector(name), torch.stack(basis))

    def stratified(self, name: str, hold: Sequence[str] | None = None) -> torch.Tensor:
        """v_a as the class-mean difference within groups that agree on `hold` (default: `held(name)`)."""
        hold = self.held(name) if hold is None else list(hold)
        return LT.stratified_vector(self.mu, self.attrs, self.index(name), [self.index(h) for h in hold])

    MODES = ("plain", "projected", "conditional", "stratified")

    def direction(self, name: str, mode: str = "plain", hold: Sequence[str] | None = None) -> torch.Tensor:
        """The vector of `name`: "plain" (class means), "projected" (off the plain vectors of the attributes
        in `hold`, default its held ones), "conditional" (off their directions measured within groups of
        `name`: the default fix) or "stratified" (class means within groups that agree on them)."""
        if mode == "plain":
            return self.vector(name)
        if mode == "projected":
            return self.conditional(name, hold, against="plain")
        if mode == "conditional":
            return self.conditional(name, hold)
        if mode == "stratified":
            return self.stratified(name, hold)
        raise ValueError(f"mode must be one of {', '.join(self.MODES)}, not {mode!r}")

    # -- edits --

    def edit(self, x: torch.Tensor, edits: dict[str, float], mode: str = "plain") -> torch.Tensor:
        """Faces x edited by several attributes at once, e.g. {"Eyeglasses": 1.5, "Smiling": 1.0}."""
        mu = encode(self.vae, x)
        for name, scale in edits.items():
            mu = LT.apply_edit(mu, self.direction(name, mode), scale)
        return decode(self.vae, mu, x)

    def spectrum(self, x: torch.Tensor, name: str, scales: Sequence[float] = (-2, -1, 0, 1, 2),
                 mode: str = "plain") -> torch.Tensor:
        """(N, S, 3, H, W): each face of x edited along `name` at each scale (the poster's figure 10)."""
        mu = encode(self.vae, x)
        return LT.spectrum(lambda z: decode(self.vae, z, x), mu, self.direction(name, mode), scales)

    def interpolation(self, x0: torch.Tensor, x1: torch.Tensor, steps: int = 8) -> torch.Tensor:
        """(steps, 3, H, W): decoded points on the segment between the codes of two faces (3, H, W); the
        background fades from one face's to the other's."""
        mu = encode(self.vae, torch.stack([x0, x1]))
        t = torch.linspace(0, 1, steps)[:, None, None, None]
        background = (1 - t) * _as_float(x0)[None] + t * _as_float(x1)[None]
        return decode(self.vae, LT.interpolate(mu[0], mu[1], steps), background)


# --- measuring edits with the judges ------------------------------------------------------------------

def judge_fn(judge):
    """The attribute judge as `faceedu.latent` wants it: images -> (N, A) 0/1 (its own attribute order)."""
    return lambda images: judge.predict(images)


@torch.no_grad()
def edit_table(space: LatentSpace, judge, x: torch.Tensor, labels: torch.Tensor, label_names: Sequence[str],
               scale: float = 2.0, attributes: Sequence[str] | None = None, faces: int = 400,
               threshold: float = CORRELATED_PHI, modes: Sequence[str] = ("plain", "conditional"),
               reliable_accuracy: float = RELIABLE_ACCURACY) -> list[dict]:
    """One row per attribute: add its vector at `scale` to (up to `faces`) faces of x whose label says they
    lack it, and judge the decoded faces before (the reconstruction) and after. Columns:

    - success: share of faces the judge reads as having the attribute after the edit;
    - ceiling: share of the faces that *have* the attribute on which the judge sees it in their
      reconstruction - what the model can show at all, an upper bound for success;
    - kept: share of (face, attribute) pairs unchanged over the attributes that do *not* correlate with
      it in the data (|phi| < threshold) and that the judge reads reliably on this model's reconstructions
      (accuracy >= reliable_accuracy against the labels: a judgement that is a coin toss on blurry faces
      flips under any edit); the least-kept of those (kept_min, kept_worst); kept_each for every
      uncorrelated attribute, reliable or not;
    - leak: for each held attribute (correlated, can co-occur: `LatentSpace.held`), the share of faces
      whose judgement of it changed - the entanglement the data put into the vector.
    Each mode of `LatentSpace.direction` after "plain" adds its own columns with the mode as prefix."""
    judged = list(judge.attributes)
    label_names = list(label_names)
    attributes = [a for a in (attributes or judged) if a in judged and a in space.names and a in label_names]
    x = _as_float(x)
    mu_all = encode(space.vae, x)
    seen = torch.cat([judge.predict(decode(space.vae, z, b)) for z, b in zip(mu_all.split(256), x.split(256))])
    accuracy = {n: float((seen[:, i] == labels[:, label_names.index(n)].float()).float().mean())
                for i, n in enumerate(judged) if n in label_names}
    unreliable = sorted(n for n in judged if accuracy.get(n, 0.0) < reliable_accuracy)
    rows = []
    for name in attributes:
        column = labels[:, label_names.index(name)]
        lacking = torch.nonzero(column == 0).flatten()[:faces]
        having = torch.nonzero(column == 1).flatten()[:faces]
        faces_x, mu, before = x[lacking], mu_all[lacking], seen[lacking]
        correlated, held = set(space.correlated(name, threshold)), space.held(name, threshold)
        uncorrelated = [i for i, n in enumerate(judged) if n != name and n not in correlated]
        free = [i for i in uncorrelated if judged[i] not in unreliable]
        row: dict[str, Any] = {"attribute": name, "faces": len(lacking), "scale": scale,
                               "ceiling": float(seen[having, judged.index(name)].mean()) if len(having) else math.nan,
                               "judge_on_reconstructions": accuracy.get(name, math.nan),
                               "correlated": sorted(correlated), "held": held, "unreliable": unreliable}
        for mode in modes:
            vector = space.direction(name, mode)
            after = torch.cat([judge.predict(decode(space.vae, LT.apply_edit(z, vector, scale), b))
                               for z, b in zip(mu.split(256), faces_x.split(256))])
            kept = (before == after).float().mean(0)
            worst = min(free, key=lambda i: float(kept[i])) if free else None
            prefix = "" if mode == "plain" else f"{mode}_"
            row |= {f"{prefix}success": float(after[:, judged.index(name)].mean()),
                    f"{prefix}kept": float(kept[free].mean()) if free else math.nan,
                    f"{prefix}kept_min": float(kept[worst]) if free else math.nan,
                    f"{prefix}kept_worst": judged[worst] if free else "",
                    f"{prefix}kept_each": {judged[i]: float(kept[i]) for i in uncorrelated},
                    f"{prefix}leak": {h: float(1 - kept[judged.index(h)]) for h in held if h in judged}}
        rows.append(row)
    return rows


@torch.no_grad()
def unwanted_change(space: LatentSpace, judge, x: torch.Tensor, labels: torch.Tensor, label_names: Sequence[str],
                    edit: str = "Blond_Hair", watch: str = "Eyeglasses", scale: float = 2.0, faces: int = 400,
                    modes: Sequence[str] = LatentSpace.MODES) -> dict[str, dict[str, float]]:
    """The entanglement of one pair, measured: on faces labelled with neither `edit` nor `watch`, how often
    adding `edit`'s vector makes the judge see `watch` too, for each way of building the vector with
    `watch` as the one attribute to hold (and how often the edit itself succeeds). Under "judge_bias": how often the judge sees `watch` on the
    reconstructions of faces that really have `edit` and lack `watch` - the referee's own share of the
    leak, since it learnt from the same correlated data."""
    names = list(label_names)
    has_edit, has_watch = labels[:, names.index(edit)] == 1, labels[:, names.index(watch)] == 1
    chosen = torch.nonzero(~has_edit & ~has_watch).flatten()[:faces]
    faces_x = _as_float(x[chosen])
    mu = encode(space.vae, faces_x)
    before = judge.predict(decode(space.vae, mu, faces_x))
    e, w = judge.index(edit), judge.index(watch)
    result: dict[str, dict[str, float]] = {}
    for mode in modes:
        vector = space.direction(edit, mode, hold=[watch])
        after = judge.predict(decode(space.vae, LT.apply_edit(mu, vector, scale), faces_x))
        result[mode] = {"unwanted": float((after[:, w] != before[:, w]).float().mean()),
                        "success": float(after[:, e].mean()), "faces": len(chosen), "norm": float(vector.norm()),
                        "cosine_with_watch": float(torch.cosine_similarity(vector, space.vector(watch), dim=0))}
    real = _as_float(x[torch.nonzero(has_edit & ~has_watch).flatten()[:faces]])
    seen = judge.predict(decode(space.vae, encode(space.vae, real), real))
    result["judge_bias"] = {"watch_on_reconstructions": float(seen[:, w].mean()), "faces": len(real),
                            "watch_on_originals": float(judge.predict(real)[:, w].mean())}
    return result


def table_markdown(rows: Sequence[dict], judge_accuracy: dict[str, float] | None = None) -> str:
    """The per-attribute table as markdown: the judge's accuracy, the ceiling, success and kept for the
    plain and the conditional vectors, and the leaks into held attributes."""
    head = ["attribute", "judge acc.", "judge on recon.", "ceiling", "success", "kept", "least kept",
            "leak into held", "success (cond.)", "kept (cond.)", "leak (cond.)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def leaks(d: dict) -> str:
        """The three largest leaks of 5% or more."""
        top = sorted(((v, k) for k, v in d.items() if v >= 0.05), reverse=True)[:3]
        return ", ".join(f"{k.replace('_', ' ')} {v:.0%}" for v, k in top) or "-"

    def pct(value: float) -> str:
        return "-" if value is None or math.isnan(value) else f"{value:.0%}"

    for r in rows:
        accuracy = (judge_accuracy or {}).get(r["attribute"])
        cells = [r["attribute"].replace("_", " "), pct(accuracy) if accuracy is not None else "-",
                 pct(r.get("judge_on_reconstructions", math.nan)), pct(r["ceiling"]),
                 f"**{pct(r['success'])}**", pct(r["kept"]),
                 f"{r['kept_worst'].replace('_', ' ')} {pct(r['kept_min'])}" if r["kept_worst"] else "-", leaks(r["leak"])]
        if "conditional_success" in r:
            same = not r["held"]
            cells += ["=" if same else pct(r["conditional_success"]), "=" if same else pct(r["conditional_kept"]),
                      "=" if same else leaks(r["conditional_leak"])]
        else:
            cells += ["-", "-", "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# --- figures ------------------------------------------------------------------------------------------

def _show(ax, image: torch.Tensor) -> None:
    ax.imshow(image.permute(1, 2, 0).clamp(0, 1).cpu().numpy())
    ax.set_xticks([]), ax.set_yticks([])
    for side in ax.spines.values():
        side.set_visible(False)


def _save(fig, path: Path | str | None):
    import matplotlib.pyplot as plt

    if path is None:
        return fig
    import io

    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=90, bbox_inches="tight")
    plt.close(fig)
    # a 256-colour palette: a quarter of the bytes, no visible change (the figures go into the docs)
    image = Image.open(buffer).convert("RGB")
    image.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(path, optimize=True)
    return path


def spectra_figure(space: LatentSpace, x: torch.Tensor, names: Sequence[str],
                   scales: Sequence[float] = (-2, -1.5, -1, -0.5, 0, 0.5, 1, 1.5, 2), path: Path | str | None = None,
                   mode: str = "plain"):
    """The poster's figure 10: one row per attribute (one face of x per row, cycling), columns from
    -2 to +2 times the attribute vector."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(names), len(scales), figsize=(0.95 * len(scales) + 1.2, 1.0 * len(names)),
                             squeeze=False)
    for r, name in enumerate(names):
        face = x[r % len(x)][None]
        row = space.spectrum(face, name, scales, mode)[0]            # (S, 3, H, W)
        for c, image in enumerate(row):
            _show(axes[r, c], image)
            if r == 0:
                axes[r, c].set_title(f"{scales[c]:+g}", fontsize=8)
        axes[r, 0].set_ylabel(name.replace("_", " "), fontsize=7, rotation=0, ha="right", va="center")
    fig.suptitle("attribute spectra: mu + s v, s from -2 to +2", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def batch_edit_figure(space: LatentSpace, x: torch.Tensor, names: Sequence[str], scale: float = 1.5,
                      path: Path | str | None = None, title: str = "", mode: str = "plain"):
    """The poster's figures 11-13: each face of x (rows) as given, reconstructed, and edited by each
    attribute in `names` (columns) at `scale`."""
    import matplotlib.pyplot as plt

    columns = [("input", _as_float(x)), ("reconstruction", decode(space.vae, encode(space.vae, x), x))]
    columns += [(f"+{n.replace('_', ' ')}", space.edit(x, {n: scale}, mode)) for n in names]
    fig, axes = plt.subplots(len(x), len(columns), figsize=(1.05 * len(columns), 1.05 * len(x) + 0.3), squeeze=False)
    for c, (label, images) in enumerate(columns):
        for r in range(len(x)):
            _show(axes[r, c], images[r])
        axes[0, c].set_title(label, fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def interpolation_figure(space: LatentSpace, pairs: Sequence[tuple[torch.Tensor, torch.Tensor]], steps: int = 8,
                         path: Path | str | None = None):
    """One row per pair of faces: the decoded straight line between their codes."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(pairs), steps, figsize=(0.95 * steps, 1.0 * len(pairs) + 0.3), squeeze=False)
    for r, (a, b) in enumerate(pairs):
        for c, image in enumerate(space.interpolation(a, b, steps)):
            _show(axes[r, c], image)
    for c in range(steps):
        axes[0, c].set_title(f"t = {c / (steps - 1):.2f}", fontsize=7)
    fig.suptitle("interpolation between two faces' codes", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def entanglement_figure(matrices: dict[str, torch.Tensor], edit_names: Sequence[str], judged_names: Sequence[str],
                        path: Path | str | None = None):
    """Heat maps of entanglement matrices side by side (rows: the vector added; columns: the judged
    attribute; value: share of faces whose judgement changed)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(matrices), figsize=(0.32 * len(judged_names) * len(matrices) + 1.5,
                                                        0.32 * len(edit_names) + 1.8), squeeze=False)
    for ax, (title, matrix) in zip(axes[0], matrices.items()):
        image = ax.imshow(matrix.numpy(), cmap="magma", vmin=0, vmax=1)
        ax.set_xticks(range(len(judged_names)), [n.replace("_", " ") for n in judged_names], rotation=90, fontsize=6)
        ax.set_yticks(range(len(edit_names)), [f"+{n.replace('_', ' ')}" for n in edit_names], fontsize=6)
        ax.set_title(title, fontsize=8)
        for i in range(matrix.shape[0]):
            for j in range(matrix.shape[1]):
                if matrix[i, j] >= 0.1:
                    ax.text(j, i, f"{matrix[i, j]:.1f}".lstrip("0"), ha="center", va="center", fontsize=4.5,
                            color="black" if matrix[i, j] > 0.6 else "white")
    fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8, label="share of faces whose judged attribute changed")
    return _save(fig, path)


# --- the report and the command line ----------------------------------------------------------------

FIGURE_FACES = 6
SWEPT = ("Eyeglasses", "Smiling", "Black_Hair", "Blond_Hair", "Gray_Hair")
SWEEP_SCALES = (1.0, 1.25, 1.5, 2.0)
PAIR_LABELS = {"plain": "plain $v_{\\text{Blond}}$", "projected": "projected off the plain $v_{\\text{Eyeglasses}}$",
               "conditional": "projected off glasses measured within hair groups (`conditional`)",
               "stratified": "blond measured within glasses groups (`stratified`)"}
SPECTRA = ("Eyeglasses", "Smiling", "Blond_Hair", "Black_Hair", "Gray_Hair", "Goatee", "Mustache", "Wearing_Hat",
           "Bangs", "Male", "Young", "Pale_Skin")


def test_faces(root: Path | str, vae: FaceVAE, limit: int | None = None):
    """The test split at the model's size: (images uint8, labels, names)."""
    from faceedu.data.tensors import load_face_tensors

    data = load_face_tensors(root, "test", size=vae.config.image_size, masks=False, crop=vae.config.crop, limit=limit)
    return data.images, data.attr, list(data.attr_names)


def report(run: Path | str, out: Path | str | None = None, root: Path | str | None = None, scale: float = 2.0,
           faces: int = 400, train_limit: int | None = None, figures: bool = True, test_limit: int | None = None,
           judges: Path | str | None = None) -> dict:
    """`faceedu latent RUN`: the per-attribute table (success, kept, leaks; plain and conditional), the
    Blond_Hair -> Eyeglasses entanglement three ways, the entanglement matrices before and after
    orthogonalising, and the figures (spectra, hair colours, beards, interpolation). Writes
    latent.json, table.md and PNGs to `out` (default RUN/latent). `judges`: the judges' folder (default: the
    shipped SynthFaces ones); the report names what they were trained on and warns when it is not this data."""
    from faceedu.models.judges import dataset_kind, describe, judges_for
    from faceedu.train.vae import run_data_root

    run = Path(run)
    out = Path(out) if out is not None else run / "latent"
    out.mkdir(parents=True, exist_ok=True)
    space = LatentSpace.from_run(run, root, limit=train_limit)
    root = run_data_root(run, json.loads((run / "config.json").read_text()), root)
    loaded = judges_for(root, judges, kinds=["attributes"])
    judge = loaded.require("attributes")
    images, labels, names = test_faces(root, space.vae, limit=test_limit)
    rows = edit_table(space, judge, images, labels, names, scale=scale, faces=faces)
    pair = unwanted_change(space, judge, images, labels, names, scale=scale, faces=faces)
    judged = [n for n in judge.attributes if n in space.names]
    sample = _as_float(images[:min(len(images), faces, 200)])
    mu = encode(space.vae, sample)
    show = decoder(space.vae)
    judge_call = judge_fn(judge)
    plain = torch.stack([space.vector(n) for n in judged])
    conditional = torch.stack([space.conditional(n) for n in judged])
    matrices = {"plain vectors": LT.entanglement_matrix(show, judge_call, mu, plain, scale, images=sample),
                "orthogonalised off held attributes": LT.entanglement_matrix(show, judge_call, mu, conditional, scale,
                                                                             images=sample)}
    sweep = {s: edit_table(space, judge, images, labels, names, scale=s, attributes=SWEPT, faces=faces, modes=("plain",))
             for s in SWEEP_SCALES}
    described = json.loads((run / "config.json").read_text())
    summary = {"run": str(run), "data": str(root), "scale": scale, "train_faces": len(space.mu),
               "steps": described.get("loop", {}).get("steps"), "preset": described.get("preset"),
               "data_kind": dataset_kind(root), "judge": describe(judge), "judge_warnings": loaded.warnings,
               "table": rows, "blond_eyeglasses": pair, "judged": judged, "sweep": {str(k): v for k, v in sweep.items()},
               "entanglement": {k: v.tolist() for k, v in matrices.items()}}
    (out / "latent.json").write_text(json.dumps(summary, indent=1) + "\n")
    accuracy = (judge.meta.get("test") or {}).get("per_attribute") if isinstance(judge.meta, dict) else None
    (out / "table.md").write_text(table_markdown(rows, accuracy))
    (out / "results.md").write_text(results_markdown(summary, accuracy))
    if figures:
        x = images[:FIGURE_FACES]
        entanglement_figure(matrices, judged, judged, out / "entanglement.png")
        spectra_figure(space, images[:len(SPECTRA)], [n for n in SPECTRA if n in space.names], path=out / "spectra.png")
        hair = [n for n in HAIR_COLOURS if n in space.names]
        batch_edit_figure(space, x, hair, scale=1.5, path=out / "hair_colours.png", title="hair colours (+1.5 v)")
        beards = [n for n in BEARDS if n in space.names]
        men = torch.nonzero(labels[:, names.index("Male")] == 1).flatten()[:FIGURE_FACES] if "Male" in names else None
        batch_edit_figure(space, images[men] if men is not None else x, beards, scale=1.5, path=out / "beards.png",
                          title="beard types (+1.5 v)")
        pairs = [(_as_float(images[2 * k]), _as_float(images[2 * k + 1])) for k in range(4)]
        interpolation_figure(space, pairs, path=out / "interpolation.png")
    return summary


def results_markdown(summary: dict, judge_accuracy: dict[str, float] | None = None,
                     figures: str = "assets/latent") -> str:
    """The measured part of the docs page (docs/latent.md) from a report's summary."""
    rows, sweep, pair = summary["table"], summary["sweep"], dict(summary["blond_eyeglasses"])
    bias = pair.pop("judge_bias")
    data = {"synthfaces": "SynthFaces'", "celeba": "CelebA's"}.get(summary.get("data_kind", "synthfaces"), "the data's")
    lines = [f"## Results: the quick VAE ({summary['steps']} steps)", "",
             f"Vectors from the {summary['train_faces']:,} training faces; every test below on {data} test split "
             f"(faces never seen in training), edits at $s = {summary['scale']:g}$ unless a scale is given.", "",
             *([f"Judged by the {summary['judge']}.", ""] if "judge" in summary else []),
             *[f"**{w.splitlines()[0]}**" for w in summary.get("judge_warnings", [])],
             "### Every attribute", "", table_markdown(rows, judge_accuracy),
             "*judge acc.*: the judge on real test faces; *judge on recon.*: on this VAE's reconstructions; "
             "*kept* and *least kept* over the uncorrelated attributes the judge reads reliably on reconstructions; "
             "*leak*: the three largest changes (5% or more) of held attributes; *(cond.)*: the conditional vector, "
             "\"=\" where the attribute holds nothing.", "",
             "### By scale, for the attributes of the lesson's quality bars", "",
             "| attribute | " + " | ".join(f"s = {float(s):g}" for s in sweep) + " |", "|---|" + "---|" * len(sweep)]
    for name in SWEPT:
        cells = []
        for table in sweep.values():
            row = next((r for r in table if r["attribute"] == name), None)
            cells.append("-" if row is None else f"{row['success']:.0%} success, {row['kept']:.0%} kept "
                                                 f"(least: {row['kept_worst'].replace('_', ' ')} {row['kept_min']:.0%})")
        lines.append(f"| {name.replace('_', ' ')} | " + " | ".join(cells) + " |")
    lines += ["", f"### Blond hair brings glasses: four vectors at $s = {summary['scale']:g}$", "",
              f"On {next(iter(pair.values()))['faces']} test faces with neither blond hair nor glasses:", "",
              "| blond vector | length | cos with $v_{\\text{Eyeglasses}}$ | Eyeglasses judged differently | turns blond (judge) |",
              "|---|---|---|---|---|"]
    for mode, r in pair.items():
        lines.append(f"| {PAIR_LABELS.get(mode, mode)} | {r['norm']:.1f} | {r['cosine_with_watch']:+.2f} | "
                     f"{r['unwanted']:.1%} | {r['success']:.1%} |")
    lines += ["", f"The judge's own bias: on the reconstructions of {bias['faces']} real blond test faces without "
              f"glasses it sees glasses on {bias['watch_on_reconstructions']:.1%} of them "
              f"({bias['watch_on_originals']:.1%} on the original images).", "",
              "### Figures", "",
              f"![attribute spectra]({figures}/spectra.png)", "",
              "*The poster's figure 10: one face per row, $\\mu + s\\,v_a$ from $s = -2$ to $+2$.*", "",
              f"![hair colours]({figures}/hair_colours.png)", "",
              f"![beard types]({figures}/beards.png)", "",
              "*The poster's figures 11-13: batch edits of hair colour, and of beard type on men "
              "(No_Beard removes beards - and, being correlated with women, grows hair).*", "",
              f"![interpolation]({figures}/interpolation.png)", "",
              f"![entanglement matrices]({figures}/entanglement.png)", "",
              "*Entanglement at $s = 2$ over the first test faces, plain vectors and conditional ones (each "
              "projected off its held attributes' within-group directions): the share of faces whose judged "
              "attribute changed.*", ""]
    return "\n".join(lines)


def _read_face(path: Path, vae: FaceVAE) -> torch.Tensor:
    """A user's image file cropped and resized as the model's data was (FaceCrop), as (1, 3, S, S)."""
    from PIL import Image, UnidentifiedImageError

    from faceedu.data.transforms import FaceCrop

    if not path.is_file():
        raise SystemExit(f"faceedu edit: cannot read {path}: no such file.")
    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
    except (UnidentifiedImageError, OSError) as error:
        raise SystemExit(f"faceedu edit: cannot read {path} as an image ({type(error).__name__}: {error}). "
                         f"Give a JPEG or PNG of an aligned face (as CelebA's img_align_celeba).") from None
    crop = FaceCrop(vae.config.image_size, vae.config.crop)
    return crop(image)[None]


def command_edit(args) -> int:
    """`faceedu edit RUN --image PATH --attr NAME [--attr NAME ...] --scale S [--scale S ...] --out OUT.png`."""
    from faceedu.viz import save_grid

    run = Path(args.run)
    if not (run / "config.json").is_file():
        raise SystemExit(f"faceedu edit: {run} is not a run folder (no config.json); train one with "
                         f"`faceedu train vae --run {run}`.")
    if not Path(args.image).is_file():                     # before loading the model: fail fast
        raise SystemExit(f"faceedu edit: cannot read {args.image}: no such file.")
    scales = args.scale or [1.5]
    if len(scales) not in (1, len(args.attr)):
        raise SystemExit(f"faceedu edit: give one --scale for all attributes or one per --attr "
                         f"({len(args.attr)} attributes, {len(scales)} scales).")
    space = LatentSpace.from_run(run, args.root)
    names = list(space.names)
    for name in args.attr:
        if name not in names:
            raise SystemExit(f"faceedu edit: unknown attribute {name!r}.{close_matches(name, names)} "
                             f"Known attributes: {', '.join(names)}.")
    for name in args.keep or []:
        if name not in names:
            raise SystemExit(f"faceedu edit: unknown attribute {name!r} in --keep.{close_matches(name, names)}")
    x = _read_face(Path(args.image), space.vae)
    edits = dict(zip(args.attr, scales * len(args.attr) if len(scales) == 1 else scales))
    mu = encode(space.vae, x)
    z = mu.clone()
    for name, scale in edits.items():
        vector = space.conditional(name, args.keep) if args.keep else space.vector(name)
        z = LT.apply_edit(z, vector, scale)
    edited = decode(space.vae, z, x)
    out = Path(args.out)
    images = torch.cat([x, decode(space.vae, mu, x), edited]) if args.compare else edited
    save_grid(images, out, columns=len(images))
    what = ", ".join(f"{n} {s:+g}" for n, s in edits.items())
    print(f"Wrote {out} ({'input | reconstruction | ' if args.compare else ''}{what}"
          f"{'; orthogonal to ' + ', '.join(args.keep) if args.keep else ''}).")
    if getattr(args, "judges", None):
        from faceedu.models.judges import judges_for

        root = args.root or json.loads((run / "config.json").read_text()).get("data", Path(args.image).parent)
        judge = judges_for(root, args.judges, kinds=["attributes"]).require("attributes")
        before, after = judge.predict(x)[0], judge.predict(edited)[0]
        for name in edits:
            if name in judge.attributes:
                k = judge.index(name)
                print(f"  the attribute judge reads {name}: {'yes' if before[k] else 'no'} before, "
                      f"{'yes' if after[k] else 'no'} after")
    return 0


def command_latent(args) -> int:
    """`faceedu latent RUN`: the report, printed and written."""
    summary = report(args.run, args.out, args.root, scale=args.scale, faces=args.faces, train_limit=args.train_limit,
                     figures=not args.no_figures, test_limit=args.test_limit, judges=getattr(args, "judges", None))
    out = Path(args.out) if args.out else Path(args.run) / "latent"
    print((out / "table.md").read_text())
    pair = dict(summary["blond_eyeglasses"])
    bias = pair.pop("judge_bias")
    for mode, values in pair.items():
        print(f"Blond_Hair +{summary['scale']:g} v ({mode}): Eyeglasses changes on {values['unwanted']:.1%} of "
              f"{values['faces']} faces; blond success {values['success']:.1%}")
    print(f"(the judge sees Eyeglasses on {bias['watch_on_reconstructions']:.1%} of the reconstructions of "
          f"{bias['faces']} real blond faces without glasses: its own share of the leak)")
    print(f"Wrote {out}/latent.json, table.md{', and the figures' if not args.no_figures else ''}")
    print(f"Judged by the {summary['judge']}")
    for warning in summary["judge_warnings"]:
        print(warning)
    return 0
