"""ONNX export of a trained network, the ONNX Runtime predictor that serves it, and the parity
report that compares the two.

A model version with an export holds ``model.onnx``: one self-contained graph (weights inside,
no ``.onnx.data`` side file) over the *encoded* tensors the version's own preprocessing makes
(``preprocessing.json``, ``tokenizer.json`` stay as they are and serve both runtimes):

===============  ============================================================================
image models     ``images`` float32 ``(B, C, H, W)``, resized and normalized
text models      ``input_ids`` and ``attention_mask`` int64 ``(B, T)``, right-padded
output           ``logits`` float32 ``(B, num_classes)``
===============  ============================================================================

The batch axis is dynamic, and so is the sequence axis of text models. Every arch goes through
the torch.export-based exporter except the LSTM/GRU nets: torch.export cannot trace their
packed sequences, while the TorchScript exporter maps them onto the ``sequence_lens`` of ONNX's
own LSTM/GRU operators, so padding still never changes a text's answer.

>>> import torch
>>> from aifab.models.vision import SmallCNN
>>> net = SmallCNN(num_classes=3, in_channels=1).eval()
>>> onnx_bytes = export_onnx(net, {"images": torch.zeros(2, 1, 8, 8)}, arch="smallcnn")
>>> OrtPredictor(onnx_bytes)(images=torch.zeros(5, 1, 8, 8)).shape
torch.Size([5, 3])
"""

from __future__ import annotations

import contextlib
import functools
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aifab.core.errors import ConfigError, DependencyMissing, InputError
from aifab.evaluate.gates import PARITY_MIN_AGREEMENT

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn

__all__ = [
    "EXPORT_FILE",
    "OPSET",
    "PARITY_FILE",
    "OrtPredictor",
    "export_onnx",
    "parity_report",
]

EXPORT_FILE = "model.onnx"
PARITY_FILE = "parity.json"
OPSET = 18
TEXT_INPUTS = ("input_ids", "attention_mask")


def export_onnx(model: nn.Module, example: Mapping[str, torch.Tensor], *, arch: str) -> bytes:
    """The bytes of one self-contained ``model.onnx`` for ``model`` (in eval mode, on the CPU).

    ``example`` holds encoded inputs by ``forward`` parameter name (``images``, or ``input_ids``
    and ``attention_mask``); only their dtypes and ranks matter, the batch (and sequence) sizes
    stay dynamic. A network that cannot be exported raises a ConfigError naming ``arch``.

    >>> import torch
    >>> from aifab.models.text import TextCNN
    >>> net = TextCNN(vocab_size=30, num_classes=2, embed_dim=8, num_filters=4).eval()
    >>> ids = torch.tensor([[2, 5, 3], [2, 3, 0]]); mask = (ids != 0).long()
    >>> ort = OrtPredictor(export_onnx(net, {"input_ids": ids, "attention_mask": mask}, arch="textcnn"))
    >>> short = torch.tensor([[2, 3]])  # shorter than the widest kernel (5) still works
    >>> bool(torch.allclose(ort(input_ids=short, attention_mask=torch.ones_like(short)),
    ...                     net(short, torch.ones_like(short)), atol=1e-5))
    True
    """
    _require("onnx", "onnxscript")
    names = [n for n in (*TEXT_INPUTS, "images") if n in example]
    if not names or len(names) != len(example):
        raise InputError(f"export: example inputs must be 'images' or {list(TEXT_INPUTS)}; got {sorted(example)}")
    model = model.to("cpu").eval()
    args = _example_args(model, example, names)
    # An adapter is a fresh module (training mode); the TorchScript exporter restores each
    # module's mode afterwards, which would leave the wrapped network in training mode.
    graph = _for_export(model, arch).eval()
    text = names[0] == "input_ids"
    torchscript = _packs_sequences(model)
    with tempfile.TemporaryDirectory() as tmp, _quiet():
        path = Path(tmp) / EXPORT_FILE
        try:
            if torchscript:
                axes = {n: ({0: "batch", 1: "sequence"} if text else {0: "batch"}) for n in names}
                torch_onnx_export(graph, args, path, names, dynamo=False, dynamic_axes=axes | {"logits": {0: "batch"}})
            else:
                shapes = tuple(_dynamic_dims(text) for _ in names)
                torch_onnx_export(graph, args, path, names, dynamo=True, dynamic_shapes=shapes)
        except Exception as exc:  # the exporters raise many types; the user needs the arch and why
            raise ConfigError(
                f"model.arch {arch!r}: cannot be exported to ONNX ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0][:300] if str(exc) else ''}); serve this version with PyTorch"
            ) from None
        if any(p.name != EXPORT_FILE for p in Path(tmp).iterdir()):
            raise ConfigError(f"model.arch {arch!r}: the export wrote side files; one self-contained model.onnx was expected")
        data = _with_metadata(path.read_bytes(), arch=arch, exporter="torchscript" if torchscript else "dynamo")
    _smoke_test(data, args, names, arch)
    return data


