"""Hyperparameter search over a spec's ``search`` section: ``aifab tune SPEC --trials N``.

Each trial trains the spec with the sampled settings on the dataset version's train split and is
scored on its validation split (``search.metric``, default ``val.<gate.metric>``, at the epoch
whose weights the trial keeps); the median pruner stops trials that trail after each epoch. The
study is stored in the workspace database (:mod:`aifab.optimize.search`): run the same command
again after a kill and it continues to ``N`` finished trials. When the search is complete, the
best trial's settings are trained once more (same seed and data: the same model on the CPU) and
registered as a model version whose ``lineage.json`` holds the study, the trial number, its
parameters and value (running a finished search again returns that version). No alias moves: the version reaches production through ``aifab promote``.

>>> # tune(ws, "sms.yaml", trials=20)["best"] -> {'number': 13, 'value': 0.94, 'params': {...}}
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from aifab.core.config import Spec
from aifab.core.errors import ConfigError, InputError, nearest
from aifab.core.progress import NullProgress, Progress
from aifab.pipeline.training import as_spec

if TYPE_CHECKING:
    from aifab.pipeline.project import Workspace

__all__ = ["tune"]


def tune(
    ws: Workspace,
    spec: Spec | dict[str, Any] | str | Path,
    *,
    trials: int | None = None,
    study: str | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Search ``spec``'s ``search.space`` until ``trials`` (default ``search.trials``) trials have
    finished in the study ``study`` (default derived from the model name), then register the best.

    Returns the study name, the metric and its direction, every trial (number, state, value,
    params), the best trial and the registered model version.
    """
    from aifab.optimize import search
    from aifab.pipeline import training
    from aifab.pipeline.derived import train_and_register

    progress = progress or NullProgress()
    spec = as_spec(spec)
    search.check_space(spec)
    assert spec.search is not None  # check_space refuses a spec without one
    if trials is not None and trials < 1:
        raise ConfigError(f"The 'trials' parameter of tune must be an integer >= 1. Got {trials!r} instead.")
    wanted = trials or spec.search.trials
    metric = _metric(spec)
    dataset = ws.dataset(spec.dataset)
    # Pinned: a resumed search must keep comparing trials on the same data.
    spec = spec.model_copy(update={"dataset": f"{dataset.name}@{dataset.id}", "name": spec.name or dataset.name})
    splits = training._load_splits(ws, dataset, spec)
    labels = training._labels(splits["train"][1], multi_label=spec.multi_label)

    name = study or search.study_name(str(spec.name))
    stored = spec.model_dump(mode="json")
    stored["search"].pop("trials")  # asking for more trials continues the same study
    optuna_study = search.open_study(
        ws.meta.url,
        name,
        metric=metric,
        spec=stored,
        seed=spec.train.seed,
        prune=spec.search.prune,
        startup_trials=spec.search.startup_trials,
        warmup_epochs=spec.search.warmup_epochs,
    )

    def objective(trial: Any) -> float:
        from aifab.train.run import train_classifier

        trial_spec = search.apply_params(spec, search.suggest(trial, spec.search.space))  # type: ignore[union-attr]
        trained = train_classifier(
            trial_spec,
            train_inputs=splits["train"][0],
            train_targets=splits["train"][1],
            val_inputs=splits["val"][0],
            val_targets=splits["val"][1],
            labels=labels,
            callbacks=[search.PruningCallback(trial, metric)],
        )
        value = trained.history[trained.best_epoch - 1].get(metric)
        if value is None:
            raise ConfigError(f"search.metric: {metric} has no value (is the validation split empty?)")
        return float(value)

    search.run_trials(optuna_study, objective, trials=wanted, progress=progress)
    finished = search.finished_trials(optuna_study)
    if not any(t.state.name == "COMPLETE" for t in finished):
        raise InputError(f"study {name!r}: none of its {len(finished)} finished trials completed (all pruned); nothing to register")
    best = optuna_study.best_trial
    version = _registered(ws, str(spec.name), name, best.number) or train_and_register(
        ws,
        search.apply_params(spec, best.params),
        dataset=dataset,
        splits=splits,
        labels=labels,
        lineage={
            "tuning": {
                "study": name,
                "trial": best.number,
                "params": best.params,
                "metric": metric,
                "value": best.value,
                "trials": len(finished),
            }
        },
        progress=progress,
    )
    return {
        "study": name,
        "metric": metric,
        "direction": search.direction(metric),
        "trials": [
            {"number": t.number, "state": t.state.name, "value": t.value, "params": t.params}
            for t in optuna_study.get_trials(deepcopy=False)
        ],
        "best": {"number": best.number, "value": best.value, "params": best.params},
        "model": version,
    }


def _registered(ws: Workspace, model: str, study: str, trial: int) -> Any:
    """The version already registered for this study's best trial (a finished search run again)."""
    import json

    from aifab.core.errors import NotFound

    try:
        versions = ws.models(model)
    except NotFound:
        return None
    for version in versions:
        digest = version.files.get("lineage.json")
        tuning = json.loads(ws.blob(digest)).get("tuning") if digest else None
        if tuning and tuning.get("study") == study and tuning.get("trial") == trial:
            return version
    return None


def _metric(spec: Spec) -> str:
    from aifab.train.loop import HISTORY_METRICS

    assert spec.search is not None
    metric = spec.search.metric or f"val.{spec.gate.metric}"
    if metric not in HISTORY_METRICS or not metric.startswith("val."):
        valid = [m for m in HISTORY_METRICS if m.startswith("val.")]
        hint = nearest(metric, valid)
        raise ConfigError(
            f"search.metric: {metric!r} is not a validation metric training records"
            + (f" (did you mean {hint!r}?)" if hint else "")
            + f"; choose one of {', '.join(valid)}"
        )
    return metric
