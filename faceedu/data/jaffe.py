"""JAFFE (Japanese Female Facial Expression): grayscale faces whose subject and expression are read from
the file name (`KA.HA1.29.tiff`), with subject-disjoint train/test splits so that an expression
classifier or translator is judged on faces it has never seen.
"""

from __future__ import annotations

import difflib
import random
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from torch.utils.data import Dataset

from faceedu.data.layout import JAFFE_EXPRESSIONS, dataset_error
from faceedu.data.loading import check_split, dataset_folder, finish, open_image, target_types

KIND = "jaffe"

# SUBJECT.EXPRn.NUMBER.tiff: subject initials (SynthFaces adds codes beyond JAFFE's ten), one of the
# seven expression codes, the take n of that expression, and the database's serial number.
JAFFE_NAME = re.compile(r"^(?P<subject>[A-Za-z0-9]+)\.(?P<expression>[A-Z]{2})(?P<take>\d+)\.(?P<number>\d+)\.tiff?$")


@dataclass(frozen=True)
class JaffeImage:
    """One JAFFE file and what its name says about it."""

    path: Path
    subject: str
    expression: str  # a key of JAFFE_EXPRESSIONS, e.g. "HA"
    take: int        # KA.HA1.29.tiff -> 1
    number: int      # KA.HA1.29.tiff -> 29


def parse_jaffe_name(path: Path) -> JaffeImage | None:
    """The subject, expression, take and number in a JAFFE file name, or None if it does not follow the pattern."""
    match = JAFFE_NAME.match(path.name)
    if match is None or match["expression"] not in JAFFE_EXPRESSIONS:
        return None
    return JaffeImage(path, match["subject"], match["expression"], int(match["take"]), int(match["number"]))


def split_subjects(subjects: Sequence[str], test_subjects: int | float | Sequence[str], seed: int) -> list[str]:
    """The test subjects: the names given, a count (int) or a fraction (float) of `subjects` drawn with
    `seed`; a drawn test set has at least one subject and leaves at least one for training."""
    found = sorted(set(subjects))
    if not isinstance(test_subjects, (int, float)):
        names = {test_subjects} if isinstance(test_subjects, str) else set(test_subjects)
        unknown = sorted(names - set(found))
        if unknown:
            raise ValueError(f"Unknown test subject {unknown[0]!r}: the subjects are {', '.join(found)}.")
        return sorted(names)
    if isinstance(test_subjects, float):
        if not 0 < test_subjects < 1:
            raise ValueError(f"test_subjects as a fraction must be between 0 and 1, got {test_subjects}.")
        test_subjects = round(test_subjects * len(found))
    count = min(max(1, test_subjects), max(1, len(found) - 1))
    shuffled = found.copy()
    random.Random(seed).shuffle(shuffled)
    return sorted(shuffled[:count])


def _expression_codes(expressions: Sequence[str] | None) -> tuple[str, ...]:
    """Validate the requested expression codes (default: all seven, in JAFFE's order)."""
    if expressions is None:
        return tuple(JAFFE_EXPRESSIONS)
    codes = (expressions,) if isinstance(expressions, str) else tuple(expressions)
    for code in codes:
        if code not in JAFFE_EXPRESSIONS:
            close = difflib.get_close_matches(code.upper(), list(JAFFE_EXPRESSIONS), n=2, cutoff=0.5)
            hint = f"did you mean {', '.join(map(repr, close))}? " if close else ""
            valid = ", ".join(f"{c} ({name})" for c, name in JAFFE_EXPRESSIONS.items())
            raise ValueError(f"Unknown JAFFE expression {code!r}: {hint}The codes are {valid}.")
    return codes


def _looks_like_jaffe(folder: Path) -> bool:
    return any(folder.glob("*.tif")) or any(folder.glob("*.tiff"))


class JAFFE(Dataset):
    """JAFFE as (image, target): a grayscale ("L") PIL image and, per `target_type`, "expression" (index
    into `self.expressions`) or "subject" (index into `self.subjects`); both give a tuple.

    `root` holds jaffe/ (or is the folder of .tiff files itself). `expressions` picks a subset in the
    order given, e.g. ("HA", "NE") makes HA class 0 and NE class 1. Splits are subject-disjoint:
    `test_subjects` is a list of subjects, or a count or a fraction drawn with `seed` from all the
    folder's subjects, so a subject's side does not depend on the expression subset. TIFF files whose
    names do not follow SUBJECT.EXPRn.NUMBER.tiff are skipped with one warning that lists them; other
    files (README, ratings) are ignored.
    """

    target_types = ("expression", "subject")
    splits = ("train", "test", "all")

    def __init__(self, root: Path | str, split: str = "all", expressions: Sequence[str] | None = None,
                 test_subjects: int | float | Sequence[str] = 0.3, seed: int = 0,
                 target_type: str | Sequence[str] = "expression", transform: Callable | None = None,
                 target_transform: Callable | None = None) -> None:
        self.split = check_split(split, self.splits)
        self.expressions = _expression_codes(expressions)
        self.target_type = target_types(target_type, self.target_types)
        self.transform, self.target_transform = transform, target_transform
        self.folder = dataset_folder(root, KIND, "jaffe", _looks_like_jaffe)
        self.root = self.folder.parent
        everything = self._scan()
        self.test_subjects = split_subjects([s.subject for s in everything], test_subjects, seed)
        wanted = [s for s in everything if s.expression in self.expressions]
        if not wanted:
            raise dataset_error(KIND, f"No JAFFE images with expressions {', '.join(self.expressions)} in "
                                      f"{self.folder}.", self.folder)
        if split != "all":
            wanted = [s for s in wanted if (s.subject in self.test_subjects) == (split == "test")]
        if not wanted:
            raise dataset_error(KIND, f"Split {split!r} is empty: no image of its subjects has expressions "
                                      f"{', '.join(self.expressions)} in {self.folder}.", self.folder)
        self.samples: list[JaffeImage] = wanted
        self.subjects: tuple[str, ...] = tuple(sorted({s.subject for s in wanted}))

    def _scan(self) -> list[JaffeImage]:
        """Every well-named TIFF in the folder, sorted by name; warn once about badly named ones."""
        paths = sorted(p for p in self.folder.iterdir() if p.suffix.lower() in (".tif", ".tiff"))
        parsed = [(p, parse_jaffe_name(p)) for p in paths]
        bad = [p.name for p, sample in parsed if sample is None]
        if bad:
            warnings.warn(f"JAFFE: skipped {len(bad)} file(s) in {self.folder} whose names do not follow "
                          f"SUBJECT.EXPRn.NUMBER.tiff (e.g. KA.HA1.29.tiff): {', '.join(bad[:10])}"
                          f"{', ...' if len(bad) > 10 else ''}", stacklevel=3)
        samples = [sample for _, sample in parsed if sample is not None]
        if not samples:
            raise dataset_error(KIND, f"No JAFFE images (SUBJECT.EXPRn.NUMBER.tiff) in {self.folder}.", self.folder)
        return samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple:
        sample = self.samples[index]
        image = open_image(sample.path, KIND, "L")
        index_of = {"expression": self.expressions.index(sample.expression),
                    "subject": self.subjects.index(sample.subject)}
        return finish(image, [index_of[t] for t in self.target_type], self.transform, self.target_transform)
