"""Train a classifier from a :class:`~aifab.core.config.Spec` and in-memory examples.

:func:`train_classifier` is the entry point the pipeline calls: it resolves ``arch: auto`` and the
learning rate, fits the preprocessing on the training split (image normalisation, or a tokenizer
for from-scratch text nets), builds the network, trains it with :func:`aifab.train.loop.fit`
(early stopping, progress and checkpoints as callbacks) and returns a :class:`TrainedClassifier`
whose parts are what a model version stores: weights, JSON preprocessing, ``tokenizer.json`` and the
parameters :func:`rebuild_model` needs.

>>> from aifab.core.config import parse, Spec
>>> spec = parse(Spec, {"task": "text-classification", "dataset": "demo",
...     "model": {"arch": "textcnn", "vocab_size": 100, "embed_dim": 16, "num_filters": 8},
...     "train": {"epochs": 2, "batch_size": 4}})
>>> texts = ["good fine great", "bad awful poor"] * 4
>>> trained = train_classifier(spec, train_inputs=texts, train_targets=["pos", "neg"] * 4,
...     val_inputs=texts[:2], val_targets=["pos", "neg"], labels=["neg", "pos"])
>>> predict_proba(trained.model, trained.preprocessing, trained.tokenizer_json, ["great"]).shape
(1, 2)
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aifab.core.config import IMAGE_ARCHS, ModelConfig, Spec
from aifab.core.errors import ConfigError, Conflict, InputError
from aifab.data.transforms import ImagePreprocessor, TextPreprocessor
from aifab.train.callbacks import (
    CallbackProtocol,
    CheckpointCallback,
    EarlyStopping,
    ProgressCallback,
)
from aifab.train.loop import Batch

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn

    from aifab.core.progress import Progress

__all__ = ["TrainedClassifier", "predict_proba", "rebuild_model", "train_classifier"]

IMAGE_TASK = "image-classification"


@dataclass
class TrainedClassifier:
    """A trained classifier and everything a model version stores about it."""

    model: nn.Module
    """Best weights loaded, eval mode, on the CPU."""
    preprocessing: dict[str, Any]
    """JSON-ready: ``kind`` (``image``/``text``), the preprocessor's parameters, ``labels``,
    ``multi_label``."""
    tokenizer_json: str | None
    """The ``tokenizer.json`` text (text models only)."""
    model_params: dict[str, Any]
    """What :func:`rebuild_model` takes: ``task``, ``arch``, ``num_classes``, ``vocab_size``,
    ``in_channels``, ``image_size``, ``pad_id`` and ``model`` (the resolved ModelConfig)."""
    history: list[dict[str, Any]]
    best_epoch: int
    effective_spec: dict[str, Any]
    """The spec with ``model.arch``, ``train.lr`` (images: ``model.image_size``) resolved and
    every default written."""
    stop_reason: str | None = None


def train_classifier(
    spec: Spec,
    *,
    train_inputs: Sequence[bytes] | Sequence[str],
    train_targets: Sequence[Any],
    val_inputs: Sequence[bytes] | Sequence[str],
    val_targets: Sequence[Any],
    labels: list[str],
    checkpoint_path: Path | None = None,
    resume: bool = False,
    progress: Progress | None = None,
    callbacks: Sequence[CallbackProtocol] = (),
    device: str | None = None,
    teacher_probs: Any = None,
    start: TrainedClassifier | None = None,
) -> TrainedClassifier:
    """Train the classifier ``spec`` describes on the given examples.

    Inputs are image bytes (``image-classification``) or strings (``text-classification``).
    Targets are label names: one per example, or with ``spec.multi_label`` a list of names per
    example (possibly empty); ``labels`` fixes the class order of the outputs. ``device``
    overrides ``spec.train.device``.

    Distillation: ``teacher_probs`` ``(N, C)`` holds a teacher's probabilities for each training
    input, columns in ``labels`` order; it goes with ``spec.train.distill`` (its temperature and
    alpha), and one without the other is a :class:`~aifab.core.errors.ConfigError`.

    With ``checkpoint_path`` a checkpoint is written after every epoch. With ``resume=True`` and
    that file present, training continues after the saved epoch with every state restored, and
    ends with the same weights as an uninterrupted run (on the CPU); a checkpoint of a different
    spec or data is a :class:`~aifab.core.errors.Conflict`. Without the file, training starts
    from the beginning.

    ``start`` fine-tunes that classifier (its network, preprocessing and tokenizer, in place)
    instead of building a fresh one: a pruned model's short fine-tune uses it.
    """
    import torch

    from aifab.train.checkpoint import load_checkpoint
    from aifab.train.loop import class_weights_for, fit, seed_everything

    kind = "image" if spec.task == IMAGE_TASK else "text"
    labels = _check_labels(labels)
    _check_inputs(train_inputs, train_targets, kind, "train")
    _check_inputs(val_inputs, val_targets, kind, "val")
    if len(train_inputs) == 0:
        raise InputError("train: no training examples")
    y_train = _encode_targets(train_targets, labels, spec.multi_label, "train")
    y_val = _encode_targets(val_targets, labels, spec.multi_label, "val")
    teacher = _teacher_tensor(teacher_probs, spec, len(train_inputs), len(labels))
    run_device = _resolve_device(device or spec.train.device)
    fingerprint = _fingerprint(spec, labels, train_inputs, y_train, val_inputs, y_val, teacher)

    saved = None
    if resume and checkpoint_path is not None and Path(checkpoint_path).is_file():
        saved = load_checkpoint(checkpoint_path)
        if (saved.get("meta") or {}).get("fingerprint") != fingerprint:
            raise Conflict(
                f"{checkpoint_path}: this checkpoint belongs to another run (the spec, labels or "
                "data differ); delete it or train without resume"
            )

    cfg = spec.train
    seed_everything(cfg.seed)  # before the model is built: its initial weights are random
    if start is not None:
        preprocessing, tokenizer_json = start.preprocessing, start.tokenizer_json
        model_params = start.model_params
    elif saved is not None:
        meta = saved["meta"]
        preprocessing, tokenizer_json = meta["preprocessing"], meta["tokenizer_json"]
        model_params = meta["model_params"]
    else:
        preprocessing, tokenizer_json, model_params = _prepare(spec, train_inputs, labels, kind)
    model_cfg = ModelConfig.model_validate(model_params["model"])
    lr = cfg.lr if cfg.lr is not None else _default_lr(model_cfg)
    # A pretrained encoder is fine-tuned for a few epochs; a network from scratch needs more.
    epochs = cfg.epochs if cfg.epochs is not None else (3 if model_cfg.arch.startswith("pretrained:") else 10)
    train_cfg = cfg.model_copy(update={"lr": lr, "epochs": epochs})

    model = start.model if start is not None else _build(model_params, load_pretrained=saved is None)
    if kind == "image":
        image_pre = ImagePreprocessor.from_dict(preprocessing)
        augment = image_pre.train_transform(cfg.augment)
        encoder: Any = image_pre
    else:
        assert tokenizer_json is not None
        encoder = TextPreprocessor.from_files(tokenizer_json, preprocessing)
        augment = None
    train_collate = _Collate(train_inputs, y_train, encoder, augment, "train", teacher)
    val_collate = _Collate(val_inputs, y_val, encoder, None, "val")
    weights = class_weights_for(
        y_train.numpy(),
        num_classes=len(labels),
        multi_label=spec.multi_label,
        policy=cfg.class_weights,
    )

    def train_loader(epoch: int, generator: torch.Generator) -> Any:
        n = len(train_inputs)
        return torch.utils.data.DataLoader(
            range(n),
            batch_size=cfg.batch_size,
            shuffle=True,
            generator=generator,
            collate_fn=train_collate,
            num_workers=cfg.num_workers,
            # A last batch of one breaks BatchNorm's statistics; drop it instead.
            drop_last=n > cfg.batch_size and n % cfg.batch_size == 1,
        )

    val_loader = torch.utils.data.DataLoader(
        range(len(val_inputs)),
        batch_size=max(cfg.batch_size, 64),
        shuffle=False,
        collate_fn=val_collate,
        num_workers=cfg.num_workers,
    )
    stock: list[CallbackProtocol] = []
    if cfg.early_stopping is not None:
        es = cfg.early_stopping
        stock.append(EarlyStopping(es.metric, es.mode, es.patience, es.min_delta))
    if progress is not None:
        stock.append(ProgressCallback(progress))
    if checkpoint_path is not None:
        stock.append(CheckpointCallback(checkpoint_path))
    meta = {
        "fingerprint": fingerprint,
        "preprocessing": preprocessing,
        "tokenizer_json": tokenizer_json,
        "model_params": model_params,
    }
    state = fit(
        model,
        train_loader_factory=train_loader,
        val_batches=val_loader,
        config=train_cfg,
        multi_label=spec.multi_label,
        num_classes=len(labels),
        class_weights=weights,
        callbacks=[*stock, *callbacks],
        resume=saved,
        device=run_device,
        meta=meta,
    )
    model = state.model.to("cpu").eval()
    return TrainedClassifier(
        model=model,
        preprocessing=preprocessing,
        tokenizer_json=tokenizer_json,
        model_params=model_params,
        history=state.history,
        best_epoch=state.best_epoch,
        effective_spec=_effective_spec(spec, model_params, lr, epochs),
        stop_reason=state.stop_reason,
    )


def rebuild_model(model_params: dict[str, Any]) -> nn.Module:
    """The network of a trained classifier with fresh weights, ready for ``load_state_dict``
    (named pretrained weights are not downloaded or read: the saved state dict replaces them).

    >>> net = rebuild_model({"task": "image-classification", "arch": "smallcnn", "num_classes": 3,
    ...                      "in_channels": 1, "image_size": 8, "model": {"arch": "smallcnn"}})
    >>> type(net).__name__, net.num_classes
    ('SmallCNN', 3)
    """
    return _build(model_params, load_pretrained=False)


def make_encoder(preprocessing: dict[str, Any], tokenizer_json: str | None) -> Any:
    """The preprocessor a model version's ``preprocessing.json`` (and ``tokenizer.json``) describe."""
    kind = preprocessing.get("kind")
    if kind == "image":
        return ImagePreprocessor.from_dict(preprocessing)
    if kind == "text":
        if tokenizer_json is None:
            raise ConfigError("preprocessing: a text model needs its tokenizer.json; got none")
        return TextPreprocessor.from_files(tokenizer_json, preprocessing)
    raise ConfigError(f"preprocessing: kind must be 'image' or 'text'; got {kind!r}")


