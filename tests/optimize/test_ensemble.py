"""Ensembles: the voting rules against hand-computed answers; an ensemble of a TextCNN and a
Transformer packaged as ONE self-contained version that loads, evaluates beside its members, goes
through the gate and serves over the same HTTP endpoint as any model; members that do not fit
refused with a message naming them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from aifab.core.errors import ConfigError, InputError
from aifab.core.types import ModelVersion
from aifab.optimize.ensemble import EnsembleModel, Member, check_members, combine, fit_weights
from tests.optimize import _topics as topics

TEXTS = ["rain and snow on the hills", "pasta with garlic and butter", "tennis and rowing today", "fog"]

# Three members' probabilities over classes (a, b, c) for two inputs.
P1 = np.array([[0.7, 0.2, 0.1], [0.1, 0.5, 0.4]])
P2 = np.array([[0.2, 0.5, 0.3], [0.1, 0.3, 0.6]])
P3 = np.array([[0.6, 0.3, 0.1], [0.3, 0.4, 0.3]])


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """topics@1 a TextCNN, topics@2 a Transformer (same dataset and labels); other@1 a TextCNN on
    two of the three topics."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny nets train faster on one thread of a busy machine
    root = tmp_path_factory.mktemp("ensemble")
    ws = topics.workspace(root)
    ws.train(topics.spec(topics.TEXTCNN))
    ws.train(topics.spec(topics.TRANSFORMER))
    two = [row for row in topics.sentences(40, seed=5) if row[1] != "sport"]
    ws.ingest(topics.write_csv(root / "other.csv", two), name="other")
    ws.train(topics.spec(topics.TEXTCNN, dataset="other", name="other"))
    yield ws
    ws.close()
    torch.set_num_threads(threads)


# -- the rules -----------------------------------------------------------------------------------


def test_soft_and_weighted_averages_match_hand_computed_means() -> None:
    soft = combine([P1, P2, P3], method="soft")
    assert soft == pytest.approx(np.array([[1.5, 1.0, 0.5], [0.5, 1.2, 1.3]]) / 3)
    weighted = combine([P1, P2, P3], method="weighted", weights=[2, 1, 1])  # 0.5, 0.25, 0.25
    assert weighted == pytest.approx(np.array([[0.55, 0.30, 0.15], [0.15, 0.425, 0.425]]))


def test_hard_voting_counts_votes_and_breaks_ties_by_the_mean_probability() -> None:
    # Arg-maxes: input 0 -> a, b, a; input 1 -> b, c, b.
    hard = combine([P1, P2, P3], method="hard")
    assert hard == pytest.approx(np.array([[2 / 3, 1 / 3, 0], [0, 2 / 3, 1 / 3]]), abs=1e-5)
    # Two members disagree on both inputs: the tie goes to the higher mean, not the first label
    # (input 1: b has mean 0.4, c 0.5, so c wins although it comes later).
    tied = combine([P1, P2], method="hard")
    assert tied == pytest.approx(np.array([[0.5, 0.5, 0], [0, 0.5, 0.5]]), abs=1e-5)
    assert tied.argmax(axis=1).tolist() == [0, 2]
    # Weighted votes: the second member's vote outweighs the first's.
    assert combine([P1, P2], method="hard", weights=[1, 3]).argmax(axis=1).tolist() == [1, 2]


def test_hard_voting_for_multi_label_votes_per_class() -> None:
    votes = combine([np.array([[0.9, 0.2]]), np.array([[0.6, 0.7]]), np.array([[0.1, 0.8]])], method="hard", multi_label=True)
    assert votes == pytest.approx(np.array([[2 / 3, 2 / 3]]), abs=1e-5)
    # Half the votes each: class 0's mean (0.55) carries it over 0.5, class 1's (0.45) does not.
    tie = combine([np.array([[0.9, 0.3]]), np.array([[0.2, 0.6]])], method="hard", multi_label=True)
    assert (tie >= 0.5).tolist() == [[True, False]]


def test_fitted_weights_minimise_validation_log_loss() -> None:
    good, bad = np.array([[0.9, 0.1], [0.2, 0.8]]), np.array([[0.4, 0.6], [0.6, 0.4]])
    assert fit_weights([good, bad], [0, 1]) == [1.0, 0.0]
    # Each member sure where it is right and unsure where it is not: by symmetry, half and half.
    left, right = np.array([[0.9, 0.1], [0.5, 0.5]]), np.array([[0.5, 0.5], [0.1, 0.9]])
    assert fit_weights([left, right], [0, 1]) == [0.5, 0.5]


class _Fixed:
    """A member with fixed answers (the combination is what is under test here)."""

    def __init__(self, ref: str, labels: list[str], probs: np.ndarray) -> None:
        name, _, number = ref.partition("@")
        self.version = ModelVersion(name=name, version=int(number), files={}, task="text-classification", created_at=None)  # type: ignore[arg-type]
        self.labels, self.kind, self.probs = labels, "text", probs

    def predict_proba(self, inputs: list[Any], *, batch_size: int = 64) -> np.ndarray:
        return self.probs[: len(inputs)]

    def predict(self, inputs: list[Any], *, batch_size: int = 64) -> list[dict[str, Any]]:
        return [{"scores": dict(zip(self.labels, map(float, row)))} for row in self.predict_proba(inputs)]


