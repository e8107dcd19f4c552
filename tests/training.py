"""Training inside session fixtures: progress that shows past pytest's output capture, and reuse of a
finished run of the same configuration and data.

A fixture that trains a quick model takes minutes (more on a busy laptop) and is not under the per-test
hang limit (`timeout_func_only` in pyproject.toml). So that the log never goes silent, wrap the training in
`training_progress`; it watches the run's metrics.jsonl (written by the shared loop every `log_every`
steps) and prints, every 30 s (FACEEDU_TEST_PROGRESS_S), where training is:

    @pytest.fixture(scope="session")
    def trained_cgan(trained_dir, synth_root, pytestconfig):
        run = trained_dir / "cgan-quick"
        with training_progress(pytestconfig, "cgan", run, steps=2000):
            summary = train_cgan(..., run, ...)
        return {"run": run, "summary": summary}

    [cgan] step 450/2000 · 180 images/s · 2 min 31 s so far · about 8 min 40 s left

`reusable_run` finds a finished run to copy instead of training (the tour's runs/vae-quick, say).

Quick models whose presets pin one CPU thread (CycleGAN, DIAT's suite) train in the background: at the
start of a test run, each in a child process (`start_in_background`), so that they share the two cores with
each other and with the tests that train nothing, instead of each training alone on one core while the other
idles. Their fixtures wait for them (`wait_for_background`); a model that trains on two threads in the
test process first waits for every background one (`wait_for_all_background`), so that no two trainings
fight over the cores. A child runs the very call the fixture would make, on the preset's threads, so the
model is the one trained in the test process, bit for bit.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def terminal_print(config: Any, message: str) -> None:
    """Print `message` to the terminal past pytest's capture (`config` is pytest's config, or None)."""
    manager = config.pluginmanager.getplugin("capturemanager") if config is not None else None
    if manager is None:
        print(message, file=sys.__stderr__, flush=True)
        return
    with manager.global_and_fixture_disabled():
        print(message, file=sys.__stderr__, flush=True)


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    return f"{seconds // 60} min {seconds % 60} s" if seconds >= 60 else f"{seconds} s"


def _last_record(metrics: Path) -> dict | None:
    try:
        lines = metrics.read_text().splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            return json.loads(line)
        except ValueError:            # a line being written
            continue
    return None


@contextlib.contextmanager
def training_progress(config: Any, name: str, run: Path | Sequence[Path], steps: int,
                      every: float | None = None) -> Iterator[None]:
    """While the body trains into `run` (for `steps` steps in all), print `[name] step S/N · images/s ·
    time so far · time left` every `every` seconds past pytest's capture, and the total at the end.
    `run` may list several run folders of `steps` steps each (a suite of models, trained one after another
    or side by side): the line then counts the finished models and names each model in training,
    `[name] 2/5 models done · RUN step S/N, images/s · ...`, and the time left counts every step to come."""
    every = every if every is not None else float(os.environ.get("FACEEDU_TEST_PROGRESS_S", 30))
    runs = [Path(run)] if isinstance(run, (str, os.PathLike)) else [Path(r) for r in run]
    start, done = time.monotonic(), threading.Event()
    first: list[tuple[float, int]] = []          # (time, steps done in all) of the first record this session saw
    lock = threading.Lock()

    def logged() -> list[tuple[Path, dict]]:     # each run that has logged a step, with its last record
        return [(r, record) for r in runs if (record := _last_record(r / "metrics.jsonl")) is not None]

    def reached(records: list[tuple[Path, dict]]) -> str:    # "step S/N", or "K/M models done" for a suite
        if len(runs) == 1:
            return f"step {records[0][1]['step']}/{steps}"
        return f"{sum(record['step'] >= steps for _, record in records)}/{len(runs)} models done"

    def where(records: list[tuple[Path, dict]]) -> str:
        if len(runs) == 1:
            return f"{reached(records)} · {records[0][1].get('images_per_s', float('nan')):,.0f} images/s"
        training = [f"{r.name} step {record['step']}/{steps}, {record.get('images_per_s', float('nan')):,.0f} images/s"
                    for r, record in records if record["step"] < steps]
        return " · ".join([reached(records)] + training)

    def report() -> None:
        records, now = logged(), time.monotonic()
        if not records:
            terminal_print(config, f"[{name}] preparing data and model · {_duration(now - start)} so far")
            return
        done_all, total = sum(record["step"] for _, record in records), len(runs) * steps
        if not first:
            first.append((now, done_all))
        line = f"[{name}] {where(records)} · {_duration(now - start)} so far"
        (t0, s0) = first[0]
        if done_all > s0:
            line += f" · about {_duration((total - done_all) * (now - t0) / (done_all - s0))} left"
        terminal_print(config, line)

    def watch() -> None:
        while not done.wait(every):
            with lock:
                report()

    into = runs[0] if len(runs) == 1 else f"{len(runs)} models ({', '.join(r.name for r in runs)}) in {runs[0].parent}"
    terminal_print(config, f"\n[{name}] training {steps} steps into {into} (progress every {every:.0f} s)")
    thread = threading.Thread(target=watch, name=f"progress-{name}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        with lock:
            records = logged()
            end = reached(records) if records else "no step logged"
            terminal_print(config, f"[{name}] {end} after {_duration(time.monotonic() - start)}")


def reusable_run(candidate: Path, matches: Callable[[dict], bool], steps: int) -> Path | None:
    """`candidate` if it is a finished run (checkpoint at `steps`) whose config.json satisfies `matches`;
    else None. FACEEDU_TEST_REUSE=0 turns reuse off (a clean clone has nothing to reuse anyway)."""
    import torch

    if os.environ.get("FACEEDU_TEST_REUSE", "1") == "0":
        return None
    candidate = Path(candidate)
    try:
        described = json.loads((candidate / "config.json").read_text())
        if not matches(described):
            return None
        state = torch.load(candidate / "checkpoint.pt", map_location="cpu", weights_only=True)
        return candidate if state.get("step") == steps else None
    except (OSError, ValueError, KeyError, RuntimeError):
        return None


def summary_of(run: Path) -> dict:
    """A loop-style summary of a finished run from its metrics.jsonl (for a reused run)."""
    records = [json.loads(line) for line in (Path(run) / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rates = [r["images_per_s"] for r in records if r.get("images_per_s")]
    return {"steps": records[-1]["step"] if records else 0, "steps_this_run": 0, "seconds": None,
            "images_per_s": round(sum(rates) / len(rates), 1) if rates else None, "reused": str(run),
            "losses": {k: v for k, v in (records[-1] if records else {}).items()
                       if k not in ("step", "epoch", "images_per_s") and not k.startswith("lr_")}}


def reusable_quick_run(name: str, config: Any, root: Path, steps: int) -> Path | None:
    """The tour's runs/NAME-quick when it is a finished run of `config` with the same steps, batch, seed and
    data (`reusable_run`); else None."""
    from faceedu.data.synthfaces import dataset_fingerprint

    fingerprint = dataset_fingerprint(root)
    wanted = json.loads(json.dumps(config.to_dict()))              # as config.json holds it (tuples as lists)

    def same(described: dict) -> bool:
        loop = described.get("loop", {})
        return bool(described.get("model") == name and described.get(name) == wanted and fingerprint
                    and described.get("data_fingerprint") == fingerprint and loop.get("steps") == steps
                    and loop.get("batch_size") == getattr(config, "batch_size", loop.get("batch_size"))
                    and loop.get("seed") == 0)

    return reusable_run(REPO / "runs" / f"{name}-quick", same, steps)


def quick_model(pytestconfig: Any, name: str, config: Any, run: Path, root: Path, steps: int,
                train: Callable[..., dict], sample_every: int, unit: str = "images/s") -> dict:
    """The quick model `name` ("vae", "cgan", ...) trained into `run` once per test run exactly as `faceedu
    train NAME --preset quick` does it (`train(config, run, root, loop=..., preset_name="quick")`), or, when
    the tour's runs/NAME-quick is a finished run of the same config, steps, batch, seed and data, a copy of
    it: {"run": run, "summary": the loop's summary (seconds, images/s), plus "reused" for a copy}. A model
    started in the background (`start_in_background`) is waited for instead."""
    import shutil

    from faceedu.train.loop import LoopConfig

    background = wait_for_background(pytestconfig, name, [run], steps)
    if background is not None:
        return {"run": run, "summary": background}
    found = reusable_quick_run(name, config, root, steps)
    if found:
        shutil.copytree(found, run)
        terminal_print(pytestconfig, f"\n[{name}] reusing {found} (same quick preset, same data; "
                                     f"FACEEDU_TEST_REUSE=0 trains afresh)")
        return {"run": run, "summary": summary_of(run) | {"reused": str(found)}}
    wait_for_all_background(pytestconfig)
    with training_progress(pytestconfig, name, run, steps):
        summary = train(config, run, root, loop=LoopConfig(progress=False, sample_every=sample_every),
                        preset_name="quick")
    terminal_print(pytestconfig, f"[{name}] quick preset trained in {summary['seconds']} s "
                                 f"({summary['images_per_s']} {unit})")
    return {"run": run, "summary": summary}


# --- quick models trained in the background ------------------------------------------------------------------

_BACKGROUND: dict[str, tuple[subprocess.Popen, Path, float]] = {}     # name -> (child, its log, start time)
SUMMARY = "FACEEDU-SUMMARY "     # a child's last line of output: this, then its training summary as JSON
_SHARING: dict[str, Any] = {}    # while children train: the test process's own thread count and OMP_NUM_THREADS


def _share_the_cores() -> None:
    """While background trainings run, the test process (and what it starts: notebook kernels) computes on one
    thread: OpenMP threads that outnumber the free cores wait on each other (docs/benchmarks.md)."""
    import torch

    if not _SHARING:
        _SHARING.update(threads=torch.get_num_threads(), omp=os.environ.get("OMP_NUM_THREADS"))
        torch.set_num_threads(1)
        os.environ["OMP_NUM_THREADS"] = "1"


def _release_the_cores() -> None:
    """Back to the test process's own thread count once no background training runs."""
    import torch

    if _SHARING and all(child.poll() is not None for child, _, _ in _BACKGROUND.values()):
        torch.set_num_threads(_SHARING["threads"])
        if _SHARING["omp"] is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = _SHARING["omp"]
        _SHARING.clear()


def start_in_background(name: str, code: str, log: Path) -> None:
    """Start `code` (Python source, run by `python -c` in the repository with this interpreter) in a child
    process that trains quick model `name`; its output goes to `log`, and it ends with a line of `SUMMARY`
    and its training summary as JSON."""
    log.parent.mkdir(parents=True, exist_ok=True)
    _share_the_cores()
    with log.open("w") as out:
        child = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                 start_new_session=True)       # its own process group, with its pool's workers
    _BACKGROUND[name] = (child, log, time.monotonic())


