"""Feedback -> corrected examples -> a child dataset version (the loop's return edge).

Two steps, both free of the workspace (blobs come and go through callables):

1. :func:`corrections_from_feedback` turns feedback into labelled examples by majority vote.
2. :func:`build_child_version` adds them to the parent dataset version and runs the data gate.

**Votes.** Feedback is grouped by the prediction's ``input_hash``: the same input served twice
and corrected on both predictions is one example with two votes. Each feedback is one vote:

* ``label`` (single-label) / ``labels`` (multi-label, a set): a vote for that answer;
* ``correct: true``: a vote for the answer the model gave;
* ``correct: false``: a vote *against* the answer the model gave (it names no label).

The answer with the most votes wins when it has strictly more votes than any other answer and
strictly more than the votes against it. Otherwise the input is *held back* for review, with
every vote listed: ``tie`` (two answers, or an answer and its rejections, have as many votes),
``no_label`` (nobody named an answer that survives: thumbs-down only, or outvoted by them),
``no_input`` (the log kept no input: ``keep_inputs`` was off). Feedback whose prediction is not
in the mapping is never used and is listed in ``unknown``.

**The child version** is the parent's records plus the examples, through the data gate
(:func:`aifab.data.ingest.build_version`, with the parent's records fed again so that exact and
near duplicates are found across old and new, and the parent as ``parent=`` so that every
parent record keeps its id and split). Rules:

* every new record goes to **train** (a near duplicate of a parent train/val record joins that
  record's split, so duplicates still never cross splits); the parent's test split is frozen;
* an example whose content is a parent **test** record (exact or near duplicate) is *excluded*:
  it would leak the benchmark into training;
* an example whose content equals parent train/val record(s) with the same label changes
  nothing and is reported as *unchanged*; with a different label the correction *replaces*
  them: the old records are dropped (listed with their ids and labels) and the example enters
  as a new record (a new id: ids hash content and label);
* an example the gate would refuse (empty text, unreadable image, ...) is excluded with the
  gate's reason; so is one that would make the gate quarantine a parent record (a near
  duplicate of it with another label: ``conflicting_labels``). The parent's records stay as
  they are; an annotator decides such cases.

The result says which feedback ids went into which record: that is the lineage the pipeline
stores with the version (feedback id -> record id -> dataset version -> model version).

>>> from datetime import datetime, timezone
>>> from aifab.core.types import Feedback, Prediction
>>> at = datetime(2024, 1, 1, tzinfo=timezone.utc)
>>> p = Prediction(id="p1", model_name="sms", model_version=1, created_at=at, input_hash="h1",
...                label="spam", scores={"spam": 0.6, "ham": 0.4}, latency_ms=1.0, input_text="hi mum")
>>> votes = [Feedback(id=f"f{i}", prediction_id="p1", model_name="sms", created_at=at, label=x)
...          for i, x in enumerate(["ham", "ham", "spam"])]
>>> c = corrections_from_feedback(votes, {"p1": p}, multi_label=False)
>>> c.examples[0].text, c.examples[0].label, c.examples[0].feedback_ids
('hi mum', 'ham', ('f0', 'f1', 'f2'))
"""

from __future__ import annotations

import hashlib
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from aifab.core.errors import GateFailed, IntegrityError
from aifab.core.types import Feedback, Prediction

if TYPE_CHECKING:
    import pyarrow as pa

    from aifab.core.config import WorkspaceConfig
    from aifab.core.progress import Progress
    from aifab.data.ingest import Built
    from aifab.data.records import RawRecord, Record

HeldReason = Literal["tie", "no_label", "no_input"]
Answer = str | tuple[str, ...]
"""A single-label answer is a class name; a multi-label answer the sorted tuple of its classes."""

SOURCE_PREFIX = "feedback:"
"""New records' ``source``: ``feedback:<first prediction id>``."""

_MAX_ROUNDS = 4


