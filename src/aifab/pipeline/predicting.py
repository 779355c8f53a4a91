"""`aifab predict`: inputs from the command line or a table file -> labels and probabilities."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aifab.core.errors import InputError

if TYPE_CHECKING:
    from aifab.pipeline.project import Workspace


def predict_inputs(
    ws: Workspace, ref: str, inputs: list[str], *, output: Path | None = None, column: str | None = None
) -> list[dict[str, Any]]:
    """Predict for image paths, strings, or a single CSV/JSONL file (written back with predictions to ``output``).

    Relative image paths in a table are resolved against the table's folder.
    """
    loaded = ws.load_model(ref)
    table = len(inputs) == 1 and Path(inputs[0]).suffix.lower() in (".csv", ".jsonl") and Path(inputs[0]).is_file()
    rows: list[dict[str, Any]] = []
    if table:
        path = Path(inputs[0])
        rows = _read_rows(path)
        column = column or ("image" if loaded.kind == "image" else "text")
        if rows and column not in rows[0]:
            raise InputError(f"{path}: no column {column!r} (columns: {', '.join(rows[0])}); pass --column")
        values = [r[column] for r in rows]
        if loaded.kind == "image":
            values = [str((path.parent / v).resolve()) for v in values]
    else:
        values = list(inputs)
    answers = loaded.predict(values)
    results = [{"input": v, **a, "model_version": loaded.version.ref} for v, a in zip(values, answers)]
    if output is not None:
        _write_rows(output, rows or [{"input": v} for v in values], answers)
    return results


def _read_rows(path: Path) -> list[dict[str, Any]]:
    if path.suffix.lower() == ".csv":
        with open(path, encoding="utf-8", newline="") as f:
            return list(csv.DictReader(f))
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise InputError(f"{path}, line {n}: not JSON ({exc.msg})") from None
    return rows


def _write_rows(path: Path, rows: list[dict[str, Any]], answers: list[dict[str, Any]]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    if path.suffix.lower() == ".jsonl":
        with open(tmp, "w", encoding="utf-8") as f:
            for row, a in zip(rows, answers):
                f.write(json.dumps({**row, "prediction": a.get("label", a.get("labels")), "scores": a["scores"]}) + "\n")
    else:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            fields = list(rows[0]) + ["prediction", "score"] if rows else ["prediction", "score"]
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            for row, a in zip(rows, answers):
                label = a.get("label") or "|".join(a.get("labels", []))
                writer.writerow({**row, "prediction": label, "score": f"{max(a['scores'].values()):.6f}"})
    tmp.replace(path)
