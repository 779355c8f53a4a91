"""The review queue's ranking: most uncertain first, by margin or entropy, multi-label aware."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone

import pytest

from aifab.core.errors import ConfigError, InputError
from aifab.core.types import Prediction
from aifab.feedback.active import rank_for_review, uncertainty

AT = datetime(2024, 1, 1, tzinfo=timezone.utc)


def pred(pid: str, scores: dict[str, float], *, label: object = None, minutes: int = 0) -> Prediction:
    if label is None:
        label = max(scores, key=scores.__getitem__)
    return Prediction(id=pid, model_name="m", model_version=1, created_at=AT + timedelta(minutes=minutes),
                      input_hash=pid, label=label, scores=scores, latency_ms=1.0)


def test_margin_ranks_the_closest_top_two_first() -> None:
    preds = [
        pred("sure", {"a": 0.98, "b": 0.01, "c": 0.01}),
        pred("torn", {"a": 0.41, "b": 0.40, "c": 0.19}),
        pred("mid", {"a": 0.60, "b": 0.30, "c": 0.10}),
    ]
    ranked = rank_for_review(preds, by="margin")
    assert [p.id for p, _ in ranked] == ["torn", "mid", "sure"]
    assert [round(u, 2) for _, u in ranked] == [0.99, 0.7, 0.03]


def test_entropy_differs_from_margin_where_the_tail_carries_mass() -> None:
    # Same top-two margin (0.1); the flat tail makes "spread" far less certain by entropy.
    peaked = pred("peaked", {"a": 0.55, "b": 0.45, "c": 0.0, "d": 0.0})
    spread = pred("spread", {"a": 0.35, "b": 0.25, "c": 0.2, "d": 0.2})
    by_margin = rank_for_review([peaked, spread], by="margin")
    assert by_margin[0][1] == pytest.approx(by_margin[1][1])
    by_entropy = rank_for_review([peaked, spread], by="entropy")
    assert [p.id for p, _ in by_entropy] == ["spread", "peaked"]
    expected = -(0.55 * math.log(0.55) + 0.45 * math.log(0.45)) / math.log(4)
    assert by_entropy[1][1] == pytest.approx(expected)


def test_multi_label_uses_the_score_closest_to_the_threshold() -> None:
    confident = pred("conf", {"x": 0.99, "y": 0.02}, label=["x"])
    borderline = pred("border", {"x": 0.97, "y": 0.48}, label=["x"])
    # A single-label reading (top-two margin) would call "border" the surer one: 0.49 vs 0.97.
    ranked = rank_for_review([confident, borderline], by="margin")
    assert [p.id for p, _ in ranked] == ["border", "conf"]
    assert ranked[0][1] == pytest.approx(1 - 2 * 0.02)
    assert uncertainty(borderline, by="entropy") == pytest.approx(-(0.48 * math.log2(0.48) + 0.52 * math.log2(0.52)))


def test_limit_ties_and_unscored_predictions() -> None:
    same = {"a": 0.7, "b": 0.3}
    preds = [pred("old", same, minutes=0), pred("new", same, minutes=5), pred("b", same, minutes=5),
             pred("none", {}, label="a")]
    ranked = rank_for_review(list(reversed(preds)), limit=3)
    # Equal uncertainty: newest first, then by id; predictions without scores are left out.
    assert [p.id for p, _ in ranked] == ["b", "new", "old"]
    assert [p.id for p, _ in rank_for_review(preds, limit=1)] == ["b"]


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ConfigError, match="'by'.*did you mean 'margin'"):
        rank_for_review([], by="margn")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="'limit'"):
        rank_for_review([], limit=0)
