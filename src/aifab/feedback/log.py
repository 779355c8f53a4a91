"""The prediction log: every served answer, durable before the caller sees it.

The server's inference worker calls :meth:`PredictionLog.record` once per batch, after the
model answered and before the answers are released. All predictions of the batch go into
the metadata store in one transaction (group commit), so an acknowledged prediction id is
always one a later feedback call can find, and the cost is one commit per batch rather than
one per request.

Inputs: a text (``str``) is kept inline in the row; an image (``bytes``) is put into the
artifact store and the row keeps its digest. Both happen only with ``keep_inputs``; the
sha256 of the input (of the text's UTF-8, or of the image bytes) is always kept, which is
enough for drift statistics and deduplication without holding users' data. Image blobs are
written before the rows: a crash in between leaves an unreferenced blob, never a row that
points at a missing one.

>>> import tempfile
>>> from aifab.store import ArtifactStore, MetadataStore
>>> meta = MetadataStore("sqlite://")
>>> meta.migrate()
>>> log = PredictionLog(meta, ArtifactStore(tempfile.mkdtemp()))
>>> ids = log.record("sms", 1, ["WIN a prize", "see you at 5"],
...                  [{"label": "spam", "scores": {"spam": 0.9, "ham": 0.1}},
...                   {"label": "ham", "scores": {"spam": 0.2, "ham": 0.8}}], latency_ms=4.2)
>>> [meta.get_prediction(i).label for i in ids]
['spam', 'ham']
>>> meta.dispose()
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

from aifab.core.types import Prediction
from aifab.store import ArtifactStore, MetadataStore


class PredictionLog:
    """Writes served predictions to ``meta`` (and image inputs to ``artifacts``).

    Holds no state besides its parameters, so one instance may be shared by threads: the
    store's engine pools connections and the artifact store writes atomically.
    """

    def __init__(
        self, meta: MetadataStore, artifacts: ArtifactStore, *, keep_inputs: bool = True
    ) -> None:
        self.meta = meta
        self.artifacts = artifacts
        self.keep_inputs = keep_inputs

    def __repr__(self) -> str:
        return f"PredictionLog({self.meta!r}, {self.artifacts!r}, keep_inputs={self.keep_inputs})"

    def record(
        self,
        model_name: str,
        model_version: int,
        inputs: Sequence[str | bytes],
        answers: Sequence[Mapping[str, Any]],
        latency_ms: float,
    ) -> list[str]:
        """Log one batch: one prediction per input, in one transaction; return their ids in
        input order. ``answers[i]`` is the answer to ``inputs[i]``: its ``label`` (single-label)
        or ``labels`` (multi-label) and its ``scores`` are kept. ``latency_ms`` is the batch's.

        ValueError when inputs and answers differ in number (the batcher's contract is one
        answer per input); TypeError for an input that is neither text nor bytes.
        """
        if len(inputs) != len(answers):
            raise ValueError(
                f"{len(inputs)} inputs but {len(answers)} answers; expected one answer per input"
            )
        if not inputs:
            return []
        created_at = datetime.now(timezone.utc)
        predictions = [
            self._prediction(model_name, model_version, created_at, item, answer, latency_ms)
            for item, answer in zip(inputs, answers)
        ]
        self.meta.add_predictions(predictions)
        return [p.id for p in predictions]

    def _prediction(
        self,
        model_name: str,
        model_version: int,
        created_at: datetime,
        item: str | bytes,
        answer: Mapping[str, Any],
        latency_ms: float,
    ) -> Prediction:
        text: str | None = None
        blob: str | None = None
        if isinstance(item, str):
            input_hash = hashlib.sha256(item.encode("utf-8")).hexdigest()
            text = item if self.keep_inputs else None
        elif isinstance(item, (bytes, bytearray, memoryview)):
            data = bytes(item)
            input_hash = hashlib.sha256(data).hexdigest()
            # The artifact address is the same sha256, so blob == input_hash when kept.
            blob = self.artifacts.put_bytes(data) if self.keep_inputs else None
        else:
            kind = type(item).__name__
            raise TypeError(f"input of type {kind}: expected str (text) or bytes (image)")
        label = answer["label"] if "label" in answer else answer.get("labels")
        return Prediction(
            id=uuid.uuid4().hex,
            model_name=model_name,
            model_version=model_version,
            created_at=created_at,
            input_hash=input_hash,
            label=label,
            scores=dict(answer.get("scores", {})),
            latency_ms=latency_ms,
            input_text=text,
            input_blob=blob,
        )
