"""Lesson 00 "Faces as data": the reference for each exercise and the checks the notebook calls.

Exercises (one concept each):
  1. ``parse_attributes``    - read ``list_attr_celeba.txt`` into file names, attribute names and a 0/1 table
  2. ``face_hair_hat_mask``  - reduce a CelebAMask-HQ label map to Toledo & Antonelo's face+hair+hat mask
  3. ``phi_matrix``          - the phi coefficient between every pair of attributes (their correlation)
  4. ``preprocess``          - centre-crop, resize and scale an image to the [-1, 1] tensor models eat

Each ``check_<exercise>(fn, hidden=False)`` compares ``fn`` with the reference on fixed and seeded random
inputs, tests properties, and raises :class:`~faceedu.grading.core.CheckFailed` with a hint at the first
mistake. The reference functions below are blocked while ``fn`` runs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from faceedu.data.celebamask import face_hair_hat_mask
from faceedu.data.layout import CELEBA_ATTRIBUTES, CELEBAMASK_CLASSES
from faceedu.data.loading import read_binary_attributes, read_table
from faceedu.data.stats import phi_matrix
from faceedu.grading.core import Check

__all__ = [
    "parse_attributes", "face_hair_hat_mask", "phi_matrix", "preprocess",
    "check_parse_attributes", "check_face_hair_hat_mask", "check_phi_matrix", "check_preprocess",
]

# --- reference implementations ---------------------------------------------------------------------
# Same names, signatures and docstrings as the notebook's exercises, so lesson code and package code
# read the same. face_hair_hat_mask and phi_matrix are the package's own (faceedu.data.celebamask,
# faceedu.data.stats); the two below are the lesson-sized versions of the loaders' parsing and FaceCrop.


def parse_attributes(text: str) -> tuple[list[str], list[str], torch.Tensor]:
    """Parse the text of CelebA's ``list_attr_celeba.txt``.

    Line 1 is the number of images, line 2 the attribute names, then one row per image:
    ``000001.jpg -1  1  1 -1 ...`` (columns separated by one or more spaces; -1 absent, 1 present).
    Returns ``(files, names, attrs)`` with ``attrs`` a ``torch.long`` tensor of shape (N, K) holding 0/1.
    Raises ValueError if the number of rows differs from the count line (a truncated download) or a
    row has the wrong number of values.
    """
    lines = [line for line in text.splitlines() if line.strip()]
    count = int(lines[0])
    names = lines[1].split()
    rows = [line.split() for line in lines[2:]]
    if len(rows) != count:
        raise ValueError(f"the count line says {count} images but there are {len(rows)} rows: truncated file?")
    for row in rows:
        if len(row) != len(names) + 1:
            raise ValueError(f"row for {row[0]} has {len(row) - 1} values, expected {len(names)}")
    files = [row[0] for row in rows]
    signs = torch.tensor([[int(v) for v in row[1:]] for row in rows], dtype=torch.long).reshape(count, len(names))
    return files, names, (signs + 1) // 2  # -1 -> 0, 1 -> 1


def preprocess(image: torch.Tensor, size: int = 64) -> torch.Tensor:
    """Prepare one image for a model: take the centred square crop of a uint8 (3, H, W) image (for an
    aligned 178x218 CelebA face, rows 20..197, as Fader Networks do), resize it to (size, size) with
    antialiased bilinear interpolation, and scale 0..255 to -1..1. Returns float32 (3, size, size)."""
    _, h, w = image.shape
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    x = image[:, top:top + side, left:left + side].to(torch.float32) / 255.0   # (3, side, side) in [0, 1]
    x = F.interpolate(x[None], size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0]
    return (x * 2 - 1).clamp(-1, 1)                                            # (3, size, size) in [-1, 1]




# The package's own functions for the same jobs are the references too, so they are blocked as well.
REFERENCES = (parse_attributes, face_hair_hat_mask, phi_matrix, preprocess, read_binary_attributes, read_table)

# --- checks ------------------------------------------------------------------------------------------


def _attr_text(files: list[str], names: list[str], signs: torch.Tensor, count: int | None = None,
               newline: str = "\n") -> str:
    """Write rows in CelebA's own spacing: values right-aligned in 2-character columns."""
    lines = [str(len(files) if count is None else count), " ".join(names) + " "]
    for f, row in zip(files, signs.tolist()):
        lines.append(f + " " + " ".join(f"{v:2d}" for v in row))
    return newline.join(lines) + newline


