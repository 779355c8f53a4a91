"""The classification head every aifab network ends with, and the feature hook built on it.

Every model in :mod:`aifab.models` follows one shape contract::

    model.forward_features(*inputs) -> (B, D)      # the pooled, penultimate vector
    model.head(features)            -> (B, C)      # dropout + linear
    model(*inputs) == model.head(model.forward_features(*inputs))

and carries ``feature_dim`` (D) and ``num_classes`` (C). Multi-label tasks use the same logits
with a sigmoid / BCE loss, so there is one head for both.

>>> import torch
>>> head = ClassificationHead(4, 3, dropout=0.0)
>>> head(torch.zeros(2, 4)).shape
torch.Size([2, 3])
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class ClassificationHead(nn.Module):
    """Dropout then one linear layer: features ``(B, D)`` -> logits ``(B, C)``.

    >>> import torch
    >>> ClassificationHead(8, 5, dropout=0.1).eval()(torch.ones(3, 8)).shape
    torch.Size([3, 5])
    """

    def __init__(self, in_features: int, num_classes: int, *, dropout: float = 0.0) -> None:
        super().__init__()
        if in_features < 1 or num_classes < 1:
            raise ValueError(
                f"in_features and num_classes must be >= 1; got {in_features}, {num_classes}"
            )
        self.in_features = in_features
        self.num_classes = num_classes
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(in_features, num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(self.dropout(features))  # (B, D) -> (B, C)


def penultimate(model: nn.Module, *inputs: Any) -> torch.Tensor:
    """The pooled feature vector ``(B, D)`` a model feeds its head (for drift embeddings, fusion).

    Runs without gradients and leaves the model's train/eval mode as it was; put the model in
    eval mode first when the features should be deterministic.

    >>> import torch
    >>> from aifab.models.vision import SmallCNN
    >>> net = SmallCNN(num_classes=3, in_channels=1).eval()
    >>> penultimate(net, torch.zeros(2, 1, 8, 8)).shape
    torch.Size([2, 128])
    """
    forward_features = getattr(model, "forward_features", None)
    if forward_features is None:
        raise TypeError(
            f"{type(model).__name__} has no forward_features(); it is not an aifab model"
        )
    with torch.no_grad():
        return forward_features(*inputs)
