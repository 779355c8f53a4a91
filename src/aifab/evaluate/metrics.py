"""Classification metrics as plain, JSON-ready values with stable key names.

scikit-learn computes every number (it is the reference); this module fixes the names and
shapes so that gates, reports, the registry and the UI can rely on them.

Naming rule: a value is *higher is better* (``accuracy``, ``*_precision``, ``*_recall``,
``*_f1``) unless its name ends in ``_loss`` or is ``ece`` — those are *lower is better*
(:func:`higher_is_better` says which). Averages are named ``<average>_<metric>`` with average in
``macro`` (unweighted mean over classes), ``micro`` (pooled counts) and ``weighted`` (mean
weighted by support).

The dict returned by :func:`classification_metrics`::

    num_examples, accuracy, macro_precision, macro_recall, macro_f1, micro_precision, micro_recall,
    micro_f1, weighted_precision, weighted_recall, weighted_f1, ece, log_loss,
    labels: [name, ...], multi_label: bool, threshold: float | None,
    per_class: {name: {precision, recall, f1, support}},
    confusion_matrix: single-label [[...]] (row = true, column = predicted, in ``labels`` order);
                      multi-label {name: [[tn, fp], [fn, tp]]},
    reliability: [{lower, upper, count, confidence, accuracy}, ...]

Gates use flat keys made by :func:`flatten_metrics`: ``test.accuracy``, ``test.macro_f1``,
``test.class.spam.f1``. A label that itself contains a dot makes its flat key ambiguous to a
reader splitting on dots, so match flat keys whole, never by splitting them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from aifab.core.errors import InputError
from aifab.evaluate.calibration import expected_calibration_error, reliability_bins

__all__ = ["classification_metrics", "flatten_metrics", "higher_is_better"]

# Softmax outputs in float32 sum to 1 only within rounding; anything further off is not a
# probability distribution and would make log loss meaningless.
_SUM_TOLERANCE = 1e-3
_AVERAGES = ("macro", "micro", "weighted")


def _validate(
    y_true: Any, probs: Any, labels: list[str], multi_label: bool, threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(y_true)
    if not isinstance(labels, list | tuple) or not all(isinstance(x, str) for x in labels):
        raise InputError(f"labels: must be a list of strings; got {labels!r}")
    if len(set(labels)) != len(labels):
        dupes = sorted({x for x in labels if list(labels).count(x) > 1})
        raise InputError(f"labels: names must be unique; repeated: {dupes}")
    if p.ndim != 2 or p.shape[1] != len(labels):
        raise InputError(
            f"probs: must have shape (N, {len(labels)}) to match {len(labels)} labels; "
            f"got {p.shape}"
        )
    if p.shape[0] == 0:
        raise InputError("probs: no examples; expected at least one row")
    if not np.all(np.isfinite(p)) or p.min() < 0.0 or p.max() > 1.0:
        raise InputError("probs: every value must be a finite probability in [0, 1]")
    if multi_label:
        if not 0.0 < threshold < 1.0:
            raise InputError(f"threshold: must be in (0, 1); got {threshold!r}")
        if y.shape != p.shape:
            raise InputError(
                f"y_true: multi-label needs an (N, C) 0/1 matrix of shape {p.shape}; got {y.shape}"
            )
        if not np.isin(y, (0, 1)).all():
            raise InputError("y_true: multi-label values must be 0 or 1")
        return y.astype(np.int64), p
    if y.ndim != 1 or y.shape[0] != p.shape[0]:
        raise InputError(
            f"y_true: must be {p.shape[0]} class indices of shape ({p.shape[0]},); got {y.shape}"
        )
    if not np.issubdtype(y.dtype, np.integer):
        raise InputError(f"y_true: class indices must be integers; got dtype {y.dtype}")
    bad = np.flatnonzero((y < 0) | (y >= len(labels)))
    if bad.size:
        raise InputError(
            f"y_true: row {int(bad[0])}: class index {int(y[bad[0]])} "
            f"is outside 0..{len(labels) - 1}"
        )
    sums = p.sum(axis=1)
    off = np.flatnonzero(np.abs(sums - 1.0) > _SUM_TOLERANCE)
    if off.size:
        raise InputError(
            f"probs: row {int(off[0])} sums to {float(sums[off[0]]):.6f}; "
            "single-label rows must sum to 1"
        )
    return y.astype(np.int64), p / sums[:, None]


def classification_metrics(
    y_true: Any,
    probs: Any,
    *,
    labels: list[str],
    multi_label: bool = False,
    threshold: float = 0.5,
    n_bins: int = 15,
) -> dict[str, Any]:
    """Accuracy, precision / recall / F1 (macro, micro, weighted, per class), confusion matrix,
    ECE and log loss of predicted probabilities against the truth.

    Single-label: ``y_true`` holds class indices (N,), the prediction is the arg-max of ``probs``
    (N, C). Multi-label: ``y_true`` is a 0/1 matrix (N, C), a class is predicted when its
    probability is ``>= threshold``, and ``accuracy`` is subset accuracy (every class right).

    >>> m = classification_metrics([0, 1, 1, 0], [[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.7, 0.3]],
    ...                            labels=["ham", "spam"])
    >>> m["accuracy"], m["confusion_matrix"], m["per_class"]["spam"]["recall"]
    (0.75, [[2, 0], [1, 1]], 0.5)
    """
    from sklearn.metrics import (
        accuracy_score,
        confusion_matrix,
        log_loss,
        multilabel_confusion_matrix,
        precision_recall_fscore_support,
    )

    y, p = _validate(y_true, probs, labels, multi_label, threshold)
    class_ids = list(range(len(labels)))
    if multi_label:
        pred = (p >= threshold).astype(np.int64)
        # Mean binary cross-entropy over every (example, class) cell.
        loss = log_loss(y.ravel(), p.ravel(), labels=[0, 1])
        mcm = multilabel_confusion_matrix(y, pred)
        cm: Any = {name: mcm[c].tolist() for c, name in enumerate(labels)}
        prf_kw: dict[str, Any] = {}
    else:
        pred = p.argmax(axis=1)
        loss = log_loss(y, p, labels=class_ids)
        cm = confusion_matrix(y, pred, labels=class_ids).tolist()
        prf_kw = {"labels": class_ids}

    out: dict[str, Any] = {
        "num_examples": int(p.shape[0]),
        "accuracy": float(accuracy_score(y, pred)),
    }
    for average in _AVERAGES:
        prec, rec, f1, _ = precision_recall_fscore_support(
            y, pred, average=average, zero_division=0, **prf_kw
        )
        out[f"{average}_precision"] = float(prec)
        out[f"{average}_recall"] = float(rec)
        out[f"{average}_f1"] = float(f1)
    out["ece"] = expected_calibration_error(p, y, n_bins=n_bins)
    out["log_loss"] = float(loss)

    prec, rec, f1, support = precision_recall_fscore_support(
        y, pred, average=None, zero_division=0, **prf_kw
    )
    out["labels"] = list(labels)
    out["multi_label"] = bool(multi_label)
    out["threshold"] = float(threshold) if multi_label else None
    out["per_class"] = {
        name: {
            "precision": float(prec[c]),
            "recall": float(rec[c]),
            "f1": float(f1[c]),
            "support": int(support[c]),
        }
        for c, name in enumerate(labels)
    }
    out["confusion_matrix"] = cm
    out["reliability"] = reliability_bins(p, y, n_bins=n_bins)
    return out


def flatten_metrics(metrics: dict[str, Any], prefix: str = "test") -> dict[str, float]:
    """The numeric values of a metrics dict under flat dotted keys, as quality gates name them.

    Top-level numbers become ``<prefix>.<name>``; per-class numbers become
    ``<prefix>.class.<label>.<name>``. Lists, matrices and flags are left out. An empty prefix
    gives keys without the leading dot.

    >>> flatten_metrics({"accuracy": 0.9, "per_class": {"spam": {"f1": 0.8}}, "labels": ["spam"]})
    {'test.accuracy': 0.9, 'test.class.spam.f1': 0.8}
    >>> flatten_metrics({"macro_f1": 0.5}, prefix="")
    {'macro_f1': 0.5}
    """
    head = f"{prefix}." if prefix else ""
    flat: dict[str, float] = {}
    for key, value in metrics.items():
        if _is_number(value):
            flat[f"{head}{key}"] = float(value)
    for label, values in (metrics.get("per_class") or {}).items():
        for key, value in values.items():
            if _is_number(value):
                flat[f"{head}class.{label}.{key}"] = float(value)
    return flat


def higher_is_better(name: str) -> bool:
    """Whether a larger value of the metric ``name`` (plain or flat key) is better.

    >>> higher_is_better("test.macro_f1"), higher_is_better("val.loss"), higher_is_better("ece")
    (True, False, False)
    """
    last = name.rsplit(".", 1)[-1]
    return not (last == "loss" or last.endswith("_loss") or last == "ece")


def _is_number(value: Any) -> bool:
    # bool is an int subclass, but a flag is not a metric.
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)
