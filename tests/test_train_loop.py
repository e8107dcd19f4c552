"""The shared training loop: exact resume, atomic checkpoints, the NaN guard, logs and pictures."""

import json

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from faceedu.train.loop import (CHECKPOINT, LoopConfig, TrainingDiverged, cpu_threads, load_checkpoint, run_finished,
                                 train)


class TinyAutoencoder:
    """A task with dropout and a scheduler, so resume must restore RNG and scheduler state too."""

    def __init__(self, lr: float = 1e-2):
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(12, 6), nn.Dropout(0.3), nn.Linear(6, 12))
        self.optimizers = {"net": torch.optim.Adam(self.net.parameters(), lr=lr)}
        self.schedulers = {"net": torch.optim.lr_scheduler.StepLR(self.optimizers["net"], 5, 0.5)}

    @property
    def modules(self):
        return {"net": self.net}

    def step(self, batch, step):
        (x,) = batch
        loss = ((self.net(x) - x.flatten(1)) ** 2).mean()
        self.optimizers["net"].zero_grad()
        loss.backward()
        self.optimizers["net"].step()
        return {"mse": loss}

    def samples(self, batch):
        (x,) = batch
        return self.net(x).view(-1, 3, 2, 2).sigmoid()


def data():
    return TensorDataset(torch.randn(50, 3, 2, 2, generator=torch.Generator().manual_seed(1)))


def quiet(**kw):
    return LoopConfig(batch_size=8, log_every=2, sample_every=6, checkpoint_every=4, progress=False, **kw)


def test_resume_is_exact(tmp_path):
    straight = TinyAutoencoder()
    train(straight, data(), tmp_path / "a", quiet(steps=14))
    first = TinyAutoencoder()
    train(first, data(), tmp_path / "b", quiet(steps=9))           # stops mid-epoch (6 batches per epoch)
    resumed = TinyAutoencoder()
    summary = train(resumed, data(), tmp_path / "b", quiet(steps=14))
    assert summary["steps_this_run"] == 5
    for a, b in zip(straight.net.state_dict().values(), resumed.net.state_dict().values()):
        assert torch.equal(a, b)
    assert resumed.optimizers["net"].param_groups[0]["lr"] == straight.optimizers["net"].param_groups[0]["lr"]


def test_an_interrupted_run_is_not_a_finished_one(tmp_path):
    """Lessons reuse a finished run (lesson 03 the tour's runs/vae-quick): a run stopped half-way also has its
    config.json and a checkpoint, and only the checkpoint's step tells it from a finished one."""
    run = tmp_path / "run"
    train(TinyAutoencoder(), data(), run, quiet(steps=8), describe={"model": "tiny"})
    assert run_finished(run, "tiny") and run_finished(run, "tiny", 8) and not run_finished(run, "tiny", 9)
    assert not run_finished(run, "vae") and not run_finished(tmp_path / "nothing", "tiny")
    described = json.loads((run / "config.json").read_text())
    described["loop"]["steps"] = 20            # what a 20-step run stopped after step 8 leaves behind
    (run / "config.json").write_text(json.dumps(described))
    assert not run_finished(run, "tiny") and run_finished(run, "tiny", 8)


def test_run_folder_holds_logs_curves_samples_and_a_loadable_checkpoint(tmp_path):
    summary = train(TinyAutoencoder(), data(), tmp_path, quiet(steps=8))
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4, 6, 8]
    assert all(r["images_per_s"] > 0 and "mse" in r and "lr_net" in r for r in records)
    assert (tmp_path / "loss_curves.png").stat().st_size > 1000
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == ["step_000006.png", "step_000008.png"]
    assert not list(tmp_path.glob("*.tmp"))
    fresh = TinyAutoencoder()
    assert load_checkpoint(fresh, tmp_path / CHECKPOINT)["step"] == 8
    assert summary["images_per_s"] > 0


