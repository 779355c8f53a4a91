"""`aifab serve`, `aifab token` and `aifab feedback`: the real console script in subprocesses,
against a real server on a free loopback port and a model trained from a CSV written here."""

from __future__ import annotations

import csv
import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

AIFAB = str(Path(sys.executable).with_name("aifab"))
MODEL = "texts"


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [AIFAB, *args], cwd=cwd, capture_output=True, text=True, env=_env(), timeout=180
    )


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "AIFAB_WORKSPACE"}
    env["COLUMNS"] = "200"  # rich wraps table cells to the terminal width
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serving(ws: Path, *args: str) -> Iterator[tuple[str, Path]]:
    """``aifab serve`` in a subprocess on a free port; yields its URL (once /healthz answers)
    and the file its stderr goes to. Killed at the end, whatever happened."""
    port = _free_port()
    log = ws.parent / f"serve-{port}.log"
    with open(log, "w") as err:
        proc = subprocess.Popen(
            [AIFAB, "serve", "--port", str(port), "--poll-seconds", "0", *args],
            cwd=ws,
            env=_env(),
            stdout=err,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"aifab serve exited with {proc.returncode}:\n{log.read_text()}")
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"aifab serve not ready in 60 s:\n{log.read_text()}")
            time.sleep(0.1)
        yield url, log
    finally:
        proc.kill()
        proc.wait(10)


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workspace with model ``texts`` version 1 (a 2-epoch TextCNN, classes ham/spam) in
    production, built with the CLI."""
    root = tmp_path_factory.mktemp("cli-serve")
    rows = [("text", "label")]
    for i in range(30):
        rows.append((f"are we still meeting at {i} near the station, bring {i * 7} apples", "ham"))
        rows.append((f"WINNER claim prize {i} now!! text CLAIM to 8{i}0{i} for free cash {i * 3}", "spam"))
    with open(root / "texts.csv", "w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows(rows)
    (root / "spec.yaml").write_text(
        f"task: text-classification\ndataset: {MODEL}\nmodel: {{arch: textcnn}}\ntrain: {{epochs: 2}}\n"
    )
    assert run("init", "ws", cwd=root).returncode == 0
    ws = root / "ws"
    for args in (
        ("ingest", str(root / "texts.csv"), "--name", MODEL),
        ("train", str(root / "spec.yaml")),
        ("promote", f"{MODEL}@1"),
    ):
        out = run(*args, "--json", cwd=ws)
        assert out.returncode == 0, out.stdout + out.stderr
    return ws


def _token(ws: Path, role: str, name: str) -> str:
    out = run("token", "create", "--role", role, "--name", name, cwd=ws)
    assert out.returncode == 0, out.stderr
    assert "cannot be shown again" in out.stderr
    return out.stdout.strip()


def test_a_created_token_authenticates_and_feedback_round_trips(ws: Path) -> None:
    annotator = _token(ws, "annotator", "labeler")
    client = _token(ws, "client", "app")
    with serving(ws) as (url, _log):
        anonymous = httpx.post(f"{url}/v1/models/{MODEL}:predict", json={"instances": ["hi"]})
        assert anonymous.status_code == 401
        answer = httpx.post(
            f"{url}/v1/models/{MODEL}:predict",
            json={"instances": ["WINNER claim prize 3 now!! text CLAIM", "see you at the station"]},
            headers={"Authorization": f"Bearer {client}"},
        )
        assert answer.status_code == 200, answer.text
        predictions = answer.json()["predictions"]
        assert [p["model_version"] for p in predictions] == [1, 1]
        # A client may predict but not give feedback: the role the token was created with counts.
        refused = httpx.post(
            f"{url}/v1/models/{MODEL}/feedback",
            json={"prediction_id": predictions[0]["prediction_id"], "correct": True},
            headers={"Authorization": f"Bearer {client}"},
        )
        assert refused.status_code == 403
        ok = httpx.get(f"{url}/v1/models/{MODEL}/feedback", headers={"Authorization": f"Bearer {annotator}"})
        assert ok.status_code == 200

    first, second = (p["prediction_id"] for p in predictions)
    wrong_label = "ham" if predictions[0]["label"] == "spam" else "spam"
    added = run("feedback", "add", first, "--label", wrong_label, "--comment", "checked by hand", "--json", cwd=ws)
    assert added.returncode == 0, added.stdout + added.stderr
    assert json.loads(added.stdout)["feedback"]["label"] == wrong_label
    assert run("feedback", "add", second, "--wrong", cwd=ws).returncode == 0

    listed = run("feedback", "list", MODEL, "--json", cwd=ws)
    assert listed.returncode == 0, listed.stderr
    found = {f["prediction_id"]: f for f in json.loads(listed.stdout)["feedback"]}
    assert found[first]["label"] == wrong_label and found[first]["comment"] == "checked by hand"
    assert found[second]["correct"] is False and found[second]["label"] is None

    unknown = run("feedback", "add", "no-such-prediction", "--label", "ham", "--json", cwd=ws)
    assert unknown.returncode == 4
    assert "no-such-prediction" in json.loads(unknown.stdout)["error"]["message"]

    outside = run("feedback", "add", first, "--label", "hamm", "--json", cwd=ws)
    assert outside.returncode == 3
    message = json.loads(outside.stdout)["error"]["message"]
    assert "'hamm'" in message and "did you mean 'ham'" in message
    # ... unless it is declared a new class.
    assert run("feedback", "add", first, "--label", "phishing", "--new-class", cwd=ws).returncode == 0

    assert run("feedback", "list", "no-such-model", cwd=ws).returncode == 4


def test_token_list_never_shows_secrets_and_revoke_takes_a_token_off(ws: Path) -> None:
    created = run("token", "create", "--role", "operator", "--name", "deployer", "--json", cwd=ws)
    assert created.returncode == 0, created.stderr
    issued = json.loads(created.stdout)
    plaintext, token_id = issued["token"], issued["id"]
    assert plaintext.startswith(f"afb_{token_id}_") and issued["role"] == "operator"
    secret = plaintext.split("_", 2)[2]
    with sqlite3.connect(ws / ".aifab" / "aifab.db") as db:
        stored = db.execute("select * from tokens where id = ?", (token_id,)).fetchone()
    assert stored is not None and not any(secret in str(column) for column in stored)
    salted_hash = next(str(c) for c in stored if str(c).startswith("scrypt$"))

    for args in (("token", "list"), ("token", "list", "--json")):
        out = run(*args, cwd=ws)
        assert out.returncode == 0 and token_id in out.stdout
        for hidden in (secret, salted_hash.split("$")[-1], "secret_hash", "salt"):
            assert hidden not in out.stdout + out.stderr

    revoked = run("token", "revoke", "deployer", "--json", cwd=ws)
    assert revoked.returncode == 0 and json.loads(revoked.stdout)["token"]["revoked"] is True
    listed = {t["id"]: t for t in json.loads(run("token", "list", "--json", cwd=ws).stdout)["tokens"]}
    assert listed[token_id]["revoked_at"] is not None
    assert run("token", "revoke", "nobody", cwd=ws).returncode == 4
    bad_role = run("token", "create", "--role", "root", "--name", "x", "--json", cwd=ws)
    assert bad_role.returncode == 3 and "annotator" in json.loads(bad_role.stdout)["error"]["message"]


def test_serve_refuses_no_auth_off_loopback_and_warns_on_it(ws: Path) -> None:
    started = time.monotonic()
    refused = run("serve", "--no-auth", "--host", "0.0.0.0", "--port", str(_free_port()), cwd=ws)
    assert refused.returncode == 2
    assert "--no-auth" in refused.stderr and "loopback" in refused.stderr
    assert time.monotonic() - started < 30  # refused before loading anything

    missing = run("serve", "--models", "no-such-model", "--port", str(_free_port()), cwd=ws)
    assert missing.returncode == 4 and "no-such-model" in missing.stderr

    with serving(ws, "--no-auth", "--host", "127.0.0.1", "--max-batch-size", "1") as (url, log):
        answer = httpx.post(f"{url}/v1/models/{MODEL}:predict", json={"instances": ["hello there"]})
        assert answer.status_code == 200, answer.text
        assert "authentication is OFF" in log.read_text()
