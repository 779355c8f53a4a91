"""Knowledge distillation: the student's spec and the soft targets it learns from.

A student is a small network trained on the teacher's training split with the loss of
``train.distill`` (:func:`aifab.train.loop.distillation_loss`): ``alpha`` of the KL divergence
to the teacher's probabilities softened at temperature ``T`` (times ``T^2``), ``1 - alpha`` of the
usual cross-entropy on the hard labels. The teacher is any model version, an ensemble included;
its probabilities are computed once, on the un-augmented training inputs.

>>> teacher = {"task": "text-classification", "dataset": "sms@1f2e", "name": "sms",
...            "model": {"arch": "transformer", "max_length": 64, "embed_dim": 256},
...            "train": {"lr": 0.0003, "epochs": 5}}
>>> s = student_spec(teacher, kind="text")
>>> s.model.arch, s.model.max_length, s.model.embed_dim, s.train.lr, s.train.distill.temperature
('textcnn', 64, 128, None, 4.0)
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import numpy as np

from aifab.core.config import DistillConfig, Spec, parse
from aifab.core.errors import ConfigError, InputError

__all__ = ["STUDENT_ARCHS", "student_spec", "teacher_targets"]

STUDENT_ARCHS = {"text": "textcnn", "image": "smallcnn"}
"""The default student per input kind: the fastest network aifab trains from scratch."""

# How the input is read and encoded: the student keeps the teacher's, so both see the same data.
_INPUT_KEYS = ("image_size", "max_length", "tokenizer", "vocab_size")


def student_spec(
    teacher_spec: dict[str, Any],
    *,
    kind: str,
    arch: str | None = None,
    temperature: float | None = None,
    alpha: float | None = None,
    name: str | None = None,
    epochs: int | None = None,
) -> Spec:
    """The spec of a student of the teacher whose effective spec is ``teacher_spec``: the same
    task, dataset, labels handling, training schedule and gate; ``arch`` (default
    :data:`STUDENT_ARCHS` for the kind) with its default sizes and learning rate, the teacher's
    input settings (image size, text length, tokenizer); ``train.distill`` with ``temperature``
    and ``alpha`` (defaults of :class:`~aifab.core.config.DistillConfig`)."""
    if kind not in STUDENT_ARCHS:
        raise ConfigError(f"The 'kind' parameter of student_spec must be one of {', '.join(STUDENT_ARCHS)}. Got {kind!r} instead.")
    data = copy.deepcopy(teacher_spec)
    data.pop("search", None)
    teacher_model = data.get("model") or {}
    data["model"] = {k: teacher_model[k] for k in _INPUT_KEYS if teacher_model.get(k) is not None}
    data["model"]["arch"] = arch or STUDENT_ARCHS[kind]
    train = dict(data.get("train") or {})
    train["lr"] = None  # the teacher's rate suits the teacher's network, not the student's
    if epochs is not None:
        train["epochs"] = epochs
    distill = DistillConfig()
    train["distill"] = {
        "temperature": distill.temperature if temperature is None else temperature,
        "alpha": distill.alpha if alpha is None else alpha,
    }
    data["train"] = train
    if name is not None:
        data["name"] = name
    return parse(Spec, data, source="student spec")


def teacher_targets(
    probs: Any, teacher_labels: Sequence[str], labels: Sequence[str], *, multi_label: bool, teacher: str = "teacher"
) -> np.ndarray:
    """The teacher's probabilities ``(N, len(labels))`` with columns in the student's label order
    (matched by name). Labels the teacher knows and the student's data lacks are dropped (and, for
    one label per input, the rest renormalised); a student label the teacher does not know is an
    InputError.

    >>> teacher_targets([[0.2, 0.6, 0.2]], ["a", "b", "c"], ["b", "a"], multi_label=False).round(2).tolist()
    [[0.75, 0.25]]
    """
    p = np.asarray(probs, dtype=np.float64)
    missing = [label for label in labels if label not in teacher_labels]
    if missing:
        raise InputError(
            f"{teacher}: does not know the label(s) {missing} of the student's training data; "
            f"it knows {list(teacher_labels)[:20]}"
        )
    columns = [list(teacher_labels).index(label) for label in labels]
    out = p[:, columns]
    if not multi_label and len(columns) < len(teacher_labels):
        out = out / np.clip(out.sum(axis=1, keepdims=True), 1e-12, None)
    return out
