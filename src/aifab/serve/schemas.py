"""Request and response bodies of the HTTP API (KServe / TF-Serving v1 shape).

They validate what comes in (unknown keys are errors) and document what goes out in the
OpenAPI document. Field names are the wire names.

>>> PredictRequest.model_validate({"instances": ["free prize!", {"text": "see you at 5"}]}).instances[1]
TextInstance(text='see you at 5')
>>> from pydantic import ValidationError
>>> try:
...     PredictRequest.model_validate({"instances": ["ok", {"txt": "typo"}]})
... except ValidationError as e:
...     print(describe_errors(e.errors()))
instances[1]: expected a string, {"text": "..."} or {"b64": "..."}
>>> ErrorBody.model_validate({"error": {"code": "not_found", "message": "model 'x' not found"}}).error.code
'not_found'
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextInstance(_Strict):
    text: str


class ImageInstance(_Strict):
    b64: str = Field(description="the image file's bytes (PNG, JPEG, ...), base64-encoded")


Instance = str | TextInstance | ImageInstance


class PredictRequest(_Strict):
    """``instances``: text as strings or ``{"text": ...}``; images as ``{"b64": ...}``. Images can
    also be sent as a ``multipart/form-data`` upload, one file per instance."""

    instances: list[Instance]

    def raw_instances(self) -> list[Any]:
        """The instances as plain values (strings and dicts) for decoding."""
        return [i if isinstance(i, str) else i.model_dump() for i in self.instances]


class PredictionOut(BaseModel):
    """One answer: ``label`` (single-label) or ``labels`` (multi-label), a score per class."""

    model_config = ConfigDict(extra="allow")

    label: str | None = None
    labels: list[str] | None = None
    scores: dict[str, float]
    prediction_id: str
    model_version: int


class PredictResponse(BaseModel):
    predictions: list[PredictionOut]


class ModelInfo(BaseModel):
    name: str
    version: int
    task: str
    kind: str = Field(description="input kind: 'text' or 'image'")
    labels: list[str]
    multi_label: bool
    aliases: list[str]
    created_at: datetime


class ModelList(BaseModel):
    models: list[ModelInfo]


class ReloadResponse(BaseModel):
    name: str
    version: int
    previous: int
    changed: bool


class FeedbackRequest(_Strict):
    """A correction of one prediction: ``label`` (single-label), ``labels`` (multi-label) or
    ``correct`` (thumbs up / down); ``new_class`` allows a label outside the model's labels."""

    prediction_id: str = Field(min_length=1, max_length=200)
    label: str | None = None
    labels: list[str] | None = None
    correct: bool | None = None
    comment: str = Field(default="", max_length=10_000)
    new_class: bool = False


class FeedbackOut(BaseModel):
    id: str
    prediction_id: str
    model_name: str
    created_at: datetime
    label: str | None = None
    labels: list[str] | None = None
    correct: bool | None = None
    comment: str = ""
    new_class: bool = False
    actor: str = ""


class FeedbackList(BaseModel):
    feedback: list[FeedbackOut]


class ReviewItem(BaseModel):
    """A logged prediction without feedback; ``margin`` = top-1 minus top-2 score (low: unsure)."""

    id: str
    model_name: str
    model_version: int
    created_at: datetime
    label: Any
    scores: dict[str, float]
    margin: float
    input_text: str | None = None
    input_blob: str | None = None


class ReviewList(BaseModel):
    predictions: list[ReviewItem]


class VersionOut(BaseModel):
    """One registered version: its aliases, scalar test metrics, the latest gate verdict on it
    (None: never gated) and whether this server answers with it now."""

    version: int
    aliases: list[str]
    task: str
    created_at: datetime
    dataset_version: str | None = None
    run_id: str | None = None
    test: dict[str, int | float]
    gate: dict[str, Any] | None = None
    served: bool


class VersionList(BaseModel):
    model: str
    versions: list[VersionOut]


class PromoteRequest(_Strict):
    """``force`` moves ``production`` past a failed gate: admin only, with a ``reason``."""

    force: bool = False
    reason: str = Field(default="", max_length=2000)


class RollbackRequest(_Strict):
    reason: str = Field(default="", max_length=2000)


class ServedNow(BaseModel):
    """What the server answers with after the move (None when it does not serve the model);
    ``error`` when the new version failed to load (the old one keeps answering)."""

    version: int | None = None
    previous: int | None = None
    changed: bool | None = None
    error: str | None = None


class MoveOut(BaseModel):
    """An alias move: who (``actor``), what (``previous`` -> ``version``), when, why."""

    model_config = ConfigDict(extra="allow")

    model: str
    alias: str
    version: int | None
    previous: int | None
    moved_at: datetime
    actor: str
    reason: str


class PromoteResponse(MoveOut):
    """The move and the gate result that allowed it; ``forced`` when it overruled the gate."""

    forced: bool
    gate_result_id: int
    gate: dict[str, Any]
    served: ServedNow | None = None


class RollbackResponse(MoveOut):
    served: ServedNow | None = None


class AuditEntry(MoveOut):
    """``event``: ``moved``, or ``refused`` (a promotion the gate refused; nothing moved)."""

    event: str
    forced: bool
    gate: dict[str, Any] | None = None


class AuditList(BaseModel):
    audit: list[AuditEntry]


class DriftOut(BaseModel):
    """``aifab drift NAME``'s report: ``alarm`` and its ``reasons``, every number in ``features``
    and ``embeddings``."""

    model_config = ConfigDict(extra="allow")

    model: str
    alarm: bool
    reasons: list[str]
    count: int
    window: int


class ErrorDetail(BaseModel):
    code: str
    message: str
    details: dict[str, Any] | None = None


class ErrorBody(BaseModel):
    """The one error shape of every endpoint."""

    error: ErrorDetail


# Union members appear in pydantic's error locations under these tags; one bad instance then
# yields one error per member, which :func:`describe_errors` folds into one message.
_INSTANCE_TAGS = {
    "str": "a string",
    "TextInstance": '{"text": "..."}',
    "ImageInstance": '{"b64": "..."}',
}


def field_path(loc: Sequence[Any]) -> str:
    """``("body", "instances", 0, "text")`` -> ``instances[0].text`` (the "body" root dropped).

    >>> field_path(("query", "limit"))
    'query.limit'
    """
    parts = list(loc[1:] if loc and loc[0] == "body" else loc)
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"


def describe_errors(errors: Sequence[Any], *, limit: int = 5) -> str:
    """One message for pydantic / FastAPI validation errors, naming each field path."""
    messages: list[str] = []
    for err in errors:
        loc = list(err.get("loc", ()))
        tag = next((i for i, part in enumerate(loc) if part in _INSTANCE_TAGS), None)
        if tag is not None:
            choices = list(_INSTANCE_TAGS.values())
            text = f"{field_path(loc[:tag])}: expected {', '.join(choices[:-1])} or {choices[-1]}"
        else:
            text = f"{field_path(loc)}: {err.get('msg', 'invalid')}"
        if text not in messages:
            messages.append(text)
    more = f" (and {len(messages) - limit} more)" if len(messages) > limit else ""
    return "; ".join(messages[:limit]) + more
