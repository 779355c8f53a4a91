"""`aifab optimize NAME@VERSION`: prune, export to ONNX, quantize to int8, and register the
result as a new version of the same model, measured side by side with its parent.

The steps run in this order, each optional (``quantize`` implies ``export``):

1. **prune** ``amount`` (0-1): structured (whole conv channels; CNNs) or unstructured (weight
   magnitudes; any model), then a short fine-tune on the train split with the parent's spec
   (:func:`aifab.train.run.train_classifier` started from the pruned network);
2. **export** to one ``model.onnx`` (:mod:`aifab.optimize.export`);
3. **quantize** that graph to int8: static with ~200 training inputs as calibration for image
   models, dynamic for text models (:mod:`aifab.optimize.quantize`).

With an export, ``parity.json`` compares the ONNX graph's probabilities with the PyTorch fp32
network of the same version on a sample of the test split; the quality gate refuses a version
whose arg-max agreement is below 99.5%. The new version keeps the parent's preprocessing,
tokenizer and spec; ``lineage.json`` names the parent (``parent``), and so does the store.
``optimization.json`` holds the steps and the before/after table (the new row's ``model`` is
``"this version"``): accuracy and macro F1 on the
test split (through the runtime each version predicts with), p50 latency of the network at
batch 1 and 32 and throughput (both versions timed in turns, best of :data:`TIMING_ROUNDS`
rounds), and model file size.

>>> # ws = Workspace.open(); optimize(ws, "digits@1", quantize="int8")["table"][1]["p50_ms_b1"]
"""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from aifab.core.config import Spec, parse
from aifab.core.errors import ConfigError, IntegrityError, check_choice
from aifab.core.progress import NullProgress, Progress
from aifab.core.types import ModelVersion

if TYPE_CHECKING:
    import torch
    from torch import nn

    from aifab.pipeline.project import Workspace

__all__ = ["FINETUNE_LR_SCALE", "optimize"]

FINETUNE_LR_SCALE = 1.0
"""The fine-tune after pruning runs a fresh schedule (warm-up, cosine decay) from this share of the
parent's learning rate. Measured on MNIST (SmallCNN, 5k digits, 50% of its channels pruned, 3
epochs): 1.0 lost 0.3 points of test accuracy, 0.5 lost 0.8 (and needed 5 epochs to match)."""
TIMING_ROWS = 32
TIMING_ROUNDS = 3
THIS_VERSION = "this version"
"""How the stored ``optimization.json`` and model card name the new version's row: its number
is given by the store only as it is registered, with those files."""
# Files a derived version takes from its parent unchanged; the rest are written anew.
INHERITED = ("preprocessing.json", "tokenizer.json", "encoder/config.json", "spec.json")


