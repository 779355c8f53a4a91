"""The review queue (active learning): logged predictions the model was least sure of, first.

An annotator's time is best spent where a correction changes the model the most: on inputs the
model hesitated over. Each prediction gets an *uncertainty* in [0, 1], higher = less sure:

* single-label, ``margin``: ``1 - (p1 - p2)``, where p1 and p2 are the two highest scores
  (1 when the top two classes tie, 0 when one class has all the mass);
* single-label, ``entropy``: the entropy of the scores divided by ``log(C)``;
* multi-label (the logged ``label`` is a list): how close the score nearest to 0.5 is to 0.5:
  ``margin`` gives ``1 - 2 * min |p - 0.5|``, ``entropy`` the largest binary entropy over the
  classes, in bits. Both are 1 when some class sits exactly on the decision threshold.

Predictions without scores cannot be ranked and are left out. Equal uncertainties keep a fixed
order (newest first, then by id), so the queue does not reshuffle between two calls.

>>> from datetime import datetime, timezone
>>> from aifab.core.types import Prediction
>>> at = datetime(2024, 1, 1, tzinfo=timezone.utc)
>>> sure = Prediction(id="a", model_name="sms", model_version=1, created_at=at, input_hash="0",
...                   label="spam", scores={"spam": 0.99, "ham": 0.01}, latency_ms=1.0)
>>> torn = Prediction(id="b", model_name="sms", model_version=1, created_at=at, input_hash="1",
...                   label="ham", scores={"spam": 0.45, "ham": 0.55}, latency_ms=1.0)
>>> [(p.id, round(u, 2)) for p, u in rank_for_review([sure, torn])]
[('b', 0.9), ('a', 0.02)]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

from aifab.core.errors import InputError, check_choice
from aifab.core.types import Prediction

Uncertainty = Literal["margin", "entropy"]
_BY = ("margin", "entropy")


def rank_for_review(
    predictions: Sequence[Prediction], *, by: Uncertainty = "margin", limit: int = 50
) -> list[tuple[Prediction, float]]:
    """The ``limit`` most uncertain predictions with their uncertainty, most uncertain first.

    ``by`` is ``"margin"`` or ``"entropy"`` (the module docstring defines both). Pass the
    predictions nobody gave feedback on (``MetadataStore.list_predictions(...,
    without_feedback=True)``).

    >>> from datetime import datetime, timezone
    >>> at = datetime(2024, 1, 1, tzinfo=timezone.utc)
    >>> tags = Prediction(id="t", model_name="tags", model_version=1, created_at=at, input_hash="0",
    ...                   label=["a"], scores={"a": 0.9, "b": 0.5}, latency_ms=1.0)
    >>> rank_for_review([tags], by="entropy")[0][1]
    1.0
    """
    check_choice("by", by, _BY, where="rank_for_review")
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise InputError(f"The 'limit' parameter of rank_for_review must be an integer >= 1. Got {limit!r} instead.")
    scored = [(p, uncertainty(p, by=by)) for p in predictions if p.scores]
    # Newest first among equals: created_at descending, then id, without relying on input order.
    scored.sort(key=lambda item: item[0].id)
    scored.sort(key=lambda item: item[0].created_at, reverse=True)
    scored.sort(key=lambda item: item[1], reverse=True)
    return scored[:limit]


def uncertainty(prediction: Prediction, *, by: Uncertainty = "margin") -> float:
    """One prediction's uncertainty in [0, 1] (higher = less sure); see the module docstring.

    >>> from datetime import datetime, timezone
    >>> at = datetime(2024, 1, 1, tzinfo=timezone.utc)
    >>> p = Prediction(id="x", model_name="m", model_version=1, created_at=at, input_hash="0",
    ...                label="a", scores={"a": 0.5, "b": 0.5}, latency_ms=1.0)
    >>> uncertainty(p), uncertainty(p, by="entropy")
    (1.0, 1.0)
    """
    check_choice("by", by, _BY, where="uncertainty")
    scores = [min(max(float(s), 0.0), 1.0) for s in prediction.scores.values()]
    if not scores:
        raise InputError(f"prediction {prediction.id!r}: no scores; its uncertainty is undefined")
    if isinstance(prediction.label, (list, tuple)):
        if by == "margin":
            return 1.0 - 2.0 * min(abs(s - 0.5) for s in scores)
        return max(_binary_entropy(s) for s in scores)
    if by == "margin":
        top = sorted(scores, reverse=True)
        second = top[1] if len(top) > 1 else 0.0
        return 1.0 - (top[0] - second)
    total = sum(scores)
    if len(scores) < 2 or total <= 0:
        return 0.0
    entropy = -sum((s / total) * math.log(s / total) for s in scores if s > 0)
    return min(entropy / math.log(len(scores)), 1.0)


def _binary_entropy(p: float) -> float:
    """Entropy of a yes/no score in bits: 1 at 0.5, 0 at 0 and 1."""
    if p <= 0.0 or p >= 1.0:
        return 0.0
    return -(p * math.log2(p) + (1 - p) * math.log2(1 - p))
