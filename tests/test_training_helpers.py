"""tests/training.py: a training fixture's progress shows while it trains, and only a finished run of the
same configuration is reused."""

from __future__ import annotations

import json
import threading
import time

import torch

from training import reusable_run, summary_of, training_progress


def _fake_training(run, steps: int, seconds: float) -> None:
    run.mkdir(parents=True, exist_ok=True)
    with (run / "metrics.jsonl").open("a") as metrics:
        for step in range(10, steps + 1, 10):
            time.sleep(seconds * 10 / steps)
            metrics.write(json.dumps({"step": step, "epoch": 0, "images_per_s": 123.0, "loss": 1.0}) + "\n")
            metrics.flush()


def test_progress_prints_steps_throughput_and_time_left(tmp_path, capfd):
    run = tmp_path / "run"
    with training_progress(None, "toy", run, steps=100, every=0.15):     # None: straight to the terminal
        _fake_training(run, 100, 1.2)
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("[toy] step ")]
    assert len(lines) >= 4, err
    assert "123 images/s" in lines[1] and "left" in lines[-2], err
    assert err.rstrip().splitlines()[-1].startswith("[toy] step 100/100 after"), err


def test_progress_says_something_before_the_first_step(tmp_path, capfd):
    with training_progress(None, "toy", tmp_path / "run", steps=5, every=0.05):
        time.sleep(0.3)
    err = capfd.readouterr().err
    assert "[toy] preparing data and model" in err and "[toy] no step logged" in err


def _finished_run(path, steps: int, **describe):
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"loop": {"steps": steps}} | describe))
    torch.save({"step": steps, "modules": {}}, path / "checkpoint.pt")
    (path / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "images_per_s": 100.0 + s, "loss": 2.0 / s})
                                                + "\n" for s in (1, 2, steps)))
    return path


def test_only_a_finished_run_that_matches_is_reused(tmp_path, monkeypatch):
    run = _finished_run(tmp_path / "run", 3, model="vae", data_fingerprint="abc")
    same = lambda described: described.get("data_fingerprint") == "abc"                # noqa: E731
    assert reusable_run(run, same, steps=3) == run
    assert reusable_run(run, lambda described: described.get("data_fingerprint") == "other", steps=3) is None
    assert reusable_run(run, same, steps=4) is None                                    # not finished
    assert reusable_run(tmp_path / "missing", same, steps=3) is None
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    assert reusable_run(tmp_path / "broken", same, steps=3) is None
    monkeypatch.setenv("FACEEDU_TEST_REUSE", "0")
    assert reusable_run(run, same, steps=3) is None
    summary = summary_of(run)
    assert summary["reused"] == str(run) and summary["steps"] == 3 and summary["losses"] == {"loss": 2.0 / 3}


def test_progress_thread_stops_with_the_training(tmp_path):
    before = threading.active_count()
    try:
        with training_progress(None, "toy", tmp_path / "run", steps=5, every=10):
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        pass
    assert threading.active_count() == before


def test_quick_model_copies_a_matching_tour_run_and_trains_otherwise(tmp_path, monkeypatch, synth_root):
    import training
    from faceedu.data.synthfaces import dataset_fingerprint

    class Config:
        batch_size = 4

        def __init__(self, width: int):
            self.width = width

        def to_dict(self) -> dict:
            return {"width": self.width, "sizes": (1, 2)}

    monkeypatch.setattr(training, "REPO", tmp_path)
    monkeypatch.setattr(training, "wait_for_all_background", lambda config: None)   # its toy trains in no time
    calls = []

    def train(config, run, root, loop, preset_name):
        calls.append((config.width, run, root, loop.sample_every, preset_name))
        return {"seconds": 1.0, "images_per_s": 10.0}

    _finished_run(tmp_path / "runs" / "toy-quick", 3, model="toy", toy={"width": 8, "sizes": [1, 2]},
                  data_fingerprint=dataset_fingerprint(synth_root))
    (tmp_path / "runs" / "toy-quick" / "config.json").write_text(json.dumps(
        json.loads((tmp_path / "runs" / "toy-quick" / "config.json").read_text()) | {"loop": {"steps": 3,
                                                                                              "batch_size": 4, "seed": 0}}))
    copied = training.quick_model(None, "toy", Config(8), tmp_path / "a", synth_root, 3, train, sample_every=5)
    assert not calls and copied["summary"]["reused"] == str(tmp_path / "runs" / "toy-quick")
    assert (tmp_path / "a" / "checkpoint.pt").is_file()
    trained = training.quick_model(None, "toy", Config(16), tmp_path / "b", synth_root, 3, train, sample_every=5)
    assert calls == [(16, tmp_path / "b", synth_root, 5, "quick")] and trained["summary"]["images_per_s"] == 10.0


def test_progress_follows_a_suite_of_runs_trained_one_after_another(tmp_path, capfd):
    runs = [tmp_path / "a", tmp_path / "b"]
    with training_progress(None, "suite", runs, steps=50, every=0.1):
        for run in runs:
            _fake_training(run, 50, 0.6)
    err = capfd.readouterr().err
    assert "0/2 models done · a step" in err and "1/2 models done · b step" in err, err
    assert err.rstrip().splitlines()[-1].startswith("[suite] 2/2 models done after"), err


def test_progress_follows_runs_trained_side_by_side(tmp_path, capfd):
    runs = [tmp_path / "a", tmp_path / "b", tmp_path / "c"]
    with training_progress(None, "suite", runs, steps=50, every=0.1):
        pair = [threading.Thread(target=_fake_training, args=(run, 50, 0.6)) for run in runs[:2]]
        for thread in pair:
            thread.start()
        for thread in pair:
            thread.join()
        _fake_training(runs[2], 50, 0.6)
    err = capfd.readouterr().err
    both = [line for line in err.splitlines() if " a step " in line and " b step " in line]
    assert both and both[0].startswith("[suite] 0/3 models done · a step"), err
    assert "2/3 models done · c step" in err and "left" in err, err
    assert err.rstrip().splitlines()[-1].startswith("[suite] 3/3 models done after"), err
