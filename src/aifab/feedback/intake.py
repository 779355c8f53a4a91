"""Feedback intake: check a correction against the model it is about, then store it.

One feedback says one thing about one logged prediction, in one of three shapes:

- ``label``: the right class, for a single-label model;
- ``labels``: the right set of classes (possibly empty), for a multi-label model;
- ``correct``: a thumbs up (True) or down (False), for any model.

A label must be one the model knows, unless ``new_class=True`` says the annotator is naming
a class the model has never seen (it then becomes a class of the next dataset version).
Every refusal is an InputError (HTTP 422) naming the field and what would be right, or a
NotFound (HTTP 404) for a prediction that is not in this model's log.

>>> from datetime import datetime, timezone
>>> from aifab.core.types import Prediction
>>> from aifab.store import MetadataStore
>>> meta = MetadataStore("sqlite://")
>>> meta.migrate()
>>> meta.add_predictions([Prediction(id="p1", model_name="sms", model_version=1,
...     created_at=datetime.now(timezone.utc), input_hash="ab" * 32, label="spam",
...     scores={"spam": 0.6, "ham": 0.4}, latency_ms=3.0, input_text="call me")])
>>> fb = submit_feedback(meta, model_name="sms", prediction_id="p1", known_labels=["ham", "spam"],
...                      multi_label=False, label="ham", actor="ana")
>>> fb.label, fb.actor
('ham', 'ana')
>>> submit_feedback(meta, model_name="sms", prediction_id="p1", known_labels=["ham", "spam"],
...                 multi_label=False, label="hma")
Traceback (most recent call last):
...
aifab.core.errors.InputError: feedback on prediction 'p1', field 'label': 'hma' is not a class of model 'sms' (did you mean 'ham'?); its classes are ['ham', 'spam']; set new_class to add a class
>>> meta.dispose()
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime, timezone

from aifab.core.errors import InputError, nearest
from aifab.core.types import Feedback
from aifab.store import MetadataStore

MAX_COMMENT = 2000
MAX_LABEL = 200


def submit_feedback(
    meta: MetadataStore,
    *,
    model_name: str,
    prediction_id: str,
    known_labels: Sequence[str],
    multi_label: bool,
    label: str | None = None,
    labels: Sequence[str] | None = None,
    correct: bool | None = None,
    comment: str = "",
    new_class: bool = False,
    actor: str = "",
) -> Feedback:
    """Check and store one feedback on prediction ``prediction_id`` of ``model_name``.

    ``known_labels`` and ``multi_label`` describe the model (from its preprocessing). Exactly
    one of ``label``, ``labels``, ``correct`` must be given; ``label`` only for a single-label
    model and ``labels`` only for a multi-label one; each label a class in ``known_labels``
    unless ``new_class`` (then at least one must be new); ``comment`` at most 2000 characters.
    InputError otherwise; NotFound when the prediction is not logged for this model.
    """
    where = f"feedback on prediction {prediction_id!r}"
    shapes = (("label", label), ("labels", labels), ("correct", correct))
    given = [name for name, value in shapes if value is not None]
    if len(given) != 1:
        raise InputError(
            f"{where}: give exactly one of label, labels, correct; got "
            + (", ".join(given) if given else "none"),
            details={"prediction": prediction_id, "given": given},
        )
    if correct is not None and not isinstance(correct, bool):
        raise InputError(f"{where}, field 'correct': expected true or false, got {correct!r}")
    if correct is not None and new_class:
        raise InputError(f"{where}, field 'new_class': applies to label or labels, not to correct")
    chosen: list[str] = []
    if label is not None:
        if multi_label:
            raise InputError(
                f"{where}, field 'label': model {model_name!r} is multi-label; send 'labels' "
                "(a list of classes) instead",
                details={"prediction": prediction_id, "field": "label"},
            )
        chosen = [_checked_label(where, "label", label)]
    if labels is not None:
        if not multi_label:
            raise InputError(
                f"{where}, field 'labels': model {model_name!r} is single-label; send 'label' "
                "(one class) instead",
                details={"prediction": prediction_id, "field": "labels"},
            )
        if isinstance(labels, str) or not isinstance(labels, Sequence):
            raise InputError(f"{where}, field 'labels': expected a list of classes, got {labels!r}")
        # Order kept, repeats dropped: ["a", "a"] says no more than ["a"].
        chosen = list(dict.fromkeys(_checked_label(where, "labels", x) for x in labels))
    field = given[0]
    known = set(known_labels)
    unknown = [x for x in chosen if x not in known]
    if unknown and not new_class:
        hint = nearest(unknown[0], list(known_labels))
        raise InputError(
            f"{where}, field {field!r}: {_listed(unknown)} not a class of model {model_name!r}"
            + (f" (did you mean {hint!r}?)" if hint else "")
            + f"; its classes are {sorted(known)}; set new_class to add a class",
            details={"prediction": prediction_id, "field": field, "unknown": unknown,
                     "known": sorted(known)},
        )
    if new_class and not unknown:
        what = f"{_listed(chosen)} already a class of" if chosen else "no label given for"
        raise InputError(
            f"{where}, field 'new_class': {what} model {model_name!r}; new_class is for a class "
            "the model does not know",
            details={"prediction": prediction_id, "field": "new_class"},
        )
    if not isinstance(comment, str) or len(comment) > MAX_COMMENT:
        size = len(comment) if isinstance(comment, str) else type(comment).__name__
        raise InputError(
            f"{where}, field 'comment': at most {MAX_COMMENT} characters of text; got {size}",
            details={"prediction": prediction_id, "field": "comment"},
        )
    return meta.add_feedback(
        Feedback(
            id=uuid.uuid4().hex,
            prediction_id=prediction_id,
            model_name=model_name,
            created_at=datetime.now(timezone.utc),
            label=chosen[0] if label is not None else None,
            labels=tuple(chosen) if labels is not None else None,
            correct=correct,
            comment=comment,
            new_class=new_class,
            actor=actor,
        )
    )


def list_feedback(
    meta: MetadataStore,
    model_name: str | None = None,
    *,
    since: datetime | None = None,
    limit: int = 1000,
) -> list[Feedback]:
    """Stored feedback (of one model), newest first; see ``MetadataStore.list_feedback``.

    >>> from aifab.store import MetadataStore
    >>> meta = MetadataStore("sqlite://")
    >>> meta.migrate()
    >>> list_feedback(meta, "sms")
    []
    >>> meta.dispose()
    """
    return meta.list_feedback(model_name, since=since, limit=limit)


def _checked_label(where: str, field: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_LABEL:
        raise InputError(
            f"{where}, field {field!r}: {value!r} is not a class name; expected 1 to "
            f"{MAX_LABEL} characters of text",
            details={"field": field},
        )
    return value


def _listed(names: Sequence[str]) -> str:
    """
    >>> _listed(["a"]), _listed(["a", "b"])
    ("'a' is", "'a', 'b' are")
    """
    return ", ".join(map(repr, names)) + (" is" if len(names) == 1 else " are")
