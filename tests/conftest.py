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
    import json
    import shutil

    from faceedu.data.synthfaces import dataset_fingerprint
    from faceedu.models.vae import preset
    from faceedu.train.loop import LoopConfig
    from faceedu.train.vae import default_steps, train_vae
    from training import reusable_run, summary_of, terminal_print, training_progress

    config, run = preset("quick"), trained_dir / "vae-quick"
    steps, fingerprint = default_steps(config), dataset_fingerprint(synth_root)

    def same(described: dict) -> bool:
        loop = described.get("loop", {})
        wanted = json.loads(json.dumps(config.to_dict()))             # as config.json holds it (tuples as lists)
        return (described.get("model") == "vae" and described.get("vae") == wanted and fingerprint
                and described.get("data_fingerprint") == fingerprint and loop.get("steps") == steps
                and loop.get("batch_size") == config.batch_size and loop.get("seed") == 0)

    found = reusable_run(REPO / "runs" / "vae-quick", same, steps)
    if found:
        shutil.copytree(found, run)
        terminal_print(pytestconfig, f"\n[vae] reusing {found} (same quick preset, same data; "
                                     f"FACEEDU_TEST_REUSE=0 trains afresh)")
        return {"run": run, "summary": summary_of(run) | {"reused": str(found)}}
    with training_progress(pytestconfig, "vae", run, steps):
        summary = train_vae(config, run, synth_root, loop=LoopConfig(progress=False, sample_every=500),
                            preset_name="quick")
    terminal_print(pytestconfig, f"[vae] quick preset trained in {summary['seconds']} s "
                                 f"({summary['images_per_s']} images/s)")
    return {"run": run, "summary": summary}


@pytest.fixture(scope="session")
def trained_cgan(trained_dir, synth_root, pytestconfig) -> dict:
    """Lesson 04's quick conditional DCGAN (Blond_Hair x Male), trained once per test run exactly as
    `faceedu train cgan` does it: {"run": run folder, "summary": the loop's summary}. A finished run of the
    same preset on the same data (the tour's runs/cgan-quick) is copied instead of training again."""
    import json
    import shutil

    from faceedu.data.synthfaces import dataset_fingerprint
    from faceedu.models.cgan import preset
    from faceedu.train.cgan import default_steps, train_cgan
    from faceedu.train.loop import LoopConfig
    from training import reusable_run, summary_of, terminal_print, training_progress

    config, run = preset("quick"), trained_dir / "cgan-quick"
    steps, fingerprint = default_steps(config), dataset_fingerprint(synth_root)

    def same(described: dict) -> bool:
        loop = described.get("loop", {})
        wanted = json.loads(json.dumps(config.to_dict()))
        return (described.get("model") == "cgan" and described.get("cgan") == wanted and fingerprint
                and described.get("data_fingerprint") == fingerprint and loop.get("steps") == steps
                and loop.get("seed") == 0)

    found = reusable_run(REPO / "runs" / "cgan-quick", same, steps)
    if found:
        shutil.copytree(found, run)
        terminal_print(pytestconfig, f"\n[cgan] reusing {found} (same quick preset, same data; FACEEDU_TEST_REUSE=0 trains afresh)")
        return {"run": run, "summary": summary_of(run)}
    with training_progress(pytestconfig, "cgan", run, steps):
        summary = train_cgan(config, run, synth_root, loop=LoopConfig(progress=False, sample_every=250),
                             preset_name="quick")
    terminal_print(pytestconfig, f"[cgan] quick preset trained in {summary['seconds']} s ({summary['images_per_s']} images/s)")
    return {"run": run, "summary": summary}


@pytest.fixture(scope="session")
def trained_cyclegan(trained_dir, synth_root, pytestconfig) -> dict:
    """Lesson 08's quick CycleGAN (SynthFaces-JAFFE, happy <-> neutral), trained once per test run exactly as
    `faceedu train cyclegan` does it: {"run": run folder, "summary": the loop's summary}. A finished run of the
    same preset on the same data (the tour's runs/cyclegan-quick) is copied instead of training again."""
    import json
    import shutil

    from faceedu.data.synthfaces import dataset_fingerprint
    from faceedu.models.cyclegan import preset
    from faceedu.train.cyclegan import train_cyclegan
    from faceedu.train.loop import LoopConfig
    from training import reusable_run, summary_of, terminal_print, training_progress

    config, run = preset("quick"), trained_dir / "cyclegan-quick"
    steps, fingerprint = config.steps, dataset_fingerprint(synth_root)

    def same(described: dict) -> bool:
        loop = described.get("loop", {})
        wanted = json.loads(json.dumps(config.to_dict()))
        return (described.get("model") == "cyclegan" and described.get("cyclegan") == wanted and fingerprint
                and described.get("data_fingerprint") == fingerprint and loop.get("steps") == steps
                and loop.get("seed") == 0)

    found = reusable_run(REPO / "runs" / "cyclegan-quick", same, steps)
    if found:
        shutil.copytree(found, run)
        terminal_print(pytestconfig, f"\n[cyclegan] reusing {found} (same quick preset, same data; FACEEDU_TEST_REUSE=0 trains afresh)")
        return {"run": run, "summary": summary_of(run)}
    with training_progress(pytestconfig, "cyclegan", run, steps):
        summary = train_cyclegan(config, run, synth_root, loop=LoopConfig(progress=False, sample_every=400),
                                 preset_name="quick")
    terminal_print(pytestconfig, f"[cyclegan] quick preset trained in {summary['seconds']} s "
                                 f"({summary['images_per_s']} image pairs/s)")
    return {"run": run, "summary": summary}


@pytest.fixture(scope="session")
def trained_fader(trained_dir, synth_root, pytestconfig) -> dict:
    """The quick Fader Network (Male, Eyeglasses, Smiling), trained once per test run exactly as `faceedu
    train fader` does it: {"run": run folder, "summary": the loop's summary (seconds, images/s)}. A finished
    run of the same preset on the same data (the tour's runs/fader-quick) is copied instead of training again."""
    import json
    import shutil

    from faceedu.data.synthfaces import dataset_fingerprint
    from faceedu.models.fader import preset
    from faceedu.train.fader import train_fader
    from faceedu.train.loop import LoopConfig
    from training import reusable_run, summary_of, terminal_print, training_progress

    config, run = preset("quick"), trained_dir / "fader-quick"
    fingerprint = dataset_fingerprint(synth_root)

    def same(described: dict) -> bool:
        loop = described.get("loop", {})
        wanted = json.loads(json.dumps(config.to_dict()))
        return (described.get("model") == "fader" and described.get("fader") == wanted and fingerprint
                and described.get("data_fingerprint") == fingerprint and loop.get("steps") == config.steps
                and loop.get("seed") == 0)

    found = reusable_run(REPO / "runs" / "fader-quick", same, config.steps)
    if found:
        shutil.copytree(found, run)
        terminal_print(pytestconfig, f"\n[fader] reusing {found} (same quick preset, same data; FACEEDU_TEST_REUSE=0 trains afresh)")
        return {"run": run, "summary": summary_of(run)}
    with training_progress(pytestconfig, "fader", run, config.steps):
        summary = train_fader(config, run, synth_root, loop=LoopConfig(progress=False, sample_every=500),
                              preset_name="quick")
    terminal_print(pytestconfig, f"[fader] quick preset trained in {summary['seconds']} s ({summary['images_per_s']} images/s)")
    return {"run": run, "summary": summary}