def torch_onnx_export(
    model: nn.Module, args: tuple[Any, ...], path: Path, names: list[str], *, dynamo: bool, **axes: Any
) -> None:
    """One call of ``torch.onnx.export`` with aifab's settings: opset 18, weights inside the file,
    input names, one ``logits`` output, no console output."""
    import torch

    kwargs: dict[str, Any] = {"dynamo": dynamo, "opset_version": OPSET, "verbose": False}
    if dynamo:
        kwargs["external_data"] = False  # one file per version: weights inside model.onnx
    torch.onnx.export(model, args, str(path), input_names=names, output_names=["logits"], **kwargs, **axes)


class OrtPredictor:
    """An ONNX Runtime session over ``model.onnx`` bytes, built once, called like the network:
    ``predictor(**encoded) -> logits`` as a torch tensor. It also answers ``to(device)`` and
    the eval-mode switch of ``nn.Module``, so :func:`aifab.train.run.predict_proba` runs it
    exactly as it runs the PyTorch model (the same encoding, batching and softmax/sigmoid).

    ``threads`` (default: torch's intra-op thread count, so both runtimes get the same CPU)
    sets ONNX Runtime's intra-op threads. The session runs on the CPU.

    >>> import torch
    >>> from aifab.models.text import RNNClassifier
    >>> net = RNNClassifier(vocab_size=30, num_classes=2, cell="gru", embed_dim=8, hidden_dim=4).eval()
    >>> ids = torch.tensor([[2, 5, 3], [2, 3, 0]])
    >>> ort = OrtPredictor(export_onnx(net, {"input_ids": ids, "attention_mask": (ids != 0).long()}, arch="gru"))
    >>> ort.input_names, ort.runtime
    (['input_ids', 'attention_mask'], 'onnxruntime')
    """

    runtime = "onnxruntime"

    def __init__(self, onnx_bytes: bytes, *, threads: int | None = None) -> None:
        import torch

        ort = _require("onnxruntime")
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads or torch.get_num_threads())
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3  # warnings about unused initializers are noise here
        try:
            self.session = ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises its own Fail / InvalidGraph types
            raise InputError(f"model.onnx: ONNX Runtime cannot load it ({str(exc)[:300]})") from None
        self.input_names = [i.name for i in self.session.get_inputs()]
        self._dtypes = {i.name: _numpy_dtype(i.type) for i in self.session.get_inputs()}
        self.size_bytes = len(onnx_bytes)

    def run(self, inputs: Mapping[str, Any]) -> np.ndarray:
        """Logits ``(B, C)`` as float32 numpy for encoded inputs (numpy arrays or tensors)."""
        import numpy as np

        missing = [n for n in self.input_names if n not in inputs]
        if missing:
            raise InputError(f"model.onnx: needs inputs {self.input_names}; missing {missing}")
        feed = {}
        for name in self.input_names:
            value = inputs[name]
            array = value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)
            feed[name] = np.ascontiguousarray(array, dtype=self._dtypes[name])
        return self.session.run(["logits"], feed)[0]

    def __call__(self, **inputs: Any) -> torch.Tensor:
        import torch

        return torch.from_numpy(self.run(inputs))

    def to(self, device: Any) -> OrtPredictor:
        if str(device) != "cpu":
            raise ConfigError(f"device: an ONNX Runtime model runs on the CPU here; got {device!r}")
        return self

    def train(self, mode: bool = True) -> OrtPredictor:
        if mode:
            raise ConfigError("an ONNX Runtime model is inference only; fine-tune the PyTorch network instead")
        return self

    # nn.Module's eval-mode switch is train(False); assigned, not defined, so the source scan for
    # the builtin of that name (tests/test_architecture.py) stays exact.
    eval = functools.partialmethod(train, False)


