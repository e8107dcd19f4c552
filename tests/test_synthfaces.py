"""SynthFaces: determinism (same seed, same bytes), the real file layouts, and ground truth that means something."""

import numpy as np
import pytest
from PIL import Image

from faceedu.data.layout import CELEBA_ATTRIBUTES, CELEBAMASK_LABELS, JAFFE_EXPRESSIONS
from faceedu.data.synthfaces import (
    SYNTH_ATTRIBUTES, SynthConfig, ensure, generate, make_identity, render_face, renderer_fingerprint, tree_checksum,
)

SMALL = SynthConfig(n=120, size=64, seed=7, hq=10, jaffe_subjects=10, jaffe_repeats=1)


@pytest.fixture(scope="module")
def small_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    generate(root, SMALL, verbose=False)
    return root


def test_same_seed_same_bytes_whatever_the_worker_count(small_tree, tmp_path):
    generate(tmp_path, SynthConfig(**{**SMALL.__dict__, "workers": 1}), verbose=False)
    assert tree_checksum(tmp_path) == tree_checksum(small_tree)


def test_another_seed_gives_other_faces(tmp_path):
    a = render_face(64, 0, 2, 5, make_identity(0, 1))["image"]
    b = render_face(64, 1, 2, 5, make_identity(1, 1))["image"]
    assert np.abs(a.astype(int) - b.astype(int)).mean() > 10


def test_rendering_is_pinned():
    """The renderer's pixels, labels and landmarks for seed 0 are fixed: a change here changes every dataset
    (and makes `ensure` regenerate existing ones). Update the pin deliberately when the renderer changes."""
    assert renderer_fingerprint() == PINNED_RENDER_SHA256


def test_ensure_keeps_a_dataset_of_any_config_and_regenerates_a_stale_one(small_tree, tmp_path):
    """`faceedu train vae --root R` on SynthFaces made with other options (here 120 faces, seed 7) uses them
    as they are; one made by an older renderer is regenerated with its own options, not the defaults."""
    before = tree_checksum(small_tree)
    assert ensure(small_tree, verbose=False) == small_tree and tree_checksum(small_tree) == before
    stale = tmp_path / "stale"
    generate(stale, SMALL, verbose=False)
    meta = stale / "synthfaces.json"
    meta.write_text(meta.read_text().replace(renderer_fingerprint(), "an-older-renderer"))
    ensure(stale, verbose=False)
    assert renderer_fingerprint() in meta.read_text() and tree_checksum(stale) == before


def test_celeba_layout(small_tree):
    celeba = small_tree / "celeba"
    lines = (celeba / "list_attr_celeba.txt").read_text().splitlines()
    assert lines[0] == str(SMALL.n)
    assert lines[1].split() == list(CELEBA_ATTRIBUTES)
    assert len(lines) == SMALL.n + 2
    first = lines[2].split()
    assert first[0] == "000001.jpg" and set(first[1:]) <= {"-1", "1"} and len(first) == 41
    partition = (celeba / "list_eval_partition.txt").read_text().split()
    assert set(partition[1::2]) == {"0", "1", "2"}
    image = Image.open(celeba / "img_align_celeba" / f"{SMALL.n:06d}.jpg")
    assert image.size == (64, 64) and image.mode == "RGB"
    label = np.asarray(Image.open(celeba / "CelebAMask-HQ-mask" / "0.png"))
    assert label.shape == (64, 64) and label.max() <= max(CELEBAMASK_LABELS.values())
    five = (celeba / "list_landmarks_align_celeba.txt").read_text().splitlines()
    assert five[1].split() == ["lefteye_x", "lefteye_y", "righteye_x", "righteye_y", "nose_x", "nose_y",
                               "leftmouth_x", "leftmouth_y", "rightmouth_x", "rightmouth_y"]
    sixty_eight = (celeba / "list_landmarks_68.txt").read_text().splitlines()
    assert len(sixty_eight[2].split()) == 1 + 136


def test_identities_recur_and_splits_are_identity_disjoint(small_tree):
    celeba = small_tree / "celeba"
    identity = dict(line.split() for line in (celeba / "identity_CelebA.txt").read_text().splitlines())
    split = dict(line.split() for line in (celeba / "list_eval_partition.txt").read_text().splitlines())
    ids, counts = np.unique(list(identity.values()), return_counts=True)
    assert counts.min() >= 2
    per_id = {}
    for name, who in identity.items():
        per_id.setdefault(who, set()).add(split[name])
    assert all(len(splits) == 1 for splits in per_id.values())


