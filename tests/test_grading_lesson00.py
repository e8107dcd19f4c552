"""Lesson 00's checks can fail: the reference solution passes every check (visible and hidden), the
released stubs fail every one, calling faceedu's own implementation is rejected, and every mutant - a
realistic mistake, written below next to its exercise - is rejected. The kill rate is printed."""

from __future__ import annotations

import torch
import torch.nn.functional as F
import pytest

from coursekit import course_log  # noqa: F401 - autouse fixture
from faceedu.data.layout import CELEBAMASK_LABELS, FACE_HAIR_HAT_CLASSES
from faceedu.grading import lesson00
from faceedu.grading.core import ReferenceUsed
from gradertests import GraderContract, run_checks

SLUG = "00_faces_as_data"
CHECKS = {
    "parse_attributes": lesson00.check_parse_attributes,
    "face_hair_hat_mask": lesson00.check_face_hair_hat_mask,
    "phi_matrix": lesson00.check_phi_matrix,
    "preprocess": lesson00.check_preprocess,
}

# --- mutants: realistic wrong implementations -------------------------------------------------------


def _rows(text):
    lines = [line for line in text.splitlines() if line.strip()]
    return int(lines[0]), lines[1].split(), [line.split() for line in lines[2:]]


def parse_keeps_minus_one(text):
    """Forgets to map -1 to 0."""
    count, names, rows = _rows(text)
    return [r[0] for r in rows], names, torch.tensor([[int(v) for v in r[1:]] for r in rows])


def parse_split_on_single_space(text):
    """Splits rows on " ", which breaks on CelebA's aligned double spaces."""
    lines = text.splitlines()
    names = lines[1].split(" ")
    rows = [line.split(" ") for line in lines[2:] if line]
    return [r[0] for r in rows], names, (torch.tensor([[int(v) for v in r[1:]] for r in rows]) + 1) // 2


def parse_header_as_row(text):
    """Off by one: treats the header line as the first data row."""
    lines = [line for line in text.splitlines() if line.strip()]
    names = lines[1].split()
    rows = [line.split() for line in lines[1:]]
    return [r[0] for r in rows], names, (torch.tensor([[int(v) for v in r[1:]] for r in rows]) + 1) // 2


def parse_ignores_count(text):
    """Right values, but never compares the count line with the rows (a truncated file passes)."""
    _, names, rows = _rows(text)
    return [r[0] for r in rows], names, (torch.tensor([[int(v) for v in r[1:]] for r in rows]) + 1) // 2


def parse_float_values(text):
    """Returns float 0/1 instead of integer labels."""
    count, names, rows = _rows(text)
    if len(rows) != count:
        raise ValueError("count")
    return [r[0] for r in rows], names, (torch.tensor([[float(v) for v in r[1:]] for r in rows]) > 0).float()


def parse_no_row_validation(text):
    """Checks the count but not the row length: a short row is silently padded/garbled."""
    count, names, rows = _rows(text)
    if len(rows) != count:
        raise ValueError("count")
    values = [[int(v) for v in r[1:]] + [-1] * (len(names) - len(r) + 1) for r in rows]
    return [r[0] for r in rows], names, (torch.tensor(values) + 1) // 2


def mask_everything_but_background(label_map):
    """Keeps every labelled pixel: ears, neck, necklace and clothes included."""
    return label_map > 0


def mask_off_by_one(label_map):
    """Uses the class index as the label value (forgets that 0 is background)."""
    from faceedu.data.layout import CELEBAMASK_CLASSES
    keep = torch.tensor([CELEBAMASK_CLASSES.index(n) for n in FACE_HAIR_HAT_CLASSES])
    return torch.isin(label_map.long(), keep)


def mask_forgets_hat(label_map):
    """Face and hair, but no hat."""
    keep = torch.tensor([CELEBAMASK_LABELS[n] for n in FACE_HAIR_HAT_CLASSES if n != "hat"])
    return torch.isin(label_map.long(), keep)


def mask_float(label_map):
    """Right pixels, returned as a float 0/1 tensor."""
    keep = torch.tensor([CELEBAMASK_LABELS[n] for n in FACE_HAIR_HAT_CLASSES])
    return torch.isin(label_map.long(), keep).float()


def mask_first_map_only(label_map):
    """Flattens a batch to its first map (works for one map, fails for a batch)."""
    keep = torch.tensor([CELEBAMASK_LABELS[n] for n in FACE_HAIR_HAT_CLASSES])
    m = label_map if label_map.dim() == 2 else label_map[0].expand_as(label_map)
    return torch.isin(m.long(), keep)


def phi_cooccurrence(attrs):
    """Co-occurrence frequency A^T A / N instead of a correlation."""
    x = attrs.float()
    return x.T @ x / x.shape[0]


