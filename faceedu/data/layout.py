"""The real datasets' file layouts, names and sources: one place that the SynthFaces writer, the
loaders and their error messages all read, so the generated data and the real data cannot drift apart.
"""

from __future__ import annotations

from pathlib import Path

# The 40 CelebA attributes, in the column order of `list_attr_celeba.txt`.
CELEBA_ATTRIBUTES: tuple[str, ...] = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs",
    "Big_Lips", "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows",
    "Chubby", "Double_Chin", "Eyeglasses", "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones",
    "Male", "Mouth_Slightly_Open", "Mustache", "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin",
    "Pointy_Nose", "Receding_Hairline", "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair",
    "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat", "Wearing_Lipstick", "Wearing_Necklace",
    "Wearing_Necktie", "Young",
)

# CelebA's official partition codes in `list_eval_partition.txt`.
CELEBA_SPLITS: dict[str, int] = {"train": 0, "valid": 1, "test": 2}

# The five landmarks of `list_landmarks_align_celeba.txt`, as (x, y) column pairs.
CELEBA_LANDMARKS: tuple[str, ...] = ("lefteye", "righteye", "nose", "leftmouth", "rightmouth")

CELEBA_FILES: dict[str, str] = {
    "images": "img_align_celeba",
    "attributes": "list_attr_celeba.txt",
    "partition": "list_eval_partition.txt",
    "identity": "identity_CelebA.txt",
    "landmarks": "list_landmarks_align_celeba.txt",
    "bbox": "list_bbox_celeba.txt",
    # Not in the official release: 68 iBUG landmarks per image (count line, header, `000001.jpg x0 y0 ...`),
    # written by SynthFaces or by a landmark detector run over the images.
    "landmarks68": "list_landmarks_68.txt",
}

# Kaggle's common copy of CelebA ships these as CSV files (`image_id,5_o_Clock_Shadow,...` header, no count
# line, comma-separated rows); the loader reads either form, the text file first.
CELEBA_CSV_FILES: dict[str, str] = {
    "attributes": "list_attr_celeba.csv",
    "partition": "list_eval_partition.csv",
    "bbox": "list_bbox_celeba.csv",
    "landmarks": "list_landmarks_align_celeba.csv",
}

# The files a CelebA folder needs for the models (the others are read only by what uses them).
CELEBA_REQUIRED: tuple[str, ...] = ("images", "attributes", "partition")

# How to make face masks for a CelebA folder that has none (aligned CelebA ships without label maps).
CELEBA_MASKS_HINT = ("Make them with a face-parsing network: `faceedu train parser`, then "
                     "`faceedu data masks --root ROOT --parser RUN`; or go on without masks now: "
                     "`--no-mask` (the VAE without its mask decoder, metrics on the whole image).")

# CelebAMask-HQ's 18 classes in the order of its official `g_mask.py`; in a combined label map,
# class i of this tuple has value i + 1 and background is 0.
CELEBAMASK_CLASSES: tuple[str, ...] = (
    "skin", "nose", "eye_g", "l_eye", "r_eye", "l_brow", "r_brow", "l_ear", "r_ear",
    "mouth", "u_lip", "l_lip", "hair", "hat", "ear_r", "neck_l", "neck", "cloth",
)
CELEBAMASK_LABELS: dict[str, int] = {name: i + 1 for i, name in enumerate(CELEBAMASK_CLASSES)}

# Toledo & Antonelo (ENIAC 2021) keep every class but background, ears, earring, neck, necklace and
# cloth: the face + hair + hat mask.
FACE_HAIR_HAT_EXCLUDED: frozenset[str] = frozenset({"l_ear", "r_ear", "ear_r", "neck", "neck_l", "cloth"})
FACE_HAIR_HAT_CLASSES: tuple[str, ...] = tuple(c for c in CELEBAMASK_CLASSES if c not in FACE_HAIR_HAT_EXCLUDED)

