"""kill -9 at the worst moments: the store keeps the old state or the new one, never half.

Covered elsewhere, not repeated here:

* kill -9 during training, then ``--resume``: the finished run equals an uninterrupted one
  (``tests/pipeline/test_training.py::test_resume_after_kill_reaches_the_uninterrupted_result``,
  bit-identical weights; ``tests/train/test_run.py`` for the training loop itself);
* kill -9 during the ingest of a folder (``tests/pipeline/test_crash.py``).

Here: the server killed right after it acknowledged feedback (the feedback is there after a
restart), and an ingest killed while it reads an extracted archive (no version, and the
extraction folder it left is swept by the next ingest, which succeeds).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import zipfile
from pathlib import Path

import httpx
import pytest

from aifab.pipeline.project import Workspace
from tests.conftest import write_png
from tests.pipeline.test_concurrency import NAME, aifab_command, child_env, server, trained_workspace


@pytest.mark.slow
def test_feedback_acknowledged_before_a_kill_9_is_there_after_a_restart(tmp_path: Path) -> None:
    workspace = trained_workspace(tmp_path)
    log = tmp_path / "serve.log"
    with server(workspace, log) as (url, proc), httpx.Client(base_url=url, timeout=30) as client:
        answer = client.post(f"/v1/models/{NAME}:predict", json={"instances": ["hail and frost by the harbor"]})
        prediction_id = answer.json()["predictions"][0]["prediction_id"]
        ack = client.post(f"/v1/models/{NAME}/feedback", json={"prediction_id": prediction_id, "label": "weather"})
        assert ack.status_code == 201
        os.kill(proc.pid, signal.SIGKILL)  # no shutdown hook runs: only what was committed survives
        proc.wait()
        assert proc.returncode == -signal.SIGKILL
    with server(workspace, log) as (url, _), httpx.Client(base_url=url, timeout=30) as client:
        listed = client.get(f"/v1/models/{NAME}/feedback").json()["feedback"]
        assert [(f["id"], f["prediction_id"], f["label"]) for f in listed] == [
            (ack.json()["id"], prediction_id, "weather")
        ]
        # The restarted server keeps taking feedback on predictions made before the kill.
        again = client.post(f"/v1/models/{NAME}/feedback", json={"prediction_id": prediction_id, "correct": False})
        assert again.status_code == 201
    with Workspace.open(workspace) as ws:
        assert ws.meta.get_prediction(prediction_id).label in ("weather", "food")
        assert len(ws.meta.list_feedback(NAME)) == 2


def _blob_count(workspace: Path) -> int:
    return sum(1 for p in (workspace / ".aifab" / "artifacts").rglob("*") if p.is_file())


def test_kill_9_during_an_archive_ingest_leaves_no_version_and_the_next_ingest_cleans_up(tmp_path: Path) -> None:
    images = tmp_path / "images"
    for i in range(600):
        write_png(images / ("a" if i % 2 else "b") / f"{i:04d}.png", seed=i, size=32)
    archive = tmp_path / "images.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for path in sorted(images.rglob("*.png")):
            z.write(path, "images/" + path.relative_to(images).as_posix())
    workspace = tmp_path / "ws"
    Workspace.init(workspace).close()

    proc = subprocess.Popen(
        aifab_command("ingest", str(archive), "--name", "big", "--json", "--workspace", str(workspace)),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=child_env(),
    )
    deadline = time.monotonic() + 120
    while _blob_count(workspace) < 50 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the ingest finished before it could be killed; make the archive bigger"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    scratch = workspace / ".aifab" / "tmp"
    (left,) = list(scratch.iterdir())  # the killed process could not remove its extraction folder
    assert left.name.startswith("ingest-") and any((left / "extracted").rglob("*.png"))

    with Workspace.open(workspace) as ws:
        assert ws.datasets() == []  # nothing half made is listed
        version = ws.ingest(archive, name="big")
        assert version.num_records == 600 and [v.id for v in ws.datasets()] == [version.id]
        assert all(ws.blob(r.image) for r in ws.records(version)[:20])
    assert list(scratch.iterdir()) == []  # the dead process's folder swept, this one's removed
