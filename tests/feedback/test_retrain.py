"""Corrections from feedback (majority vote) and the child dataset version built from them."""

from __future__ import annotations

import hashlib
import random
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pytest

from aifab.core.config import WorkspaceConfig
from aifab.core.types import Feedback, Prediction
from aifab.data.ingest import build_version
from aifab.data.records import RawRecord, table_to_records
from aifab.feedback.retrain import Example, build_child_version, corrections_from_feedback
from tests.conftest import write_png

AT = datetime(2024, 1, 1, tzinfo=timezone.utc)


def prediction(pid: str, text: str | None, label: object = "spam", *, input_hash: str | None = None) -> Prediction:
    digest = input_hash or hashlib.sha256((text or pid).encode()).hexdigest()
    return Prediction(id=pid, model_name="sms", model_version=1, created_at=AT, input_hash=digest, label=label,
                      scores={"spam": 0.6, "ham": 0.4}, latency_ms=1.0, input_text=text)


def feedback(fid: str, pid: str, *, minutes: int = 0, **what: object) -> Feedback:
    return Feedback(id=fid, prediction_id=pid, model_name="sms", created_at=AT + timedelta(minutes=minutes), **what)


# ---------------------------------------------------------------------------------------------
# Votes
# ---------------------------------------------------------------------------------------------


def test_majority_wins_and_ties_are_held_back_with_their_votes() -> None:
    preds = {"p1": prediction("p1", "win cash now"), "p2": prediction("p2", "lunch at noon?")}
    fbs = [
        feedback("f1", "p1", label="ham"), feedback("f2", "p1", label="ham"), feedback("f3", "p1", label="spam"),
        feedback("f4", "p2", label="ham"), feedback("f5", "p2", label="spam"),
    ]
    out = corrections_from_feedback(fbs, preds, multi_label=False)
    (example,) = out.examples
    assert (example.text, example.label, example.labels) == ("win cash now", "ham", None)
    assert example.feedback_ids == ("f1", "f2", "f3") and example.prediction_ids == ("p1",)
    assert example.votes == (("ham", 2), ("spam", 1))
    (held,) = out.held_back
    assert held.reason == "tie" and held.prediction_ids == ("p2",)
    assert dict(held.votes) == {"ham": 1, "spam": 1} and held.feedback_ids == ("f4", "f5")


def test_thumbs_up_votes_for_the_served_answer_and_thumbs_down_against_it() -> None:
    cases = {
        # feedback on one prediction that answered "spam" -> (label, held-back reason)
        "up": ([{"correct": True}], ("spam", None)),
        "up beats a label": ([{"correct": True}, {"correct": True}, {"label": "ham"}], ("spam", None)),
        "up ties a label": ([{"correct": True}, {"label": "ham"}], (None, "tie")),
        "down alone": ([{"correct": False}], (None, "no_label")),
        "down agrees with a label": ([{"correct": False}, {"label": "ham"}], ("ham", None)),
        "up and down": ([{"correct": True}, {"correct": False}], (None, "tie")),
        "down outvotes up": ([{"correct": False}, {"correct": False}, {"correct": True}], (None, "no_label")),
    }
    for name, (votes, (label, reason)) in cases.items():
        fbs = [feedback(f"f{i}", "p1", **v) for i, v in enumerate(votes)]
        out = corrections_from_feedback(fbs, {"p1": prediction("p1", "some text")}, multi_label=False)
        got = (out.examples[0].label, None) if out.examples else (None, out.held_back[0].reason)
        assert got == (label, reason), name


def test_the_same_input_served_twice_pools_its_votes() -> None:
    preds = {
        "p1": prediction("p1", "free entry now", "spam"),
        "p2": prediction("p2", "free entry now", "ham"),  # the same input, served again
        "p3": prediction("p3", "see you at 5", "ham"),
    }
    fbs = [feedback("f1", "p1", label="ham"), feedback("f2", "p2", correct=True), feedback("f3", "p3", label="ham")]
    out = corrections_from_feedback(fbs, preds, multi_label=False)
    pooled = [e for e in out.examples if e.text == "free entry now"]
    assert len(out.examples) == 2 and len(pooled) == 1
    assert pooled[0].votes == (("ham", 2),) and pooled[0].prediction_ids == ("p1", "p2")


