"""The loop on small real tensors: schedules, losses, early stopping, best weights, determinism."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from aifab.core.config import TrainConfig, parse
from aifab.core.errors import ConfigError
from aifab.core.progress import RecordingProgress
from aifab.train.callbacks import Callback, EarlyStopping, ProgressCallback, TrainState
from aifab.train.loop import Batch, class_weights_for, fit, make_loss


def blobs(n: int, seed: int, *, flip: bool = False) -> list[Batch]:
    """Two Gaussian blobs in 2-D, as batches of 16; ``flip`` swaps the labels."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = torch.randn(n, 2, generator=g) * 0.5 + (y.float() * 2 - 1).unsqueeze(1) * 1.5
    if flip:
        y = 1 - y
    return [Batch({"input": x[i : i + 16]}, y[i : i + 16]) for i in range(0, n, 16)]


def config(**kw: Any) -> TrainConfig:
    return parse(TrainConfig, {"epochs": 3, "lr": 0.05, "warmup_ratio": 0.0, **kw})


def run(
    cfg: TrainConfig,
    *,
    train: list[Batch] | None = None,
    val: list[Batch] | None = None,
    callbacks=(),
    seed_model: int = 0,
) -> TrainState:
    torch.manual_seed(seed_model)
    net = torch.nn.Sequential(
        torch.nn.Linear(2, 8), torch.nn.ReLU(), torch.nn.Dropout(0.2), torch.nn.Linear(8, 2)
    )
    train = train if train is not None else blobs(64, 0)
    val = val if val is not None else blobs(32, 1)

    def factory(epoch: int, generator: torch.Generator) -> list[Batch]:
        order = torch.randperm(len(train), generator=generator).tolist()
        return [train[i] for i in order]

    return fit(
        net,
        train_loader_factory=factory,
        val_batches=val,
        config=cfg,
        multi_label=False,
        num_classes=2,
        callbacks=callbacks,
    )


def lrs(state: TrainState) -> list[float]:
    return [h["lr"] for h in state.history]


# -------------------------------------------------------------------------------- schedules


def test_step_schedule_multiplies_the_rate_by_gamma_each_step_size_epochs() -> None:
    state = run(config(schedule="step", step_size=1, gamma=0.5))
    assert lrs(state) == pytest.approx([0.05, 0.025, 0.0125])


def test_cosine_decays_per_step_after_warmup() -> None:
    state = run(config(schedule="cosine", warmup_ratio=0.25, epochs=2))
    total, warmup = 8, 2  # 4 batches per epoch; history holds the rate of each epoch's last step

    def rate(step: int) -> float:
        return 0.05 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))

    assert lrs(state) == pytest.approx([rate(3), rate(7)])
    assert state.step == 8 and state.optimizer.param_groups[0]["lr"] == pytest.approx(0.0)


def test_onecycle_warms_up_then_anneals_far_below_the_peak() -> None:
    seen: list[float] = []

    class Watch(Callback):
        def on_batch_end(self, state: TrainState) -> None:
            seen.append(state.optimizer.param_groups[0]["lr"])  # the rate of the next step

    run(config(schedule="onecycle", warmup_ratio=0.3), callbacks=[Watch()])
    peak = max(seen)
    assert peak == pytest.approx(0.05, rel=0.02)  # the peak falls between two steps
    assert seen.index(peak) in (2, 3)  # 30% of 12 steps
    assert seen[0] < peak / 2 and seen[-2] < peak / 1000  # seen[-1] would be step 13 of 12


def test_plateau_lowers_the_rate_when_the_metric_stalls() -> None:
    # A rate this small cannot change the predictions: val.macro_f1 stays flat.
    state = run(config(schedule="plateau", lr=1e-6, epochs=4, gamma=0.5, early_stopping=None))
    assert len({h["val.macro_f1"] for h in state.history}) == 1
    assert lrs(state) == pytest.approx(
        [1e-6, 1e-6, 1e-6, 5e-7]
    )  # patience 1: cut after 2 flat epochs


def test_no_schedule_keeps_the_rate() -> None:
    assert lrs(run(config(schedule="none", optimizer="sgd"))) == [0.05] * 3


# ----------------------------------------------------------------- stopping and best weights


def test_early_stopping_stops_when_the_metric_cannot_improve() -> None:
    cfg = config(lr=1e-9, epochs=10, early_stopping={"patience": 1, "min_delta": 0.05})
    stopper = EarlyStopping("val.macro_f1", "max", patience=1, min_delta=0.05)
    state = run(cfg, callbacks=[stopper])
    assert len(state.history) == 2 and state.stop
    assert state.stop_reason.startswith("early stopping: val.macro_f1 did not improve")


def test_early_stopping_counts_from_the_history() -> None:
    stopper = EarlyStopping("val.loss", "min", patience=2, min_delta=0.01)
    history = [{"val.loss": v} for v in (0.9, 0.5, 0.495, None, 0.6, 0.4)]
    assert [stopper.epochs_without_improvement(history[:k]) for k in range(1, 7)] == [
        0,
        0,
        1,
        1,
        2,
        0,
    ]


