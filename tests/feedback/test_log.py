"""PredictionLog: one transaction per batch, texts inline, images as blobs, safe across threads."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aifab.core.errors import InputError
from aifab.feedback.intake import submit_feedback
from aifab.feedback.log import PredictionLog
from aifab.store import ArtifactStore, MetadataStore
from tests.conftest import write_png
from tests.store.test_serving_db import counted


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'aifab.db'}"


@pytest.fixture
def meta(db_url: str) -> Iterator[MetadataStore]:
    store = MetadataStore(db_url)
    store.migrate()
    yield store
    store.dispose()


@pytest.fixture
def artifacts(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(str(tmp_path / "artifacts"))


def answer(label: str, p: float) -> dict[str, object]:
    other = "ham" if label == "spam" else "spam"
    return {"label": label, "scores": {label: p, other: round(1 - p, 6)}}


def blobs(root: Path) -> list[Path]:
    return [p for p in (root / "artifacts").rglob("*") if p.is_file()]


def test_texts_are_kept_inline_in_input_order_in_one_transaction(
    meta: MetadataStore, artifacts: ArtifactStore, tmp_path: Path
) -> None:
    log = PredictionLog(meta, artifacts)
    texts = ["WIN a car now", "lunch at 1?", "Café crème 😊"]
    answers = [answer("spam", 0.97), answer("ham", 0.8), answer("ham", 0.66)]
    with counted(meta) as counts:
        ids = log.record("sms", 3, texts, answers, latency_ms=7.25)
    assert counts["commit"] == 1
    assert len(set(ids)) == 3
    for pid, text, ans in zip(ids, texts, answers):
        p = meta.get_prediction(pid)
        assert (p.input_text, p.label, p.scores) == (text, ans["label"], ans["scores"])
        assert p.input_hash == hashlib.sha256(text.encode("utf-8")).hexdigest()
        assert (p.model_name, p.model_version, p.latency_ms, p.input_blob) == ("sms", 3, 7.25, None)
    assert blobs(tmp_path) == []


def test_images_are_stored_as_blobs_referenced_by_digest(
    meta: MetadataStore, artifacts: ArtifactStore, tmp_path: Path
) -> None:
    images = [write_png(tmp_path / "in" / f"{i}.png", seed=i).read_bytes() for i in range(2)]
    answers = [{"labels": ["cat"], "scores": {"cat": 0.9, "dog": 0.2}},
               {"labels": ["cat", "dog"], "scores": {"cat": 0.7, "dog": 0.8}}]
    ids = PredictionLog(meta, artifacts).record("pets", 1, images, answers, latency_ms=20.0)
    for pid, data, ans in zip(ids, images, answers):
        p = meta.get_prediction(pid)
        assert p.input_text is None and p.input_blob is not None
        assert artifacts.get_bytes(p.input_blob) == data
        assert p.input_hash == hashlib.sha256(data).hexdigest()
        assert p.label == ans["labels"]
    assert len(blobs(tmp_path)) == 2


def test_keep_inputs_false_keeps_only_the_hash(
    meta: MetadataStore, artifacts: ArtifactStore, tmp_path: Path
) -> None:
    image = write_png(tmp_path / "in" / "x.png", seed=1).read_bytes()
    log = PredictionLog(meta, artifacts, keep_inputs=False)
    ids = log.record("mixed", 1, ["secret text", image], [answer("ham", 0.5)] * 2, latency_ms=1.0)
    text_p, image_p = (meta.get_prediction(i) for i in ids)
    assert text_p.input_text is None and text_p.input_blob is None
    assert text_p.input_hash == hashlib.sha256(b"secret text").hexdigest()
    assert image_p.input_text is None and image_p.input_blob is None
    assert image_p.input_hash == hashlib.sha256(image).hexdigest()
    assert blobs(tmp_path) == []


def test_a_bad_batch_writes_nothing(meta: MetadataStore, artifacts: ArtifactStore) -> None:
    log = PredictionLog(meta, artifacts)
    with pytest.raises(ValueError, match="2 inputs but 1 answers"):
        log.record("sms", 1, ["a", "b"], [answer("ham", 0.5)], latency_ms=1.0)
    nan = {"label": "ham", "scores": {"ham": float("nan")}}
    with pytest.raises(InputError, match="NaN"):
        log.record("sms", 1, ["a", "b"], [answer("ham", 0.5), nan], latency_ms=1.0)
    with pytest.raises(TypeError, match="expected str"):
        bad: list[Any] = ["a", 42]
        log.record("sms", 1, bad, [answer("ham", 0.5)] * 2, latency_ms=1.0)
    assert log.record("sms", 1, [], [], latency_ms=1.0) == []
    assert meta.count_predictions("sms") == 0


def test_two_loggers_and_a_feedback_writer_share_one_sqlite_file(
    db_url: str, tmp_path: Path
) -> None:
    setup = MetadataStore(db_url)
    setup.migrate()
    artifacts = ArtifactStore(str(tmp_path / "artifacts"))
    seeded = PredictionLog(setup, artifacts).record(
        "sms", 1, [f"seed {i}" for i in range(20)], [answer("spam", 0.6)] * 20, latency_ms=1.0
    )
    setup.dispose()
    errors: list[BaseException] = []
    logged: list[list[str]] = [[], []]
    start = threading.Barrier(3)

    def logger(worker: int) -> None:
        store = MetadataStore(db_url)  # its own engine and connections, as another process has
        try:
            log = PredictionLog(store, artifacts)
            start.wait()
            for b in range(15):
                texts = [f"w{worker} b{b} i{i}" for i in range(16)]
                logged[worker] += log.record("sms", 1, texts, [answer("ham", 0.9)] * 16, 2.0)
        except BaseException as e:  # noqa: BLE001 - collected and asserted below
            errors.append(e)
        finally:
            store.dispose()

    def annotator() -> None:
        store = MetadataStore(db_url)
        try:
            start.wait()
            for pid in seeded:
                submit_feedback(store, model_name="sms", prediction_id=pid,
                                known_labels=["ham", "spam"], multi_label=False, label="ham")
        except BaseException as e:  # noqa: BLE001
            errors.append(e)
        finally:
            store.dispose()

    threads = [threading.Thread(target=logger, args=(w,)) for w in range(2)]
    threads.append(threading.Thread(target=annotator))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    check = MetadataStore(db_url)
    try:
        assert check.count_predictions("sms") == 20 + 2 * 15 * 16
        stored = {p.id for p in check.list_predictions("sms", limit=10_000)}
        assert set(logged[0]) | set(logged[1]) | set(seeded) == stored
        assert {f.prediction_id for f in check.list_feedback("sms")} == set(seeded)
        assert check.list_predictions("sms", without_feedback=True, limit=10_000) != []
        assert not set(seeded) & {
            p.id for p in check.list_predictions("sms", without_feedback=True, limit=10_000)
        }
    finally:
        check.dispose()
