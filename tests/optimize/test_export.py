"""ONNX export: the graph answers like the PyTorch network (text and image, real small data), at
any batch size and text length, from one self-contained file; every text arch exports; a network
that cannot be exported is refused with its arch named.

The tiny trained models built here (`text_model`, `image_model`) are shared with the quantization
and pruning tests, which import them: each is trained once per session.
"""

from __future__ import annotations

import functools
import io
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from aifab.core.errors import ConfigError
from aifab.evaluate.gates import PARITY_MIN_AGREEMENT
from aifab.optimize.export import OrtPredictor, export_onnx, parity_report

WEATHER = ["rain", "snow", "wind", "storm", "cloud", "thunder", "frost", "fog", "drizzle", "breeze", "hail", "sunshine"]
FOOD = ["bread", "cheese", "soup", "pasta", "salad", "curry", "noodle", "pepper", "garlic", "butter", "honey", "lemon"]
PLACES = ["hills", "valley", "harbor", "city", "village", "coast", "river", "forest", "market", "square", "bridge", "meadow"]


VERBS = ["came", "was seen", "turned up", "arrived", "was there", "showed up"]


def sentences(words: list[str], n: int, seed: int) -> list[str]:
    """Sentences of 1 to ~20 words (lengths vary; some are shorter than TextCNN's widest kernel)
    whose topic words alone tell the class: every other word is shared by both classes."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        if i % 10 == 0:
            out.append(rng.choice(words))  # one word: shorter than a 5-wide kernel
            continue
        tail = " ".join(f"and then {rng.choice(words)} again" for _ in range(i % 4))
        out.append(f"{rng.choice(words)} and {rng.choice(words)} {rng.choice(VERBS)} near the "
                   f"{rng.choice(PLACES)} on day {i} {tail}".strip())
    return out


TEXT_TRAIN = sentences(WEATHER, 120, 1) + sentences(FOOD, 120, 2)
TEXT_TRAIN_Y = ["weather"] * 120 + ["food"] * 120
TEXT_TEST = sentences(WEATHER, 60, 3) + sentences(FOOD, 60, 4)
TEXT_TEST_Y = ["weather"] * 60 + ["food"] * 60
TEXT_VAL = sentences(WEATHER, 10, 5) + sentences(FOOD, 10, 6)
TEXT_VAL_Y = ["weather"] * 10 + ["food"] * 10


def digits_png(indices: range, size: int = 16) -> tuple[list[bytes], list[str]]:
    """scikit-learn's real handwritten digits, upscaled to ``size`` px, as PNG bytes."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    images, labels = [], []
    for i in indices:
        buffer = io.BytesIO()
        pixels = (digits.images[i] * (255 / 16)).astype(np.uint8)
        Image.fromarray(pixels, mode="L").resize((size, size)).save(buffer, format="PNG")
        images.append(buffer.getvalue())
        labels.append(str(int(digits.target[i])))
    return images, labels


@functools.cache
def text_model() -> Any:
    """A TextCNN trained on the sentences above (a few seconds)."""
    return _train(
        {"arch": "textcnn", "embed_dim": 16, "num_filters": 8, "vocab_size": 300, "max_length": 32},
        "text-classification", TEXT_TRAIN, TEXT_TRAIN_Y, TEXT_VAL, TEXT_VAL_Y, ["food", "weather"], lr=0.03, epochs=4,
    )


@functools.cache
def image_model() -> Any:
    """A SmallCNN trained on 500 real digits at 16 px (a few seconds)."""
    images, labels = digits_png(range(500))
    return _train(
        {"arch": "smallcnn", "image_size": 16}, "image-classification",
        images[:450], labels[:450], images[450:], labels[450:], [str(i) for i in range(10)], lr=0.003,
    )


@functools.cache
def image_test() -> tuple[list[bytes], list[str]]:
    return digits_png(range(1000, 1300))


@functools.cache
def text_onnx() -> bytes:
    """``text_model()`` exported (the export tests check it; the quantization tests start from it)."""
    return export_onnx(text_model().model, encoded(text_model(), TEXT_TEST[:2]), arch="textcnn")


@functools.cache
def image_onnx() -> bytes:
    return export_onnx(image_model().model, encoded(image_model(), image_test()[0][:2]), arch="smallcnn")


def _train(model: dict[str, Any], task: str, x: list[Any], y: list[str], vx: list[Any], vy: list[str],
           labels: list[str], *, lr: float, epochs: int = 3) -> Any:
    from aifab.core.config import Spec, parse
    from aifab.train.run import train_classifier

    spec = parse(Spec, {"task": task, "dataset": "t", "model": model, "train": {
        "epochs": epochs, "batch_size": 32, "lr": lr, "device": "cpu", "amp": False, "early_stopping": None,
        "seed": 0, "augment": {"enabled": False}}})
    return train_classifier(spec, train_inputs=x, train_targets=y, val_inputs=vx, val_targets=vy, labels=labels)


def encoded(trained: Any, items: list[Any]) -> dict[str, Any]:
    from aifab.train.run import make_encoder

    encoder = make_encoder(trained.preprocessing, trained.tokenizer_json)
    if trained.preprocessing["kind"] == "text":
        ids, mask = encoder(items)
        return {"input_ids": ids, "attention_mask": mask}
    return {"images": encoder(items)}


def proba(model: Any, trained: Any, items: list[Any], batch_size: int = 64) -> np.ndarray:
    from aifab.train.run import predict_proba

    return predict_proba(model, trained.preprocessing, trained.tokenizer_json, items, batch_size=batch_size)


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Two spinning threads on a shared, busy machine are slower than one."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _dims(graph_input: Any) -> list[str | int]:
    return [d.dim_param or d.dim_value for d in graph_input.type.tensor_type.shape.dim]