def phi_uncentred_cosine(attrs):
    """Cosine similarity of the raw 0/1 columns: forgets to subtract the means."""
    x = attrs.float()
    norms = x.norm(dim=0).clamp_min(1e-12)
    return (x.T @ x) / (norms[:, None] * norms[None, :])


def phi_no_sqrt(attrs):
    """Divides the covariance by the product of variances instead of standard deviations."""
    x = attrs.double() - attrs.double().mean(0)
    cov = x.T @ x / x.shape[0]
    var = cov.diagonal()
    return torch.where(var[:, None] * var[None, :] > 0, cov / (var[:, None] * var[None, :]), torch.zeros_like(cov)).float()


def phi_nan_constant(attrs):
    """Right formula, but 0/0 = NaN for an attribute that never varies."""
    x = attrs.double() - attrs.double().mean(0)
    cov = x.T @ x / x.shape[0]
    std = cov.diagonal().sqrt()
    return (cov / (std[:, None] * std[None, :])).float()


def phi_mixed_normalisation(attrs):
    """Covariance over N but torch.std's unbiased N-1: the diagonal comes out below 1."""
    x = attrs.double()
    xc = x - x.mean(0)
    cov = xc.T @ xc / x.shape[0]
    std = x.std(dim=0)
    denom = std[:, None] * std[None, :]
    return torch.where(denom > 0, cov / denom.clamp_min(1e-12), torch.zeros_like(cov)).float()


def _crop(image):
    _, h, w = image.shape
    side = min(h, w)
    return image[:, (h - side) // 2:(h - side) // 2 + side, (w - side) // 2:(w - side) // 2 + side]


def _resize(x, size, **kw):
    kw = kw or {"mode": "bilinear", "align_corners": False, "antialias": True}
    return F.interpolate(x[None].float(), size=(size, size), **kw)[0]


def preprocess_zero_one(image, size=64):
    """Scales to [0, 1] and stops there."""
    return _resize(_crop(image) / 255.0, size)


def preprocess_squash(image, size=64):
    """Resizes the whole image, no crop: faces get squashed."""
    return _resize(image / 255.0, size) * 2 - 1


def preprocess_top_crop(image, size=64):
    """Crops the top square instead of the centred one."""
    side = min(image.shape[1:])
    return _resize(image[:, :side, :side] / 255.0, size) * 2 - 1


def preprocess_no_255(image, size=64):
    """Forgets to divide by 255."""
    return _resize(_crop(image).float(), size) * 2 - 1


def preprocess_nearest(image, size=64):
    """Nearest-neighbour resize: aliasing instead of a smooth downscale."""
    return _resize(_crop(image) / 255.0, size, mode="nearest") * 2 - 1


def preprocess_channels_last(image, size=64):
    """Returns (size, size, 3), the matplotlib layout."""
    return (_resize(_crop(image) / 255.0, size) * 2 - 1).permute(1, 2, 0)


def preprocess_mutates_input(image, size=64):
    """Swaps RGB to BGR in place (an OpenCV habit): the caller's image changes."""
    image.copy_(image.flip(0))
    return _resize(_crop(image) / 255.0, size) * 2 - 1


MUTANTS = {
    "parse_attributes": [parse_keeps_minus_one, parse_split_on_single_space, parse_header_as_row,
                         parse_ignores_count, parse_float_values, parse_no_row_validation],
    "face_hair_hat_mask": [mask_everything_but_background, mask_off_by_one, mask_forgets_hat, mask_float,
                           mask_first_map_only],
    "phi_matrix": [phi_cooccurrence, phi_uncentred_cosine, phi_no_sqrt, phi_nan_constant, phi_mixed_normalisation],
    "preprocess": [preprocess_zero_one, preprocess_squash, preprocess_top_crop, preprocess_no_255,
                   preprocess_nearest, preprocess_channels_last, preprocess_mutates_input],
}


# --- tests -------------------------------------------------------------------------------------------


def grade(exercise, fn) -> str | None:
    return run_checks(CHECKS, exercise, fn)


class TestGrader(GraderContract):
    SLUG, LESSON, CHECKS, MUTANTS = SLUG, lesson00, CHECKS, MUTANTS


def test_failure_messages_are_actionable():
    assert "map -1 -> 0" in grade("parse_attributes", parse_keeps_minus_one)
    assert "'neck' (17)" in grade("face_hair_hat_mask", mask_everything_but_background)
    assert "NaN" in grade("phi_matrix", phi_nan_constant)
    assert "centred square" in grade("preprocess", preprocess_squash)
    assert "in place" in grade("preprocess", preprocess_mutates_input)


def test_the_data_packages_equivalents_are_blocked_too():
    from faceedu.data import celebamask

    with pytest.raises(ReferenceUsed, match="faceedu.data.celebamask.face_hair_hat_mask"):
        lesson00.check_face_hair_hat_mask(lambda m: celebamask.face_hair_hat_mask(m))
    assert celebamask.face_hair_hat_mask(torch.tensor([0, 1])).tolist() == [False, True]
