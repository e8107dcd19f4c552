"""The data the judges (referees) read, in the shapes they take: CelebA-layout faces with their attribute
labels and, when the folder has them, identities; JAFFE faces with their expression labels. Here, in the
data layer, so that training the judges (`faceedu.train.judge`) and measuring them (`faceedu.metrics`)
read their faces through one path without importing a layer above them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


def face_split(root: Path | str, split: str, attributes: list[str] | None = None, limit: int | None = None):
    """(images uint8 (N, 3, 64, 64), attr 0/1 float (N, A) for `attributes` (default: all the folder has),
    identity (N,) or None when the folder has no identity file, attribute names)."""
    from faceedu.data.tensors import load_face_tensors

    data = load_face_tensors(root, split, size=64, masks=False, limit=limit)
    names = attributes or data.attr_names
    columns = [data.attr_names.index(n) for n in names]
    return data.images, data.attr[:, columns].float(), getattr(data, "identity", None), names


def jaffe_split(root: Path | str, split: str, size: int = 64) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """(images float (N, 1, size, size) in [0, 1], expression index (N,), expression codes) of a JAFFE split
    (JAFFE's splits are subject-disjoint)."""
    from faceedu.data.jaffe import JAFFE

    data = JAFFE(root, split=split)
    images = torch.empty(len(data), 1, size, size)
    labels = torch.empty(len(data), dtype=torch.long)
    for i in range(len(data)):
        image, label = data[i]
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255)[None, None]
        images[i] = F.interpolate(pixels, size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
        labels[i] = label
    return images, labels, list(data.expressions)


def identity_faces(root, data: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(images float (N, C, H, W) in [0, 1], person (N,)) for choosing and testing a verification threshold:
    JAFFE's subjects (train / test subjects: disjoint), or CelebA's identities (valid / test split)."""
    if data == "jaffe":
        from faceedu.data.jaffe import JAFFE

        images, _, _ = jaffe_split(root, split, size=128)
        subjects = JAFFE(root, split=split, target_type="subject")
        person = torch.tensor([subjects.subjects.index(s.subject) for s in subjects.samples])
        return images, person
    images, _, identity, _ = face_split(root, "valid" if split == "train" else split)
    if identity is None:
        raise FileNotFoundError(f"Verification needs to know who is who, and {root} has no identity_CelebA.txt. "
                                "Give it the identity file, or calibrate on JAFFE: --data jaffe --kind identity.")
    return images.float().div(255), identity
