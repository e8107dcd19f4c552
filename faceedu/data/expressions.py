"""Two expression domains as in-memory tensors, for an unpaired translator (CycleGAN, lesson 08), decoded
once at the size the model wants:

- two JAFFE expressions (e.g. happy, neutral): each domain's faces of one side of JAFFE's subject-disjoint
  split; works unchanged on the real JAFFE folder (213 grayscale TIFFs, 10 subjects) and on SynthFaces'
  JAFFE-layout folder (`datasets/synthfaces/jaffe`);
- a CelebA attribute and its absence (e.g. Smiling, not_Smiling): the larger pairing, on CelebA's own
  partition (whose identities do not overlap), from any CelebA-layout folder via `load_face_tensors`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from faceedu.data.celeba import KIND as CELEBA
from faceedu.data.jaffe import JAFFE, KIND, _expression_codes
from faceedu.data.layout import JAFFE_EXPRESSIONS, dataset_error
from faceedu.data.loading import open_image
from faceedu.data.tensors import load_face_tensors


@dataclass
class ExpressionTensors:
    """Per domain code (e.g. "HA", "NE"): uint8 images (N, C, S, S) and each image's subject."""

    images: dict[str, torch.Tensor]
    subjects: dict[str, list[str]]
    split: str
    test_subjects: list[str]

    def floats(self, code: str) -> torch.Tensor:
        """The domain's images as floats in [0, 1]."""
        return self.images[code].float() / 255


def parse_domains(domains: str | Sequence[str]) -> tuple[str, str]:
    """"HA,NE" or ("HA", "NE") -> ("HA", "NE"): two different JAFFE expression codes (upper-cased)."""
    codes = [c.strip().upper() for c in (domains.split(",") if isinstance(domains, str) else domains) if c.strip()]
    valid = ", ".join(f"{c} ({name})" for c, name in JAFFE_EXPRESSIONS.items())
    if len(codes) != 2 or codes[0] == codes[1]:
        raise ValueError(f"Give two different expression codes for the two domains, e.g. --domains HA,NE; got "
                         f"{domains!r}. JAFFE's codes are {valid}.")
    _expression_codes(codes)  # an unknown code: ValueError listing JAFFE's codes
    return codes[0], codes[1]


def _grayscale(path: Path, image: Image.Image) -> Image.Image:
    """The image as "L", refusing a colour image: one channel is expected and a colour face would be
    silently averaged into a different grey than the judges were trained on."""
    if image.mode in ("L", "1", "I", "I;16", "F"):
        return image.convert("L") if image.mode != "I;16" else Image.fromarray((np.asarray(image) >> 8).astype(np.uint8))
    rgb = np.asarray(image.convert("RGB"))
    if image.mode in ("RGB", "RGBA", "P", "LA") and (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all():
        return image.convert("L")
    raise dataset_error(KIND, f"Image {path.name} is a colour image (mode {image.mode}) but one channel is expected: "
                              "JAFFE is grayscale. Convert it (e.g. PIL's image.convert('L')) or pass channels=3.", path)


def load_expression_tensors(root: Path | str, domains: str | Sequence[str] = ("HA", "NE"), split: str = "train",
                            size: int = 64, channels: int = 1, test_subjects: int | float | Sequence[str] = 0.3,
                            seed: int = 0) -> ExpressionTensors:
    """The faces of the two expression `domains` on one side (`split` train|test|all) of JAFFE's
    subject-disjoint split, resized to `size` (antialiased) as uint8 (N, channels, size, size) per code."""
    codes = parse_domains(domains)
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grayscale, as JAFFE) or 3, got {channels}.")
    # the split is drawn over all the folder's subjects, so a subject's side never depends on the domains
    data = JAFFE(root, split="all", expressions=codes, test_subjects=test_subjects, seed=seed)
    test = set(data.test_subjects)
    if split not in ("train", "test", "all"):
        raise ValueError(f"Unknown split {split!r}: choose train, test or all.")
    images: dict[str, torch.Tensor] = {}
    subjects: dict[str, list[str]] = {}
    for code in codes:
        chosen = [s for s in data.samples if s.expression == code
                  and (split == "all" or (s.subject in test) == (split == "test"))]
        if not chosen:
            side = "test" if split == "test" else "training"
            raise dataset_error(KIND, f"Domain {code} ({JAFFE_EXPRESSIONS[code]}) is empty on the {split} split: no "
                                      f"{side} subject ({', '.join(sorted(test) if split == 'test' else sorted(set(data.subjects) - test))}) "
                                      f"has a {code} image in {data.folder}. Choose other --domains or another split "
                                      "of the subjects (test_subjects).", data.folder)
        stack = torch.empty((len(chosen), channels, size, size), dtype=torch.uint8)
        for i, sample in enumerate(chosen):
            image = open_image(sample.path, KIND, None)
            image = _grayscale(sample.path, image) if channels == 1 else image.convert("RGB")
            image = image.resize((size, size), Image.Resampling.LANCZOS)
            array = np.asarray(image, dtype=np.uint8)
            stack[i] = torch.from_numpy(array.reshape(size, size, channels).copy()).permute(2, 0, 1)
        images[code], subjects[code] = stack, [s.subject for s in chosen]
    return ExpressionTensors(images, subjects, split, sorted(test))


