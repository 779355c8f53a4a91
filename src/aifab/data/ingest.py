"""Ingest: raw records from a reader -> the data gate -> leak-free splits -> a manifest.

This module is pure data work: it never touches the metadata database. Blobs go through
the ``put_blob`` callable it is handed (the artifact store's ``put_bytes``), and the result
is a :class:`Built` version that :mod:`aifab.pipeline.project` commits in one transaction.
That keeps the layer rule (``data`` does not import ``store``) and makes a crash harmless:
blobs are content-addressed and idempotent, and nothing is visible until the commit.

The steps, in order:

1. read every raw record; images go through the image gate (bytes hashed and stored),
   texts through the text checks; per-record problems become findings;
2. apply the policies to those findings (quarantine / block / warn);
3. on the records that remain: exact duplicates, near-duplicate texts (MinHash LSH) and
   images (perceptual hash), conflicting labels, class imbalance, rare labels;
4. split: the data's own split is honoured, a parent's test split is frozen, and exact and
   near duplicates always share a split;
5. the manifest, sorted by record id, hashed into the version id.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from aifab.core.config import WorkspaceConfig
from aifab.core.errors import GateFailed
from aifab.core.progress import NullProgress, Progress
from aifab.core.types import CheckReport, Finding, to_jsonable
from aifab.data.records import (
    MANIFEST_SCHEMA,
    RawRecord,
    Record,
    present_fields,
    record_id,
    records_to_table,
)

# Records without these cannot be used at all, whatever the policy says (a "warn" policy on an
# unreadable image cannot keep an image record that has no image).
_UNUSABLE = {"unreadable_image", "image_bomb", "missing_file"}


@dataclass(frozen=True)
class Built:
    """A dataset version ready to commit: the manifest, the quarantined records, the report."""

    version_id: str
    table: pa.Table
    quarantine: pa.Table
    report: CheckReport
    split_counts: dict[str, int]
    label_counts: dict[str, int]
    fields: tuple[str, ...]
    info: dict[str, Any] = field(default_factory=dict)


def build_version(
    raw: Iterable[RawRecord],
    *,
    put_blob: Callable[[bytes], str],
    config: WorkspaceConfig,
    parent: pa.Table | None = None,
    total: int | None = None,
    progress: Progress | None = None,
) -> Built:
    """Run the data gate and the split over ``raw`` records; raise GateFailed when a check blocks.

    >>> from aifab.data.records import RawRecord
    >>> blobs = {}
    >>> put = lambda b: blobs.setdefault(hashlib.sha256(b).hexdigest(), b) and hashlib.sha256(b).hexdigest()
    >>> raw = [RawRecord(source=f"t.csv:{i + 2}", fields={"text": f"message number {i}", "category": "ab"[i % 2]})
    ...        for i in range(20)]
    >>> built = build_version(raw, put_blob=put, config=WorkspaceConfig())
    >>> built.table.num_rows, sorted(built.split_counts)
    (20, ['test', 'train', 'val'])
    """
    progress = progress or NullProgress()
    records, problems, phashes, thumbs, content_keys, given = _read_and_check(
        raw, put_blob=put_blob, config=config, total=total, progress=progress
    )
    from aifab.data import checks

    sources = {r.id: r.source for r in records if r.id in problems}
    first = checks.record_findings(problems, sources)
    report1 = checks.apply_policies(first, config.checks)
    dropped = set(report1.quarantined) | _unusable(problems, config)
    keep = [i for i, r in enumerate(records) if r.id not in dropped]

    with progress.task("duplicates and labels", total=3) as task:
        group, second = _dataset_findings(
            [records[i] for i in keep],
            [content_keys[i] for i in keep],
            [phashes[i] for i in keep],
            [thumbs[i] for i in keep],
            config=config,
            advance=task.advance,
        )
    report = checks.apply_policies(first + second, config.checks)
    quarantined = set(report.quarantined) | dropped
    if report.blocked:
        raise GateFailed(
            "the data gate blocked this version: " + _blocking_reasons(report),
            details={"report": to_jsonable(report)},
        )

    kept_idx = [i for i in keep if records[i].id not in quarantined]
    kept_pos = {i: n for n, i in enumerate(keep)}
    kept = [records[i] for i in kept_idx]
    kept_groups = np.asarray([group[kept_pos[i]] for i in kept_idx], dtype=np.int64)
    split_findings = _split(kept, kept_groups, [given[i] for i in kept_idx], parent=parent, config=config)
    if split_findings:
        report = checks.apply_policies(list(report.findings) + split_findings, config.checks)
    excluded = {r.id for r in kept if r.split == ""}
    kept = [r for r in kept if r.split != ""]
    lost = [records[i] for i in range(len(records)) if records[i].id in quarantined or records[i].id in excluded]

    kept.sort(key=lambda r: r.id)
    table = records_to_table(kept)
    report = _with_counts(report, records=len(records), kept=len(kept), quarantined=len(lost), excluded=excluded)
    return Built(
        version_id=manifest_digest(table),
        table=table,
        quarantine=records_to_table(sorted(lost, key=lambda r: r.id)),
        report=report,
        split_counts=dict(Counter(r.split for r in kept)),
        label_counts=dict(Counter(label for r in kept for label in r.labels())),
        fields=present_fields(table) if table.num_rows else (),
    )


def manifest_digest(table: pa.Table) -> str:
    """The version id: sha256 over the manifest's rows in a canonical JSON form.

    Parquet bytes are not canonical across writers, so the id hashes the content instead;
    the same records with the same splits always give the same id.
    """
    h = hashlib.sha256()
    for batch in table.to_batches(max_chunksize=20_000):  # bounded memory at a million rows
        for row in batch.to_pylist():
            h.update(json.dumps(row, sort_keys=True, ensure_ascii=False, default=str).encode("utf-8", "surrogatepass"))
            h.update(b"\n")
    return h.hexdigest()


def table_to_parquet(table: pa.Table) -> bytes:
    """Serialise a manifest for the artifact store."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue().to_pybytes()


