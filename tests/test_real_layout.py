"""Every data command starts on CelebA folders as real downloads come (issue 10): only images, attributes
and partition (no identities, landmarks or label maps), or Kaggle's CSV copy. The decoded-data cache lives
under the user's cache directory, never in the dataset folder, and notices a changed folder."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from faceedu.data.celeba import CelebA
from faceedu.data.layout import DatasetError
from faceedu.data.tensors import CACHE_ENV, data_cache_dir, load_face_tensors
from realfixtures import expected_attributes, real_partition, write_real_celeba

N = 64


@pytest.fixture(scope="module")
def minimal_root(tmp_path_factory) -> Path:
    return write_real_celeba(tmp_path_factory.mktemp("celeba-minimal"), n=N)


@pytest.fixture(scope="module")
def kaggle_root(tmp_path_factory) -> Path:
    return write_real_celeba(tmp_path_factory.mktemp("celeba-kaggle"), n=N, kaggle=True)


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """A private decoded-data cache for the test (through the environment, as --cache-dir sets it)."""
    folder = tmp_path / "cache"
    monkeypatch.setenv(CACHE_ENV, str(folder))
    return folder


def tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under `root` with its size and modification time: what 'nothing was written' compares."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def read_only(root: Path) -> None:
    for path in [root, *root.rglob("*")]:
        mode = path.stat().st_mode
        path.chmod(mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def writable(root: Path) -> None:
    for path in [root, *root.rglob("*")]:
        path.chmod(path.stat().st_mode | stat.S_IWUSR)


# --- the loader on both layouts --------------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["minimal", "kaggle"])
def test_celeba_reads_both_real_layouts(layout, minimal_root, kaggle_root):
    root = minimal_root if layout == "minimal" else kaggle_root
    data = CelebA(root, split="all")
    assert len(data) == N and data.attr_names[0] == "5_o_Clock_Shadow" and len(data.attr_names) == 40
    assert np.array_equal(data.attr.numpy(), expected_attributes(N))
    codes = np.array(real_partition(N))
    for split, code in (("train", 0), ("valid", 1), ("test", 2)):
        assert CelebA(root, split=split).filenames == [f"{i + 1:06d}.jpg" for i in np.flatnonzero(codes == code)]
    image, attr = data[3]
    assert image.size == (178, 218) and attr.tolist() == expected_attributes(N)[3].tolist()
    assert not data.has_annotation("identity")


def test_kaggle_csv_boxes_and_landmarks(kaggle_root):
    data = CelebA(kaggle_root, split="all", target_type=["bbox", "landmarks"])
    _, (box, points) = data[2]
    assert box.tolist() == [97, 71, 226, 313] and points.tolist() == [42, 60, 82, 60, 60, 80, 45, 100, 75, 100]


def test_a_missing_optional_file_is_named_only_when_asked_for(minimal_root):
    data = CelebA(minimal_root, split="all")                     # no identity file: nothing asked, no error
    with pytest.raises(DatasetError, match="identity_CelebA.txt"):
        data.annotation("identity")
    with pytest.raises(DatasetError, match=r"list_landmarks_align_celeba.txt \(or Kaggle's list_landmarks_align"):
        CelebA(minimal_root, split="all", target_type="landmarks")


def test_missing_required_files_name_both_forms(tmp_path):
    root = write_real_celeba(tmp_path, n=8)
    (root / "celeba" / "list_eval_partition.txt").unlink()
    with pytest.raises(DatasetError, match=r"list_eval_partition.txt \(or Kaggle's list_eval_partition.csv\)"):
        CelebA(root, split="train")
    assert len(CelebA(root, split="all")) == 8               # "all" needs no partition


# --- load_face_tensors: identities and masks optional ---------------------------------------------------

@pytest.mark.parametrize("layout", ["minimal", "kaggle"])
def test_face_tensors_without_identities_or_masks(layout, minimal_root, kaggle_root, cache):
    root = minimal_root if layout == "minimal" else kaggle_root
    data = load_face_tensors(root, "train", size=64, masks=None)
    assert len(data) == 40 and data.images.shape == (40, 3, 64, 64) and data.images.dtype == torch.uint8
    assert data.identity is None and data.masks is None and not data.synthetic
    assert set(data[0]) == {"image", "attr"} and set(data.gather(torch.tensor([0, 1]))) == {"image", "attr"}
    assert data.images.float().std() > 10                    # decoded faces, not an empty buffer
    with pytest.raises(DatasetError, match="identity_CelebA.txt"):
        data.require_identity("the identity judge")


def test_asking_for_masks_says_how_to_make_them(minimal_root, cache):
    with pytest.raises(DatasetError) as error:
        load_face_tensors(minimal_root, "train", masks=True)
    message = str(error.value)
    assert "faceedu data masks --root ROOT --parser RUN" in message and "--no-mask" in message
    assert "CelebAMask-HQ-mask" in message


def test_asking_for_identities_names_the_file(minimal_root, cache):
    with pytest.raises(DatasetError, match="identity_CelebA.txt"):
        load_face_tensors(minimal_root, "train", masks=False, identities=True)


def test_synthfaces_still_gives_identities_and_masks(synth_root, cache):
    data = load_face_tensors(synth_root, "test", limit=16)
    assert data.identity is not None and data.masks is not None and data.synthetic
    assert set(data[0]) == {"image", "attr", "identity", "mask"}
    assert load_face_tensors(synth_root, "test", masks=False, identities=False, limit=4).identity is None


# --- the cache ------------------------------------------------------------------------------------------

def test_masks_added_to_cached_images_match_a_fresh_decode(synth_root, cache):
    """Images cached without masks, then masks asked for: only the label maps are read, and the result is
    what decoding both at once gives; a longer `limit` than cached decodes again."""
    images_only = load_face_tensors(synth_root, "valid", masks=False, limit=24)
    both = load_face_tensors(synth_root, "valid", masks=True, limit=24)
    fresh = load_face_tensors(synth_root, "valid", masks=True, limit=24, cache=False)
    assert torch.equal(images_only.images, fresh.images) and torch.equal(both.masks, fresh.masks)
    assert 0.1 < float(both.masks.float().mean()) < 0.9
    longer = load_face_tensors(synth_root, "valid", masks=True, limit=40)
    assert len(longer) == 40 and torch.equal(longer.images[:24], fresh.images)


def test_cache_lives_outside_a_read_only_dataset_and_is_reused(tmp_path, cache):
    root = write_real_celeba(tmp_path / "data", n=16)
    before = tree(root)
    read_only(root)
    try:
        first = load_face_tensors(root, "train", masks=None)
        files = sorted(cache.rglob("*.pt"))
        assert [f.name.startswith("train-64-center-images-") for f in files] == [True]
        assert (files[0].parent / "source.txt").read_text().strip() == str((root / "celeba").resolve())
        written = files[0].stat().st_mtime_ns
        again = load_face_tensors(root, "train", masks=None)
        assert torch.equal(first.images, again.images) and sorted(cache.rglob("*.pt")) == files
        assert files[0].stat().st_mtime_ns == written                 # read back, not decoded and written again
    finally:
        writable(root)
    assert tree(root) == before, "something was written into the dataset folder"


def test_cache_notices_a_changed_folder(tmp_path, cache):
    root = write_real_celeba(tmp_path / "data", n=16)
    first = load_face_tensors(root, "train", masks=None)
    [old] = cache.rglob("train-*.pt")
    # the same images, another split: the partition file changes, the cached split must not be reused
    partition = root / "celeba" / "list_eval_partition.txt"
    partition.write_text("".join(f"{i + 1:06d}.jpg {0 if i < 12 else 2}\n" for i in range(16)))
    second = load_face_tensors(root, "train", masks=None)
    assert len(first) == 10 and len(second) == 12
    [new] = cache.rglob("train-*.pt")
    assert new != old and not old.exists()                    # the stale file is replaced, not kept
    # an image rewritten in place (the folder's own time unchanged): the sampled files' fingerprint changes
    image = root / "celeba" / "img_align_celeba" / "000001.jpg"
    folder_time = image.parent.stat().st_mtime_ns
    from PIL import Image

    Image.new("RGB", (178, 218), (255, 0, 0)).save(image)
    os.utime(image, ns=(image.stat().st_atime_ns, image.stat().st_mtime_ns + 10**9))   # coarse clocks: 1 s later
    assert image.parent.stat().st_mtime_ns == folder_time
    third = load_face_tensors(root, "train", masks=None)
    assert not torch.equal(third.images[0], second.images[0])
    assert third.images[0, 0].float().mean() > 240 and third.images[0, 2].float().mean() < 15


def test_caches_of_removed_folders_are_pruned(tmp_path, cache):
    import shutil

    gone, kept = write_real_celeba(tmp_path / "gone", n=8), write_real_celeba(tmp_path / "kept", n=8)
    load_face_tensors(gone, "train", masks=None)
    shutil.rmtree(gone)
    load_face_tensors(kept, "train", masks=None)               # writing a cache file prunes the others' dead ones
    assert [p.read_text().strip() for p in cache.glob("*/source.txt")] == [str((kept / "celeba").resolve())]


def test_same_folder_by_another_path_shares_the_cache(tmp_path, cache, monkeypatch):
    root = write_real_celeba(tmp_path / "data", n=16)
    load_face_tensors(root, "test", masks=None)
    monkeypatch.chdir(tmp_path)
    load_face_tensors(Path("data") / "celeba", "test", masks=None)     # relative, and the celeba/ folder itself
    assert len(list(cache.rglob("*.pt"))) == 1


def test_cache_directory_default_and_overrides(tmp_path, monkeypatch):
    monkeypatch.delenv(CACHE_ENV, raising=False)
    monkeypatch.delenv("FACEEDU_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data_cache_dir() == tmp_path / "xdg" / "faceedu" / "data"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data_cache_dir() == tmp_path / "home" / ".cache" / "faceedu" / "data"
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "env"))
    assert data_cache_dir() == tmp_path / "env"
    assert data_cache_dir(tmp_path / "flag") == tmp_path / "flag"


# --- the commands, end to end, on both layouts -----------------------------------------------------------

def _train(root: Path, run: Path, cache_dir: Path, extra: list[str] = ()) -> int:
    from faceedu.cli import main

    return main(["train", "vae", "--data", "celeba", "--root", str(root), "--run", str(run), "--steps", "3",
                 "--batch-size", "8", "--no-progress", "--sample-every", "0", "--cache-dir", str(cache_dir), *extra])


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """The runs trained in this module, one per layout, each trained at most once (see `trained_run`)."""
    return {}


@pytest.fixture(params=["minimal", "kaggle"])
def real_run(request, runs, tmp_path_factory) -> dict:
    return runs.get(request.param) or runs.setdefault(request.param, trained_run(request.param, tmp_path_factory))


@pytest.fixture
def minimal_run(runs, tmp_path_factory) -> dict:
    return runs.get("minimal") or runs.setdefault("minimal", trained_run("minimal", tmp_path_factory))


def trained_run(layout: str, tmp_path_factory) -> dict:
    """`faceedu train vae --no-mask` for 3 steps on one real layout, from another directory with a relative
    --root (the run must store it absolute), the dataset folder read-only."""
    base = tmp_path_factory.mktemp(f"real-{layout}")
    root = write_real_celeba(base / "data", n=N, kaggle=layout == "kaggle")
    before, env = tree(root), os.environ.get(CACHE_ENV)
    cwd = os.getcwd()
    read_only(root)
    try:
        os.chdir(base)
        assert _train(Path("data"), Path("run"), base / "cache", ["--no-mask"]) == 0
    finally:
        os.chdir(cwd)
        writable(root)
    assert tree(root) == before and os.environ.get(CACHE_ENV) == env   # --cache-dir leaves the environment as it was
    return {"root": root, "run": base / "run", "cache": base / "cache", "base": base}


def test_train_stores_the_root_absolute_and_caches_outside(real_run):
    described = json.loads((real_run["run"] / "config.json").read_text())
    assert described["data"] == str(real_run["root"].resolve()) and not described["vae"]["use_mask"]
    assert any(real_run["cache"].rglob("train-64-center-images-*.pt"))


def test_train_with_masks_explains_how_to_make_them(real_run, tmp_path):
    with pytest.raises(SystemExit, match="faceedu train: No face masks(.|\n)*faceedu data masks(.|\n)*--no-mask"):
        _train(real_run["root"], tmp_path / "masked", real_run["cache"])              # a message, not a traceback


def test_eval_runs_from_anywhere_and_keeps_one_folder_per_split(real_run, tmp_path, monkeypatch, capsys):
    from faceedu.cli import main

    monkeypatch.chdir(tmp_path)
    run = real_run["run"]
    assert main(["eval", str(run), "--cache-dir", str(real_run["cache"])]) == 0
    assert main(["eval", str(run), "--split", "train", "--cache-dir", str(real_run["cache"])]) == 0
    printed = capsys.readouterr().out
    assert "no label maps" in printed and "SSIM" in printed
    test, train = (json.loads((run / "eval" / s / "eval.json").read_text()) for s in ("test", "train"))
    assert (test["split"], test["images"], train["split"], train["images"]) == ("test", 16, "train", 40)
    assert "masked_ssim" not in test and 0 < test["ssim"] <= 1 and not test["true_masks"]
    assert (run / "eval" / "test" / "reconstructions.png").stat().st_size > 3000


def test_latent_runs(minimal_run, tmp_path, monkeypatch):
    """The latent report (the same data path on both layouts: the loader tests show they give the same
    faces; one layout keeps the test short, the report makes ~300 small decoder calls)."""
    from faceedu.cli import main

    monkeypatch.setenv(CACHE_ENV, str(minimal_run["cache"]))
    monkeypatch.chdir(tmp_path)
    assert main(["latent", str(minimal_run["run"]), "--faces", "16", "--out", str(tmp_path / "latent")]) == 0
    summary = json.loads((tmp_path / "latent" / "latent.json").read_text())
    assert summary["train_faces"] == 40 and summary["data"] == str(minimal_run["root"].resolve())
    assert summary["table"] and (tmp_path / "latent" / "spectra.png").stat().st_size > 3000


def test_edit_runs(real_run, tmp_path, monkeypatch, capsys):
    from faceedu.cli import main

    monkeypatch.setenv(CACHE_ENV, str(real_run["cache"]))
    monkeypatch.chdir(tmp_path)
    run = real_run["run"]
    image = next((real_run["root"] / "celeba").rglob("000007.jpg"))
    out = tmp_path / "edited.png"
    assert main(["edit", str(run), "--image", str(image), "--attr", "Eyeglasses", "--scale", "2", "--out", str(out),
                 "--compare"]) == 0
    from PIL import Image

    with Image.open(out) as edited:
        assert edited.width > 2 * edited.height                  # input | reconstruction | edit
    assert "Wrote" in capsys.readouterr().out


@pytest.mark.parametrize("model", ["cgan", "fader"])
def test_the_generative_models_train_on_celeba_with_only_images_attributes_and_partition(model, tmp_path):
    """Lessons 04 and 05 run unchanged on a real-layout CelebA without identities or label maps."""
    from faceedu.cli import main
    from faceedu.train.loop import CHECKPOINT

    root = tmp_path / "data"
    write_real_celeba(root, n=64)
    run = tmp_path / model
    assert main(["train", model, "--data", "celeba", "--root", str(root), "--run", str(run), "--steps", "2",
                 "--batch-size", "8", "--no-progress"]) == 0
    assert (run / CHECKPOINT).is_file()