def test_nan_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(tmp_path):
    class Diverging(TinyAutoencoder):
        def step(self, batch, step):
            losses = super().step(batch, step)
            return {"mse": losses["mse"] * (float("nan") if step == 6 else 1.0)}

    with pytest.raises(TrainingDiverged, match=r"'mse' became nan at step 6.*last good checkpoint"):
        train(Diverging(), data(), tmp_path, quiet(steps=10))
    assert torch.load(tmp_path / CHECKPOINT, weights_only=True)["step"] == 4


def test_a_damaged_checkpoint_is_explained(tmp_path):
    (tmp_path / CHECKPOINT).write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match="(?s)Cannot read checkpoint.*Delete it"):
        train(TinyAutoencoder(), data(), tmp_path, quiet(steps=2))


def test_too_little_data_is_explained(tmp_path):
    with pytest.raises(ValueError, match="fewer than one batch"):
        train(TinyAutoencoder(), TensorDataset(torch.zeros(3, 3, 2, 2)), tmp_path, quiet(steps=2))


class TinyFaceTask(TinyAutoencoder):
    """TinyAutoencoder on FaceTensors batches (dicts), recording which faces each step saw."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(12, 6), nn.Dropout(0.3), nn.Linear(6, 12))
        self.optimizers = {"net": torch.optim.Adam(self.net.parameters(), lr=1e-2)}
        self.schedulers = {}
        self.seen = []

    def step(self, batch, step):
        self.seen.append(batch["identity"].tolist())
        return super().step((batch["image"],), step)

    def samples(self, batch):
        return super().samples((batch["image"],))


def face_tensors():
    from faceedu.data.tensors import FaceTensors

    g = torch.Generator().manual_seed(2)
    images = torch.randint(0, 256, (50, 3, 2, 2), dtype=torch.uint8, generator=g)
    return FaceTensors(images, torch.randint(0, 2, (50, 4), generator=g), ["A", "B", "C", "D"], torch.arange(50))


def test_tensor_datasets_train_from_the_device_with_the_same_batches_and_an_exact_resume(tmp_path):
    """FaceTensors are gathered batch by batch where they live (data_on_device): the same faces in the same
    order as the DataLoader path, the same weights, and resuming mid-epoch stays exact."""
    loader, gathered = TinyFaceTask(), TinyFaceTask()
    train(loader, face_tensors(), tmp_path / "loader", quiet(steps=14, data_on_device=False))
    train(gathered, face_tensors(), tmp_path / "gathered", quiet(steps=14))
    assert gathered.seen == loader.seen and len(gathered.seen) == 14
    for a, b in zip(loader.net.state_dict().values(), gathered.net.state_dict().values()):
        assert torch.equal(a, b)
    train(TinyFaceTask(), face_tensors(), tmp_path / "resumed", quiet(steps=9))
    resumed = TinyFaceTask()
    train(resumed, face_tensors(), tmp_path / "resumed", quiet(steps=14))
    assert resumed.seen == gathered.seen[9:]
    for a, b in zip(gathered.net.state_dict().values(), resumed.net.state_dict().values()):
        assert torch.equal(a, b)


def test_cpu_threads_pins_the_count_inside_and_restores_it_after_an_error():
    before = torch.get_num_threads()
    pinned = 1 if before != 1 else 2
    with pytest.raises(RuntimeError, match="inside"):
        with cpu_threads(pinned):
            assert torch.get_num_threads() == pinned
            raise RuntimeError("inside")
    assert torch.get_num_threads() == before
    with cpu_threads(0):                       # 0: torch's default, left alone
        assert torch.get_num_threads() == before


def test_the_quick_presets_quoted_by_the_tests_pin_their_thread_count():
    from faceedu.models import cyclegan, diat, fader

    assert (fader.preset("quick").threads, diat.preset("quick").threads, cyclegan.preset("quick").threads) == (2, 1, 1)
    assert fader.preset("full").threads == diat.preset("full").threads == 0
