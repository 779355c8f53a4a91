"""Feedback intake: every way a correction can be wrong, and what is stored when it is right."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from aifab.core.errors import InputError, NotFound
from aifab.core.types import Prediction
from aifab.feedback.intake import list_feedback, submit_feedback
from aifab.store import MetadataStore

CLASSES = ["ham", "spam"]
TAGS = ["cat", "dog", "outdoor"]


@pytest.fixture
def meta(tmp_path: Path) -> Iterator[MetadataStore]:
    store = MetadataStore(f"sqlite:///{tmp_path / 'aifab.db'}")
    store.migrate()
    at = datetime(2024, 5, 1, tzinfo=timezone.utc)
    store.add_predictions([
        Prediction(id="p-sms", model_name="sms", model_version=1, created_at=at,
                   input_hash="ab" * 32, label="spam", scores={"spam": 0.6, "ham": 0.4},
                   latency_ms=2.0, input_text="free prize"),
        Prediction(id="p-pets", model_name="pets", model_version=2, created_at=at,
                   input_hash="cd" * 32, label=["cat"], scores={"cat": 0.9, "dog": 0.1},
                   latency_ms=9.0, input_blob="ef" * 32),
    ])
    yield store
    store.dispose()


def sms(meta: MetadataStore, **kw: Any) -> Any:
    return submit_feedback(meta, model_name="sms", prediction_id=kw.pop("prediction_id", "p-sms"),
                           known_labels=CLASSES, multi_label=False, **kw)


def pets(meta: MetadataStore, **kw: Any) -> Any:
    return submit_feedback(meta, model_name="pets", prediction_id="p-pets", known_labels=TAGS,
                           multi_label=True, **kw)


def test_a_single_label_correction_is_stored(meta: MetadataStore) -> None:
    before = datetime.now(timezone.utc)
    fb = sms(meta, label="ham", comment="a friend's message", actor="ana")
    assert (fb.prediction_id, fb.model_name, fb.label, fb.labels, fb.correct) == (
        "p-sms", "sms", "ham", None, None)
    assert (fb.comment, fb.actor, fb.new_class) == ("a friend's message", "ana", False)
    assert fb.created_at >= before
    assert meta.get_feedback(fb.id) == fb and list_feedback(meta, "sms") == [fb]


def test_multi_label_labels_drop_repeats_and_may_be_empty(meta: MetadataStore) -> None:
    assert pets(meta, labels=["dog", "outdoor", "dog"]).labels == ("dog", "outdoor")
    assert pets(meta, labels=[]).labels == ()


def test_a_thumbs_up_or_down_works_for_any_model(meta: MetadataStore) -> None:
    assert sms(meta, correct=True).correct is True
    assert pets(meta, correct=False).correct is False


def test_a_new_class_is_accepted_only_when_flagged(meta: MetadataStore) -> None:
    with pytest.raises(InputError) as info:
        sms(meta, label="phishing")
    message = str(info.value)
    assert "'phishing' is not a class of model 'sms'" in message
    assert "['ham', 'spam']" in message and "new_class" in message
    assert info.value.http_status == 422
    fb = sms(meta, label="phishing", new_class=True)
    assert fb.label == "phishing" and fb.new_class is True
    tagged = pets(meta, labels=["cat", "bird"], new_class=True)
    assert tagged.labels == ("cat", "bird") and tagged.new_class is True
    assert len(meta.list_feedback()) == 2


def test_an_unknown_label_suggests_the_nearest_class(meta: MetadataStore) -> None:
    with pytest.raises(InputError, match=r"'spma' is not a class.*did you mean 'spam'\?"):
        sms(meta, label="spma")
    with pytest.raises(InputError, match=r"field 'labels': 'bird', 'fish' are not a class"):
        pets(meta, labels=["cat", "bird", "fish"])


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({}, "exactly one of label, labels, correct; got none"),
        ({"label": "ham", "correct": True}, "exactly one of label, labels, correct; got label, cor"),
        ({"label": "ham", "labels": ["ham"]}, "got label, labels"),
        ({"labels": ["ham"]}, "field 'labels': model 'sms' is single-label; send 'label'"),
        ({"label": ""}, "field 'label': '' is not a class name"),
        ({"label": "x" * 201}, "is not a class name"),
        ({"correct": "yes"}, "field 'correct': expected true or false"),
        ({"correct": True, "new_class": True}, "new_class': applies to label or labels"),
        ({"label": "ham", "new_class": True}, "'ham' is already a class of model 'sms'"),
        ({"label": "ham", "comment": "x" * 2001}, "comment': at most 2000 characters"),
    ],
)
def test_single_label_refusals(meta: MetadataStore, kw: dict[str, Any], message: str) -> None:
    with pytest.raises(InputError, match=re.escape(message)):
        sms(meta, **kw)
    assert meta.list_feedback() == []


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"label": "cat"}, "field 'label': model 'pets' is multi-label; send 'labels'"),
        ({"labels": "cat"}, "field 'labels': expected a list of classes"),
        ({"labels": ["cat", 3]}, "field 'labels': 3 is not a class name"),
        ({"labels": [], "new_class": True}, "new_class': no label given"),
    ],
)
def test_multi_label_refusals(meta: MetadataStore, kw: dict[str, Any], message: str) -> None:
    with pytest.raises(InputError, match=message):
        pets(meta, **kw)
    assert meta.list_feedback() == []


def test_a_comment_of_2000_characters_is_fine(meta: MetadataStore) -> None:
    assert len(sms(meta, label="ham", comment="y" * 2000).comment) == 2000


def test_the_prediction_must_exist_for_this_model(meta: MetadataStore) -> None:
    with pytest.raises(NotFound, match="prediction 'p-none' not found for model 'sms'") as info:
        sms(meta, label="ham", prediction_id="p-none")
    assert info.value.http_status == 404
    with pytest.raises(NotFound, match="prediction 'p-pets' not found for model 'sms'"):
        sms(meta, label="ham", prediction_id="p-pets")  # logged, but for the pets model
    assert meta.list_feedback() == []