def predict_proba(
    model: nn.Module,
    preprocessing: dict[str, Any],
    tokenizer_json: str | None,
    inputs: Sequence[Any],
    *,
    batch_size: int = 64,
    device: str = "cpu",
    encoder: Any = None,
) -> np.ndarray:
    """Class probabilities ``(N, C)``: softmax (single-label) or per-class sigmoid (multi-label),
    with the preprocessing the model was trained with. The model is put in eval mode on ``device``.
    ``encoder`` is the preprocessor :func:`make_encoder` builds; a server passes it in so the
    tokenizer is not rebuilt from its JSON on every call (1-3 ms each).

    >>> import torch
    >>> net = rebuild_model({"task": "image-classification", "arch": "smallcnn", "num_classes": 2,
    ...                      "in_channels": 1, "model": {"arch": "smallcnn"}})
    >>> pre = {"kind": "image", "image_size": 8, "channels": 1, "mean": [0.5], "std": [0.5],
    ...        "labels": ["a", "b"], "multi_label": False}
    >>> predict_proba(net, pre, None, []).shape
    (0, 2)
    """
    import numpy as np
    import torch

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    labels = preprocessing.get("labels") or []
    multi_label = bool(preprocessing.get("multi_label", False))
    kind = preprocessing.get("kind")
    if encoder is None:
        encoder = make_encoder(preprocessing, tokenizer_json)
    if isinstance(inputs, str | bytes):
        raise TypeError("predict_proba takes a sequence of inputs, not one")
    _check_kind(inputs, kind, "input")
    model = model.to(device).eval()
    chunks = []
    with torch.no_grad():
        for start in range(0, len(inputs), batch_size):
            items = list(inputs[start : start + batch_size])
            batch_inputs = _encode_inputs(encoder, items, None, "input", start)
            logits = model(**{k: v.to(device) for k, v in batch_inputs.items()}).double()
            probs = torch.sigmoid(logits) if multi_label else torch.softmax(logits, dim=1)
            chunks.append(probs.cpu().numpy())
    if not chunks:
        width = len(labels) or int(getattr(model, "num_classes", 0))
        return np.zeros((0, width), dtype=np.float64)
    return np.concatenate(chunks)


