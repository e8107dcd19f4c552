"""Shared, session-scoped test resources: one SynthFaces dataset (the default one the tour and the
notebooks use) generated at most once per machine, and one folder for models trained during the run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CYCLEGAN_SAMPLE_EVERY = 400      # the quick CycleGAN's sample grids, in the test process and in its background child


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


def reusable_diat_suite(synth_root: Path) -> Path | None:
    """runs/diat-suite (the docs' command) when it holds every model of the quick suite, finished, of the same
    preset on the same data; else None."""
    from training import reusable_run

    from faceedu.data.synthfaces import dataset_fingerprint
    from faceedu.models.diat import DIATConfig, preset
    from faceedu.train.diat import QUICK_SUITE

    source, fingerprint = REPO / "runs" / "diat-suite", dataset_fingerprint(synth_root)

    def same(change):
        return lambda described: (described.get("data_fingerprint") == fingerprint
                                  and DIATConfig.from_dict(described.get("diat", {})) == preset("quick", **change))

    steps = preset("quick").steps
    return source if all(reusable_run(source / name, same(change), steps) for name, change in QUICK_SUITE) else None


@pytest.fixture(scope="session")
def trained_diat(trained_dir, synth_root, pytestconfig) -> dict:
    """Lesson 06's quick DIAT models (issue 16), trained once per test run as `faceedu train diat --preset
    quick` does it, sharing one pre-training: mouth opening and closing, glasses removal, and the mouth-opening
    model without the identity loss and without the perceptual regulariser; each evaluated on 300 test faces.
    {"results": {name: evaluate(...)}, "seconds": {name: s}, "run": folder}. (Male and Young are measured by
    the CLI for docs/diat.md: they do not fit the test run's training budget.) They train in the background
    from the start of the run (`background_trainings`). A finished suite of the same preset on the same data
    in runs/diat-suite (the docs' command) is copied and evaluated instead of trained again
    (FACEEDU_TEST_REUSE=0: always train)."""
    import json
    import shutil

    from training import training_progress, wait_for_background

    from faceedu.models.diat import preset
    from faceedu.train.diat import QUICK_SUITE, train_suite

    run = trained_dir / "diat-quick"
    runs, steps = [run / name for name, _ in QUICK_SUITE], preset("quick").steps
    if wait_for_background(pytestconfig, "diat", runs, steps) is not None:
        return json.loads((run / "results.json").read_text()) | {"run": run}
    source = reusable_diat_suite(synth_root)
    if source is not None:
        shutil.copytree(source, run)
    with training_progress(pytestconfig, "diat", runs, steps=steps):
        payload = train_suite(synth_root, run, verbose=False)
    return payload | {"run": run}


@pytest.fixture(scope="session")
def trained_cyclegan(trained_dir, synth_root, pytestconfig) -> dict:
    """Lesson 08's quick CycleGAN (SynthFaces-JAFFE, happy <-> neutral), trained once per test run exactly as
    `faceedu train cyclegan` does it: {"run": run folder, "summary": the loop's summary}. A finished run of the
    same preset on the same data (the tour's runs/cyclegan-quick) is copied instead of training again. It
    trains in the background from the start of the run (`background_trainings`)."""
    from faceedu.models.cyclegan import preset
    from faceedu.train.cyclegan import train_cyclegan
    from training import quick_model

    config = preset("quick")
    return quick_model(pytestconfig, "cyclegan", config, trained_dir / "cyclegan-quick", synth_root, config.steps,
                       train_cyclegan, sample_every=CYCLEGAN_SAMPLE_EVERY, unit="image pairs/s")


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


# --- the one-thread quick models, trained in the background (tests/training.py) -----------------------------------

BACKGROUND_FIXTURES = ("trained_cyclegan", "trained_diat")
# DIAT's suite in the background trains three models at a time (one thread each): with the CycleGAN and the test
# process beside them the cores stay busy until its last model ends, where two workers left one core idle for
# the last model's length. Each model's trajectory is a lone run's whatever the count (train_suite).
DIAT_WORKERS = 3
BACKGROUND_NEEDED = pytest.StashKey[set]()


@pytest.hookimpl(trylast=True)                 # after -k / -m have deselected what will not run
def pytest_collection_modifyitems(config, items):
    """Order the test modules in three groups, each in its usual order: those that train no quick model, then
    those whose models train in the background, then those that train a quick model on two threads in the
    test process. The light tests then run while the background trainings share the cores with them, and the
    two-thread trainings start once those are done. Modules stay whole (their fixtures are made once)."""
    def group(item) -> int:
        names = set(item.fixturenames)
        if any(n.startswith("trained_") and n != "trained_dir" and n not in BACKGROUND_FIXTURES for n in names):
            return 2
        return 1 if names & set(BACKGROUND_FIXTURES) else 0

    module_group: dict = {}
    for item in items:
        module = getattr(item, "module", None)
        module_group[module] = max(module_group.get(module, 0), group(item))
    items.sort(key=lambda item: module_group[getattr(item, "module", None)])   # stable: usual order within
    config.stash[BACKGROUND_NEEDED] = {n for item in items for n in BACKGROUND_FIXTURES if n in item.fixturenames}


def _child_code(root: Path, run: Path, call: str) -> str:
    """Python for a background child: `call` trains into `run` from the data at `root` and sets `summary`."""
    from training import SUMMARY

    return (f"import json\nroot, run = {str(root)!r}, {str(run)!r}\n{call}\n"
            f"print({SUMMARY!r} + json.dumps(summary, default=str), flush=True)\n")


@pytest.fixture(scope="session", autouse=True)
def background_trainings(request):
    """At the start of a run whose tests need the quick CycleGAN or the DIAT suite, start each (unless a
    finished one can be reused) in a child process that makes its fixture's own training call on the
    preset's one thread; the fixtures wait for them. Stopped at the end of the run if still running.
    FACEEDU_TEST_BACKGROUND=0 trains them in the test process instead, when their fixtures ask."""
    needed = request.config.stash.get(BACKGROUND_NEEDED, set())
    if not needed or os.environ.get("FACEEDU_TEST_BACKGROUND", "1") == "0":
        yield
        return
    from training import reusable_quick_run, start_in_background, stop_background

    from faceedu.models.cyclegan import preset as cyclegan_preset

    root, trained_dir = request.getfixturevalue("synth_root"), request.getfixturevalue("trained_dir")
    cyclegan = cyclegan_preset("quick")
    plans = {   # fixture: (model name, run folder, a finished run to reuse instead, the training call)
        "trained_cyclegan": ("cyclegan", trained_dir / "cyclegan-quick",
                             reusable_quick_run("cyclegan", cyclegan, root, cyclegan.steps),
                             "from faceedu.models.cyclegan import preset\n"
                             "from faceedu.train.cyclegan import train_cyclegan\n"
                             "from faceedu.train.loop import LoopConfig\n"
                             "summary = train_cyclegan(preset('quick'), run, root, preset_name='quick',\n"
                             f"                         loop=LoopConfig(progress=False, sample_every={CYCLEGAN_SAMPLE_EVERY}))"),
        "trained_diat": ("diat", trained_dir / "diat-quick", reusable_diat_suite(root),
                         "from faceedu.train.diat import train_suite\n"
                         f"summary = {{'seconds': train_suite(root, run, verbose=False, workers={DIAT_WORKERS})['seconds']}}"),
    }
    for fixture in sorted(needed):
        name, run, reusable, call = plans[fixture]
        if reusable is None:
            start_in_background(name, _child_code(root, run, call), trained_dir / f"{name}-background.log")
    yield
    stop_background()