def test_members_with_labels_in_another_order_are_matched_by_name() -> None:
    reordered = P2[:, [2, 0, 1]]  # the same answers as P2, columns (c, a, b)
    ensemble = EnsembleModel(
        version=ModelVersion(name="e", version=1, files={}, task="text-classification", created_at=None),  # type: ignore[arg-type]
        members=[_Fixed("m@1", ["a", "b", "c"], P1), _Fixed("m@2", ["c", "a", "b"], reordered)],
        method="soft",
        weights=None,
        labels=["a", "b", "c"],
        multi_label=False,
    )
    assert ensemble.predict_proba(["x", "y"]) == pytest.approx(combine([P1, P2], method="soft"))
    answers = ensemble.predict(["x", "y"])
    assert [a["label"] for a in answers] == ["a", "c"]
    assert answers[1]["scores"] == pytest.approx({"a": 0.1, "b": 0.4, "c": 0.5})


def test_members_that_do_not_fit_are_refused_naming_the_member_and_the_difference() -> None:
    text = Member("sms@1", "text-classification", "text", False, ("ham", "spam"))
    with pytest.raises(InputError, match=r"member shapes@2: input kind is 'image', but sms@1's is 'text'"):
        check_members([text, Member("shapes@2", "text-classification", "image", False, ("ham", "spam"))])
    with pytest.raises(InputError, match=r"member tags@1: multi-label is True"):
        check_members([text, Member("tags@1", "text-classification", "text", True, ("ham", "spam"))])
    with pytest.raises(ConfigError, match="at least 2 members"):
        check_members([text])
    with pytest.raises(ConfigError, match=r"more than once: \['sms@1'\]"):
        check_members([text, text])
    with pytest.raises(ConfigError, match="soft averaging weighs every member equally"):
        combine([P1, P2], method="soft", weights=[1, 2])
    with pytest.raises(ConfigError, match="2 given for 3 members"):
        combine([P1, P2, P3], method="weighted", weights=[1, 2])
    with pytest.raises(ConfigError, match="'method' parameter"):
        combine([P1, P2], method="vote")


def test_the_workspace_refuses_members_with_other_labels(trained: Any) -> None:
    ws = trained
    before = len(ws.models("topics"))
    with pytest.raises(InputError) as err:
        ws.ensemble(["topics@1", "other@1"])
    assert err.value.message == "ensemble member other@1: labels differ from topics@1's: missing ['sport'], extra []"
    assert len(ws.models("topics")) == before  # nothing registered


# -- one version, end to end ------------------------------------------------------------------------


def test_an_ensemble_of_two_architectures_is_one_self_contained_version(trained: Any) -> None:
    from aifab.registry.versions import load_files

    ws = trained
    aliases = ws.meta.aliases("topics")
    result = ws.ensemble(["topics@1", "topics@2"], method="soft")
    version = result["model"]
    assert version.ref == "topics@3" and ws.meta.aliases("topics") == aliases  # no alias moved

    # Every member file under its prefix, plus the manifest naming the members for lineage.
    for i, member in enumerate((ws.model("topics@1"), ws.model("topics@2"))):
        assert {f"members/{i}/{name}": digest for name, digest in member.files.items()}.items() <= version.files.items()
    manifest = json.loads(ws.blob(version.files["ensemble.json"]))
    assert (manifest["method"], manifest["weights"], manifest["labels"]) == ("soft", [0.5, 0.5], ["food", "sport", "weather"])
    assert [m["ref"] for m in manifest["members"]] == ["topics@1", "topics@2"]

    # It loads from its own files alone: nothing read is outside its file list.
    own = set(version.files.values())

    def read(digest: str) -> bytes:
        assert digest in own, "the ensemble read a blob it does not list"
        return ws.blob(digest)

    loaded = load_files(ws.model(version.ref), read)
    assert (loaded.kind, loaded.labels) == ("text", ["food", "sport", "weather"])
    separately = [ws.load_model(ref).predict_proba(TEXTS) for ref in ("topics@1", "topics@2")]
    assert loaded.predict_proba(TEXTS) == pytest.approx((separately[0] + separately[1]) / 2, abs=1e-9)

    # Its evaluation shows it beside each member, on the same records as their own evaluations.
    metrics = ws.evaluate(version.ref)
    for ref in ("topics@1", "topics@2"):
        assert metrics["members"][ref]["accuracy"] == ws.evaluate(ref)["accuracy"]
    assert metrics["accuracy"] == result["test"]["ensemble"]["accuracy"] == version.metrics["test"]["accuracy"]
    assert result["test"]["members"] == {ref: pytest.approx(m) for ref, m in metrics["members"].items()}
    card = ws.blob(version.files["model_card.md"]).decode()
    assert "| **ensemble** |" in card and "| topics@1 |" in card and "| topics@2 |" in card


