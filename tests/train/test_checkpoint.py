"""Checkpoints: full state round trip, safe loading, atomic writes, damaged files."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from aifab.core.errors import IntegrityError, NotFound
from aifab.train.callbacks import TrainState
from aifab.train.checkpoint import load_checkpoint, restore_rng, save_checkpoint


def trained_state(epoch: int = 2) -> TrainState:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2))
    opt = torch.optim.AdamW(net.parameters(), lr=0.01)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    for _ in range(3):
        loss = net(torch.randn(8, 3)).logsumexp(dim=1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    best = {k: v.clone() + 1 for k, v in net.state_dict().items()}
    return TrainState(
        model=net,
        optimizer=opt,
        scheduler=sched,
        epochs=5,
        steps_per_epoch=3,
        epoch=epoch,
        step=3 * epoch,
        history=[{"epoch": 1, "train.loss": 0.7, "val.loss": None, "lr": 0.01, "seconds": 0.1}],
        best_metric=0.75,
        best_epoch=1,
        best_weights=best,
        stop=True,
        stop_reason="early stopping: test",
        elapsed_seconds=12.5,
        meta={"fingerprint": "abc", "preprocessing": {"kind": "image", "mean": [0.5]}},
    )


def test_round_trip_keeps_every_part_of_the_state(tmp_path: Path) -> None:
    state = trained_state()
    path = tmp_path / "sub" / "run.ckpt"
    save_checkpoint(path, state)
    ckpt = load_checkpoint(path)
    for key, value in state.model.state_dict().items():
        assert torch.equal(ckpt["model"][key], value), key
    for key, value in state.best_weights.items():
        assert torch.equal(ckpt["best_weights"][key], value), key
    opt_state = state.optimizer.state_dict()["state"]
    for idx, slots in opt_state.items():
        for name, tensor in slots.items():
            assert torch.equal(ckpt["optimizer"]["state"][idx][name], tensor)
    assert ckpt["scheduler"]["last_epoch"] == 3
    assert (ckpt["epoch"], ckpt["step"], ckpt["epochs"], ckpt["steps_per_epoch"]) == (2, 6, 5, 3)
    assert ckpt["history"] == state.history
    assert (ckpt["best_metric"], ckpt["best_epoch"], ckpt["stop"]) == (0.75, 1, True)
    assert ckpt["stop_reason"] == "early stopping: test" and ckpt["elapsed_seconds"] == 12.5
    assert ckpt["meta"] == state.meta
    # Loading into fresh objects continues identically.
    fresh = trained_state(epoch=0)
    fresh.model.load_state_dict(ckpt["model"])
    fresh.optimizer.load_state_dict(ckpt["optimizer"])
    fresh.scheduler.load_state_dict(ckpt["scheduler"])
    assert fresh.optimizer.param_groups[0]["lr"] == state.optimizer.param_groups[0]["lr"]
    assert not list(tmp_path.glob("**/*.tmp"))


def draws() -> tuple:
    return torch.rand(4), np.random.rand(4), np.random.randn(3), [random.random() for _ in range(4)]


def test_rng_state_of_torch_numpy_and_random_is_restored(tmp_path: Path) -> None:
    state = trained_state()
    torch.manual_seed(3), np.random.seed(3), random.seed(3)
    np.random.randn()  # leaves numpy's cached second gaussian in its state
    path = tmp_path / "rng.ckpt"
    save_checkpoint(path, state)
    expected = draws()
    torch.manual_seed(99), np.random.seed(99), random.seed(99)
    assert not torch.equal(draws()[0], expected[0])
    restore_rng(load_checkpoint(path)["rng"])  # through torch.save and a weights_only load
    again = draws()
    assert torch.equal(expected[0], again[0])
    assert np.array_equal(expected[1], again[1]) and np.array_equal(expected[2], again[2])
    assert expected[3] == again[3]


def test_a_crash_while_saving_leaves_the_previous_checkpoint(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "run.ckpt"
    save_checkpoint(path, trained_state(epoch=1))
    real_save = torch.save

    def crash_half_way(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a zip file")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash_half_way)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, trained_state(epoch=2))
    monkeypatch.setattr(torch, "save", real_save)
    assert load_checkpoint(path)["epoch"] == 1
    assert not (tmp_path / "run.ckpt.tmp").exists()


def test_a_leftover_tmp_file_from_a_killed_save_is_harmless(tmp_path: Path) -> None:
    path = tmp_path / "run.ckpt"
    save_checkpoint(path, trained_state(epoch=1))
    (tmp_path / "run.ckpt.tmp").write_bytes(b"garbage from a process killed mid-write")
    save_checkpoint(path, trained_state(epoch=2))
    assert load_checkpoint(path)["epoch"] == 2


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "foreign"])
def test_damaged_checkpoints_are_integrity_errors_naming_the_file(
    tmp_path: Path, damage: str
) -> None:
    path = tmp_path / "run.ckpt"
    save_checkpoint(path, trained_state())
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(bytes(range(256)) * 10)
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        torch.save({"weights": torch.zeros(2)}, path)  # a valid torch file, not a checkpoint
    with pytest.raises(IntegrityError) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)


def test_missing_checkpoint_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="no.ckpt: checkpoint not found"):
        load_checkpoint(tmp_path / "no.ckpt")