def check_parse_attributes(fn, hidden: bool = False) -> None:
    """Visible: a 3-image file in CelebA's spacing (exact file names, names and values), 0/1 long
    values, a 50-image random file with all 40 attributes, and a ValueError for a truncated file.
    Hidden: Windows line endings, no trailing newline, 2,000 rows, a row with a missing value."""
    __tracebackhide__ = True
    c = Check("parse_attributes", fn, hidden, blocked=REFERENCES)
    names = ["Bangs", "Eyeglasses", "Male", "Smiling"]
    files = ["000001.jpg", "000002.jpg", "000003.jpg"]
    signs = torch.tensor([[-1, 1, 1, -1], [1, -1, -1, -1], [-1, -1, 1, 1]])
    cases = [("a 3-image file", _attr_text(files, names, signs))]
    g = c.rng
    n = 2000 if hidden else 50
    rfiles = [f"{i:06d}.jpg" for i in range(1, n + 1)]
    rsigns = torch.randint(0, 2, (n, len(CELEBA_ATTRIBUTES)), generator=g) * 2 - 1
    cases.append((f"a random {n}-image file with all 40 attributes", _attr_text(rfiles, list(CELEBA_ATTRIBUTES), rsigns)))
    if hidden:
        cases.append(("a file with Windows line endings", _attr_text(files, names, signs, newline="\r\n")))
        cases.append(("a file without a final newline", _attr_text(files, names, signs).rstrip("\n")))
    for label, text in cases:
        expected = parse_attributes(text)
        out = c.call(text)
        c.expect(isinstance(out, tuple) and len(out) == 3,
                 f"on {label}: return a tuple (files, names, attrs), got {type(out).__name__}"
                 f"{' of length ' + str(len(out)) if isinstance(out, (tuple, list)) else ''}.")
        got_files, got_names, got_attrs = out
        c.expect(list(got_files) == expected[0],
                 f"on {label}: files should start {expected[0][:2]}, got {list(got_files)[:2]}. The file name "
                 f"is the first field of each row after the two header lines.")
        c.expect(list(got_names) == expected[1],
                 f"on {label}: names should start {expected[1][:3]}, got {list(got_names)[:3]}. The names are "
                 f"the second line, split on whitespace.")
        c.expect_tensor(got_attrs, shape=expected[2].shape, dtype=torch.long, what=f"attrs on {label}",
                        hint="Build it with torch.tensor(..., dtype=torch.long).")
        if bool((got_attrs == -1).any()):
            c.fail(f"on {label}: attrs contains -1. CelebA writes -1 for 'absent' and 1 for 'present'; the "
                   f"table should hold 0 and 1 (map -1 -> 0).")
        c.expect_equal(got_attrs, expected[2], what=f"attrs on {label}",
                       hint="Row i, column j should be 1 when image i has attribute j.")
    truncated = _attr_text(files, names, signs, count=5)
    c.expect_raises(ValueError, "a file whose count line says 5 images but holds 3 rows should raise ValueError "
                                "(compare int(first line) with the number of rows: that is how a truncated download shows).",
                    truncated)
    if hidden:
        broken = _attr_text(files, names, signs).replace("000002.jpg  1 -1 -1 -1", "000002.jpg  1 -1 -1")
        c.expect_raises(ValueError, "a row with 3 values under a 4-name header should raise ValueError.", broken)
    c.done()


def _name_labels(values: list[int]) -> str:
    return ", ".join(f"'{CELEBAMASK_CLASSES[v - 1]}' ({v})" if v > 0 else "'background' (0)" for v in values)


