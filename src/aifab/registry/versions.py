"""Register trained models as self-contained versions, and load them back with no network and no pickle.

A model version is a set of files, each a content-addressed blob:

==========================  =======================================================
``weights.safetensors``     the network's weights
``model.json``              what rebuilds the network (arch, sizes, the model config)
``preprocessing.json``      labels, multi-label flag, image size/normalisation or max length
``tokenizer.json``          text models: the Hugging Face tokenizer
``encoder/config.json``     pretrained text encoders: the encoder's config (rebuild offline)
``spec.json``               the effective spec (every default written out)
``metrics.json``            evaluation metrics (test split), ``history.json`` per-epoch metrics
``lineage.json``            dataset version, run, code version, seed, parent version
``model_card.md``           data version, metrics, intended use, limitations
``report.html``             the offline evaluation report
``model.onnx``              optimized versions: the ONNX graph predictions run on (ONNX Runtime)
``parity.json``             the export's agreement with the PyTorch model (the gate reads it)
``optimization.json``       optimized versions: the steps and the before/after measurements
==========================  =======================================================
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from aifab.core.errors import InputError, IntegrityError
from aifab.core.types import ModelVersion


def bundle_files(
    *,
    trained: Any,
    metrics: dict[str, Any],
    lineage: dict[str, Any],
    card: str,
    report_html: str | None = None,
) -> dict[str, bytes]:
    """The files of a model version, as bytes (the caller stores them)."""
    import torch
    from safetensors.torch import save

    state = {k: v.detach().to("cpu").contiguous() for k, v in trained.model.state_dict().items()}
    files: dict[str, bytes] = {
        "weights.safetensors": save(state),
        "model.json": _json(trained.model_params),
        "preprocessing.json": _json(trained.preprocessing),
        "spec.json": _json(trained.effective_spec),
        "metrics.json": _json(metrics),
        "history.json": _json(trained.history),
        "lineage.json": _json(lineage),
        "model_card.md": card.encode("utf-8"),
    }
    if trained.tokenizer_json is not None:
        files["tokenizer.json"] = trained.tokenizer_json.encode("utf-8")
    encoder = getattr(getattr(trained.model, "encoder", None), "config", None)
    if encoder is not None and hasattr(encoder, "to_json_string"):
        files["encoder/config.json"] = encoder.to_json_string().encode("utf-8")
    if report_html is not None:
        files["report.html"] = report_html.encode("utf-8")
    del torch
    return files


@dataclass
class LoadedModel:
    """A model version in memory, ready to predict.

    >>> # model = aifab.load_model("sms@production"); model.predict(["WIN a prize now!"])
    """

    version: ModelVersion
    model: Any
    preprocessing: dict[str, Any]
    tokenizer_json: str | None
    onnx: Any = None
    """An :class:`aifab.optimize.export.OrtPredictor` when the version holds ``model.onnx``:
    predictions then run in ONNX Runtime (``model`` stays the PyTorch network, for embeddings)."""

    def __post_init__(self) -> None:
        from aifab.train.run import make_encoder

        # Built once: rebuilding a tokenizer from its JSON on every call cost 1-3 ms a request.
        self._encoder = make_encoder(self.preprocessing, self.tokenizer_json)

    @property
    def labels(self) -> list[str]:
        return list(self.preprocessing["labels"])

    @property
    def kind(self) -> str:
        return str(self.preprocessing["kind"])

    @property
    def predictor(self) -> Any:
        """What predictions run on: the ONNX Runtime session when there is an export, else the network."""
        return self.onnx if self.onnx is not None else self.model

    def predict_proba(self, inputs: Sequence[Any], *, batch_size: int = 64) -> np.ndarray:
        """Probabilities (N, C): softmax for single-label, sigmoid for multi-label."""
        from aifab.train.run import predict_proba

        return predict_proba(
            self.predictor, self.preprocessing, self.tokenizer_json, list(inputs), batch_size=batch_size, encoder=self._encoder
        )

    def predict(self, inputs: Sequence[Any], *, batch_size: int = 64, threshold: float = 0.5) -> list[dict[str, Any]]:
        """One answer per input: ``label`` (or ``labels`` for multi-label) and ``scores`` per class.

        Image inputs are bytes or paths; text inputs are strings.
        """
        inputs = [_read_input(x, self.kind) for x in inputs]
        probs = self.predict_proba(inputs, batch_size=batch_size)
        out = []
        for row in probs:
            scores = {label: float(p) for label, p in zip(self.labels, row)}
            if self.preprocessing.get("multi_label"):
                out.append({"labels": [lab for lab, p in scores.items() if p >= threshold], "scores": scores})
            else:
                out.append({"label": self.labels[int(np.argmax(row))], "scores": scores})
        return out


def load_files(version: ModelVersion, read: Any) -> LoadedModel:
    """Rebuild a model version from its files; ``read(digest) -> bytes`` verifies each blob.

    An ensemble version (it holds ``ensemble.json``) loads as an
    :class:`aifab.optimize.ensemble.EnsembleModel`, which offers this class's interface.
    """
    from safetensors.torch import load

    from aifab.train.run import rebuild_model

    if "ensemble.json" in version.files:
        from aifab.optimize.ensemble import load_ensemble

        return load_ensemble(version, read, load_member=load_files)  # type: ignore[return-value]
    params = json.loads(read(version.files["model.json"]))
    preprocessing = json.loads(read(version.files["preprocessing.json"]))
    tokenizer_json = read(version.files["tokenizer.json"]).decode("utf-8") if "tokenizer.json" in version.files else None
    with tempfile.TemporaryDirectory() as tmp:
        if "encoder/config.json" in version.files:
            # Rebuild a pretrained encoder from its saved config, not from the hub or a path that
            # may not exist where the model is served: the weights come from weights.safetensors.
            (Path(tmp) / "config.json").write_bytes(read(version.files["encoder/config.json"]))
            params = dict(params)
            params["arch"] = f"pretrained:{tmp}"
            params["model"] = {**params.get("model", {}), "arch": f"pretrained:{tmp}"}
        model = rebuild_model(params)
    try:
        state = load(read(version.files["weights.safetensors"]))
        missing, unexpected = model.load_state_dict(state, strict=False)
    except Exception as exc:  # safetensors raises its own types for corrupt headers
        raise IntegrityError(f"{version.ref}: weights do not load: {exc}") from None
    if missing or unexpected:
        raise IntegrityError(f"{version.ref}: weights do not fit the network (missing {missing[:5]}, unexpected {unexpected[:5]})")
    model.eval()
    onnx = None
    if "model.onnx" in version.files:
        from aifab.optimize.export import OrtPredictor

        onnx = OrtPredictor(read(version.files["model.onnx"]))
    return LoadedModel(version=version, model=model, preprocessing=preprocessing, tokenizer_json=tokenizer_json, onnx=onnx)


def model_card(
    *,
    name: str,
    task: str,
    dataset: str,
    metrics: dict[str, Any],
    spec: dict[str, Any],
    labels: list[str],
    split_counts: dict[str, int],
) -> str:
    """A Markdown model card: what it is, what it was trained on, how well it does, where it fails."""
    per_class = metrics.get("per_class", {})
    weakest = sorted(per_class.items(), key=lambda kv: kv[1].get("f1", 0))[:3]
    lines = [
        f"# {name}",
        "",
        f"- **Task:** {task} over {len(labels)} labels: {', '.join(labels[:20])}{' ...' if len(labels) > 20 else ''}",
        f"- **Architecture:** {spec.get('model', {}).get('arch')}",
        f"- **Data:** dataset version `{dataset}` (train {split_counts.get('train', 0)}, "
        f"val {split_counts.get('val', 0)}, test {split_counts.get('test', 0)})",
        f"- **Trained:** {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}, seed {spec.get('train', {}).get('seed')}",
        "",
        "## Test metrics",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    for key in ("accuracy", "macro_f1", "micro_f1", "weighted_f1", "ece", "log_loss"):
        if key in metrics and metrics[key] is not None:
            lines.append(f"| {key} | {metrics[key]:.4f} |")
    lines += [
        "",
        "## Intended use",
        "",
        f"Predict {task.replace('-', ' ')} labels for inputs like those of `{dataset}`. "
        "Scores are model probabilities; check the calibration error (ECE) above before using them as such.",
        "",
        "## Limitations",
        "",
        "- Measured only on the frozen test split of the dataset above; inputs from another distribution may do worse.",
    ]
    if weakest:
        lines.append(
            "- Weakest classes on test: " + ", ".join(f"{k} (F1 {v.get('f1', 0):.2f}, n={v.get('support', 0)})" for k, v in weakest)
        )
    return "\n".join(lines) + "\n"


def _json(value: Any) -> bytes:
    return json.dumps(value, indent=1, ensure_ascii=False, default=str).encode("utf-8")


def _read_input(value: Any, kind: str) -> Any:
    if kind == "image":
        if isinstance(value, (bytes, bytearray)):
            return bytes(value)
        path = Path(value)
        if not path.is_file():
            raise InputError(f"{value}: no such image file")
        return path.read_bytes()
    if not isinstance(value, str):
        raise InputError(f"text inputs must be strings; got {type(value).__name__}")
    from aifab.data.texts import check_unicode

    # A lone surrogate would crash the tokenizer with a TypeError; name the input instead.
    return check_unicode(value, where=f"text {value[:40]!r}")