def test_unknown_predictions_and_missing_inputs_are_never_used() -> None:
    preds = {"p1": prediction("p1", None, input_hash="ab" * 32), "p2": prediction("p2", "hello there")}
    fbs = [feedback("f1", "p1", label="ham"), feedback("f2", "ghost", label="ham"), feedback("f3", "p2", label="ham")]
    out = corrections_from_feedback(fbs, preds, multi_label=False)
    assert out.unknown == ("f2",)
    assert [e.feedback_ids for e in out.examples] == [("f3",)]
    assert [(h.reason, h.feedback_ids) for h in out.held_back] == [("no_input", ("f1",))]


def test_multi_label_votes_are_sets_and_order_does_not_matter() -> None:
    preds = {"p1": prediction("p1", "beach sunset photo", ["sea"])}
    fbs = [feedback("f1", "p1", labels=("sky", "sea")), feedback("f2", "p1", labels=("sea", "sky")),
           feedback("f3", "p1", correct=True), feedback("f4", "p1", labels=("sea", "sky", "sea"))]
    out = corrections_from_feedback(fbs, preds, multi_label=True)
    (example,) = out.examples
    assert example.labels == ("sea", "sky") and example.label is None
    assert example.votes == ((("sea", "sky"), 3), (("sea",), 1))
    shuffled = list(fbs)
    random.Random(3).shuffle(shuffled)
    assert corrections_from_feedback(shuffled, preds, multi_label=True) == out


# ---------------------------------------------------------------------------------------------
# The child version
# ---------------------------------------------------------------------------------------------

WORDS = ("apple banana cherry dune ember falcon garnet harbor indigo jasper kettle lantern meadow nectar "
         "orchid pepper quartz raven saffron timber umber velvet walnut yonder zephyr").split()


def sentence(i: int) -> str:
    """Distinct sentences: no two are near duplicates of each other."""
    picks = [WORDS[(i * 7 + k * 11) % len(WORDS)] for k in range(5)]
    return f"{' '.join(picks)} number {i} " + "x" * (i % 7)


