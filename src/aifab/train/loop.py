"""The training loop: plain functions over a model, batches and a :class:`TrainConfig`.

Batches follow one convention: a :class:`Batch` holds ``inputs``, a dict whose keys are the
model's ``forward`` parameter names, and the model is called as ``model(**batch.inputs)``:
``{"images": (B, C, H, W)}`` for image models, ``{"input_ids": (B, T), "attention_mask": (B, T)}``
for text models. ``targets`` are class indices ``(B,)`` (single-label) or a 0/1 float matrix
``(B, C)`` (multi-label).

Determinism: :func:`fit` seeds torch, numpy and ``random`` from ``config.seed`` at the start and
again at the start of every epoch (from ``seed`` and the epoch number), and the data order of
epoch ``e`` comes from a ``torch.Generator`` seeded with ``seed + e``. Every epoch's randomness
is thus a function of (seed, epoch) alone: a run resumed after epoch ``k`` draws the same batches,
augmentations and dropout masks as the uninterrupted run, and ends with the same weights (on the
CPU; GPU kernels are not all bitwise repeatable).

>>> import torch
>>> from aifab.core.config import TrainConfig
>>> _ = torch.manual_seed(0); net = torch.nn.Linear(2, 2)
>>> data = [Batch({"input": torch.tensor([[0.0, 1.0], [1.0, 0.0]])}, torch.tensor([0, 1]))]
>>> state = fit(net, train_loader_factory=lambda epoch, gen: data, val_batches=data,
...             config=TrainConfig(epochs=3, lr=0.5, schedule="none"),
...             multi_label=False, num_classes=2)
>>> len(state.history), state.history[-1]["val.accuracy"], state.best_epoch <= 3
(3, 1.0, True)
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import random
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from aifab.core.errors import ConfigError, nearest
from aifab.train.callbacks import CallbackProtocol, TrainState, improved

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn

    from aifab.core.config import TrainConfig

logger = logging.getLogger(__name__)

__all__ = [
    "HISTORY_METRICS",
    "Batch",
    "class_weights_for",
    "distillation_loss",
    "epoch_generator",
    "fit",
    "make_loss",
    "make_optimizer",
    "make_scheduler",
    "seed_everything",
]

# The val.* averages copied from classification_metrics into each epoch's record.
_VAL_METRICS = (
    "accuracy",
    "macro_precision",
    "macro_recall",
    "macro_f1",
    "micro_precision",
    "micro_recall",
    "micro_f1",
    "weighted_precision",
    "weighted_recall",
    "weighted_f1",
    "ece",
)
HISTORY_METRICS = ("train.loss", "val.loss", *(f"val.{name}" for name in _VAL_METRICS))
"""The metrics every epoch records; any of them can drive early stopping and best-model choice."""
_LOWER_IS_BETTER = ("train.loss", "val.loss", "val.ece")
# Schedules stepped after every optimizer step; the others step once per epoch.
_PER_STEP = ("cosine", "onecycle")


class Batch(NamedTuple):
    """One batch: the model's keyword inputs, the targets and, when distilling, the teacher's
    probabilities ``(B, C)`` that the loss of ``config.distill`` needs."""

    inputs: dict[str, torch.Tensor]
    targets: torch.Tensor
    teacher: torch.Tensor | None = None


LoaderFactory = Callable[[int, "torch.Generator"], Iterable[Batch]]
"""``factory(epoch, generator)`` -> the epoch's batches, shuffled with ``generator``; the result
must support ``len()`` (the number of batches), as a ``DataLoader`` or a list does."""


def fit(
    model: nn.Module,
    *,
    train_loader_factory: LoaderFactory,
    val_batches: Iterable[Batch],
    config: TrainConfig,
    multi_label: bool,
    num_classes: int,
    class_weights: torch.Tensor | None = None,
    callbacks: Sequence[CallbackProtocol] = (),
    resume: dict[str, Any] | None = None,
    device: str | torch.device = "cpu",
    meta: dict[str, Any] | None = None,
) -> TrainState:
    """Train ``model`` for ``config.epochs`` epochs (or until a callback or ``max_minutes`` stops
    it), validate after each epoch, and end with the best epoch's weights loaded.

    ``config.lr`` must be resolved (not ``None``). ``val_batches`` is iterated once per epoch, so
    it must be re-iterable (a list or a ``DataLoader``). ``resume`` is a checkpoint dict
    (:func:`aifab.train.checkpoint.load_checkpoint`): training continues after its epoch with
    every state restored. ``meta`` is stored in ``state.meta`` (and so in checkpoints).
    The model stays on ``device``.
    """
    import torch

    if config.lr is None:
        raise ValueError("config.lr is None; resolve it (models.build.default_lr) before fit()")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1; got {num_classes}")
    device = torch.device(device)
    monitor, mode = _monitor(config)

    seed_everything(config.seed)
    model.to(device)
    first = int(resume["epoch"]) + 1 if resume is not None else 1
    loader = train_loader_factory(first, epoch_generator(config.seed, first))
    steps_per_epoch = len(loader)  # type: ignore[arg-type]
    if steps_per_epoch < 1:
        raise ConfigError("train: the training data yields no batch; it needs at least one record")
    optimizer = make_optimizer(model, config)
    scheduler = make_scheduler(optimizer, config, steps_per_epoch=steps_per_epoch, mode=mode)
    use_amp = bool(config.amp) and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda") if use_amp else None
    loss_fn = make_loss(config, multi_label=multi_label, class_weights=class_weights, device=device)
    state = TrainState(
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=scaler,
        epochs=config.epochs,
        steps_per_epoch=steps_per_epoch,
        monitor=monitor,
        mode=mode,
        meta=dict(meta or {}),
    )
    if resume is not None:
        _restore(state, resume)
        logger.info("resuming after epoch %d of %d", state.epoch, config.epochs)

    for cb in callbacks:
        cb.on_train_start(state)
    with _deterministic_cuda(device):
        for epoch in range(first, config.epochs + 1):
            if state.stop:
                break
            if epoch != first:
                loader = train_loader_factory(epoch, epoch_generator(config.seed, epoch))
            seed_everything(_epoch_seed(config.seed, epoch))
            state.epoch = epoch
            started = time.perf_counter()
            for cb in callbacks:
                cb.on_epoch_start(state)
            train_loss, lr = _train_epoch(
                state, loader, loss_fn, config, device, use_amp, callbacks
            )
            val = _evaluate(model, val_batches, device, multi_label, num_classes, use_amp)
            record: dict[str, Any] = {"epoch": epoch, "train.loss": train_loss, **val, "lr": lr}
            value = record[monitor]
            if value is not None and improved(value, state.best_metric, mode=mode):
                _keep_best(state, value, epoch)
            elif state.best_metric is None and value is None:
                _keep_best(state, None, epoch)  # nothing to compare on: the latest epoch wins
            if config.schedule == "step":
                scheduler.step()
            elif config.schedule == "plateau" and value is not None:
                scheduler.step(value)
            record["seconds"] = time.perf_counter() - started
            state.elapsed_seconds += record["seconds"]
            state.history.append(record)
            if (
                config.max_minutes is not None
                and state.elapsed_seconds >= config.max_minutes * 60
                and epoch < config.epochs
            ):
                state.stop = True
                state.stop_reason = f"time limit: train.max_minutes={config.max_minutes} reached"
            for cb in callbacks:
                cb.on_epoch_end(state)

    if state.stop_reason:
        logger.info("stopped after epoch %d: %s", state.epoch, state.stop_reason)
    if state.best_weights is not None:
        model.load_state_dict(state.best_weights)
    for cb in callbacks:
        cb.on_train_end(state)
    return state


# ------------------------------------------------------------------------------- components


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW or SGD (momentum, Nesterov) at ``config.lr``; no weight decay on biases and norms.

    >>> import torch
    >>> from aifab.core.config import TrainConfig
    >>> opt = make_optimizer(torch.nn.Linear(2, 2), TrainConfig(optimizer="sgd", lr=0.1))
    >>> type(opt).__name__, opt.param_groups[0]["nesterov"]
    ('SGD', True)
    """
    import torch

    from aifab.models.build import param_groups

    assert config.lr is not None
    groups = param_groups(model, lr=config.lr, weight_decay=config.weight_decay)
    if not groups:
        raise ConfigError("model: no trainable parameter (is every layer frozen?)")
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            groups, lr=config.lr, momentum=config.momentum, nesterov=config.momentum > 0
        )
    return torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)