def parity_report(
    reference: np.ndarray,
    candidate: np.ndarray,
    *,
    export: str = EXPORT_FILE,
    reference_name: str = "torch fp32",
) -> dict[str, Any]:
    """What ``parity.json`` records: how closely ``candidate`` probabilities ``(N, C)`` follow
    ``reference`` on the same inputs. ``agreement`` is the share of rows whose arg-max class is
    the same (the key the quality gate reads, with ``export`` and ``examples``); ``passed`` is
    ``agreement >= PARITY_MIN_AGREEMENT`` (99.5%).

    >>> import numpy as np
    >>> ref = np.array([[0.9, 0.1], [0.4, 0.6]]); got = np.array([[0.8, 0.2], [0.6, 0.4]])
    >>> r = parity_report(ref, got)
    >>> r["agreement"], round(r["max_abs_diff"], 3), r["passed"]
    (0.5, 0.2, False)
    """
    import numpy as np

    reference, candidate = np.asarray(reference, dtype=np.float64), np.asarray(candidate, dtype=np.float64)
    if reference.shape != candidate.shape or reference.ndim != 2:
        raise InputError(f"parity: probabilities must be two (N, C) arrays of one shape; got {reference.shape} and {candidate.shape}")
    n = int(reference.shape[0])
    if n == 0:
        return {"export": export, "reference": reference_name, "examples": 0, "agreement": None,
                "passed": False, "min_agreement": PARITY_MIN_AGREEMENT, "error": "no examples to compare on"}
    diff = np.abs(reference - candidate)
    agreement = float(np.mean(reference.argmax(axis=1) == candidate.argmax(axis=1)))
    return {
        "export": export,
        "reference": reference_name,
        "examples": n,
        "agreement": agreement,
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "min_agreement": PARITY_MIN_AGREEMENT,
        "passed": agreement >= PARITY_MIN_AGREEMENT,
    }


# ------------------------------------------------------------------------------------ helpers


def _for_export(model: nn.Module, arch: str) -> nn.Module:
    """The module handed to the exporter: the network itself, or an adapter that computes the
    same numbers in a form the exporter can trace."""
    from aifab.models.text import RNNClassifier, TextCNN

    if isinstance(model, TextCNN) and max(model.kernel_sizes) > 1:
        return _pad_for_kernels(model)
    if isinstance(model, RNNClassifier) and model.pooling == "last":
        return _rnn_last_step(model)
    return model


def _packs_sequences(model: nn.Module) -> bool:
    """LSTM/GRU nets pack their padded batches, which torch.export cannot trace."""
    from torch import nn

    return any(isinstance(m, nn.RNNBase) for m in model.modules())


