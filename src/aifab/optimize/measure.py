"""What an optimization changes, measured: latency, throughput, parameters, FLOPs, size.

Latency is the wall time of the network alone on already-encoded inputs (decoding an image and
tokenizing a text cost the same before and after an optimization, so they are left out): the
median (p50) over ``runs`` calls after ``warmup`` calls, at batch 1 (one request) and batch 32
(a server's micro-batch). Throughput is inputs per second at batch 32.

>>> import torch
>>> net = torch.nn.Linear(4, 2)
>>> count_parameters(net), count_flops(net, {"input": torch.zeros(1, 4)})
(10, 16)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["Timing", "count_flops", "count_nonzero", "count_parameters", "time_model"]

BATCH_SIZES = (1, 32)


@dataclass(frozen=True)
class Timing:
    """p50 latencies in milliseconds at batch 1 and 32, and throughput (inputs/s) at batch 32."""

    p50_ms_b1: float
    p50_ms_b32: float
    throughput: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def time_model(
    run: Callable[..., Any],
    inputs: Mapping[str, torch.Tensor],
    *,
    warmup: int = 5,
    runs: int = 30,
) -> Timing:
    """Time ``run(**batch)`` on the first row of ``inputs`` (batch 1) and on 32 rows (``inputs``
    repeated when it holds fewer), under ``torch.no_grad``.

    >>> import torch
    >>> t = time_model(torch.nn.Linear(4, 2), {"input": torch.zeros(3, 4)}, warmup=1, runs=3)
    >>> t.p50_ms_b1 > 0 and t.throughput > 0
    True
    """
    import numpy as np
    import torch

    if runs < 1 or warmup < 0:
        raise ValueError(f"runs must be >= 1 and warmup >= 0; got {runs}, {warmup}")
    p50: dict[int, float] = {}
    with torch.no_grad():
        for size in BATCH_SIZES:
            batch = {k: _rows(v, size) for k, v in inputs.items()}
            for _ in range(warmup):
                run(**batch)
            times = []
            for _ in range(runs):
                start = time.perf_counter()
                run(**batch)
                times.append((time.perf_counter() - start) * 1000.0)
            p50[size] = float(np.median(times))
    return Timing(p50_ms_b1=p50[1], p50_ms_b32=p50[32], throughput=32 * 1000.0 / p50[32])


def count_parameters(model: nn.Module) -> int:
    """Every parameter element (zeros included)."""
    return int(sum(p.numel() for p in model.parameters()))


def count_nonzero(model: nn.Module) -> int:
    """Parameter elements that are not zero: what unstructured pruning lowers.

    >>> import torch
    >>> net = torch.nn.Linear(2, 1, bias=False); _ = torch.nn.init.zeros_(net.weight)
    >>> count_nonzero(net)
    0
    """
    return int(sum(int((p != 0).sum()) for p in model.parameters()))


def count_flops(model: nn.Module, inputs: Mapping[str, torch.Tensor]) -> int:
    """Floating-point operations of one forward pass on ``inputs``: 2 per multiply-accumulate of
    every convolution and linear layer (the layers that dominate and that pruning narrows);
    element-wise work is left out. Counted from the real output shapes, so a narrower network
    counts fewer.
    """
    import torch
    from torch import nn

    total = [0]

    def conv(module: nn.Module, args: Any, out: torch.Tensor) -> None:
        per_output = (module.in_channels // module.groups) * int(torch.tensor(module.kernel_size).prod())
        total[0] += 2 * out.numel() * per_output

    def linear(module: nn.Module, args: Any, out: torch.Tensor) -> None:
        total[0] += 2 * out.numel() * module.in_features

    hooks = []
    for module in model.modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            hooks.append(module.register_forward_hook(conv))
        elif isinstance(module, nn.Linear):
            hooks.append(module.register_forward_hook(linear))
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        for hook in hooks:
            hook.remove()
    return total[0]


def _rows(value: torch.Tensor, size: int) -> torch.Tensor:
    import torch

    if value.shape[0] >= size:
        return value[:size]
    repeats = -(-size // max(value.shape[0], 1))
    return torch.cat([value] * repeats)[:size]
