"""`aifab loop NAME --once` on a real tiny workspace: it waits while corrections are few, retrains
and promotes when enough arrived, then holds a cooldown read back from the store; a candidate the
gate refuses is in the audit. Also the long-running loop's error handling and stop."""

from __future__ import annotations

import csv
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from typer.testing import CliRunner

from aifab.cli import app
from aifab.feedback.intake import submit_feedback
from aifab.feedback.log import PredictionLog
from aifab.pipeline.loop import loop_state, run_loop
from aifab.pipeline.project import Workspace
from tests.pipeline.test_retraining import FOOD, PLACES, SPEC, WEATHER, sentences

NAME = "topics"
STRICT = "topics-strict"
# Lenient on regressions (a few added records may move a tiny model's test score a little).
GATE = {"max_regression": 0.2, "max_class_regression": 0.4, "latency_p95_ms": 60_000}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workspace]:
    """Two models on one dataset, each with production v1: ``topics`` with a gate a sound
    candidate passes, ``topics-strict`` with a latency budget no model meets (and a loop
    section in its spec)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two spinning threads are slower than one on a shared machine
    root = tmp_path_factory.mktemp("loop")
    rows = [(t, "weather") for t in sentences(WEATHER, "rolled in", 40, 1)]
    rows += [(t, "food") for t in sentences(FOOD, "was served", 40, 2)]
    path = root / "topics.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("text", "label"), *rows])
    ws = Workspace.init(root / "ws")
    ws.ingest(path, name=NAME)
    train = SPEC["train"] | {"epochs": 3, "lr": 0.01}
    strict = {"gate": GATE | {"latency_p95_ms": 1e-6}, "loop": {"min_corrections": 4}}
    for name, extra in ((NAME, {"gate": GATE}), (STRICT, strict)):
        version = ws.train(SPEC | {"name": name, "train": train, **extra})
        ws.set_alias(version.ref, "production", actor="test")
    yield ws
    ws.close()
    torch.set_num_threads(threads)


def correct(ws: Workspace, name: str, texts: list[str], label: str) -> list[str]:
    """Serve ``texts`` with production (logged as the server logs them) and correct each one."""
    version = ws.model(f"{name}@production").version
    answers = ws.load_model(f"{name}@{version}").predict(texts)
    ids = PredictionLog(ws.meta, ws.artifacts).record(name, version, texts, answers, latency_ms=2.0)
    return [
        submit_feedback(
            ws.meta,
            model_name=name,
            prediction_id=pid,
            known_labels=["food", "weather"],
            multi_label=False,
            label=label,
            actor="ana",
        ).id
        for pid in ids
    ]


def dishes(n: int, seed: int) -> list[str]:
    return [
        f"{FOOD[(i + seed) % 12]} stew was cooked at the {PLACES[i % 12]} on night {seed}-{i}"
        for i in range(n)
    ]


def audit(ws: Workspace, *args: str) -> list[dict[str, Any]]:
    """``aifab audit ... --json``."""
    out = CliRunner().invoke(app, ["audit", *args, "--json", "-w", str(ws.root)])
    assert out.exit_code == 0, out.output
    return list(json.loads(out.stdout)["audit"])


def loop(ws: Workspace, *args: str) -> dict[str, Any]:
    """``aifab loop ... --once --json``; the one check it made."""
    out = CliRunner().invoke(app, ["loop", *args, "--once", "--json", "-w", str(ws.root)])
    assert out.exit_code == 0, out.output
    (check,) = json.loads(out.stdout)["checks"]
    return check


def test_the_loop_waits_retrains_then_cools_down(workspace: Workspace) -> None:
    ws = workspace
    nothing = loop(ws, NAME, "--min-corrections", "5")
    assert nothing["decision"]["action"] == "wait" and nothing["state"]["new_corrections"] == 0
    assert nothing["message"].startswith("0 new corrections < 5: waiting")

    first = correct(ws, NAME, dishes(3, seed=1), "food")
    few = loop(ws, NAME, "--min-corrections", "5", "--no-drift")
    assert (few["decision"]["action"], few["message"]) == ("wait", "3 new corrections < 5: waiting")
    assert few["drift"] is None
    # With drift on, the few new corrections make it worth measuring; three served predictions
    # are too few for its alarm to start a retrain, whatever it says.
    measured = loop(ws, NAME, "--min-corrections", "5")
    assert measured["decision"]["action"] == "wait" and measured["drift"]["count"] == 3
    assert measured["state"]["drift_count"] == 3 and measured["state"]["drift_alarm"] is not None

    second = correct(ws, NAME, dishes(3, seed=2), "food")
    retrained = loop(ws, NAME, "--min-corrections", "5", "--cooldown", "3600")
    assert retrained["decision"] == {
        "action": "retrain",
        "reason": "6 new corrections >= 5: retraining",
        "trigger": "corrections",
        "cooldown_until": None,
    }
    outcome = retrained["outcome"]
    assert outcome["status"] == "promoted", outcome
    assert outcome["candidate"] == f"{NAME}@2"
    assert retrained["message"] == f"retrained: {NAME}@2 promoted (6 new corrections >= 5)"
    assert ws.model(f"{NAME}@production").version == 2 and outcome["added"] == 6
    child = ws.dataset(f"{NAME}@{outcome['child_version']}")
    assert sorted(ws.report(child)["retrain"]["feedback_ids"]) == sorted(first + second)
    moves = [e for e in audit(ws, NAME) if e["alias"] == "production"]
    assert (moves[0]["version"], moves[0]["previous"], moves[0]["actor"]) == (2, 1, "aifab loop")
    assert moves[0]["gate"]["id"] == outcome["gate_result_id"]

    # Right after: a fresh process (state read from the store) holds the cooldown, however many
    # new corrections came; those the retrain took are not counted again.
    correct(ws, NAME, dishes(7, seed=3), "food")
    held = loop(ws, NAME, "--min-corrections", "5", "--cooldown", "3600")
    assert held["decision"]["action"] == "wait" and held["outcome"] is None
    assert held["message"].startswith("cooldown until ") and held["state"]["new_corrections"] == 7
    assert held["state"]["last_attempt"] is not None
    assert held["decision"]["cooldown_until"] is not None
    assert ws.model(f"{NAME}@production").version == 2 and len(ws.models(NAME)) == 2


def test_a_refused_candidate_is_reported_and_audited(workspace: Workspace) -> None:
    ws = workspace
    correct(ws, STRICT, dishes(4, seed=9), "food")
    refused = loop(ws, STRICT)  # the spec's loop section asks for 4
    assert refused["policy"]["min_corrections"] == 4
    outcome = refused["outcome"]
    assert outcome["status"] == "refused"
    assert refused["message"].startswith(f"refused: {outcome['candidate']}: ")
    assert any(r.startswith("latency_p95_ms") for r in outcome["reasons"]), outcome["reasons"]
    assert ws.model(f"{STRICT}@production").version == 1

    entries = audit(ws, STRICT, "--refused")
    assert entries[0]["event"] == "refused" and entries[0]["actor"] == "aifab loop"
    assert f"{STRICT}@{entries[0]['version']}" == outcome["candidate"]
    assert entries[0]["previous"] == 1 and entries[0]["gate"]["id"] == outcome["gate_result_id"]
    assert "latency_p95_ms" in entries[0]["reason"]
    # Without --refused the audit lists moves only, as before.
    assert {e["event"] for e in audit(ws, STRICT)} == {"moved"}

    # The refused attempt starts the cooldown too, and it took these corrections.
    state = loop_state(ws, STRICT)
    assert state.new_corrections == 0 and state.last_attempt is not None


def test_the_long_running_loop_reports_errors_and_stops(workspace: Workspace) -> None:
    stop = threading.Event()
    seen: list[dict[str, Any]] = []

    def on_check(result: dict[str, Any]) -> None:
        seen.append(result)
        if len(seen) == 3:
            stop.set()

    run_loop(workspace, ["nope", NAME], interval_s=0.01, stop=stop, on_check=on_check,
             min_corrections=1000, on_drift=False)
    assert [r["model"] for r in seen] == ["nope", NAME, "nope"]
    assert seen[0]["error"]["code"] == "not_found" and "nope" in seen[0]["message"]
    assert seen[1]["decision"]["action"] == "wait"


def test_an_unknown_model_is_exit_4(workspace: Workspace) -> None:
    out = CliRunner().invoke(app, ["loop", "nope", "--once", "--json", "-w", str(workspace.root)])
    assert out.exit_code == 4 and json.loads(out.stdout)["error"]["code"] == "not_found"
