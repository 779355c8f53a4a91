"""The one record schema every task uses, and its Parquet (Arrow) form.

A :class:`Record` is one example. Which fields are set depends on the task:

=============  ==================================  ===============================
field          type                                tasks
=============  ==================================  ===============================
``text``       str                                 text classification, NER, fusion
``image``      sha256 of the image blob            image tasks
``category``   str                                 single-label classification
``categories`` list[str]                           multi-label classification
``tokens``     list[str] (+ ``tags``, same length)  named-entity recognition (BIO)
``boxes``      list[Box] (pixels, COCO x/y/w/h)     object detection / instances
``mask``       sha256 of a PNG class-index mask     semantic segmentation
``number``     float                               regression
=============  ==================================  ===============================

plus ``id`` (stable: derived from where the record came from and what it holds),
``split`` (``train``/``val``/``test``), ``source`` (file and line / path it came from),
``width``/``height`` for images and ``meta`` (other columns, kept as strings).

>>> r = Record(id="a1", source="sms.csv:2", text="hello", category="ham")
>>> table = records_to_table([r])
>>> table_to_records(table)[0].text
'hello'
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import pyarrow as pa

RECORD_FIELDS = ("text", "image", "category", "categories", "tokens", "tags", "boxes", "mask", "number")
LABEL_FIELDS = ("category", "categories", "tags", "boxes", "mask", "number")


@dataclass(frozen=True, slots=True)
class Box:
    """One object in an image: a label and a pixel box (COCO convention: top-left x, y, width, height).

    ``segmentation`` keeps COCO polygons (a list of flat [x1, y1, x2, y2, ...] lists) when given.
    """

    label: str
    x: float
    y: float
    w: float
    h: float
    iscrowd: bool = False
    segmentation: tuple[tuple[float, ...], ...] = ()


@dataclass(slots=True)
class Record:
    """One example. Mutable only while ingest builds it; a stored version never changes."""

    id: str
    source: str
    split: str | None = None
    text: str | None = None
    image: str | None = None
    category: str | None = None
    categories: list[str] | None = None
    tokens: list[str] | None = None
    tags: list[str] | None = None
    boxes: list[Box] | None = None
    mask: str | None = None
    number: float | None = None
    width: int | None = None
    height: int | None = None
    meta: dict[str, str] | None = None

    def labels(self) -> list[str]:
        """Every class label this record carries (for stratification and label counts)."""
        if self.category is not None:
            return [self.category]
        if self.categories is not None:
            return list(self.categories)
        if self.boxes:
            return sorted({b.label for b in self.boxes})
        if self.tags is not None:
            return sorted({t[2:] for t in self.tags if t not in ("O", "")} or {"O"})
        return []


@dataclass(slots=True)
class RawRecord:
    """What a format reader yields: the fields as read, before the gate and the blob store see them.

    ``image_path`` is the file to read (already confined to the source root); ``source``
    is ``"<relative file>:<line>"`` or the image's relative path; ``split`` is the split
    the data itself names, if any. ``problems`` carries per-record reader findings as
    ``(check, message)`` pairs (e.g. ``("missing_file", "images/x.png does not exist")``):
    a broken record is reported and quarantined, never a reason to drop the whole file.
    """

    source: str
    fields: dict[str, Any] = field(default_factory=dict)
    image_path: Path | None = None
    split: str | None = None
    problems: list[tuple[str, str]] = field(default_factory=list)


def record_id(source: str, content: str) -> str:
    """A stable id: the same source location with the same content always gets the same id.

    >>> record_id("a.csv:2", "hi") == record_id("a.csv:2", "hi")
    True
    """
    return hashlib.sha256(f"{source}\x00{content}".encode("utf-8", "surrogatepass")).hexdigest()[:20]


_BOX = pa.struct(
    [
        ("label", pa.string()),
        ("x", pa.float64()),
        ("y", pa.float64()),
        ("w", pa.float64()),
        ("h", pa.float64()),
        ("iscrowd", pa.bool_()),
        ("segmentation", pa.list_(pa.list_(pa.float64()))),
    ]
)

MANIFEST_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("split", pa.string()),
        ("source", pa.string()),
        ("text", pa.string()),
        ("image", pa.string()),
        ("category", pa.string()),
        ("categories", pa.list_(pa.string())),
        ("tokens", pa.list_(pa.string())),
        ("tags", pa.list_(pa.string())),
        ("boxes", pa.list_(_BOX)),
        ("mask", pa.string()),
        ("number", pa.float64()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("meta", pa.map_(pa.string(), pa.string())),
    ]
)


def records_to_table(records: Iterable[Record]) -> pa.Table:
    """Records -> an Arrow table with :data:`MANIFEST_SCHEMA` (sorted by nothing: order is kept)."""
    records = list(records)
    columns: dict[str, list[Any]] = {name: [] for name in MANIFEST_SCHEMA.names}
    for r in records:
        columns["id"].append(r.id)
        columns["split"].append(r.split)
        columns["source"].append(r.source)
        columns["text"].append(r.text)
        columns["image"].append(r.image)
        columns["category"].append(r.category)
        columns["categories"].append(r.categories)
        columns["tokens"].append(r.tokens)
        columns["tags"].append(r.tags)
        columns["boxes"].append(None if r.boxes is None else [_box_to_dict(b) for b in r.boxes])
        columns["mask"].append(r.mask)
        columns["number"].append(r.number)
        columns["width"].append(r.width)
        columns["height"].append(r.height)
        columns["meta"].append(None if r.meta is None else list(r.meta.items()))
    return pa.table(columns, schema=MANIFEST_SCHEMA)


def table_to_records(table: pa.Table) -> list[Record]:
    """An Arrow table with :data:`MANIFEST_SCHEMA` -> records (the inverse of :func:`records_to_table`)."""
    cols = {name: table.column(name).to_pylist() for name in table.column_names}
    n = table.num_rows
    out: list[Record] = []
    for i in range(n):
        boxes = cols["boxes"][i]
        meta = cols["meta"][i]
        out.append(
            Record(
                id=cols["id"][i],
                source=cols["source"][i],
                split=cols["split"][i],
                text=cols["text"][i],
                image=cols["image"][i],
                category=cols["category"][i],
                categories=cols["categories"][i],
                tokens=cols["tokens"][i],
                tags=cols["tags"][i],
                boxes=None if boxes is None else [_box_from_dict(b) for b in boxes],
                mask=cols["mask"][i],
                number=cols["number"][i],
                width=cols["width"][i],
                height=cols["height"][i],
                meta=None if meta is None else dict(meta),
            )
        )
    return out


def present_fields(table: pa.Table) -> tuple[str, ...]:
    """The record fields that at least one row of the table sets."""
    return tuple(name for name in RECORD_FIELDS if table.column(name).null_count < table.num_rows)


def _box_to_dict(b: Box) -> dict[str, Any]:
    return {
        "label": b.label,
        "x": b.x,
        "y": b.y,
        "w": b.w,
        "h": b.h,
        "iscrowd": b.iscrowd,
        "segmentation": [list(p) for p in b.segmentation],
    }


def _box_from_dict(d: dict[str, Any]) -> Box:
    return Box(
        label=d["label"],
        x=d["x"],
        y=d["y"],
        w=d["w"],
        h=d["h"],
        iscrowd=bool(d["iscrowd"]),
        segmentation=tuple(tuple(p) for p in (d["segmentation"] or ())),
    )
