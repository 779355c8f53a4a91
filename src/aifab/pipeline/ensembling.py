"""Package model versions as one ensemble version, and evaluate it beside its members:
``aifab ensemble``.

The ensemble version is self-contained: it lists every member's files under ``members/<i>/``
(the same content-addressed blobs, so nothing is copied and nothing breaks if a member's
version goes), plus ``ensemble.json`` (method, weights, labels, the members' refs for lineage),
``preprocessing.json`` (kind, labels, multi-label), ``spec.json`` (the first member's, renamed:
it supplies the gate), ``lineage.json``, ``metrics.json`` (the ensemble's test metrics and each
member's), a model card, the evaluation report and, when members serve ONNX exports, the worst
member's ``parity.json`` for the gate. It loads, serves and goes through the gate like
any version; creating it moves no alias.

>>> # create_ensemble(ws, ["mr@1", "mr@2"], method="soft")["model"].ref -> 'mr@3'
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from aifab.core.config import Spec, parse
from aifab.core.errors import InputError
from aifab.core.progress import NullProgress, Progress
from aifab.core.types import DatasetVersion, ModelVersion

if TYPE_CHECKING:
    from aifab.pipeline.project import Workspace

__all__ = ["create_ensemble", "evaluate"]

_HEADLINE = ("accuracy", "macro_f1", "micro_f1", "weighted_f1", "ece", "log_loss")


def create_ensemble(
    ws: Workspace,
    refs: Sequence[str],
    *,
    method: str = "soft",
    weights: Sequence[float] | None = None,
    name: str | None = None,
    dataset: str | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Register an ensemble of model versions ``refs`` and evaluate it beside each member.

    ``method``: ``soft`` (mean), ``weighted`` (``weights``, or without them weights fitted on the
    validation split: :func:`aifab.optimize.ensemble.fit_weights`) or ``hard`` (majority vote,
    optionally weighted). ``name``: the model the version belongs to (default: the first
    member's). ``dataset`` (``NAME@VERSION``): where weights are fitted and the ensemble tested
    (default: the first member's dataset version). Returns the version, the weights and the test
    metrics of the ensemble and of each member.
    """
    from aifab.optimize.ensemble import EnsembleModel, Member, check_members, check_weights, fit_weights
    from aifab.pipeline import training

    progress = progress or NullProgress()
    check_weights(weights, len(refs), method=method)  # a wrong method or weight count: before any loading
    versions = [ws.model(ref) for ref in refs]
    with progress.task("ensemble: load members", total=len(versions)) as task:
        members = []
        for v in versions:
            members.append(ws.load_model(v.ref))
            task.advance(1)
    multi = [bool(m.preprocessing.get("multi_label")) for m in members]
    labels = check_members(
        [Member(v.ref, v.task, m.kind, ml, tuple(m.labels)) for v, m, ml in zip(versions, members, multi)]
    )
    first = versions[0]
    spec = parse(Spec, json.loads(ws.blob(first.files["spec.json"])), source=f"{first.ref} spec.json")
    name = name or first.name
    spec = spec.model_copy(update={"name": name})
    data = _dataset(ws, first, dataset)
    source = "equal" if weights is None else "user"
    if method == "weighted" and weights is None:
        inputs, targets = training._load_splits(ws, data, spec, only=("val",))["val"]
        model = EnsembleModel(version=first, members=members, method="soft", weights=None, labels=labels, multi_label=multi[0])
        y = training._encode_targets(targets, labels, multi[0])
        weights, source = fit_weights(model.member_probas(inputs), y, multi_label=multi[0]), "val"
    weights = check_weights(weights, len(members), method=method)

    placeholder = ModelVersion(name=name, version=0, files={}, task=first.task, created_at=datetime.now(timezone.utc))
    ensemble = EnsembleModel(version=placeholder, members=members, method=method, weights=weights, labels=labels, multi_label=multi[0])
    with progress.task("ensemble: evaluate on test", total=1) as task:
        metrics = _evaluate(ws, ensemble, data, spec, "test")
        task.advance(1)
    manifest = {
        "format": 1,
        "method": method,
        "weights": weights,
        "weights_from": source,
        "labels": labels,
        "multi_label": multi[0],
        "kind": ensemble.kind,
        "task": first.task,
        "members": [
            {"ref": v.ref, "name": v.name, "version": v.version, "prefix": f"members/{i}/"} for i, v in enumerate(versions)
        ],
    }
    version = _register(ws, name=name, spec=spec, manifest=manifest, versions=versions, metrics=metrics, dataset=data)
    return {
        "model": version,
        "method": method,
        "weights": {v.ref: w for v, w in zip(versions, weights)},
        "weights_from": source,
        "dataset": f"{data.name}@{data.id}",
        "test": {"ensemble": _flat(metrics), "members": {ref: _flat(m) for ref, m in metrics["members"].items()}},
    }


def evaluate(ws: Workspace, ref: str, *, dataset: str | None = None, split: str = "test") -> dict[str, Any]:
    """Metrics of ensemble version ``ref`` on a split (default: its own dataset's test split), with
    each member's metrics on the same records under ``members``."""
    version = ws.model(ref)
    loaded = ws.load_model(version.ref)
    spec = parse(Spec, json.loads(ws.blob(version.files["spec.json"])), source=f"{version.ref} spec.json")
    return _evaluate(ws, loaded, _dataset(ws, version, dataset), spec, split)


# ---------------------------------------------------------------------------------------------


def _dataset(ws: Workspace, version: ModelVersion, ref: str | None) -> DatasetVersion:
    if ref:
        return ws.dataset(ref)
    lineage = json.loads(ws.blob(version.files["lineage.json"]))
    return ws.meta.get_dataset_version(lineage["dataset_name"], lineage["dataset_version"])