def check_face_hair_hat_mask(fn, hidden: bool = False) -> None:
    """Visible: one pixel of every label 0..18 (the mistakes are named class by class), a random 64x64
    label map, boolean output of the input's shape. Hidden: uint8 maps as read from PNG, a batch
    (N, H, W), an all-background map."""
    __tracebackhide__ = True
    c = Check("face_hair_hat_mask", fn, hidden, blocked=REFERENCES)
    every = torch.arange(0, len(CELEBAMASK_CLASSES) + 1).reshape(1, -1)            # (1, 19): each label once
    cases = [("a map holding every label once", every),
             ("a random 64x64 label map", torch.randint(0, 19, (64, 64), generator=c.rng))]
    if hidden:
        cases += [("a uint8 label map (as read from PNG)", torch.randint(0, 19, (32, 48), generator=c.rng).to(torch.uint8)),
                  ("a batch of label maps (N, H, W)", torch.randint(0, 19, (3, 16, 16), generator=c.rng)),
                  ("an all-background map", torch.zeros(8, 8, dtype=torch.long))]
    for label, labels in cases:
        out = c.call(labels)
        c.expect_tensor(out, shape=labels.shape, dtype=torch.bool, what=f"the mask for {label}",
                        hint="Return a boolean tensor of the label map's shape (a comparison gives one).")
        expected = face_hair_hat_mask(labels)
        wrong = out != expected
        if bool(wrong.any()):
            values = sorted({int(v) for v in labels[wrong].tolist()})
            extra = [v for v in values if not bool(expected[labels == v].any())]
            missing = [v for v in values if v not in extra]
            parts = []
            if extra:
                parts.append(f"it keeps {_name_labels(extra)}, which the face+hair+hat mask drops")
            if missing:
                parts.append(f"it drops {_name_labels(missing)}, which the mask keeps")
            c.fail(f"for {label}, " + "; ".join(parts) + ". Remember: value = class index + 1 and 0 is background.")
        c.passed += 1
    c.done()


def check_phi_matrix(fn, hidden: bool = False) -> None:
    """Visible: four hand-made attributes (a copy gives 1, a complement -1, a constant 0 - not NaN),
    a random correlated (500, 6) table, float output, symmetry and values in [-1, 1]. Hidden: bool and
    uint8 input, 5,000 rows of all 40 attributes, a table where every attribute is constant."""
    __tracebackhide__ = True
    c = Check("phi_matrix", fn, hidden, blocked=REFERENCES)
    a = torch.tensor([1, 0, 1, 1, 0, 0, 1, 0])
    b = torch.tensor([1, 1, 0, 1, 0, 1, 0, 0])
    hand = torch.stack([a, a, 1 - a, b, torch.ones_like(a)], dim=1)                 # (8, 5)
    base = torch.rand(500, 1, generator=c.rng)
    correlated = (torch.rand(500, 6, generator=c.rng) * 0.6 + base * torch.tensor([0.8, 0.6, -0.7, 0.0, 0.3, -0.2]) > 0.35).long()
    cases = [("five hand-made attributes (a, a copy of a, 1 - a, b, a constant)", hand),
             ("a random (500, 6) table", correlated)]
    if hidden:
        big = (torch.rand(5000, 40, generator=c.rng) < torch.rand(40, generator=c.rng)).long()
        cases += [("a bool table", correlated.bool()), ("a uint8 table", correlated.to(torch.uint8)),
                  ("5,000 images x 40 attributes", big), ("a table of constant attributes", torch.ones(10, 3, dtype=torch.long))]
    for label, table in cases:
        k = table.shape[1]
        out = c.call(table)
        c.expect_tensor(out, shape=(k, k), dtype=(torch.float32, torch.float64), what=f"phi for {label}",
                        hint="Return a float tensor with one row and one column per attribute.")
        expected = phi_matrix(table)
        if torch.isnan(out).any():
            c.fail(f"phi for {label} contains NaN. An attribute that never changes has standard deviation 0: "
                   f"its phi should be 0, e.g. with torch.where(denominator > 0, cov / denominator, 0).")
        c.expect_close(out.transpose(0, 1), out, what=f"phi for {label} (symmetry: phi[i, j] == phi[j, i])",
                       hint="phi is symmetric; compute it from the centred table as x.T @ x.")
        if bool((out.abs() > 1 + 1e-4).any()):
            c.fail(f"phi for {label} has values outside [-1, 1] (largest |phi| = {out.abs().max().item():.3g}). "
                   f"Divide the covariance by the product of the two standard deviations.")
        diag_ok = torch.isclose(out.diagonal().double(), expected.diagonal().double(), atol=1e-4)
        if not bool(diag_ok.all()):
            c.fail(f"for {label}, the diagonal should be 1 for every attribute that varies (and 0 for a constant "
                   f"one), got {[round(v, 3) for v in out.diagonal().tolist()][:6]}. Use the same normalisation "
                   f"(divide by N) for the covariance and the variances, and centre each column first.")
        c.expect_close(out, expected, what=f"phi for {label}", atol=1e-4,
                       hint="phi = mean((a - mean a)(b - mean b)) / (std a * std b); "
                            "did you subtract the column means first?")
    c.done()