def test_weighted_ensemble_fits_its_weights_on_the_validation_split(trained: Any) -> None:
    ws = trained
    result = ws.ensemble(["topics@2", "topics@1"], method="weighted")
    weights = list(result["weights"].values())
    assert result["weights_from"] == "val" and sum(weights) == pytest.approx(1.0)
    # The fitted weights beat (or tie) every other point of a fine grid on validation log loss.
    from aifab.pipeline import training

    inputs, targets = training._load_splits(ws, ws.dataset("topics"), _spec(ws, "topics@1"), only=("val",))["val"]
    labels = ws.load_model("topics@1").labels
    y = np.array([labels.index(t) for t in targets])
    probs = [ws.load_model(ref).predict_proba(inputs) for ref in ("topics@2", "topics@1")]

    def loss(w: float) -> float:
        mix = w * probs[0] + (1 - w) * probs[1]
        return float(-np.log(mix[np.arange(len(y)), y]).mean())

    assert loss(weights[0]) <= min(loss(w) for w in np.linspace(0, 1, 101)) + 0.01
    loaded = ws.load_model(result["model"].ref)
    assert loaded.weights == pytest.approx(weights) and loaded.method == "weighted"


def _spec(ws: Any, ref: str) -> Any:
    from aifab.core.config import Spec, parse

    return parse(Spec, json.loads(ws.blob(ws.model(ref).files["spec.json"])))


def test_an_ensemble_goes_through_the_gate_and_serves_through_the_same_endpoint(trained: Any) -> None:
    from fastapi.testclient import TestClient

    from aifab.pipeline.promotion import promote
    from aifab.serve.app import create_app

    ws = trained
    version = ws.ensemble(["topics@1", "topics@2"], method="hard")["model"]
    gate = promote(ws, version.ref, actor="test")  # the gate evaluates it like any candidate
    assert gate["gate"]["passed"] is True and ws.model("topics@production").version == version.version

    expected = ws.load_model(version.ref).predict(TEXTS)
    app = create_app(meta=ws.meta, artifacts=ws.artifacts, auth=False, poll_seconds=0)
    with TestClient(app) as client:
        info = client.get("/v1/models/topics").json()
        assert (info["version"], info["kind"], info["labels"]) == (version.version, "text", ["food", "sport", "weather"])
        r = client.post("/v1/models/topics:predict", json={"instances": [TEXTS[0], {"text": TEXTS[1]}, *TEXTS[2:]]})
        assert r.status_code == 200, r.text
        predictions = r.json()["predictions"]
        assert [p["label"] for p in predictions] == [e["label"] for e in expected]
        for got, want in zip(predictions, expected):
            assert got["scores"] == pytest.approx(want["scores"], abs=1e-6)
            assert got["model_version"] == version.version
        bad = client.post("/v1/models/topics:predict", json={"instances": [{"image": "x"}]})
        assert bad.status_code in (400, 422) and "error" in bad.json()


def test_cli_ensemble_json_and_exit_codes(trained: Any, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from aifab.cli import app

    ws = trained
    runner = CliRunner()
    ok = runner.invoke(app, ["ensemble", "topics@1", "topics@2", "--weights", "3,1", "--method", "weighted",
                             "-w", str(ws.root), "--json"])
    assert ok.exit_code == 0, ok.output
    body = json.loads(ok.stdout)
    assert body["weights"] == {"topics@1": 0.75, "topics@2": 0.25} and body["weights_from"] == "user"
    assert set(body["test"]["members"]) == {"topics@1", "topics@2"}
    refused = runner.invoke(app, ["ensemble", "topics@1", "other@1", "-w", str(ws.root), "--json"])
    assert refused.exit_code == 3 and json.loads(refused.stdout)["error"]["code"] == "invalid_input"
    typo = runner.invoke(app, ["ensemble", "topics@1", "topics@2", "--weights", "1;2", "-w", str(ws.root), "--json"])
    assert typo.exit_code == 2 and "--weights" in json.loads(typo.stdout)["error"]["message"]


def test_members_onnx_parity_reaches_the_gate_as_the_worst_members(trained: Any) -> None:
    from aifab.pipeline.ensembling import _members_parity

    ws = trained

    def version(ref: str, **files: Any) -> ModelVersion:
        digests = {name.replace("_", "."): ws.artifacts.put_bytes(json.dumps(v).encode()) for name, v in files.items()}
        return ModelVersion(name=ref.split("@")[0], version=int(ref.split("@")[1]), files=digests,
                            task="text-classification", created_at=None)  # type: ignore[arg-type]

    plain = version("a@1", model_json={})
    good = version("b@1", model_onnx="graph", parity_json={"export": "model.onnx", "agreement": 1.0})
    worse = version("c@1", model_onnx="graph", parity_json={"export": "model.onnx", "agreement": 0.97})
    unchecked = version("d@1", model_onnx="graph")
    assert _members_parity(ws, [plain, plain]) is None  # no export: the gate checks none
    assert _members_parity(ws, [plain, good, worse]) == {"export": "members/2/model.onnx", "agreement": 0.97, "member": "c@1"}
    assert _members_parity(ws, [good, unchecked]) is None  # refused by the gate like its member
