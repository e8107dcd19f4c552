"""SynthFaces: a deterministic procedural face dataset written in the real CelebA, CelebAMask-HQ and
JAFFE file layouts, so every lesson runs offline and the real loaders are exercised every time.

Each face is drawn as anti-aliased polygons (rendered at 2x and averaged down) in a canonical face
frame, then placed by a random similarity transform (roll, scale, translation) plus a small yaw offset
of the inner features. Because the renderer knows what it drew, every image comes with ground truth:
CelebA attributes, a CelebAMask-HQ label map, 5 CelebA and 68 iBUG landmarks, and an identity.

Deliberate correlations (documented for the entanglement lessons, as Toledo & Antonelo observed in CelebA):
- beards (Mustache, Goatee) only on Male faces; Wearing_Lipstick and Wearing_Earrings almost only on
  female faces; Wearing_Necktie and Bald only on male faces;
- Eyeglasses: P = 0.45 with Blond_Hair, 0.08 without;
- Gray_Hair mostly on faces that are not Young; Smiling raises the chance of Mouth_Slightly_Open.
Identity fixes sex, age, skin tone, face geometry and natural hair colour; everything else varies per image.
"""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing as mp
import os
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np
from PIL import Image
from skimage.draw import polygon as fill_polygon

from faceedu.data.layout import (
    CELEBA_ATTRIBUTES,
    CELEBA_FILES,
    CELEBA_LANDMARKS,
    CELEBAMASK_CLASSES,
    CELEBAMASK_FILES,
    CELEBAMASK_LABELS,
    JAFFE_EXPRESSIONS,
    JAFFE_SUBJECTS,
)

FORMAT_VERSION = 1
SUPERSAMPLE = 2  # draw at 2x and average 2x2 blocks: anti-aliasing without a slow rasteriser
LABEL = CELEBAMASK_LABELS

# The CelebA attributes SynthFaces renders; the other CelebA columns are written as -1 (absent).
SYNTH_ATTRIBUTES: tuple[str, ...] = (
    "Arched_Eyebrows", "Bald", "Bangs", "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair",
    "Bushy_Eyebrows", "Eyeglasses", "Goatee", "Gray_Hair", "Male", "Mouth_Slightly_Open", "Mustache",
    "Narrow_Eyes", "No_Beard", "Pale_Skin", "Rosy_Cheeks", "Smiling", "Wearing_Earrings", "Wearing_Hat",
    "Wearing_Lipstick", "Wearing_Necktie", "Young",
)

HAIR_COLOURS = {  # RGB in [0, 1]; "Red" is the hair colour that is none of CelebA's four
    "Black_Hair": (0.09, 0.07, 0.07), "Brown_Hair": (0.42, 0.26, 0.13),
    "Blond_Hair": (0.95, 0.82, 0.45), "Gray_Hair": (0.72, 0.72, 0.74), "Red": (0.70, 0.27, 0.10),
}
SKIN_TONES = np.array([(0.96, 0.80, 0.69), (0.88, 0.68, 0.53), (0.77, 0.57, 0.42),
                       (0.58, 0.40, 0.27), (0.42, 0.28, 0.19)])
PALE_SKIN = np.array((1.0, 0.92, 0.87))


@dataclass(frozen=True)
class Expression:
    """Facial action parameters shared by CelebA-style attributes and JAFFE's seven expressions."""

    curve: float = 0.0       # mouth corners up (+, smile) or down (-)
    open: float = 0.0        # jaw drop, 0 closed .. 1 wide open
    width: float = 1.0       # mouth width factor
    brow_raise: float = 0.0  # whole brow up (+) or down (-)
    brow_inner: float = 0.0  # inner brow ends up (+, sad/fear) or down (-, anger)
    eye_open: float = 1.0    # eye opening factor


# CelebA's "Smiling" is a broad smile: a wide mouth with its corners well up and the eyes narrowed,
# visible at 64x64 (and on a VAE's reconstructions), as JAFFE's happy face.
SMILE = Expression(curve=2.0, width=1.4, eye_open=0.75)

EXPRESSIONS: dict[str, Expression] = {
    "NE": Expression(),
    "HA": replace(SMILE, open=0.35),
    "SA": Expression(curve=-0.8, width=0.95, brow_inner=0.9, eye_open=0.85),
    "AN": Expression(curve=-0.3, width=0.85, brow_raise=-0.5, brow_inner=-1.0, eye_open=1.1),
    "SU": Expression(open=1.0, width=0.8, brow_raise=1.0, eye_open=1.45),
    "FE": Expression(curve=-0.4, open=0.55, width=1.1, brow_raise=0.6, brow_inner=0.7, eye_open=1.3),
    "DI": Expression(curve=-0.6, open=0.15, width=0.95, brow_raise=-0.3, brow_inner=-0.5, eye_open=0.7),
}
assert set(EXPRESSIONS) == set(JAFFE_EXPRESSIONS)