CELEBAMASK_FILES: dict[str, str] = {
    "images": "CelebA-HQ-img",
    "mask_anno": "CelebAMask-HQ-mask-anno",   # per-class PNGs: {k // 2000}/{k:05d}_{class}.png
    "label_maps": "CelebAMask-HQ-mask",       # combined label maps: {k}.png, values as CELEBAMASK_LABELS
    "attributes": "CelebAMask-HQ-attribute-anno.txt",
    "mapping": "CelebA-HQ-to-CelebA-mapping.txt",
}

# JAFFE: subject initials, the seven expressions, and the file-name pattern `KA.HA1.29.tiff`.
JAFFE_SUBJECTS: tuple[str, ...] = ("KA", "KL", "KM", "KR", "MK", "NA", "NM", "TM", "UY", "YM")
JAFFE_EXPRESSIONS: dict[str, str] = {
    "AN": "anger", "DI": "disgust", "FE": "fear", "HA": "happiness",
    "NE": "neutral", "SA": "sadness", "SU": "surprise",
}

SOURCES: dict[str, str] = {
    "celeba": "CelebA: https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html (non-commercial research only)",
    "celebamask": "CelebAMask-HQ: https://github.com/switchablenorms/CelebAMask-HQ (non-commercial research only)",
    "jaffe": "JAFFE: https://zenodo.org/records/3451524 (by request; non-commercial research only)",
    "synth": "offline default: `faceedu data synth --root DIR` generates SynthFaces in these same layouts",
}

EXPECTED_TREES: dict[str, str] = {
    "celeba": """\
ROOT/                       (the folder you pass as root; torchvision's layout)
  celeba/
    img_align_celeba/000001.jpg ... 202599.jpg
    list_attr_celeba.txt            (count line, header line, then `000001.jpg -1 1 ...` rows)
    list_eval_partition.txt         (`000001.jpg 0`; 0 train, 1 valid, 2 test)
    [identity_CelebA.txt]           (`000001.jpg 2880`; optional: only identity judges need it)
    [list_landmarks_align_celeba.txt, list_bbox_celeba.txt]  (optional)
    [CelebAMask-HQ-mask/0.png ...]  (optional label maps: `faceedu data masks` writes them)
  Kaggle's copy works too: list_attr_celeba.csv, list_eval_partition.csv, list_bbox_celeba.csv,
  list_landmarks_align_celeba.csv, and img_align_celeba/img_align_celeba/ for the images.""",
    "celebamask": """\
ROOT/
  CelebAMask-HQ/
    CelebA-HQ-img/0.jpg ... 29999.jpg
    CelebAMask-HQ-mask-anno/0/00000_skin.png ... 14/29999_hair.png   (per-class masks)
      or CelebAMask-HQ-mask/0.png ... 29999.png                    (combined label maps)
    CelebAMask-HQ-attribute-anno.txt
    CelebA-HQ-to-CelebA-mapping.txt""",
    "jaffe": """\
ROOT/
  jaffe/
    KA.AN1.39.tiff ... YM.SU3.60.tiff   (SUBJECT.EXPRn.NUMBER.tiff, 8-bit grayscale)""",
}


class DatasetError(RuntimeError):
    """A dataset on disk is missing, incomplete or damaged. The message says what, where, and how to fix it."""


def dataset_error(kind: str, problem: str, path: Path | str | None = None) -> DatasetError:
    """Build a DatasetError for dataset `kind` ('celeba', 'celebamask', 'jaffe') that names the problem
    and the file, shows the expected tree, and says where to obtain the data."""
    where = f"\n  file: {path}" if path is not None else ""
    return DatasetError(
        f"{problem}{where}\n\nExpected layout:\n{EXPECTED_TREES[kind]}\n\n"
        f"Get the data from:\n  {SOURCES[kind]}\n  or, {SOURCES['synth']}"
    )
