"""The CelebA, CelebAMask-HQ and JAFFE loaders on tiny trees in the real formats: what they read, and the
error each kind of bad input gives (it must name the file and say what to do)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from faceedu.data.celeba import CelebA
from faceedu.data.celebamask import (
    FACE_PARSING_CLASSES, CelebAMaskHQ, combine_class_masks, face_hair_hat_mask, from_face_parsing,
)
from faceedu.data.jaffe import JAFFE, parse_jaffe_name, split_subjects
from faceedu.data.layout import CELEBA_ATTRIBUTES, CELEBAMASK_LABELS, JAFFE_SUBJECTS, DatasetError
from faceedu.data.loading import read_table
from fixtures import (
    attribute_values, class_shapes, combine, landmarks68, write_celeba, write_celebamask_hq, write_jaffe,
)

N = 8  # images in the CelebA fixture; partition codes 0,0,0,0,0,1,1,2


@pytest.fixture(scope="module")
def celeba_root(tmp_path_factory) -> Path:
    return write_celeba(tmp_path_factory.mktemp("celeba"), n=N)


@pytest.fixture(scope="module")
def jaffe_root(tmp_path_factory) -> Path:
    return write_jaffe(tmp_path_factory.mktemp("jaffe"))


@pytest.fixture
def celeba_copy(celeba_root, tmp_path) -> Path:
    """A private copy to damage."""
    shutil.copytree(celeba_root, tmp_path, dirs_exist_ok=True)
    return tmp_path


def assert_helpful(error: pytest.ExceptionInfo, *names: str) -> str:
    """The message names the file/value and tells the user what to do: expected tree and where to get data."""
    message = str(error.value)
    for name in names:
        assert name in message, f"{name!r} not in:\n{message}"
    assert "Expected layout" in message and "Get the data from" in message
    return message


# --- CelebA ----------------------------------------------------------------------------------------

def test_celeba_reads_the_official_layout(celeba_root):
    data = CelebA(celeba_root, split="all")
    assert len(data) == N and data.filenames[0] == "000001.jpg"
    assert data.attr_names == list(CELEBA_ATTRIBUTES)
    assert data.attr.shape == (N, 40) and data.attr.dtype == torch.long
    assert torch.equal(data.attr, torch.from_numpy((attribute_values(N) > 0).astype(np.int64)))
    image, target = data[3]
    assert isinstance(image, Image.Image) and image.mode == "RGB" and image.size == (64, 64)
    assert torch.equal(target, data.attr[3])
    assert torch.equal(data.identity, torch.arange(N) // 2 + 1)


def test_celeba_root_may_be_the_celeba_folder_itself(celeba_root):
    assert CelebA(celeba_root / "celeba", split="all").filenames == CelebA(celeba_root, split="all").filenames


def test_celeba_splits_follow_the_partition_file(celeba_root):
    splits = {name: CelebA(celeba_root, split=name).filenames for name in ("train", "valid", "test")}
    assert [len(files) for files in splits.values()] == [5, 2, 1]
    assert sorted(sum(splits.values(), [])) == CelebA(celeba_root, split="all").filenames
    assert splits["test"] == ["000008.jpg"]


def test_celeba_attributes_by_name_in_the_order_given(celeba_root):
    data = CelebA(celeba_root, split="all", attributes=["Wearing_Hat", "Eyeglasses"])
    assert data.attr_names == ["Wearing_Hat", "Eyeglasses"]
    assert data.attr[:, 0].tolist() == [int(i % 3 == 1) for i in range(N)]
    assert data.attr[:, 1].tolist() == [i % 2 for i in range(N)]


def test_celeba_unknown_attribute_lists_close_matches(celeba_root):
    with pytest.raises(ValueError, match="Eyeglass.*did you mean 'Eyeglasses'"):
        CelebA(celeba_root, attributes=["Smiling", "Eyeglass"])


def test_celeba_target_types_like_torchvision(celeba_root):
    data = CelebA(celeba_root, split="all", target_type=["identity", "bbox", "landmarks", "landmarks68", "attr"])
    identity, bbox, landmarks, points, attr = data[2][1]
    assert identity.item() == 2 and bbox.tolist() == [3, 4, 62, 61]
    assert landmarks.shape == (10,) and landmarks.dtype == torch.long
    assert points.shape == (136,) and points.dtype == torch.float32
    assert torch.allclose(points.view(68, 2), torch.from_numpy(landmarks68(N, (64, 64))[2]).float())
    assert torch.equal(attr, data.attr[2])


def test_celeba_mask_and_facemask_targets(celeba_root):
    data = CelebA(celeba_root, split="all", target_type=["mask", "facemask"])
    mask, facemask = data[1][1]
    expected = combine(class_shapes(64, 64, 1))
    assert mask.dtype == torch.long and torch.equal(mask, torch.from_numpy(expected.astype(np.int64)))
    assert facemask.shape == (1, 64, 64) and facemask.dtype == torch.float32
    assert torch.equal(facemask[0].bool(), torch.from_numpy(face_hair_hat_mask(expected)))
    assert data.label_map_path(1).name == "1.png"


def test_celeba_transforms_are_applied(celeba_root):
    data = CelebA(celeba_root, split="all", transform=lambda im: im.size, target_transform=lambda t: t.sum())
    assert data[0] == ((64, 64), data.attr[0].sum())


def test_downscaled_images_load_unchanged_and_label_maps_follow(tmp_path):
    root = write_celeba(tmp_path, n=3, size=(89, 109), label_map_size=(178, 218))
    data = CelebA(root, split="all", target_type="mask")
    image, mask = data[2]
    on_disk = Image.open(root / "celeba" / "img_align_celeba" / "000003.jpg").convert("RGB")
    assert image.size == (89, 109) and np.array_equal(np.asarray(image), np.asarray(on_disk))
    assert mask.shape == (109, 89)
    assert torch.equal(mask, torch.from_numpy(combine(class_shapes(178, 218, 2))[1::2, 1::2].astype(np.int64)))


def test_annotation_parser_reads_200k_rows(tmp_path, capsys):
    import time

    names = [f"{i + 1:06d}.jpg" for i in range(202_599)]
    path = tmp_path / "list_landmarks_align_celeba.txt"
    path.write_text("\n".join([str(len(names)), "a b c d e f g h i j"] + [f"{n} 1 2 3 4 5 6 7 8 9 10" for n in names]))
    start = time.perf_counter()
    table = read_table(path, "celeba", counted=True, header=True)
    seconds = time.perf_counter() - start
    assert table.values.shape == (202_599, 10) and table.keys[-1] == "202599.jpg"
    assert table.values[-1].tolist() == list(range(1, 11))
    with capsys.disabled():                                  # speed is reported, never asserted
        print(f"\n[loaders] parsed 202,599 annotation rows in {seconds:.2f} s")


# --- face + hair + hat -----------------------------------------------------------------------------

def test_face_hair_hat_keeps_all_but_background_ears_earring_neck_necklace_cloth():
    labels = np.arange(19, dtype=np.uint8)
    excluded = {0} | {CELEBAMASK_LABELS[c] for c in ("l_ear", "r_ear", "ear_r", "neck", "neck_l", "cloth")}
    expected = np.array([v not in excluded for v in range(19)])
    assert np.array_equal(face_hair_hat_mask(labels), expected)
    assert torch.equal(face_hair_hat_mask(torch.from_numpy(labels)), torch.from_numpy(expected))
    assert {CELEBAMASK_LABELS[c] for c in ("skin", "hair", "hat", "eye_g", "l_lip")} <= set(np.flatnonzero(expected))


def test_face_parsing_predictions_are_relabelled_by_class_name():
    relabelled = from_face_parsing(np.arange(19, dtype=np.uint8))
    assert relabelled[0] == 0 and sorted(relabelled[1:]) == list(range(1, 19))
    for value, name in enumerate(FACE_PARSING_CLASSES, start=1):
        assert relabelled[value] == CELEBAMASK_LABELS[name]


# --- CelebAMask-HQ ---------------------------------------------------------------------------------

def test_per_class_pngs_and_combined_label_maps_give_the_same_label_map(tmp_path):
    per_class = CelebAMaskHQ(write_celebamask_hq(tmp_path / "a", per_class=True), target_type="mask")
    combined = CelebAMaskHQ(write_celebamask_hq(tmp_path / "b", per_class=False, combined=True), target_type="mask")
    assert not per_class.combined and combined.combined
    for k in range(len(per_class)):
        expected = combine(class_shapes(16, 16, k))
        assert np.array_equal(per_class.label_map(k), expected) and np.array_equal(combined.label_map(k), expected)
        image, mask = per_class[k]
        assert image.size == (32, 32) and mask.shape == (32, 32)  # 16 -> 32 like the real 512 -> 1024
        assert torch.equal(mask, torch.from_numpy(np.kron(expected, np.ones((2, 2), np.uint8)).astype(np.int64)))
        assert torch.equal(mask, combined[k][1])


def test_later_classes_overwrite_earlier_ones_as_g_mask_does(tmp_path):
    skin, hair = np.full((4, 4), 255, np.uint8), np.zeros((4, 4), np.uint8)
    hair[:2] = 255
    Image.fromarray(skin).save(tmp_path / "00000_skin.png")
    Image.fromarray(np.stack([hair] * 3, axis=-1)).save(tmp_path / "00000_hair.png")  # RGB masks exist too
    labels = combine_class_masks({"hair": tmp_path / "00000_hair.png", "skin": tmp_path / "00000_skin.png"})
    assert (labels[:2] == CELEBAMASK_LABELS["hair"]).all() and (labels[2:] == CELEBAMASK_LABELS["skin"]).all()


def test_celebamask_attributes_facemask_and_split(tmp_path):
    write_celeba(tmp_path, n=N)
    root = write_celebamask_hq(tmp_path, n=N)
    data = CelebAMaskHQ(root, target_type=["facemask", "attr"], attributes=["Eyeglasses"])
    facemask, attr = data[1][1]
    assert facemask.shape == (1, 32, 32) and attr.tolist() == [int(attribute_values(N, seed=1)[1, 15] > 0)]
    assert CelebAMaskHQ(root, split="valid").filenames == ["5.jpg", "6.jpg"]


# --- JAFFE -----------------------------------------------------------------------------------------

def test_jaffe_file_names_parse():
    sample = parse_jaffe_name(Path("KA.HA1.29.tiff"))
    assert (sample.subject, sample.expression, sample.take, sample.number) == ("KA", "HA", 1, 29)
    assert parse_jaffe_name(Path("AP.SU3.213.tif")).subject == "AP"  # subjects beyond JAFFE's ten
    for bad in ("KA.XX1.29.tiff", "KA_HA1_29.tiff", "KA.HA.29.tiff", "KA.HA1.29.png"):
        assert parse_jaffe_name(Path(bad)) is None


def test_jaffe_reads_grayscale_images_with_expression_targets(jaffe_root):
    data = JAFFE(jaffe_root)
    assert len(data) == 5 * 3 * 2 and data.subjects == ("KA", "KL", "KM", "NA", "YM")
    assert data.expressions == ("AN", "DI", "FE", "HA", "NE", "SA", "SU")
    image, expression = data[0]
    assert image.mode == "L" and image.size == (32, 32) and data.expressions[expression] == "HA"


def test_jaffe_expression_subset_in_the_order_given(jaffe_root):
    data = JAFFE(jaffe_root / "jaffe", expressions=("NE", "HA"), target_type=["expression", "subject"])
    assert len(data) == 5 * 2 * 2
    for sample, (_, (expression, subject)) in zip(data.samples, data):
        assert ("NE", "HA")[expression] == sample.expression and data.subjects[subject] == sample.subject
    with pytest.raises(ValueError, match="'HAPPY'.*HA \\(happiness\\)"):
        JAFFE(jaffe_root, expressions=("HAPPY",))


def test_jaffe_splits_are_subject_disjoint_and_seeded(jaffe_root):
    train, test = JAFFE(jaffe_root, split="train", seed=3), JAFFE(jaffe_root, split="test", seed=3)
    assert set(train.subjects).isdisjoint(test.subjects) and len(test.subjects) == 2  # round(0.3 * 5)
    assert len(train) + len(test) == len(JAFFE(jaffe_root))
    assert JAFFE(jaffe_root, split="test", seed=3).subjects == test.subjects
    assert {JAFFE(jaffe_root, split="test", seed=s).subjects for s in range(6)} != {test.subjects}
    assert JAFFE(jaffe_root, split="test", expressions=["SU"], seed=3).subjects == test.subjects
    assert JAFFE(jaffe_root, split="test", test_subjects=["KL", "YM"]).subjects == ("KL", "YM")
    assert split_subjects(JAFFE_SUBJECTS, 1, seed=0) != [] and len(split_subjects(["KA", "KL"], 0.9, 0)) == 1


def test_jaffe_badly_named_tiffs_are_skipped_with_a_warning(jaffe_root, tmp_path):
    shutil.copytree(jaffe_root, tmp_path, dirs_exist_ok=True)
    shutil.copy(tmp_path / "jaffe" / "KA.HA1.1.tiff", tmp_path / "jaffe" / "KA-happy.tiff")
    with pytest.warns(UserWarning, match="KA-happy.tiff"):
        assert len(JAFFE(tmp_path)) == len(JAFFE(jaffe_root))


# --- SynthFaces is read by the same loaders --------------------------------------------------------

def test_synthfaces_tree_loads_with_every_loader(tmp_path):
    from faceedu.data.synthfaces import SynthConfig, generate

    generate(tmp_path, SynthConfig(n=12, hq=3, jaffe_subjects=2, jaffe_repeats=1, workers=1), verbose=False)
    celeba = CelebA(tmp_path, split="all", target_type=["attr", "identity", "landmarks", "landmarks68", "bbox",
                                                        "mask", "facemask"], check=True)
    image, (attr, _, _, points, _, mask, facemask) = celeba[0]
    assert len(celeba) == 12 and mask.shape == facemask.shape[1:] == image.size[::-1] and points.shape == (136,)
    hq = CelebAMaskHQ(tmp_path, target_type="mask", check=True)
    assert torch.equal(hq[0][1], celeba[0][1][5])
    assert len(JAFFE(tmp_path)) == 2 * 7


# --- bad input: every error names the file and says what to do -------------------------------------

@pytest.mark.parametrize("loader", [CelebA, CelebAMaskHQ, JAFFE])
def test_missing_root(loader, tmp_path):
    with pytest.raises(DatasetError) as error:
        loader(tmp_path / "nowhere")
    assert_helpful(error, "nowhere", "does not exist")


def test_root_pointing_at_the_image_folder(celeba_root):
    with pytest.raises(DatasetError) as error:
        CelebA(celeba_root / "celeba" / "img_align_celeba")
    assert_helpful(error, "img_align_celeba", f"pass {celeba_root} ")


def test_root_without_a_celeba_folder(tmp_path):
    (tmp_path / "photos").mkdir()
    with pytest.raises(DatasetError) as error:
        CelebA(tmp_path)
    assert_helpful(error, str(tmp_path), "No celeba/ folder")


def test_missing_image_folder(celeba_copy):
    shutil.rmtree(celeba_copy / "celeba" / "img_align_celeba")
    with pytest.raises(DatasetError) as error:
        CelebA(celeba_copy)
    assert_helpful(error, "Missing image folder img_align_celeba/")


@pytest.mark.parametrize("filename, kwargs", [
    ("list_attr_celeba.txt", {}),
    ("list_eval_partition.txt", {"split": "train"}),
    ("identity_CelebA.txt", {"target_type": "identity"}),
    ("list_landmarks_68.txt", {"target_type": "landmarks68"}),
])
def test_missing_annotation_file(celeba_copy, filename, kwargs):
    (celeba_copy / "celeba" / filename).unlink()
    with pytest.raises(DatasetError) as error:
        CelebA(celeba_copy, **kwargs)
    assert_helpful(error, f"Missing annotation file {filename}")


@pytest.mark.parametrize("line_number, new_line, expected", [
    (1, "two hundred", "line 1 should be the number of rows, found 'two hundred'"),
    (1, "9", "the count line says 9 rows but the file has 8"),
    (5, "000003.jpg -1 1", "line 5: expected a file name and 40 values, found 2"),
    (6, "000004.jpg" + " 1" * 39 + " x", "line 6: 'x' is not a whole number"),
    (7, "000005.jpg" + " 1" * 39 + " 0", "line 7: attribute values must be -1 or 1, found 0"),
])
def test_malformed_attribute_file_names_the_line(celeba_copy, line_number, new_line, expected):
    path = celeba_copy / "celeba" / "list_attr_celeba.txt"
    lines = path.read_text().splitlines()
    lines[line_number - 1] = new_line
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError) as error:
        CelebA(celeba_copy)
    assert_helpful(error, "list_attr_celeba.txt", expected)


def test_annotation_files_that_disagree(celeba_copy):
    path = celeba_copy / "celeba" / "list_eval_partition.txt"
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:-1]))
    with pytest.raises(DatasetError) as error:
        CelebA(celeba_copy, split="train")
    assert_helpful(error, "list_eval_partition.txt has no row for 000008.jpg")


@pytest.mark.parametrize("damage", ["truncated", "corrupt"])
def test_broken_image_is_named_when_loaded(celeba_copy, damage):
    path = celeba_copy / "celeba" / "img_align_celeba" / "000002.jpg"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"not a jpeg" * 50)
    dataset = CelebA(celeba_copy, split="all")
    dataset[0]
    with pytest.raises(DatasetError) as error:
        dataset[1]
    assert_helpful(error, "000002.jpg", "truncated or corrupt")


def test_listed_image_missing_on_disk_lazily_or_with_check(celeba_copy):
    (celeba_copy / "celeba" / "img_align_celeba" / "000004.jpg").unlink()
    dataset = CelebA(celeba_copy, split="all")
    with pytest.raises(DatasetError) as error:
        dataset[3]
    assert_helpful(error, "000004.jpg is listed in list_attr_celeba.txt but is missing on disk")
    with pytest.raises(DatasetError) as error:
        CelebA(celeba_copy, split="all", check=True)
    assert_helpful(error, "1 file(s) listed in list_attr_celeba.txt are missing from img_align_celeba/: 000004.jpg")


def test_label_map_missing(celeba_copy):
    (celeba_copy / "celeba" / "CelebAMask-HQ-mask" / "2.png").unlink()
    with pytest.raises(DatasetError) as error:
        CelebA(celeba_copy, split="all", target_type="mask")[2]
    assert_helpful(error, "Label map 2.png of image 000003.jpg is missing")
    shutil.rmtree(celeba_copy / "celeba" / "CelebAMask-HQ-mask")
    with pytest.raises(DatasetError) as error:
        CelebA(celeba_copy, split="all", target_type="facemask")
    assert_helpful(error, "needs label maps in CelebAMask-HQ-mask/")


def test_label_map_whose_shape_differs_from_its_image(celeba_copy):
    Image.fromarray(np.zeros((64, 80), np.uint8)).save(celeba_copy / "celeba" / "CelebAMask-HQ-mask" / "0.png")
    with pytest.raises(DatasetError) as error:
        CelebA(celeba_copy, split="all", target_type="mask")[0]
    assert_helpful(error, "Label map 0.png is 80x64 but its image 000001.jpg is 64x64")


def test_colour_picture_is_not_a_label_map(celeba_copy):
    Image.fromarray(np.full((64, 64, 3), 200, np.uint8)).save(celeba_copy / "celeba" / "CelebAMask-HQ-mask" / "0.png")
    with pytest.raises(DatasetError) as error:
        CelebA(celeba_copy, split="all", target_type="mask")[0]
    assert_helpful(error, "0.png is not a label map", "value 200")


def test_per_class_masks_of_different_sizes(tmp_path):
    root = write_celebamask_hq(tmp_path, n=2)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "CelebAMask-HQ/CelebAMask-HQ-mask-anno/0/00001_hair.png")
    with pytest.raises(DatasetError) as error:
        CelebAMaskHQ(root)[1]
    assert_helpful(error, "00001_hair.png is 8x8 but the other masks of its image are 16x16")


def test_celebamask_without_masks(tmp_path):
    root = write_celebamask_hq(tmp_path, n=3)
    for path in (root / "CelebAMask-HQ" / "CelebAMask-HQ-mask-anno" / "0").glob("00002_*.png"):
        path.unlink()
    with pytest.raises(DatasetError) as error:
        CelebAMaskHQ(root)[2]
    assert_helpful(error, "No mask PNGs for image 2.jpg", "00002_<class>.png")
    with pytest.raises(DatasetError) as error:
        CelebAMaskHQ(root, check=True)
    assert_helpful(error, "1 image(s) listed in CelebAMask-HQ-attribute-anno.txt have no mask PNGs")
    shutil.rmtree(root / "CelebAMask-HQ" / "CelebAMask-HQ-mask-anno")
    with pytest.raises(DatasetError) as error:
        CelebAMaskHQ(root)
    assert_helpful(error, "No masks in", "CelebAMask-HQ-mask-anno/")


def test_celebamask_split_needs_the_celeba_partition(tmp_path):
    root = write_celebamask_hq(tmp_path, n=2)
    with pytest.raises(DatasetError) as error:
        CelebAMaskHQ(root, split="train")
    assert_helpful(error, "list_eval_partition.txt", "missing")


def test_empty_celeba_split(celeba_copy):
    path = celeba_copy / "celeba" / "list_eval_partition.txt"
    path.write_text(path.read_text().replace(" 1\n", " 0\n"))
    with pytest.raises(DatasetError) as error:
        CelebA(celeba_copy, split="valid")
    assert_helpful(error, "Split 'valid' is empty", "list_eval_partition.txt")


def test_empty_jaffe_subset_and_folder(jaffe_root, tmp_path):
    with pytest.raises(DatasetError) as error:
        JAFFE(jaffe_root, expressions=("AN", "FE"))
    assert_helpful(error, "No JAFFE images with expressions AN, FE", "jaffe")
    (tmp_path / "jaffe").mkdir()
    with pytest.raises(DatasetError) as error:
        JAFFE(tmp_path)
    assert_helpful(error, "No JAFFE images (SUBJECT.EXPRn.NUMBER.tiff)")


def test_corrupt_jaffe_image(jaffe_root, tmp_path):
    shutil.copytree(jaffe_root, tmp_path, dirs_exist_ok=True)
    (tmp_path / "jaffe" / "KA.HA1.1.tiff").write_bytes(b"II*\x00" + b"\x00" * 20)
    with pytest.raises(DatasetError) as error:
        JAFFE(tmp_path)[0]
    assert_helpful(error, "KA.HA1.1.tiff", "truncated or corrupt")