@dataclass(frozen=True)
class SynthConfig:
    """What to generate. Defaults: 30,000 faces at 64x64 (the quick presets train in minutes)."""

    n: int = 30_000              # CelebA-layout images
    size: int = 64               # image side (square; the real CelebA is 178x218 and is cropped by transforms)
    seed: int = 0
    images_per_identity: int = 20  # CelebA has ~20 images per identity
    hq: int = 500                # first `hq` faces also written as a CelebAMask-HQ tree (per-class PNGs)
    jaffe_subjects: int = 20     # JAFFE's 10 initials, then more
    jaffe_repeats: int = 3       # images per subject and expression (JAFFE has 3-4)
    jaffe_size: int = 128
    workers: int = 0             # processes; 0 = all cores
    jpeg_quality: int = 95

    def identities(self) -> int:
        return max(1, self.n // self.images_per_identity)


# --- identity and per-image attributes --------------------------------------------------------------

def _rng(seed: int, stream: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream, index])


@dataclass(frozen=True)
class Identity:
    male: bool
    young: bool
    pale: bool
    skin: tuple[float, float, float]
    hair: str              # natural hair colour, a key of HAIR_COLOURS
    long_hair: bool
    face_w: float          # face half-width (canonical units, image spans [-1, 1])
    face_h: float          # face half-height
    eye_gap: float         # half distance between eye centres
    eye_size: float
    nose_len: float
    mouth_w: float
    iris: tuple[float, float, float]


def make_identity(seed: int, identity: int) -> Identity:
    """The fixed traits of one person, drawn from its own seeded stream."""
    r = _rng(seed, 1, identity)
    male = r.random() < 0.45
    young = r.random() < 0.72
    pale = r.random() < 0.15
    skin = PALE_SKIN if pale else SKIN_TONES[r.integers(len(SKIN_TONES))] * r.uniform(0.95, 1.05, 3)
    if not young and r.random() < 0.6:
        hair = "Gray_Hair"
    else:
        hair = str(r.choice(["Black_Hair", "Brown_Hair", "Blond_Hair", "Red"], p=[0.38, 0.32, 0.2, 0.1]))
    iris = tuple(r.choice([(0.25, 0.15, 0.08), (0.15, 0.3, 0.55), (0.2, 0.35, 0.2), (0.1, 0.08, 0.06)]))
    return Identity(
        male=male, young=young, pale=pale, skin=tuple(np.clip(skin, 0, 1)), hair=hair,
        long_hair=(r.random() < 0.15) if male else (r.random() < 0.8),
        face_w=r.uniform(0.36, 0.44) * (1.06 if male else 1.0), face_h=r.uniform(0.50, 0.58),
        eye_gap=r.uniform(0.16, 0.2), eye_size=r.uniform(0.9, 1.1), nose_len=r.uniform(0.85, 1.15),
        mouth_w=r.uniform(0.11, 0.14), iris=iris,
    )


def sample_attributes(r: np.random.Generator, who: Identity) -> dict[str, bool]:
    """Per-image attributes given the identity, with the correlations listed in the module docstring."""
    a = {"Male": who.male, "Young": who.young, "Pale_Skin": who.pale}
    a["Bald"] = who.male and r.random() < (0.05 if who.young else 0.3)
    hair = who.hair if r.random() < 0.85 else str(r.choice(list(HAIR_COLOURS)))
    for colour in ("Black_Hair", "Brown_Hair", "Blond_Hair", "Gray_Hair"):
        a[colour] = hair == colour and not a["Bald"]
    a["_hair"] = hair
    a["Smiling"] = r.random() < 0.48
    a["Mouth_Slightly_Open"] = r.random() < (0.6 if a["Smiling"] else 0.3)
    a["Eyeglasses"] = r.random() < (0.45 if a["Blond_Hair"] else 0.08)
    a["Wearing_Hat"] = r.random() < 0.1
    a["Bangs"] = not a["Bald"] and r.random() < 0.2
    a["Mustache"] = who.male and r.random() < 0.3
    a["Goatee"] = who.male and r.random() < 0.3
    a["No_Beard"] = not (a["Mustache"] or a["Goatee"])
    a["Wearing_Lipstick"] = r.random() < (0.02 if who.male else 0.55)
    a["Narrow_Eyes"] = r.random() < 0.12
    a["Arched_Eyebrows"] = r.random() < (0.1 if who.male else 0.4)
    a["Bushy_Eyebrows"] = not a["Arched_Eyebrows"] and r.random() < (0.3 if who.male else 0.08)
    a["Big_Nose"] = r.random() < 0.2
    a["Rosy_Cheeks"] = r.random() < 0.1
    a["Wearing_Earrings"] = not who.male and r.random() < 0.25
    a["Wearing_Necktie"] = who.male and r.random() < 0.2
    a["Blurry"] = r.random() < 0.05
    return a


# --- geometry: canonical face frame -> pixels --------------------------------------------------------

def _ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 32, t0: float = 0.0, t1: float = 2 * math.pi):
    t = np.linspace(t0, t1, n, endpoint=(t1 - t0) < 2 * math.pi)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)


