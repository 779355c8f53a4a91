"""Train -> evaluate -> register -> load -> predict through the workspace, on small real data."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from aifab.core.errors import ConfigError, InputError
from aifab.pipeline.project import Workspace

SPEC = {"task": "image-classification", "dataset": "digits", "model": {"arch": "smallcnn"}, "train": {"epochs": 3, "batch_size": 32}}


def write_digits(root: Path, n: int = 400) -> Path:
    """Real handwritten digits (scikit-learn's bundled set) as PNG files by class."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    for i in range(n):
        out = root / str(int(digits.target[i]))
        out.mkdir(parents=True, exist_ok=True)
        pixels = (digits.images[i] * (255 / 16)).astype(np.uint8)
        Image.fromarray(pixels, mode="L").save(out / f"{i:04d}.png")
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("train")
    ws = Workspace.init(root / "ws")
    ws.ingest(write_digits(root / "digits"), name="digits")
    version = ws.train(SPEC)
    yield ws, version
    ws.close()


def test_training_registers_a_self_contained_version(trained) -> None:
    ws, version = trained
    assert version.ref == "digits@1" and "candidate" in version.aliases
    assert {"weights.safetensors", "model.json", "preprocessing.json", "spec.json", "metrics.json",
            "lineage.json", "model_card.md", "report.html", "history.json"} <= set(version.files)
    spec = json.loads(ws.blob(version.files["spec.json"]))
    assert spec["model"]["arch"] == "smallcnn" and spec["train"]["lr"] > 0  # defaults written out
    lineage = json.loads(ws.blob(version.files["lineage.json"]))
    assert lineage["dataset_version"] == ws.dataset("digits").id and lineage["seed"] == 0
    assert ws.meta.get_run(lineage["run"]).status == "finished"
    card = ws.blob(version.files["model_card.md"]).decode()
    assert "digits@" in card and "accuracy" in card
    assert "http://" not in ws.blob(version.files["report.html"]).decode()
    assert version.metrics["test"]["accuracy"] > 0.7  # 3 epochs on 280 images; chance is 0.1


def test_reloaded_model_reproduces_the_registered_metrics(trained) -> None:
    ws, version = trained
    metrics = ws.evaluate("digits@candidate")
    registered = json.loads(ws.blob(version.files["metrics.json"]))
    assert metrics["accuracy"] == pytest.approx(registered["accuracy"], abs=1e-12)
    assert metrics["confusion_matrix"] == registered["confusion_matrix"]


def test_predict_by_alias_gives_labels_and_probabilities(trained, tmp_path: Path) -> None:
    ws, _ = trained
    ws.set_alias("digits@1", "production", actor="test")
    model = ws.load_model("digits@production")
    test = ws.records(ws.dataset("digits"), split="test")[:20]
    answers = model.predict([ws.blob(r.image) for r in test])
    assert all(abs(sum(a["scores"].values()) - 1) < 1e-5 for a in answers)
    assert np.mean([a["label"] == r.category for a, r in zip(answers, test)]) > 0.7


def test_bad_requests_fail_before_training(trained, tmp_path: Path) -> None:
    ws, _ = trained
    runs_before = len(ws.meta.list_runs())
    with pytest.raises(ConfigError, match="did you mean 'epochs'"):
        ws.train({**SPEC, "train": {"epohcs": 2}})
    with pytest.raises(InputError, match="no 'text' field"):
        ws.train({**SPEC, "task": "text-classification"})
    one_class = tmp_path / "one.csv"
    one_class.write_text("text,label\n" + "".join(f"message {i} here,spam\n" for i in range(30)))
    ws.ingest(one_class, name="oneclass")
    with pytest.raises(InputError, match="at least 2"):
        ws.train({"task": "text-classification", "dataset": "oneclass"})
    no_test = tmp_path / "notest.csv"
    no_test.write_text("text,label,split\n" + "".join(f"note number {i} about {'ab'[i % 2]},{'ab'[i % 2]},train\n" for i in range(30)))
    ws.ingest(no_test, name="notest")
    with pytest.raises(InputError, match="test split has no records"):
        ws.train({"task": "text-classification", "dataset": "notest", "model": {"arch": "textcnn"}})
    assert len(ws.meta.list_runs()) == runs_before


TRAIN = """
import sys
from aifab.pipeline.project import Workspace
ws = Workspace.open(sys.argv[1])
ws.train(sys.argv[2], resume=sys.argv[3] if len(sys.argv) > 3 else None)
"""


def test_resume_after_kill_reaches_the_uninterrupted_result(tmp_path: Path) -> None:
    ws = Workspace.init(tmp_path / "ws")
    ws.ingest(write_digits(tmp_path / "digits", n=300), name="digits")
    spec = tmp_path / "spec.yaml"
    spec.write_text("task: image-classification\ndataset: digits\nmodel: {arch: smallcnn}\ntrain: {epochs: 6, batch_size: 16}\n")
    ws.close()

    proc = subprocess.Popen([sys.executable, "-c", TRAIN, str(tmp_path / "ws"), str(spec)])
    runs = tmp_path / "ws" / ".aifab" / "runs"
    deadline = time.monotonic() + 240
    while not list(runs.glob("*/checkpoint.pt")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "training finished before it could be killed"
    time.sleep(0.3)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()

    with Workspace.open(tmp_path / "ws") as ws:
        (run,) = ws.meta.list_runs()
        assert run.status == "running" and ws.models() == []  # killed: nothing registered
    resumed = subprocess.run([sys.executable, "-c", TRAIN, str(tmp_path / "ws"), str(spec), run.id], timeout=300)
    assert resumed.returncode == 0
    uninterrupted = subprocess.run([sys.executable, "-c", TRAIN, str(tmp_path / "ws"), str(spec)], timeout=300)
    assert uninterrupted.returncode == 0
    with Workspace.open(tmp_path / "ws") as ws:
        first, second = ws.model("digits@1"), ws.model("digits@2")
        assert ws.meta.get_run(run.id).status == "finished"
        # Content-addressed weights: the same digest means bit-identical tensors.
        assert first.files["weights.safetensors"] == second.files["weights.safetensors"]
