"""Hyperparameter search: the search space is checked before any trial; the median pruner stops a
trailing trial through the training loop's callback protocol; a tune killed with SIGKILL resumes
from the workspace database with its finished trials intact, and registers its best trial with
the trial in its lineage."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from aifab.core.config import Spec, parse
from aifab.core.errors import ConfigError, Conflict
from tests.optimize import _topics as topics

SEARCH = {
    "trials": 3,
    "prune": False,
    "space": {"train.lr": {"low": 0.003, "high": 0.03, "log": True}, "model.num_filters": {"choices": [8, 16]}},
}


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Two threads spinning on a busy two-core machine train these tiny nets many times slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tune_spec(**search: Any) -> dict[str, Any]:
    return {**topics.spec(topics.TEXTCNN, epochs=3), "search": {**SEARCH, **search}}


def test_unknown_parameter_paths_name_the_nearest_valid_one() -> None:
    with pytest.raises(ConfigError) as err:
        parse(Spec, tune_spec(space={"train.lrr": {"low": 0.001, "high": 0.1}}))
    assert "search.space: Value error, unknown parameter 'train.lrr' (did you mean 'train.lr'?)" in err.value.message
    with pytest.raises(ConfigError, match=r"'model.dropuot' \(did you mean 'model.dropout'\?\)"):
        parse(Spec, tune_spec(space={"model.dropuot": {"choices": [0.1]}}))
    with pytest.raises(ConfigError, match="a log range needs low > 0"):
        parse(Spec, tune_spec(space={"train.lr": {"low": 0, "high": 0.1, "log": True}}))


def test_values_the_spec_refuses_are_caught_before_the_first_trial() -> None:
    from aifab.optimize.search import apply_params, check_space

    spec = parse(Spec, tune_spec(space={"model.dropout": {"low": 0.1, "high": 1.5}}))
    with pytest.raises(ConfigError, match=r"search.space.model.dropout: the value 1.5 is not valid there"):
        check_space(spec)
    tuned = apply_params(spec, {"train.early_stopping.patience": 7, "train.distill.alpha": 0.2})
    assert tuned.train.early_stopping.patience == 7 and tuned.train.distill.alpha == 0.2


def test_a_trailing_trial_is_pruned_through_the_training_callbacks() -> None:
    import optuna

    from aifab.optimize.search import PruningCallback
    from aifab.train.run import train_classifier

    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0))
    # An earlier trial that was perfect after its first epoch: any real one trails it.
    study.add_trial(optuna.trial.create_trial(value=1.0, intermediate_values={1: 1.0, 2: 1.0}))
    trial = study.ask()
    rows = topics.sentences(10, seed=3)
    texts, labels = [t for t, _ in rows], [label for _, label in rows]
    spec = parse(Spec, topics.spec(topics.TEXTCNN, epochs=3, lr=1e-5))
    with pytest.raises(optuna.TrialPruned, match=r"epoch 1: val.macro_f1"):
        train_classifier(spec, train_inputs=texts, train_targets=labels, val_inputs=texts, val_targets=labels,
                         labels=sorted(topics.TOPICS), callbacks=[PruningCallback(trial, "val.macro_f1")])
    assert list(study.trials[1].intermediate_values) == [1]  # reported once, then stopped


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    ws = topics.workspace(tmp_path_factory.mktemp("tune"))
    yield ws
    ws.close()


def _states(db: Path) -> dict[str, int]:
    try:
        with sqlite3.connect(db, timeout=5) as conn:
            return dict(conn.execute("SELECT state, count(*) FROM trials GROUP BY state").fetchall())
    except sqlite3.OperationalError:  # the tables are not there yet
        return {}


def _trials(ws: Any, study: str) -> dict[int, tuple[str, Any, dict[str, Any]]]:
    import optuna

    storage = optuna.storages.RDBStorage(ws.meta.url, skip_compatibility_check=True)
    try:
        loaded = optuna.load_study(study_name=study, storage=storage)
        return {t.number: (t.state.name, t.value, t.params) for t in loaded.trials}
    finally:
        storage.engine.dispose()


@pytest.mark.slow
def test_a_killed_tune_resumes_with_its_finished_trials_intact(workspace: Any, tmp_path: Path) -> None:
    ws = workspace
    spec_path = tmp_path / "topics.yaml"
    spec_path.write_text(yaml.safe_dump(tune_spec()), encoding="utf-8")
    code = "import sys; from aifab.cli import main; sys.argv = sys.argv[1:]; main()"
    command = [sys.executable, "-c", code, "aifab", "tune", str(spec_path), "--trials", "3", "-w", str(ws.root), "--json"]
    with open(tmp_path / "out.txt", "wb") as out:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path, env=env)
        db = ws.root / ".aifab" / "aifab.db"
        deadline = time.monotonic() + 240
        # Kill once a trial has finished and the next one is running.
        while not (_states(db).get("COMPLETE", 0) >= 1 and _states(db).get("RUNNING", 0) >= 1):
            assert proc.poll() is None, (tmp_path / "out.txt").read_text()
            assert time.monotonic() < deadline, "no trial finished in time"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()

    before = _trials(ws, "aifab-tune-topics")
    finished = {n: t for n, t in before.items() if t[0] == "COMPLETE"}
    running = [n for n, t in before.items() if t[0] == "RUNNING"]
    assert 1 <= len(finished) < 3 and len(running) == 1, before

    result = ws.tune(spec_path, trials=3)

    after = _trials(ws, "aifab-tune-topics")
    assert {n: after[n] for n in finished} == finished  # numbers, params and values as they were
    assert after[running[0]][0] == "FAIL"  # the killed process's trial, not counted
    assert sum(1 for t in after.values() if t[0] in ("COMPLETE", "PRUNED")) == 3
    assert [t["number"] for t in result["trials"]] == sorted(after)

    best = max((n for n, t in after.items() if t[0] == "COMPLETE"), key=lambda n: after[n][1])
    assert result["best"] == {"number": best, "value": after[best][1], "params": after[best][2]}
    version = result["model"]
    lineage = json.loads(ws.blob(version.files["lineage.json"]))
    assert lineage["tuning"] == {"study": "aifab-tune-topics", "trial": best, "params": after[best][2],
                                 "metric": "val.macro_f1", "value": after[best][1], "trials": 3}
    spec = json.loads(ws.blob(version.files["spec.json"]))
    assert spec["train"]["lr"] == after[best][2]["train.lr"] and spec["model"]["num_filters"] == after[best][2]["model.num_filters"]
    # The best trial retrained with the same seed and data is the same model: the same val score.
    history = ws.meta.get_run(version.run_id).history
    assert max(h["val.macro_f1"] for h in history) == pytest.approx(after[best][1])
    assert ws.meta.aliases("topics") == {}  # nothing moved; aifab promote does that

    # Done: running it again trains nothing and returns the same version.
    again = ws.tune(spec_path, trials=3)
    assert len(again["trials"]) == len(after) and again["model"].ref == version.ref


def test_another_spec_under_the_same_study_name_is_a_conflict(workspace: Any) -> None:
    ws = workspace
    ws.tune(tune_spec(trials=1), study="small")
    changed = tune_spec(trials=1)
    changed["train"]["batch_size"] = 8
    with pytest.raises(Conflict, match=r"study 'small': was started with another spec .*train.batch_size"):
        ws.tune(changed, study="small")
    # More trials of the same spec continue the same study.
    assert [t["number"] for t in ws.tune(tune_spec(trials=2), study="small")["trials"]] == [0, 1]


def test_a_spec_without_search_or_with_an_unknown_metric_is_refused(workspace: Any) -> None:
    with pytest.raises(ConfigError, match="no search section"):
        workspace.tune(topics.spec(topics.TEXTCNN))
    with pytest.raises(ConfigError, match=r"'val.macro_f2' is not a validation metric.*did you mean 'val.macro_f1'"):
        workspace.tune(tune_spec(metric="val.macro_f2"))
