"""Shared, session-scoped test resources: one SynthFaces dataset (the default one the tour and the
notebooks use) generated at most once per machine, and one folder for models trained during the run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def synth_root() -> Path:
    """The default SynthFaces (30,000 faces at 64x64, seed 0) in datasets/synthfaces, as `make tour` makes it.
    Generated once (~80 s on 2 cores) and reused by every test and notebook; FACEEDU_DATA overrides the place."""
    from faceedu.data.synthfaces import SynthConfig, ensure

    root = Path(os.environ.get("FACEEDU_DATA", REPO / "datasets" / "synthfaces"))
    return ensure(root, SynthConfig(), verbose=False)


@pytest.fixture(scope="session")
def trained_dir(tmp_path_factory) -> Path:
    """Where session fixtures put the quick models they train, so each is trained once per run."""
    return tmp_path_factory.mktemp("trained")


@pytest.fixture(scope="session")
def trained_vae(trained_dir, synth_root, pytestconfig) -> dict:
    """The quick face VAE (with its mask decoder), trained once per test run exactly as `faceedu train vae`
    does it: {"run": run folder, "summary": the loop's summary (seconds, images/s)}. Any test that needs a
    trained VAE (evaluation, latent arithmetic) takes this fixture. A finished run of the same preset on the
    same data (the tour's runs/vae-quick) is copied instead of training again; a clean clone trains."""
    from faceedu.models.vae import preset
    from faceedu.train.vae import default_steps, train_vae
    from training import quick_model

    config = preset("quick")
    return quick_model(pytestconfig, "vae", config, trained_dir / "vae-quick", synth_root, default_steps(config),
                       train_vae, sample_every=500)


@pytest.fixture(scope="session")
def trained_cgan(trained_dir, synth_root, pytestconfig) -> dict:
    """Lesson 04's quick conditional DCGAN (Blond_Hair x Male), trained once per test run exactly as
    `faceedu train cgan` does it: {"run": run folder, "summary": the loop's summary}. A finished run of the
    same preset on the same data (the tour's runs/cgan-quick) is copied instead of training again."""
    from faceedu.models.cgan import preset
    from faceedu.train.cgan import default_steps, train_cgan
    from training import quick_model

    config = preset("quick")
    return quick_model(pytestconfig, "cgan", config, trained_dir / "cgan-quick", synth_root, default_steps(config),
                       train_cgan, sample_every=250)


@pytest.fixture(scope="session")
def trained_diat(trained_dir, synth_root, pytestconfig) -> dict:
    """Lesson 06's quick DIAT models (issue 16), trained once per test run as `faceedu train diat --preset
    quick` does it, sharing one pre-training: mouth opening and closing, glasses removal, and the mouth-opening
    model without the identity loss and without the perceptual regulariser; each evaluated on 300 test faces.
    {"results": {name: evaluate(...)}, "seconds": {name: s}, "run": folder}. (Male and Young are measured by
    the CLI for docs/diat.md: they do not fit the test run's training budget.) A finished suite of the same
    preset on the same data in runs/diat-suite (the docs' command) is copied and evaluated instead of trained
    again (FACEEDU_TEST_REUSE=0: always train)."""
    import shutil

    from training import REPO, reusable_run, training_progress

    from faceedu.data.synthfaces import dataset_fingerprint
    from faceedu.models.diat import DIATConfig, preset
    from faceedu.train.diat import QUICK_SUITE, train_suite

    run = trained_dir / "diat-quick"
    config = preset("quick")
    source, fingerprint = REPO / "runs" / "diat-suite", dataset_fingerprint(synth_root)

    def same(change):
        return lambda described: (described.get("data_fingerprint") == fingerprint
                                  and DIATConfig.from_dict(described.get("diat", {})) == preset("quick", **change))

    if all(reusable_run(source / name, same(change), config.steps) for name, change in QUICK_SUITE):
        shutil.copytree(source, run)
    with training_progress(pytestconfig, "diat", [run / name for name, _ in QUICK_SUITE], steps=config.steps):
        payload = train_suite(synth_root, run, verbose=False)
    return payload | {"run": run}


@pytest.fixture(scope="session")
def trained_cyclegan(trained_dir, synth_root, pytestconfig) -> dict:
    """Lesson 08's quick CycleGAN (SynthFaces-JAFFE, happy <-> neutral), trained once per test run exactly as
    `faceedu train cyclegan` does it: {"run": run folder, "summary": the loop's summary}. A finished run of the
    same preset on the same data (the tour's runs/cyclegan-quick) is copied instead of training again."""
    from faceedu.models.cyclegan import preset
    from faceedu.train.cyclegan import train_cyclegan
    from training import quick_model

    config = preset("quick")
    return quick_model(pytestconfig, "cyclegan", config, trained_dir / "cyclegan-quick", synth_root, config.steps,
                       train_cyclegan, sample_every=400, unit="image pairs/s")


@pytest.fixture(scope="session")
def trained_fader(trained_dir, synth_root, pytestconfig) -> dict:
    """The quick Fader Network (Male, Eyeglasses, Smiling), trained once per test run exactly as `faceedu
    train fader` does it: {"run": run folder, "summary": the loop's summary (seconds, images/s)}. A finished
    run of the same preset on the same data (the tour's runs/fader-quick) is copied instead of training again."""
    from faceedu.models.fader import preset
    from faceedu.train.fader import train_fader
    from training import quick_model

    config = preset("quick")
    return quick_model(pytestconfig, "fader", config, trained_dir / "fader-quick", synth_root, config.steps,
                       train_fader, sample_every=500)