NOT = "not_"  # the prefix of the domain without the attribute: ("Smiling", "not_Smiling")


def parse_attribute_domains(domains: str | Sequence[str], names: Sequence[str] | None = None) -> tuple[str, str]:
    """"Smiling", "Smiling,not_Smiling" or ("Smiling", "not_Smiling") -> ("Smiling", "not_Smiling"): the faces
    that have a CelebA attribute (domain A) and those that do not (domain B). `names`: the folder's attribute
    names, to refuse one it does not have."""
    codes = [c.strip() for c in (domains.split(",") if isinstance(domains, str) else domains) if c.strip()]
    attribute = codes[0] if codes else ""
    if not attribute or attribute.startswith(NOT) or len(codes) > 2 or (len(codes) == 2 and codes[1] != NOT + attribute):
        raise ValueError(f"Give one CelebA attribute for the two domains (faces with it, faces without it), e.g. "
                         f"--domains Smiling (= Smiling,{NOT}Smiling); got {domains!r}.")
    if names is not None and attribute not in names:
        raise ValueError(f"Unknown CelebA attribute {attribute!r}; the folder's attributes are {', '.join(names)}.")
    return attribute, NOT + attribute


def load_attribute_domains(root: Path | str, domains: str | Sequence[str] = ("Smiling", NOT + "Smiling"),
                           split: str = "train", size: int = 64, limit: int | None = None) -> ExpressionTensors:
    """The faces of a CelebA-layout `split` (train|valid|test|all: CelebA's partition, identity-disjoint)
    with the attribute of `domains` and without it, as uint8 (N, 3, size, size) per domain. A face's
    "subject" is its identity when the folder has identity_CelebA.txt, else the image itself."""
    faces = load_face_tensors(root, split=split, size=size, masks=False, limit=limit)
    attribute, absent = parse_attribute_domains(domains, faces.attr_names)
    has = faces.attr[:, faces.attr_names.index(attribute)].bool()
    subjects = [str(int(i)) for i in faces.identity] if faces.identity is not None else \
        [f"image {i}" for i in range(len(faces))]
    images: dict[str, torch.Tensor] = {}
    names: dict[str, list[str]] = {}
    for code, chosen in ((attribute, has), (absent, ~has)):
        if not chosen.any():
            raise dataset_error(CELEBA, f"Domain {code} is empty on the {split} split of {faces.folder}: no face "
                                        f"{'has' if code == attribute else 'lacks'} {attribute}. Choose another "
                                        "attribute (--domains) or split.", faces.folder)
        images[code] = faces.images[chosen]
        names[code] = [s for s, keep in zip(subjects, chosen.tolist()) if keep]
    return ExpressionTensors(images, names, split, [])


__all__ = ["ExpressionTensors", "NOT", "parse_domains", "load_expression_tensors", "parse_attribute_domains",
           "load_attribute_domains"]