@dataclass(frozen=True)
class Example:
    """One corrected input: its content (text, or the image's blob digest), the winning label
    (``label`` single-label, ``labels`` multi-label) and the votes and ids behind it."""

    input_hash: str
    text: str | None
    image: str | None
    label: str | None
    labels: tuple[str, ...] | None
    votes: tuple[tuple[Answer, int], ...]
    against: tuple[tuple[Answer, int], ...]
    feedback_ids: tuple[str, ...]
    prediction_ids: tuple[str, ...]

    @property
    def answer(self) -> Answer:
        return self.labels if self.labels is not None else self.label  # type: ignore[return-value]

    @property
    def source(self) -> str:
        return SOURCE_PREFIX + self.prediction_ids[0]


@dataclass(frozen=True)
class HeldBack:
    """An input whose feedback gives no usable label, with every vote for and against."""

    input_hash: str
    reason: HeldReason
    votes: tuple[tuple[Answer, int], ...]
    against: tuple[tuple[Answer, int], ...]
    feedback_ids: tuple[str, ...]
    prediction_ids: tuple[str, ...]


@dataclass(frozen=True)
class Corrections:
    """What :func:`corrections_from_feedback` found: ``examples`` to add, ``held_back`` inputs,
    and ``unknown`` feedback ids whose prediction is not in the mapping (never used)."""

    examples: tuple[Example, ...]
    held_back: tuple[HeldBack, ...]
    unknown: tuple[str, ...] = ()


def corrections_from_feedback(
    feedback: Sequence[Feedback], predictions: Mapping[str, Prediction], *, multi_label: bool
) -> Corrections:
    """Majority vote per input over ``feedback`` (rules in the module docstring).

    ``predictions`` maps prediction id -> the logged prediction. Examples and held-back inputs
    come in a fixed order (by input hash), whatever the order of ``feedback``.

    >>> from datetime import datetime, timezone
    >>> at = datetime(2024, 1, 1, tzinfo=timezone.utc)
    >>> p = Prediction(id="p1", model_name="sms", model_version=1, created_at=at, input_hash="h1",
    ...                label="spam", scores={}, latency_ms=1.0, input_text="hi mum")
    >>> fb = [Feedback(id="f1", prediction_id="p1", model_name="sms", created_at=at, correct=True),
    ...       Feedback(id="f2", prediction_id="p1", model_name="sms", created_at=at, correct=False),
    ...       Feedback(id="f3", prediction_id="gone", model_name="sms", created_at=at, label="ham")]
    >>> c = corrections_from_feedback(fb, {"p1": p}, multi_label=False)
    >>> c.examples, c.held_back[0].reason, c.held_back[0].votes, c.held_back[0].against, c.unknown
    ((), 'tie', (('spam', 1),), (('spam', 1),), ('f3',))
    """
    groups: dict[str, list[tuple[Feedback, Prediction]]] = {}
    unknown: list[str] = []
    for fb in sorted(feedback, key=lambda f: (f.created_at, f.id)):
        pred = predictions.get(fb.prediction_id)
        if pred is None:
            unknown.append(fb.id)
            continue
        groups.setdefault(pred.input_hash, []).append((fb, pred))

    examples: list[Example] = []
    held: list[HeldBack] = []
    for input_hash in sorted(groups):
        members = groups[input_hash]
        votes: Counter[Answer] = Counter()
        against: Counter[Answer] = Counter()
        for fb, pred in members:
            given = _answer_of(fb, multi_label)
            if given is not None:
                votes[given] += 1
                continue
            served = _served_answer(pred, multi_label)
            if fb.correct is True and served is not None:
                votes[served] += 1
            elif fb.correct is False and served is not None:
                against[served] += 1
        fb_ids = tuple(dict.fromkeys(fb.id for fb, _ in members))
        pred_ids = tuple(dict.fromkeys(pred.id for _, pred in members))
        ranked = tuple(sorted(votes.items(), key=lambda kv: (-kv[1], _order(kv[0]))))
        rejected = tuple(sorted(against.items(), key=lambda kv: (-kv[1], _order(kv[0]))))
        text, image = _content(pred for _, pred in members)
        reason = _verdict(ranked, against)
        if reason is None and text is None and image is None:
            reason = "no_input"
        if reason is not None:
            held.append(HeldBack(input_hash, reason, ranked, rejected, fb_ids, pred_ids))
            continue
        winner = ranked[0][0]
        examples.append(
            Example(
                input_hash=input_hash,
                text=text,
                image=image,
                label=None if multi_label else str(winner),
                labels=tuple(winner) if multi_label else None,
                votes=ranked,
                against=rejected,
                feedback_ids=fb_ids,
                prediction_ids=pred_ids,
            )
        )
    return Corrections(examples=tuple(examples), held_back=tuple(held), unknown=tuple(unknown))


