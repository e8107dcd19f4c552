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
def trained_vae(trained_dir, synth_root) -> dict:
    """The quick face VAE (with its mask decoder), trained once per test run exactly as `faceedu train vae`
    does it: {"run": run folder, "summary": the loop's summary (seconds, images/s)}. Any test that needs a
    trained VAE (evaluation, latent arithmetic) takes this fixture."""
    from faceedu.models.vae import preset
    from faceedu.train.loop import LoopConfig
    from faceedu.train.vae import train_vae

    run = trained_dir / "vae-quick"
    summary = train_vae(preset("quick"), run, synth_root, loop=LoopConfig(progress=False, sample_every=500),
                        preset_name="quick")
    print(f"\n[vae] quick preset trained in {summary['seconds']} s ({summary['images_per_s']} images/s)")
    return {"run": run, "summary": summary}