# ------------------------------------------------------------------------------ preparation


def _prepare(
    spec: Spec, train_inputs: Sequence[Any], labels: list[str], kind: str
) -> tuple[dict[str, Any], str | None, dict[str, Any]]:
    """Fit the preprocessing and resolve the arch.

    Returns ``(preprocessing, tokenizer_json, model_params)``.
    """
    from aifab.models.build import choose_arch

    base = {"labels": list(labels), "multi_label": bool(spec.multi_label)}
    arch = spec.model.arch
    if kind == "image":
        pre = ImagePreprocessor.fit(
            train_inputs,  # type: ignore[arg-type]
            image_size=spec.model.image_size,
            seed=spec.train.seed,
            where="train row",
        )
        if arch == "auto":
            arch = choose_arch(
                spec.task,
                num_records=len(train_inputs),
                image_size=pre.image_size,
                has_pretrained_text=False,
            )
        model_cfg = spec.model.model_copy(update={"arch": arch, "image_size": pre.image_size})
        params = {
            "task": spec.task,
            "arch": arch,
            "num_classes": len(labels),
            "vocab_size": None,
            "in_channels": pre.channels,
            "image_size": pre.image_size,
            "pad_id": 0,
            "model": model_cfg.model_dump(mode="json"),
        }
        return {"kind": "image", **pre.to_dict(), **base}, None, params

    from aifab.models.tokenizer import load_pretrained_tokenizer, train_tokenizer

    if arch == "auto":
        from aifab.models.pretrained import packaged_encoder_available

        arch = choose_arch(
            spec.task,
            num_records=len(train_inputs),
            image_size=None,
            has_pretrained_text=packaged_encoder_available(),
        )
    if arch.startswith("pretrained:"):
        tok = load_pretrained_tokenizer(arch)
    else:
        tok = train_tokenizer(
            train_inputs,
            kind=spec.model.tokenizer,
            vocab_size=spec.model.vocab_size,  # type: ignore[arg-type]
        )
    text_pre = TextPreprocessor(tok.to_str(), max_length=spec.model.max_length)
    model_cfg = spec.model.model_copy(update={"arch": arch})
    params = {
        "task": spec.task,
        "arch": arch,
        "num_classes": len(labels),
        "vocab_size": text_pre.vocab_size,
        "in_channels": None,
        "image_size": None,
        "pad_id": text_pre.pad_id,
        "model": model_cfg.model_dump(mode="json"),
    }
    return {"kind": "text", **text_pre.to_dict(), **base}, text_pre.tokenizer_json, params


