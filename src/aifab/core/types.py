"""Domain objects that cross layers: what the store returns and the stages hand each other.

They are frozen dataclasses of plain values (strings, numbers, tuples), so they can be
compared, hashed, turned into JSON with :func:`to_jsonable`, and sent to a worker process.

>>> f = Finding(check="empty_text", severity="error", message="text is empty", record_ids=("r1",))
>>> to_jsonable(f)["record_ids"]
['r1']
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

Severity = Literal["error", "warning", "info"]
Action = Literal["block", "quarantine", "warn", "off"]
SplitName = Literal["train", "val", "test"]
SPLITS: tuple[SplitName, ...] = ("train", "val", "test")


@dataclass(frozen=True, slots=True)
class Finding:
    """One result of one data-gate check.

    ``record_ids`` are the records concerned; ``action`` is what the policy did with them
    (filled in when the policy is applied); ``sources`` name where they came from (file, line).
    """

    check: str
    severity: Severity
    message: str
    record_ids: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()
    action: Action = "warn"


@dataclass(frozen=True, slots=True)
class CheckReport:
    """The data gate's verdict on one ingest: findings, what was quarantined, and counts."""

    findings: tuple[Finding, ...]
    quarantined: tuple[str, ...]
    blocked: bool
    counts: dict[str, Any] = field(default_factory=dict)

    def by_check(self) -> dict[str, list[Finding]]:
        out: dict[str, list[Finding]] = {}
        for f in self.findings:
            out.setdefault(f.check, []).append(f)
        return out


@dataclass(frozen=True, slots=True)
class DatasetVersion:
    """An immutable, content-addressed set of records.

    ``id`` is the sha256 of the manifest's canonical content, so ingesting the same data
    twice gives the same id. ``manifest`` and ``report`` are artifact digests.
    """

    id: str
    name: str
    manifest: str
    report: str
    parent: str | None
    created_at: datetime
    num_records: int
    split_counts: dict[str, int]
    label_counts: dict[str, int]
    fields: tuple[str, ...]
    source: str = ""
    num_quarantined: int = 0

    @property
    def short_id(self) -> str:
        return self.id[:12]


def to_jsonable(value: Any) -> Any:
    """Turn dataclasses, tuples and datetimes into JSON-ready values (recursively)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    return value


RunStatus = Literal["running", "finished", "failed", "stopped"]


@dataclass(frozen=True, slots=True)
class Run:
    """One training run: the effective spec, the dataset version, per-epoch metrics and its state.

    ``checkpoint`` is the artifact digest of the latest complete checkpoint (None until the
    first epoch ends); ``history`` holds one dict of metrics per finished epoch.
    """

    id: str
    model_name: str
    dataset_version: str
    spec: dict[str, Any]
    status: RunStatus
    created_at: datetime
    updated_at: datetime
    seed: int
    code_version: str
    history: tuple[dict[str, Any], ...] = ()
    checkpoint: str | None = None
    model_version: int | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class ModelVersion:
    """A registered, self-contained model: ``files`` maps file names (``weights.safetensors``,
    ``preprocessing.json``, ``tokenizer.json``, ``spec.json``, ``metrics.json``, ``model_card.md``,
    ``lineage.json``) to artifact digests. ``version`` counts up from 1 per model name."""

    name: str
    version: int
    files: dict[str, str]
    task: str
    created_at: datetime
    run_id: str | None = None
    dataset_version: str | None = None
    parent: int | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()
    description: str = ""

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


@dataclass(frozen=True, slots=True)
class AliasMove:
    """One move of an alias: the audit trail the feedback-loop issue builds on."""

    name: str
    alias: str
    version: int | None
    previous: int | None
    moved_at: datetime
    actor: str = ""
    reason: str = ""


Role = Literal["client", "annotator", "operator", "admin"]


@dataclass(frozen=True, slots=True)
class Token:
    """An API token's stored form: never the secret, only its salted hash."""

    id: str
    name: str
    role: Role
    salt: str
    secret_hash: str
    created_at: datetime
    revoked_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Prediction:
    """One served answer, kept for feedback, drift and the review queue.

    ``input_text`` holds a text input; ``input_blob`` the artifact digest of an image input
    (both None when input logging is off; ``input_hash`` is always kept).
    """

    id: str
    model_name: str
    model_version: int
    created_at: datetime
    input_hash: str
    label: Any
    scores: dict[str, float]
    latency_ms: float
    input_text: str | None = None
    input_blob: str | None = None


@dataclass(frozen=True, slots=True)
class Feedback:
    """A correction or rating of one prediction: ``label`` (single-label), ``labels`` (multi-label)
    or ``correct`` (a thumbs up/down)."""

    id: str
    prediction_id: str
    model_name: str
    created_at: datetime
    label: str | None = None
    labels: tuple[str, ...] | None = None
    correct: bool | None = None
    comment: str = ""
    new_class: bool = False
    actor: str = ""
