"""Dataset-level checks of the data gate, and the policy step that turns findings into a verdict.

The per-record checks live beside the data they read (:mod:`aifab.data.images`,
:mod:`aifab.data.texts`, the format readers); they hand back ``(check, message)`` pairs,
which :func:`record_findings` turns into :class:`~aifab.core.types.Finding` objects. The
functions here add what only the whole dataset shows (duplicates, conflicting labels,
class balance), and :func:`apply_policies` applies the workspace's
:class:`~aifab.core.config.ChecksConfig`:

``off`` drops the finding, ``warn`` reports it, ``quarantine`` keeps its records out of
the version (for duplicate groups: every copy but the first, ``record_ids[0]``), and
``block`` refuses the whole version.

Check names are the field names of ``ChecksConfig``; a test keeps every name emitted
here and in the per-record checks among them.

>>> from aifab.core.config import ChecksConfig
>>> found = record_findings({"r1": [("empty_text", "text is empty")]}, {"r1": "a.csv:2"})
>>> report = apply_policies(found, ChecksConfig())
>>> report.quarantined, report.blocked, report.findings[0].severity
(('r1',), False, 'error')
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np

from aifab.core.config import ChecksConfig
from aifab.core.errors import check_choice
from aifab.core.types import Action, CheckReport, Finding, Severity

DuplicateKind = Literal["exact", "near_text", "near_image"]

DUPLICATE_CHECKS: dict[str, str] = {
    "exact": "exact_duplicate",
    "near_text": "near_duplicate_text",
    "near_image": "near_duplicate_image",
}
"""The check each kind of duplicate group reports under."""

ERROR_CHECKS = frozenset(
    {"unreadable_image", "image_bomb", "missing_file", "empty_text", "non_printable_text"}
)
"""Checks whose records are unusable: severity ``error``; every other check is a ``warning``."""

_KEEP_FIRST = frozenset(DUPLICATE_CHECKS.values())
_DESCRIBE = {
    "exact": "have the same content",
    "near_text": "have near-duplicate texts",
    "near_image": "have near-identical images (perceptual hash)",
}


def severity_of(check: str) -> Severity:
    """``error`` for checks that make a record unusable, ``warning`` for the rest.

    >>> severity_of("image_bomb"), severity_of("rare_label")
    ('error', 'warning')
    """
    return "error" if check in ERROR_CHECKS else "warning"


def record_findings(
    problems: Mapping[str, Sequence[tuple[str, str]]], sources: Mapping[str, str]
) -> list[Finding]:
    """Per-record ``(check, message)`` problems as findings: one per distinct (check, message).

    Every record id is kept, with its source (``""`` when ``sources`` does not know it).

    >>> empty = [("empty_text", "text is empty")]
    >>> fs = record_findings({"a": empty, "b": empty}, {"a": "t.csv:2", "b": "t.csv:3"})
    >>> [(f.check, f.record_ids, f.sources) for f in fs]
    [('empty_text', ('a', 'b'), ('t.csv:2', 't.csv:3'))]
    """
    grouped: dict[tuple[str, str], dict[str, None]] = {}
    for rid, found in problems.items():
        for check, message in found:
            grouped.setdefault((check, message), {})[rid] = None
    return [
        Finding(
            check=check,
            severity=severity_of(check),
            message=message,
            record_ids=tuple(rids),
            sources=tuple(sources.get(rid, "") for rid in rids),
        )
        for (check, message), rids in grouped.items()
    ]


def duplicate_findings(
    record_ids: Sequence[str],
    content_keys: Sequence[str | None],
    labels: Sequence[Sequence[str]],
    *,
    kind: DuplicateKind,
    groups: Sequence[int] | np.ndarray,
    sources: Sequence[str] | None = None,
) -> list[Finding]:
    """One finding per group of more than one record, plus ``conflicting_labels`` findings.

    ``groups`` holds one group id per record (any ints: equal ids mean one group, e.g. from
    :mod:`aifab.data.dedup`). Within a finding, records are in input order and
    ``record_ids[0]`` is the copy a ``quarantine`` policy keeps. ``content_keys`` only
    feed the message (a short preview of what is duplicated). A group whose members carry
    different label sets (records without labels aside) also yields a ``conflicting_labels``
    finding listing every label and how many members carry it.

    >>> keys, labels = ["text:hi", "text:hi", "text:yo"], [["x"], ["y"], ["x"]]
    >>> fs = duplicate_findings(["a", "b", "c"], keys, labels, kind="exact", groups=[0, 0, 2])
    >>> [(f.check, f.record_ids) for f in fs]
    [('exact_duplicate', ('a', 'b')), ('conflicting_labels', ('a', 'b'))]
    >>> fs[1].message
    "2 records have the same content ('text:hi') but different labels: 'x' (1), 'y' (1)"
    """
    check = DUPLICATE_CHECKS[check_choice("kind", kind, list(DUPLICATE_CHECKS))]
    group_arr = np.asarray(groups)
    n = len(record_ids)
    if not (len(group_arr) == len(content_keys) == len(labels) == n) or (
        sources is not None and len(sources) != n
    ):
        raise ValueError(
            "record_ids, content_keys, labels, groups (and sources) need one entry per record; "
            f"got {n}, {len(content_keys)}, {len(labels)}, {len(group_arr)}"
        )
    findings: list[Finding] = []
    for members in _groups_of_several(group_arr):
        ids = tuple(record_ids[i] for i in members)
        srcs = tuple(sources[i] for i in members) if sources is not None else ()
        what = f"{len(members)} records {_DESCRIBE[kind]} ({_preview(content_keys[members[0]])})"
        findings.append(
            Finding(
                check=check,
                severity=severity_of(check),
                message=f"{what}; {ids[0]} is the copy kept",
                record_ids=ids,
                sources=srcs,
            )
        )
        label_sets = Counter(tuple(sorted(set(labels[i]))) for i in members if labels[i])
        if len(label_sets) > 1:
            per_label = Counter(label for i in members for label in set(labels[i]))
            listed = ", ".join(f"{label!r} ({count})" for label, count in sorted(per_label.items()))
            ranked = label_sets.most_common()
            message = f"{what} but different labels: {listed}"
            suspects = [i for i in members if labels[i]]
            if ranked[0][1] > ranked[1][1]:
                # A clear majority: only the copies that disagree with it are suspect. Quarantining
                # a whole group (a thousand near-identical handwritten 1s with three 7s among
                # them) would throw away the good copies with the bad.
                majority = ranked[0][0]
                suspects = [i for i in suspects if tuple(sorted(set(labels[i]))) != majority]
                message += f"; the {len(suspects)} not labelled {'|'.join(majority)!r} (the majority) are suspect"
            findings.append(
                Finding(
                    check="conflicting_labels",
                    severity=severity_of("conflicting_labels"),
                    message=message,
                    record_ids=tuple(record_ids[i] for i in suspects),
                    sources=tuple(sources[i] for i in suspects) if sources is not None else (),
                )
            )
    return findings


def _groups_of_several(groups: np.ndarray) -> list[list[int]]:
    """Member indices of every group id that occurs more than once, in order of first member."""
    if len(groups) < 2:
        return []
    order = np.argsort(groups, kind="stable")  # stable: members stay in input order
    sorted_groups = groups[order]
    starts = np.flatnonzero(np.concatenate([[True], sorted_groups[1:] != sorted_groups[:-1]]))
    lengths = np.diff(np.append(starts, len(groups)))
    spans = zip(starts.tolist(), lengths.tolist(), strict=True)
    several = [order[s : s + n].tolist() for s, n in spans if n > 1]
    return sorted(several, key=lambda members: members[0])


def _preview(key: str | None, limit: int = 60) -> str:
    if key is None:
        return "no content"
    flat = key.replace("\x00", " | ")
    return repr(flat if len(flat) <= limit else flat[: limit - 1] + "…")


def label_findings(
    record_ids: Sequence[str],
    labels: Sequence[Sequence[str]],
    *,
    imbalance_ratio: float,
    min_records_per_label: int,
) -> list[Finding]:
    """``class_imbalance`` (largest / smallest class above the ratio) and ``rare_label`` findings.

    A record counts once for every distinct label it carries (multi-label records count for
    each). ``class_imbalance`` concerns the dataset, so it names no records; each
    ``rare_label`` finding lists the records carrying that label.

    >>> fs = label_findings(["a", "b", "c", "d"], [["x"], ["x"], ["x"], ["y"]],
    ...                     imbalance_ratio=2, min_records_per_label=2)
    >>> [(f.check, f.record_ids) for f in fs]
    [('class_imbalance', ()), ('rare_label', ('d',))]
    >>> fs[0].message
    "class 'x' has 3 records and class 'y' has 1: ratio 3.0 exceeds 2"
    """
    counts = Counter(label for ls in labels for label in set(ls))
    findings: list[Finding] = []
    if len(counts) >= 2:
        # Ties are broken by name so the message is the same on every run.
        big, n_big = min(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        small, n_small = min(counts.items(), key=lambda kv: (kv[1], kv[0]))
        ratio = n_big / n_small
        if ratio > imbalance_ratio:
            findings.append(
                Finding(
                    check="class_imbalance",
                    severity=severity_of("class_imbalance"),
                    message=(
                        f"class {big!r} has {n_big} records and class {small!r} has {n_small}: "
                        f"ratio {ratio:.1f} exceeds {imbalance_ratio:g}"
                    ),
                )
            )
    for label, count in sorted(counts.items()):
        if count < min_records_per_label:
            ids = tuple(rid for rid, ls in zip(record_ids, labels, strict=True) if label in ls)
            findings.append(
                Finding(
                    check="rare_label",
                    severity=severity_of("rare_label"),
                    message=(
                        f"label {label!r} has {count} record{'s' if count != 1 else ''}; at least "
                        f"{min_records_per_label} are needed to give train, val and test examples"
                    ),
                    record_ids=ids,
                )
            )
    return findings


def apply_policies(findings: Sequence[Finding], policies: ChecksConfig) -> CheckReport:
    """Set each finding's ``action`` from its check's policy and collect the verdict.

    ``off`` drops the finding; ``quarantine`` lists its records in ``quarantined`` (for a
    duplicate group, all but ``record_ids[0]``, the copy kept); ``block`` sets ``blocked``.
    A check that ``ChecksConfig`` does not know is reported as ``warn``, never dropped.
    Applying the policies again to the report's findings gives the same report.

    >>> from aifab.core.config import ChecksConfig
    >>> dup = Finding("exact_duplicate", "warning", "same", record_ids=("a", "b", "c"))
    >>> apply_policies([dup], ChecksConfig(exact_duplicate="quarantine")).quarantined
    ('b', 'c')
    """
    known = type(policies).model_fields
    kept: list[Finding] = []
    quarantined: dict[str, None] = {}
    records_by_check: dict[str, dict[str, None]] = {}
    actions: Counter[str] = Counter()
    blocked_by: dict[str, None] = {}
    for finding in findings:
        policy: Action = getattr(policies, finding.check) if finding.check in known else "warn"
        if policy == "off":
            continue
        kept.append(dataclasses.replace(finding, action=policy))
        actions[policy] += 1
        records_by_check.setdefault(finding.check, {}).update(dict.fromkeys(finding.record_ids))
        if policy == "quarantine":
            ids = finding.record_ids[1:] if finding.check in _KEEP_FIRST else finding.record_ids
            quarantined.update(dict.fromkeys(ids))
        elif policy == "block":
            blocked_by[finding.check] = None
    counts: dict[str, Any] = {
        "findings": len(kept),
        "findings_by_action": dict(sorted(actions.items())),
        "records_by_check": {check: len(ids) for check, ids in sorted(records_by_check.items())},
        "quarantined": len(quarantined),
        "blocked_by": list(blocked_by),
    }
    return CheckReport(
        findings=tuple(kept),
        quarantined=tuple(quarantined),
        blocked=bool(blocked_by),
        counts=counts,
    )
