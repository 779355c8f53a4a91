"""build_model dispatch and validation; choose_arch, default_lr and param_groups rules."""

from __future__ import annotations

import pytest
import torch

from aifab.core.config import ModelConfig
from aifab.core.errors import ConfigError
from aifab.models.build import build_model, choose_arch, default_lr, param_groups
from aifab.models.text import (
    PretrainedEncoderClassifier,
    RNNClassifier,
    TextCNN,
    TransformerClassifier,
)
from aifab.models.vision import SmallCNN, TorchvisionClassifier

TEXT = "text-classification"
IMAGE = "image-classification"


def test_auto_must_be_resolved_before_building() -> None:
    with pytest.raises(ValueError, match="choose_arch"):
        build_model(ModelConfig(), task=TEXT, num_classes=2, vocab_size=100)


def test_config_fields_reach_the_network() -> None:
    cfg = ModelConfig(arch="textcnn", embed_dim=24, kernel_sizes=(2, 3), num_filters=7)
    net = build_model(cfg, task=TEXT, num_classes=4, vocab_size=321)
    assert isinstance(net, TextCNN)
    assert (
        net.embedding.weight.shape == (321, 24) and net.feature_dim == 14 and net.num_classes == 4
    )

    lstm = build_model(
        ModelConfig(arch="bilstm", hidden_dim=10, num_layers=2, pooling="cls"),
        task=TEXT,
        num_classes=2,
        vocab_size=50,
    )
    assert isinstance(lstm, RNNClassifier) and isinstance(lstm.rnn, torch.nn.LSTM)
    assert lstm.rnn.num_layers == 2 and lstm.feature_dim == 20 and lstm.pooling == "last"
    gru = build_model(
        ModelConfig(arch="gru", hidden_dim=10), task=TEXT, num_classes=2, vocab_size=50
    )
    assert isinstance(gru.rnn, torch.nn.GRU) and gru.rnn.bidirectional

    tf = build_model(
        ModelConfig(
            arch="transformer",
            embed_dim=32,
            num_heads=4,
            num_layers=3,
            hidden_dim=64,
            max_length=20,
            pooling="cls",
        ),
        task=TEXT,
        num_classes=2,
        vocab_size=50,
    )
    assert isinstance(tf, TransformerClassifier)
    assert len(tf.encoder.layers) == 3 and tf.encoder.layers[0].linear1.out_features == 64
    assert tf.max_length == 20 and tf.encoder.layers[0].norm_first

    cnn = build_model(
        ModelConfig(arch="smallcnn", dropout=0.3), task=IMAGE, num_classes=10, in_channels=1
    )
    assert isinstance(cnn, SmallCNN) and cnn.head.dropout.p == 0.3
    eff = build_model(ModelConfig(arch="efficientnet_b0"), task=IMAGE, num_classes=7, in_channels=1)
    assert isinstance(eff, TorchvisionClassifier) and eff.net.features[0][0].in_channels == 1
    assert eff.eval()(torch.rand(1, 1, 40, 40)).shape == (1, 7)

    enc = build_model(
        ModelConfig(arch="pretrained:minilm", freeze_encoder=True),
        task=TEXT,
        num_classes=3,
        load_pretrained=False,
    )
    assert (
        isinstance(enc, PretrainedEncoderClassifier)
        and enc.feature_dim == 384
        and enc.freeze_encoder
    )


def test_arch_and_task_must_agree() -> None:
    with pytest.raises(ConfigError, match="'textcnn' is not an image arch"):
        build_model(ModelConfig(arch="textcnn"), task=IMAGE, num_classes=2)
    with pytest.raises(ConfigError, match="'resnet18' is not a text arch"):
        build_model(ModelConfig(arch="resnet18"), task=TEXT, num_classes=2, vocab_size=10)
    with pytest.raises(ConfigError, match="ner"):
        build_model(ModelConfig(arch="textcnn"), task="ner", num_classes=2, vocab_size=10)
    with pytest.raises(ConfigError, match="arch: pretrained:"):
        build_model(
            ModelConfig(arch="gru", pretrained="w.safetensors"),
            task=TEXT,
            num_classes=2,
            vocab_size=10,
        )
    with pytest.raises(ValueError, match="vocab_size"):
        build_model(ModelConfig(arch="gru"), task=TEXT, num_classes=2)
    with pytest.raises(ConfigError, match="divisible"):
        build_model(
            ModelConfig(arch="transformer", embed_dim=30, num_heads=4),
            task=TEXT,
            num_classes=2,
            vocab_size=10,
        )


@pytest.mark.parametrize(
    ("task", "records", "size", "has_text", "expected"),
    [
        (IMAGE, 1797, 8, False, "smallcnn"),
        (IMAGE, 70000, 28, True, "smallcnn"),
        (IMAGE, 60000, 64, True, "smallcnn"),
        (IMAGE, 500, 65, True, "resnet18"),
        (IMAGE, 500, None, True, "resnet18"),
        (IMAGE, 200_000, 224, True, "resnet50"),
        (TEXT, 5000, None, True, "pretrained:minilm"),
        (TEXT, 5000, None, False, "textcnn"),
    ],
)
def test_choose_arch_rules(
    task: str, records: int, size: int | None, has_text: bool, expected: str
) -> None:
    arch = choose_arch(task, num_records=records, image_size=size, has_pretrained_text=has_text)
    assert arch == expected
    ModelConfig(arch=arch)  # every choice is a valid arch


def test_default_learning_rates() -> None:
    assert 2e-5 <= default_lr("pretrained:minilm") <= 5e-5
    assert default_lr("transformer") == 3e-4
    assert default_lr("textcnn") == default_lr("smallcnn") == default_lr("resnet50") == 1e-3
    assert default_lr("resnet50", pretrained="weights.safetensors") == 3e-4


def test_param_groups_split_decay_and_head_and_skip_frozen() -> None:
    net = TextCNN(vocab_size=20, num_classes=2, embed_dim=8, num_filters=4, kernel_sizes=(2,))
    net.embedding.weight.requires_grad_(False)
    groups = param_groups(net, lr=0.1, weight_decay=0.5, head_lr_scale=10.0)
    by_id = {id(p): g for g in groups for p in g["params"]}
    assert id(net.embedding.weight) not in by_id
    assert (
        by_id[id(net.convs[0].weight)]["lr"],
        by_id[id(net.convs[0].weight)]["weight_decay"],
    ) == (0.1, 0.5)
    assert (by_id[id(net.convs[0].bias)]["lr"], by_id[id(net.convs[0].bias)]["weight_decay"]) == (
        0.1,
        0.0,
    )
    assert by_id[id(net.head.linear.weight)]["lr"] == pytest.approx(1.0)
    assert by_id[id(net.head.linear.bias)]["weight_decay"] == 0.0
    assert sum(len(g["params"]) for g in groups) == 4