def optimize(
    ws: Workspace,
    ref: str,
    *,
    export: str | None = None,
    quantize: str | None = None,
    prune: float | None = None,
    prune_method: str = "auto",
    finetune_epochs: int = 2,
    parity_examples: int = 500,
    calibration_examples: int = 200,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Optimize model version ``ref`` (``NAME@VERSION``, ``NAME@ALIAS`` or ``NAME``) and register
    the result as the next version of the same model (alias ``candidate``).

    ``export``: ``"onnx"``; ``quantize``: ``"int8"``; ``prune``: the fraction of weights
    (unstructured) or channels (structured) to remove; ``prune_method``: ``auto`` (structured
    for CNNs with prunable channels, else unstructured), ``structured`` or ``unstructured``.
    Returns ``{"model", "parent", "steps", "parity", "table"}`` (JSON-ready but ``model``, the
    new :class:`~aifab.core.types.ModelVersion`); ``table`` holds the parent's row, then the new
    version's.
    """
    progress = progress or NullProgress()
    _check_options(export, quantize, prune, prune_method, finetune_epochs, parity_examples, calibration_examples)
    export = "onnx" if quantize else export
    parent = ws.model(ref)
    loaded = ws.load_model(parent.ref)
    if getattr(loaded, "model", None) is None:
        raise ConfigError(f"optimize {parent.ref}: an ensemble version has no single network to optimize")
    spec = parse(Spec, json.loads(ws.blob(parent.files["spec.json"])), source=f"{parent.ref} spec.json")
    lineage = json.loads(ws.blob(parent.files["lineage.json"]))
    dataset = ws.meta.get_dataset_version(lineage["dataset_name"], lineage["dataset_version"])
    splits = _splits(ws, dataset, spec, need_train=bool(prune) or quantize is not None)
    model_params = json.loads(ws.blob(parent.files["model.json"]))
    arch = str(model_params.get("arch"))
    model = copy.deepcopy(loaded.model).eval()
    history = json.loads(ws.blob(parent.files["history.json"])) if "history.json" in parent.files else []
    steps: list[dict[str, Any]] = []

    if prune:
        model, model_params, history, step = _prune(
            model, model_params, spec, splits, loaded, amount=prune, method=prune_method,
            epochs=finetune_epochs, progress=progress,
        )
        steps.append(step)
    onnx_bytes = parity = None
    if export:
        with progress.task("export to ONNX", total=1) as task:
            example = _encode(loaded, splits["test"][0][:2])
            from aifab.optimize.export import export_onnx

            onnx_bytes = export_onnx(model, example, arch=arch)
            task.advance()
        steps.append({"step": "export", "format": "onnx", "size_bytes": len(onnx_bytes)})
    if quantize:
        onnx_bytes, step = _quantize(onnx_bytes, loaded, arch, splits, calibration_examples, progress)
        steps.append(step)
    after = _in_memory(loaded, model, onnx_bytes)
    if onnx_bytes is not None:
        with progress.task("parity check", total=1) as task:
            parity = _parity(model, after, loaded, splits["test"][0][:parity_examples], quantized=bool(quantize))
            task.advance()

    files = _files(ws, parent, model, model_params, history, onnx_bytes, parity)
    with progress.task("measure before and after", total=2 + TIMING_ROUNDS) as task:
        before_row = _evaluate(loaded, parent.ref, splits["test"], _file_size(ws, parent, "model.onnx" if loaded.onnx is not None else "weights.safetensors"))
        task.advance()
        after_row = _evaluate(after, THIS_VERSION, splits["test"], len(files["model.onnx" if onnx_bytes else "weights.safetensors"]))
        task.advance()
        table = [before_row, after_row]
        _time(table, [loaded, after], _encode(loaded, splits["test"][0][:TIMING_ROWS]), task)
    version = _register(ws, parent, files, lineage, steps, table, parity, after_row.pop("metrics"))
    table[1]["model"] = version.ref
    before_row.pop("metrics")
    _check_round_trip(ws, version, after, splits["test"][0][:8])
    ws.meta.set_alias(parent.name, "candidate", version.version, actor="aifab optimize",
                      reason=f"optimized from {parent.ref}: {', '.join(s['step'] for s in steps)}")
    return {"model": ws.meta.get_model_version(parent.name, version.version), "parent": parent.ref,
            "steps": steps, "parity": parity, "table": table}


# ------------------------------------------------------------------------------------- steps


def _check_options(
    export: str | None, quantize: str | None, prune: float | None, prune_method: str,
    finetune_epochs: int, parity_examples: int, calibration_examples: int,
) -> None:
    from aifab.optimize.prune import METHODS

    if export is None and quantize is None and not prune:
        raise ConfigError("optimize: nothing to do; give --export onnx, --quantize int8 and/or --prune AMOUNT")
    if export is not None:
        check_choice("export", export, ["onnx"], where="optimize")
    if quantize is not None:
        check_choice("quantize", quantize, ["int8"], where="optimize")
    if prune is not None and not 0.0 < float(prune) < 1.0:
        raise ConfigError(f"optimize: The 'prune' parameter must be a fraction in (0, 1), e.g. 0.5; got {prune!r}")
    check_choice("prune_method", prune_method, list(METHODS), where="optimize")
    for name, value, low in (("finetune_epochs", finetune_epochs, 0), ("parity_examples", parity_examples, 1),
                             ("calibration_examples", calibration_examples, 1)):
        if int(value) < low:
            raise ConfigError(f"optimize: The {name!r} parameter must be >= {low}; got {value!r}")


def _prune(
    model: nn.Module, model_params: dict[str, Any], spec: Spec, splits: dict[str, Any], loaded: Any,
    *, amount: float, method: str, epochs: int, progress: Progress,
) -> tuple[nn.Module, dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
    """Prune, fine-tune, and describe it; returns the model, its model.json, history and step."""
    from aifab.optimize import prune as pruning
    from aifab.optimize.measure import count_flops, count_nonzero, count_parameters

    method = pruning.default_method(model) if method == "auto" else method
    one = _encode(loaded, splits["test"][0][:1])
    step: dict[str, Any] = {"step": "prune", "method": method, "amount": float(amount),
                            "parameters_before": count_parameters(model), "flops_before": count_flops(model, one)}
    if method == "structured":
        model, widths = pruning.prune_channels(model, amount)
        model_params = {**model_params, "channels": widths}
        step["channels"] = widths
    else:
        pruning.prune_unstructured(model, amount)
    history: list[dict[str, Any]] = []
    if epochs > 0:
        model, history = _fine_tune(model, model_params, spec, splits, loaded, epochs, progress)
    if method == "unstructured":
        pruning.make_permanent(model)
        step["sparsity"] = pruning.sparsity(model)
    step.update(parameters_after=count_parameters(model), nonzero_after=count_nonzero(model),
                flops_after=count_flops(model.eval(), one), finetune_epochs=epochs)
    return model.eval(), model_params, history, step


def _fine_tune(
    model: nn.Module, model_params: dict[str, Any], spec: Spec, splits: dict[str, Any], loaded: Any,
    epochs: int, progress: Progress,
) -> tuple[nn.Module, list[dict[str, Any]]]:
    from aifab.train.run import TrainedClassifier, train_classifier

    train_cfg = spec.train.model_copy(
        update={"epochs": epochs, "lr": (spec.train.lr or 1e-3) * FINETUNE_LR_SCALE, "max_minutes": None}
    )
    start = TrainedClassifier(
        model=model, preprocessing=loaded.preprocessing, tokenizer_json=loaded.tokenizer_json,
        model_params=model_params, history=[], best_epoch=0, effective_spec=spec.model_dump(mode="json"),
    )
    tuned = train_classifier(
        spec.model_copy(update={"train": train_cfg}),
        train_inputs=splits["train"][0], train_targets=splits["train"][1],
        val_inputs=splits["val"][0], val_targets=splits["val"][1],
        labels=loaded.labels, progress=progress, start=start,
    )
    return tuned.model, tuned.history


def _quantize(
    onnx_bytes: bytes | None, loaded: Any, arch: str, splits: dict[str, Any], examples: int, progress: Progress
) -> tuple[bytes, dict[str, Any]]:
    import numpy as np

    from aifab.optimize.quantize import default_method, quantize_int8

    assert onnx_bytes is not None  # quantize implies export
    method = default_method(loaded.kind, arch)
    calibration = []
    if method == "static":
        inputs = splits["train"][0]
        # A seeded sample across the train split, not its first rows (which may be one class).
        rows = np.random.default_rng(0).permutation(len(inputs))[:examples]
        chosen = [inputs[int(i)] for i in sorted(rows)]
        calibration = [_encode(loaded, chosen[i : i + 32]) for i in range(0, len(chosen), 32)]
    with progress.task(f"quantize int8 ({method})", total=1) as task:
        int8 = quantize_int8(onnx_bytes, method=method, calibration=calibration or None)
        task.advance()
    step = {"step": "quantize", "dtype": "int8", "method": method, "size_bytes": len(int8)}
    if calibration:
        step["calibration_examples"] = sum(len(next(iter(b.values()))) for b in calibration)
    return int8, step


def _parity(model: nn.Module, after: Any, loaded: Any, inputs: list[Any], *, quantized: bool) -> dict[str, Any]:
    """ONNX probabilities against the PyTorch fp32 network of the same weights, through the same
    encoding and batching the server uses."""
    from aifab.optimize.export import EXPORT_FILE, parity_report
    from aifab.train.run import predict_proba

    reference = predict_proba(model, loaded.preprocessing, loaded.tokenizer_json, inputs)
    candidate = after.predict_proba(inputs)
    report = parity_report(reference, candidate, export=EXPORT_FILE, reference_name="torch fp32 (same weights)")
    report["dtype"] = "int8" if quantized else "fp32"
    return report


# ------------------------------------------------------------------------------- measurement


def _evaluate(loaded: Any, ref: str, test: tuple[list[Any], list[Any]], size: int) -> dict[str, Any]:
    """A table row without its timings: test metrics through the runtime the version predicts with."""
    from aifab.pipeline.training import evaluate_loaded

    inputs, targets = test
    metrics = evaluate_loaded(loaded.predictor, loaded.preprocessing, loaded.tokenizer_json, inputs, targets,
                              labels=loaded.labels)
    return {
        "model": ref,
        "runtime": "onnxruntime" if loaded.onnx is not None else "torch",
        "accuracy": metrics.get("accuracy"),
        "macro_f1": metrics.get("macro_f1"),
        "size_bytes": int(size),
        "metrics": metrics,
    }


def _time(rows: list[dict[str, Any]], models: list[Any], inputs: dict[str, torch.Tensor], task: Any) -> None:
    """Fill in each row's timings: the models take turns over TIMING_ROUNDS rounds and each keeps
    its best round, so a neighbour's burst of work on a shared machine does not decide a ratio."""
    from aifab.optimize.measure import time_model

    best: list[dict[str, float]] = [{} for _ in models]
    for _ in range(TIMING_ROUNDS):
        for kept, loaded in zip(best, models, strict=True):
            timing = time_model(loaded.predictor, inputs, warmup=3, runs=20).to_dict()
            for key, value in timing.items():
                better = max if key == "throughput" else min
                kept[key] = better(kept.get(key, value), value)
        task.advance()
    for row, kept in zip(rows, best, strict=True):
        row.update(kept)


def _encode(loaded: Any, items: list[Any]) -> dict[str, torch.Tensor]:
    """Encoded network inputs for raw inputs, with the version's own preprocessing."""
    from aifab.train.run import make_encoder

    encoder = make_encoder(loaded.preprocessing, loaded.tokenizer_json)
    if loaded.kind == "text":
        ids, mask = encoder(items)
        return {"input_ids": ids, "attention_mask": mask}
    return {"images": encoder(items)}


def _in_memory(loaded: Any, model: nn.Module, onnx_bytes: bytes | None) -> Any:
    """The new version as it will load, before it is registered (measured and checked first)."""
    from aifab.optimize.export import OrtPredictor
    from aifab.registry.versions import LoadedModel

    return LoadedModel(version=loaded.version, model=model, preprocessing=loaded.preprocessing,
                       tokenizer_json=loaded.tokenizer_json,
                       onnx=OrtPredictor(onnx_bytes) if onnx_bytes is not None else None)


def _check_round_trip(ws: Workspace, version: ModelVersion, expected: Any, inputs: list[Any]) -> None:
    """The registered version must load to the network that was measured (a pruned network's
    widths come back from model.json)."""
    import numpy as np

    got = ws.load_model(version.ref).predict_proba(inputs)
    want = expected.predict_proba(inputs)
    if got.shape != want.shape or not np.allclose(got, want, atol=1e-5):
        raise IntegrityError(f"{version.ref}: the registered version does not load to the optimized model")


# ------------------------------------------------------------------------------ registration


def _files(
    ws: Workspace, parent: ModelVersion, model: nn.Module, model_params: dict[str, Any],
    history: list[dict[str, Any]], onnx_bytes: bytes | None, parity: dict[str, Any] | None,
) -> dict[str, bytes]:
    from safetensors.torch import save

    from aifab.optimize.export import EXPORT_FILE, PARITY_FILE

    files = {name: ws.blob(parent.files[name]) for name in INHERITED if name in parent.files}
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    files["weights.safetensors"] = save(state)
    files["model.json"] = _json(model_params)
    files["history.json"] = _json(history)
    if onnx_bytes is not None:
        files[EXPORT_FILE] = onnx_bytes
        files[PARITY_FILE] = _json(parity)
    return files


def _register(
    ws: Workspace, parent: ModelVersion, files: dict[str, bytes], lineage: dict[str, Any],
    steps: list[dict[str, Any]], table: list[dict[str, Any]], parity: dict[str, Any] | None,
    metrics: dict[str, Any],
) -> ModelVersion:
    from aifab.evaluate.report import evaluation_report
    from aifab.pipeline.training import _clean

    rows = [{k: v for k, v in row.items() if k != "metrics"} for row in table]
    files = dict(files)
    files["lineage.json"] = _json({**lineage, "parent": parent.ref, "optimization": [s["step"] for s in steps]})
    files["metrics.json"] = _json(metrics)
    files["optimization.json"] = _json({"parent": parent.ref, "steps": steps, "parity": parity, "table": rows})
    files["model_card.md"] = _card(ws, parent, steps, rows, parity).encode("utf-8")
    files["report.html"] = evaluation_report(metrics, title=f"{parent.name}: optimized from {parent.ref}").encode("utf-8")
    digests = {name: ws.artifacts.put_bytes(data) for name, data in files.items()}
    flat = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and v is not None}
    return ws.meta.add_model_version(
        ModelVersion(
            name=parent.name, version=0, files=digests, task=parent.task, created_at=datetime.now(UTC),
            run_id=parent.run_id, dataset_version=parent.dataset_version, parent=parent.version,
            metrics=_clean({"test": flat}), description=f"optimized from {parent.ref}",
        )
    )