def test_text_export_answers_like_torch_at_any_batch_size_and_length() -> None:
    import onnx

    trained = text_model()
    data = text_onnx()

    graph = onnx.load_from_string(data)
    inputs = {i.name: _dims(i) for i in graph.graph.input}
    assert list(inputs) == ["input_ids", "attention_mask"]
    assert all(isinstance(d, str) for dims in inputs.values() for d in dims), inputs  # batch and sequence dynamic
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in graph.graph.initializer)

    ort = OrtPredictor(data)
    reference = proba(trained.model, trained, TEXT_TEST)
    assert min(len(t.split()) for t in TEXT_TEST) == 1  # shorter than the widest kernel
    for batch_size in (1, 7, 64):
        got = proba(ort, trained, TEXT_TEST, batch_size)
        assert np.abs(got - reference).max() < 1e-5
    report = parity_report(reference, proba(ort, trained, TEXT_TEST))
    assert report["agreement"] == 1.0 and report["passed"] and report["examples"] == len(TEXT_TEST)
    # The trained model is not a coin: the agreement above is over meaningful answers.
    assert np.mean(reference.argmax(1) == [trained.preprocessing["labels"].index(y) for y in TEXT_TEST_Y]) > 0.9


def test_image_export_answers_like_torch() -> None:
    import onnx

    trained = image_model()
    images, labels = image_test()
    data = image_onnx()
    (graph_input,) = onnx.load_from_string(data).graph.input
    dims = _dims(graph_input)
    assert graph_input.name == "images" and isinstance(dims[0], str) and dims[1:] == [1, 16, 16]

    ort = OrtPredictor(data)
    reference = proba(trained.model, trained, images)
    for batch_size in (1, 64):
        assert np.abs(proba(ort, trained, images, batch_size) - reference).max() < 1e-5
    assert np.mean(reference.argmax(1) == [int(y) for y in labels]) > 0.8


def _text_net(arch: str, vocab_size: int) -> Any:
    from aifab.models.text import RNNClassifier, TransformerClassifier

    if arch == "gru":  # one layer, pooled from its final states: exported through an adapter
        return RNNClassifier(vocab_size, 2, cell="gru", embed_dim=16, hidden_dim=8, pooling="last")
    if arch == "bilstm":
        return RNNClassifier(vocab_size, 2, cell="lstm", embed_dim=16, hidden_dim=8, num_layers=2)
    return TransformerClassifier(vocab_size, 2, embed_dim=16, num_heads=2, ff_dim=32, num_layers=1, max_length=32)


@pytest.mark.parametrize("arch", ["gru", "bilstm", "transformer"])
def test_rnn_and_transformer_archs_export_with_padding_respected(arch: str) -> None:
    import torch

    trained = text_model()
    torch.manual_seed(0)
    net = _text_net(arch, trained.model_params["vocab_size"]).eval()
    data = export_onnx(net, encoded(trained, TEXT_TRAIN[:2]), arch=arch)
    ort = OrtPredictor(data)
    texts = TEXT_TEST[:40]
    reference = proba(net, trained, texts)
    for batch_size in (1, 16):  # alone and in padded batches
        assert np.abs(proba(ort, trained, texts, batch_size) - reference).max() < 1e-5


def test_a_pretrained_transformers_encoder_exports(tmp_path: Any) -> None:
    import torch
    from transformers import BertConfig

    from aifab.models.text import PretrainedEncoderClassifier

    # A tiny BERT from its config alone (what a saved version rebuilds from): no download.
    BertConfig(vocab_size=300, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
               intermediate_size=32, max_position_embeddings=64).save_pretrained(tmp_path)
    torch.manual_seed(0)
    net = PretrainedEncoderClassifier(str(tmp_path), 2, load_weights=False).eval()
    trained = text_model()  # its tokenizer makes real ids below 300
    ort = OrtPredictor(export_onnx(net, encoded(trained, TEXT_TRAIN[:2]), arch=f"pretrained:{tmp_path}"))
    reference = proba(net, trained, TEXT_TEST[:30])
    assert np.abs(proba(ort, trained, TEXT_TEST[:30], 8) - reference).max() < 1e-5


def test_a_network_that_cannot_be_exported_is_refused_naming_its_arch() -> None:
    import torch

    class DataDependent(torch.nn.Module):
        def forward(self, images: torch.Tensor) -> torch.Tensor:
            if images.sum() > 0:  # a branch on the data: no static graph has it
                return images.flatten(1)[:, :2]
            return -images.flatten(1)[:, :2]

    with pytest.raises(ConfigError, match="'oddnet'.*cannot be exported"):
        export_onnx(DataDependent(), {"images": torch.ones(2, 1, 8, 8)}, arch="oddnet")


def test_parity_passes_at_the_gate_threshold_and_fails_below_it() -> None:
    reference = np.tile([[0.9, 0.1]], (200, 1))
    flipped = reference.copy()
    flipped[:1] = [0.4, 0.6]  # 199 of 200 agree: exactly 99.5%
    at = parity_report(reference, flipped)
    assert at["agreement"] == pytest.approx(PARITY_MIN_AGREEMENT) and at["passed"] is True
    flipped[1:2] = [0.45, 0.55]  # 198 of 200
    below = parity_report(reference, flipped)
    assert below["passed"] is False and below["max_abs_diff"] == pytest.approx(0.5)
