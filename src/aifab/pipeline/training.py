"""Train, evaluate and register: the spec -> a dataset version -> a run -> a model version.

Everything that can be wrong with the request is checked before the first batch: the
dataset exists and has the input and output fields, there are at least two classes, and
train, val and test each hold records.
"""

from __future__ import annotations

import json

import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from aifab.core.config import Spec, parse
from aifab.core.errors import ConfigError, InputError
from aifab.core.progress import NullProgress, Progress
from aifab.core.types import DatasetVersion, ModelVersion, Run

if TYPE_CHECKING:
    from aifab.pipeline.project import Workspace


def code_version() -> str:
    """The package version, plus the git commit when running from a checkout."""
    from importlib.metadata import version

    v = version("aifab")
    head = Path(__file__).resolve().parents[3] / ".git" / "HEAD"
    try:
        ref = head.read_text().strip()
        if ref.startswith("ref: "):
            ref = (head.parent / ref[5:]).read_text().strip()
        return f"{v}+g{ref[:12]}"
    except OSError:
        return v


def train(ws: Workspace, spec: Spec, *, resume: str | None = None, progress: Progress | None = None) -> ModelVersion:
    """Train ``spec`` on its dataset version, evaluate on the frozen test split, register a version."""
    progress = progress or NullProgress()
    if resume:
        run = ws.meta.get_run(resume)
        spec = parse(Spec, run.spec, source=f"run {run.id}")
        dataset = ws.meta.get_dataset_version(spec.dataset.partition("@")[0], run.dataset_version)
    else:
        dataset = ws.dataset(spec.dataset)
    name = spec.name or dataset.name
    splits = _load_splits(ws, dataset, spec)
    labels = _labels(splits["train"][1], multi_label=spec.multi_label)

    if resume:
        run_id = run.id
        ws.meta.update_run(run_id, status="running")
    else:
        run_id = new_run(ws, spec, dataset, name)
    checkpoint = ws.root / ".aifab" / "runs" / run_id / "checkpoint.pt"
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    version = fit_and_register(ws, spec, name=name, dataset=dataset, splits=splits, labels=labels, run_id=run_id,
                               checkpoint=checkpoint, resume=bool(resume), progress=progress)
    ws.meta.set_alias(name, "candidate", version.version, actor="aifab train", reason=f"trained by run {run_id[:12]}")
    return ws.meta.get_model_version(name, version.version)


def fit_and_register(
    ws: Workspace,
    spec: Spec,
    *,
    name: str,
    dataset: DatasetVersion,
    splits: dict[str, tuple[list[Any], list[Any]]],
    labels: list[str],
    run_id: str,
    checkpoint: Path | None = None,
    resume: bool = False,
    teacher_probs: Any = None,
    extra_lineage: dict[str, Any] | None = None,
    progress: Progress | None = None,
) -> ModelVersion:
    """Train run ``run_id`` of ``spec`` on ``splits``, evaluate on test, register the version and
    mark the run finished (or failed/stopped, re-raising); moves no alias. What ``aifab train``,
    ``aifab distill`` and ``aifab tune`` share."""
    from aifab.train.run import train_classifier

    try:
        trained = train_classifier(
            spec,
            train_inputs=splits["train"][0],
            train_targets=splits["train"][1],
            val_inputs=splits["val"][0],
            val_targets=splits["val"][1],
            labels=labels,
            checkpoint_path=checkpoint,
            resume=resume,
            progress=progress,
            callbacks=[_run_recorder(ws, run_id)],
            teacher_probs=teacher_probs,
        )
    except BaseException as exc:
        ws.meta.update_run(run_id, status="failed" if isinstance(exc, Exception) else "stopped", error=str(exc)[:2000])
        raise
    metrics = evaluate_loaded(trained.model, trained.preprocessing, trained.tokenizer_json, *splits["test"], labels=labels)
    version = _register(ws, name=name, spec=spec, trained=trained, metrics=metrics, dataset=dataset, run_id=run_id,
                        extra=extra_lineage)
    ws.meta.update_run(run_id, status="finished", model_version=version.version, history=_clean(trained.history))
    return version


def evaluate_loaded(
    model: Any, preprocessing: dict[str, Any], tokenizer_json: str | None, inputs: Sequence[Any], targets: Sequence[Any], *, labels: list[str]
) -> dict[str, Any]:
    """Metrics of a model on inputs with known targets."""
    from aifab.evaluate.metrics import classification_metrics
    from aifab.train.run import predict_proba

    probs = predict_proba(model, preprocessing, tokenizer_json, list(inputs))
    multi = bool(preprocessing.get("multi_label"))
    return classification_metrics(_encode_targets(targets, labels, multi), probs, labels=labels, multi_label=multi)


def evaluate(ws: Workspace, ref: str, *, dataset: str | None = None, split: str = "test") -> dict[str, Any]:
    """Evaluate a registered model on a split of a dataset version (default: its own dataset)."""
    loaded = ws.load_model(ref)
    lineage = json.loads(ws.blob(loaded.version.files["lineage.json"]))
    spec = parse(Spec, json.loads(ws.blob(loaded.version.files["spec.json"])), source=f"{loaded.version.ref} spec")
    version = ws.dataset(dataset) if dataset else ws.meta.get_dataset_version(lineage["dataset_name"], lineage["dataset_version"])
    inputs, targets = _load_splits(ws, version, spec, only=(split,))[split]
    known = set(loaded.labels)
    unknown = sorted({t for t in targets for t in (t if isinstance(t, list) else [t])} - known)
    if unknown:
        raise InputError(f"{version.name}@{version.short_id} {split}: labels the model does not know: {unknown[:10]}")
    metrics = evaluate_loaded(loaded.predictor, loaded.preprocessing, loaded.tokenizer_json, inputs, targets, labels=loaded.labels)
    metrics["dataset"] = f"{version.name}@{version.id}"
    metrics["split"] = split
    return metrics


# ---------------------------------------------------------------------------------------------


def _load_splits(
    ws: Workspace, dataset: DatasetVersion, spec: Spec, *, only: Sequence[str] = ("train", "val", "test")
) -> dict[str, tuple[list[Any], list[Any]]]:
    field_in, field_out = spec.input_field, spec.output_field
    ref = f"{dataset.name}@{dataset.short_id}"
    for f in (field_in, field_out):
        if f not in dataset.fields:
            raise InputError(
                f"{ref}: has no {f!r} field (it has {', '.join(dataset.fields) or 'none'}); "
                f"check the spec's task ({spec.task}) and multi_label ({spec.multi_label})"
            )
    out: dict[str, tuple[list[Any], list[Any]]] = {}
    for split in only:
        inputs, targets = [], []
        for r in ws.records(dataset, split=split):
            x, y = getattr(r, field_in), getattr(r, field_out)
            if x is None or y is None:
                continue
            inputs.append(ws.blob(x) if field_in == "image" else x)
            targets.append(list(y) if field_out == "categories" else y)
        if not inputs:
            raise InputError(f"{ref}: the {split} split has no records with {field_in!r} and {field_out!r}; nothing to {'train on' if split == 'train' else 'evaluate'}")
        out[split] = (inputs, targets)
    return out


def _labels(targets: Sequence[Any], *, multi_label: bool) -> list[str]:
    labels = sorted({t for y in targets for t in (y if multi_label else [y])})
    if len(labels) < 2:
        raise InputError(f"the train split has {len(labels)} label(s) ({labels}); a classifier needs at least 2")
    return labels


def _encode_targets(targets: Sequence[Any], labels: list[str], multi_label: bool) -> np.ndarray:
    index = {label: i for i, label in enumerate(labels)}
    if multi_label:
        y = np.zeros((len(targets), len(labels)), dtype=np.int64)
        for i, t in enumerate(targets):
            for label in t:
                if label in index:
                    y[i, index[label]] = 1
        return y
    return np.asarray([index[t] for t in targets], dtype=np.int64)


def new_run(ws: Workspace, spec: Spec, dataset: DatasetVersion, name: str) -> str:
    """Record a new run of ``spec`` on ``dataset`` as running; return its id."""
    run_id = uuid.uuid4().hex
    now = datetime.now(timezone.utc)
    ws.meta.create_run(
        Run(
            id=run_id,
            model_name=name,
            dataset_version=dataset.id,
            spec=spec.model_dump(mode="json") | {"dataset": f"{dataset.name}@{dataset.id}"},
            status="running",
            created_at=now,
            updated_at=now,
            seed=spec.train.seed,
            code_version=code_version(),
        )
    )
    return run_id


def _register(
    ws: Workspace,
    *,
    name: str,
    spec: Spec,
    trained: Any,
    metrics: dict[str, Any],
    dataset: DatasetVersion,
    run_id: str,
    extra: dict[str, Any] | None = None,
) -> ModelVersion:
    """Store a trained model's files and register its version; ``extra`` adds to its lineage."""
    from aifab.evaluate.report import evaluation_report
    from aifab.registry.versions import bundle_files, model_card

    labels = trained.preprocessing["labels"]
    lineage = {
        "dataset_name": dataset.name,
        "dataset_version": dataset.id,
        "run": run_id,
        "code_version": code_version(),
        "seed": spec.train.seed,
        "best_epoch": trained.best_epoch,
        **(extra or {}),
    }
    card = model_card(
        name=name,
        task=spec.task,
        dataset=f"{dataset.name}@{dataset.short_id}",
        metrics=metrics,
        spec=trained.effective_spec,
        labels=labels,
        split_counts=dataset.split_counts,
    )
    html = evaluation_report(metrics, history=trained.history, title=f"{name}: evaluation on {dataset.name} test")
    files = bundle_files(trained=trained, metrics=metrics, lineage=lineage, card=card, report_html=html)
    digests = {fname: ws.artifacts.put_bytes(data) for fname, data in files.items()}
    flat = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and v is not None}
    return ws.meta.add_model_version(
        ModelVersion(
            name=name,
            version=0,
            files=digests,
            task=spec.task,
            created_at=datetime.now(timezone.utc),
            run_id=run_id,
            dataset_version=dataset.id,
            metrics=_clean({"test": flat}),
        )
    )


def _clean(value: Any) -> Any:
    """JSON columns take only finite numbers: a diverged loss is stored as null."""
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def _run_recorder(ws: Workspace, run_id: str) -> Any:
    """A callback writing each epoch's metrics to the run, so history survives a kill."""
    from aifab.train.callbacks import Callback

    class RunRecorder(Callback):
        def on_epoch_end(self, state: Any) -> None:
            ws.meta.update_run(run_id, history=_clean(list(state.history)))

    return RunRecorder()


def as_spec(spec: Spec | dict[str, Any] | str | Path, *, source: str = "spec") -> Spec:
    """A Spec from a Spec, a dict (validated strictly) or a YAML file path.

    >>> as_spec({"task": "text-classification", "dataset": "sms"}).model.arch
    'auto'
    """
    if isinstance(spec, Spec):
        return spec
    if isinstance(spec, dict):
        return parse(Spec, spec, source=source)
    return load_spec(spec)


def load_spec(path: str | Path) -> Spec:
    from aifab.core.config import load_yaml

    return load_yaml(Spec, path)


def default_spec(*, dataset: str, task: str, name: str | None = None, **overrides: Any) -> Spec:
    """The spec `aifab train --dataset D --task T` uses: every default."""
    if task not in ("image-classification", "text-classification"):
        raise ConfigError(f"The 'task' parameter must be image-classification or text-classification; got {task!r}")
    data: dict[str, Any] = {"task": task, "dataset": dataset}
    if name:
        data["name"] = name
    data.update(overrides)
    return parse(Spec, data, source="command line")