def test_the_best_epoch_weights_are_restored_at_the_end() -> None:
    """Val labels are the train labels flipped: the better the fit, the worse val gets."""
    snapshots: dict[int, dict[str, torch.Tensor]] = {}

    class Snapshot(Callback):
        def on_epoch_end(self, state: TrainState) -> None:
            snapshots[state.epoch] = {k: v.clone() for k, v in state.model.state_dict().items()}

    cfg = config(epochs=4, early_stopping={"metric": "val.loss", "mode": "min", "patience": 10})
    state = run(cfg, val=blobs(32, 1, flip=True), callbacks=[Snapshot()])
    losses = [h["val.loss"] for h in state.history]
    assert losses == sorted(losses) and state.best_epoch == 1
    final = state.model.state_dict()
    assert all(torch.equal(final[k], snapshots[1][k]) for k in final)
    assert not all(torch.equal(final[k], snapshots[4][k]) for k in final)


def test_time_limit_stops_between_epochs() -> None:
    state = run(config(epochs=5, max_minutes=1e-9))
    assert len(state.history) == 1 and state.stop_reason.startswith("time limit")


def test_no_validation_data_keeps_the_last_epoch() -> None:
    state = run(config(epochs=2), val=[])
    assert state.best_epoch == 2 and state.history[-1]["val.macro_f1"] is None


@pytest.mark.parametrize(
    ("early", "message"),
    [
        ({"metric": "val.macro_f"}, "did you mean 'val.macro_f1'"),
        ({"metric": "val.loss", "mode": "max"}, "mode must be 'min'"),
    ],
)
def test_a_bad_monitored_metric_is_a_config_error(early: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        run(config(early_stopping=early))


def test_a_diverging_loss_is_a_config_error_naming_the_rate() -> None:
    bad = [Batch({"input": torch.full((4, 2), float("nan"))}, torch.tensor([0, 1, 0, 1]))]
    with pytest.raises(ConfigError, match=r"loss became nan at epoch 1, step 1; lower train.lr"):
        run(config(), train=bad)


# ------------------------------------------------------------------------------ the records


def test_history_records_and_validation_metrics_are_right() -> None:
    val = blobs(32, 1)
    state = run(config(epochs=2), val=val)
    record = state.history[state.best_epoch - 1]  # the model holds the best epoch's weights
    assert {
        "epoch",
        "train.loss",
        "val.loss",
        "val.accuracy",
        "val.macro_f1",
        "lr",
        "seconds",
    } <= set(record)
    state.model.eval()
    with torch.no_grad():
        logits = torch.cat([state.model(**b.inputs) for b in val])
    targets = torch.cat([b.targets for b in val])
    assert record["val.accuracy"] == pytest.approx(
        (logits.argmax(1) == targets).float().mean().item()
    )
    assert record["val.loss"] == pytest.approx(F.cross_entropy(logits, targets).item(), rel=1e-5)
    assert record["val.accuracy"] > 0.9  # the blobs are separable
    assert state.history[-1]["train.loss"] < state.history[0]["train.loss"]


def test_same_seed_same_weights_other_seed_other_weights() -> None:
    a, b = run(config(seed=1)), run(config(seed=1))
    c = run(config(seed=2))
    sa, sb, sc = a.model.state_dict(), b.model.state_dict(), c.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_amp_is_off_on_cpu_and_sgd_uses_nesterov() -> None:
    state = run(config(amp=True, optimizer="sgd", momentum=0.8))
    assert state.scaler is None
    group = state.optimizer.param_groups[0]
    assert (
        type(state.optimizer).__name__ == "SGD" and group["nesterov"] and group["momentum"] == 0.8
    )


def test_progress_reports_one_task_per_epoch() -> None:
    progress = RecordingProgress()
    run(config(epochs=2), callbacks=[ProgressCallback(progress)])
    assert progress.state() == {
        "epoch 1/2": {"completed": 4, "total": 4, "done": True},
        "epoch 2/2": {"completed": 4, "total": 4, "done": True},
    }


# ------------------------------------------------------------------------------------ losses


def test_class_weights_inverse_frequency_and_auto_threshold() -> None:
    y = [0] * 6 + [1] * 2 + [2] * 0 + [3] * 4
    weights = class_weights_for(y, num_classes=4, multi_label=False, policy="balanced")
    assert weights.tolist() == pytest.approx([12 / (3 * 6), 12 / (3 * 2), 1.0, 12 / (3 * 4)])
    assert (
        class_weights_for([0, 0, 0, 1, 1], num_classes=2, multi_label=False, policy="auto") is None
    )
    assert (
        class_weights_for([0, 0, 0, 0, 1], num_classes=2, multi_label=False, policy="auto")
        is not None
    )
    assert class_weights_for(y, num_classes=4, multi_label=False, policy="none") is None
    multi = np.array([[1, 0], [1, 0], [1, 1], [0, 0]])
    pos = class_weights_for(multi, num_classes=2, multi_label=True, policy="auto")
    assert pos.tolist() == pytest.approx([1 / 3, 3.0])


def test_losses_use_weights_smoothing_and_bce_for_multi_label() -> None:
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.1, 0.2, 0.3]])
    weight = torch.tensor([1.0, 2.0, 0.5])
    single = make_loss(config(label_smoothing=0.1), multi_label=False, class_weights=weight)
    expected = F.cross_entropy(logits, torch.tensor([1, 2]), weight=weight, label_smoothing=0.1)
    assert single(logits, torch.tensor([1, 2])).item() == pytest.approx(expected.item())
    multi = make_loss(config(label_smoothing=0.2), multi_label=True, class_weights=weight)
    targets = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    smoothed = targets * 0.8 + 0.1
    by_hand = -(
        weight * smoothed * F.logsigmoid(logits) + (1 - smoothed) * F.logsigmoid(-logits)
    ).mean()
    assert multi(logits, targets).item() == pytest.approx(by_hand.item(), rel=1e-6)
