"""Distil a model version (or an ensemble version) into a small student: ``aifab distill``.

The teacher's probabilities on its dataset's train split become the soft targets of a student
trained with ``train.distill`` (:mod:`aifab.optimize.distill`); the student is registered as a new
version of the teacher's model (or ``name``) with ``lineage.json`` naming the teacher, and reaches
production only through ``aifab promote``.

>>> # distill(ws, "sms@4", temperature=4, alpha=0.7).ref -> 'sms@5'
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aifab.core.config import Spec, parse
from aifab.core.progress import NullProgress, Progress
from aifab.core.types import ModelVersion
from aifab.pipeline.training import as_spec

if TYPE_CHECKING:
    from aifab.pipeline.project import Workspace

__all__ = ["distill"]


def distill(
    ws: Workspace,
    teacher: str,
    *,
    arch: str | None = None,
    spec: Spec | dict[str, Any] | str | Path | None = None,
    temperature: float | None = None,
    alpha: float | None = None,
    name: str | None = None,
    epochs: int | None = None,
    progress: Progress | None = None,
) -> ModelVersion:
    """Train a student of model version ``teacher`` (``NAME@VERSION`` or ``NAME@ALIAS``) and
    register it.

    Without ``spec`` the student's spec comes from the teacher's (:func:`aifab.optimize.distill.student_spec`:
    ``arch`` or the fast default, the teacher's dataset version and input settings). With
    ``spec`` (a Spec, a dict or a YAML path) that is the student's spec; ``arch``,
    ``temperature``, ``alpha``, ``name`` and ``epochs`` override it either way.
    """
    from aifab.optimize.distill import student_spec, teacher_targets
    from aifab.pipeline import training
    from aifab.pipeline.derived import train_and_register

    progress = progress or NullProgress()
    version = ws.model(teacher)
    loaded = ws.load_model(version.ref)
    teacher_spec = json.loads(ws.blob(version.files["spec.json"]))
    lineage = json.loads(ws.blob(version.files["lineage.json"]))
    if spec is None:
        # Pin the teacher's own dataset version: the student learns from what the teacher saw.
        teacher_spec["dataset"] = f"{lineage['dataset_name']}@{lineage['dataset_version']}"
        student = student_spec(
            teacher_spec, kind=loaded.kind, arch=arch, temperature=temperature, alpha=alpha, name=name, epochs=epochs
        )
    else:
        student = _overridden(as_spec(spec), arch=arch, temperature=temperature, alpha=alpha, name=name, epochs=epochs)
    student = student.model_copy(update={"name": student.name or version.name})
    dataset = ws.dataset(student.dataset)
    splits = training._load_splits(ws, dataset, student)
    labels = training._labels(splits["train"][1], multi_label=student.multi_label)
    with progress.task(f"teacher {version.ref}: soft targets", total=1) as task:
        probs = loaded.predict_proba(splits["train"][0])
        task.advance(1)
    soft = teacher_targets(probs, loaded.labels, labels, multi_label=student.multi_label, teacher=version.ref)
    assert student.train.distill is not None  # student_spec and _overridden set it
    return train_and_register(
        ws,
        student,
        dataset=dataset,
        splits=splits,
        labels=labels,
        lineage={
            "teacher": {
                "ref": version.ref,
                "temperature": student.train.distill.temperature,
                "alpha": student.train.distill.alpha,
            }
        },
        teacher_probs=soft,
        progress=progress,
    )


def _overridden(spec: Spec, **changes: Any) -> Spec:
    data = spec.model_dump(mode="json")
    if changes["arch"] is not None:
        data["model"]["arch"] = changes["arch"]
    if changes["name"] is not None:
        data["name"] = changes["name"]
    if changes["epochs"] is not None:
        data["train"]["epochs"] = changes["epochs"]
    distill = data["train"].get("distill") or {}
    for key in ("temperature", "alpha"):
        if changes[key] is not None:
            distill[key] = changes[key]
    data["train"]["distill"] = distill
    return parse(Spec, data, source="student spec")