def make_scheduler(
    optimizer: torch.optim.Optimizer,
    config: TrainConfig,
    *,
    steps_per_epoch: int,
    mode: str = "max",
) -> Any | None:
    """The learning-rate schedule ``config.schedule`` names.

    ``cosine``: linear warmup over ``warmup_ratio`` of all steps, then cosine decay to 0 (per
    step). ``onecycle``: ``OneCycleLR`` peaking at ``lr`` after ``warmup_ratio`` of the steps (per
    step). ``step``: ``StepLR(step_size, gamma)`` (per epoch). ``plateau``: ``ReduceLROnPlateau``
    on the early-stopping metric, factor ``gamma``, patience half the early-stopping patience
    (so the rate drops before training stops). ``none``: ``None``.

    >>> import torch
    >>> from aifab.core.config import TrainConfig
    >>> opt = torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=1.0)
    >>> s = make_scheduler(opt, TrainConfig(lr=1.0, epochs=1, warmup_ratio=0.5), steps_per_epoch=4)
    >>> lrs = []
    >>> for _ in range(4):
    ...     lrs.append(round(opt.param_groups[0]["lr"], 3)); opt.step(); s.step()
    >>> lrs
    [0.5, 1.0, 1.0, 0.5]
    """
    import torch

    total = max(config.epochs * steps_per_epoch, 1)
    if config.schedule == "cosine":
        warmup = int(round(config.warmup_ratio * total))

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = (step - warmup) / max(total - warmup, 1)
            return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    if config.schedule == "onecycle":
        # OneCycleLR needs a warmup of at least one step.
        pct_start = min(max(config.warmup_ratio, 1.0 / total), 0.99)
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=[group["lr"] for group in optimizer.param_groups],
            total_steps=total,
            pct_start=pct_start,
        )
    if config.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(
            optimizer, step_size=config.step_size, gamma=config.gamma
        )
    if config.schedule == "plateau":
        patience = config.early_stopping.patience if config.early_stopping else 2
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode=mode, factor=config.gamma, patience=max(patience // 2, 0)
        )
    return None


