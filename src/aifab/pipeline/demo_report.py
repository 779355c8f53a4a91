"""The demo's offline HTML report: every stage of the loop on one page, with plots.

Built from the demo's JSON-ready summary alone (see :func:`aifab.pipeline.demo.run_demo`), with
the report machinery every evaluation uses (:mod:`aifab.evaluate.report`): one self-contained
file, no CDN, every value escaped.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aifab.evaluate import plots
from aifab.evaluate.report import ReportSection, render_html_report

__all__ = ["demo_sections", "write_report"]

REPORT_MODE = 0o644


def write_report(path: Path, summary: Mapping[str, Any]) -> Path:
    """Render the demo report to ``path`` atomically (a crash leaves the old file or the new).

    >>> import tempfile
    >>> out = write_report(Path(tempfile.mkdtemp()) / "r.html", {"headline": "ok", "stages": []})
    >>> "ok" in out.read_text()
    True
    """
    html = render_html_report(
        title="aifab demo: the whole loop",
        subtitle=str(summary.get("headline", "")),
        sections=demo_sections(summary),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".report-", suffix=".tmp")
    os.chmod(tmp, REPORT_MODE)  # mkstemp makes it owner-only; a report is for sharing
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(html)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def demo_sections(summary: Mapping[str, Any]) -> list[ReportSection]:
    """The report's sections, in the order the loop ran."""
    sections = [
        ReportSection(
            "Stages",
            text=f"Workspace: {summary.get('workspace', '')}. Total wall time: {summary.get('seconds', '?')} s.",
            table_header=("stage", "result", "seconds"),
            table_rows=[(s["stage"], s["result"], s.get("seconds")) for s in summary.get("stages", [])],
        )
    ]
    for name, model in (summary.get("models") or {}).items():
        sections += _model_sections(name, model)
    planted = summary.get("planted_regression")
    if planted:
        sections.append(_planted_section(planted))
    audit = summary.get("audit")
    if audit is not None:
        sections.append(
            ReportSection(
                "Audit trail",
                text="Every move of an alias, newest first: who, when, why, and whether a gate allowed it.",
                table_header=("when", "model", "alias", "version", "from", "actor", "reason", "gate"),
                table_rows=[
                    (
                        m.get("moved_at"),
                        m.get("model", m.get("name")),
                        m.get("alias"),
                        m.get("version"),
                        m.get("previous"),
                        m.get("actor"),
                        m.get("reason"),
                        _gate_word(m),
                    )
                    for m in audit
                ],
            )
        )
    return sections


def _model_sections(name: str, model: Mapping[str, Any]) -> list[ReportSection]:
    out: list[ReportSection] = []
    data = model.get("dataset")
    if data:
        out.append(
            ReportSection(
                f"{name}: data gate and split",
                text=(
                    f"Dataset version {data['version'][:12]}: {data['records']} records ingested, "
                    f"{data['traffic_held_back']} held back as traffic. Duplicate groups across splits: "
                    f"{data['duplicate_groups_across_splits']} (the split keeps every group in one split)."
                ),
                metrics={f"split {k}": v for k, v in data["splits"].items()}
                | {f"finding {k}": v for k, v in data["findings"].items()}
                | {"quarantined": data["quarantined"]},
            )
        )
    first = model.get("first")
    if first:
        out.append(
            ReportSection(
                f"{name}: first version and its gate",
                text=f"{first['version']} trained, evaluated on the test split, and promoted through the gate.",
                metrics={k: v for k, v in first["test"].items() if k in ("accuracy", "macro_f1", "ece")},
                table_header=("gate check", "passed", "message"),
                table_rows=[(c["name"], c["passed"], c["message"]) for c in first.get("gate", {}).get("checks", [])],
            )
        )
    traffic = model.get("traffic")
    if traffic:
        out.append(
            ReportSection(
                f"{name}: served traffic and feedback",
                text=(
                    f"{traffic['requests']} held-back examples sent to the server as requests; "
                    f"{traffic['wrong']} answers were wrong and each got a correction as feedback. "
                    "Below: the review queue, the answers the model was least sure of (smallest margin), "
                    "the ones a reviewer should look at first."
                ),
                metrics={
                    "accuracy on traffic": traffic["accuracy"],
                    "corrections sent": traffic["corrections_sent"],
                    "request p50 ms (32 per request)": traffic["request_ms_p50"],
                    "request p95 ms": traffic["request_ms_p95"],
                },
                table_header=("prediction", "label", "margin", "input"),
                table_rows=[
                    (r["prediction_id"], r["label"], r["margin"], (r.get("input") or "(image)")[:120])
                    for r in traffic.get("review_queue", [])
                ],
            )
        )
    drift = model.get("drift")
    if drift:
        out.append(_drift_section(name, drift))
    retrain = model.get("retrain")
    if retrain:
        out.append(_retrain_section(name, retrain, model.get("before_after") or {}))
    return out


