"""Int8 quantization of an exported ``model.onnx`` with ONNX Runtime's quantization tools.

Two methods, picked per model by :func:`default_method`:

- ``dynamic``: weights stored as int8, activations quantized on the fly per batch
  (``quantize_dynamic``). Needs no data. Suits Linear/RNN-heavy text models (LSTM, GRU,
  Transformers), whose cost is in matrix products and whose activation ranges vary from text to
  text: statically calibrated ranges lost a quarter of a Transformer's arg-max agreement.
- ``static``: weights and activations int8, activation ranges measured beforehand on
  calibration inputs (``quantize_static``, QDQ format, per-channel weights). Suits CNNs, image
  or text (TextCNN), whose convolutions then run as int8 kernels end to end; dynamically
  quantized convolutions (``ConvInteger``) ran 1.5-10x *slower* than fp32.

The graph keeps its inputs and its ``logits`` output (float32), so the int8 ``model.onnx`` is a
drop-in replacement that :class:`~aifab.optimize.export.OrtPredictor` serves the same way.

>>> import torch
>>> from aifab.models.text import RNNClassifier
>>> from aifab.optimize.export import OrtPredictor, export_onnx
>>> net = RNNClassifier(vocab_size=500, num_classes=2, cell="lstm", embed_dim=32, hidden_dim=32).eval()
>>> ids = torch.tensor([[2, 5, 3], [2, 3, 0]]); mask = (ids != 0).long()
>>> fp32 = export_onnx(net, {"input_ids": ids, "attention_mask": mask}, arch="bilstm")
>>> int8 = quantize_int8(fp32, method="dynamic")
>>> len(int8) < len(fp32) / 2, OrtPredictor(int8)(input_ids=ids, attention_mask=mask).shape
(True, torch.Size([2, 2]))
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from aifab.core.errors import ConfigError, DependencyMissing, InputError, check_choice

__all__ = ["METHODS", "default_method", "quantize_int8"]

METHODS = ("dynamic", "static")
# Graphs quantized dynamically: the operators whose weights dominate (Gather is the embedding
# table). Conv is left out: ConvInteger is slower than the fp32 convolution it replaces.
DYNAMIC_OPS = ("MatMul", "Gemm", "Attention", "LSTM", "GRU", "Gather")


def default_method(kind: str, arch: str) -> str:
    """``static`` for CNNs (every image model, and ``textcnn``), ``dynamic`` for the other text
    models (see the module docstring for the measurements behind it).

    >>> default_method("image", "smallcnn"), default_method("text", "textcnn"), default_method("text", "bilstm")
    ('static', 'static', 'dynamic')
    """
    return "static" if kind == "image" or arch == "textcnn" else "dynamic"


def quantize_int8(
    onnx_bytes: bytes,
    *,
    method: str,
    calibration: Iterable[Mapping[str, Any]] | None = None,
) -> bytes:
    """The int8 version of an fp32 ``model.onnx``.

    ``calibration`` (``static`` only, required) yields encoded input batches by input name (numpy
    arrays or tensors), e.g. ~200 training inputs in batches of 32: their activation ranges fix
    the int8 scales. A graph that ONNX Runtime cannot quantize raises a ConfigError.
    """
    check_choice("method", method, METHODS, where="quantize")
    quantization = _require()
    with tempfile.TemporaryDirectory() as tmp:
        src, prepared, out = Path(tmp) / "fp32.onnx", Path(tmp) / "prepared.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(onnx_bytes)
        try:
            # Shape inference and graph fusions first: the quantizer needs the shapes, and a
            # fused Conv+BatchNorm quantizes as one operator.
            quantization.shape_inference.quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)
            if method == "dynamic":
                quantization.quantize_dynamic(
                    str(prepared),
                    str(out),
                    weight_type=quantization.QuantType.QInt8,
                    op_types_to_quantize=list(DYNAMIC_OPS),
                    per_channel=False,
                )
            else:
                batches = _batches(calibration)
                quantization.quantize_static(
                    str(prepared),
                    str(out),
                    _Reader(quantization.CalibrationDataReader, batches).reader,
                    quant_format=quantization.QuantFormat.QDQ,
                    activation_type=quantization.QuantType.QUInt8,
                    weight_type=quantization.QuantType.QInt8,
                    per_channel=True,
                    calibrate_method=quantization.CalibrationMethod.MinMax,
                )
        except (ConfigError, InputError):
            raise
        except Exception as exc:  # the quantizer raises plain exceptions naming an operator
            raise ConfigError(f"quantize {method}: ONNX Runtime could not quantize this graph ({str(exc)[:300]})") from None
        return out.read_bytes()


def _batches(calibration: Iterable[Mapping[str, Any]] | None) -> list[dict[str, Any]]:
    import numpy as np

    if calibration is None:
        raise InputError("quantize static: needs calibration inputs (a few hundred training examples)")
    batches = []
    for batch in calibration:
        batches.append(
            {k: v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v) for k, v in batch.items()}
        )
    if not batches:
        raise InputError("quantize static: the calibration data is empty; it needs training examples")
    return batches


class _Reader:
    """Wraps calibration batches in ONNX Runtime's ``CalibrationDataReader`` protocol (a class
    built here: the base class lives in an optional dependency)."""

    def __init__(self, base: type, batches: list[dict[str, Any]]) -> None:
        feed: Iterator[dict[str, Any]] = iter(batches)

        class Reader(base):  # type: ignore[misc, valid-type]
            def get_next(self) -> dict[str, Any] | None:
                return next(feed, None)

        self.reader = Reader()


def _require() -> Any:
    try:
        from onnxruntime import quantization
        from onnxruntime.quantization import shape_inference  # noqa: F401  (quant_pre_process)
    except ImportError:
        raise DependencyMissing.for_extra("onnxruntime", "optimize") from None
    return quantization