def _answer_of(fb: Feedback, multi_label: bool) -> Answer | None:
    """The answer a feedback names, in the model's shape (None for a thumbs up/down)."""
    if multi_label:
        if fb.labels is not None:
            return tuple(sorted(set(fb.labels)))
        return (fb.label,) if fb.label is not None else None
    if fb.label is not None:
        return fb.label
    if fb.labels is not None and len(fb.labels) == 1:
        return fb.labels[0]
    return None


def _served_answer(pred: Prediction, multi_label: bool) -> Answer | None:
    label = pred.label
    if multi_label:
        if isinstance(label, (list, tuple)):
            return tuple(sorted(set(map(str, label))))
        return None
    return label if isinstance(label, str) else None


def _verdict(ranked: tuple[tuple[Answer, int], ...], against: Counter[Answer]) -> HeldReason | None:
    if not ranked:
        return "no_label"
    best, count = ranked[0]
    if len(ranked) > 1 and ranked[1][1] == count:
        return "tie"
    rejections = against.get(best, 0)
    if rejections == count:
        return "tie"
    if rejections > count:
        return "no_label"
    return None


def _order(answer: Answer) -> tuple[int, str]:
    return (1, "\x00".join(answer)) if isinstance(answer, tuple) else (0, answer)


def _content(predictions: Iterator[Prediction]) -> tuple[str | None, str | None]:
    """The input, from the first prediction that kept it (same hash: the same input)."""
    for pred in predictions:
        if pred.input_text is not None or pred.input_blob is not None:
            return pred.input_text, pred.input_blob
    return None, None


# ---------------------------------------------------------------------------------------------
# The child version
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChildVersion:
    """A child dataset version ready to commit, and what happened to each example.

    ``added``: one entry per new record (``record_id``, ``input_hash``, ``label``/``labels``,
    ``split``, ``feedback_ids``, ``prediction_ids``); ``replaced``: parent records dropped by a
    correction (``record_id``, ``split``, ``old``, ``new``, ``new_record_id``, ``feedback_ids``);
    ``unchanged``: examples already in the parent with that label; ``excluded``: examples kept
    out (``reason``: ``test_duplicate``, ``test_near_duplicate``, ``conflicts_with_parent`` or a
    gate check such as ``empty_text``; ``message``; ``record_ids`` of parent records involved);
    ``parent_dropped``: parent train/val records the gate now quarantines by itself (a stricter
    ``aifab.yaml`` than when they were ingested). ``lineage`` is the JSON-ready summary the
    pipeline stores in the version's report.
    """

    built: Built
    added: tuple[dict[str, Any], ...]
    replaced: tuple[dict[str, Any], ...]
    unchanged: tuple[dict[str, Any], ...]
    excluded: tuple[dict[str, Any], ...]
    parent_dropped: tuple[dict[str, Any], ...] = ()
    lineage: dict[str, Any] = field(default_factory=dict)

    @property
    def changed(self) -> bool:
        """Whether the child differs from its parent (a record added or replaced)."""
        return bool(self.added or self.replaced)