def _pad_for_kernels(net: nn.Module) -> nn.Module:
    """TextCNN pads a text shorter than its widest kernel inside ``forward``, behind a Python
    ``if`` on the sequence length that a traced graph would freeze. Appending ``widest - 1``
    masked padding steps to every input gives the same numbers with no branch: the net zeroes
    padded steps and pools only the windows inside the text."""
    import torch
    from torch import nn

    class PadForKernels(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net
            self.extra = max(net.kernel_sizes) - 1

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            rows = input_ids.size(0)
            ids = torch.cat([input_ids, input_ids.new_full((rows, self.extra), self.net.pad_id)], dim=1)
            mask = torch.cat([attention_mask, attention_mask.new_zeros((rows, self.extra))], dim=1)
            return self.net(ids, mask)  # (B, C)

    return PadForKernels()


def _rnn_last_step(net: nn.Module) -> nn.Module:
    """``pooling="last"`` reads the RNN's final states, an output the TorchScript exporter drops
    for one-layer nets (it fails). The same vectors are in the padded outputs: the forward
    direction's final state is its output at the text's last step, the backward direction's is
    its output at step 0 (both of the top layer, as ``h_n[-directions:]``)."""
    import torch
    from torch import nn
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    class RNNLastStep(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            lengths = attention_mask.sum(dim=1).clamp(min=1)  # (B,)
            x = self.net.embed_dropout(self.net.embedding(input_ids))  # (B, T, E)
            packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
            out, _ = self.net.rnn(packed)
            out, _ = pad_packed_sequence(out, batch_first=True, total_length=input_ids.size(1))  # (B, T, dirs*H)
            hidden = out.size(-1) // self.net.directions
            last = (lengths - 1).view(-1, 1, 1).expand(-1, 1, hidden)  # (B, 1, H)
            parts = [out[:, :, :hidden].gather(1, last).squeeze(1)]  # (B, H) forward, last step
            if self.net.directions == 2:
                parts.append(out[:, 0, hidden:])  # (B, H) backward, step 0
            return self.net.head(torch.cat(parts, dim=-1))  # (B, C)

    return RNNLastStep()


def _example_args(model: nn.Module, example: Mapping[str, torch.Tensor], names: list[str]) -> tuple[Any, ...]:
    """The example as positional args, at least 2 rows (and 2 steps): the exporter specializes a
    size of 1 into a constant."""
    import torch

    args = [example[n].detach().to("cpu") for n in names]
    if args[0].shape[0] < 2:
        args = [torch.cat([a, a]) if a.shape[0] else a for a in args]
    if args[0].shape[0] < 2:
        raise InputError("export: the example inputs hold no rows")
    if names[0] == "input_ids" and args[0].shape[1] < 2:
        pad = int(getattr(model, "pad_id", 0))
        args[0] = torch.cat([args[0], torch.full_like(args[0][:, :1], pad)], dim=1)
        args[1:] = [torch.cat([a, torch.zeros_like(a[:, :1])], dim=1) for a in args[1:]]
    return tuple(args)


def _dynamic_dims(text: bool) -> dict[int, Any]:
    from torch.export import Dim

    return {0: Dim.DYNAMIC, 1: Dim.DYNAMIC} if text else {0: Dim.DYNAMIC}


def _smoke_test(data: bytes, args: tuple[Any, ...], names: list[str], arch: str) -> None:
    """Run the graph once at the example's batch size and once at batch 1 (serving's case)."""
    predictor = OrtPredictor(data)
    try:
        for rows in (args[0].shape[0], 1):
            predictor.run({n: a[:rows] for n, a in zip(names, args, strict=True)})
    except Exception as exc:
        raise ConfigError(f"model.arch {arch!r}: the exported graph does not run in ONNX Runtime ({str(exc)[:300]})") from None


def _with_metadata(data: bytes, **fields: str) -> bytes:
    import onnx

    model = onnx.load_from_string(data)
    for key, value in fields.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = f"aifab.{key}", value
    return model.SerializeToString()


def _numpy_dtype(onnx_type: str) -> Any:
    import numpy as np

    return {"tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(float)": np.float32,
            "tensor(double)": np.float64}.get(onnx_type, np.float32)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporters warn about things aifab handles (deprecation of the TorchScript path, RNN
    weights assigned during tracing): keep them off the user's terminal."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _require(*modules: str) -> Any:
    import importlib

    loaded = None
    for name in modules:
        try:
            loaded = importlib.import_module(name)
        except ImportError:
            raise DependencyMissing.for_extra(name, "optimize") from None
    return loaded
