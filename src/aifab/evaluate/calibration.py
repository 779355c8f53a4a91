"""Calibration: does a predicted probability of 0.8 come true 80% of the time?

Two views of the same equal-width binning over ``[0, 1]``:

* :func:`reliability_bins` — per bin, the mean confidence, the observed frequency and the count
  (what a reliability diagram plots);
* :func:`expected_calibration_error` — ``sum_b |B_b| / n * |acc(B_b) - conf(B_b)|`` (Guo et al.,
  "On Calibration of Modern Neural Networks", 2017). Lower is better; 0 is perfect.

Single-label (``y_true`` of shape ``(N,)``) uses the *top-label* view: the confidence is the
largest probability and "correct" means the arg-max is the true class. Multi-label (``y_true`` a
0/1 matrix ``(N, C)``) treats each class as its own binary problem — the confidence is ``p_c`` and
the outcome is ``y_c`` — and the ECE is the mean of the per-class ECEs; its reliability bins pool
all ``(example, class)`` pairs.

Bin ``b`` (0-based) holds confidences in ``(b / n_bins, (b + 1) / n_bins]``; a confidence of
exactly 0 goes to the first bin.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from aifab.core.errors import InputError

__all__ = ["expected_calibration_error", "reliability_bins"]


def _as_arrays(probs: Any, y_true: Any, n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(y_true)
    if not isinstance(n_bins, int | np.integer) or n_bins < 1:
        raise InputError(f"n_bins: must be a positive integer; got {n_bins!r}")
    if p.ndim != 2:
        raise InputError(f"probs: must be a matrix (N, C); got shape {p.shape}")
    if p.shape[0] == 0:
        raise InputError("probs: no examples; expected at least one row")
    if not np.all(np.isfinite(p)) or p.min() < 0.0 or p.max() > 1.0:
        raise InputError("probs: every value must be a finite probability in [0, 1]")
    if y.ndim == 1:
        if y.shape[0] != p.shape[0]:
            raise InputError(f"y_true: has {y.shape[0]} rows; probs has {p.shape[0]}")
    elif y.ndim == 2:
        if y.shape != p.shape:
            raise InputError(
                f"y_true: multi-label shape {y.shape} must equal probs shape {p.shape}"
            )
    else:
        raise InputError(
            f"y_true: must be (N,) class indices or an (N, C) 0/1 matrix; got {y.shape}"
        )
    return p, y


def _confidence_and_outcome(p: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Single-label top-label view: (max prob, arg-max is right)."""
    return p.max(axis=1), (p.argmax(axis=1) == y).astype(np.float64)


def _bin_stats(conf: np.ndarray, outcome: np.ndarray, n_bins: int) -> tuple[np.ndarray, ...]:
    # ceil(conf * n) - 1 puts conf in (b/n, (b+1)/n] into bin b; clip sends 0 to bin 0.
    idx = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    counts = np.bincount(idx, minlength=n_bins).astype(np.float64)
    conf_sum = np.bincount(idx, weights=conf, minlength=n_bins)
    hit_sum = np.bincount(idx, weights=outcome, minlength=n_bins)
    return counts, conf_sum, hit_sum


def _ece(conf: np.ndarray, outcome: np.ndarray, n_bins: int) -> float:
    counts, conf_sum, hit_sum = _bin_stats(conf, outcome, n_bins)
    # |sum(outcome) - sum(conf)| per bin / N == |B|/N * |acc(B) - conf(B)|.
    return float(np.abs(hit_sum - conf_sum).sum() / conf.shape[0])


def expected_calibration_error(probs: Any, y_true: Any, *, n_bins: int = 15) -> float:
    """Expected calibration error, equal-width bins (top-label; mean per class for multi-label).

    Says 90% and is right half the time, then says 50% and is right half the time:

    >>> expected_calibration_error([[0.9, 0.1], [0.9, 0.1]], [0, 1], n_bins=10)
    0.4
    >>> expected_calibration_error([[0.5, 0.5], [0.5, 0.5]], [0, 1], n_bins=10)
    0.0
    """
    p, y = _as_arrays(probs, y_true, n_bins)
    if y.ndim == 1:
        conf, outcome = _confidence_and_outcome(p, y)
        return round(_ece(conf, outcome, n_bins), 12)
    yy = y.astype(np.float64)
    per_class = [_ece(p[:, c], yy[:, c], n_bins) for c in range(p.shape[1])]
    return round(float(np.mean(per_class)), 12)


def reliability_bins(
    probs: Any, y_true: Any, *, n_bins: int = 15
) -> list[dict[str, float | int | None]]:
    """The bins of a reliability diagram: one dict per bin, empty bins included.

    Keys: ``lower``, ``upper`` (the bin's edges), ``count``, ``confidence`` (mean predicted
    probability in the bin) and ``accuracy`` (observed frequency of being right / positive);
    the last two are ``None`` for an empty bin.

    >>> bins = reliability_bins([[0.9, 0.1], [0.9, 0.1]], [0, 1], n_bins=2)
    >>> bins[1]
    {'lower': 0.5, 'upper': 1.0, 'count': 2, 'confidence': 0.9, 'accuracy': 0.5}
    >>> bins[0]["count"], bins[0]["accuracy"]
    (0, None)
    """
    p, y = _as_arrays(probs, y_true, n_bins)
    if y.ndim == 1:
        conf, outcome = _confidence_and_outcome(p, y)
    else:
        conf, outcome = p.ravel(), y.astype(np.float64).ravel()
    counts, conf_sum, hit_sum = _bin_stats(conf, outcome, n_bins)
    out: list[dict[str, float | int | None]] = []
    for b in range(n_bins):
        n = int(counts[b])
        out.append(
            {
                "lower": b / n_bins,
                "upper": (b + 1) / n_bins,
                "count": n,
                "confidence": round(float(conf_sum[b] / n), 12) if n else None,
                "accuracy": round(float(hit_sum[b] / n), 12) if n else None,
            }
        )
    return out
