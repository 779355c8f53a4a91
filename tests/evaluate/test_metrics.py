"""classification_metrics against hand-computed values and against scikit-learn called directly."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from sklearn import metrics as skm

from aifab.core.errors import InputError
from aifab.evaluate.metrics import classification_metrics, flatten_metrics, higher_is_better

# 2 classes, 4 examples. Predictions (arg-max): [0, 0, 1, 1] against truth [0, 0, 0, 1].
TINY_Y = [0, 0, 0, 1]
TINY_P = [[0.9, 0.1], [0.7, 0.3], [0.4, 0.6], [0.2, 0.8]]


def test_tiny_example_by_hand() -> None:
    m = classification_metrics(TINY_Y, TINY_P, labels=["ham", "spam"])
    assert m["num_examples"] == 4
    assert m["accuracy"] == pytest.approx(0.75)
    assert m["confusion_matrix"] == [[2, 1], [0, 1]]
    # ham: precision 2/2, recall 2/3, f1 0.8; spam: precision 1/2, recall 1/1, f1 2/3.
    assert m["per_class"]["ham"] == pytest.approx(
        {"precision": 1.0, "recall": 2 / 3, "f1": 0.8, "support": 3}
    )
    assert m["per_class"]["spam"] == pytest.approx(
        {"precision": 0.5, "recall": 1.0, "f1": 2 / 3, "support": 1}
    )
    assert m["macro_f1"] == pytest.approx((0.8 + 2 / 3) / 2)
    assert m["macro_precision"] == pytest.approx(0.75)
    assert m["macro_recall"] == pytest.approx((2 / 3 + 1) / 2)
    assert m["weighted_f1"] == pytest.approx((3 * 0.8 + 1 * 2 / 3) / 4)
    assert m["micro_f1"] == pytest.approx(0.75)  # single-label micro F1 is accuracy
    assert m["log_loss"] == pytest.approx(
        -(math.log(0.9) + math.log(0.7) + math.log(0.4) + math.log(0.8)) / 4
    )
    # Confidences .9, .7, .6, .8 fall in four different bins of 15: ECE = mean |correct - conf|.
    assert m["ece"] == pytest.approx((0.1 + 0.3 + 0.6 + 0.2) / 4)
    assert m["labels"] == ["ham", "spam"] and m["multi_label"] is False


@pytest.fixture
def four_class() -> tuple[np.ndarray, np.ndarray]:
    """60 examples, 4 classes; class 3 never occurs in the truth and class 2 is never predicted."""
    rng = np.random.default_rng(7)
    y = rng.integers(0, 3, size=60)
    logits = rng.normal(size=(60, 4))
    logits[np.arange(60), y] += 1.2
    logits[:, 2] -= 5.0
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y, probs


def test_single_label_matches_sklearn(four_class: tuple[np.ndarray, np.ndarray]) -> None:
    y, probs = four_class
    labels = ["a", "b", "c", "d"]
    m = classification_metrics(y, probs, labels=labels)
    pred = probs.argmax(axis=1)
    ids = [0, 1, 2, 3]
    assert 2 not in pred and 3 not in y  # the fixture exercises zero division and zero support
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    for avg in ("macro", "micro", "weighted"):
        kw = {"labels": ids, "average": avg, "zero_division": 0}
        assert m[f"{avg}_f1"] == pytest.approx(skm.f1_score(y, pred, **kw))
        assert m[f"{avg}_precision"] == pytest.approx(skm.precision_score(y, pred, **kw))
        assert m[f"{avg}_recall"] == pytest.approx(skm.recall_score(y, pred, **kw))
    assert m["confusion_matrix"] == skm.confusion_matrix(y, pred, labels=ids).tolist()
    assert m["log_loss"] == pytest.approx(skm.log_loss(y, probs, labels=ids))
    report = skm.classification_report(
        y, pred, labels=ids, target_names=labels, output_dict=True, zero_division=0
    )
    for name in labels:
        got = m["per_class"][name]
        assert got["precision"] == pytest.approx(report[name]["precision"])
        assert got["recall"] == pytest.approx(report[name]["recall"])
        assert got["f1"] == pytest.approx(report[name]["f1-score"])
        assert got["support"] == report[name]["support"]


def test_multi_label_matches_sklearn_and_hand_values() -> None:
    y = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1]])
    probs = np.array([[0.9, 0.2, 0.7], [0.1, 0.6, 0.4], [0.8, 0.3, 0.1], [0.4, 0.1, 0.55]])
    m = classification_metrics(y, probs, labels=["red", "green", "blue"], multi_label=True)
    pred = (probs >= 0.5).astype(int)  # rows: [1,0,1] [0,1,0] [1,0,0] [0,0,1]
    assert m["accuracy"] == pytest.approx(
        0.75
    )  # subset accuracy: only row 2 is wrong (misses green)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    for avg in ("macro", "micro", "weighted"):
        assert m[f"{avg}_f1"] == pytest.approx(skm.f1_score(y, pred, average=avg, zero_division=0))
    assert m["per_class"]["green"] == pytest.approx(
        {"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2}
    )
    # green: tn 2, fp 0, fn 1, tp 1
    assert m["confusion_matrix"]["green"] == [[2, 0], [1, 1]]
    assert m["log_loss"] == pytest.approx(skm.log_loss(y.ravel(), probs.ravel()))
    assert m["multi_label"] is True and m["threshold"] == 0.5


def test_multi_label_threshold_changes_the_decision() -> None:
    y = np.array([[1, 0], [0, 1]])
    probs = np.array([[0.45, 0.1], [0.2, 0.45]])
    assert classification_metrics(y, probs, labels=["a", "b"], multi_label=True)["accuracy"] == 0.0
    assert (
        classification_metrics(y, probs, labels=["a", "b"], multi_label=True, threshold=0.4)[
            "accuracy"
        ]
        == 1.0
    )


def test_result_is_plain_json(four_class: tuple[np.ndarray, np.ndarray]) -> None:
    y, probs = four_class
    m = classification_metrics(y, probs, labels=["a", "b", "c", "d"])
    assert json.loads(json.dumps(m)) == m  # would raise on numpy scalars or arrays

    def walk(value: object) -> None:
        assert type(value) in (dict, list, str, int, float, bool, type(None)), type(value)
        if isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)

    walk(m)


def test_flatten_metrics_gate_keys() -> None:
    m = classification_metrics(TINY_Y, TINY_P, labels=["ham", "spam"])
    flat = flatten_metrics(m, prefix="test")
    assert flat["test.accuracy"] == pytest.approx(0.75)
    assert flat["test.macro_f1"] == pytest.approx(m["macro_f1"])
    assert flat["test.class.spam.f1"] == pytest.approx(2 / 3)
    assert flat["test.class.ham.support"] == 3.0
    assert flat["test.ece"] == pytest.approx(0.3) and "test.log_loss" in flat
    assert all(isinstance(v, float) for v in flat.values())
    # Lists, matrices, flags and the absent threshold are not gate values.
    for key in (
        "test.labels",
        "test.confusion_matrix",
        "test.multi_label",
        "test.threshold",
        "test.reliability",
    ):
        assert key not in flat
    assert set(flatten_metrics(m, prefix="")) == {k.removeprefix("test.") for k in flat}


def test_higher_is_better_naming_rule() -> None:
    assert higher_is_better("accuracy") and higher_is_better("test.class.spam.f1")
    assert not higher_is_better("log_loss") and not higher_is_better("test.ece")
    assert not higher_is_better("val.loss")


@pytest.mark.parametrize(
    ("y", "probs", "labels", "kw", "message"),
    [
        ([0, 1], [[0.5, 0.5], [0.5, 0.5]], ["a"], {}, "match 1 labels"),
        ([0, 2], [[0.5, 0.5], [0.5, 0.5]], ["a", "b"], {}, "row 1: class index 2"),
        ([0, 1], [[0.5, 0.6], [0.5, 0.5]], ["a", "b"], {}, "row 0 sums to 1.1"),
        ([0, 1], [[0.5, 0.5], [0.5, 0.5]], ["a", "a"], {}, "unique"),
        ([0, 1], [[1.5, -0.5], [0.5, 0.5]], ["a", "b"], {}, "[0, 1]"),
        ([0], [[0.5, 0.5], [0.5, 0.5]], ["a", "b"], {}, "y_true"),
        ([[1, 0]], [[0.5, 0.5]], ["a", "b"], {"multi_label": True, "threshold": 1.0}, "threshold"),
        ([[1, 2]], [[0.5, 0.5]], ["a", "b"], {"multi_label": True}, "0 or 1"),
    ],
)
def test_bad_inputs_are_named(
    y: object, probs: object, labels: list[str], kw: dict, message: str
) -> None:
    with pytest.raises(InputError, match=message.replace("[", r"\[").replace("]", r"\]")):
        classification_metrics(y, probs, labels=labels, **kw)