def check_preprocess(fn, hidden: bool = False) -> None:
    """Visible: a 218x178 CelebA-shaped image with marked bands (the crop must drop them), white -> 1 and
    black -> -1, a random image against the reference (tolerance 0.02), float32 (3, size, size) output.
    Hidden: a landscape image, size equal to the crop (no resampling), size 128 (upsampling)."""
    __tracebackhide__ = True
    c = Check("preprocess", fn, hidden, blocked=REFERENCES)
    g = c.rng
    celeba = torch.full((3, 218, 178), 128, dtype=torch.uint8)
    celeba[0, :20] = 255                      # a red band above the centred square
    celeba[1, -20:] = 255                     # a green band below it
    cases = [("a 218x178 image with red/green bands outside the centre square", celeba, 64),
             ("a random 100x80 image", torch.randint(0, 256, (3, 100, 80), dtype=torch.uint8, generator=g), 32)]
    if hidden:
        cases += [("a landscape 60x90 image", torch.randint(0, 256, (3, 60, 90), dtype=torch.uint8, generator=g), 48),
                  ("a 64x64 image at size 64", torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8, generator=g), 64),
                  ("a 40x40 image at size 128", torch.randint(0, 256, (3, 40, 40), dtype=torch.uint8, generator=g), 128)]
    for value, target in ((255, 1.0), (0, -1.0)):
        out = c.call(torch.full((3, 50, 40), value, dtype=torch.uint8), 16)
        c.expect_tensor(out, shape=(3, 16, 16), dtype=torch.float32, what="the output for a plain image",
                        hint="Return a float32 tensor (channels first, then size x size).")
        c.expect_close(out, torch.full((3, 16, 16), target), what=f"the output for an all-{value} image", atol=1e-3,
                       hint="Scale with x / 255 * 2 - 1 so that 0 -> -1 and 255 -> 1.")
    for label, image, size in cases:
        out = c.call(image, size)
        c.expect_tensor(out, shape=(3, size, size), dtype=torch.float32, what=f"the output for {label}",
                        hint="Channels first: (3, size, size).")
        c.expect(float(out.min()) >= -1 - 1e-4 and float(out.max()) <= 1 + 1e-4,
                 f"values for {label} should lie in [-1, 1], got [{float(out.min()):.3g}, {float(out.max()):.3g}]. "
                 f"Divide by 255 before scaling to [-1, 1].")
        expected = preprocess(image, size)
        if image is celeba and float(out[0].max()) > float(expected[0].max()) + 0.1:
            c.fail("the red band at the top of the 218x178 image survived: crop the centred square "
                   "(rows 20..197 of a 218-row image) before resizing, do not squash the whole image.")
        if image is celeba and float(out[1].max()) > float(expected[1].max()) + 0.1:
            c.fail("the green band at the bottom survived: the crop should be centred, (H - side) // 2 rows from the top.")
        c.expect_close(out, expected, what=f"the output for {label}", atol=0.02, rtol=0,
                       hint="Crop the centred square, then F.interpolate(x[None], size=(size, size), "
                            "mode='bilinear', antialias=True), then scale to [-1, 1].")
    c.done()
