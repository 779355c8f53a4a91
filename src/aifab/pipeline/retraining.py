"""Close the loop: `aifab retrain NAME`, `aifab drift NAME` and the review queue, over a workspace.

``retrain`` reads the production model version, turns the feedback on its predictions into a
child of the dataset version it was trained on (:mod:`aifab.feedback.retrain`), trains a
candidate with the production spec on that child, and hands the candidate to the promotion gate.
Lineage runs both ways through the store: the candidate's ``lineage.json`` names the child
version, and the child's report (``report["retrain"]``) names every feedback id it used and the
record each one became.

Which feedback a retrain takes: all feedback on the model's predictions that is not yet in the
lineage of the production model's dataset (that version's report and its ancestors'). Feedback
used by a retrain whose candidate the gate refused is therefore used again by the next retrain,
which starts from production's data again. Every input touched by new feedback is voted on with
*all* its feedback, old and new, so a later correction can overturn an earlier one by majority.
"""

from __future__ import annotations

import io
import json
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import numpy as np

from aifab.core.errors import ConfigError, GateFailed, InputError, NotFound
from aifab.core.types import DatasetVersion, Feedback, Prediction, to_jsonable

if TYPE_CHECKING:
    from aifab.core.progress import Progress
    from aifab.pipeline.project import Workspace

MAX_FEEDBACK = 1_000_000
"""Feedback read per retrain (newest first); more than this is left for the next run."""
DEFAULT_ALARM_PSI = 0.2
DEFAULT_ALARM_P = 0.01
DEFAULT_WINDOW = 500


