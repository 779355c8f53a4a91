"""kill -9 during an ingest leaves no partial version, and the next ingest succeeds."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import write_png

INGEST = """
import sys
from aifab.pipeline.project import Workspace
ws = Workspace.open(sys.argv[1])
ws.ingest(sys.argv[2], name="big")
print("finished")
"""


def _blob_count(workspace: Path) -> int:
    return sum(1 for p in (workspace / ".aifab" / "artifacts").rglob("*") if p.is_file())


def test_kill_during_ingest_leaves_no_version(tmp_path: Path) -> None:
    from aifab.pipeline.project import Workspace

    source = tmp_path / "images"
    for i in range(600):
        write_png(source / ("a" if i % 2 else "b") / f"{i:04d}.png", seed=i, size=32)
    Workspace.init(tmp_path / "ws").close()

    proc = subprocess.Popen([sys.executable, "-c", INGEST, str(tmp_path / "ws"), str(source)])
    deadline = time.monotonic() + 120
    while _blob_count(tmp_path / "ws") < 50 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the ingest finished before it could be killed; make the data bigger"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert _blob_count(tmp_path / "ws") >= 50  # it really was mid-way: blobs were written

    with Workspace.open(tmp_path / "ws") as ws:
        assert ws.datasets() == []
        version = ws.ingest(source, name="big")
        assert version.num_records == 600
        assert [v.id for v in ws.datasets()] == [version.id]
        # Every blob the version references is complete and verifies.
        for record in ws.records(version)[:50]:
            assert ws.blob(record.image)