def parquet_to_table(data: bytes) -> pa.Table:
    return pq.read_table(io.BytesIO(data), schema=MANIFEST_SCHEMA)


# ---------------------------------------------------------------------------------------------
# Step 1: read, image gate, text checks
# ---------------------------------------------------------------------------------------------


def _read_and_check(
    raw: Iterable[RawRecord],
    *,
    put_blob: Callable[[bytes], str],
    config: WorkspaceConfig,
    total: int | None,
    progress: Progress,
) -> tuple[
    list[Record], dict[str, list[tuple[str, str]]], list[int | None], list[bytes | None], list[str], list[str | None]
]:
    from aifab.data.texts import repair_text, text_problems

    records: list[Record] = []
    problems: dict[str, list[tuple[str, str]]] = {}
    phashes: list[int | None] = []
    thumbs: list[bytes | None] = []
    content_keys: list[str] = []
    given: list[str | None] = []
    occurrence: Counter[bytes] = Counter()
    non_printable = config.thresholds.non_printable_fraction

    with progress.task("reading and checking records", total=total) as task:
        for rec, image in _with_images(raw, max_pixels=config.thresholds.max_image_pixels):
            found = list(rec.problems)
            f = rec.fields
            text = f.get("text")
            if text is not None:
                found += [p for p in text_problems(text, non_printable_fraction=non_printable) if p not in found]
                text = repair_text(text)
            digest = width = height = phash = thumb = None
            if image is not None:
                found += list(image.problems)
                if image.data is not None:
                    digest = put_blob(image.data)
                    width, height, phash, thumb = image.width, image.height, image.phash, image.thumb
            mask = f.get("mask")
            if isinstance(mask, (bytes, bytearray)):
                mask = put_blob(bytes(mask))
            # A digest, not the content itself: exact-duplicate detection needs equality only, and a
            # second copy of every text would cost hundreds of MB at a million records.
            key = hashlib.sha256(_content_key(text, digest, rec).encode("utf-8", "surrogatepass")).hexdigest()
            # The id depends on what the record holds, not where it sat: re-ingesting a renamed or
            # reordered file keeps every id (and so the frozen test split). Copies are numbered.
            identity = key + "\x00" + _label_key(f)
            seen = hashlib.sha256(identity.encode("utf-8", "surrogatepass")).digest()
            occurrence[seen] += 1
            rid = record_id(f"#{occurrence[seen]}", identity)
            records.append(
                Record(
                    id=rid,
                    source=rec.source,
                    text=text,
                    image=digest,
                    category=f.get("category"),
                    categories=f.get("categories"),
                    tokens=f.get("tokens"),
                    tags=f.get("tags"),
                    boxes=f.get("boxes"),
                    mask=mask,
                    number=f.get("number"),
                    width=width,
                    height=height,
                    meta=f.get("meta"),
                )
            )
            if found:
                problems[rid] = found
            phashes.append(phash)
            thumbs.append(thumb)
            content_keys.append(key)
            given.append(rec.split)
            task.advance()
        task.update(total=len(records))  # the reader's count was a hint; the bar ends full
    return records, problems, phashes, thumbs, content_keys, given