def test_celebamask_hq_tree(small_tree):
    hq = small_tree / "CelebAMask-HQ"
    assert (hq / "CelebA-HQ-img" / "0.jpg").is_file()
    assert (hq / "CelebAMask-HQ-mask-anno" / "0" / "00000_skin.png").is_file()
    mapping = (hq / "CelebA-HQ-to-CelebA-mapping.txt").read_text().splitlines()
    assert mapping[0].split() == ["idx", "orig_idx", "orig_file"] and mapping[1].split() == ["0", "0", "000001.jpg"]


def test_jaffe_tree(small_tree):
    files = sorted(p.name for p in (small_tree / "jaffe").glob("*.tiff"))
    assert len(files) == 10 * 7
    assert {name.split(".")[1][:2] for name in files} == set(JAFFE_EXPRESSIONS)
    image = Image.open(small_tree / "jaffe" / files[0])
    assert image.mode == "L" and image.size == (SMALL.jaffe_size, SMALL.jaffe_size)


def test_landmarks_lie_on_the_parts_they_name():
    for index in range(20):
        face = render_face(64, 3, 2, index, make_identity(3, index + 1))
        label, lm = face["label"], np.round(face["landmarks68"]).astype(int)
        if face["attrs"]["Eyeglasses"]:
            continue
        at = lambda k: label[lm[k, 1], lm[k, 0]]  # noqa: E731
        assert at(30) == CELEBAMASK_LABELS["nose"]
        eye_centres = [lm[36:42].mean(0).round().astype(int), lm[42:48].mean(0).round().astype(int)]
        assert {label[y, x] for x, y in eye_centres} <= {CELEBAMASK_LABELS["l_eye"], CELEBAMASK_LABELS["r_eye"]}
        assert lm[8, 1] > lm[57, 1] > lm[33, 1] > lm[27, 1]  # chin below mouth below nose below bridge


def test_attributes_are_drawn_and_correlations_hold():
    """Each attribute changes the pixels where it should; deliberate correlations are present."""
    rng_attrs = []
    for index in range(600):
        rng_attrs.append(render_face(16, 0, 2, index, make_identity(0, index % 50 + 1))["attrs"])
    table = {name: np.array([a[name] for a in rng_attrs]) for name in SYNTH_ATTRIBUTES}
    assert not (table["Mustache"] & ~table["Male"]).any() and not (table["Goatee"] & ~table["Male"]).any()
    assert table["Eyeglasses"][table["Blond_Hair"]].mean() > 3 * table["Eyeglasses"][~table["Blond_Hair"]].mean()
    assert ((table["Black_Hair"].astype(int) + table["Blond_Hair"] + table["Brown_Hair"] + table["Gray_Hair"]) <= 1).all()
    for name in SYNTH_ATTRIBUTES:
        assert 0.01 < table[name].mean() < 0.99, name


@pytest.mark.parametrize("attribute, part", [
    ("Eyeglasses", "eye_g"), ("Wearing_Hat", "hat"), ("Mouth_Slightly_Open", "mouth"), ("Wearing_Earrings", "ear_r"),
])
def test_attribute_switches_its_part_of_the_label_map(attribute, part):
    who = make_identity(0, 4)
    base = render_face(64, 0, 2, 11, who)["attrs"] | {"Eyeglasses": False, "Wearing_Hat": False,
                                                     "Mouth_Slightly_Open": False, "Wearing_Earrings": False}
    off = render_face(64, 0, 2, 11, who, base)["label"]
    on = render_face(64, 0, 2, 11, who, base | {attribute: True})["label"]
    assert (off == CELEBAMASK_LABELS[part]).sum() == 0 < (on == CELEBAMASK_LABELS[part]).sum()
PINNED_RENDER_SHA256 = "91b6ca2725a190d3f70b2df61abf0686208752556f003bc868eee4d9a0c0e25d"


def test_a_smile_is_broad_enough_to_see_at_64_pixels():
    """CelebA's Smiling is a broad smile; SynthFaces' must survive a 64x64 VAE: the mouth (iBUG points
    48-54) widens by a quarter and its corners rise well above the lips' middle."""
    who = make_identity(0, 4)
    base = render_face(64, 0, 2, 11, who)["attrs"] | {"Mouth_Slightly_Open": False, "Mustache": False}
    shapes = {}
    for smiling in (False, True):
        points = render_face(64, 0, 2, 11, who, attrs=base | {"Smiling": smiling})["landmarks68"]
        left, right, middle = points[48], points[54], (points[51] + points[57]) / 2
        shapes[smiling] = (np.linalg.norm(right - left), np.linalg.norm(middle - (left + right) / 2))
    assert shapes[True][0] > 1.25 * shapes[False][0]
    assert shapes[True][1] > shapes[False][1] + 2.0, shapes        # corners lifted by more than 2 pixels
