"""Spec -> ``nn.Module``: the one place a :class:`~aifab.core.config.ModelConfig` becomes a network.

How ``ModelConfig`` fields map onto each arch:

============================  ==================================================================
image archs                   ``dropout`` (head), ``pretrained`` (weights source), ``image_size``
``textcnn``                   ``embed_dim``, ``kernel_sizes``, ``num_filters``, ``dropout``
``bilstm`` / ``gru``          bidirectional; ``embed_dim``, ``hidden_dim`` (per direction),
                              ``num_layers``, ``dropout``, ``pooling`` (``cls`` = last hidden state)
``transformer``               ``embed_dim``, ``num_heads``, ``num_layers``, ``hidden_dim``
                              (feed-forward width), ``max_length`` (positions), ``pooling``, ``dropout``
``pretrained:<source>``       ``pooling``, ``dropout``, ``freeze_encoder``
============================  ==================================================================

>>> from aifab.core.config import ModelConfig
>>> net = build_model(ModelConfig(arch="textcnn"), task="text-classification", num_classes=2, vocab_size=100)
>>> type(net).__name__, net.feature_dim
('TextCNN', 300)
"""

from __future__ import annotations

from typing import Any

from torch import nn

from aifab.core.config import IMAGE_ARCHS, TEXT_ARCHS, ModelConfig
from aifab.core.errors import ConfigError

IMAGE_TASK = "image-classification"
TEXT_TASK = "text-classification"
TASKS = (IMAGE_TASK, TEXT_TASK)
SMALL_IMAGE_MAX_PX = 64
LARGE_IMAGE_DATASET = 100_000


def build_model(
    model: ModelConfig,
    *,
    task: str,
    num_classes: int,
    vocab_size: int | None = None,
    in_channels: int = 3,
    image_size: int | None = None,
    pad_id: int = 0,
    load_pretrained: bool = True,
    channels: dict[str, int] | None = None,
) -> nn.Module:
    """The network ``model`` describes, with a head of ``num_classes`` outputs.

    ``model.arch`` must be resolved first (:func:`choose_arch`); ``auto`` is a ``ValueError``.
    ``vocab_size`` (the trained tokenizer's real size) is required for from-scratch text archs.
    ``load_pretrained=False`` skips loading named weights (image ``pretrained``, the encoder's
    weights): use it to rebuild a trained model before loading its saved state dict.
    ``channels`` (image archs) are the conv widths a structured pruning left
    (:func:`aifab.models.vision.apply_channel_widths`).

    >>> from aifab.core.config import ModelConfig
    >>> build_model(ModelConfig(arch="smallcnn"), task="image-classification", num_classes=10,
    ...             in_channels=1).num_classes
    10
    """
    if model.arch == "auto":
        raise ValueError("model.arch is 'auto'; resolve it with choose_arch() before build_model()")
    if task not in TASKS:
        raise ConfigError(f"task: {task!r} has no model builder yet; supported: {', '.join(TASKS)}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1; got {num_classes}")
    if task == IMAGE_TASK:
        return _build_image(model, num_classes, in_channels, image_size, load_pretrained, channels)
    if channels:
        raise ConfigError(f"model.json channels: only image archs are pruned by channel; got {model.arch!r}")
    return _build_text(model, num_classes, vocab_size, pad_id, load_pretrained)


def _build_image(
    model: ModelConfig,
    num_classes: int,
    in_channels: int,
    image_size: int | None,
    load_pretrained: bool,
    channels: dict[str, int] | None = None,
) -> nn.Module:
    from aifab.models.vision import build_image_model

    if model.arch not in IMAGE_ARCHS:
        raise ConfigError(
            f"model.arch: {model.arch!r} is not an image arch; image-classification takes one of "
            f"{', '.join(IMAGE_ARCHS)}"
        )
    return build_image_model(
        model.arch,
        num_classes=num_classes,
        in_channels=in_channels,
        image_size=image_size or model.image_size,
        dropout=model.dropout,
        pretrained=model.pretrained if load_pretrained and not channels else None,
        channels=channels,
    )


