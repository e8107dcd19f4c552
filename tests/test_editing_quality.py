"""Lesson 03's quality bars on the quick VAE that the session's `trained_vae` fixture trains once, refereed
by the shipped attribute judge: edits that work and keep the rest, the Blond_Hair -> Eyeglasses
entanglement before and after the fix; and `faceedu edit` / `faceedu latent` end to end."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from faceedu import editing
from faceedu.cli import main


# --- on the quick VAE trained once per session --------------------------------------------------------

# Lesson 03's quality bars (issue 5), refereed by the shipped attribute judge: an edit at some scale <= 2
# makes the judge see the attribute on >= 80% of the test faces that lack it, and at that scale the
# attributes it should not touch stay as they were on >= 90% of (face, attribute) pairs. "Should not touch"
# = not correlated with it in the labels (|phi| < editing.CORRELATED_PHI) and read reliably by the judge on
# this model's reconstructions (>= 90% accurate: Young, Male, Big_Nose... are near coin tosses on blurry
# reconstructions and flip under any edit). Per attribute the quick VAE does not reach 90% everywhere
# (a strong glasses edit blurs the face, so the judge's Blurry flips; hair colour edits change how it reads
# Bangs and hats, drawn in and on the hair): KEPT_EACH_BAR only guards against regressions, and the test
# prints every figure.
SCALES = (1.0, 1.5, 2.0)
SUCCESS_BAR = 0.80
KEPT_BAR = 0.90
KEPT_EACH_BAR = 0.50
HAIR = ("Black_Hair", "Blond_Hair", "Brown_Hair", "Gray_Hair")
FACES = 300


@pytest.fixture(scope="module")
def space(trained_vae, synth_root):
    return editing.LatentSpace.from_run(trained_vae["run"], synth_root)


@pytest.fixture(scope="module")
def judge():
    from faceedu.models.judges import load_judges

    return load_judges(kinds=["attributes"]).require("attributes")


@pytest.fixture(scope="module")
def test_split(space, synth_root):
    return editing.test_faces(synth_root, space.vae, limit=1000)


@pytest.fixture(scope="module")
def sweep(space, judge, test_split):
    """{scale: {attribute: row of editing.edit_table}} for the attributes the bars name."""
    images, labels, names = test_split
    return {scale: {r["attribute"]: r for r in editing.edit_table(space, judge, images, labels, names, scale=scale,
                                                                    attributes=["Eyeglasses", "Smiling", *HAIR],
                                                                    faces=FACES, modes=("plain",))}
            for scale in SCALES}


def first_working_scale(sweep, name):
    return next((scale for scale in SCALES if sweep[scale][name]["success"] >= SUCCESS_BAR), None)


def describe(row) -> str:
    worst = sorted(((v, k) for k, v in row["kept_each"].items() if k not in row["unreliable"]))[:2]
    return (f"{row['attribute']:<11} s={row['scale']:<4g} success {row['success']:6.1%} (ceiling {row['ceiling']:6.1%}), "
            f"kept {row['kept']:6.1%}, least kept " + ", ".join(f"{k} {v:.0%}" for v, k in worst))


def test_eyeglasses_smiling_and_a_hair_colour_meet_the_bars(sweep, capsys):
    with capsys.disabled():
        print("\n[latent] edits on test faces lacking the attribute, by scale:")
        for scale in SCALES:
            print("\n".join("  " + describe(row) for row in sweep[scale].values()))
    hair = [h for h in HAIR if first_working_scale(sweep, h) is not None]
    assert hair, "no hair colour reaches the success bar at a scale <= 2"
    for name in ("Eyeglasses", "Smiling", hair[0]):
        scale = first_working_scale(sweep, name)
        assert scale is not None, f"{name} never reaches {SUCCESS_BAR:.0%} success at a scale <= 2"
        row = sweep[scale][name]
        assert row["kept"] >= KEPT_BAR, describe(row)
        reliable = {k: v for k, v in row["kept_each"].items() if k not in row["unreliable"]}
        assert min(reliable.values()) >= KEPT_EACH_BAR, describe(row)


def test_fixing_blond_removes_the_glasses_it_brought(space, judge, test_split, capsys):
    images, labels, names = test_split
    result = editing.unwanted_change(space, judge, images, labels, names, scale=2.0, faces=FACES)
    with capsys.disabled():
        print("\n[latent] Blond_Hair -> Eyeglasses at s = 2: " + "; ".join(
            f"{mode} {r['unwanted']:.1%} glasses, {r['success']:.1%} blond" for mode, r in result.items() if mode != "judge_bias")
            + f"; the judge sees glasses on {result['judge_bias']['watch_on_reconstructions']:.1%} of real blond faces without")
    plain, fixed = result["plain"], result["conditional"]
    assert plain["unwanted"] >= 0.1                                  # the leak is there to be fixed
    assert fixed["unwanted"] <= 0.5 * plain["unwanted"]                # halved at least
    assert fixed["success"] >= 0.9 * plain["success"]                  # and blond is kept
    assert abs(result["projected"]["cosine_with_watch"]) < 1e-3


def test_edit_command_writes_the_edited_face(trained_vae, synth_root, tmp_path, capsys):
    run = trained_vae["run"]
    face = next((synth_root / "celeba" / "img_align_celeba").glob("*.jpg"))
    big = tmp_path / "celeba_sized.png"                                 # a CelebA-shaped 178x218 image
    Image.open(face).convert("RGB").resize((178, 178)).crop((0, -20, 178, 198)).save(big)
    out = tmp_path / "glasses.png"
    assert main(["edit", str(run), "--image", str(big), "--attr", "Eyeglasses", "--scale", "1.5", "--out", str(out)]) == 0
    assert Image.open(out).size == (space_size(run),) * 2 and "Eyeglasses +1.5" in capsys.readouterr().out  # one bare face
    both = tmp_path / "both.png"
    assert main(["edit", str(run), "--image", str(face), "--attr", "Blond_Hair", "--attr", "Smiling", "--scale", "2",
                 "--scale", "1", "--keep", "Eyeglasses", "--compare", "--out", str(both)]) == 0
    width, height = Image.open(both).size
    assert width > 3 * height - 10                                      # input | reconstruction | edit


def space_size(run) -> int:
    return json.loads((run / "config.json").read_text())["vae"]["image_size"]


def test_edit_command_explains_bad_input(trained_vae, synth_root, tmp_path):
    run, face = trained_vae["run"], next((synth_root / "celeba" / "img_align_celeba").glob("*.jpg"))
    broken = tmp_path / "face.jpg"
    broken.write_text("not an image")
    cases = [
        (["--image", str(broken), "--attr", "Eyeglasses"], "cannot read .*face.jpg as an image"),
        (["--image", str(tmp_path / "missing.png"), "--attr", "Eyeglasses"], "no such file"),
        (["--image", str(face), "--attr", "Eyeglases"], "unknown attribute 'Eyeglases'. Did you mean Eyeglasses"),
        (["--image", str(face), "--attr", "blond"], "Did you mean Blond_Hair"),
        (["--image", str(face), "--attr", "Smiling", "--attr", "Male", "--scale", "1", "--scale", "2", "--scale", "3"],
         "one --scale for all"),
    ]
    for args, message in cases:
        with pytest.raises(SystemExit, match=message):
            main(["edit", str(run), *args, "--out", str(tmp_path / "x.png")])
    with pytest.raises(SystemExit, match="not a run folder"):
        main(["edit", str(tmp_path), "--image", str(face), "--attr", "Smiling", "--out", str(tmp_path / "x.png")])


def test_latent_report_writes_the_table_and_figures(trained_vae, tmp_path, capsys):
    assert main(["latent", str(trained_vae["run"]), "--out", str(tmp_path), "--faces", "40", "--test-limit", "300"]) == 0
    summary = json.loads((tmp_path / "latent.json").read_text())
    assert {r["attribute"] for r in summary["table"]} >= {"Eyeglasses", "Smiling", "Blond_Hair", "Goatee"}
    assert len(summary["entanglement"]["plain vectors"]) == len(summary["judged"])
    table = (tmp_path / "table.md").read_text()
    assert table.startswith("| attribute |") and "Eyeglasses" in table
    for figure in ("entanglement.png", "spectra.png", "hair_colours.png", "beards.png", "interpolation.png"):
        assert (tmp_path / figure).stat().st_size > 10_000, figure
    assert "Blond_Hair +2 v (plain)" in capsys.readouterr().out