def blobs() -> tuple[dict[str, bytes], object]:
    store: dict[str, bytes] = {}

    def put(data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        store[digest] = data
        return digest

    return store, put


@pytest.fixture(scope="module")
def parent() -> tuple[pa.Table, dict[str, bytes], object]:
    store, put = blobs()
    raw = [RawRecord(source=f"sms.csv:{i + 2}", fields={"text": sentence(i), "category": "ab"[i % 2]})
           for i in range(40)]
    return build_version(raw, put_blob=put, config=WorkspaceConfig()).table, store, put


def example(text: str, label: str, n: int = 1, *, image: str | None = None) -> Example:
    return Example(input_hash=hashlib.sha256((text or image or "").encode()).hexdigest(), text=text or None,
                   image=image, label=label, labels=None, votes=((label, 1),), against=(),
                   feedback_ids=(f"fb{n}",), prediction_ids=(f"pr{n}",))


def by_split(table: pa.Table, split: str) -> dict[str, tuple[str, str]]:
    return {r.id: (r.text or r.image, r.category) for r in table_to_records(table) if r.split == split}


def test_child_keeps_every_parent_record_and_adds_new_ones_to_train_only(parent) -> None:
    table, store, put = parent
    new = [example(f"completely fresh wording about topic {w} and more", "b", n) for n, w in enumerate(WORDS[:12])]
    child = build_child_version(table, new, get_blob=store.__getitem__, put_blob=put, config=WorkspaceConfig())
    out = child.built.table
    assert by_split(out, "test") == by_split(table, "test") and len(by_split(table, "test")) > 0
    assert by_split(out, "val") == by_split(table, "val")
    added_ids = {a["record_id"] for a in child.added}
    assert len(added_ids) == 12 and {a["split"] for a in child.added} == {"train"}
    assert set(by_split(out, "train")) == set(by_split(table, "train")) | added_ids
    assert out.num_rows == table.num_rows + 12
    assert child.built.split_counts["train"] == len(by_split(table, "train")) + 12
    lineage = child.lineage
    assert lineage["feedback_ids"] == sorted(f"fb{n}" for n in range(12))
    # Each new record says in the manifest which feedback it came from.
    metas = {r.id: r.meta for r in table_to_records(out) if r.id in added_ids}
    assert sorted(m["feedback"] for m in metas.values()) == sorted(f"fb{n}" for n in range(12))


def test_corrections_that_duplicate_a_test_record_are_excluded(parent) -> None:
    table, store, put = parent
    tests = [r for r in table_to_records(table) if r.split == "test"]
    exact, near_same, near_other = tests[0], tests[1], tests[2]
    new = [
        example(exact.text, "b" if exact.category == "a" else "a", 1),   # exact copy, relabelled
        example(near_same.text + "!", near_same.category, 2),              # near copy, same label
        example(near_other.text + "?", "b" if near_other.category == "a" else "a", 3),  # near copy, relabelled
        example("an honest new message about the harbor tonight", "a", 4),
    ]
    child = build_child_version(table, new, get_blob=store.__getitem__, put_blob=put, config=WorkspaceConfig())
    assert by_split(child.built.table, "test") == by_split(table, "test")
    reasons = {e["feedback_ids"][0]: e["reason"] for e in child.excluded}
    assert reasons == {"fb1": "test_duplicate", "fb2": "test_near_duplicate", "fb3": "conflicts_with_parent"}
    assert [e["record_ids"] for e in child.excluded if e["reason"] == "test_duplicate"] == [[exact.id]]
    assert [a["feedback_ids"] for a in child.added] == [["fb4"]]
    assert sorted(child.lineage["feedback_ids"]) == ["fb1", "fb2", "fb3", "fb4"]
    assert child.built.table.num_rows == table.num_rows + 1


def test_a_correction_replaces_the_old_train_label(parent) -> None:
    table, store, put = parent
    old = next(r for r in table_to_records(table) if r.split == "train")
    new_label = "b" if old.category == "a" else "a"
    child = build_child_version(table, [example(old.text, new_label, 7)], get_blob=store.__getitem__,
                                put_blob=put, config=WorkspaceConfig())
    (replaced,) = child.replaced
    assert (replaced["record_id"], replaced["old"], replaced["new"]) == (old.id, old.category, new_label)
    records = {r.id: r for r in table_to_records(child.built.table)}
    assert old.id not in records
    fresh = records[replaced["new_record_id"]]
    assert (fresh.text, fresh.category, fresh.split) == (old.text, new_label, "train")
    assert child.built.table.num_rows == table.num_rows and child.changed


def test_a_correction_that_agrees_with_the_parent_changes_nothing(parent) -> None:
    table, store, put = parent
    old = next(r for r in table_to_records(table) if r.split == "val")
    child = build_child_version(table, [example(old.text, old.category, 8)], get_blob=store.__getitem__,
                                put_blob=put, config=WorkspaceConfig())
    assert [u["record_ids"] for u in child.unchanged] == [[old.id]]
    assert not child.changed and child.built.version_id == build_version_id(table)
    assert child.lineage["feedback_ids"] == ["fb8"]


def build_version_id(table: pa.Table) -> str:
    from aifab.data.ingest import manifest_digest

    return manifest_digest(table)


def test_the_data_gate_runs_on_new_records(parent) -> None:
    table, store, put = parent
    child = build_child_version(table, [example("   ", "a", 9), example("a perfectly fine new text", "b", 10)],
                                get_blob=store.__getitem__, put_blob=put, config=WorkspaceConfig())
    assert [(e["feedback_ids"], e["reason"]) for e in child.excluded] == [(["fb9"], "empty_text")]
    assert [a["feedback_ids"] for a in child.added] == [["fb10"]]


def test_image_parents_rebuild_with_the_same_ids(tmp_path: Path) -> None:
    store, put = blobs()
    raw = [RawRecord(source=f"img/{i}.png", image_path=write_png(tmp_path / f"{i}.png", seed=i),
                     fields={"category": "ab"[i % 2]}) for i in range(20)]
    table = build_version(raw, put_blob=put, config=WorkspaceConfig()).table
    served = write_png(tmp_path / "served.png", seed=500).read_bytes()
    test_image = next(r for r in table_to_records(table) if r.split == "test")
    new = [example("", "a", 1, image=put(served)), example("", "b", 2, image=test_image.image)]
    child = build_child_version(table, new, get_blob=store.__getitem__, put_blob=put, config=WorkspaceConfig())
    assert by_split(child.built.table, "test") == by_split(table, "test")
    assert [(a["feedback_ids"], a["split"]) for a in child.added] == [(["fb1"], "train")]
    assert [e["reason"] for e in child.excluded] == ["test_duplicate"]
    added = next(r for r in table_to_records(child.built.table) if r.id == child.added[0]["record_id"])
    assert added.image == hashlib.sha256(served).hexdigest() and (added.width, added.height) == (16, 16)
