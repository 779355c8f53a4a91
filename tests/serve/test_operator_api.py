"""The operator endpoints over real HTTP: promotion through the gate (served at once, predictions
answered while the gate runs), refusal with reasons, rollback, the audit with the token's name,
model versions, drift, and 404 for unknown models. A real workspace with tiny trained text models,
real tokens, a real uvicorn server on 127.0.0.1 (its alias poller off: every switch comes from
the endpoint)."""

from __future__ import annotations

import csv
import random
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from aifab.pipeline.project import Workspace
from aifab.pipeline.retraining import drift
from aifab.pipeline.serving import WorkspaceOperations
from aifab.security.tokens import issue_token
from aifab.serve.app import create_app
from tests.pipeline.test_retraining import FOOD, SPEC, WEATHER, sentences
from tests.serve.conftest import ROLES, running

NAME = "topics"
GATE = {"max_regression": 0.1, "max_class_regression": 0.3, "latency_p95_ms": 60_000}
TEXT = {"instances": ["cheese and bread was served near the market on day 3"]}


class Paused:
    """The workspace's operations, but the first promotion waits for ``release`` once it has
    started: the test sends predictions meanwhile."""

    def __init__(self, inner: WorkspaceOperations) -> None:
        self.inner = inner
        self.started = threading.Event()
        self.release = threading.Event()

    def promote(self, ref: str, **kwargs: Any) -> dict[str, Any]:
        self.started.set()
        self.release.wait(60)
        return self.inner.promote(ref, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def write(path: Path, rows: list[tuple[str, str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("text", "label"), *rows])
    return path


@pytest.fixture(scope="module")
def story(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """v1 in production, v2 a sound candidate, v3 trained on shuffled labels; then the requests
    one after another, each answer kept."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two spinning threads are slower than one on a shared machine
    root = tmp_path_factory.mktemp("operator")
    rows = [(t, "weather") for t in sentences(WEATHER, "rolled in", 40, 1)]
    rows += [(t, "food") for t in sentences(FOOD, "was served", 40, 2)]
    ws = Workspace.init(root / "ws")
    clean = ws.ingest(write(root / "clean.csv", rows), name=NAME)
    spec = SPEC | {"train": SPEC["train"] | {"epochs": 3, "lr": 0.01}, "gate": GATE}
    ws.train(spec | {"dataset": f"{NAME}@{clean.id}"})
    ws.set_alias(f"{NAME}@1", "production", actor="test", reason="first release")
    ws.train(spec | {"dataset": f"{NAME}@{clean.id}", "train": spec["train"] | {"seed": 1}})
    labels = [label for _, label in rows]
    random.Random(3).shuffle(labels)
    shuffled = [(text, label) for (text, _), label in zip(rows, labels)]
    noisy = ws.ingest(write(root / "noisy.csv", shuffled), name=NAME)
    ws.train(spec | {"dataset": f"{NAME}@{noisy.id}"})
    tokens = {}
    for role in ROLES:
        plaintext, token = issue_token(f"test-{role}", role)
        ws.meta.add_token(token)
        tokens[role] = {"Authorization": f"Bearer {plaintext}"}

    ops = Paused(WorkspaceOperations(ws))
    app = create_app(meta=ws.meta, artifacts=ws.artifacts, operations=ops, poll_seconds=0)
    s: dict[str, Any] = {"ws": ws, "clean": clean}
    with running(app) as url, httpx.Client(base_url=url, timeout=60) as http:
        promote_2 = f"/v1/models/{NAME}/versions/2:promote"

        def predict(timeout: float = 60) -> httpx.Response:
            return http.post(
                f"/v1/models/{NAME}:predict", json=TEXT, headers=tokens["client"], timeout=timeout
            )

        s["forbidden"] = {
            (role, path): http.request(method, path, headers=tokens[role], json={})
            for role in ("client", "annotator")
            for method, path in (
                ("POST", promote_2),
                ("POST", f"/v1/models/{NAME}:rollback"),
                ("GET", f"/v1/audit?model={NAME}"),
            )
        }
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(
                http.post, promote_2, headers=tokens["operator"], json={"reason": "better"}
            )
            assert ops.started.wait(60)
            # Short timeouts: a gate run on the event loop would hold these until it ended.
            s["during"] = [predict(timeout=10) for _ in range(3)]
            s["answered_before_the_gate_ended"] = not pending.done()
            ops.release.set()
            s["promote"] = pending.result(120)
        s["info_after_promote"] = http.get(f"/v1/models/{NAME}", headers=tokens["client"])
        s["predict_after_promote"] = predict()

        promote_3 = f"/v1/models/{NAME}/versions/3:promote"
        s["operator_force"] = http.post(
            promote_3, headers=tokens["operator"], json={"force": True, "reason": "trust me"}
        )
        s["admin_force_without_reason"] = http.post(
            promote_3, headers=tokens["admin"], json={"force": True}
        )
        s["refused"] = http.post(promote_3, headers=tokens["operator"])
        s["production_after_refusal"] = ws.meta.aliases(NAME)["production"]
        s["info_after_refusal"] = http.get(f"/v1/models/{NAME}", headers=tokens["client"])

        s["rollback"] = http.post(
            f"/v1/models/{NAME}:rollback", headers=tokens["operator"], json={"reason": "complaints"}
        )
        s["info_after_rollback"] = http.get(f"/v1/models/{NAME}", headers=tokens["client"])
        s["predict_after_rollback"] = predict()

        s["audit"] = http.get(
            f"/v1/audit?model={NAME}&alias=production", headers=tokens["operator"]
        )
        s["audit_with_refusals"] = http.get(
            f"/v1/audit?model={NAME}&refused=true&limit=2", headers=tokens["operator"]
        )
        s["versions"] = http.get(f"/v1/models/{NAME}/versions", headers=tokens["client"])
        s["drift"] = http.get(f"/v1/models/{NAME}/drift", headers=tokens["client"])
        s["unknown"] = {
            what: http.get(f"/v1/models/nope/{what}", headers=tokens["admin"])
            for what in ("drift", "review", "feedback", "versions")
        }
        s["known_review"] = http.get(f"/v1/models/{NAME}/review", headers=tokens["annotator"])
    yield s
    ws.close()
    torch.set_num_threads(threads)


def test_client_and_annotator_may_not_promote_roll_back_or_read_the_audit(story: Any) -> None:
    for (role, path), answer in story["forbidden"].items():
        assert answer.status_code == 403, (role, path, answer.text)
        assert answer.json()["error"]["details"]["needs"] == "operator"


def test_predictions_are_answered_while_the_gate_runs(story: Any) -> None:
    assert story["answered_before_the_gate_ended"]
    assert all(r.status_code == 200 for r in story["during"])
    assert {r.json()["predictions"][0]["model_version"] for r in story["during"]} == {1}


def test_an_operator_promotes_a_good_candidate_and_the_server_serves_it_at_once(story: Any) -> None:
    answer = story["promote"]
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["model"], body["version"], body["previous"], body["forced"]) == (NAME, 2, 1, False)
    assert (body["actor"], body["reason"]) == ("test-operator", "better")
    assert body["gate"]["passed"] is True
    assert body["served"] == {"version": 2, "previous": 1, "changed": True, "error": None}
    assert story["info_after_promote"].json()["version"] == 2
    assert story["predict_after_promote"].json()["predictions"][0]["model_version"] == 2


def test_forcing_needs_admin_and_a_reason(story: Any) -> None:
    forced = story["operator_force"]
    assert forced.status_code == 403 and "needs admin" in forced.json()["error"]["message"]
    no_reason = story["admin_force_without_reason"]
    assert no_reason.status_code == 400 and "--reason" in no_reason.json()["error"]["message"]


def test_a_candidate_trained_on_shuffled_labels_is_refused_with_every_reason(story: Any) -> None:
    refused = story["refused"]
    assert refused.status_code == 422, refused.text
    error = refused.json()["error"]
    assert error["code"] == "gate_failed"
    reasons = error["details"]["reasons"]
    assert any(r.startswith("regression.macro_f1") for r in reasons), reasons
    assert f"{len(reasons)} reason" in error["message"]
    assert all(r in error["message"] for r in reasons)
    assert story["production_after_refusal"] == 2
    assert story["info_after_refusal"].json()["version"] == 2


def test_rollback_moves_production_back_and_the_server_with_it(story: Any) -> None:
    answer = story["rollback"]
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["version"], body["previous"], body["actor"]) == (1, 2, "test-operator")
    assert body["reason"] == "rollback from version 2: complaints"
    assert body["served"]["version"] == 1 and body["served"]["changed"]
    assert story["info_after_rollback"].json()["version"] == 1
    assert story["predict_after_rollback"].json()["predictions"][0]["model_version"] == 1


def test_the_audit_lists_every_move_with_the_token_name_as_actor(story: Any) -> None:
    audit = story["audit"]
    assert audit.status_code == 200, audit.text
    moves = [(e["previous"], e["version"], e["actor"], e["event"]) for e in audit.json()["audit"]]
    assert moves == [
        (2, 1, "test-operator", "moved"),
        (1, 2, "test-operator", "moved"),
        (None, 1, "test", "moved"),
    ]
    entries = audit.json()["audit"]
    assert entries[1]["gate"]["passed"]
    assert entries[1]["gate"]["id"] == story["promote"].json()["gate_result_id"]
    assert entries[0]["gate"] is None  # a rollback runs no gate

    newest = story["audit_with_refusals"].json()["audit"]
    assert [(e["event"], e["version"]) for e in newest] == [("moved", 1), ("refused", 3)]
    refusal = newest[1]
    assert (refusal["actor"], refusal["previous"]) == ("test-operator", 2)
    assert refusal["gate"]["id"] == story["refused"].json()["error"]["details"]["gate_result_id"]


def test_versions_list_aliases_test_metrics_gate_and_what_is_served(story: Any) -> None:
    answer = story["versions"]
    assert answer.status_code == 200, answer.text
    versions = {v["version"]: v for v in answer.json()["versions"]}
    assert list(versions) == [3, 2, 1]
    assert versions[1]["aliases"] == ["production"] and "candidate" in versions[3]["aliases"]
    assert [versions[v]["served"] for v in (1, 2, 3)] == [True, False, False]
    assert (versions[1]["gate"], versions[2]["gate"]["passed"], versions[3]["gate"]["passed"]) == (
        None,
        True,
        False,
    )
    ws = story["ws"]
    for number, version in versions.items():
        assert version["test"]["macro_f1"] == pytest.approx(
            ws.model(f"{NAME}@{number}").metrics["test"]["macro_f1"]
        )


def test_drift_over_http_is_the_cli_report(story: Any) -> None:
    answer = story["drift"]
    assert answer.status_code == 200, answer.text
    report = answer.json()
    # Production is v1 again; it served the three predictions made during the gate and one after.
    assert (report["model"], report["count"]) == (f"{NAME}@1", 4)
    direct = drift(story["ws"], NAME)
    assert (report["alarm"], report["reasons"]) == (direct["alarm"], direct["reasons"])
    assert report["features"] == direct["features"] and report["embeddings"] == direct["embeddings"]


def test_unknown_models_are_404_on_drift_review_feedback_and_versions(story: Any) -> None:
    for what, answer in story["unknown"].items():
        assert answer.status_code == 404, (what, answer.text)
        assert "'nope'" in answer.json()["error"]["message"]
    assert story["known_review"].status_code == 200
