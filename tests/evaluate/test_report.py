"""The HTML report: offline, images inlined, every user value escaped."""

from __future__ import annotations

import base64
import re
from html.parser import HTMLParser

import numpy as np
import pytest

from aifab.core.errors import InputError
from aifab.evaluate.metrics import classification_metrics
from aifab.evaluate.plots import per_class_f1_png
from aifab.evaluate.report import ReportSection, evaluation_report, render_html_report

HOSTILE = "<script>alert(1)</script>"
ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"


class _Tags(HTMLParser):
    """Collects every start tag and its attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def _tags(html: str) -> list[tuple[str, dict[str, str | None]]]:
    parser = _Tags()
    parser.feed(html)
    return parser.tags


def _assert_offline(html: str) -> None:
    assert "http://" not in html and "https://" not in html
    tags = _tags(html)
    assert not [t for t, _ in tags if t in ("script", "link", "iframe", "object", "embed")]
    for tag, attrs in tags:
        if "src" in attrs:
            assert (attrs["src"] or "").startswith("data:image/png;base64,"), (tag, attrs["src"])
        if "href" in attrs:
            assert (attrs["href"] or "").startswith("#"), (tag, attrs["href"])
    assert "@import" not in html and "url(" not in html


@pytest.fixture
def hostile_metrics() -> dict:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, size=60)
    logits = rng.normal(size=(60, 3))
    logits[np.arange(60), y] += 1.5
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return classification_metrics(y, probs, labels=["cat", "dog", HOSTILE])


def test_evaluation_report_is_offline_and_escapes_labels(hostile_metrics: dict) -> None:
    history = [
        {"epoch": e, "train.loss": 1 / e, "val.loss": 1.1 / e, "val.macro_f1": 0.5 + e / 10}
        for e in (1, 2, 3)
    ]
    html = evaluation_report(hostile_metrics, history=history, title=f"model {HOSTILE}")
    _assert_offline(html)
    assert HOSTILE not in html and "<script" not in html
    assert f"<title>model {ESCAPED}</title>" in html
    assert f"<td>{ESCAPED}</td>" in html  # the per-class table row
    headings = re.findall(r"<h2>(.*?)</h2>", html)
    assert headings == [
        "Headline metrics",
        "Per class",
        "Confusion matrix",
        "Calibration",
        "Learning curves",
    ]
    # per-class F1, confusion matrix, reliability, learning curves
    assert html.count('src="data:image/png;base64,') == 4
    macro_f1 = f"{hostile_metrics['macro_f1']:.4f}"
    assert f'<td>macro_f1</td><td class="num">{macro_f1}</td>' in html


def test_images_round_trip_as_data_uris() -> None:
    png = per_class_f1_png({"a": {"f1": 0.5}})
    html = render_html_report(
        title="t", sections=[ReportSection("Plot", images=[("F1 <per> class", png)])]
    )
    (uri,) = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert base64.b64decode(uri) == png
    assert "F1 &lt;per&gt; class" in html and "<per>" not in html


def test_every_user_field_is_escaped() -> None:
    section = ReportSection(
        HOSTILE,
        text=f"first {HOSTILE}\n\nsecond paragraph",
        metrics={HOSTILE: 0.5, "note": HOSTILE},
        table_header=("name", HOSTILE),
        table_rows=[(HOSTILE, 1), ("ok", 0.25)],
    )
    html = render_html_report(
        title=HOSTILE, sections=[section, ReportSection("Other")], subtitle=HOSTILE
    )
    assert HOSTILE not in html and "<script" not in html
    assert (
        html.count(ESCAPED) == 10
    )  # title x2, subtitle, nav, h2, text, metric name+value, header, cell
    assert "<p>second paragraph</p>" in html
    assert '<td class="num">0.2500</td>' in html
    _assert_offline(html)


def test_multi_label_report_has_a_confusion_table_not_a_matrix_plot() -> None:
    y = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
    probs = np.array([[0.9, 0.2], [0.3, 0.8], [0.7, 0.4], [0.1, 0.1]])
    html = evaluation_report(
        classification_metrics(y, probs, labels=["x", "y"], multi_label=True), title="ml"
    )
    assert "<h2>Confusion per class</h2>" in html and "<h2>Confusion matrix</h2>" not in html
    # y: tn 2, fp 0, fn 1, tp 1
    assert (
        '<td>y</td><td class="num">2</td><td class="num">0</td>'
        '<td class="num">1</td><td class="num">1</td>' in html
    )
    assert "Learning curves" not in html  # no history given
    _assert_offline(html)


def test_bad_inputs() -> None:
    with pytest.raises(InputError, match="not PNG"):
        render_html_report(
            title="t", sections=[ReportSection("s", images=[("fake", b"GIF89a....")])]
        )
    with pytest.raises(InputError, match="per_class"):
        evaluation_report({"labels": ["a"], "confusion_matrix": [[1]]}, title="t")
