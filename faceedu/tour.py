"""`faceedu tour`, the course's main job: SynthFaces, what it holds, and (as lessons land) a quick run of
each model. Each step is one entry in STEPS: a title and a function of the Tour."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from faceedu.data import synthfaces
from faceedu.data.synthfaces import SYNTH_ATTRIBUTES, SynthConfig


@dataclass
class Tour:
    """What the steps share: where the data and the outputs live, and the summary being written."""

    root: Path
    out: Path
    config: SynthConfig = SynthConfig()
    vae_run: Path = Path("runs/vae-quick")     # lessons 01-03's quick VAE: trained here unless finished
    cgan_run: Path = Path("runs/cgan-quick")   # lesson 04's quick conditional GAN: trained here unless finished
    fader_run: Path = Path("runs/fader-quick")  # lesson 05's quick Fader Network: trained here unless finished
    cyclegan_run: Path = Path("runs/cyclegan-quick")  # lesson 08's quick CycleGAN: trained here unless finished
    summary: dict = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)

    def say(self, line: str = "") -> None:
        print(line)
        self.lines.append(line)


def step_data(tour: Tour) -> None:
    synthfaces.ensure(tour.root, tour.config)
    meta = json.loads((tour.root / "synthfaces.json").read_text())
    size_mb = sum(p.stat().st_size for p in tour.root.rglob("*") if p.is_file()) / 2**20
    tour.summary["data"] = meta | {"megabytes_on_disk": round(size_mb, 1)}
    tour.say(f"SynthFaces at {tour.root}: {meta['images']} faces of {meta['identities']} identities "
             f"(splits {meta['splits']}), {meta['jaffe_images']} JAFFE-style images, {size_mb:.0f} MB on disk; "
             f"generated at {meta['images_per_second']:,.0f} images/s")


def step_contact_sheet(tour: Tour) -> None:
    from faceedu.data.celeba import CelebA
    from faceedu.viz import contact_sheet

    faces = CelebA(tour.root, split="test", target_type=["attr", "landmarks68", "mask"])
    images, labels, points, captions = [], [], [], []
    for k in range(18):
        image, (attr, landmarks, label) = faces[k]
        on = [name for name, value in zip(faces.attr_names, attr.tolist()) if value and name in SYNTH_ATTRIBUTES]
        images.append(np.asarray(image))
        labels.append(label.numpy())
        points.append(landmarks.numpy().reshape(-1, 2))
        captions.append(f"{faces.filenames[k]}: " + ", ".join(on))
    path = contact_sheet(images, labels, points, captions, tour.out / "contact_sheet.png")
    tour.say(f"contact sheet (faces, 68 landmarks, label maps, attributes): {path}")


def step_statistics(tour: Tour) -> None:
    from faceedu.data.celeba import CelebA
    from faceedu.data.stats import phi_matrix
    from faceedu.viz import correlation_heatmap

    train = CelebA(tour.root, split="train", attributes=list(SYNTH_ATTRIBUTES), target_type="attr")
    frequency = train.attr.float().mean(0).numpy()
    phi = phi_matrix(train.attr).numpy()
    tour.say(f"attribute frequencies on the train split ({len(train)} faces):")
    for name, f in sorted(zip(SYNTH_ATTRIBUTES, frequency), key=lambda t: -t[1]):
        tour.say(f"  {name:<20} {f:6.1%}")
    pairs = [(phi[i, j], SYNTH_ATTRIBUTES[i], SYNTH_ATTRIBUTES[j])
             for i in range(len(phi)) for j in range(i + 1, len(phi))]
    tour.say("strongest attribute correlations (phi):")
    for value, a, b in sorted(pairs, key=lambda t: -abs(t[0]))[:10]:
        tour.say(f"  {a:<20} {b:<20} {value:+.2f}")
    path = correlation_heatmap(phi, SYNTH_ATTRIBUTES, tour.out / "attribute_correlation.png",
                               "SynthFaces attribute correlations (train split)")
    tour.summary["attribute_frequency"] = dict(zip(SYNTH_ATTRIBUTES, np.round(frequency, 4).tolist()))
    tour.summary["phi"] = {"names": list(SYNTH_ATTRIBUTES), "matrix": np.round(phi, 4).tolist()}
    tour.say(f"correlation heat map: {path}")


def step_vae(tour: Tour) -> None:
    """Lessons 01-02: the quick face VAE with its mask decoder (Toledo & Antonelo), trained into
    tour.vae_run as `faceedu train vae` does (8-10 minutes on 2 idle CPU cores; a finished run is reused,
    an interrupted one resumes), then measured on 1,000 test faces."""
    from faceedu.models.vae import preset
    from faceedu.train.loop import LoopConfig
    from faceedu.train.vae import eval_run, train_vae

    run = tour.vae_run
    # the progress bar (steps, images/s, time left) shows while the longest step of the tour runs
    summary = train_vae(preset("quick"), run, tour.root, loop=LoopConfig(progress=True), preset_name="quick")
    if summary["steps_this_run"]:
        tour.say(f"trained the quick VAE in {summary['seconds']:.0f} s ({summary['images_per_s']:,.0f} images/s): {run}")
    else:
        tour.say(f"reusing the trained quick VAE in {run}")
    metrics = eval_run(run, tour.root, out=tour.out / "vae", limit=1000)
    tour.summary["vae"] = {"run": str(run), **{k: metrics[k] for k in ("masked_ssim", "ssim", "ms_ssim", "mask_dice")}}
    tour.say(f"test faces: SSIM inside the face mask {metrics['masked_ssim']:.3f} (the lesson's bar: 0.80), "
             f"whole image {metrics['ssim']:.3f}, mask Dice {metrics['mask_dice']:.3f}; "
             f"reconstructions: {tour.out / 'vae' / 'reconstructions.png'}")


def step_latent(tour: Tour) -> None:
    """Lesson 03 on the VAE of step_vae: attribute spectra, and how blond and glasses share a direction."""
    import torch

    from faceedu import editing

    run = tour.vae_run
    space = editing.LatentSpace.from_run(run, tour.root, limit=4000)
    images, _, _ = editing.test_faces(tour.root, space.vae, limit=8)
    names = [n for n in ("Eyeglasses", "Blond_Hair", "Smiling", "Goatee") if n in space.names]
    path = editing.spectra_figure(space, images[:len(names)], names, path=tour.out / "latent_spectra.png")
    cosine = float(torch.cosine_similarity(space.vector("Blond_Hair"), space.vector("Eyeglasses"), dim=0))
    tour.summary["latent"] = {"run": str(run), "cos_blond_eyeglasses": round(cosine, 3)}
    tour.say(f"attribute spectra of {run} (-2..+2 times each vector): {path}; cos(v_Blond_Hair, v_Eyeglasses) = {cosine:+.2f}")


def step_cgan(tour: Tour) -> None:
    """Lesson 04: the quick conditional DCGAN on Blond_Hair x Male, trained into tour.cgan_run as `faceedu
    train cgan` does (about 3.5 minutes on 2 idle CPU cores; a finished run is reused), then judged: the
    attribute judge on 250 faces of every combination, diversity and the Fréchet distance in its features."""
    from faceedu.models.cgan import preset
    from faceedu.train.cgan import eval_run, train_cgan
    from faceedu.train.loop import LoopConfig

    run = tour.cgan_run
    summary = train_cgan(preset("quick"), run, tour.root, loop=LoopConfig(progress=True), preset_name="quick")
    if summary["steps_this_run"]:
        tour.say(f"trained the quick cGAN in {summary['seconds']:.0f} s ({summary['images_per_s']:,.0f} images/s): {run}")
    else:
        tour.say(f"reusing the trained quick cGAN in {run}")
    result = eval_run(run, tour.root, out=tour.out / "cgan", real_limit=1000, per_combination=250)
    tour.summary["cgan"] = {"run": str(run), "min_agreement": round(result["min_agreement"], 4),
                            "diversity_ratio": round(result["diversity_ratio"], 4), "frechet": round(result["frechet"], 4),
                            "frechet_floor": round(result["frechet_floor"], 4),
                            "coverage": round(result["coverage"], 4), "coverage_real": round(result["coverage_real"], 4)}
    agreement = ", ".join(f"{'+'.join(a for a, v in row['attributes'].items() if v) or 'neither'} {row['agreement']:.0%}"
                          for row in result["combinations"])
    tour.say(f"the judge sees the requested attributes on: {agreement} (bar 90%); diversity {result['diversity_ratio']:.2f} "
             f"of real faces' (bar 0.80); coverage {result['coverage']:.2f} (real faces {result['coverage_real']:.2f}); "
             f"Fréchet distance in judge features {result['frechet']:.2f} (floor {result['frechet_floor']:.2f}); "
             f"every combination at fixed z: {tour.out / 'cgan' / 'combinations.png'}")


def step_fader(tour: Tour) -> None:
    """Lesson 05: the quick Fader Network (Male, Eyeglasses, Smiling), trained into tour.fader_run as `faceedu
    train fader` does (a finished run is reused), then judged on 300 test faces: each attribute flipped,
    the sliders, reconstruction SSIM in the face mask, the latent discriminator against the majority rate."""
    from faceedu.models.fader import preset
    from faceedu.train.fader import format_report, report, train_fader
    from faceedu.train.loop import LoopConfig

    run = tour.fader_run
    summary = train_fader(preset("quick"), run, tour.root, loop=LoopConfig(progress=True), preset_name="quick")
    if summary["steps_this_run"]:
        tour.say(f"trained the quick Fader Network in {summary['seconds']:.0f} s ({summary['images_per_s']:,.0f} images/s): {run}")
    else:
        tour.say(f"reusing the trained quick Fader Network in {run}")
    result = report(run, out=tour.out / "fader", root=tour.root, faces=300)
    tour.summary["fader"] = {"run": str(run), "masked_ssim": round(result["masked_ssim"], 4),
                             "lat_dis": result["lat_dis"], "flips": {r["attribute"]: round(r["success"], 4)
                                                                     for r in result["flips"]}}
    for line in format_report(result).splitlines():
        tour.say(line)
    tour.say(f"sliders, flips and the discriminator's accuracy against lambda: {tour.out / 'fader'}")


def step_nst(tour: Tour) -> None:
    """Lesson 07: Gatys' style transfer of a tissue texture onto one face, inside its face mask (64 px, 40
    L-BFGS steps: seconds, nothing trained); the loss drop and the largest change outside the mask."""
    from PIL import Image
    from skimage import data

    from faceedu.models import nst

    path = tour.root / "celeba" / "img_align_celeba" / "000007.jpg"
    image = nst.read_image(path, "content")
    content = nst.prepare(image, 64)
    style = nst.prepare(Image.fromarray(data.immunohistochemistry()), 64)
    mask = nst.content_mask(path, image, "face", 64)
    result = nst.style_transfer(content, style, mask, nst.NSTConfig(size=64, steps=40, mask="face"))
    outside = float((result.image - content).abs()[(mask == 0).expand_as(content)].max()) * 255
    out = tour.out / "nst"
    nst.save_image(__import__("torch").cat([content, style, result.image], 3), out / "styled.png")
    nst.plot_losses(result.history, out / "losses.png", "lesson 07: tissue style inside the face mask")
    tour.summary["nst"] = {"loss_drop": round(result.drop, 1), "outside_change_255": round(outside, 3),
                           "seconds": round(result.seconds, 1), "network": result.network}
    tour.say(f"style transfer inside the face mask in {result.seconds:.1f} s: loss {result.drop:.0f}x lower, largest "
             f"change outside the mask {outside:.2f}/255 ({result.network}): {out / 'styled.png'}")


def step_cyclegan(tour: Tour) -> None:
    """Lesson 08: the quick CycleGAN between happy and neutral JAFFE-style faces, trained into tour.cyclegan_run
    as `faceedu train cyclegan` does (a finished run is reused), then judged on the test subjects: the
    expression judge on each translation, the identity judge on (source, translation), the cycle error."""
    from faceedu.models.cyclegan import preset
    from faceedu.train.cyclegan import eval_run, format_report, train_cyclegan
    from faceedu.train.loop import LoopConfig

    run = tour.cyclegan_run
    summary = train_cyclegan(preset("quick"), run, tour.root, loop=LoopConfig(progress=True, sample_every=400,
                                                                              checkpoint_every=400),
                             preset_name="quick")
    if summary["steps_this_run"]:
        tour.say(f"trained the quick CycleGAN in {summary['seconds']:.0f} s ({summary['images_per_s']:,.1f} image pairs/s): {run}")
    else:
        tour.say(f"reusing the trained quick CycleGAN in {run}")
    report = eval_run(run, tour.root, out=tour.out / "cyclegan")
    keys = ("judge_NE_on_HA_to_NE", "judge_HA_on_NE_to_HA", "identity_same_rate", "random_pairs_same_rate",
            "cycle_l1_per_pixel", "cycle_l1_summed", "frechet_NE", "frechet_floor_NE", "frechet_HA", "frechet_floor_HA")
    tour.summary["cyclegan"] = {"run": str(run), **{k: round(report[k], 4) for k in keys}}
    for line in format_report(report).splitlines():
        tour.say(line)
    tour.say(f"test faces A -> B -> A and B -> A -> B: {tour.out / 'cyclegan' / 'cycles.png'}")


STEPS: list[tuple[str, Callable[[Tour], None]]] = [
    ("SynthFaces", step_data),
    ("What a face comes with", step_contact_sheet),
    ("Attributes and their correlations", step_statistics),
    ("The face VAE (lessons 01-02)", step_vae),
    ("Latent arithmetic (lesson 03)", step_latent),
    ("The conditional GAN (lesson 04)", step_cgan),
    ("Fader Networks (lesson 05)", step_fader),
    ("Neural style transfer (lesson 07)", step_nst),
    ("CycleGAN on expressions (lesson 08)", step_cyclegan),
]


def run_tour(root: Path | str, out: Path | str, config: SynthConfig = SynthConfig(),
             vae_run: Path | str = Tour.vae_run, cgan_run: Path | str = Tour.cgan_run,
             fader_run: Path | str = Tour.fader_run, cyclegan_run: Path | str = Tour.cyclegan_run) -> Tour:
    """Run every step in order; write summary.txt and summary.json to `out`."""
    tour = Tour(Path(root), Path(out), config, Path(vae_run), Path(cgan_run), Path(fader_run), Path(cyclegan_run))
    tour.out.mkdir(parents=True, exist_ok=True)
    for number, (title, step) in enumerate(STEPS, 1):
        start = time.perf_counter()
        tour.say(f"\n== {number}. {title} ==")
        step(tour)
        tour.say(f"   ({time.perf_counter() - start:.1f} s)")
    (tour.out / "summary.txt").write_text("\n".join(tour.lines) + "\n")
    (tour.out / "summary.json").write_text(json.dumps(tour.summary, indent=1) + "\n")
    print(f"\nTour written to {tour.out}/")
    return tour