def build_child_version(
    parent: pa.Table,
    examples: Sequence[Example],
    *,
    get_blob: Callable[[str], bytes],
    put_blob: Callable[[bytes], str],
    config: WorkspaceConfig,
    progress: Progress | None = None,
) -> ChildVersion:
    """The parent's records plus ``examples`` through the data gate, new records in train only.

    ``parent`` is the parent version's manifest; ``get_blob`` reads image blobs (parent images
    and logged image inputs), ``put_blob`` stores them. The rules are in the module docstring.
    GateFailed when the gate blocks, or when it would drop a parent test record by itself (the
    test split is frozen); IntegrityError when the parent's record ids cannot be reproduced.

    >>> import hashlib
    >>> from aifab.core.config import WorkspaceConfig
    >>> from aifab.data.ingest import build_version
    >>> from aifab.data.records import RawRecord
    >>> put = lambda b: hashlib.sha256(b).hexdigest()
    >>> raw = [RawRecord(source=f"a.csv:{i + 2}", fields={"text": f"message number {i}", "category": "ab"[i % 2]})
    ...        for i in range(20)]
    >>> parent = build_version(raw, put_blob=put, config=WorkspaceConfig()).table
    >>> ex = Example(input_hash="h", text="call me when you land", image=None, label="b", labels=None,
    ...              votes=(("b", 1),), against=(), feedback_ids=("f1",), prediction_ids=("p1",))
    >>> child = build_child_version(parent, [ex], get_blob=bytes, put_blob=put, config=WorkspaceConfig())
    >>> child.built.table.num_rows, [(a["label"], a["split"], a["feedback_ids"]) for a in child.added]
    (21, [('b', 'train', ['f1'])])
    """
    import pyarrow.compute as pc

    from aifab.data.records import table_to_records
    from aifab.data.texts import repair_text

    parent_records = table_to_records(parent)
    by_content: dict[tuple[str | None, str | None], list[Record]] = {}
    for r in parent_records:
        by_content.setdefault(_key(r.text, r.image), []).append(r)

    excluded: list[dict[str, Any]] = []
    unchanged: list[dict[str, Any]] = []
    replaced: list[dict[str, Any]] = []
    dropped: set[str] = set()
    candidates: list[Example] = []
    for ex in examples:
        same = by_content.get(_key(repair_text(ex.text) if ex.text is not None else None, ex.image), [])
        tests = [r for r in same if r.split == "test"]
        if tests:
            message = "the same content is a record of the frozen test split"
            excluded.append(_excluded(ex, "test_duplicate", message, [r.id for r in tests]))
            continue
        if same and all(_record_answer(r) == _normal(ex.answer) for r in same):
            unchanged.append(_entry(ex) | {"record_ids": [r.id for r in same]})
            continue
        for r in same:
            dropped.add(r.id)
            replaced.append({
                "record_id": r.id, "split": r.split, "old": _record_answer(r), "new": _normal(ex.answer),
                "input_hash": ex.input_hash, "feedback_ids": list(ex.feedback_ids),
            })
        candidates.append(ex)

    kept_parent = [r for r in parent_records if r.id not in dropped]
    parent_split = {r.id: r.split for r in kept_parent}
    is_dropped = pc.is_in(parent.column("id"), value_set=_array(sorted(dropped)))
    kept_table = parent.filter(pc.invert(is_dropped))
    with tempfile.TemporaryDirectory(prefix="aifab-retrain-") as tmp:
        images = _ImageFiles(Path(tmp), get_blob)
        for _ in range(_MAX_ROUNDS):
            built = _build(kept_parent, candidates, kept_table, images, put_blob, config, progress)
            culprits, lost = _lost_parent_records(built, parent_split, candidates)
            if not culprits:
                break
            # A new record made the gate drop a parent record: keep the parent, leave the example out.
            for ex, finding in culprits.items():
                involved = [i for i in finding.record_ids if i in parent_split]
                message = f"{finding.check}: {finding.message}"
                excluded.append(_excluded(ex, "conflicts_with_parent", message, involved))
            candidates = [ex for ex in candidates if ex not in culprits]
        else:  # pragma: no cover - every round leaves out at least one example; it rarely takes two
            raise GateFailed(
                "the feedback examples keep conflicting with the parent's records; review them"
            )

    lost_test = sorted(i for i, s in lost.items() if s == "test")
    if lost_test:
        raise GateFailed(
            f"the data gate under the current aifab.yaml drops {len(lost_test)} record(s) of the "
            f"parent's frozen test split ({', '.join(lost_test[:5])}); the test split cannot change: "
            "restore the checks' policies or ingest a fresh dataset",
            details={"record_ids": lost_test[:100], "report": _report_json(built)},
        )
    by_source = {ex.source: ex for ex in candidates}
    added, new_ids = [], {}
    for row in built.table.select(["id", "source", "split"]).to_pylist():
        ex = by_source.get(row["source"])
        if ex is not None and row["id"] not in parent_split:
            new_ids[ex.source] = row["id"]
            added.append(_entry(ex) | {"record_id": row["id"], "split": row["split"]})
    # A correction the gate then refused leaves new_record_id None: the old record stays dropped
    # (the vote said its label is wrong), and the example is listed in `excluded` with the reason.
    for entry in replaced:
        src = next((e.source for e in candidates if e.input_hash == entry["input_hash"]), None)
        entry["new_record_id"] = new_ids.get(src or "")
    reasons = _reasons(built)
    for row in built.quarantine.select(["id", "source"]).to_pylist():
        ex = by_source.get(row["source"])
        if ex is not None:
            check, message = reasons.get(row["id"], ("quarantined", "left out by the data gate"))
            if check == "split_leak":
                check = "test_near_duplicate"
            excluded.append(_excluded(ex, check, message, []))
    parent_dropped = [
        {"record_id": i, "split": s, "reason": reasons.get(i, ("quarantined", ""))[0]}
        for i, s in sorted(lost.items())
    ]
    used = sorted({f for part in (added, unchanged, excluded) for e in part for f in e["feedback_ids"]})
    lineage = {
        "feedback_ids": used,
        "added": added,
        "replaced": replaced,
        "unchanged": unchanged,
        "excluded": excluded,
        "parent_dropped": parent_dropped,
    }
    return ChildVersion(
        built=built,
        added=tuple(added),
        replaced=tuple(replaced),
        unchanged=tuple(unchanged),
        excluded=tuple(excluded),
        parent_dropped=tuple(parent_dropped),
        lineage=lineage,
    )


