"""Image classifiers: torchvision backbones behind one head, and :class:`SmallCNN` for tiny images.

Every network maps images ``(B, C_in, H, W)`` to logits ``(B, num_classes)`` and exposes
``forward_features`` -> ``(B, feature_dim)`` (see :mod:`aifab.models.heads`). Weights start random
(``weights=None``); pretrained weights come only from the source the user named
(:mod:`aifab.models.pretrained`).

>>> import torch
>>> net = build_image_model("smallcnn", num_classes=10, in_channels=1, image_size=8, dropout=0.0)
>>> net(torch.zeros(2, 1, 8, 8)).shape
torch.Size([2, 10])
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from aifab.core.config import IMAGE_ARCHS
from aifab.core.errors import ConfigError, check_choice
from aifab.models.heads import ClassificationHead

logger = logging.getLogger(__name__)

TORCHVISION_ARCHS = (
    "resnet18",
    "resnet34",
    "resnet50",
    "efficientnet_b0",
    "mobilenet_v3_small",
    "mobilenet_v3_large",
)


def build_image_model(
    arch: str,
    *,
    num_classes: int,
    in_channels: int = 3,
    image_size: int | None = None,
    dropout: float = 0.1,
    pretrained: str | None = None,
    channels: Mapping[str, int] | None = None,
) -> nn.Module:
    """An image classifier for ``arch`` (one of ``IMAGE_ARCHS``), random or with named weights.

    ``image_size`` is informational: every network pools adaptively, so any size >= 8 works.
    To rebuild a trained model from its saved state dict, build with ``pretrained=None``.
    ``channels`` narrows convs to the widths a structured pruning left (see
    :func:`apply_channel_widths`); it rebuilds a pruned model and excludes ``pretrained``.

    >>> import torch
    >>> net = build_image_model("resnet18", num_classes=4, in_channels=1).eval()
    >>> net(torch.zeros(1, 1, 32, 32)).shape, net.feature_dim
    (torch.Size([1, 4]), 512)
    """
    check_choice("arch", arch, IMAGE_ARCHS, where="model.arch")
    if image_size is not None and image_size < 8:
        raise ValueError(f"image_size must be >= 8; got {image_size}")
    model: nn.Module
    if arch == "smallcnn":
        model = SmallCNN(num_classes=num_classes, in_channels=in_channels, dropout=dropout)
    else:
        model = TorchvisionClassifier(
            arch, num_classes=num_classes, in_channels=in_channels, dropout=dropout
        )
    if channels:
        if pretrained:
            raise ValueError("channels rebuild a pruned model for its saved weights; pretrained is not for it")
        apply_channel_widths(model, channels)
    if pretrained:
        from aifab.models.pretrained import load_image_weights

        load_image_weights(model, pretrained)
    return model


class SmallCNN(nn.Module):
    """A compact CNN for images up to about 64 px (8x8 digits, 28x28 MNIST), fast on CPU.

    Three blocks of two 3x3 conv + BatchNorm + ReLU, widths ``width, 2*width, 4*width``; the first
    two blocks halve the resolution with ``ceil_mode`` pooling, so an 8x8 input goes 8 -> 4 -> 2
    and never below 1x1; global average pooling makes any input size work. With ``width=32``
    (about 0.3M parameters) it reaches >= 99% on MNIST in a few epochs.

    >>> import torch
    >>> SmallCNN(num_classes=10, in_channels=1).eval()(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 10])
    """

    def __init__(
        self, num_classes: int, *, in_channels: int = 1, width: int = 32, dropout: float = 0.1
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.feature_dim = 4 * width
        self.features = nn.Sequential(
            _conv_block(in_channels, width, pool=True),  # (B, w, H/2, W/2)
            _conv_block(width, 2 * width, pool=True),  # (B, 2w, H/4, W/4)
            _conv_block(2 * width, 4 * width, pool=False),  # (B, 4w, H/4, W/4)
            nn.AdaptiveAvgPool2d(1),  # (B, 4w, 1, 1)
            nn.Flatten(),  # (B, 4w)
        )
        self.head = ClassificationHead(self.feature_dim, num_classes, dropout=dropout)

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        return self.features(images)  # (B, C_in, H, W) -> (B, D)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(images))  # (B, num_classes)


def _conv_block(cin: int, cout: int, *, pool: bool) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),  # bias is redundant before BatchNorm
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    ]
    if pool:
        layers.append(nn.MaxPool2d(2, ceil_mode=True))  # ceil: odd sizes (7x7) keep their border
    return nn.Sequential(*layers)


class TorchvisionClassifier(nn.Module):
    """A torchvision backbone (``net``, classifier removed) plus aifab's :class:`ClassificationHead`.

    ``net`` keeps torchvision's parameter names, so torchvision / timm state dicts load into it
    directly (:func:`aifab.models.pretrained.load_image_weights`). For MobileNetV3 the hidden
    ``Linear + Hardswish`` of torchvision's classifier stays in the backbone (it is pretrained);
    only its last dropout and linear layer are replaced by the head.

    >>> import torch
    >>> net = TorchvisionClassifier("mobilenet_v3_small", num_classes=2).eval()
    >>> net.forward_features(torch.zeros(1, 3, 32, 32)).shape
    torch.Size([1, 1024])
    """

    def __init__(
        self, arch: str, *, num_classes: int, in_channels: int = 3, dropout: float = 0.1
    ) -> None:
        super().__init__()
        import torchvision

        check_choice("arch", arch, TORCHVISION_ARCHS, where="model.arch")
        self.arch = arch
        self.num_classes = num_classes
        self.in_channels = in_channels
        net = torchvision.models.get_model(arch, weights=None)
        if arch.startswith("resnet"):
            self.feature_dim = net.fc.in_features
            net.fc = nn.Identity()  # (B, D) straight out of the global pool
            conv_parent, conv_name = net, "conv1"
        elif arch.startswith("efficientnet"):
            self.feature_dim = net.classifier[1].in_features
            net.classifier = nn.Identity()  # was Dropout + Linear, which the head now is
            conv_parent, conv_name = net.features[0], "0"
        else:  # mobilenet_v3_*: classifier = Linear, Hardswish, Dropout, Linear
            self.feature_dim = net.classifier[3].in_features
            net.classifier[2] = nn.Identity()
            net.classifier[3] = nn.Identity()
            conv_parent, conv_name = net.features[0], "0"
        if in_channels != 3:
            old = getattr(conv_parent, conv_name)
            new = nn.Conv2d(
                in_channels,
                old.out_channels,
                old.kernel_size,
                stride=old.stride,
                padding=old.padding,
                bias=old.bias is not None,
            )
            setattr(conv_parent, conv_name, new)
        self.net = net
        self.head = ClassificationHead(self.feature_dim, num_classes, dropout=dropout)

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)  # (B, C_in, H, W) -> (B, D)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(images))  # (B, num_classes)


# ---------------------------------------------------------------------- structured channel widths


@dataclass(frozen=True)
class ChannelGroup:
    """A conv whose output channels can be removed without touching any other width: the conv,
    the BatchNorm right after it, and the layers that read its output (convs, or the head's
    linear layer after global pooling). Residual streams are never in a group: a ResNet block's
    inner widths shrink, its output (added to the shortcut) keeps its width."""

    conv: str
    norm: str
    consumers: tuple[str, ...]


def channel_groups(model: nn.Module) -> list[ChannelGroup]:
    """The prunable groups of ``model``: every conv of :class:`SmallCNN`, the inner convs of
    each ResNet block; empty for other networks.

    >>> [g.conv for g in channel_groups(SmallCNN(num_classes=2))][:3]
    ['features.0.0', 'features.0.3', 'features.1.0']
    """
    if isinstance(model, SmallCNN):
        convs = [f"features.{block}.{i}" for block in range(3) for i in (0, 3)]
        return [
            ChannelGroup(
                conv,
                f"{conv[:-1]}{int(conv[-1]) + 1}",  # the BatchNorm follows its conv
                (convs[k + 1] if k + 1 < len(convs) else "head.linear",),
            )
            for k, conv in enumerate(convs)
        ]
    if isinstance(model, TorchvisionClassifier) and model.arch.startswith("resnet"):
        groups = []
        for stage in ("layer1", "layer2", "layer3", "layer4"):
            for j, block in enumerate(getattr(model.net, stage)):
                p = f"net.{stage}.{j}"
                groups.append(ChannelGroup(f"{p}.conv1", f"{p}.bn1", (f"{p}.conv2",)))
                if hasattr(block, "conv3"):  # Bottleneck: conv2 is inner too
                    groups.append(ChannelGroup(f"{p}.conv2", f"{p}.bn2", (f"{p}.conv3",)))
        return groups
    return []


def apply_channel_widths(model: nn.Module, widths: Mapping[str, int]) -> nn.Module:
    """Narrow the convs named in ``widths`` (a :func:`channel_groups` conv -> its output channels)
    in place, with their BatchNorm and the layers reading them; the new layers have fresh weights,
    shaped for the state dict of the pruned model.

    >>> net = apply_channel_widths(SmallCNN(num_classes=2), {"features.2.3": 40})
    >>> net.head.linear.in_features, net(torch.zeros(1, 1, 8, 8)).shape
    (40, torch.Size([1, 2]))
    """
    groups = {g.conv: g for g in channel_groups(model)}
    unknown = sorted(set(widths) - set(groups))
    if unknown:
        raise ConfigError(
            f"model.json channels: {unknown[:3]} are not prunable convs of {type(model).__name__}; "
            f"known: {sorted(groups)[:6]}{' ...' if len(groups) > 6 else ''}"
        )
    for name, width in widths.items():
        group = groups[name]
        if int(width) < 1:
            raise ConfigError(f"model.json channels: {name} must keep at least 1 channel; got {width}")
        _set(model, group.conv, _resized_conv(model.get_submodule(group.conv), out_channels=int(width)))
        norm = model.get_submodule(group.norm)
        _set(model, group.norm, nn.BatchNorm2d(int(width), eps=norm.eps, momentum=norm.momentum))
        for consumer in group.consumers:
            layer = model.get_submodule(consumer)
            if isinstance(layer, nn.Linear):
                _set(model, consumer, nn.Linear(int(width), layer.out_features, bias=layer.bias is not None))
                model.head.in_features = model.feature_dim = int(width)
            else:
                _set(model, consumer, _resized_conv(layer, in_channels=int(width)))
    return model


def _resized_conv(
    conv: nn.Conv2d, *, in_channels: int | None = None, out_channels: int | None = None
) -> nn.Conv2d:
    if conv.groups != 1:
        raise ConfigError(f"a grouped conv ({conv}) cannot be narrowed channel by channel")
    return nn.Conv2d(
        in_channels or conv.in_channels,
        out_channels or conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        bias=conv.bias is not None,
    )


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)