def _build(model_params: dict[str, Any], *, load_pretrained: bool) -> nn.Module:
    from aifab.models.build import build_model

    model_cfg = ModelConfig.model_validate(model_params["model"])
    task = model_params.get("task") or (
        IMAGE_TASK if model_cfg.arch in IMAGE_ARCHS else "text-classification"
    )
    return build_model(
        model_cfg,
        task=task,
        num_classes=int(model_params["num_classes"]),
        vocab_size=model_params.get("vocab_size"),
        in_channels=int(model_params.get("in_channels") or 3),
        image_size=model_params.get("image_size"),
        pad_id=int(model_params.get("pad_id") or 0),
        load_pretrained=load_pretrained,
        channels=model_params.get("channels"),  # the widths a structured pruning left
    )


def _default_lr(model_cfg: ModelConfig) -> float:
    from aifab.models.build import default_lr

    return default_lr(model_cfg.arch, pretrained=model_cfg.pretrained, frozen=model_cfg.freeze_encoder)


def _effective_spec(spec: Spec, model_params: dict[str, Any], lr: float, epochs: int) -> dict[str, Any]:
    data = spec.model_dump(mode="json")
    data["model"] = dict(model_params["model"])
    data["train"]["lr"] = lr
    data["train"]["epochs"] = epochs
    return Spec.model_validate(data).model_dump(mode="json")