def _with_images(raw: Iterable[RawRecord], *, max_pixels: int) -> Iterator[tuple[RawRecord, Any]]:
    """Pair each raw record with its image check, decoding images on two threads (Pillow frees the GIL)."""
    from aifab.data.images import inspect_image

    def check(rec: RawRecord) -> tuple[RawRecord, Any]:
        if rec.image_path is None:
            return rec, None
        return rec, inspect_image(rec.image_path, max_pixels=max_pixels)

    with ThreadPoolExecutor(max_workers=2) as pool:
        batch: list[RawRecord] = []
        for rec in raw:
            batch.append(rec)
            if len(batch) >= 256:
                yield from pool.map(check, batch)
                batch = []
        yield from pool.map(check, batch)


def _content_key(text: str | None, digest: str | None, rec: RawRecord) -> str:
    parts = []
    if digest is not None:
        parts.append("image:" + digest)
    elif rec.image_path is not None:
        parts.append("unreadable:" + rec.source)  # no bytes to hash: tell broken files apart by name
    if text is not None:
        parts.append("text:" + text)
    if not parts:
        parts.append("source:" + rec.source)
    return "\x00".join(parts)


def _label_key(fields: dict[str, Any]) -> str:
    labels = {k: fields.get(k) for k in ("category", "categories", "tags", "number") if fields.get(k) is not None}
    if fields.get("boxes"):
        labels["boxes"] = [(b.label, b.x, b.y, b.w, b.h) for b in fields["boxes"]]
    return json.dumps(labels, sort_keys=True, default=str)


def _unusable(problems: dict[str, list[tuple[str, str]]], config: WorkspaceConfig) -> set[str]:
    return {
        rid
        for rid, found in problems.items()
        if any(check in _UNUSABLE and getattr(config.checks, check) != "block" for check, _ in found)
    }


# ---------------------------------------------------------------------------------------------
# Step 3: dataset-level checks
# ---------------------------------------------------------------------------------------------


def _dataset_findings(
    records: list[Record],
    content_keys: list[str],
    phashes: list[int | None],
    thumbs: list[bytes | None],
    *,
    config: WorkspaceConfig,
    advance: Callable[[int], None],
) -> tuple[np.ndarray, list[Finding]]:
    """Duplicate groups (exact + near, merged for the split) and the findings about them."""
    from aifab.data import checks, dedup

    ids = [r.id for r in records]
    sources = [r.source for r in records]
    labels = [r.labels() for r in records]
    findings: list[Finding] = []
    n = len(records)
    cfg = config.checks

    exact = dedup.exact_groups(content_keys)
    findings += checks.duplicate_findings(ids, content_keys, labels, kind="exact", groups=exact, sources=sources)
    advance(1)

    groups = [exact]
    text_idx = [i for i, r in enumerate(records) if r.text and r.image is None]
    if cfg.near_duplicate_text != "off" and len(text_idx) > 1:
        near = dedup.near_duplicate_groups(
            [records[i].text for i in text_idx], threshold=config.thresholds.near_duplicate_text_jaccard
        ).group
        full = _scatter(near, text_idx, n)
        groups.append(full)
        findings += checks.duplicate_findings(
            ids, content_keys, labels, kind="near_text", groups=_beyond_exact(full, exact), sources=sources
        )
    advance(1)

    if cfg.near_duplicate_image != "off" and any(p is not None for p in phashes):
        blank = bytes(256)
        near_img = dedup.image_near_duplicate_groups(
            phashes,
            max_hamming=config.thresholds.near_duplicate_image_hamming,
            thumbs=np.frombuffer(b"".join(t or blank for t in thumbs), dtype=np.uint8).reshape(-1, 256),
            max_pixel_diff=config.thresholds.near_duplicate_image_pixel_diff,
        )
        groups.append(near_img)
        findings += checks.duplicate_findings(
            ids, content_keys, labels, kind="near_image", groups=_beyond_exact(near_img, exact), sources=sources
        )
    findings += checks.label_findings(
        ids,
        labels,
        imbalance_ratio=config.thresholds.imbalance_ratio,
        min_records_per_label=config.thresholds.min_records_per_label,
    )
    advance(1)
    return merge_groups(groups, n), findings


def _scatter(sub_groups: np.ndarray, index: list[int], n: int) -> np.ndarray:
    """Lift group ids computed on a subset back to all n records (others become singletons)."""
    full = np.arange(n, dtype=np.int64) + (int(sub_groups.max()) + 1 if len(sub_groups) else 0)
    full[np.asarray(index, dtype=np.int64)] = sub_groups
    return full


def _beyond_exact(near: np.ndarray, exact: np.ndarray) -> np.ndarray:
    """Near groups that hold more than one exact group (pure exact copies are reported once, as exact)."""
    pairs = np.unique(np.stack([near, exact], axis=1), axis=0)
    distinct = Counter(pairs[:, 0].tolist())
    out = near.copy()
    single = np.array([distinct[g] == 1 for g in near.tolist()], dtype=bool)
    out[single] = -1 - np.arange(int(single.sum()))
    return out