def _drift_section(name: str, drift: Mapping[str, Any]) -> ReportSection:
    if "error" in drift:
        return ReportSection(f"{name}: drift", text=f"The drift check could not run: {drift['error']}")
    scalars = {k: v for k, v in drift.items() if isinstance(v, (int, float, bool, str)) and k != "model"}
    return ReportSection(
        f"{name}: drift of the served inputs",
        text=(
            "The served window against the training data's reference statistics (PSI per feature and "
            "a two-sample test on the model's embeddings). The traffic here comes from the same "
            "distribution as the training data, so no alarm is the right answer"
            + (
                "; the alarm fired: " + "; ".join(drift.get("reasons") or [])
                if drift.get("alarm")
                else ", and it is what the check says."
            )
        ),
        metrics=scalars,
    )


def _retrain_section(name: str, retrain: Mapping[str, Any], before_after: Mapping[str, Any]) -> ReportSection:
    before, after = before_after.get("before"), before_after.get("after")
    images = []
    metrics: dict[str, Any] = {
        "status": retrain.get("status"),
        "corrections": retrain.get("corrections"),
        "new train records": len(retrain.get("added") or []),
        "child dataset version": (retrain.get("child_version") or "")[:12],
        "candidate": retrain.get("candidate"),
    }
    if before and after:
        metrics |= {
            "test accuracy before": before["accuracy"],
            "test accuracy after": after["accuracy"],
            "test macro F1 before": before["macro_f1"],
            "test macro F1 after": after["macro_f1"],
        }
        images.append(
            (
                "F1 per class on the frozen test split: production before (grey), candidate (blue)",
                plots.before_after_png(before["per_class"], after["per_class"], names=("production", "candidate")),
            )
        )
        if not after.get("multi_label"):
            images.append(("Candidate's confusion matrix (test)", plots.confusion_matrix_png(after["confusion_matrix"], after["labels"])))
    gate = retrain.get("gate") or {}
    reasons = gate.get("reasons") or []
    text = (
        "The feedback became a child dataset version (new examples in train only; the test split "
        "unchanged); a candidate was trained with the production spec and judged by the gate."
    )
    if reasons:
        text += " The gate refused it: " + "; ".join(reasons)
    elif retrain.get("reason"):
        text += " " + str(retrain["reason"])
    return ReportSection(f"{name}: retrain from feedback", text=text, metrics=metrics, images=images)


def _planted_section(planted: Mapping[str, Any]) -> ReportSection:
    verdict = (
        f"Refused; production stays {planted.get('production')}."
        if planted.get("refused")
        else "PROMOTED: the gate failed to stop it."
    )
    return ReportSection(
        "Planted regression",
        text=(
            f"A broken upload (every label shuffled) trained {planted.get('candidate')}. {verdict} "
            "The gate's reasons:"
        ),
        table_header=("reason",),
        table_rows=[(r,) for r in planted.get("reasons", [])],
    )


def _gate_word(move: Mapping[str, Any]) -> str:
    gate = move.get("gate") or move.get("gate_result")
    if isinstance(gate, Mapping) and "passed" in gate:
        return "passed" if gate["passed"] else "failed (forced)"
    return "-"