def _resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device: {name!r} was asked for but no CUDA device is available")
    if name not in ("cpu",) and not name.startswith("cuda"):
        raise ConfigError(f"train.device: must be 'auto', 'cpu' or 'cuda'; got {name!r}")
    return name


# ----------------------------------------------------------------------------------- inputs


@dataclass
class _Collate:
    """Indices -> one :class:`Batch` (decoding, augmenting and tokenizing on the fly).

    A class rather than a closure so DataLoader worker processes can receive it.
    """

    inputs: Sequence[Any]
    targets: torch.Tensor
    encoder: ImagePreprocessor | TextPreprocessor
    augment: Any
    split: str
    teacher: torch.Tensor | None = None
    """Distillation: the teacher's probabilities ``(N, C)``, sliced with the targets."""

    def __call__(self, indices: list[int]) -> Batch:
        items = [self.inputs[i] for i in indices]
        inputs = _encode_inputs(self.encoder, items, self.augment, self.split, indices)
        teacher = self.teacher[indices] if self.teacher is not None else None
        return Batch(inputs, self.targets[indices], teacher)


def _encode_inputs(
    encoder: ImagePreprocessor | TextPreprocessor,
    items: list[Any],
    augment: Any,
    split: str,
    rows: int | list[int],
) -> dict[str, torch.Tensor]:
    import torch

    if isinstance(encoder, TextPreprocessor):
        ids, mask = encoder(items)
        return {"input_ids": ids, "attention_mask": mask}
    numbers = rows if isinstance(rows, list) else list(range(rows, rows + len(items)))
    images = []
    for row, data in zip(numbers, items, strict=True):
        x = encoder.decode(data, where=f"{split} row {row}")  # (C, H, W)
        images.append(augment(x) if augment is not None else x)
    return {"images": encoder.normalize(torch.stack(images))}  # (B, C, H, W)


def _check_labels(labels: list[str]) -> list[str]:
    if not labels:
        raise InputError("labels: empty; a classifier needs at least one label")
    if not all(isinstance(x, str) for x in labels):
        raise InputError(f"labels: must be strings; got {labels!r}")
    if len(set(labels)) != len(labels):
        repeated = sorted({x for x in labels if labels.count(x) > 1})
        raise InputError(f"labels: names must be unique; repeated: {repeated}")
    return list(labels)


def _check_inputs(inputs: Sequence[Any], targets: Sequence[Any], kind: str, split: str) -> None:
    if len(inputs) != len(targets):
        raise InputError(
            f"{split}: {len(inputs)} inputs but {len(targets)} targets; they must pair up"
        )
    _check_kind(inputs, kind, split)


def _check_kind(inputs: Sequence[Any], kind: str | None, split: str) -> None:
    want: tuple[type, ...] = (bytes, bytearray, memoryview) if kind == "image" else (str,)
    for row, item in enumerate(inputs):
        if not isinstance(item, want):
            raise InputError(
                f"{split} row {row}: expected {'image bytes' if kind == 'image' else 'a string'}; "
                f"got {type(item).__name__}"
            )


