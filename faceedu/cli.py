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

    run_tour(args.root, args.out)
    return 0


def _grade(args: argparse.Namespace) -> int:
    from faceedu.grading.runner import run

    return run(args)


def build_parser() -> argparse.ArgumentParser:
    """All sub-commands and their flags."""
    from faceedu.data.synthfaces import SynthConfig

    parser = argparse.ArgumentParser(prog="faceedu", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    data = commands.add_parser("data", help="generate or inspect datasets")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    synth = data_commands.add_parser("synth", help="generate SynthFaces in the CelebA/CelebAMask-HQ/JAFFE layouts")
    synth.add_argument("--root", type=Path, default=DEFAULT_SYNTH_ROOT, help="output folder (default: %(default)s)")
    synth.add_argument("--n", type=int, default=SynthConfig.n, help="number of CelebA-layout faces")
    synth.add_argument("--size", type=int, default=SynthConfig.size, help="image side in pixels")
    synth.add_argument("--seed", type=int, default=SynthConfig.seed, help="same seed, same bytes")
    synth.add_argument("--workers", type=int, default=SynthConfig.workers, help="processes (0: all cores)")
    synth.set_defaults(func=_data_synth)

    tour = commands.add_parser("tour", help="the course tour on SynthFaces (generates it if missing)")
    tour.add_argument("--root", type=Path, default=DEFAULT_SYNTH_ROOT)
    tour.add_argument("--out", type=Path, default=Path("outputs/tour"))
    tour.set_defaults(func=_tour)

    grade = commands.add_parser("grade", help="run a lesson notebook like the autograder and print your points")
    grade.add_argument("notebook", type=Path, help="the lesson notebook, e.g. lessons/00_faces_as_data/00_faces_as_data.ipynb")
    grade.add_argument("--json", type=Path, default=None, metavar="FILE", help="also write the report as JSON")
    grade.add_argument("--timeout", type=float, default=900, metavar="S", help="total time limit (default: %(default)s s)")
    grade.add_argument("--cell-timeout", type=float, default=None, metavar="S",
                       help="per-cell limit; a cell over it is interrupted and grading goes on (default: the total)")
    grade.set_defaults(func=_grade)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
