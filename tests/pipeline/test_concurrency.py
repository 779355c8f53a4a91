"""Three real processes on one SQLite workspace at once: ``aifab train``, ``aifab ingest`` and
``aifab serve`` answering predictions and taking feedback in a loop. All succeed, no
``database is locked`` reaches anyone, and nothing is lost: every acknowledged feedback is in
the store afterwards, and the new dataset and model versions are there.

The helpers here (a tiny trained text workspace, a server subprocess) are shared with
``test_faults.py``.
"""

from __future__ import annotations

import csv
import os
import random
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from aifab.pipeline.project import Workspace

NAME = "topics"
SPEC = {
    "task": "text-classification",
    "dataset": NAME,
    "model": {"arch": "textcnn", "vocab_size": 200, "embed_dim": 16, "num_filters": 8, "max_length": 32},
    "train": {"epochs": 1, "batch_size": 16, "device": "cpu", "early_stopping": None},
}
WORDS = {
    "weather": "rain snow wind storm cloud thunder frost fog drizzle breeze hail sunshine".split(),
    "food": "bread cheese soup pasta salad curry noodle pepper garlic butter honey lemon".split(),
}
PLACES = "hills valley harbor city village coast river forest market square bridge meadow".split()


def write_topics(path: Path, *, n: int, seed: int) -> Path:
    """A CSV of ``n`` short texts per topic (weather / food), distinct enough to pass the gate."""
    rng = random.Random(seed)
    rows = [
        (f"{rng.choice(words)} and {rng.choice(words)} near the {rng.choice(PLACES)} on day {seed}-{i}", label)
        for label, words in WORDS.items()
        for i in range(n)
    ]
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("text", "label"), *rows])
    return path


def trained_workspace(root: Path) -> Path:
    """A workspace whose text model ``topics`` has version 1 in production (a few seconds)."""
    with Workspace.init(root / "ws") as ws:
        ws.ingest(write_topics(root / "topics.csv", n=40, seed=1), name=NAME)
        version = ws.train(SPEC)
        ws.meta.set_alias(NAME, "production", version.version, actor="test")
    return root / "ws"


def aifab_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "aifab.cli", *args]


def child_env() -> dict[str, str]:
    # One thread each: three processes share two cores, and spinning threads only slow them all.
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "AIFAB_DEBUG": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def server(workspace: Path, log: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``aifab serve --no-auth`` on a free 127.0.0.1 port, ready; stopped (SIGTERM) on exit."""
    port = free_port()
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            aifab_command("serve", "--no-auth", "--port", str(port), "--poll-seconds", "0",
                          "--log-level", "warning", "--workspace", str(workspace)),
            stdout=out, stderr=subprocess.STDOUT, env=child_env(),
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, log.read_text(errors="replace")
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not get ready in 120 s"
            time.sleep(0.1)
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def predict_and_correct(client: httpx.Client, texts: list[str]) -> list[str]:
    """Predict ``texts``, then send one correction per answer; the acknowledged feedback ids."""
    response = client.post(f"/v1/models/{NAME}:predict", json={"instances": texts})
    assert response.status_code == 200, response.text
    acked = []
    for answer in response.json()["predictions"]:
        label = "food" if answer["label"] == "weather" else "weather"
        fb = client.post(f"/v1/models/{NAME}/feedback", json={"prediction_id": answer["prediction_id"], "label": label})
        assert fb.status_code == 201, fb.text
        acked.append(fb.json()["id"])
    return acked


@pytest.mark.slow
def test_train_ingest_and_serve_with_feedback_at_once(tmp_path: Path) -> None:
    workspace = trained_workspace(tmp_path)
    more = write_topics(tmp_path / "more.csv", n=150, seed=2)
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "task: text-classification\ndataset: topics\n"
        "model: {arch: textcnn, vocab_size: 200, embed_dim: 16, num_filters: 8, max_length: 32}\n"
        "train: {epochs: 6, batch_size: 8, device: cpu, early_stopping: null, seed: 3}\n",
        encoding="utf-8",
    )
    acked: list[str] = []
    with server(workspace, tmp_path / "serve.log") as (url, _), httpx.Client(base_url=url, timeout=60) as client:
        acked += predict_and_correct(client, ["rain and fog near the river"])  # the server works alone
        logs = {name: open(tmp_path / f"{name}.log", "wb") for name in ("train", "ingest")}
        jobs = {
            "train": subprocess.Popen(aifab_command("train", str(spec), "--json", "--workspace", str(workspace)),
                                      stdout=logs["train"], stderr=subprocess.STDOUT, env=child_env()),
            "ingest": subprocess.Popen(aifab_command("ingest", str(more), "--name", "more", "--json",
                                                     "--workspace", str(workspace)),
                                       stdout=logs["ingest"], stderr=subprocess.STDOUT, env=child_env()),
        }
        deadline = time.monotonic() + 240
        rounds = 0
        while any(job.poll() is None for job in jobs.values()) or rounds < 10:
            assert time.monotonic() < deadline, "train and ingest did not finish in 240 s"
            acked += predict_and_correct(client, [f"soup and bread at the market {rounds}", f"storm {rounds}"])
            rounds += 1
        for log in logs.values():
            log.close()
    outputs = {name: (tmp_path / f"{name}.log").read_text(errors="replace") for name in (*jobs, "serve")}
    for name, job in jobs.items():
        assert job.returncode == 0, f"{name} failed:\n{outputs[name][-3000:]}"
    for name, text in outputs.items():
        assert "database is locked" not in text and "Traceback" not in text, f"{name}:\n{text[-3000:]}"

    with Workspace.open(workspace) as ws:
        stored = {f.id for f in ws.meta.list_feedback(NAME, limit=100_000)}
        assert len(acked) >= 2 * 10 + 1 and set(acked) <= stored  # every acknowledged feedback is there
        assert ws.dataset("more").num_records == 300
        assert [m.version for m in ws.models(NAME)] == [2, 1]
        assert ws.meta.get_run(ws.model(f"{NAME}@2").run_id).status == "finished"
    assert rounds >= 10