def _build(
    parent_records: list[Record],
    candidates: list[Example],
    parent_table: pa.Table,
    images: _ImageFiles,
    put_blob: Callable[[bytes], str],
    config: WorkspaceConfig,
    progress: Progress | None,
) -> Built:
    from aifab.data.ingest import build_version

    # Parent records first: a duplicate group's first member is the copy a quarantine policy
    # keeps, so a new copy never pushes out an old one.
    raw = [*(_raw_parent(r, images) for r in parent_records), *(_raw_example(ex, images) for ex in candidates)]
    return build_version(
        raw, put_blob=put_blob, config=config, parent=parent_table, total=len(raw), progress=progress
    )


def _lost_parent_records(
    built: Built, parent_split: dict[str, str | None], candidates: list[Example]
) -> tuple[dict[Example, Any], dict[str, str | None]]:
    """Parent records the gate left out, and the new examples whose findings took them out."""
    child_ids = set(built.table.column("id").to_pylist())
    seen = child_ids | set(built.quarantine.column("id").to_pylist())
    missing = sorted(i for i in parent_split if i not in seen)
    if missing:
        raise IntegrityError(
            f"rebuilding the parent's records gave other ids for {len(missing)} record(s) "
            f"({', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}); the parent was not built by this "
            "version of aifab's ingest, so its split cannot be frozen",
            details={"record_ids": missing[:100]},
        )
    for row in built.table.select(["id", "split"]).to_pylist():
        if row["id"] in parent_split and row["split"] != parent_split[row["id"]]:
            raise IntegrityError(
                f"record {row['id']}: split {parent_split[row['id']]!r} in the parent but {row['split']!r} in the "
                "child; a child version must keep its parent's splits"
            )
    lost = {i: s for i, s in parent_split.items() if i not in child_ids}
    if not lost:
        return {}, {}
    source_of = dict(zip(built.quarantine.column("id").to_pylist(), built.quarantine.column("source").to_pylist()))
    source_of.update(zip(built.table.column("id").to_pylist(), built.table.column("source").to_pylist()))
    by_source = {ex.source: ex for ex in candidates}
    culprits: dict[Example, Any] = {}
    for finding in built.report.findings:
        if finding.action != "quarantine" or not any(i in lost for i in _quarantined_by(finding)):
            continue
        for rid in finding.record_ids:
            ex = by_source.get(source_of.get(rid, "")) if rid not in parent_split else None
            if ex is not None:
                culprits.setdefault(ex, finding)
    return culprits, lost


