"""Fuzzing every reader: whatever the bytes, reading succeeds or raises an AifabError.

And what a reader yields can always be stored: every string is valid UTF-8 (bad
bytes were repaired and reported), every image path is inside the source root.
"""

from __future__ import annotations

import csv
import io
import json
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aifab.core.errors import AifabError
from aifab.data.formats import ReaderOptions, read_source
from aifab.data.records import Box, RawRecord

FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Characters that make tables, JSON and CoNLL files interesting.
TRICKY = ',"\n\r\t\x00|[]{}:\\ \ufeff\u202e\ud7ff\U0001f600-OBIES'
tricky_text = st.text(
    alphabet=st.sampled_from(list(TRICKY)) | st.characters(codec="utf-8"), max_size=80
)


def read_all(
    path: Path, fmt: str | None, root: Path, options: ReaderOptions | None = None
) -> list[RawRecord]:
    """Read, and check what came out; AifabErrors are the only allowed failures."""
    try:
        records = list(read_source(path, fmt, options or ReaderOptions()))
    except AifabError:
        return []
    for record in records:
        assert_storable(record.source)
        assert_storable(record.fields)
        for check, message in record.problems:
            assert isinstance(check, str) and isinstance(message, str)
        if record.image_path is not None:
            assert record.image_path.is_relative_to(root.resolve())
        assert record.split in (None, "train", "val", "test")
    return records


