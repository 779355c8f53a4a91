"""ECE and reliability bins on examples whose answer is known by construction."""

from __future__ import annotations

import numpy as np
import pytest

from aifab.core.errors import InputError
from aifab.evaluate.calibration import expected_calibration_error, reliability_bins


def _binary(confidences: list[float], correct: list[bool]) -> tuple[np.ndarray, np.ndarray]:
    """Two-class probs whose top class is 0 with the given confidence; truth 0 when 'correct'."""
    conf = np.asarray(confidences)
    probs = np.stack([conf, 1.0 - conf], axis=1)
    y = np.where(np.asarray(correct), 0, 1)
    return probs, y


def test_perfectly_calibrated_is_zero() -> None:
    # 10 examples at 0.6 with 6 right, 10 at 0.8 with 8 right, 10 at 1.0 with 10 right.
    conf = [0.6] * 10 + [0.8] * 10 + [1.0] * 10
    correct = [True] * 6 + [False] * 4 + [True] * 8 + [False] * 2 + [True] * 10
    probs, y = _binary(conf, correct)
    assert expected_calibration_error(probs, y) == pytest.approx(0.0, abs=1e-12)


def test_overconfident_has_known_value() -> None:
    # Says 90% every time, right 6 times in 10: ECE = |0.6 - 0.9| = 0.3.
    probs, y = _binary([0.9] * 10, [True] * 6 + [False] * 4)
    assert expected_calibration_error(probs, y) == pytest.approx(0.3)


def test_ece_weights_bins_by_size() -> None:
    # Bin of 0.95 (4 examples, all right): gap 0.05; bin of 0.55 (1 example, wrong): gap 0.55.
    probs, y = _binary([0.95] * 4 + [0.55], [True] * 4 + [False])
    assert expected_calibration_error(probs, y, n_bins=10) == pytest.approx(
        (4 * 0.05 + 1 * 0.55) / 5
    )


def test_top_label_uses_the_argmax_class() -> None:
    probs = np.array([[0.1, 0.2, 0.7], [0.1, 0.7, 0.2]])
    # Both predictions carry confidence 0.7; the first is right (class 2), the second wrong.
    assert expected_calibration_error(probs, [2, 0], n_bins=10) == pytest.approx(0.2)


def test_multi_label_is_mean_of_per_class_ece() -> None:
    y = np.array([[1, 0], [0, 0]])
    probs = np.array([[0.8, 0.2], [0.8, 0.2]])
    # class 0: says 0.8, positive half the time -> 0.3; class 1: says 0.2, never positive -> 0.2.
    assert expected_calibration_error(probs, y) == pytest.approx(0.25)


def test_reliability_bins_edges_counts_and_empty_bins() -> None:
    probs, y = _binary([0.5, 0.55, 0.75, 1.0], [True, False, True, True])
    bins = reliability_bins(probs, y, n_bins=4)
    assert [(b["lower"], b["upper"]) for b in bins] == [
        (0.0, 0.25),
        (0.25, 0.5),
        (0.5, 0.75),
        (0.75, 1.0),
    ]
    # Right-closed bins: 0.5 -> (0.25, 0.5], 0.75 -> (0.5, 0.75].
    assert [b["count"] for b in bins] == [0, 1, 2, 1]
    assert bins[0]["confidence"] is None and bins[0]["accuracy"] is None
    assert bins[2]["confidence"] == pytest.approx((0.55 + 0.75) / 2)
    assert bins[2]["accuracy"] == pytest.approx(0.5)
    assert bins[3]["accuracy"] == pytest.approx(1.0)


def test_bins_agree_with_ece() -> None:
    rng = np.random.default_rng(3)
    probs = rng.dirichlet([1.0, 1.0, 1.0], size=200)
    y = rng.integers(0, 3, size=200)
    bins = reliability_bins(probs, y, n_bins=15)
    assert sum(b["count"] for b in bins) == 200
    gap = sum(b["count"] * abs(b["accuracy"] - b["confidence"]) for b in bins if b["count"]) / 200
    assert expected_calibration_error(probs, y, n_bins=15) == pytest.approx(gap)


def test_multi_label_bins_pool_every_cell() -> None:
    y = np.array([[1, 0], [0, 1], [1, 1]])
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.7]])
    assert sum(b["count"] for b in reliability_bins(probs, y, n_bins=5)) == 6


@pytest.mark.parametrize(
    ("probs", "y", "kw", "message"),
    [
        ([[0.5, 0.5]], [0, 1], {}, "y_true"),
        ([0.5, 0.5], [0], {}, "matrix"),
        ([[1.2, -0.2]], [0], {}, r"\[0, 1\]"),
        ([[0.5, 0.5]], [0], {"n_bins": 0}, "n_bins"),
        ([[0.5, 0.5]], [[1, 0, 1]], {}, "shape"),
    ],
)
def test_bad_inputs(probs: object, y: object, kw: dict, message: str) -> None:
    with pytest.raises(InputError, match=message):
        expected_calibration_error(probs, y, **kw)
