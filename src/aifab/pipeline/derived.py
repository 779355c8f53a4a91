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
    from aifab.pipeline.training import fit_and_register, new_run

    name = spec.name or dataset.name
    run_id = new_run(ws, spec, dataset, name)
    version = fit_and_register(ws, spec, name=name, dataset=dataset, splits=splits, labels=labels, run_id=run_id,
                               teacher_probs=teacher_probs, extra_lineage=lineage, progress=progress)
    return ws.meta.get_model_version(name, version.version)
