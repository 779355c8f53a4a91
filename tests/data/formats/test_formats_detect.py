"""Format detection, dispatch, count hints and path confinement."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from aifab.core.errors import ConfigError, InputError, NotFound
from aifab.data.formats import (
    ReaderOptions,
    count_hint,
    detect_format,
    normalize_split,
    read_source,
    split_from_name,
)
from aifab.data.formats.paths import confine


@pytest.mark.parametrize(
    ("name", "fmt"),
    [
        ("a.csv", "csv"),
        ("a.TSV", "csv"),
        ("a.jsonl", "jsonl"),
        ("a.ndjson", "jsonl"),
        ("a.parquet", "parquet"),
        ("train.conll", "conll"),
        ("dev.txt", "conll"),
        ("x.iob", "conll"),
        ("x.bio", "conll"),
    ],
)
def test_detect_by_suffix(tmp_path: Path, name: str, fmt: str) -> None:
    assert detect_format(tmp_path / name) == fmt


def test_detect_coco_json_by_its_keys(tmp_path: Path) -> None:
    coco = tmp_path / "instances.json"
    # "annotations" far after the first chunk, as in a real COCO file.
    images = [{"id": i, "file_name": f"{i:06d}.jpg", "width": 1, "height": 1} for i in range(5000)]
    coco.write_text(json.dumps({"images": images, "annotations": [], "categories": []}))
    assert detect_format(coco) == "coco"
    other = tmp_path / "config.json"
    other.write_text(json.dumps({"images": 3}))
    with pytest.raises(ConfigError, match="COCO"):
        detect_format(other)


def test_detect_folders(tmp_path: Path) -> None:
    (tmp_path / "pets" / "cat").mkdir(parents=True)
    assert detect_format(tmp_path / "pets") == "folder"
    (tmp_path / "ner").mkdir()
    (tmp_path / "ner" / "train.txt").write_text("a O\n")
    assert detect_format(tmp_path / "ner") == "conll"


def test_an_unknown_suffix_names_the_file_and_the_formats(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        detect_format(tmp_path / "data.xlsx")
    message = str(info.value)
    assert "data.xlsx" in message and "'.xlsx'" in message
    assert all(fmt in message for fmt in ("folder", "csv", "jsonl", "parquet", "coco", "conll"))


def test_read_source_checks_the_format_and_the_path(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_text("text,label\nhi,a\n")
    with pytest.raises(ConfigError, match="did you mean 'csv'"):
        read_source(path, "cvs", ReaderOptions())
    with pytest.raises(NotFound, match="nope.csv"):
        read_source(tmp_path / "nope.csv", None, ReaderOptions())
    [record] = read_source(path, "csv", ReaderOptions())
    assert record.fields == {"text": "hi", "category": "a"}


def test_file_system_errors_are_input_errors(tmp_path: Path) -> None:
    (tmp_path / "table.csv").mkdir()  # a folder where a file is expected
    with pytest.raises(InputError, match="table.csv"):
        read_source(tmp_path / "table.csv", "csv", ReaderOptions())


def test_an_unreadable_folder_is_an_input_error(tmp_path: Path) -> None:
    (tmp_path / "pets" / "cat").mkdir(parents=True)
    (tmp_path / "pets" / "cat" / "a.png").write_bytes(b"")
    (tmp_path / "pets" / "cat").chmod(0)
    try:
        if os.access(tmp_path / "pets" / "cat", os.R_OK):
            pytest.skip("running as a user that reads anything (root)")
        with pytest.raises(InputError, match="cat"):
            list(read_source(tmp_path / "pets", None, ReaderOptions()))
    finally:
        (tmp_path / "pets" / "cat").chmod(0o755)


def test_count_hints(tmp_path: Path) -> None:
    csv = tmp_path / "a.csv"
    csv.write_text("text,label\na,x\nb,y\nc,z")  # no newline at the end
    assert count_hint(csv, None) == 3
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_text('{"a": 1}\n{"a": 2}\n')
    assert count_hint(jsonl, "jsonl") == 2
    parquet = tmp_path / "a.parquet"
    pq.write_table(pa.table({"text": ["a"] * 7}), parquet)
    assert count_hint(parquet, None) == 7
    assert count_hint(tmp_path / "missing.csv", None) is None
    assert count_hint(tmp_path / "a.weird", None) is None


def test_split_names() -> None:
    assert [
        normalize_split(s) for s in ("TRAIN", "validation", "valid", "dev", "test", "eval")
    ] == [
        "train",
        "val",
        "val",
        "val",
        "test",
        None,
    ]
    names = [
        "instances_train2017.json",
        "eng-dev.conll",
        "valid.txt",
        "test_b.iob",
        "trainval.json",
        "x.txt",
    ]
    assert [split_from_name(n) for n in names] == ["train", "val", "val", "test", None, None]


def test_confine_refuses_every_way_out(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (tmp_path / "out").mkdir()
    (root / "link").symlink_to(tmp_path / "out", target_is_directory=True)
    (root / "loop").symlink_to(root / "loop")
    assert confine(root, "sub/../a.png") == (root / "a.png").resolve()
    assert confine(root, str(root / "sub" / "b.png")) == (root / "sub" / "b.png").resolve()
    for bad in (
        "../x.png",
        "sub/../../x.png",
        str(tmp_path / "out" / "x.png"),
        "link/x.png",
        "/etc/passwd",
    ):
        with pytest.raises(InputError, match="escapes the source root"):
            confine(root, bad)
    for unusable in ("", "  ", "a\0b.png", "loop/x.png"):
        with pytest.raises(InputError):
            confine(root, unusable)