def merge_groups(group_arrays: list[np.ndarray], n: int) -> np.ndarray:
    """Connected components over several groupings: records that share any group share the result.

    >>> merge_groups([np.array([0, 0, 1, 2]), np.array([5, 6, 6, 7])], 4).tolist()
    [0, 0, 0, 1]
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if n == 0:
        return np.zeros(0, dtype=np.int64)
    rows, cols = [], []
    offset = n
    for g in group_arrays:
        _, inverse = np.unique(np.asarray(g), return_inverse=True)
        rows.append(np.arange(n))
        cols.append(inverse + offset)
        offset += int(inverse.max()) + 1
    r = np.concatenate(rows)
    c = np.concatenate(cols)
    graph = coo_matrix((np.ones(len(r), dtype=np.int8), (r, c)), shape=(offset, offset))
    _, labels = connected_components(graph, directed=False)
    _, compact = np.unique(labels[:n], return_inverse=True)
    return compact.astype(np.int64)


# ---------------------------------------------------------------------------------------------
# Step 4: split
# ---------------------------------------------------------------------------------------------


def _split(
    records: list[Record],
    groups: np.ndarray,
    given: list[str | None],
    *,
    parent: pa.Table | None,
    config: WorkspaceConfig,
) -> list[Finding]:
    from aifab.data.split import assign_splits, stratum_of

    label_counts = Counter(label for r in records for label in r.labels())
    strata = [stratum_of(r.labels(), label_counts) for r in records]
    frozen: dict[int, str] = {}
    if parent is not None and parent.num_rows:
        parent_split = dict(zip(parent.column("id").to_pylist(), parent.column("split").to_pylist()))
        frozen = {i: parent_split[r.id] for i, r in enumerate(records) if r.id in parent_split}
    has_given = any(g is not None for g in given)
    result = assign_splits(
        strata,
        groups.tolist(),
        given=given if has_given else None,
        frozen=frozen or None,
        ratios=config.split,
    )
    splits = list(result.splits)
    if has_given and not frozen and config.split.val > 0 and "val" not in splits and "train" in splits:
        splits = _carve_val(splits, strata, groups, config)
    for r, s in zip(records, splits):
        r.split = s

    findings: list[Finding] = []
    if result.moved:
        ids = tuple(records[i].id for i in result.moved)
        findings.append(
            Finding(
                check="split_leak",
                severity="warning",
                message=(
                    f"{result.groups_crossing} duplicate group(s) crossed the data's own splits; "
                    f"{len(ids)} record(s) moved to their group's most held-out split"
                ),
                record_ids=ids,
                sources=tuple(records[i].source for i in result.moved),
            )
        )
    if result.excluded:
        ids = tuple(records[i].id for i in result.excluded)
        findings.append(
            Finding(
                check="split_leak",
                severity="warning",
                message=f"{len(ids)} new record(s) duplicate a frozen test record and were left out",
                record_ids=ids,
                sources=tuple(records[i].source for i in result.excluded),
            )
        )
    return findings


def _carve_val(splits: list[str], strata: list[str | None], groups: np.ndarray, config: WorkspaceConfig) -> list[str]:
    """Data that brings train and test but no validation split gets one carved from its train split
    (stratified, duplicate groups kept whole): training needs it for early stopping, and taking it
    from test would change the user's benchmark.

    >>> cfg = WorkspaceConfig()
    >>> out = _carve_val(["train"] * 18 + ["test"] * 2, ["a", "b"] * 10, np.arange(20), cfg)
    >>> out.count("val"), out.count("test")
    (2, 2)
    """
    from aifab.core.config import SplitConfig
    from aifab.data.split import assign_splits

    train_idx = [i for i, s in enumerate(splits) if s == "train"]
    share = config.split.val / (config.split.val + config.split.train)
    inner = assign_splits(
        [strata[i] for i in train_idx],
        [int(groups[i]) for i in train_idx],
        ratios=SplitConfig(val=share, test=0.0, seed=config.split.seed),
    )
    out = list(splits)
    for i, s in zip(train_idx, inner.splits):
        out[i] = s
    return out


def _blocking_reasons(report: CheckReport) -> str:
    blocking = [f for f in report.findings if f.action == "block"]
    return "; ".join(f"{f.check}: {f.message}" for f in blocking[:10]) + (
        f" (+{len(blocking) - 10} more)" if len(blocking) > 10 else ""
    )


def _with_counts(report: CheckReport, *, records: int, kept: int, quarantined: int, excluded: set[str]) -> CheckReport:
    counts = dict(report.counts)
    counts.update({"records_read": records, "records_kept": kept, "records_quarantined": quarantined})
    return CheckReport(
        findings=report.findings,
        quarantined=tuple(sorted(set(report.quarantined) | excluded)),
        blocked=report.blocked,
        counts=counts,
    )
