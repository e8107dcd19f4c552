"""The course as data: the syllabus (one entry per lesson, read by the website and the tests) and the
few helpers every lesson notebook starts with (where the data lives, fast mode for tests)."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Lesson:
    """One lesson of the syllabus. `status` is "ready" once its notebook, grader and tests exist."""

    number: int
    slug: str          # folder and notebook name under solutions/ and lessons/, e.g. "00_faces_as_data"
    title: str
    teaches: str       # one line for the syllabus table
    sources: str       # the papers or code it follows
    status: str = "planned"

    @property
    def grader(self) -> str:
        return f"faceedu.grading.lesson{self.number:02d}"


LESSONS: tuple[Lesson, ...] = (
    Lesson(0, "00_faces_as_data", "Faces as data",
           "CelebA's files and attributes, CelebAMask-HQ label maps and the face+hair+hat mask, "
           "attribute correlations (phi), preprocessing", "Liu et al. 2015; Lee et al. 2020; Toledo & Antonelo 2021",
           status="ready"),
    Lesson(1, "01_vae", "The face VAE",
           "encoder, reparameterisation, decoder and the KL term; training on faces",
           "Kingma & Welling 2014; Toledo & Antonelo 2021", status="ready"),
    Lesson(2, "02_masks_and_losses", "Masks and losses",
           "SSIM from scratch, masked losses, a mask decoder with BCE + Dice: why masks help",
           "Toledo & Antonelo 2021", status="ready"),
    Lesson(3, "03_latent_arithmetic", "Latent arithmetic",
           "attribute vectors, spectra, entanglement, sliders that add glasses or a beard",
           "Toledo & Antonelo 2021; White 2016; Shen et al. 2020", status="ready"),
    Lesson(4, "04_cgan", "The conditional GAN",
           "a DCGAN conditioned on face attributes: label maps, non-saturating loss, the alternating step, "
           "judged attributes, diversity and mode collapse",
           "Mirza & Osindero 2014; Radford et al. 2016; Fedotova et al. 2018; Miyato & Koyama 2018", status="ready"),
    Lesson(5, "05_fader", "Fader networks",
           "an attribute-free latent via a latent discriminator; continuous attribute sliders",
           "Lample et al. 2017; Fedotova et al. 2018", status="ready"),
    Lesson(6, "06_diat", "Deep identity-aware transfer",
           "a transform network with identity, attribute and perceptual losses; landmark masks for local edits",
           "Li, Zuo & Zhang 2016 (DIAT, arXiv v1)", status="ready"),
    Lesson(7, "07_nst", "Neural style transfer",
           "Gram matrices, content and style losses, optimising pixels with L-BFGS; style inside a face mask",
           "Gatys et al. 2016; FacePaint 2019", status="ready"),
    Lesson(8, "08_cyclegan", "CycleGAN for expressions",
           "unpaired translation with cycle consistency: a ResNet generator, the 70x70 PatchGAN, LSGAN, cycle and "
           "identity losses, the image pool; happy <-> neutral judged on unseen JAFFE-style subjects",
           "Zhu et al. 2017; FacePaint 2019", status="ready"),
)


def lesson(slug_or_number: str | int) -> Lesson:
    """Look a lesson up by number or slug."""
    for entry in LESSONS:
        if slug_or_number in (entry.number, entry.slug):
            return entry
    raise KeyError(f"no lesson {slug_or_number!r}; lessons: {[entry.slug for entry in LESSONS]}")


# --- helpers for the notebooks ---------------------------------------------------------------------


def fast_mode() -> bool:
    """True when FACEEDU_FAST is set (1/true/yes): notebooks shrink data and training so that tests
    execute them in seconds. Learners leave it unset."""
    return os.environ.get("FACEEDU_FAST", "").strip().lower() in {"1", "true", "yes", "on"}


def data_root() -> Path:
    """Where SynthFaces lives: $FACEEDU_DATA if set, else the checkout's datasets/synthfaces (the same
    folder `make tour` fills), else ~/.cache/faceedu/synthfaces for a pip-installed package."""
    if os.environ.get("FACEEDU_DATA"):
        return Path(os.environ["FACEEDU_DATA"]).expanduser()
    if (REPO / "pyproject.toml").is_file() and (REPO / "faceedu").is_dir():
        return REPO / "datasets" / "synthfaces"
    return Path.home() / ".cache" / "faceedu" / "synthfaces"


def synthfaces(n: int, root: Path | str | None = None) -> Path:
    """Return a SynthFaces root to read, generating `n` faces there first if it holds none yet. An
    existing set is used as it is (whatever its size), so `make tour`'s data serves every lesson."""
    root = Path(root) if root is not None else data_root()
    if not (root / "celeba" / "list_attr_celeba.txt").is_file():
        print(f"Generating {n} SynthFaces images into {root} (once; later runs reuse them) ...", flush=True)
        # In a child process: the generator forks workers, and forking a Jupyter kernel (its zmq threads
        # included) can leave the notebook waiting on output that never comes.
        script = ("import sys; from faceedu.data.synthfaces import SynthConfig, generate; "
                  "generate(sys.argv[1], SynthConfig(n=int(sys.argv[2]), hq=min(100, int(sys.argv[2]))), verbose=False)")
        subprocess.run([sys.executable, "-c", script, str(root), str(n)], check=True)
    count = int((root / "celeba" / "list_attr_celeba.txt").read_text().split(maxsplit=1)[0])
    print(f"Using SynthFaces at {root} ({count} images).")
    return root