def _card(ws: Workspace, parent: ModelVersion, steps: list[dict[str, Any]], rows: list[dict[str, Any]],
          parity: dict[str, Any] | None) -> str:
    card = ws.blob(parent.files["model_card.md"]).decode("utf-8") if "model_card.md" in parent.files else f"# {parent.name}\n"
    card = card.split("\n## Optimization\n")[0]  # an optimized parent's section is replaced, not stacked
    lines = ["", "## Optimization", "", f"Derived from `{parent.ref}`: " + "; ".join(_describe(s) for s in steps) + ".", ""]
    lines += ["| model | runtime | accuracy | p50 ms (b1) | p50 ms (b32) | inputs/s | size |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        acc = "-" if r["accuracy"] is None else f"{r['accuracy']:.4f}"
        lines.append(f"| {r['model']} | {r['runtime']} | {acc} | {r['p50_ms_b1']:.3f} | {r['p50_ms_b32']:.3f} "
                     f"| {r['throughput']:.0f} | {r['size_bytes'] / 1e6:.2f} MB |")
    if parity is not None and parity.get("agreement") is not None:
        verdict = "passes" if parity["passed"] else "FAILS"
        lines += ["", (f"ONNX parity ({parity['dtype']}) {verdict}: arg-max agreement {parity['agreement']:.2%} with "
                       f"the PyTorch network on {parity['examples']} test inputs, max |dp| {parity['max_abs_diff']:.2e}.")]
    return card.rstrip("\n") + "\n" + "\n".join(lines) + "\n"


def _describe(step: dict[str, Any]) -> str:
    if step["step"] == "prune":
        return f"{step['method']} pruning of {step['amount']:.0%} + {step['finetune_epochs']} fine-tune epoch(s)"
    if step["step"] == "quantize":
        return f"{step['method']} int8 quantization"
    return "ONNX export"


def _splits(ws: Workspace, dataset: Any, spec: Spec, *, need_train: bool) -> dict[str, tuple[list[Any], list[Any]]]:
    from aifab.pipeline.training import _load_splits

    return _load_splits(ws, dataset, spec, only=("train", "val", "test") if need_train else ("test",))


def _file_size(ws: Workspace, version: ModelVersion, name: str) -> int:
    return len(ws.blob(version.files[name])) if name in version.files else 0


def _json(value: Any) -> bytes:
    return json.dumps(value, indent=1, ensure_ascii=False, default=str).encode("utf-8")