def _encode_targets(
    targets: Sequence[Any], labels: list[str], multi_label: bool, split: str
) -> torch.Tensor:
    import torch

    index = {name: i for i, name in enumerate(labels)}
    if multi_label:
        matrix = torch.zeros((len(targets), len(labels)), dtype=torch.float32)
        for row, names in enumerate(targets):
            if isinstance(names, str) or not isinstance(names, Sequence | set | frozenset):
                raise InputError(
                    f"{split} row {row}: multi-label targets are lists of label names; "
                    f"got {names!r}"
                )
            for name in names:
                if name not in index:
                    raise InputError(_unknown(split, row, name, labels))
                matrix[row, index[name]] = 1.0
        return matrix
    out = torch.zeros(len(targets), dtype=torch.long)
    for row, name in enumerate(targets):
        if not isinstance(name, str) or name not in index:
            raise InputError(_unknown(split, row, name, labels))
        out[row] = index[name]
    return out


def _unknown(split: str, row: int, name: Any, labels: list[str]) -> str:
    from aifab.core.errors import nearest

    hint = nearest(name, labels) if isinstance(name, str) else None
    return (
        f"{split} row {row}: label {name!r} is not one of the labels"
        + (f" (did you mean {hint!r}?)" if hint else "")
        + f"; known: {', '.join(labels[:20])}{' ...' if len(labels) > 20 else ''}"
    )


def _fingerprint(
    spec: Spec,
    labels: list[str],
    train_inputs: Sequence[Any],
    y_train: torch.Tensor,
    val_inputs: Sequence[Any],
    y_val: torch.Tensor,
    teacher: torch.Tensor | None = None,
) -> str:
    """A hash of what decides a run's result: the spec's model and training settings, labels and
    the data itself (and a distillation teacher's probabilities). Names (``dataset`` may be
    re-pinned as ``NAME@VERSION`` on resume, ``name``), the gate, the search space, the time limit
    and the device do not change the weights and are left out."""
    h = hashlib.blake2b(digest_size=16)
    settings = spec.model_dump(
        mode="json",
        exclude={
            "dataset": True,
            "name": True,
            "gate": True,
            "search": True,
            "train": {"max_minutes", "device"},
        },
    )
    h.update(json.dumps([settings, labels], sort_keys=True).encode())
    for items in (train_inputs, val_inputs):
        h.update(len(items).to_bytes(8, "little"))
        for item in items:
            data = item.encode("utf-8") if isinstance(item, str) else bytes(item)
            h.update(len(data).to_bytes(8, "little"))
            h.update(data)
    for y in (y_train, y_val):
        h.update(y.numpy().tobytes())
    if teacher is not None:
        h.update(teacher.numpy().tobytes())
    return h.hexdigest()


def _teacher_tensor(teacher_probs: Any, spec: Spec, rows: int, classes: int) -> torch.Tensor | None:
    """The teacher's probabilities as a float tensor ``(rows, classes)``, checked against the spec."""
    import numpy as np
    import torch

    if teacher_probs is None:
        if spec.train.distill is not None:
            raise ConfigError(
                "train.distill: distillation needs a teacher's probabilities; distill from a model "
                "version with `aifab distill TEACHER`, or remove train.distill"
            )
        return None
    if spec.train.distill is None:
        raise ConfigError("teacher_probs: given without train.distill (its temperature and alpha); set train.distill")
    probs = np.asarray(teacher_probs, dtype=np.float32)
    if probs.shape != (rows, classes):
        raise InputError(
            f"teacher_probs: expected one row per training input and one column per label, "
            f"({rows}, {classes}); got {probs.shape}"
        )
    if not np.all(np.isfinite(probs)) or probs.min() < 0 or probs.max() > 1:
        raise InputError("teacher_probs: probabilities must be finite numbers in [0, 1]")
    return torch.from_numpy(probs.copy())