def _evaluate(ws: Workspace, ensemble: Any, data: DatasetVersion, spec: Spec, split: str) -> dict[str, Any]:
    from aifab.evaluate.metrics import classification_metrics
    from aifab.optimize.ensemble import combine
    from aifab.pipeline import training

    inputs, targets = training._load_splits(ws, data, spec, only=(split,))[split]
    unknown = sorted({t for t in targets for t in (t if isinstance(t, list) else [t])} - set(ensemble.labels))
    if unknown:
        raise InputError(f"{data.name}@{data.short_id} {split}: labels the model does not know: {unknown[:10]}")
    y = training._encode_targets(targets, ensemble.labels, ensemble.multi_label)
    member_probs = ensemble.member_probas(inputs)
    probs = combine(member_probs, method=ensemble.method, weights=ensemble.weights, multi_label=ensemble.multi_label)

    def score(p: np.ndarray) -> dict[str, Any]:
        return classification_metrics(y, p, labels=ensemble.labels, multi_label=ensemble.multi_label)

    metrics = score(probs)
    metrics["members"] = {m.version.ref: _flat(score(p)) for m, p in zip(ensemble.members, member_probs)}
    metrics["dataset"] = f"{data.name}@{data.id}"
    metrics["split"] = split
    return metrics


def _register(
    ws: Workspace,
    *,
    name: str,
    spec: Spec,
    manifest: dict[str, Any],
    versions: list[ModelVersion],
    metrics: dict[str, Any],
    dataset: DatasetVersion,
) -> ModelVersion:
    from aifab.evaluate.report import evaluation_report
    from aifab.optimize.ensemble import member_files
    from aifab.pipeline.training import _clean, code_version

    lineage = {
        "dataset_name": dataset.name,
        "dataset_version": dataset.id,
        "code_version": code_version(),
        "ensemble": {"method": manifest["method"], "weights": manifest["weights"], "members": [v.ref for v in versions]},
    }
    written = {
        "ensemble.json": manifest,
        "preprocessing.json": {"kind": manifest["kind"], "labels": manifest["labels"], "multi_label": manifest["multi_label"]},
        "spec.json": spec.model_dump(mode="json"),
        "lineage.json": lineage,
        "metrics.json": _clean(metrics),
    }
    parity = _members_parity(ws, versions)
    if parity is not None:
        written["parity.json"] = parity
    files: dict[str, str] = {}
    for i, v in enumerate(versions):
        files.update(member_files(i, v.files))
    for fname, value in written.items():
        files[fname] = ws.artifacts.put_bytes(json.dumps(value, indent=1, ensure_ascii=False, default=str).encode("utf-8"))
    files["model_card.md"] = ws.artifacts.put_bytes(_card(name, spec, manifest, metrics, dataset).encode("utf-8"))
    title = f"{name}: {manifest['method']} ensemble of {len(versions)} on {dataset.name} test"
    files["report.html"] = ws.artifacts.put_bytes(evaluation_report(metrics, title=title).encode("utf-8"))
    return ws.meta.add_model_version(
        ModelVersion(
            name=name,
            version=0,
            files=files,
            task=spec.task,
            created_at=datetime.now(timezone.utc),
            dataset_version=dataset.id,
            metrics=_clean({"test": _flat(metrics)}),
            description=f"{manifest['method']} ensemble of {', '.join(v.ref for v in versions)}",
        )
    )


def _members_parity(ws: Workspace, versions: list[ModelVersion]) -> dict[str, Any] | None:
    """The gate's parity record for an ensemble whose members serve ONNX exports: the worst
    member's ``parity.json`` (its export under the member's prefix). None when no member has an
    export, and also when one has an export that was never compared: the gate then refuses the
    ensemble as it would refuse that member."""
    records = []
    for i, v in enumerate(versions):
        if not any(f.endswith(".onnx") for f in v.files):
            continue
        if "parity.json" not in v.files:
            return None
        record = json.loads(ws.blob(v.files["parity.json"]))
        records.append({**record, "export": f"members/{i}/{record.get('export', 'model.onnx')}", "member": v.ref})
    if not records:
        return None
    return min(records, key=lambda r: r["agreement"] if r.get("agreement") is not None else -1.0)


def _flat(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _card(name: str, spec: Spec, manifest: dict[str, Any], metrics: dict[str, Any], dataset: DatasetVersion) -> str:
    rows = [("**ensemble**", _flat(metrics)), *((f"{ref}", m) for ref, m in metrics["members"].items())]
    weights = ", ".join(f"{m['ref']} {w:.3f}" for m, w in zip(manifest["members"], manifest["weights"]))
    lines = [
        f"# {name}",
        "",
        f"- **Task:** {spec.task} over {len(manifest['labels'])} labels: {', '.join(manifest['labels'][:20])}",
        f"- **Ensemble:** {manifest['method']} over {len(manifest['members'])} members; weights ({manifest['weights_from']}): {weights}",
        f"- **Data:** evaluated on the test split of `{dataset.name}@{dataset.short_id}`",
        "",
        "## Test metrics, ensemble beside each member",
        "",
        "| model | " + " | ".join(k for k in _HEADLINE) + " |",
        "|---" * (len(_HEADLINE) + 1) + "|",
    ]
    for label, m in rows:
        lines.append(f"| {label} | " + " | ".join(f"{m[k]:.4f}" if m.get(k) is not None else "-" for k in _HEADLINE) + " |")
    lines += [
        "",
        "## Limitations",
        "",
        "- Costs the sum of its members' latency and memory; check the gate's latency budget.",
        "- Measured only on the frozen test split above.",
    ]
    return "\n".join(lines) + "\n"
