"""Evaluation plots as PNG bytes, ready to embed in a report or serve over HTTP.

Each function draws on its own :class:`matplotlib.figure.Figure` attached to an Agg canvas,
created inside the function: no pyplot, no global backend switch, nothing at import of aifab, so
it is safe in a server thread and leaves a user's interactive matplotlib session alone. PNGs are
written without a software/version stamp, so the same input gives the same bytes on one machine.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "before_after_png",
    "confusion_matrix_png",
    "learning_curves_png",
    "per_class_f1_png",
    "reliability_png",
]

# Past this many classes, numbers in the cells are unreadable; the colours still tell the story.
_MAX_ANNOTATED_CLASSES = 20


def _new_figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def confusion_matrix_png(cm: Sequence[Sequence[int]], labels: Sequence[str]) -> bytes:
    """A heat map of a single-label confusion matrix (rows = true, columns = predicted).

    >>> confusion_matrix_png([[5, 1], [0, 4]], ["ham", "spam"])[:8] == b"\\x89PNG\\r\\n\\x1a\\n"
    True
    """
    import numpy as np

    from aifab.core.errors import InputError

    m = np.asarray(cm, dtype=np.float64)
    n = len(labels)
    if m.shape != (n, n):
        raise InputError(f"cm: must be {n} x {n} to match the labels; got shape {m.shape}")
    side = min(4.0 + 0.35 * n, 16.0)
    fig = _new_figure(side + 1.0, side)
    ax = fig.add_subplot()
    image = ax.imshow(m, cmap="Blues", interpolation="nearest")
    fig.colorbar(image, ax=ax, shrink=0.8)
    # parse_math=False: a user's label such as "$\frac{$" is text, not TeX to render (or choke on).
    ax.set_xticks(
        range(n),
        labels=list(labels),
        rotation=45 if n > 4 else 0,
        ha="right" if n > 4 else "center",
        parse_math=False,
    )
    ax.set_yticks(range(n), labels=list(labels), parse_math=False)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= _MAX_ANNOTATED_CLASSES:
        high = m.max() if m.size else 0.0
        for i in range(n):
            for j in range(n):
                colour = "white" if high and m[i, j] > high / 2 else "black"
                ax.text(j, i, f"{int(m[i, j])}", ha="center", va="center", color=colour, fontsize=8)
    return _png(fig)


def learning_curves_png(history: Sequence[Mapping[str, Any]]) -> bytes:
    """Loss curves (left) and every other ``train.*`` / ``val.*`` metric (right) per epoch.

    ``history`` has one dict per epoch: ``epoch`` plus flat keys such as ``train.loss``,
    ``val.loss``, ``val.macro_f1``; missing or ``None`` values are skipped.

    >>> png = learning_curves_png([
    ...     {"epoch": 1, "train.loss": 0.9, "val.loss": 1.0, "val.macro_f1": 0.5},
    ...     {"epoch": 2, "train.loss": 0.5, "val.loss": 0.7, "val.macro_f1": 0.7},
    ... ])
    >>> png[:4] == b"\\x89PNG"
    True
    """
    from matplotlib.ticker import MaxNLocator

    from aifab.core.errors import InputError

    if not history:
        raise InputError("history: is empty; expected one dict per epoch")
    series: dict[str, tuple[list[float], list[float]]] = {}
    for row_no, row in enumerate(history):
        epoch = row.get("epoch", row_no + 1)
        for key, value in row.items():
            if key == "epoch" or not isinstance(value, int | float) or isinstance(value, bool):
                continue
            xs, ys = series.setdefault(key, ([], []))
            xs.append(float(epoch))
            ys.append(float(value))
    losses = {k: v for k, v in series.items() if k.rsplit(".", 1)[-1].endswith("loss")}
    others = {k: v for k, v in series.items() if k not in losses}
    fig = _new_figure(10.0, 4.0)
    for position, (group, title) in enumerate(((losses, "loss"), (others, "metrics")), start=1):
        ax = fig.add_subplot(1, 2, position)
        for key, (xs, ys) in sorted(group.items()):
            ax.plot(xs, ys, marker="o", markersize=3, label=key)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if group:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "no values", ha="center", va="center", transform=ax.transAxes)
    return _png(fig)


def reliability_png(bins: Sequence[Mapping[str, Any]]) -> bytes:
    """A reliability diagram from :func:`aifab.evaluate.calibration.reliability_bins`: observed
    accuracy per confidence bin against the diagonal of perfect calibration, with bin counts below.

    >>> from aifab.evaluate.calibration import reliability_bins
    >>> bins = reliability_bins([[0.9, 0.1], [0.3, 0.7]], [0, 0], n_bins=5)
    >>> reliability_png(bins)[:4] == b"\\x89PNG"
    True
    """
    fig = _new_figure(5.0, 5.5)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    full = [b for b in bins if b.get("count")]
    lefts = [float(b["lower"]) for b in bins]
    widths = [float(b["upper"]) - float(b["lower"]) for b in bins]
    top.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    top.bar(
        [float(b["lower"]) for b in full],
        [float(b["accuracy"]) for b in full],
        width=[float(b["upper"]) - float(b["lower"]) for b in full],
        align="edge",
        edgecolor="black",
        alpha=0.7,
        label="observed",
    )
    top.plot(
        [float(b["confidence"]) for b in full],
        [float(b["confidence"]) for b in full],
        linestyle="none",
        marker="x",
        color="red",
        label="mean confidence",
    )
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy")
    top.legend(fontsize=8, loc="upper left")
    bottom.bar(
        lefts, [int(b.get("count") or 0) for b in bins], width=widths, align="edge", color="grey"
    )
    bottom.set_xlabel("confidence")
    bottom.set_ylabel("count")
    return _png(fig)


def per_class_f1_png(per_class: Mapping[str, Mapping[str, Any]]) -> bytes:
    """Horizontal bars of F1 per class (the ``per_class`` part of a metrics dict), worst at the top.

    >>> per_class_f1_png({"ham": {"f1": 0.9}, "spam": {"f1": 0.6}})[:4] == b"\\x89PNG"
    True
    """
    items = sorted(
        per_class.items(), key=lambda kv: (float(kv[1].get("f1", 0.0)), kv[0]), reverse=True
    )
    names = [name for name, _ in items]
    scores = [float(values.get("f1", 0.0)) for _, values in items]
    fig = _new_figure(6.0, min(1.5 + 0.3 * len(names), 20.0))
    ax = fig.add_subplot()
    ax.barh(range(len(names)), scores, color="#4c72b0")
    ax.set_yticks(range(len(names)), labels=names, parse_math=False)
    ax.set_xlim(0, 1)
    ax.set_xlabel("F1")
    for y, score in enumerate(scores):
        ax.text(min(score + 0.01, 0.93), y, f"{score:.3f}", va="center", fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


def before_after_png(
    before: Mapping[str, Mapping[str, Any]],
    after: Mapping[str, Mapping[str, Any]],
    *,
    names: tuple[str, str] = ("before", "after"),
) -> bytes:
    """Paired horizontal bars of F1 per class for two models on the same records (``per_class``
    parts of two metrics dicts); classes missing from one side count as 0.

    >>> before_after_png({"ham": {"f1": 0.9}}, {"ham": {"f1": 0.95}})[:4] == b"\\x89PNG"
    True
    """
    import numpy as np

    classes = sorted(set(before) | set(after))
    first = [float(before.get(c, {}).get("f1", 0.0)) for c in classes]
    second = [float(after.get(c, {}).get("f1", 0.0)) for c in classes]
    y = np.arange(len(classes))
    fig = _new_figure(6.0, min(1.8 + 0.45 * len(classes), 20.0))
    ax = fig.add_subplot()
    ax.barh(y - 0.2, first, height=0.4, color="#bbbbbb", label=names[0])
    ax.barh(y + 0.2, second, height=0.4, color="#4c72b0", label=names[1])
    ax.set_yticks(y, labels=classes, parse_math=False)
    ax.invert_yaxis()
    ax.set_xlim(min([*first, *second, 1.0]) * 0.95 if classes else 0, 1)
    ax.set_xlabel("F1")
    ax.legend(loc="lower left", fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)