def _stroke(points: np.ndarray, width: np.ndarray | float) -> np.ndarray:
    """A polyline thickened into a closed polygon (offset along the normals)."""
    d = np.gradient(points, axis=0)
    normal = np.stack([-d[:, 1], d[:, 0]], axis=1)
    normal /= np.linalg.norm(normal, axis=1, keepdims=True) + 1e-9
    w = np.broadcast_to(np.asarray(width, dtype=float), (len(points),))[:, None] / 2
    return np.concatenate([points + normal * w, (points - normal * w)[::-1]])


class Canvas:
    """A supersampled RGB image plus its label map, painted with polygons in canonical coordinates."""

    def __init__(self, size: int, background: np.ndarray, pose: np.ndarray):
        self.side = size * SUPERSAMPLE
        self.rgb = np.empty((self.side, self.side, 3), np.float32)
        self.rgb[:] = background
        self.label = np.zeros((self.side, self.side), np.uint8)
        self.pose = pose  # 2x3 affine: canonical -> supersampled pixels

    def to_pixels(self, pts: np.ndarray) -> np.ndarray:
        return pts @ self.pose[:, :2].T + self.pose[:, 2]

    def region(self, pts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        px = self.to_pixels(pts)
        return fill_polygon(px[:, 1], px[:, 0], (self.side, self.side))

    def paint(self, pts: np.ndarray, colour, label: str | None, alpha: float = 1.0) -> None:
        rr, cc = self.region(pts)
        colour = np.asarray(colour, np.float32)
        if alpha < 1.0:
            self.rgb[rr, cc] = (1 - alpha) * self.rgb[rr, cc] + alpha * colour
        else:
            self.rgb[rr, cc] = colour
        if label is not None:
            self.label[rr, cc] = LABEL[label]

    def paint_ring(self, outer: np.ndarray, hole: np.ndarray, colour, label: str) -> None:
        """Paint the area inside `outer` but outside `hole` (a spectacle rim)."""
        ring = np.zeros(self.label.shape, bool)
        ring[self.region(outer)] = True
        ring[self.region(hole)] = False
        self.rgb[ring] = np.asarray(colour, np.float32)
        self.label[ring] = LABEL[label]

    def finish(self, r: np.random.Generator, blurry: bool) -> tuple[np.ndarray, np.ndarray]:
        """Lighting gradient and noise, then 2x2 averaging to the output size."""
        s, k = self.side, SUPERSAMPLE
        angle, strength = r.uniform(0, 2 * math.pi), r.uniform(0.0, 0.25)
        ramp = np.linspace(-1, 1, s, dtype=np.float32)
        light = 1 + strength * (math.cos(angle) * ramp[None, :] + math.sin(angle) * ramp[:, None]) / 2
        rgb = self.rgb * light[..., None]
        rgb = rgb.reshape(s // k, k, s // k, k, 3).mean(axis=(1, 3))
        if blurry:
            from scipy.ndimage import gaussian_filter
            rgb = gaussian_filter(rgb, sigma=(1.2, 1.2, 0))
        rgb += r.normal(0, 0.015, rgb.shape).astype(np.float32)
        image = (np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8)
        return image, self.label[::k, ::k].copy()


def _pose(r: np.random.Generator, size: int, jitter: float, zoom: float) -> np.ndarray:
    roll = math.radians(r.uniform(-12, 12) * jitter)
    scale = zoom * r.uniform(0.92, 1.08) ** jitter
    tx, ty = r.uniform(-0.05, 0.05, 2) * jitter
    half = size * SUPERSAMPLE / 2
    c, s = math.cos(roll) * scale * half, math.sin(roll) * scale * half
    return np.array([[c, -s, half + tx * half], [s, c, half + ty * half]])


# --- the face ------------------------------------------------------------------------------------------

def _shade(colour, factor: float) -> np.ndarray:
    return np.clip(np.asarray(colour) * factor, 0, 1)


def draw_face(canvas: Canvas, r: np.random.Generator, who: Identity, a: dict, expr: Expression,
              yaw: float, grayscale_scene: bool = False) -> np.ndarray:
    """Paint one face (back to front) and return its 68 iBUG landmarks in canonical coordinates."""
    skin = np.asarray(who.skin)
    hair_rgb = np.asarray(HAIR_COLOURS[a["_hair"]]) * r.uniform(0.92, 1.05)
    fw, fh, fcy = who.face_w, who.face_h, 0.1
    inner = lambda pts, depth=0.6: pts + np.array([yaw * depth, 0.0])  # noqa: E731 - yaw shifts features

    # clothes, necktie, long hair behind, neck, ears, earrings
    cloth = np.array([[-0.95, 1.05], [-0.85, 0.82], [-0.3, 0.7], [0.3, 0.7], [0.85, 0.82], [0.95, 1.05]])
    canvas.paint(cloth, (0.5, 0.5, 0.5) if grayscale_scene else r.uniform(0.1, 0.9, 3), "cloth")
    if a["Wearing_Necktie"]:
        tie = np.array([[-0.04, 0.74], [0.04, 0.74], [0.07, 1.05], [-0.07, 1.05]])
        canvas.paint(tie, r.choice([(0.6, 0.05, 0.1), (0.05, 0.1, 0.45), (0.1, 0.1, 0.1)]), "cloth")
    if who.long_hair and not a["Bald"]:
        canvas.paint(_ellipse(0, fcy + 0.12, fw * 1.32, fh * 1.18), hair_rgb, "hair")
    canvas.paint(np.array([[-0.14, fcy + 0.3], [0.14, fcy + 0.3], [0.16, 0.82], [-0.16, 0.82]]),
                 _shade(skin, 0.85), "neck")
    for side, name in ((-1, "l_ear"), (1, "r_ear")):
        canvas.paint(_ellipse(side * fw * 0.98, fcy - 0.08, 0.06, 0.1, 16), _shade(skin, 0.93), name)
        if a["Wearing_Earrings"]:
            canvas.paint(_ellipse(side * fw * 0.98, fcy + 0.05, 0.025, 0.025, 12), (0.95, 0.78, 0.2), "ear_r")

    # face outline; iBUG 0-16 run along the jaw from the image-left ear level through the chin
    canvas.paint(_ellipse(0, fcy, fw, fh, 48), skin, "skin")
    jaw_t = np.linspace(math.pi, 0, 17)
    jaw = np.stack([fw * np.cos(jaw_t), fcy + fh * np.sin(jaw_t) * 0.98], axis=1)

    if not who.young:  # age lines on the forehead and beside the mouth
        for y in (-0.3, -0.26):
            line = np.stack([np.linspace(-0.16, 0.16, 8), y + 0.01 * np.cos(np.linspace(0, math.pi, 8))], 1)
            canvas.paint(_stroke(inner(line, 0.3), 0.014), _shade(skin, 0.7), "skin")
        for side in (-1, 1):
            fold = np.stack([side * np.linspace(0.1, 0.15, 6), np.linspace(0.2, 0.36, 6)], 1)
            canvas.paint(_stroke(inner(fold), 0.014), _shade(skin, 0.72), "skin")
            bag = np.stack([side * who.eye_gap + np.linspace(-0.06, 0.06, 6), 0.045 + 0.012 * np.sin(np.linspace(0, math.pi, 6))], 1)
            canvas.paint(_stroke(inner(bag), 0.012), _shade(skin, 0.75), "skin")
    if a["Rosy_Cheeks"]:
        for side in (-1, 1):
            canvas.paint(inner(_ellipse(side * 0.22, 0.17, 0.08, 0.05, 16)), (0.95, 0.45, 0.5), "skin", 0.45)

    # eyes 36-41 (image left) and 42-47 (image right): corners, two top points, two bottom points
    eye_w = 0.075 * who.eye_size
    eye_h = 0.042 * who.eye_size * expr.eye_open * (0.5 if a["Narrow_Eyes"] else 1.0)
    eye_y = -0.02
    eyes = []
    for cx, name in ((-who.eye_gap, "l_eye"), (who.eye_gap, "r_eye")):
        outline = inner(_ellipse(cx, eye_y, eye_w, eye_h, 24))
        canvas.paint(outline, (0.97, 0.97, 0.95), name)
        iris = inner(_ellipse(cx, eye_y, min(0.032, eye_h * 0.95 + 0.004), min(0.032, eye_h * 0.95), 16))
        canvas.paint(iris, who.iris, name)
        canvas.paint(inner(_ellipse(cx, eye_y, 0.012, min(0.012, eye_h * 0.5), 10)), (0.02, 0.02, 0.02), name)
        # iBUG order for both eyes: left corner, two top points, right corner, two bottom points
        t = np.array([math.pi, 1.25 * math.pi, 1.75 * math.pi, 0, 0.25 * math.pi, 0.75 * math.pi])
        eyes.append(np.stack([cx + eye_w * np.cos(t), eye_y + eye_h * np.sin(t)], 1))

    # eyebrows 17-21 (image left, outer to inner) and 22-26 (image right, inner to outer)
    brows = []
    thick = 0.045 if a["Bushy_Eyebrows"] else 0.026
    brow_rgb = _shade(hair_rgb, 0.55) if a["_hair"] not in ("Gray_Hair", "Blond_Hair") else _shade(hair_rgb, 0.75)
    for side, name in ((-1, "l_brow"), (1, "r_brow")):
        u = np.linspace(0, 1, 5)  # 0 inner .. 1 outer
        x = side * (0.06 + u * 0.22)
        y = eye_y - 0.1 - expr.brow_raise * 0.04 + (1 - u) * (-expr.brow_inner * 0.035)
        y = y - (0.05 if a["Arched_Eyebrows"] else 0.01) * np.sin(u * math.pi * 0.85)
        line = inner(np.stack([x, y], 1))
        canvas.paint(_stroke(line, thick * (1 - 0.35 * u)), brow_rgb, name)
        brows.append(line[::-1] if side < 0 else line)

    # nose: bridge 27-30 down the middle, base 31-35 from left to right
    nl = 0.17 * who.nose_len * (1.3 if a["Big_Nose"] else 1.0)
    nw = 0.05 * (1.4 if a["Big_Nose"] else 1.0)
    tip_y = 0.0 + nl
    nose_shape = np.array([[-0.015, -0.02], [0.015, -0.02], [nw * 0.6, tip_y - 0.03], [nw, tip_y + 0.01],
                           [0, tip_y + 0.025], [-nw, tip_y + 0.01], [-nw * 0.6, tip_y - 0.03]])
    canvas.paint(inner(nose_shape, 0.9), _shade(skin, 0.88), "nose")
    for side in (-1, 1):
        canvas.paint(inner(_ellipse(side * nw * 0.55, tip_y + 0.008, 0.014, 0.009, 10), 0.9),
                     _shade(skin, 0.5), "nose")
    bridge = np.stack([np.zeros(4), np.linspace(-0.01, tip_y, 4)], 1)
    base = np.stack([np.linspace(-nw, nw, 5), tip_y + 0.01 + 0.012 * np.cos(np.linspace(-1.2, 1.2, 5))], 1)

    # mouth: outer lip 48-59, inner lip 60-67, built from the expression's curve and opening
    mw = who.mouth_w * expr.width
    my = 0.33 + fcy * 0.1
    xs = np.linspace(-1, 1, 7)
    mid = my - expr.curve * 0.055 * xs ** 2 + expr.curve * 0.01
    gap = expr.open * 0.075 * (1 - xs ** 2)
    top_inner, bottom_inner = mid - gap * 0.3, mid + gap * 1.7
    bump = np.sqrt(1 - xs ** 2)
    top_outer = top_inner - 0.03 * bump + 0.008 * np.exp(-(xs * 4) ** 2)  # cupid's bow dip in the middle
    bottom_outer = bottom_inner + 0.038 * bump
    X = xs * mw
    lip_rgb = np.array((0.8, 0.08, 0.15)) if a["Wearing_Lipstick"] else _shade(skin * np.array([1.0, 0.75, 0.75]), 0.85)
    if a["Mustache"]:
        stache = np.stack([np.linspace(-mw * 1.15, mw * 1.15, 9), np.zeros(9)], 1)
        stache[:, 1] = my - 0.05 - 0.015 * np.cos(np.linspace(-1.5, 1.5, 9)) + 0.03 * (np.abs(stache[:, 0]) / mw) ** 2
        canvas.paint(inner(_stroke(stache, 0.05)), _shade(hair_rgb, 0.65), "skin")
    if a["Goatee"]:
        chin = np.concatenate([np.stack([X * 0.8, bottom_outer + 0.012], 1)[::-1],
                               _ellipse(0, fcy + fh * 0.86, mw * 0.8, 0.1, 12, 0, math.pi)])
        canvas.paint(inner(chin), _shade(hair_rgb, 0.65), "skin")
    outer_top = np.stack([X, top_outer], 1)
    outer_bottom = np.stack([X, bottom_outer], 1)
    inner_top = np.stack([X, top_inner], 1)
    inner_bottom = np.stack([X, bottom_inner], 1)
    canvas.paint(inner(np.concatenate([outer_top, inner_top[::-1]])), lip_rgb, "u_lip")
    canvas.paint(inner(np.concatenate([inner_bottom, outer_bottom[::-1]])), _shade(lip_rgb, 1.05), "l_lip")
    if expr.open > 0.05:
        canvas.paint(inner(np.concatenate([inner_top, inner_bottom[::-1]])), (0.3, 0.06, 0.07), "mouth")
        teeth = np.concatenate([inner_top[1:-1], (inner_top[1:-1] + np.array([0, 0.022 * expr.open + 0.006]))[::-1]])
        canvas.paint(inner(teeth), (0.95, 0.94, 0.9), "mouth")

    # hair on the head, bangs, glasses, hat (front-most)
    if not a["Bald"]:
        cap = _ellipse(0, fcy - 0.03, fw * 1.1, fh * 1.07, 40, math.pi, 2 * math.pi)
        hairline = -0.3 + 0.03 * (cap[:, 0] / fw) ** 2
        cap[:, 1] = np.minimum(cap[:, 1], hairline + 0.02)
        canvas.paint(cap, hair_rgb, "hair")
        if a["Bangs"]:
            xb = np.linspace(-fw * 0.95, fw * 0.95, 11)
            fringe_y = eye_y - 0.13 + 0.02 * (np.arange(11) % 2)
            bangs = np.concatenate([np.stack([xb, np.full(11, -0.32)], 1), np.stack([xb, fringe_y], 1)[::-1]])
            canvas.paint(bangs, _shade(hair_rgb, 0.95), "hair")
    if a["Eyeglasses"]:
        frame_rgb = (0.05, 0.05, 0.05) if r.random() < 0.6 else (0.55, 0.15, 0.1)
        for cx in (-who.eye_gap, who.eye_gap):
            lens = inner(_ellipse(cx, eye_y + 0.005, 0.082, 0.053, 28))
            canvas.paint(lens, (0.8, 0.85, 0.9), "eye_g", alpha=0.2)
            canvas.paint_ring(inner(_ellipse(cx, eye_y + 0.005, 0.1, 0.07, 28)), lens, frame_rgb, "eye_g")
        bridge_line = inner(np.array([[-who.eye_gap + 0.1, eye_y], [who.eye_gap - 0.1, eye_y]]))
        canvas.paint(_stroke(bridge_line, 0.02), frame_rgb, "eye_g")
    if a["Wearing_Hat"]:
        hat_rgb = r.uniform(0.05, 0.95, 3)
        crown = _ellipse(0, fcy - 0.12, fw * 1.05, fh * 0.98, 32, math.pi, 2 * math.pi)
        crown[:, 1] = np.minimum(crown[:, 1], -0.3)
        canvas.paint(crown, hat_rgb, "hat")
        canvas.paint(_ellipse(0, -0.31, fw * 1.45, 0.06, 32), _shade(hat_rgb, 0.8), "hat")

    mouth_outer = np.concatenate([outer_top, outer_bottom[-2:0:-1]])             # 48-59
    mouth_inner = np.concatenate([inner_top[[0, 2, 3, 4, 6]], inner_bottom[[4, 3, 2]]])  # 60-67
    return np.concatenate([
        jaw, brows[0], brows[1], inner(bridge, 0.9), inner(base, 0.9),
        inner(eyes[0]), inner(eyes[1]), inner(mouth_outer), inner(mouth_inner),
    ])


def render_face(size: int, seed: int, stream: int, index: int, who: Identity, attrs: dict | None = None,
                expression: str | None = None, jitter: float = 1.0, zoom: float = 1.12) -> dict:
    """Render one face. With `expression` (a JAFFE code) the scene is JAFFE-like: plain background,
    no accessories; otherwise CelebA-like attributes are sampled (or taken from `attrs`)."""
    r = _rng(seed, stream, index)
    if attrs is None:
        attrs = sample_attributes(r, who)
    if expression is None:
        expr = SMILE if attrs["Smiling"] else Expression()
        expr = replace(expr, open=0.4 if attrs["Mouth_Slightly_Open"] else 0.0)
        background = r.uniform(0.05, 0.95, 3)
    else:
        expr = EXPRESSIONS[expression]
        background = np.full(3, r.uniform(0.55, 0.75))
    pose = _pose(r, size, jitter, zoom)
    canvas = Canvas(size, background, pose)
    landmarks = draw_face(canvas, r, who, attrs, expr, yaw=r.uniform(-0.06, 0.06) * jitter,
                          grayscale_scene=expression is not None)
    image, label = canvas.finish(r, attrs.get("Blurry", False))
    px = canvas.to_pixels(landmarks)
    landmarks68 = (px + 0.5) / SUPERSAMPLE - 0.5  # supersampled pixel centres -> output pixel centres
    return {"image": image, "label": label, "landmarks68": landmarks68, "attrs": attrs}


# --- writing the dataset in the real layouts --------------------------------------------------------

def _assignments(config: SynthConfig) -> tuple[np.ndarray, np.ndarray]:
    """Identity of every image (each identity recurs ~images_per_identity times) and its split.
    Splits are identity-disjoint, 80/10/10, like CelebA's official partition."""
    r = _rng(config.seed, 0, 0)
    n_ids = config.identities()
    identity = r.permutation(np.arange(config.n) % n_ids) + 1
    id_split = np.zeros(n_ids + 1, np.int64)
    order = r.permutation(n_ids) + 1
    id_split[order[int(0.8 * n_ids):int(0.9 * n_ids)]] = 1
    id_split[order[int(0.9 * n_ids):]] = 2
    return identity, id_split[identity]


def _celeba_chunk(job: tuple[SynthConfig, str, list[tuple[int, int]]]) -> list[tuple[list[int], np.ndarray]]:
    """Worker: render and write a chunk of CelebA-layout images and label maps; return annotations."""
    config, root, items = job
    images, masks = Path(root) / CELEBA_FILES["images"], Path(root) / "CelebAMask-HQ-mask"
    rows = []
    for index, identity in items:
        face = render_face(config.size, config.seed, 2, index, make_identity(config.seed, identity))
        Image.fromarray(face["image"]).save(images / f"{index + 1:06d}.jpg", quality=config.jpeg_quality)
        Image.fromarray(face["label"]).save(masks / f"{index}.png", compress_level=1)
        values = [1 if face["attrs"].get(name, False) else -1 for name in CELEBA_ATTRIBUTES]
        rows.append((values, face["landmarks68"]))
    return rows


def _jaffe_chunk(job: tuple[SynthConfig, str, list[tuple[str, str, int, int]]]) -> None:
    config, root, items = job
    for subject, code, repeat, number in items:
        # JAFFE's posers are young women with dark hair: keep the identity's geometry, fix those traits
        who = make_identity(config.seed, 10_000_000 + sum(ord(c) * 256 ** i for i, c in enumerate(subject)))
        who = replace(who, male=False, young=True, hair="Black_Hair", long_hair=True)
        attrs = {name: False for name in SYNTH_ATTRIBUTES} | {"_hair": who.hair, "Young": True, "Pale_Skin": who.pale}
        face = render_face(config.jaffe_size, config.seed, 3, number, who, attrs, expression=code, jitter=0.4, zoom=1.35)
        gray = Image.fromarray(face["image"]).convert("L")
        gray.save(Path(root) / f"{subject}.{code}{repeat}.{number}.tiff")


def jaffe_subjects(count: int) -> list[str]:
    """JAFFE's ten subject initials, then further two-letter codes that do not clash with them."""
    extra = [a + b for a in "ABCDEFGHIJ" for b in "PQRSTUVWXZ"]
    return (list(JAFFE_SUBJECTS) + extra)[:count]


def _fmt(x: float) -> str:
    return str(int(round(x)))


def _write_celeba_annotations(celeba: Path, config: SynthConfig, identity: np.ndarray, split: np.ndarray,
                              rows: list[tuple[list[int], np.ndarray]]) -> None:
    n = config.n
    names = [f"{i + 1:06d}.jpg" for i in range(n)]
    attr_lines = [str(n), " ".join(CELEBA_ATTRIBUTES)]
    attr_lines += [f"{name} " + " ".join(f"{v:2d}" for v in values) for name, (values, _) in zip(names, rows)]
    five_header = " ".join(f"{p}_x {p}_y" for p in CELEBA_LANDMARKS)
    five, sixty_eight, boxes = [str(n), five_header], [str(n), " ".join(f"x{k} y{k}" for k in range(68))], []
    boxes = [str(n), "image_id x_1 y_1 width height"]
    for name, (_, lm) in zip(names, rows):
        points = [lm[36:42].mean(0), lm[42:48].mean(0), lm[30], lm[48], lm[54]]
        five.append(name + " " + " ".join(f"{_fmt(x)} {_fmt(y)}" for x, y in points))
        sixty_eight.append(name + " " + " ".join(f"{x:.1f} {y:.1f}" for x, y in lm))
        lo, hi = np.clip(lm.min(0), 0, config.size - 1), np.clip(lm.max(0), 0, config.size - 1)
        boxes.append(f"{name} {_fmt(lo[0])} {_fmt(lo[1])} {_fmt(hi[0] - lo[0] + 1)} {_fmt(hi[1] - lo[1] + 1)}")
    files = {
        CELEBA_FILES["attributes"]: attr_lines,
        CELEBA_FILES["partition"]: [f"{name} {s}" for name, s in zip(names, split)],
        CELEBA_FILES["identity"]: [f"{name} {i}" for name, i in zip(names, identity)],
        CELEBA_FILES["landmarks"]: five,
        CELEBA_FILES["bbox"]: boxes,
        CELEBA_FILES["landmarks68"]: sixty_eight,
    }
    for filename, lines in files.items():
        (celeba / filename).write_text("\n".join(lines) + "\n")


def _write_celebamask_hq(root: Path, celeba: Path, config: SynthConfig) -> None:
    """The first `hq` faces as a CelebAMask-HQ tree: images, per-class binary PNGs, attributes, mapping."""
    hq = root / "CelebAMask-HQ"
    count = min(config.hq, config.n)
    (hq / CELEBAMASK_FILES["images"]).mkdir(parents=True, exist_ok=True)
    attr_rows = (celeba / CELEBA_FILES["attributes"]).read_text().splitlines()[2:2 + count]
    mapping = ["idx orig_idx orig_file"]
    for k in range(count):
        original = f"{k + 1:06d}.jpg"
        (hq / CELEBAMASK_FILES["images"] / f"{k}.jpg").write_bytes((celeba / CELEBA_FILES["images"] / original).read_bytes())
        label = np.asarray(Image.open(celeba / "CelebAMask-HQ-mask" / f"{k}.png"))
        folder = hq / CELEBAMASK_FILES["mask_anno"] / str(k // 2000)
        folder.mkdir(parents=True, exist_ok=True)
        for value in np.unique(label[label > 0]):
            name = CELEBAMASK_CLASSES[value - 1]
            Image.fromarray(((label == value) * 255).astype(np.uint8)).save(folder / f"{k:05d}_{name}.png")
        mapping.append(f"{k} {k} {original}")
    attr_lines = [str(count), " ".join(CELEBA_ATTRIBUTES)]
    attr_lines += [f"{k}.jpg " + row.split(maxsplit=1)[1] for k, row in enumerate(attr_rows)]
    (hq / CELEBAMASK_FILES["attributes"]).write_text("\n".join(attr_lines) + "\n")
    (hq / CELEBAMASK_FILES["mapping"]).write_text("\n".join(mapping) + "\n")


def _chunks(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def generate(root: Path | str, config: SynthConfig = SynthConfig(), verbose: bool = True) -> dict:
    """Write SynthFaces under `root` (celeba/, CelebAMask-HQ/, jaffe/, synthfaces.json); return the summary.
    Same config, same bytes: images are seeded per index, so the worker count does not matter."""
    root = Path(root)
    celeba = root / "celeba"
    for folder in (celeba / CELEBA_FILES["images"], celeba / "CelebAMask-HQ-mask", root / "jaffe"):
        folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    identity, split = _assignments(config)
    items = list(zip(range(config.n), identity.tolist()))
    jaffe_items, number = [], 0
    for subject in jaffe_subjects(config.jaffe_subjects):
        for code in JAFFE_EXPRESSIONS:
            for repeat in range(1, config.jaffe_repeats + 1):
                number += 1
                jaffe_items.append((subject, code, repeat, number))
    workers = config.workers or os.cpu_count() or 1
    celeba_jobs = [(config, str(celeba), chunk) for chunk in _chunks(items, 250)]
    jaffe_jobs = [(config, str(root / "jaffe"), chunk) for chunk in _chunks(jaffe_items, 100)]
    rows: list = []
    if workers == 1:
        for job in celeba_jobs:
            rows += _celeba_chunk(job)
        for job in jaffe_jobs:
            _jaffe_chunk(job)
    else:
        with mp.get_context("spawn" if os.name == "nt" else "fork").Pool(workers) as pool:
            jaffe_done = pool.map_async(_jaffe_chunk, jaffe_jobs)
            for done, chunk_rows in enumerate(pool.imap(_celeba_chunk, celeba_jobs), 1):
                rows += chunk_rows
                if verbose and (done % 20 == 0 or done == len(celeba_jobs)):
                    rate = len(rows) / (time.perf_counter() - start)
                    print(f"\r  SynthFaces: {len(rows)}/{config.n} faces, {rate:,.0f} images/s", end="", flush=True)
            jaffe_done.get()
    _write_celeba_annotations(celeba, config, identity, split, rows)
    _write_celebamask_hq(root, celeba, config)
    seconds = time.perf_counter() - start
    summary = {
        "format_version": FORMAT_VERSION, "renderer": renderer_fingerprint(), "config": asdict(config), "images": config.n,
        "identities": config.identities(), "jaffe_images": len(jaffe_items),
        "splits": {name: int((split == code).sum()) for name, code in (("train", 0), ("valid", 1), ("test", 2))},
        "seconds": round(seconds, 2), "images_per_second": round((config.n + len(jaffe_items)) / seconds, 1),
    }
    (root / "synthfaces.json").write_text(json.dumps(summary, indent=2) + "\n")
    if verbose:
        print(f"\nSynthFaces: {config.n} faces + {len(jaffe_items)} JAFFE-style images in {seconds:.1f} s "
              f"({summary['images_per_second']:,.0f} images/s) -> {root}")
    return summary


def renderer_fingerprint() -> str:
    """sha256 of three rendered faces (pixels, labels, landmarks): changes whenever the renderer does."""
    digest = hashlib.sha256()
    for index in range(3):
        face = render_face(64, 0, 2, index, make_identity(0, index + 1))
        digest.update(face["image"].tobytes() + face["label"].tobytes())
        digest.update(np.round(face["landmarks68"], 3).tobytes())
    return digest.hexdigest()


def is_generated(root: Path | str, config: SynthConfig) -> bool:
    """True when `root` already holds SynthFaces made by this renderer with this config (workers aside)."""
    meta = Path(root) / "synthfaces.json"
    if not meta.is_file():
        return False
    saved = json.loads(meta.read_text())
    wanted = asdict(config) | {"workers": None}
    return (saved.get("renderer") == renderer_fingerprint() and saved.get("format_version") == FORMAT_VERSION
            and saved["config"] | {"workers": None} == wanted)


def ensure(root: Path | str, config: SynthConfig | None = None, verbose: bool = True) -> Path:
    """Generate SynthFaces under `root` unless it is already there with this config; return `root`.

    Without a config, SynthFaces already under `root` is taken as it is (any size and count, e.g. one
    made with `faceedu data synth --size 144`); one made by an older renderer is regenerated with its
    own config, and a missing one is generated with the defaults."""
    if config is None:
        meta = Path(root) / "synthfaces.json"
        saved = json.loads(meta.read_text()).get("config", {}) if meta.is_file() else {}
        known = {f.name for f in fields(SynthConfig)}
        config = SynthConfig(**{k: v for k, v in saved.items() if k in known})
    if not is_generated(root, config):
        generate(root, config, verbose=verbose)
    return Path(root)


def tree_checksum(root: Path | str) -> str:
    """sha256 over every file's relative path and bytes (synthfaces.json's timings excluded)."""
    digest = hashlib.sha256()
    root = Path(root)
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.name != "synthfaces.json"):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def dataset_fingerprint(root: Path | str) -> str | None:
    """sha256 of what identifies the SynthFaces under `root` (renderer, format and config, workers aside),
    read from its synthfaces.json; None where `root` holds other data. Runs record it, so that a finished
    run can be reused only on the very data it was trained on."""
    meta = Path(root) / "synthfaces.json"
    if not meta.is_file():
        return None
    saved = json.loads(meta.read_text())
    key = {"format_version": saved.get("format_version"), "renderer": saved.get("renderer"),
           "config": saved.get("config", {}) | {"workers": None}}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
