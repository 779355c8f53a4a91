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
    try:
        answers = loaded.predict(values)
    except InputError as exc:
        raise _naming_the_input(loaded, values, exc) from None
    results = [{"input": v, **a, "model_version": loaded.version.ref} for v, a in zip(values, answers)]
    if output is not None:
        _write_rows(output, rows or [{"input": v} for v in values], answers)
    return results


def _naming_the_input(loaded: Any, values: list[Any], exc: InputError) -> InputError:
    """The error of the first input that fails on its own, named by the input (a file path or
    the start of a text) rather than by its row in the batch; ``exc`` if it names the input
    already or none fails alone. Runs only on the error path."""
    import re

    if not re.match(r"input row \d+: ", exc.message):
        return exc
    for value in values:
        try:
            loaded.predict([value])
        except InputError as own:
            reason = re.sub(r"^input row \d+: ", "", own.message)
            shown = value if len(str(value)) <= 80 else f"{str(value)[:77]}..."
            return InputError(f"{shown}: {reason}", details=own.details)
    return exc


def _read_rows(path: Path) -> list[dict[str, Any]]:
    try:
        return _parse_rows(path)
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 (byte {exc.start}: {exc.reason}); save the file as UTF-8") from None
    except csv.Error as exc:
        raise InputError(f"{path}: not valid CSV ({exc})") from None


def _parse_rows(path: Path) -> list[dict[str, Any]]:
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