def retrain(
    ws: Workspace,
    name: str,
    *,
    actor: str = "aifab retrain",
    min_corrections: int = 1,
    promote: bool = True,
    role: str = "admin",
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Retrain model ``name`` from the feedback on its predictions; return a JSON-ready summary.

    Steps: corrections by majority vote -> a child dataset version (parent = production's data;
    new records in train only; the test split unchanged) committed to the store -> the label-error
    check (suspects among the new records) -> a candidate trained with the production spec on the
    child -> :func:`aifab.pipeline.promotion.promote` as ``actor`` with ``role`` (skipped with
    ``promote=False``).

    ``status`` in the result: ``skipped`` (fewer than ``min_corrections`` records would be added
    or replaced; nothing is written), ``trained`` (``promote=False``), ``promoted`` or
    ``refused`` (``gate.reasons`` says why). NotFound when ``name`` has no production version.

    >>> # retrain(ws, "sms")["status"] -> 'promoted'
    """
    from aifab.data.ingest import table_to_parquet
    from aifab.feedback.retrain import build_child_version, corrections_from_feedback
    from aifab.pipeline.project import _version_id

    if isinstance(min_corrections, bool) or not isinstance(min_corrections, int) or min_corrections < 1:
        raise ConfigError(
            f"The 'min_corrections' parameter of retrain must be an integer >= 1. Got {min_corrections!r} instead."
        )
    production = _production(ws, name)
    spec = _json_file(ws, production, "spec.json")
    lineage = _json_file(ws, production, "lineage.json")
    multi_label = bool(_json_file(ws, production, "preprocessing.json").get("multi_label"))
    parent = ws.meta.get_dataset_version(lineage["dataset_name"], lineage["dataset_version"])

    used = used_feedback(ws, parent)
    feedback = ws.meta.list_feedback(name, limit=MAX_FEEDBACK)
    predictions = _predictions_of(ws, feedback)
    pending = [fb for fb in feedback if fb.id not in used]
    touched = {predictions[fb.prediction_id].input_hash for fb in pending if fb.prediction_id in predictions}
    voting = [
        fb
        for fb in feedback
        if (fb.prediction_id in predictions and predictions[fb.prediction_id].input_hash in touched)
        or (fb.id not in used and fb.prediction_id not in predictions)
    ]
    corrections = corrections_from_feedback(voting, predictions, multi_label=multi_label)
    unknown = set(corrections.unknown)
    summary: dict[str, Any] = {
        "model": name,
        "production": production.ref,
        "dataset": parent.name,
        "parent_version": parent.id,
        "status": "skipped",
        "feedback": {"total": len(feedback), "new": len(pending), "already_used": len(feedback) - len(pending)},
        "corrections": len(corrections.examples),
        "held_back": to_jsonable(list(corrections.held_back)),
        "unknown_predictions": [
            {"feedback_id": fb.id, "prediction_id": fb.prediction_id} for fb in voting if fb.id in unknown
        ],
        "added": [],
        "replaced": [],
        "unchanged": [],
        "excluded": [],
        "child_version": None,
        "label_issues": None,
        "candidate": None,
        "gate": None,
    }
    if len(corrections.examples) < min_corrections:
        summary["reason"] = (
            f"{len(corrections.examples)} correction(s) from {len(pending)} new feedback; "
            f"at least {min_corrections} needed"
        )
        return summary

    child = build_child_version(
        ws.manifest(parent),
        corrections.examples,
        get_blob=ws.blob,
        put_blob=ws.artifacts.put_bytes,
        config=ws.config,
        progress=progress,
    )
    summary.update(
        added=list(child.added), replaced=list(child.replaced), unchanged=list(child.unchanged),
        excluded=list(child.excluded), parent_dropped=list(child.parent_dropped),
    )
    changes = len(child.added) + len(child.replaced)
    if changes < min_corrections:
        summary["reason"] = f"{changes} record(s) would be added or replaced; at least {min_corrections} needed"
        return summary

    version = _commit(ws, parent, child, production=production, corrections=corrections,
                      to_parquet=table_to_parquet, version_id=_version_id(parent.name, child.built.version_id))
    summary["child_version"] = version.id
    summary["split_counts"] = dict(version.split_counts)
    summary["label_issues"] = _new_label_issues(ws, version, {e["record_id"] for e in child.added})

    candidate_spec = dict(spec) | {"dataset": f"{version.name}@{version.id}", "name": name}
    candidate = ws.train(candidate_spec, progress=progress)
    summary["candidate"] = candidate.ref
    summary["candidate_metrics"] = dict(candidate.metrics.get("test", {}))
    if not promote:
        summary["status"] = "trained"
        return summary

    from aifab.pipeline.promotion import promote as promote_version

    reason = (
        f"retrained on {version.name}@{version.short_id}: "
        f"{changes} correction(s) from feedback on {production.ref}"
    )
    try:
        outcome = promote_version(ws, candidate.ref, actor=actor, reason=reason, role=role)
    except GateFailed as exc:
        summary["status"] = "refused"
        summary["gate"] = {
            "passed": False,
            "message": exc.message,
            "reasons": list(exc.details.get("reasons") or [exc.message]),
            "details": to_jsonable(exc.details),
        }
        return summary
    summary["status"] = "promoted"
    summary["gate"] = {"passed": True, "result": to_jsonable(outcome)}
    return summary


def used_feedback(ws: Workspace, version: DatasetVersion) -> set[str]:
    """Feedback ids already in a dataset version: its retrain lineage and its ancestors'.

    >>> # used_feedback(ws, ws.dataset("sms")) -> {'3f2a...', ...}
    """
    used: set[str] = set()
    current: DatasetVersion | None = version
    seen: set[str] = set()
    while current is not None and current.id not in seen:
        seen.add(current.id)
        used.update((ws.report(current).get("retrain") or {}).get("feedback_ids") or [])
        current = ws.meta.get_dataset_version(current.name, current.parent) if current.parent else None
    return used


# ---------------------------------------------------------------------------------------------
# Drift
# ---------------------------------------------------------------------------------------------


def drift_reference(ws: Workspace, ref: str, *, sample: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Reference statistics of model ``ref`` on (a seeded sample of at most ``sample`` records
    of) the train split it was trained on. Cache the result per model version: it only changes
    with the version.

    >>> # drift_reference(ws, "sms@production")["count"] -> 2000
    """
    from aifab.feedback.drift import embed, reference_stats

    if isinstance(sample, bool) or not isinstance(sample, int) or sample < 1:
        raise ConfigError(
            f"The 'sample' parameter of drift_reference must be an integer >= 1. Got {sample!r} instead."
        )
    loaded = ws.load_model(ref)
    lineage = json.loads(ws.blob(loaded.version.files["lineage.json"])) if "lineage.json" in loaded.version.files else {}
    if not lineage.get("dataset_name") or not lineage.get("dataset_version"):
        raise InputError(
            f"model version {loaded.version.ref}: its lineage names no dataset version, so there is "
            "no training data to compare served inputs with"
        )
    dataset = ws.meta.get_dataset_version(lineage["dataset_name"], lineage["dataset_version"])
    is_text = loaded.kind == "text"
    records = [r for r in ws.records(dataset, split="train") if (r.text if is_text else r.image)]
    if not records:
        raise InputError(f"{dataset.name}@{dataset.short_id}: no train records with a {loaded.kind} to describe")
    if len(records) > sample:
        rows = np.sort(np.random.default_rng(seed).choice(len(records), size=sample, replace=False))
        records = [records[i] for i in rows.tolist()]
    inputs = [r.text if is_text else ws.blob(r.image) for r in records]
    lengths = [len(r.text) if is_text else (r.width or 0) * (r.height or 0) for r in records]
    reference = reference_stats(
        loaded.predict_proba(inputs), loaded.labels, lengths=lengths, embeddings=embed(loaded, inputs), seed=seed
    )
    reference.update(
        model=loaded.version.ref,
        dataset_version=f"{dataset.name}@{dataset.id}",
        length_unit="characters" if is_text else "pixels",
    )
    return reference


def drift(
    ws: Workspace,
    name: str,
    *,
    ref: str | None = None,
    window: int | None = None,
    reference: dict[str, Any] | None = None,
    alarm_psi: float | None = None,
    alarm_p: float | None = None,
) -> dict[str, Any]:
    """Drift of the latest ``window`` served predictions of ``name`` against the training data
    of the version that served them (default: production). Thresholds and the window come from
    the arguments, else the spec's ``drift`` section when it has one, else 0.2 (PSI), 0.01
    (MMD p-value) and 500. Predictions served by another version are left out of the window.

    >>> # drift(ws, "sms")["alarm"] -> False
    """
    from aifab.feedback.drift import drift_report, embed

    version = ws.model(ref or f"{name}@production")
    if version.name != name:
        raise InputError(f"model version {version.ref} is not a version of {name!r}")
    settings = _json_file(ws, version, "spec.json").get("drift") or {}
    window = int(window if window is not None else settings.get("window", DEFAULT_WINDOW))
    if window < 1:
        raise ConfigError(f"The 'window' parameter of drift must be an integer >= 1. Got {window!r} instead.")
    reference = reference or drift_reference(ws, version.ref)
    if reference.get("model") not in (None, version.ref):
        raise InputError(
            f"the drift reference was made from {reference['model']}, not {version.ref}; "
            f"make one with drift_reference(ws, {version.ref!r})"
        )
    labels = list(reference["labels"])
    served = [p for p in ws.meta.list_predictions(name, limit=window) if p.model_version == version.version]
    probs = np.asarray([[float(p.scores.get(label, 0.0)) for label in labels] for p in served], dtype=np.float64)
    probs = probs.reshape(len(served), len(labels))
    kept = [p for p in served if p.input_text is not None or p.input_blob is not None]
    loaded = ws.load_model(version.ref) if kept else None
    is_text = loaded is not None and loaded.kind == "text"
    inputs = [
        p.input_text if is_text else ws.blob(p.input_blob)
        for p in kept
        if (p.input_text if is_text else p.input_blob) is not None
    ]
    lengths = [len(x) if is_text else _pixels(x) for x in inputs] if inputs else None
    embeddings = embed(loaded, inputs) if (loaded is not None and inputs) else None
    report = drift_report(
        reference,
        probs=probs,
        lengths=lengths,
        embeddings=embeddings,
        alarm_psi=float(alarm_psi if alarm_psi is not None else settings.get("alarm_psi", DEFAULT_ALARM_PSI)),
        alarm_p=float(alarm_p if alarm_p is not None else settings.get("alarm_p", DEFAULT_ALARM_P)),
    )
    report.update(
        model=version.ref,
        window=window,
        inputs_kept=len(inputs),
        first=served[-1].created_at.isoformat() if served else None,
        last=served[0].created_at.isoformat() if served else None,
        reference_dataset=reference.get("dataset_version"),
    )
    return report


# ---------------------------------------------------------------------------------------------
# Review queue
# ---------------------------------------------------------------------------------------------


def review_queue(
    ws: Workspace, name: str, *, by: str = "margin", limit: int = 50, pool: int = 5000
) -> list[dict[str, Any]]:
    """Logged predictions of ``name`` nobody gave feedback on, most uncertain first (JSON-ready).

    The ``pool`` newest unanswered predictions are ranked; ``by`` is ``margin`` or ``entropy``
    (:mod:`aifab.feedback.active`).

    >>> # review_queue(ws, "sms", limit=5)[0]["uncertainty"] -> 0.97
    """
    from aifab.feedback.active import rank_for_review

    predictions = ws.meta.list_predictions(name, without_feedback=True, limit=pool)
    return [
        {
            "prediction_id": p.id,
            "model_version": f"{p.model_name}@{p.model_version}",
            "created_at": p.created_at.isoformat(),
            "label": p.label,
            "scores": dict(p.scores),
            "uncertainty": round(u, 6),
            "input_text": p.input_text,
            "input_blob": p.input_blob,
        }
        for p, u in rank_for_review(predictions, by=by, limit=limit)  # type: ignore[arg-type]
    ]


# ---------------------------------------------------------------------------------------------


def _production(ws: Workspace, name: str) -> Any:
    try:
        return ws.model(f"{name}@production")
    except NotFound as exc:
        raise NotFound(
            f"model {name!r} has no production version to retrain from; promote one first "
            f"({exc.message})",
            details={"model": name, **exc.details},
        ) from None


def _json_file(ws: Workspace, version: Any, fname: str) -> dict[str, Any]:
    if fname not in version.files:
        raise NotFound(f"model version {version.ref}: no {fname} among its files")
    return dict(json.loads(ws.blob(version.files[fname])))


def _predictions_of(ws: Workspace, feedback: list[Feedback]) -> dict[str, Prediction]:
    out: dict[str, Prediction] = {}
    missing: set[str] = set()
    for fb in feedback:
        pid = fb.prediction_id
        if pid in out or pid in missing:
            continue
        try:
            out[pid] = ws.meta.get_prediction(pid)
        except NotFound:
            missing.add(pid)  # the log lost it (pruned): its feedback cannot name an input
    return out


def _commit(
    ws: Workspace,
    parent: DatasetVersion,
    child: Any,
    *,
    production: Any,
    corrections: Any,
    to_parquet: Any,
    version_id: str,
) -> DatasetVersion:
    """Commit the child version the way ``Workspace.ingest`` commits one: blobs, then one row."""
    built = child.built
    report = to_jsonable(built.report)
    report["quarantine_manifest"] = ws.artifacts.put_bytes(to_parquet(built.quarantine))
    report["source"] = f"feedback on {production.ref}"
    report["retrain"] = {
        "model": production.name,
        "model_version": production.version,
        "parent": parent.id,
        **child.lineage,
        "held_back": to_jsonable(list(corrections.held_back)),
        "unknown_feedback": list(corrections.unknown),
    }
    version = DatasetVersion(
        id=version_id,
        name=parent.name,
        manifest=ws.artifacts.put_bytes(to_parquet(built.table)),
        report=ws.artifacts.put_bytes(json.dumps(report, ensure_ascii=False, indent=1).encode()),
        parent=parent.id if version_id != parent.id else parent.parent,
        created_at=datetime.now(timezone.utc),
        num_records=built.table.num_rows,
        split_counts=built.split_counts,
        label_counts=built.label_counts,
        fields=built.fields,
        source=f"feedback:{production.ref}",
        num_quarantined=built.quarantine.num_rows,
    )
    return ws.meta.add_dataset_version(version)


def _new_label_issues(ws: Workspace, version: DatasetVersion, new_ids: set[str]) -> dict[str, Any]:
    """The label-error check on the whole child, reported for the records the feedback added."""
    try:
        issues = ws.label_issues(version)
    except InputError as exc:
        return {"error": exc.message, "suspects": []}
    suspects = [s for s in issues["suspects"] if s["id"] in new_ids]
    return {"method": issues["method"], "checked": issues["checked"], "suspects": suspects,
            "num_suspects_total": issues["num_suspects"]}


def _pixels(data: bytes) -> int:
    """Width x height from the image header (no pixel decoding); 0 when unreadable."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            return int(im.size[0] * im.size[1])
    except Exception:  # noqa: BLE001 - a served image the drift check cannot read counts as size 0
        return 0
