"""Distillation: the loss against hand-computed values (the soft term uses the teacher's
probabilities, softened by T); a student of an ensemble teacher registers with lineage to it and
learns (beats chance on the held-out test split)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from aifab.core.errors import ConfigError, InputError
from aifab.optimize.distill import student_spec, teacher_targets
from aifab.train.loop import distillation_loss
from tests.optimize import _topics as topics


def _loss(temperature: float, alpha: float) -> Any:
    import torch

    return distillation_loss(torch.nn.CrossEntropyLoss(), temperature=temperature, alpha=alpha)


def test_the_loss_mixes_softened_kl_times_t_squared_with_cross_entropy() -> None:
    import torch

    logits, hard, teacher = torch.zeros(1, 2), torch.tensor([0]), torch.tensor([[0.8, 0.2]])
    # Against a uniform student: KL([.8, .2] || [.5, .5]) = .8 ln 1.6 + .2 ln .4 = 0.19274.
    assert _loss(1.0, 1.0)(logits, hard, teacher).item() == pytest.approx(0.19274, abs=1e-4)
    # At T = 2 the teacher softens to [.8^.5, .2^.5] / sum = [2/3, 1/3]; KL = 0.05663, times T^2 = 4.
    assert _loss(2.0, 1.0)(logits, hard, teacher).item() == pytest.approx(4 * 0.05663, abs=1e-4)
    # alpha mixes in the hard cross-entropy, ln 2 here.
    assert _loss(2.0, 0.5)(logits, hard, teacher).item() == pytest.approx(0.5 * 4 * 0.05663 + 0.5 * 0.69315, abs=1e-4)


def test_a_one_hot_teacher_at_t_1_is_plain_cross_entropy() -> None:
    import torch

    logits = torch.tensor([[1.5, -0.3, 0.2], [0.1, 0.9, -1.2]])
    hard = torch.tensor([2, 1])
    one_hot = torch.nn.functional.one_hot(hard, 3).float()
    expected = torch.nn.functional.cross_entropy(logits, hard).item()
    assert _loss(1.0, 0.7)(logits, hard, one_hot).item() == pytest.approx(expected, rel=1e-4)


def test_the_temperature_changes_the_gradients_only_through_the_soft_term() -> None:
    import torch

    teacher = torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.2, 0.6]])
    hard = torch.tensor([0, 2])

    def grad(temperature: float, alpha: float) -> torch.Tensor:
        logits = torch.tensor([[0.5, 0.1, -0.4], [0.3, -0.2, 0.8]], requires_grad=True)
        _loss(temperature, alpha)(logits, hard, teacher).backward()
        assert logits.grad is not None
        return logits.grad

    assert not torch.allclose(grad(1.0, 0.7), grad(4.0, 0.7), atol=1e-4)
    assert torch.allclose(grad(1.0, 0.0), grad(4.0, 0.0))  # alpha 0: the teacher plays no part


def test_multi_label_students_learn_each_class_from_the_teacher() -> None:
    import torch

    loss = distillation_loss(torch.nn.BCEWithLogitsLoss(), temperature=1.0, alpha=1.0, multi_label=True)
    teacher = torch.tensor([[0.9, 0.2]])
    # At the teacher's own logits the gradient of the soft term vanishes.
    logits = torch.logit(teacher).clone().requires_grad_(True)
    loss(logits, torch.tensor([[1.0, 0.0]]), teacher).backward()
    assert logits.grad is not None and logits.grad.abs().max().item() < 1e-6


def test_teacher_probabilities_need_the_distill_settings_and_fit_the_data() -> None:
    from aifab.core.config import Spec, parse
    from aifab.train.run import train_classifier

    texts, labels = ["good fine", "bad awful"] * 2, ["pos", "neg"] * 2
    plain = parse(Spec, topics.spec(topics.TEXTCNN, epochs=1))
    distilled = parse(Spec, {**topics.spec(topics.TEXTCNN, epochs=1), "train": {**topics.TRAIN, "distill": {}}})
    common = {"train_inputs": texts, "train_targets": labels, "val_inputs": texts, "val_targets": labels, "labels": ["neg", "pos"]}
    with pytest.raises(ConfigError, match="given without train.distill"):
        train_classifier(plain, teacher_probs=[[0.5, 0.5]] * 4, **common)
    with pytest.raises(ConfigError, match="train.distill: distillation needs a teacher"):
        train_classifier(distilled, **common)
    with pytest.raises(InputError, match=r"expected one row per training input.*\(4, 2\); got \(3, 2\)"):
        train_classifier(distilled, teacher_probs=[[0.5, 0.5]] * 3, **common)


def test_teacher_columns_are_matched_to_the_students_labels_by_name() -> None:
    probs = [[0.2, 0.6, 0.2]]
    assert teacher_targets(probs, ["a", "b", "c"], ["c", "b", "a"], multi_label=False).tolist() == [[0.2, 0.6, 0.2]]
    with pytest.raises(InputError, match=r"topics@3: does not know the label\(s\) \['d'\]"):
        teacher_targets(probs, ["a", "b", "c"], ["a", "d"], multi_label=False, teacher="topics@3")


def test_the_student_spec_keeps_the_teachers_data_and_input_settings() -> None:
    teacher = topics.spec(topics.TRANSFORMER, epochs=3)
    teacher["dataset"] = "topics@abc"
    student = student_spec(teacher, kind="text", temperature=3.0)
    assert (student.dataset, student.name, student.model.arch) == ("topics@abc", "topics", "textcnn")
    assert (student.model.max_length, student.model.vocab_size, student.model.num_layers) == (24, 300, 2)
    assert (student.train.epochs, student.train.lr, student.train.distill.temperature, student.train.distill.alpha) == (3, None, 3.0, 0.7)
    assert student_spec({**teacher, "task": "image-classification"}, kind="image").model.arch == "smallcnn"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    ws = topics.workspace(tmp_path_factory.mktemp("distill"))
    ws.train(topics.spec(topics.TEXTCNN))  # topics@1
    ws.train(topics.spec(topics.TRANSFORMER))  # topics@2
    yield ws
    ws.close()
    torch.set_num_threads(threads)


def test_a_student_of_an_ensemble_registers_with_lineage_and_learns(workspace: Any) -> None:
    ws = workspace
    teacher = ws.ensemble(["topics@1", "topics@2"])["model"]
    aliases = ws.meta.aliases("topics")

    student = ws.distill(teacher.ref, temperature=2.0, alpha=0.8)

    assert student.ref == "topics@4" and ws.meta.aliases("topics") == aliases  # a candidate, no alias moved
    lineage = json.loads(ws.blob(student.files["lineage.json"]))
    assert lineage["teacher"] == {"ref": teacher.ref, "temperature": 2.0, "alpha": 0.8}
    assert (lineage["dataset_name"], lineage["dataset_version"]) == ("topics", ws.dataset("topics").id)
    spec = json.loads(ws.blob(student.files["spec.json"]))
    assert spec["model"]["arch"] == "textcnn" and spec["train"]["distill"] == {"temperature": 2.0, "alpha": 0.8}
    assert ws.meta.get_run(student.run_id).status == "finished"
    # Three balanced topics: chance is 1/3 on the held-out test split.
    assert ws.evaluate(student.ref)["accuracy"] > 0.55
    assert ws.load_model(student.ref).predict(["rain and snow and fog and frost"])[0]["label"] == "weather"


def test_a_student_from_a_spec_file_and_the_cli(workspace: Any, tmp_path: Any) -> None:
    import yaml
    from typer.testing import CliRunner

    from aifab.cli import app

    ws = workspace
    path = tmp_path / "student.yaml"
    path.write_text(yaml.safe_dump({**topics.spec(topics.TEXTCNN, epochs=2), "name": "tiny"}), encoding="utf-8")
    r = CliRunner().invoke(app, ["distill", "topics@2", "--spec", str(path), "--alpha", "0.5", "-w", str(ws.root), "--json"])
    assert r.exit_code == 0, r.output
    body = json.loads(r.stdout)
    assert body["model"]["name"] == "tiny" and body["teacher"] == "topics@2"
    lineage = json.loads(ws.blob(ws.model("tiny@1").files["lineage.json"]))
    assert lineage["teacher"] == {"ref": "topics@2", "temperature": 4.0, "alpha": 0.5}
    missing = CliRunner().invoke(app, ["distill", "topics@99", "-w", str(ws.root), "--json"])
    assert missing.exit_code == 4