def wait_for_background(config: Any, name: str, runs: Sequence[Path], steps: int) -> dict | None:
    """If quick model `name` trains in the background, wait for it (its progress printed as a training in
    the test process prints it) and return the summary its child wrote; None when it does not. A child that
    failed fails the fixture with its output's last lines."""
    if name not in _BACKGROUND:
        return None
    child, log, start = _BACKGROUND[name]
    if child.poll() is None:
        with training_progress(config, name, runs if len(runs) > 1 else runs[0], steps):
            child.wait()
    _release_the_cores()
    lines = log.read_text().splitlines()
    if child.returncode != 0 or not lines or not lines[-1].startswith(SUMMARY):
        tail = "\n".join(lines[-30:])
        raise RuntimeError(f"the background training of {name} failed (exit {child.returncode}); "
                           f"the end of {log}:\n{tail}")
    terminal_print(config, f"[{name}] trained in the background in {_duration(time.monotonic() - start)}")
    return json.loads(lines[-1].removeprefix(SUMMARY))


def wait_for_all_background(config: Any) -> None:
    """Wait until no background training is running (before a training that takes both cores)."""
    running = [name for name, (child, _, _) in _BACKGROUND.items() if child.poll() is None]
    if running:
        terminal_print(config, f"[{', '.join(running)}] waiting for the background training to finish first")
    for name in running:
        _BACKGROUND[name][0].wait()
    _release_the_cores()


def stop_background() -> None:
    """Stop every background training still running, with the processes it started (at the end of a run)."""
    import signal

    for child, _, _ in _BACKGROUND.values():
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGTERM)
            child.wait()
    _release_the_cores()
    _BACKGROUND.clear()