def _build_text(
    model: ModelConfig, num_classes: int, vocab_size: int | None, pad_id: int, load_pretrained: bool
) -> nn.Module:
    from aifab.models import text

    arch = model.arch
    if arch.startswith("pretrained:"):
        return text.PretrainedEncoderClassifier(
            arch.removeprefix("pretrained:"),
            num_classes,
            dropout=model.dropout,
            freeze_encoder=model.freeze_encoder,
            pooling=model.pooling,
            load_weights=load_pretrained,
        )
    if arch not in TEXT_ARCHS:
        raise ConfigError(
            f"model.arch: {arch!r} is not a text arch; text-classification takes one of "
            f"{', '.join(TEXT_ARCHS)} or pretrained:<path or hub id>"
        )
    if model.pretrained:
        raise ConfigError(
            f"model.pretrained: applies to image archs; for a pretrained text encoder set "
            f"arch: pretrained:<path or hub id> (got pretrained={model.pretrained!r} with arch {arch!r})"
        )
    if vocab_size is None:
        raise ValueError(f"vocab_size is required for the from-scratch text arch {arch!r}")
    if arch == "textcnn":
        return text.TextCNN(
            vocab_size,
            num_classes,
            embed_dim=model.embed_dim,
            kernel_sizes=model.kernel_sizes,
            num_filters=model.num_filters,
            dropout=model.dropout,
            pad_id=pad_id,
        )
    if arch in ("bilstm", "gru"):
        return text.RNNClassifier(
            vocab_size,
            num_classes,
            cell="lstm" if arch == "bilstm" else "gru",
            embed_dim=model.embed_dim,
            hidden_dim=model.hidden_dim,
            num_layers=model.num_layers,
            bidirectional=True,
            dropout=model.dropout,
            pooling="last" if model.pooling == "cls" else model.pooling,
            pad_id=pad_id,
        )
    return text.TransformerClassifier(
        vocab_size,
        num_classes,
        embed_dim=model.embed_dim,
        num_heads=model.num_heads,
        num_layers=model.num_layers,
        ff_dim=model.hidden_dim,
        max_length=model.max_length,
        dropout=model.dropout,
        pooling=model.pooling,
        pad_id=pad_id,
    )


def choose_arch(
    task: str, *, num_records: int, image_size: int | None, has_pretrained_text: bool
) -> str:
    """Resolve ``arch: auto``; the choice is recorded in the run's effective spec.

    Rules:

    - images whose size is known and <= 64 px (digits, MNIST, CIFAR-size): ``smallcnn``, a net
      sized for them that trains in minutes on CPU;
    - larger images: ``resnet18``; from ``LARGE_IMAGE_DATASET`` (100k) records up, ``resnet50``,
      whose extra capacity only pays off with that much data;
    - text: ``pretrained:minilm`` when the packaged offline encoder is installed (transfer
      learning beats any from-scratch net on the small labeled sets typical here), else
      ``textcnn``, the fastest from-scratch net and a strong baseline.

    >>> choose_arch("image-classification", num_records=1797, image_size=8, has_pretrained_text=False)
    'smallcnn'
    >>> choose_arch("image-classification", num_records=5000, image_size=224, has_pretrained_text=True)
    'resnet18'
    >>> choose_arch("text-classification", num_records=5000, image_size=None, has_pretrained_text=True)
    'pretrained:minilm'
    """
    if num_records < 0:
        raise ValueError(f"num_records must be >= 0; got {num_records}")
    if task == IMAGE_TASK:
        if image_size is not None and image_size <= SMALL_IMAGE_MAX_PX:
            return "smallcnn"
        return "resnet50" if num_records >= LARGE_IMAGE_DATASET else "resnet18"
    if task == TEXT_TASK:
        return "pretrained:minilm" if has_pretrained_text else "textcnn"
    raise ConfigError(f"task: {task!r} has no model builder yet; supported: {', '.join(TASKS)}")


def default_lr(arch: str, *, pretrained: str | None = None, frozen: bool = False) -> float:
    """The learning rate used when ``train.lr`` is unset (AdamW).

    Fine-tuning a pretrained text encoder needs a small step (5e-5) not to wash out what it
    knows; with the encoder frozen only a fresh head learns, and at 5e-5 it barely moves in a
    few epochs (MR: 59% against 78% at 1e-3), so it takes 1e-3; the from-scratch Transformer is
    unstable above ~3e-4; an image net starting from pretrained weights takes 3e-4; everything
    else trained from scratch takes 1e-3.

    >>> default_lr("pretrained:minilm"), default_lr("transformer"), default_lr("resnet18")
    (5e-05, 0.0003, 0.001)
    >>> default_lr("pretrained:minilm", frozen=True)
    0.001
    >>> default_lr("resnet18", pretrained="torchvision:ResNet18_Weights.IMAGENET1K_V1")
    0.0003
    """
    if arch.startswith("pretrained:"):
        return 1e-3 if frozen else 5e-5
    if arch == "transformer" or (arch in IMAGE_ARCHS and pretrained):
        return 3e-4
    return 1e-3


def param_groups(
    model: nn.Module, *, lr: float, weight_decay: float, head_lr_scale: float = 1.0
) -> list[dict[str, Any]]:
    """Optimizer parameter groups: no weight decay on biases and norm/scale vectors (1-D
    parameters), and the head at ``lr * head_lr_scale`` (e.g. 10 for a fresh head on a pretrained
    backbone). Frozen parameters are left out; empty groups are dropped.

    >>> from aifab.models.vision import SmallCNN
    >>> groups = param_groups(SmallCNN(num_classes=2), lr=1e-3, weight_decay=0.01, head_lr_scale=10)
    >>> sorted((g["lr"], g["weight_decay"]) for g in groups)
    [(0.001, 0.0), (0.001, 0.01), (0.01, 0.0), (0.01, 0.01)]
    """
    buckets: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        key = (name.startswith("head."), param.ndim > 1)
        buckets.setdefault(key, []).append(param)
    return [
        {
            "params": params,
            "lr": lr * (head_lr_scale if is_head else 1.0),
            "weight_decay": weight_decay if decays else 0.0,
        }
        for (is_head, decays), params in buckets.items()
    ]
