"""Pruning: remove weights (unstructured) or whole conv channels (structured).

- :func:`prune_unstructured` zeroes the ``amount`` smallest-magnitude weights of every conv,
  linear and recurrent weight matrix (``torch.nn.utils.prune``, L1). The masks stay attached
  while the model is fine-tuned, so pruned weights stay zero; :func:`make_permanent` then folds
  them into plain weights. The network keeps its shape: dense kernels run no faster, but the
  weights compress, and sparse runtimes can use them.
- :func:`prune_channels` removes the ``amount`` of output channels with the smallest L1 norm
  from every prunable conv of a CNN (:func:`aifab.models.vision.channel_groups`) and rebuilds
  narrower layers: fewer parameters and FLOPs, a real speedup. The kept widths go into
  ``model.json`` (``channels``) so the registry rebuilds the narrower network.

Both are followed by a short fine-tune (in :mod:`aifab.pipeline.optimizing`, which reuses
:mod:`aifab.train`).

>>> import torch
>>> from aifab.models.vision import SmallCNN
>>> net = SmallCNN(num_classes=2, in_channels=1).eval()
>>> small, widths = prune_channels(net, 0.5)
>>> widths["features.0.0"], small(torch.zeros(1, 1, 8, 8)).shape
(16, torch.Size([1, 2]))
"""

from __future__ import annotations

import copy
import math
from typing import TYPE_CHECKING

from aifab.core.errors import ConfigError

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["METHODS", "default_method", "make_permanent", "prune_channels", "prune_unstructured", "sparsity"]

METHODS = ("auto", "unstructured", "structured")


def default_method(model: nn.Module) -> str:
    """``structured`` when the network has prunable conv channels (SmallCNN, ResNets), else
    ``unstructured``.

    >>> from aifab.models.vision import SmallCNN
    >>> from aifab.models.text import TextCNN
    >>> default_method(SmallCNN(num_classes=2)), default_method(TextCNN(vocab_size=20, num_classes=2))
    ('structured', 'unstructured')
    """
    from aifab.models.vision import channel_groups

    return "structured" if channel_groups(model) else "unstructured"


def prune_unstructured(model: nn.Module, amount: float) -> nn.Module:
    """Zero the ``amount`` (0-1) smallest-magnitude weights of each weight matrix, in place,
    with masks attached (see the module docstring). Embeddings, norms and biases are kept.

    >>> import torch
    >>> net = prune_unstructured(torch.nn.Linear(10, 10), 0.5)
    >>> round(sparsity(make_permanent(net)), 2)
    0.5
    """
    from torch.nn.utils import prune

    _check_amount(amount)
    for module, name in _weights(model):
        prune.l1_unstructured(module, name=name, amount=amount)
    return model


def make_permanent(model: nn.Module) -> nn.Module:
    """Fold the masks of :func:`prune_unstructured` into the weights (zeros stay zeros) and
    remove them, so the state dict has its usual keys again."""
    from torch.nn.utils import prune

    for module in model.modules():
        for name in [k.removesuffix("_mask") for k, _ in module.named_buffers(recurse=False) if k.endswith("_mask")]:
            prune.remove(module, name)
    return model


def sparsity(model: nn.Module) -> float:
    """The share of zeros among the weights :func:`prune_unstructured` prunes."""
    total = zeros = 0
    for module, name in _weights(model):
        weight = getattr(module, name)
        total += weight.numel()
        zeros += int((weight == 0).sum())
    return zeros / total if total else 0.0


def prune_channels(model: nn.Module, amount: float) -> tuple[nn.Module, dict[str, int]]:
    """A narrower copy of a CNN: each prunable conv keeps the ``1 - amount`` share of its output
    channels with the largest L1 weight norm (at least one), with their BatchNorm and the
    layers reading them sliced to match. Returns the copy and its widths (conv name -> channels),
    what :func:`aifab.models.vision.apply_channel_widths` rebuilds it from. ``model`` is unchanged.

    A network with no prunable channels (text models, EfficientNet, MobileNet) is a ConfigError.
    """
    from aifab.models.vision import apply_channel_widths, channel_groups

    _check_amount(amount)
    groups = channel_groups(model)
    if not groups:
        raise ConfigError(
            f"prune structured: {type(model).__name__} has no conv channels aifab can remove "
            "(supported: smallcnn, resnet18/34/50); use --prune-method unstructured"
        )
    state = model.state_dict()
    keep_out: dict[str, torch.Tensor] = {}  # conv or norm module -> kept output channels
    keep_in: dict[str, torch.Tensor] = {}  # consumer module -> kept input channels
    for group in groups:
        weight = state[f"{group.conv}.weight"]  # (C_out, C_in, kh, kw)
        keep = max(1, math.ceil(weight.shape[0] * (1.0 - amount)))
        ranked = weight.abs().sum(dim=(1, 2, 3)).argsort(descending=True, stable=True)
        kept = ranked[:keep].sort().values  # channel order preserved
        keep_out[group.conv] = keep_out[group.norm] = kept
        for consumer in group.consumers:
            keep_in[consumer] = kept
    widths = {g.conv: int(keep_out[g.conv].numel()) for g in groups}
    smaller = apply_channel_widths(copy.deepcopy(model), widths)
    sliced = {}
    for key, value in state.items():
        module, _, _ = key.rpartition(".")
        if module in keep_out and value.ndim >= 1:  # conv weight/bias, norm weight/bias/stats
            value = value.index_select(0, keep_out[module])
        if module in keep_in and key.endswith(".weight"):
            value = value.index_select(1, keep_in[module])
        sliced[key] = value.clone()
    smaller.load_state_dict(sliced, strict=True)
    return smaller.train(model.training), widths


def _weights(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """(module, parameter name) of every conv, linear and recurrent weight matrix."""
    from torch import nn

    found: list[tuple[nn.Module, str]] = []
    for module in model.modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            found.append((module, "weight"))
        elif isinstance(module, nn.RNNBase):
            found += [(module, name) for name, _ in module.named_parameters(recurse=False) if name.startswith("weight_")]
    return found


def _check_amount(amount: float) -> None:
    if not 0.0 < float(amount) < 1.0:
        raise ConfigError(f"The 'amount' parameter of prune must be a fraction in (0, 1); got {amount!r}")
