"""`aifab optimize` end to end on a tiny real workspace (SmallCNN on scikit-learn's digits as PNG
files): new versions with lineage to their parent and a before/after table (``--json`` and the
terminal table), served through ONNX Runtime, and an export that fails parity refused by
`aifab promote`."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from aifab.cli import app
from aifab.optimize.export import OrtPredictor, parity_report
from aifab.optimize.measure import count_parameters
from aifab.pipeline.project import Workspace
from tests.optimize.test_export import one_thread  # noqa: F401  (autouse fixture)
from tests.pipeline.test_promotion import spec, write_digits

TABLE_KEYS = {"model", "runtime", "accuracy", "macro_f1", "p50_ms_b1", "p50_ms_b32", "throughput", "size_bytes"}


def aifab(ws: Workspace, *args: str) -> Any:
    """Run the CLI in-process against ``ws``; rich gets a wide terminal so table cells stay whole."""
    return CliRunner().invoke(app, [*args, "--workspace", str(ws.root)], env={"COLUMNS": "200"})


@pytest.fixture(scope="module")
def optimized(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    """digits@1 trained; digits@2 = `--quantize int8 --json`; digits@3 = `--prune 0.5 --export onnx`."""
    root = tmp_path_factory.mktemp("optimize")
    ws = Workspace.init(root / "ws")
    ws.ingest(write_digits(root / "digits", n=400), name="digits")
    ws.train(spec("digits"))
    quantized = aifab(ws, "optimize", "digits@1", "--quantize", "int8", "--json")
    pruned = aifab(ws, "optimize", "digits@1", "--prune", "0.5", "--finetune-epochs", "1", "--export", "onnx")
    yield SimpleNamespace(ws=ws, quantized=quantized, pruned=pruned)
    ws.close()


def test_optimize_json_registers_a_child_version_with_lineage_and_a_before_after_table(optimized: Any) -> None:
    ws, out = optimized.ws, optimized.quantized
    assert out.exit_code == 0, out.output
    result = json.loads(out.stdout)
    assert result["parent"] == "digits@1" and result["model"]["version"] == 2 and result["model"]["parent"] == 1
    child, parent = ws.model("digits@2"), ws.model("digits@1")
    assert child.parent == 1 and child.dataset_version == parent.dataset_version and child.run_id == parent.run_id
    lineage = json.loads(ws.blob(child.files["lineage.json"]))
    assert lineage["parent"] == "digits@1" and lineage["dataset_version"] == parent.dataset_version
    assert {"model.onnx", "parity.json", "optimization.json", "preprocessing.json", "weights.safetensors"} <= set(child.files)
    assert ws.blob(child.files["preprocessing.json"]) == ws.blob(parent.files["preprocessing.json"])

    assert [s["step"] for s in result["steps"]] == ["export", "quantize"]
    assert result["steps"][1]["method"] == "static" and result["steps"][1]["calibration_examples"] == 200
    before, after = result["table"]
    assert set(before) == set(after) == TABLE_KEYS
    assert (before["model"], before["runtime"], after["model"], after["runtime"]) == ("digits@1", "torch", "digits@2", "onnxruntime")
    assert all(row[k] > 0 for row in (before, after) for k in ("p50_ms_b1", "p50_ms_b32", "throughput", "size_bytes"))
    assert after["size_bytes"] == len(ws.blob(child.files["model.onnx"])) < 0.4 * before["size_bytes"]
    assert after["accuracy"] >= before["accuracy"] - 0.03
    assert before["accuracy"] == pytest.approx(parent.metrics["test"]["accuracy"])  # the same test split
    test_count = ws.dataset("digits").split_counts["test"]
    parity = json.loads(ws.blob(child.files["parity.json"]))
    assert parity == result["parity"] and parity["examples"] == test_count and parity["dtype"] == "int8"
    assert parity["agreement"] >= 0.97 and parity["export"] == "model.onnx"
    stored = json.loads(ws.blob(child.files["optimization.json"]))["table"]
    assert stored == [before, after | {"model": "this version"}]  # numbered only as it is registered


def test_optimize_prints_the_table_and_the_pruned_version_is_smaller(optimized: Any) -> None:
    ws, out = optimized.ws, optimized.pruned
    assert out.exit_code == 0, out.output
    for text in ("digits@1 -> digits@3", "p50 ms (b1)", "onnxruntime", "torch", "parity (fp32)", "registered digits@3"):
        assert text in out.stdout, out.stdout
    assert ws.model("digits@3").parent == 1 and ws.meta.aliases("digits")["candidate"] == 3
    steps = json.loads(ws.blob(ws.model("digits@3").files["optimization.json"]))["steps"]
    assert steps[0]["method"] == "structured" and steps[0]["flops_after"] < 0.3 * steps[0]["flops_before"]
    assert count_parameters(ws.load_model("digits@3").model) < 0.3 * count_parameters(ws.load_model("digits@1").model)


def test_a_version_with_an_export_predicts_through_onnx_runtime_in_load_model_and_the_server(optimized: Any) -> None:
    from fastapi.testclient import TestClient

    from aifab.serve.app import create_app
    from aifab.train.run import predict_proba

    ws = optimized.ws
    images = [ws.blob(r.image) for r in ws.records(ws.dataset("digits"), split="test")[:24]]
    loaded = ws.load_model("digits@3")
    assert isinstance(loaded.predictor, OrtPredictor) and loaded.predictor is loaded.onnx
    assert isinstance(ws.load_model("digits@1").predictor, type(loaded.model))  # no export: PyTorch
    # The graph was exported from the pruned network in memory; the torch side here is rebuilt
    # from model.json's channel widths: equal answers mean both round trips hold.
    torch_answers = predict_proba(loaded.model, loaded.preprocessing, None, images)
    assert np.abs(loaded.predict_proba(images) - torch_answers).max() < 1e-5

    ws.set_alias("digits@3", "production", actor="test")
    expected = loaded.predict(images[:5])
    with TestClient(create_app(meta=ws.meta, artifacts=ws.artifacts, auth=False, poll_seconds=0)) as client:
        r = client.post("/v1/models/digits:predict",
                        json={"instances": [{"b64": base64.b64encode(x).decode()} for x in images[:5]]})
    assert r.status_code == 200, r.text
    for got, want in zip(r.json()["predictions"], expected, strict=True):
        assert got["label"] == want["label"] and got["model_version"] == 3
        assert got["scores"] == pytest.approx(want["scores"], abs=1e-6)


def test_promote_refuses_a_version_whose_export_fails_parity(optimized: Any, tmp_path: Path) -> None:
    import onnx
    from onnx import numpy_helper

    from aifab.core.types import ModelVersion
    from aifab.train.run import predict_proba

    ws = optimized.ws
    source = ws.model("digits@3")
    # A broken export: the classifier's weights flipped in the graph, the PyTorch weights intact.
    graph = onnx.load_from_string(ws.blob(source.files["model.onnx"]))
    gemm = next(n for n in graph.graph.node if n.op_type == "Gemm")
    weight = next(t for t in graph.graph.initializer if t.name == gemm.input[1])
    weight.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(weight), weight.name))
    broken = graph.SerializeToString()
    loaded = ws.load_model(source.ref)
    images = [ws.blob(r.image) for r in ws.records(ws.dataset("digits"), split="test")]
    parity = parity_report(predict_proba(loaded.model, loaded.preprocessing, None, images),
                           predict_proba(OrtPredictor(broken), loaded.preprocessing, None, images))
    assert parity["passed"] is False
    files = dict(source.files) | {"model.onnx": ws.artifacts.put_bytes(broken),
                                  "parity.json": ws.artifacts.put_bytes(json.dumps(parity).encode())}
    bad = ws.meta.add_model_version(ModelVersion(
        name="digits", version=0, files=files, task=source.task, created_at=source.created_at,
        run_id=source.run_id, dataset_version=source.dataset_version, parent=source.version))

    out = aifab(ws, "promote", bad.ref, "--json")
    assert out.exit_code == 6, out.output  # GateFailed
    error = json.loads(out.stdout)["error"]
    assert error["code"] == "gate_failed"
    assert any(r.startswith("parity") and "model.onnx" in r for r in error["details"]["reasons"]), error
    assert ws.meta.aliases("digits").get("production") != bad.version
    stored = ws.meta.list_gate_results("digits", bad.version)[0].result
    assert any(c["name"] == "parity" and c["passed"] is False and c["observed"] == parity["agreement"] for c in stored["checks"])