def assert_storable(value: Any) -> None:
    if isinstance(value, str):
        value.encode("utf-8")  # raises on a lone surrogate
    elif isinstance(value, dict):
        for k, v in value.items():
            assert_storable(k)
            assert_storable(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            assert_storable(v)
    elif isinstance(value, Box):
        assert_storable(value.label)
    else:
        assert value is None or isinstance(value, (int, float, bool)), value


def fuzz_file(
    name: str, content: bytes, fmt: str | None, options: ReaderOptions | None = None
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "a.png").write_bytes(b"\x89PNG")
        path = root / name
        path.write_bytes(content)
        read_all(path, fmt, root, options)


@FUZZ
@given(
    content=st.binary(max_size=300),
    name=st.sampled_from(["a.csv", "a.tsv", "a.jsonl", "a.parquet", "a.json", "a.conll", "a.txt"]),
)
def test_random_bytes_in_every_format(content: bytes, name: str) -> None:
    fmt = "coco" if name.endswith(".json") else None
    fuzz_file(name, content, fmt)


csv_cell = tricky_text | st.sampled_from(
    ["a.png", "../a.png", "/etc/passwd", "train", "dev", "1", "a|b", '["x"]']
)


@FUZZ
@given(
    header=st.lists(
        st.sampled_from(["text", "label", "split", "image", "labels", "x", ""]) | tricky_text,
        min_size=1,
        max_size=4,
        unique_by=str.strip,
    ),
    rows=st.lists(st.lists(csv_cell, min_size=0, max_size=5), max_size=6),
    sep=st.sampled_from([",", "\t"]),
    quoted=st.booleans(),
    multi=st.booleans(),
    noise=st.binary(max_size=3),
    at=st.integers(0, 10_000),
)
def test_csv_like_text(
    header: list[str],
    rows: list[list[str]],
    sep: str,
    quoted: bool,
    multi: bool,
    noise: bytes,
    at: int,
) -> None:
    if quoted:  # well-formed CSV with the header's width: the rows reach the field mapping
        buffer = io.StringIO()
        writer = csv.writer(buffer, delimiter=sep)
        writer.writerow(header)
        writer.writerows((row + [""] * len(header))[: len(header)] for row in rows)
        text = buffer.getvalue()
    else:
        text = "\n".join([sep.join(header)] + [sep.join(row) for row in rows])
    content = text.encode("utf-8", "surrogatepass")
    at %= len(content) + 1
    if not quoted:
        content = content[:at] + noise + content[at:]  # bytes that may not be UTF-8
    # Several label columns (a one-hot table) when asked and the header has two to spare.
    options = (
        ReaderOptions(label_columns=tuple(h.strip() for h in header[-2:]))
        if multi and len(header) > 2
        else None
    )
    fuzz_file("a.tsv" if sep == "\t" else "a.csv", content, None, options)


json_scalar = st.none() | st.booleans() | st.integers(-(10**30), 10**30) | st.floats() | tricky_text
json_value = st.recursive(
    json_scalar,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(tricky_text, inner, max_size=3),
    max_leaves=8,
)


@FUZZ
@given(
    lines=st.lists(
        st.dictionaries(
            st.sampled_from(["text", "label", "labels", "split", "image", "meta"]) | tricky_text,
            json_value,
            max_size=5,
        )
        | json_value,
        max_size=6,
    ),
    garbage=st.lists(tricky_text, max_size=2),
)
def test_jsonl_like_text(lines: list[Any], garbage: list[str]) -> None:
    text = [json.dumps(v, ensure_ascii=False) for v in lines] + garbage
    fuzz_file("a.jsonl", "\n".join(text).encode("utf-8", "surrogatepass"), None)


ids = st.integers(0, 3) | json_value
coco_image = st.fixed_dictionaries(
    {},
    optional={
        "id": ids,
        "file_name": st.sampled_from(["a.png", "../a.png", "/etc/passwd", "", "b.png"])
        | json_value,
        "width": st.integers(-1, 100) | st.floats() | json_value,
        "height": st.integers(-1, 100) | st.floats(),
    },
)
rle = st.fixed_dictionaries(
    {},
    optional={
        "size": st.lists(st.integers(-1, 6), min_size=2, max_size=2) | json_value,
        "counts": st.lists(st.integers(-3, 40), max_size=6)
        | tricky_text
        | st.text(
            alphabet="0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\]^_`abcdefghijklmno",
            max_size=10,
        ),
    },
)
coco_annotation = st.fixed_dictionaries(
    {},
    optional={
        "id": ids,
        "image_id": ids,
        "category_id": ids,
        "bbox": st.lists(st.integers(-10, 200) | st.floats(), min_size=3, max_size=5) | json_value,
        "iscrowd": st.sampled_from([0, 1, 2, True, 1.0]),
        "segmentation": rle
        | st.lists(st.lists(st.integers(0, 50) | st.floats(), max_size=8), max_size=2)
        | json_value,
    },
)
coco_category = st.fixed_dictionaries({}, optional={"id": ids, "name": tricky_text | json_value})


@FUZZ
@given(
    data=st.fixed_dictionaries(
        {},
        optional={
            "images": st.lists(coco_image, max_size=3) | json_value,
            "annotations": st.lists(coco_annotation, max_size=4) | json_value,
            "categories": st.lists(coco_category, max_size=3) | json_value,
        },
    ),
)
def test_coco_like_json(data: dict[str, Any]) -> None:
    fuzz_file(
        "instances_val.json",
        json.dumps(data, ensure_ascii=False).encode("utf-8", "surrogatepass"),
        "coco",
    )


small_id = st.integers(0, 2)
number = (
    st.integers(-5, 70) | st.floats(-5, 70) | st.sampled_from([float("nan"), float("inf"), 10**400])
)
valid_ish_rle = st.fixed_dictionaries(
    {
        "size": st.sampled_from([[4, 4], [48, 64], [2, 3]]),
        "counts": st.lists(st.integers(0, 9), max_size=5)
        | st.text(alphabet="0123456789:;<=>?@ABCDEFGHIJKLMNO", max_size=6),
    },
)


@FUZZ
@given(
    images=st.tuples(
        *[
            st.fixed_dictionaries(
                {
                    "id": st.just(i),
                    "file_name": st.sampled_from(["a.png", "../a.png", "b.png", "/a.png"]),
                    "width": st.sampled_from([64, 4]),
                    "height": st.sampled_from([48, 4]),
                }
            )
            for i in range(3)
        ]
    ),
    annotations=st.lists(
        st.fixed_dictionaries(
            {
                "id": small_id,
                "image_id": small_id,
                "category_id": small_id,
                "bbox": st.lists(number, min_size=4, max_size=4),
            },
            optional={
                "iscrowd": st.sampled_from([0, 1]),
                "segmentation": valid_ish_rle | st.lists(st.lists(number, max_size=8), max_size=2),
            },
        ),
        max_size=5,
    ),
    names=st.lists(tricky_text.filter(str.strip), min_size=3, max_size=3),
)
def test_coco_mostly_valid_json(
    images: tuple[Any, ...], annotations: list[Any], names: list[str]
) -> None:
    categories = [{"id": i, "name": name} for i, name in enumerate(names)]
    data = {"images": list(images), "annotations": annotations, "categories": categories}
    fuzz_file(
        "instances_val.json",
        json.dumps(data, ensure_ascii=False).encode("utf-8", "surrogatepass"),
        "coco",
    )


@FUZZ
@given(
    lines=st.lists(
        st.lists(
            tricky_text | st.sampled_from(["O", "B-PER", "I-LOC", "-DOCSTART-", "S-X", "E-"]),
            max_size=4,
        ),
        max_size=10,
    ),
    allowed=st.none() | st.just(("PER", "LOC")),
)
def test_conll_like_text(lines: list[list[str]], allowed: tuple[str, ...] | None) -> None:
    content = "\n".join(" ".join(columns) for columns in lines).encode("utf-8", "surrogatepass")
    fuzz_file("train.conll", content, None, ReaderOptions(allowed_tags=allowed))


name_part = st.sampled_from(
    [
        "cat",
        "dog",
        "train",
        "val",
        "test",
        ".hidden",
        "a.png",
        "B.JPG",
        "x.txt",
        "猫.gif",
        "__MACOSX",
        "..",
        "caf\udce9.png",
    ]
)


@FUZZ
@given(
    files=st.lists(
        st.tuples(st.lists(name_part, min_size=1, max_size=3), st.binary(max_size=8)), max_size=8
    )
)
def test_random_folder_trees(files: list[tuple[list[str], bytes]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "root"
        root.mkdir()
        for parts, content in files:
            path = root.joinpath(*parts)
            if ".." in parts:
                continue
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(content)
            except (FileExistsError, IsADirectoryError, NotADirectoryError):
                continue  # the tree already has a file where this wants a folder, or the reverse
        records = read_all(root, "folder", root)
        again = read_all(root, "folder", root)
        assert [(r.source, r.fields, r.split) for r in records] == [
            (r.source, r.fields, r.split) for r in again
        ]
        assert all(r.image_path is None or r.image_path.is_file() for r in records)