def make_loss(
    config: TrainConfig,
    *,
    multi_label: bool,
    class_weights: torch.Tensor | None = None,
    device: str | torch.device = "cpu",
) -> Callable[..., torch.Tensor]:
    """``loss(logits, targets)``: cross-entropy (class weights, label smoothing) for one label,
    binary cross-entropy with logits (``pos_weight`` = class weights; smoothing pulls targets
    towards 0.5) for multi-label. With ``config.distill``: ``loss(logits, targets, teacher)``,
    that hard loss mixed with the teacher's soft targets (:func:`distillation_loss`).

    >>> import torch
    >>> from aifab.core.config import TrainConfig
    >>> loss = make_loss(TrainConfig(), multi_label=False)
    >>> round(loss(torch.zeros(1, 2), torch.tensor([0])).item(), 4)  # ln 2
    0.6931
    """
    import torch

    weight = (
        class_weights.to(device=device, dtype=torch.float32) if class_weights is not None else None
    )
    smoothing = config.label_smoothing
    if multi_label:
        bce = torch.nn.BCEWithLogitsLoss(pos_weight=weight)

        def multi(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
            targets = targets.float()
            if smoothing > 0:
                targets = targets * (1.0 - smoothing) + 0.5 * smoothing
            return bce(logits, targets)

        hard: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = multi
    else:
        hard = torch.nn.CrossEntropyLoss(weight=weight, label_smoothing=smoothing)
    if config.distill is None:
        return hard
    return distillation_loss(
        hard, temperature=config.distill.temperature, alpha=config.distill.alpha, multi_label=multi_label
    )


def distillation_loss(
    hard: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    temperature: float,
    alpha: float,
    multi_label: bool = False,
) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """``loss(logits, targets, teacher) = alpha * KL(teacher_T || student_T) * T^2 + (1 - alpha) * hard``.

    ``teacher`` holds the teacher's probabilities ``(B, C)`` at temperature 1 (what a model
    version's ``predict_proba`` gives); softening them at ``T`` is a softmax of ``log p / T``, the
    same as the teacher's logits over ``T``. ``T^2`` keeps the soft term's gradients on the scale
    of the hard one's (Hinton et al., 2015). Multi-label: each class is a Bernoulli softened
    through its log-odds, and the soft term is binary cross-entropy (the KL plus the teacher's
    entropy, a constant: the same gradients).

    >>> import torch
    >>> loss = distillation_loss(torch.nn.CrossEntropyLoss(), temperature=1.0, alpha=1.0)
    >>> round(loss(torch.zeros(1, 2), torch.tensor([0]), torch.tensor([[0.8, 0.2]])).item(), 4)
    0.1927
    """
    import torch
    from torch.nn import functional as F

    t = float(temperature)

    def loss(logits: torch.Tensor, targets: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        teacher = teacher.to(logits.dtype).clamp(1e-7, 1.0 - 1e-7)  # log(0) would be -inf
        if multi_label:
            soft_targets = torch.sigmoid(torch.logit(teacher) / t)
            soft = F.binary_cross_entropy_with_logits(logits / t, soft_targets)
        else:
            log_teacher = torch.log_softmax(torch.log(teacher) / t, dim=1)
            log_student = torch.log_softmax(logits / t, dim=1)
            soft = F.kl_div(log_student, log_teacher, log_target=True, reduction="batchmean")
        return alpha * soft * (t * t) + (1.0 - alpha) * hard(logits, targets)

    return loss


def class_weights_for(
    targets: Any, *, num_classes: int, multi_label: bool, policy: str
) -> torch.Tensor | None:
    """Loss weights against class imbalance, or ``None``.

    Single-label: inverse frequency ``N / (K * n_c)`` (K = classes present; an absent class gets
    1). Multi-label: ``pos_weight = negatives / positives`` per class (1 for a class with no
    positive). ``policy``: ``balanced`` always, ``none`` never, ``auto`` only when the imbalance
    ratio (largest / smallest class count; for multi-label the largest negatives/positives)
    exceeds 1.5.

    >>> [round(w, 3) for w in class_weights_for([0, 0, 0, 1], num_classes=2, multi_label=False,
    ...                                         policy="auto").tolist()]
    [0.667, 2.0]
    >>> class_weights_for([0, 1, 1, 0], num_classes=2, multi_label=False, policy="auto") is None
    True
    """
    import numpy as np
    import torch

    if policy == "none":
        return None
    y = np.asarray(targets)
    if multi_label:
        positives = y.reshape(len(y), num_classes).sum(axis=0).astype(np.float64)
        negatives = len(y) - positives
        weights = np.where(positives > 0, negatives / np.maximum(positives, 1), 1.0)
        weights = np.maximum(weights, 1e-3)  # a class present everywhere still trains a little
        ratio = float(weights.max()) if len(weights) else 1.0
    else:
        counts = np.bincount(y.astype(np.int64), minlength=num_classes).astype(np.float64)
        present = counts > 0
        if not present.any():
            return None
        ratio = float(counts[present].max() / counts[present].min())
        weights = np.ones(num_classes)
        weights[present] = counts.sum() / (present.sum() * counts[present])
    if policy == "auto" and ratio <= 1.5:
        return None
    return torch.tensor(weights, dtype=torch.float32)


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), numpy's global generator and ``random``."""
    import numpy as np
    import torch

    torch.manual_seed(seed)  # also seeds every CUDA device
    np.random.seed(seed % 2**32)
    random.seed(seed)


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator that orders epoch ``epoch``'s data: seeded with ``seed + epoch``.

    >>> import torch
    >>> torch.equal(torch.randperm(5, generator=epoch_generator(0, 2)),
    ...             torch.randperm(5, generator=epoch_generator(1, 1)))
    True
    """
    import torch

    return torch.Generator().manual_seed(seed + epoch)


def _epoch_seed(seed: int, epoch: int) -> int:
    """A seed for the global generators in one epoch, independent of :func:`epoch_generator`'s
    stream (the same number would make dropout masks repeat the shuffle's draws)."""
    import numpy as np

    return int(np.random.SeedSequence([seed % 2**63, epoch, 0xA1FAB]).generate_state(1)[0])


# ------------------------------------------------------------------------------------ steps


def _train_epoch(
    state: TrainState,
    loader: Iterable[Batch],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    config: TrainConfig,
    device: torch.device,
    use_amp: bool,
    callbacks: Sequence[CallbackProtocol],
) -> tuple[float, float]:
    """One pass over ``loader``: ``(mean loss per example, the rate of the last step)``."""
    import torch

    model, optimizer, scaler = state.model, state.optimizer, state.scaler
    model.train()
    total, count = 0.0, 0
    lr = max(group["lr"] for group in optimizer.param_groups)
    for batch in loader:
        inputs = {k: v.to(device, non_blocking=True) for k, v in batch.inputs.items()}
        targets = batch.targets.to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
            logits = model(**inputs)  # (B, C)
        if batch.teacher is None:
            loss = loss_fn(logits.float(), targets)  # the loss in float32 even under AMP
        else:
            loss = loss_fn(logits.float(), targets, batch.teacher.to(device, non_blocking=True))
        value = float(loss.detach())
        if not math.isfinite(value) and scaler is None:
            raise ConfigError(
                f"train: the loss became {value} at epoch {state.epoch}, step {state.step + 1}; "
                f"lower train.lr (now {config.lr}) or set train.grad_clip"
            )
        if scaler is not None:
            scaler.scale(loss).backward()
            if config.grad_clip is not None:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            scaler.step(optimizer)  # skips the step when AMP produced inf/nan gradients
            scaler.update()
        else:
            loss.backward()
            if config.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
        lr = max(group["lr"] for group in optimizer.param_groups)
        if config.schedule in _PER_STEP:
            state.scheduler.step()
        state.step += 1
        state.batch_loss = value
        size = int(targets.shape[0])
        total += value * size
        count += size
        for cb in callbacks:
            cb.on_batch_end(state)
    return total / max(count, 1), lr


def _evaluate(
    model: nn.Module,
    batches: Iterable[Batch],
    device: torch.device,
    multi_label: bool,
    num_classes: int,
    use_amp: bool,
) -> dict[str, float | None]:
    """``val.loss`` (unweighted, unsmoothed: the model's true log loss) and the val averages."""
    import torch
    from torch.nn import functional as F

    from aifab.evaluate.metrics import classification_metrics

    model.eval()
    all_logits, all_targets = [], []
    with torch.no_grad():
        for batch in batches:
            inputs = {k: v.to(device, non_blocking=True) for k, v in batch.inputs.items()}
            with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
                logits = model(**inputs)
            all_logits.append(logits.float().cpu())
            all_targets.append(batch.targets.cpu())
    empty: dict[str, float | None] = {"val.loss": None, **{f"val.{m}": None for m in _VAL_METRICS}}
    if not all_logits or sum(len(t) for t in all_targets) == 0:
        return empty
    logits = torch.cat(all_logits).double()  # (N, C)
    targets = torch.cat(all_targets)
    if multi_label:
        loss = F.binary_cross_entropy_with_logits(logits, targets.double())
        probs = torch.sigmoid(logits)
        y: np.ndarray | Any = targets.round().long().numpy()
    else:
        loss = F.cross_entropy(logits, targets.long())
        probs = torch.softmax(logits, dim=1)
        y = targets.long().numpy()
    metrics = classification_metrics(
        y, probs.numpy(), labels=[str(c) for c in range(num_classes)], multi_label=multi_label
    )
    out: dict[str, float | None] = {"val.loss": float(loss)}
    out.update({f"val.{m}": float(metrics[m]) for m in _VAL_METRICS})
    return out


# ---------------------------------------------------------------------------------- helpers


def _monitor(config: TrainConfig) -> tuple[str, str]:
    """The metric that picks the best epoch (the early-stopping one) and its direction."""
    es = config.early_stopping
    metric, mode = (es.metric, es.mode) if es is not None else ("val.macro_f1", "max")
    if metric not in HISTORY_METRICS:
        hint = nearest(metric, list(HISTORY_METRICS))
        raise ConfigError(
            f"train.early_stopping.metric: {metric!r} is not recorded"
            + (f" (did you mean {hint!r}?)" if hint else "")
            + f"; choose one of {', '.join(HISTORY_METRICS)}"
        )
    expected = "min" if metric in _LOWER_IS_BETTER else "max"
    if mode != expected:
        raise ConfigError(
            f"train.early_stopping.mode: {metric} is {'lower' if expected == 'min' else 'higher'} "
            f"is better, so mode must be {expected!r}; got {mode!r}"
        )
    return metric, mode


def _keep_best(state: TrainState, value: float | None, epoch: int) -> None:
    state.best_metric = value
    state.best_epoch = epoch
    state.best_weights = {
        k: v.detach().to("cpu", copy=True) for k, v in state.model.state_dict().items()
    }


def _restore(state: TrainState, ckpt: dict[str, Any]) -> None:
    from aifab.train.checkpoint import restore_rng

    if int(ckpt.get("steps_per_epoch", state.steps_per_epoch)) != state.steps_per_epoch:
        raise ConfigError(
            f"resume: the checkpoint was written with {ckpt['steps_per_epoch']} batches per epoch, "
            f"this run has {state.steps_per_epoch}; the data or batch size changed"
        )
    state.model.load_state_dict(ckpt["model"])
    state.optimizer.load_state_dict(ckpt["optimizer"])
    if state.scheduler is not None and ckpt.get("scheduler") is not None:
        state.scheduler.load_state_dict(ckpt["scheduler"])
    if state.scaler is not None and ckpt.get("scaler"):
        state.scaler.load_state_dict(ckpt["scaler"])
    state.epoch = int(ckpt["epoch"])
    state.step = int(ckpt.get("step", 0))
    state.history = [dict(record) for record in ckpt["history"]]
    state.best_metric = ckpt.get("best_metric")
    state.best_epoch = int(ckpt.get("best_epoch", 0))
    best = ckpt.get("best_weights")
    state.best_weights = copy.copy(best) if best is not None else None
    state.stop = bool(ckpt.get("stop", False))
    state.stop_reason = ckpt.get("stop_reason")
    state.elapsed_seconds = float(ckpt.get("elapsed_seconds", 0.0))
    if not state.meta:
        state.meta = dict(ckpt.get("meta") or {})
    restore_rng(ckpt["rng"])


@contextlib.contextmanager
def _deterministic_cuda(device: torch.device) -> Iterator[None]:
    """On CUDA, ask cuDNN for deterministic kernels while training; restore the flags after."""
    if device.type != "cuda":
        yield
        return
    import torch

    saved = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved
