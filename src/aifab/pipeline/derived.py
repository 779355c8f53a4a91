"""Train and register a model derived from another or from a search (a distilled student, a
tuned search's best trial): a run, a model version with every file ``aifab train`` writes, and a
lineage that says where it came from. Unlike ``aifab train`` it moves no alias: the new version
reaches production only through ``aifab promote`` and its gate.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aifab.core.config import Spec
from aifab.core.progress import Progress
from aifab.core.types import DatasetVersion, ModelVersion

if TYPE_CHECKING:
    from aifab.pipeline.project import Workspace


def train_and_register(
    ws: Workspace,
    spec: Spec,
    *,
    dataset: DatasetVersion,
    splits: dict[str, tuple[list[Any], list[Any]]],
    labels: list[str],
    lineage: dict[str, Any],
    teacher_probs: Any = None,
    progress: Progress | None = None,
) -> ModelVersion:
    """Train ``spec`` on ``splits`` (train, val, test) of ``dataset``, evaluate on test and
    register a version whose ``lineage.json`` adds ``lineage`` to the usual entries."""
    from aifab.pipeline.training import _clean, _register, _run_recorder, evaluate_loaded, new_run
    from aifab.train.run import train_classifier

    name = spec.name or dataset.name
    run_id = new_run(ws, spec, dataset, name)
    try:
        trained = train_classifier(
            spec,
            train_inputs=splits["train"][0],
            train_targets=splits["train"][1],
            val_inputs=splits["val"][0],
            val_targets=splits["val"][1],
            labels=labels,
            progress=progress,
            callbacks=[_run_recorder(ws, run_id)],
            teacher_probs=teacher_probs,
        )
    except BaseException as exc:
        ws.meta.update_run(run_id, status="failed" if isinstance(exc, Exception) else "stopped", error=str(exc)[:2000])
        raise
    metrics = evaluate_loaded(trained.model, trained.preprocessing, trained.tokenizer_json, *splits["test"], labels=labels)
    version = _register(ws, name=name, spec=spec, trained=trained, metrics=metrics, dataset=dataset, run_id=run_id, extra=lineage)
    ws.meta.update_run(run_id, status="finished", model_version=version.version, history=_clean(trained.history))
    return ws.meta.get_model_version(name, version.version)
