"""Int8 quantization on real small data: the int8 graph keeps the fp32 model's answers (arg-max
agreement above a stated bound) and its accuracy, and a CNN's file is several times smaller.

Bounds: >= 97% arg-max agreement with the fp32 network on 300 held-out digits / 120 held-out
sentences, <= 2 points of accuracy lost, a CNN in <= 40% of the fp32 file size. Int8 rounds every weight
and activation, so a few inputs near a decision boundary may change class; the 99.5% the quality
gate asks of a *promoted* export is a property of the version, judged by the gate.
"""

from __future__ import annotations

import numpy as np
import pytest

from aifab.core.errors import ConfigError, InputError
from aifab.optimize.export import OrtPredictor, parity_report
from aifab.optimize.quantize import default_method, quantize_int8
from tests.optimize.test_export import (
    TEXT_TEST,
    TEXT_TEST_Y,
    TEXT_TRAIN,
    encoded,
    image_model,
    image_onnx,
    image_test,
    one_thread,  # noqa: F401  (autouse fixture)
    proba,
    text_model,
    text_onnx,
)

MIN_AGREEMENT = 0.97
MAX_ACCURACY_DROP = 0.02
MAX_SIZE_RATIO = 0.4


def _accuracy(probs: np.ndarray, labels: list[str], truth: list[str]) -> float:
    return float(np.mean(probs.argmax(1) == [labels.index(y) for y in truth]))


def test_static_int8_cnn_keeps_its_answers_and_is_smaller() -> None:
    trained = image_model()
    images, truth = image_test()
    from tests.optimize.test_export import digits_png

    train_images, _ = digits_png(range(200))
    calibration = [encoded(trained, train_images[i : i + 32]) for i in range(0, 200, 32)]
    int8 = quantize_int8(image_onnx(), method="static", calibration=calibration)

    fp32 = proba(trained.model, trained, images)
    got = proba(OrtPredictor(int8), trained, images)
    assert parity_report(fp32, got)["agreement"] >= MIN_AGREEMENT
    labels = trained.preprocessing["labels"]
    assert _accuracy(got, labels, truth) >= _accuracy(fp32, labels, truth) - MAX_ACCURACY_DROP
    assert len(int8) <= MAX_SIZE_RATIO * len(image_onnx())
    assert _quantize_nodes(int8) >= 6  # every conv's input is quantized: they run in int8


@pytest.mark.parametrize("method", ["static", "dynamic"])
def test_int8_text_model_keeps_its_answers(method: str) -> None:
    trained = text_model()
    calibration = [encoded(trained, TEXT_TRAIN[i : i + 32]) for i in range(0, 200, 32)]
    int8 = quantize_int8(text_onnx(), method=method, calibration=calibration if method == "static" else None)

    fp32 = proba(trained.model, trained, TEXT_TEST)
    got = proba(OrtPredictor(int8), trained, TEXT_TEST, batch_size=16)
    assert parity_report(fp32, got)["agreement"] >= MIN_AGREEMENT
    labels = trained.preprocessing["labels"]
    assert _accuracy(got, labels, TEXT_TEST_Y) >= _accuracy(fp32, labels, TEXT_TEST_Y) - MAX_ACCURACY_DROP
    # (No size bound here: this net's weights are smaller than its graph's description.)


def test_method_follows_the_architecture() -> None:
    assert [default_method("image", "resnet18"), default_method("image", "smallcnn")] == ["static", "static"]
    assert default_method("text", "textcnn") == "static"  # convolutions: int8 kernels need static ranges
    assert {default_method("text", a) for a in ("bilstm", "gru", "transformer", "pretrained:minilm")} == {"dynamic"}


def test_static_without_calibration_and_unknown_methods_are_refused() -> None:
    with pytest.raises(InputError, match="calibration"):
        quantize_int8(image_onnx(), method="static")
    with pytest.raises(InputError, match="empty"):
        quantize_int8(image_onnx(), method="static", calibration=[])
    with pytest.raises(ConfigError, match="did you mean 'static'"):
        quantize_int8(image_onnx(), method="statik")


def _quantize_nodes(data: bytes) -> int:
    """QuantizeLinear nodes: each turns an activation into int8 for the operator after it (ONNX
    Runtime fuses the QDQ pairs into int8 kernels)."""
    import onnx

    return sum(1 for node in onnx.load_from_string(data).graph.node if node.op_type == "QuantizeLinear")