class _ImageFiles:
    """Blobs written once to a temporary folder, because the image gate reads files.

    No extension: the gate's wrong-extension check then has nothing to compare.
    """

    def __init__(self, root: Path, get_blob: Callable[[str], bytes]) -> None:
        self.root, self.get_blob = root, get_blob

    def path(self, digest: str) -> Path:
        path = self.root / hashlib.sha256(digest.encode()).hexdigest()
        if not path.exists():
            path.write_bytes(self.get_blob(digest))
        return path


def _raw_parent(r: Record, images: _ImageFiles) -> RawRecord:
    from aifab.data.records import RawRecord

    fields = {name: getattr(r, name) for name in ("text", "category", "categories", "tokens", "tags", "boxes",
                                                  "mask", "number", "meta") if getattr(r, name) is not None}
    return RawRecord(source=r.source, fields=fields, image_path=images.path(r.image) if r.image else None)


def _raw_example(ex: Example, images: _ImageFiles) -> RawRecord:
    from aifab.data.records import RawRecord

    fields: dict[str, Any] = {"meta": {"feedback": ",".join(ex.feedback_ids[:20])}}
    if ex.text is not None:
        fields["text"] = ex.text
    if ex.labels is not None:
        fields["categories"] = list(ex.labels)
    else:
        fields["category"] = ex.label
    # A given split of "train": ingest's split puts it there, or in the split of a parent record
    # it duplicates (train/val join, test excludes) -- the rules of aifab.data.split.
    return RawRecord(
        source=ex.source, fields=fields, image_path=images.path(ex.image) if ex.image else None, split="train"
    )


def _key(text: str | None, image: str | None) -> tuple[str | None, str | None]:
    return (text, image)


def _record_answer(r: Record) -> Answer | None:
    if r.categories is not None:
        return tuple(sorted(set(r.categories)))
    return r.category


def _normal(answer: Answer) -> Answer:
    return tuple(sorted(set(answer))) if isinstance(answer, tuple) else answer


def _entry(ex: Example) -> dict[str, Any]:
    label: dict[str, Any] = {"labels": list(ex.labels)} if ex.labels is not None else {"label": ex.label}
    return {"input_hash": ex.input_hash, **label, "feedback_ids": list(ex.feedback_ids),
            "prediction_ids": list(ex.prediction_ids)}


def _excluded(ex: Example, reason: str, message: str, record_ids: list[str]) -> dict[str, Any]:
    return _entry(ex) | {"reason": reason, "message": message, "record_ids": record_ids}


def _reasons(built: Built) -> dict[str, tuple[str, str]]:
    """Per left-out record: the check and message of the first finding that quarantined it."""
    out: dict[str, tuple[str, str]] = {}
    for finding in built.report.findings:
        if finding.action == "quarantine" or finding.check == "split_leak":
            for rid in _quarantined_by(finding):
                out.setdefault(rid, (finding.check, finding.message))
    return out


def _quarantined_by(finding: Any) -> tuple[str, ...]:
    """The records a quarantining finding leaves out: a duplicate group keeps its first copy."""
    from aifab.data.checks import DUPLICATE_CHECKS

    if finding.check in DUPLICATE_CHECKS.values():
        return tuple(finding.record_ids[1:])
    return tuple(finding.record_ids)


def _report_json(built: Built) -> dict[str, Any]:
    from aifab.core.types import to_jsonable

    return to_jsonable(built.report)  # type: ignore[no-any-return]


def _array(values: list[str]) -> Any:
    import pyarrow as pa

    return pa.array(values, type=pa.string())
