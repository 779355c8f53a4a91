"""Hyperparameter search with Optuna: what ``aifab tune`` runs, apart from the training itself.

A study lives in the workspace database (Optuna's ``RDBStorage`` on the workspace's SQLAlchemy
URL, beside aifab's tables), named after the model (:func:`study_name`), so a killed search is
resumed by running it again: finished trials stay as they are, trials the killed process left
running are marked failed (by :func:`open_study`), and new trials run until ``trials`` have
finished (complete or pruned; :func:`run_trials`). A study remembers the spec it was started
with; another spec under the same name is a :class:`~aifab.core.errors.Conflict`.

The caller supplies the objective (it trains: ``optimize`` may not import ``train``); each trial
reports the validation metric after every epoch through :class:`PruningCallback`, an object of
the training loop's callback protocol, and the median pruner stops trials that trail.

>>> from aifab.core.config import Spec, parse
>>> spec = parse(Spec, {"task": "text-classification", "dataset": "sms",
...     "search": {"space": {"train.lr": {"low": 1e-4, "high": 1e-2, "log": True}}}})
>>> apply_params(spec, {"train.lr": 0.003, "model.dropout": 0.3}).train.lr
0.003
>>> direction("val.loss"), direction("val.macro_f1")
('minimize', 'maximize')
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aifab.core.config import SearchParam, Spec, parse
from aifab.core.errors import ConfigError, Conflict, DependencyMissing

if TYPE_CHECKING:
    from aifab.core.progress import Progress

__all__ = [
    "PruningCallback",
    "apply_params",
    "check_space",
    "direction",
    "finished_trials",
    "open_study",
    "run_trials",
    "study_name",
    "suggest",
]

log = logging.getLogger(__name__)

_LOWER_IS_BETTER = ("val.loss", "val.ece")
_SPEC_ATTR = "aifab_spec"
_HOST_ATTR, _PID_ATTR = "aifab_host", "aifab_pid"


def study_name(model_name: str) -> str:
    """The study a spec's search is stored under.

    >>> study_name("sms")
    'aifab-tune-sms'
    """
    return f"aifab-tune-{model_name}"


def direction(metric: str) -> str:
    """``minimize`` for losses and calibration error, ``maximize`` for every other metric."""
    return "minimize" if metric in _LOWER_IS_BETTER else "maximize"


def apply_params(spec: Spec, params: dict[str, Any]) -> Spec:
    """``spec`` with each dotted setting (``train.lr``) set to its value; a value the setting
    refuses is a ConfigError naming it (a section that is off, such as ``train.distill``, is
    switched on with its defaults)."""
    data = spec.model_dump(mode="json")
    for path, value in params.items():
        *sections, key = path.split(".")
        node = data
        for section in sections:
            if node.get(section) is None:
                node[section] = {}
            node = node[section]
        node[key] = value
    shown = ", ".join(f"{k}={v!r}" for k, v in params.items())
    return parse(Spec, data, source=f"search parameters ({shown})")


def check_space(spec: Spec) -> None:
    """Refuse, before any trial, a search space whose values the spec would refuse: each bound
    and each choice is tried alone."""
    if spec.search is None:
        raise ConfigError("spec: no search section; add one, e.g. search: {space: {train.lr: {low: 1e-4, high: 1e-2, log: true}}}")
    for path, param in spec.search.space.items():
        values = param.choices if param.choices is not None else [param.low, param.high]
        for value in values:
            try:
                apply_params(spec, {path: value})
            except ConfigError as exc:
                raise ConfigError(f"search.space.{path}: the value {value!r} is not valid there:\n{exc.message}") from None


def suggest(trial: Any, space: dict[str, SearchParam]) -> dict[str, Any]:
    """One value per setting of ``space``, drawn by the trial's sampler (integers when the range's
    bounds and step are whole numbers)."""
    params: dict[str, Any] = {}
    for path, p in space.items():
        if p.choices is not None:
            params[path] = trial.suggest_categorical(path, p.choices)
        elif all(isinstance(v, int) and not isinstance(v, bool) for v in (p.low, p.high, p.step or 1)):
            params[path] = trial.suggest_int(path, int(p.low), int(p.high), step=int(p.step or 1), log=p.log)  # type: ignore[arg-type]
        else:
            params[path] = trial.suggest_float(path, float(p.low), float(p.high), step=p.step, log=p.log)  # type: ignore[arg-type]
    return params


class PruningCallback:
    """Reports ``metric`` to an Optuna trial after every epoch and ends the trial (raises
    ``optuna.TrialPruned`` out of the training loop) when the pruner says it trails. Epochs with
    no value (no validation data) are not reported."""

    def __init__(self, trial: Any, metric: str) -> None:
        self.trial = trial
        self.metric = metric

    def on_train_start(self, state: Any) -> None:
        pass

    def on_epoch_start(self, state: Any) -> None:
        pass

    def on_batch_end(self, state: Any) -> None:
        pass

    def on_epoch_end(self, state: Any) -> None:
        import optuna

        value = state.history[-1].get(self.metric) if state.history else None
        if value is None or not math.isfinite(value):
            return
        self.trial.report(float(value), step=state.epoch)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"epoch {state.epoch}: {self.metric} {value:.4f} trails the median of earlier trials")

    def on_train_end(self, state: Any) -> None:
        pass


def open_study(url: str, name: str, *, metric: str, spec: dict[str, Any], seed: int, prune: bool = True,
               startup_trials: int = 5, warmup_epochs: int = 1) -> Any:
    """Create study ``name`` in the database at ``url``, or load it to continue.

    ``spec`` (JSON-ready) is stored with a new study; loading a study stored with another spec is
    a Conflict naming the settings that differ. Trials a killed process of this machine left
    ``RUNNING`` are marked failed (trials of a live process, a search running beside this one, are
    left alone). The sampler (TPE) is seeded with ``seed`` plus the number of trials so far, so a
    resumed search does not replay the draws it made before.
    """
    optuna = _optuna()
    # The workspace database has aifab's alembic_version table, which Optuna's check would
    # read as its own schema revision; Optuna's tables are created beside aifab's all the same.
    storage = optuna.storages.RDBStorage(url, skip_compatibility_check=True)
    existing = {s.study_name: s for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}
    if name in existing:
        stored = existing[name].user_attrs.get(_SPEC_ATTR)
        if stored is not None and stored != spec:
            raise Conflict(
                f"study {name!r}: was started with another spec or dataset version (it differs in "
                f"{', '.join(_differences(stored, spec)[:8])}); keep the spec to resume it, or start "
                "another study (aifab tune --study NEW_NAME)",
                details={"study": name, "differs": _differences(stored, spec)},
            )
    pruner = (
        optuna.pruners.MedianPruner(n_startup_trials=startup_trials, n_warmup_steps=warmup_epochs)
        if prune
        else optuna.pruners.NopPruner()
    )
    done = 0
    if name in existing:
        orphans = _fail_orphans(storage, name)
        if orphans:
            log.info("study %s: trials %s were left running by a process that is gone; marked failed", name, orphans)
        done = len(storage.get_all_trials(storage.get_study_id_from_name(name)))
    study = optuna.create_study(
        storage=storage,
        study_name=name,
        direction=direction(metric),
        sampler=optuna.samplers.TPESampler(seed=seed + done),
        pruner=pruner,
        load_if_exists=True,
    )
    if name not in existing:
        study.set_user_attr(_SPEC_ATTR, spec)
    return study


def finished_trials(study: Any) -> list[Any]:
    """The trials that count towards the total: complete or pruned (not failed, not running)."""
    optuna = _optuna()
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return study.get_trials(deepcopy=False, states=states)


def run_trials(study: Any, objective: Callable[[Any], float], *, trials: int, progress: Progress | None = None) -> None:
    """Run trials of ``objective`` until ``trials`` have finished in ``study`` (counting those of
    earlier runs). An error in a trial (other than pruning) marks it failed and is raised."""
    from aifab.core.progress import NullProgress

    progress = progress or NullProgress()

    owner = {_HOST_ATTR: socket.gethostname(), _PID_ATTR: os.getpid()}

    def tagged(trial: Any) -> float:
        # A waiting trial a killed run enqueued may be picked up here: it is ours now.
        for key, value in owner.items():
            trial.set_user_attr(key, value)
        return objective(trial)

    done = len(finished_trials(study))
    with progress.task(f"tune {study.study_name}", total=trials) as task:
        task.advance(min(done, trials))
        while done < trials:
            # Enqueued with its owner, the trial is RUNNING only once it says whose it is: a kill at
            # any moment leaves no running trial that open_study could not tell from a live one's.
            study.enqueue_trial({}, user_attrs=owner)
            study.optimize(tagged, n_trials=1, catch=())
            now = len(finished_trials(study))
            task.advance(now - done)
            done = now
            best = _best(study)
            if best is not None:
                task.update(description=f"tune {study.study_name}: best {best.value:.4f} (trial {best.number})")


# ---------------------------------------------------------------------------------------------


def _optuna() -> Any:
    try:
        import optuna
    except ImportError:  # pragma: no cover - optuna is in the optimize extra
        raise DependencyMissing("aifab tune needs optuna: pip install 'aifab[optimize]'") from None
    return optuna


def _fail_orphans(storage: Any, name: str) -> list[int]:
    """Mark failed the trials of study ``name`` left RUNNING by a gone process of this machine."""
    optuna = _optuna()
    study_id = storage.get_study_id_from_name(name)
    host = socket.gethostname()
    failed = []
    for trial in storage.get_all_trials(study_id, deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        pid = trial.user_attrs.get(_PID_ATTR)
        if trial.user_attrs.get(_HOST_ATTR) == host and isinstance(pid, int) and not _alive(pid):
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
            storage.set_trial_state_values(trial_id, state=optuna.trial.TrialState.FAIL)
            failed.append(trial.number)
    return failed


def _best(study: Any) -> Any:
    try:
        return study.best_trial
    except ValueError:  # no complete trial yet
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted paths where two JSON values differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for key in sorted(set(old) | set(new)):
            out += _differences(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    return [] if json.dumps(old, sort_keys=True) == json.dumps(new, sort_keys=True) else [prefix.rstrip(".")]
