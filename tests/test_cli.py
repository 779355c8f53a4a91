"""The real console script in a subprocess: --json output, exit codes, the one error shape."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

AIFAB = str(Path(sys.executable).with_name("aifab"))


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "AIFAB_WORKSPACE"}
    env["COLUMNS"] = "200"  # rich wraps table cells to the terminal width
    return subprocess.run([AIFAB, *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=180)


def test_init_ingest_list_inspect_as_json(tmp_path: Path, sms_csv: Path) -> None:
    assert run("init", "ws", "--json", cwd=tmp_path).returncode == 0
    ws = tmp_path / "ws"
    out = run("ingest", str(sms_csv), "--name", "sms", "--json", cwd=ws)
    assert out.returncode == 0, out.stderr
    ingested = json.loads(out.stdout)
    assert ingested["dataset"]["name"] == "sms"
    assert ingested["dataset"]["num_records"] >= 40

    listed = json.loads(run("datasets", "--json", cwd=ws).stdout)
    assert [d["id"] for d in listed["datasets"]] == [ingested["dataset"]["id"]]

    short = ingested["dataset"]["id"][:8]
    shown = json.loads(run("inspect", f"sms@{short}", "--json", cwd=ws).stdout)
    checks = {f["check"] for f in shown["report"]["findings"]}
    assert "exact_duplicate" in checks

    table = run("inspect", "sms", cwd=ws)
    assert table.returncode == 0 and "exact_duplicate" in table.stdout


def test_errors_have_one_shape_and_the_class_exit_code(tmp_path: Path) -> None:
    run("init", "ws", cwd=tmp_path)
    ws = tmp_path / "ws"
    bad = tmp_path / "bad.csv"
    bad.write_text("text,label\nhello,a\nragged,row,extra\n")

    out = run("ingest", str(bad), "--name", "bad", "--json", cwd=ws)
    assert out.returncode == 3
    error = json.loads(out.stdout)["error"]
    assert error["code"] == "malformed_file"
    assert "bad.csv" in error["message"] and "line 3" in error["message"]

    missing = run("inspect", "nothing", "--json", cwd=ws)
    assert missing.returncode == 4
    assert json.loads(missing.stdout)["error"]["code"] == "not_found"

    nowhere = run("datasets", "--json", cwd=tmp_path)
    assert nowhere.returncode == 10
    assert "aifab init" in json.loads(nowhere.stdout)["error"]["message"]

    bad_name = run("ingest", str(bad), "--name", "../evil", cwd=ws)
    assert bad_name.returncode == 2 and "name" in bad_name.stderr


def test_unknown_config_key_names_the_nearest(tmp_path: Path) -> None:
    run("init", "ws", cwd=tmp_path)
    ws = tmp_path / "ws"
    (ws / "aifab.yaml").write_text("checks:\n  near_duplicte_text: warn\n")
    out = run("datasets", "--json", cwd=ws)
    assert out.returncode == 2
    assert "did you mean 'near_duplicate_text'" in json.loads(out.stdout)["error"]["message"]


def test_help_lists_the_commands(tmp_path: Path) -> None:
    out = run("--help", cwd=tmp_path)
    assert out.returncode == 0
    for command in ("init", "ingest", "datasets", "inspect", "demo"):
        assert command in out.stdout


def test_label_issues_promote_audit_and_rollback(tmp_path: Path, sms_csv: Path) -> None:
    run("init", "ws", cwd=tmp_path)
    ws = tmp_path / "ws"
    assert run("ingest", str(sms_csv), "--name", "sms", cwd=ws).returncode == 0

    issues = run("inspect", "sms", "--label-issues", "--json", cwd=ws)
    assert issues.returncode == 0, issues.stderr
    found = json.loads(issues.stdout)["label_issues"]
    assert found["checked"] >= 40 and found["labels"] == ["ham", "spam"]

    spec = tmp_path / "spec.yaml"
    spec.write_text("task: text-classification\ndataset: sms\nmodel: {arch: textcnn}\ntrain: {epochs: 2}\n")
    assert run("train", str(spec), "--json", cwd=ws).returncode == 0

    promoted = run("promote", "sms@1", "--json", cwd=ws)
    assert promoted.returncode == 0, promoted.stdout + promoted.stderr
    assert json.loads(promoted.stdout)["version"] == 1

    audit = json.loads(run("audit", "sms", "--json", cwd=ws).stdout)["audit"]
    moves = [(e["alias"], e["version"]) for e in audit]
    assert ("production", 1) in moves and ("candidate", 1) in moves
    production = next(e for e in audit if e["alias"] == "production")
    assert production["actor"] and production["gate"]["passed"] is True

    # production never moves around the gate.
    bypass = run("alias", "set", "sms@1", "production", "--json", cwd=ws)
    assert bypass.returncode == 2 and "aifab promote" in json.loads(bypass.stdout)["error"]["message"]

    # Nothing earlier to roll back to: a clear conflict, production unchanged.
    back = run("rollback", "sms", "--json", cwd=ws)
    assert back.returncode == 5 and json.loads(back.stdout)["error"]["code"] == "conflict"
    models = json.loads(run("models", "sms", "--json", cwd=ws).stdout)["models"]
    assert "production" in models[0]["aliases"]
