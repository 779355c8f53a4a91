"""Self-contained HTML reports: one file that opens offline, in any browser, years later.

No CDN, no external CSS, script or font; plots are PNGs inlined as ``data:`` URIs, styles are
inline, and a Content-Security-Policy forbids anything else. Every value is escaped by jinja2's
autoescape, because model names, titles and labels come from users.

The page template is ``aifab/evaluate/templates/report.html.j2`` (package data).
"""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from aifab.core.errors import InputError

__all__ = ["ReportSection", "evaluation_report", "render_html_report"]

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_TEMPLATE = "report.html.j2"

# The headline table of an evaluation report, in this order, when present.
_HEADLINE = (
    "num_examples",
    "accuracy",
    "macro_f1",
    "macro_precision",
    "macro_recall",
    "micro_f1",
    "weighted_f1",
    "ece",
    "log_loss",
)


@dataclass(frozen=True)
class ReportSection:
    """One titled part of a report; every part is optional except the title.

    * ``text`` — prose; blank lines separate paragraphs (plain text, escaped, never HTML);
    * ``metrics`` — name -> value, shown as a two-column table;
    * ``table_header`` / ``table_rows`` — any other table (cells are formatted and escaped);
    * ``images`` — ``(caption, png_bytes)`` pairs, embedded as data URIs.

    >>> ReportSection("Scores", metrics={"macro_f1": 0.91}).title
    'Scores'
    """

    title: str
    text: str = ""
    metrics: Mapping[str, Any] = field(default_factory=dict)
    table_header: Sequence[str] = ()
    table_rows: Sequence[Sequence[Any]] = ()
    images: Sequence[tuple[str, bytes]] = ()


def _format(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.4f}" if math.isfinite(value) else str(value)
    try:  # numpy scalars, without importing numpy here
        return _format(value.item())
    except AttributeError:
        return str(value)


def _is_numeric(value: Any) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)) or hasattr(
        value, "item"
    )


def _data_uri(section: str, caption: str, png: bytes) -> str:
    if not isinstance(png, bytes | bytearray) or not bytes(png[:8]) == _PNG_MAGIC:
        raise InputError(f"section {section!r}, image {caption!r}: is not PNG bytes")
    return "data:image/png;base64," + base64.b64encode(bytes(png)).decode("ascii")


def _prepare(section: ReportSection) -> dict[str, Any]:
    if not isinstance(section, ReportSection):
        raise InputError(f"sections: expected ReportSection items; got {type(section).__name__}")
    paragraphs = [" ".join(p.split()) for p in section.text.split("\n\n") if p.strip()]
    return {
        "title": str(section.title),
        "paragraphs": paragraphs,
        "metrics": [(str(name), _format(value)) for name, value in section.metrics.items()],
        "header": [str(h) for h in section.table_header],
        "rows": [
            [(_format(cell), _is_numeric(cell)) for cell in row] for row in section.table_rows
        ],
        "images": [
            (str(cap), _data_uri(section.title, str(cap), png)) for cap, png in section.images
        ],
    }


def render_html_report(*, title: str, sections: Sequence[ReportSection], subtitle: str = "") -> str:
    """One offline HTML page: the title, a table of contents, then each section in order.

    >>> sections = [ReportSection("Scores", text="ok")]
    >>> html = render_html_report(title="<b>spam</b> v2", sections=sections)
    >>> "&lt;b&gt;spam&lt;/b&gt; v2" in html, "<b>" in html
    (True, False)
    """
    import jinja2

    env = jinja2.Environment(
        autoescape=True,  # always on: every value in a report may come from a user
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    source = resources.files("aifab.evaluate").joinpath("templates", _TEMPLATE).read_text("utf-8")
    template = env.from_string(source)
    return template.render(
        title=str(title), subtitle=str(subtitle), sections=[_prepare(s) for s in sections]
    )


def evaluation_report(
    metrics: Mapping[str, Any],
    *,
    history: Sequence[Mapping[str, Any]] | None = None,
    title: str = "Evaluation report",
    subtitle: str = "",
) -> str:
    """The standard report of one evaluation: headline metrics, per-class table and F1 chart,
    confusion matrix, reliability diagram and (with ``history``) learning curves.

    ``metrics`` is what :func:`aifab.evaluate.metrics.classification_metrics` returns.

    >>> from aifab.evaluate.metrics import classification_metrics
    >>> m = classification_metrics([0, 1], [[0.8, 0.2], [0.3, 0.7]], labels=["ham", "spam"])
    >>> "data:image/png;base64," in evaluation_report(m, title="spam")
    True
    """
    from aifab.evaluate import plots

    for key in ("labels", "per_class", "confusion_matrix"):
        if key not in metrics:
            raise InputError(
                f"metrics: missing key {key!r}; pass the dict classification_metrics returns"
            )
    labels = list(metrics["labels"])
    per_class: Mapping[str, Mapping[str, Any]] = metrics["per_class"]
    sections = [
        ReportSection(
            "Headline metrics",
            text="Higher is better, except ece and log_loss (lower is better).",
            metrics={k: metrics[k] for k in _HEADLINE if k in metrics},
        ),
        ReportSection(
            "Per class",
            table_header=("label", "precision", "recall", "f1", "support"),
            table_rows=[
                (name, v.get("precision"), v.get("recall"), v.get("f1"), v.get("support"))
                for name, v in per_class.items()
            ],
            images=[("F1 per class", plots.per_class_f1_png(per_class))] if per_class else [],
        ),
    ]
    cm = metrics["confusion_matrix"]
    if metrics.get("multi_label"):
        sections.append(
            ReportSection(
                "Confusion per class",
                text=(
                    "Each class as its own yes/no decision at threshold "
                    f"{metrics.get('threshold')}."
                ),
                table_header=(
                    "label",
                    "true negatives",
                    "false positives",
                    "false negatives",
                    "true positives",
                ),
                table_rows=[(name, m[0][0], m[0][1], m[1][0], m[1][1]) for name, m in cm.items()],
            )
        )
    else:
        sections.append(
            ReportSection(
                "Confusion matrix",
                text="Rows are the true labels, columns the predicted ones.",
                images=[("Confusion matrix", plots.confusion_matrix_png(cm, labels))],
            )
        )
    if metrics.get("reliability"):
        sections.append(
            ReportSection(
                "Calibration",
                text=(
                    "How often a prediction made with a given confidence was right; bars on the "
                    "diagonal are perfectly calibrated."
                ),
                metrics={"ece": metrics.get("ece")},
                images=[("Reliability diagram", plots.reliability_png(metrics["reliability"]))],
            )
        )
    if history:
        sections.append(
            ReportSection(
                "Learning curves",
                images=[
                    ("Loss and validation metrics per epoch", plots.learning_curves_png(history))
                ],
            )
        )
    return render_html_report(title=title, sections=sections, subtitle=subtitle)
