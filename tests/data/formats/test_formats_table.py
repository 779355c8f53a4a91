"""CSV / TSV / JSONL / Parquet readers: field mapping, line numbers, broken rows and files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from aifab.core.errors import ConfigError, FormatError
from aifab.data.formats import ReaderOptions, read_source
from aifab.data.formats.table import read_csv, read_jsonl, read_parquet


def write(path: Path, content: str | bytes) -> Path:
    if isinstance(content, str):
        content = content.encode("utf-8")
    path.write_bytes(content)
    return path


def checks(record) -> list[str]:
    return [check for check, _ in record.problems]


# --- text and encodings -------------------------------------------------------------------


def test_unicode_emoji_and_right_to_left_text_survive_exactly(tmp_path: Path) -> None:
    texts = ["café 👋🏽 naïve", "مرحبا بالعالم", "שלום עולם", "日本語のテキスト", "a\u200fb"]
    lines = ["text,label"] + [f'"{t}",x' for t in texts]
    path = write(tmp_path / "u.csv", "\n".join(lines) + "\n")
    records = list(read_csv(path, ReaderOptions()))
    assert [r.fields["text"] for r in records] == texts
    assert [r.source for r in records] == [f"u.csv:{n}" for n in range(2, 7)]
    assert all(r.problems == [] for r in records)


def test_quoted_newlines_keep_the_line_numbers_of_later_rows(tmp_path: Path) -> None:
    path = write(tmp_path / "m.csv", 'text,label\n"two\nlines",a\nnext,b\r\nlast,c')
    records = list(read_csv(path, ReaderOptions()))
    assert [(r.source, r.fields["text"]) for r in records] == [
        ("m.csv:2", "two\nlines"),
        ("m.csv:4", "next"),
        ("m.csv:5", "last"),
    ]


def test_nul_bytes_are_removed_and_reported_on_their_row_only(tmp_path: Path) -> None:
    path = write(tmp_path / "n.csv", b"text,label\nfine,a\nbro\x00ken,b\x00\nafter,c\n")
    records = list(read_csv(path, ReaderOptions()))
    assert [r.fields["text"] for r in records] == ["fine", "broken", "after"]
    assert records[1].fields["category"] == "b"
    assert [checks(r) for r in records] == [[], ["non_printable_text"], []]
    assert records[1].problems == [("non_printable_text", "NUL bytes removed")]


def test_invalid_utf8_is_repaired_and_reported(tmp_path: Path) -> None:
    path = write(tmp_path / "b.csv", b"text,label\ncaf\xe9 au lait,a\nok,b\n")
    first, second = read_csv(path, ReaderOptions())
    assert first.fields["text"] == "caf\ufffd au lait"
    assert checks(first) == ["invalid_utf8"] and "text" in first.problems[0][1]
    assert second.problems == []
    # Every string that leaves the reader can be stored as UTF-8.
    first.fields["text"].encode("utf-8")


def test_invalid_utf8_in_a_label_or_meta_cell_is_repaired_too(tmp_path: Path) -> None:
    path = write(tmp_path / "b.csv", b"text,label,note\nhi,sp\xffam,x\xfe\n")
    [record] = read_csv(path, ReaderOptions())
    assert record.fields["category"] == "sp\ufffdam"
    assert record.fields["meta"] == {"note": "x\ufffd"}
    assert checks(record) == ["invalid_utf8"]
    assert "category" in record.problems[0][1] and "meta" in record.problems[0][1]


def test_a_utf8_bom_is_stripped_from_the_header(tmp_path: Path) -> None:
    path = write(tmp_path / "bom.csv", "\ufefftext,label\nhello,a\n")
    [record] = read_csv(path, ReaderOptions())
    assert record.fields["text"] == "hello"
    assert "meta" not in record.fields  # the BOM did not make "\ufefftext" an unknown column


def test_a_utf16_file_is_refused_with_the_encoding_named(tmp_path: Path) -> None:
    path = write(tmp_path / "w.csv", "text,label\nhi,a\n".encode("utf-16"))
    with pytest.raises(FormatError, match="UTF-16"):
        read_csv(path, ReaderOptions())


# --- broken files -------------------------------------------------------------------------


def test_an_empty_file_is_a_format_error(tmp_path: Path) -> None:
    path = write(tmp_path / "e.csv", "")
    with pytest.raises(FormatError, match="empty") as info:
        read_csv(path, ReaderOptions())
    assert info.value.path == str(path)


def test_a_header_without_rows_is_a_format_error(tmp_path: Path) -> None:
    path = write(tmp_path / "h.csv", "text,label\n\n")
    with pytest.raises(FormatError, match="no rows"):
        list(read_csv(path, ReaderOptions()))


@pytest.mark.parametrize(("row", "n"), [("x,a,extra", 3), ("x", 1)])
def test_a_ragged_row_names_its_line(tmp_path: Path, row: str, n: int) -> None:
    path = write(tmp_path / "r.csv", f"text,label\nfine,a\n\n{row}\nlater,b\n")
    with pytest.raises(FormatError) as info:
        list(read_csv(path, ReaderOptions()))
    assert info.value.line == 4
    assert f"row has {n} fields, header has 2" in str(info.value)
    assert str(path) in str(info.value)


def test_blank_lines_are_skipped_not_ragged(tmp_path: Path) -> None:
    path = write(tmp_path / "bl.csv", "text,label\n\nhi,a\n\n\nho,b\n")
    assert [r.source for r in read_csv(path, ReaderOptions())] == ["bl.csv:3", "bl.csv:6"]


def test_a_missing_named_column_names_the_nearest_before_reading_rows(tmp_path: Path) -> None:
    # The rows are ragged: if the reader touched them first, the error would be about them.
    path = write(tmp_path / "c.csv", "sentence,label\nx,a,b,c\n")
    with pytest.raises(FormatError) as info:
        read_csv(path, ReaderOptions(text_column="sentense"))
    message = str(info.value)
    assert "'sentense'" in message and "did you mean 'sentence'" in message
    with pytest.raises(FormatError, match="'lable'.*did you mean 'label'"):
        read_csv(path, ReaderOptions(label_columns=("lable",)))


def test_a_missing_id_column_is_an_error_and_a_present_one_stays_in_meta(tmp_path: Path) -> None:
    path = write(tmp_path / "i.csv", "uid,text,label\n17,hi,a\n")
    with pytest.raises(FormatError, match="'id'"):
        read_csv(path, ReaderOptions(id_column="id"))
    [record] = read_csv(path, ReaderOptions(id_column="uid"))
    assert record.fields["meta"] == {"uid": "17"}


def test_two_candidate_text_columns_must_be_chosen_between(tmp_path: Path) -> None:
    path = write(tmp_path / "a.csv", "text,review,label\nx,y,a\n")
    with pytest.raises(FormatError, match="text, review"):
        read_csv(path, ReaderOptions())
    [record] = read_csv(path, ReaderOptions(text_column="review"))
    assert record.fields["text"] == "y" and record.fields["meta"] == {"text": "x"}


def test_duplicate_header_names_are_a_format_error(tmp_path: Path) -> None:
    path = write(tmp_path / "d.csv", "text,text,label\nx,y,a\n")
    with pytest.raises(FormatError, match="appears twice"):
        read_csv(path, ReaderOptions())


# --- labels -------------------------------------------------------------------------------


def test_single_label_and_an_empty_label_cell(tmp_path: Path) -> None:
    path = write(tmp_path / "s.csv", "message,category,lang\nhi, ham ,en\nyo,,fr\n")
    first, second = read_csv(path, ReaderOptions())
    assert first.fields == {"text": "hi", "category": "ham", "meta": {"lang": "en"}}
    assert "category" not in second.fields
    assert second.problems == [("missing_label", "column 'category' is empty")]


def test_multi_label_cells_by_separator_and_by_json_list(tmp_path: Path) -> None:
    path = write(
        tmp_path / "ml.csv",
        'text,labels\na,sports|news\nb,news\nc,"[""tech"", ""news"", ""tech""]"\nd,[]\n',
    )
    records = list(read_csv(path, ReaderOptions()))
    # "news" alone is a one-label list: the column is multi-label, not that one cell.
    assert [r.fields["categories"] for r in records] == [
        ["sports", "news"],
        ["news"],
        ["tech", "news"],
        [],
    ]
    assert all("category" not in r.fields for r in records)


def test_a_custom_separator_and_no_splitting(tmp_path: Path) -> None:
    path = write(tmp_path / "sep.csv", "text,label\na,x;y\nb,p|q\n")
    records = list(read_csv(path, ReaderOptions(label_separator=";")))
    assert [r.fields["categories"] for r in records] == [["x", "y"], ["p|q"]]
    records = list(read_csv(path, ReaderOptions(label_separator="")))
    assert [r.fields["category"] for r in records] == ["x;y", "p|q"]


def test_multi_label_one_hot_columns(tmp_path: Path) -> None:
    path = write(
        tmp_path / "oh.csv",
        "text,toxic,obscene,insult\na,1,0,yes\nb,0,false,\nc,TRUE,y,t\nd,maybe,1,0\n",
    )
    options = ReaderOptions(label_columns=("toxic", "obscene", "insult"))
    records = list(read_csv(path, options))
    assert [r.fields["categories"] for r in records] == [
        ["toxic", "insult"],
        [],
        ["toxic", "obscene", "insult"],
        ["obscene"],
    ]
    assert [checks(r) for r in records] == [[], [], [], ["missing_label"]]
    assert "'toxic'" in records[3].problems[0][1] and "'maybe'" in records[3].problems[0][1]


def test_number_column(tmp_path: Path) -> None:
    path = write(tmp_path / "n.csv", "text,price\na, 3.5\nb,abc\nc,nan\nd,\n")
    records = list(read_csv(path, ReaderOptions(number_column="price")))
    assert records[0].fields["number"] == 3.5 and records[0].problems == []
    assert [checks(r) for r in records[1:]] == [["missing_label"]] * 3
    assert all("number" not in r.fields for r in records[1:])


# --- splits -------------------------------------------------------------------------------


def test_split_column_aliases_are_normalised(tmp_path: Path) -> None:
    values = ["train", "validation", "Valid", "dev", " VAL ", "test", "testing", ""]
    rows = "".join(f"t{i},a,{v}\n" for i, v in enumerate(values))
    path = write(tmp_path / "sp.csv", "text,label,split\n" + rows)
    splits = [r.split for r in read_csv(path, ReaderOptions())]
    assert splits == ["train", "val", "val", "val", "val", "test", "test", None]
    # The option fills in where the data names no split, and never overrides it.
    splits = [r.split for r in read_csv(path, ReaderOptions(split="train"))]
    assert splits == ["train", "val", "val", "val", "val", "test", "test", "train"]


def test_an_unknown_split_value_names_line_and_field(tmp_path: Path) -> None:
    path = write(tmp_path / "sp.csv", "text,label,fold\na,x,train\nb,x,holdout\n")
    with pytest.raises(FormatError) as info:
        list(read_csv(path, ReaderOptions(split_column="fold")))
    assert info.value.line == 3 and info.value.field == "fold" and "'holdout'" in str(info.value)


def test_a_named_split_column_must_exist(tmp_path: Path) -> None:
    path = write(tmp_path / "sp.csv", "text,label\na,x\n")
    with pytest.raises(FormatError, match="'fold'"):
        read_csv(path, ReaderOptions(split_column="fold"))
    with pytest.raises(ConfigError, match="'split'"):
        read_csv(path, ReaderOptions(split="holdout"))


# --- image paths --------------------------------------------------------------------------


def test_image_paths_are_resolved_and_confined(tmp_path: Path, write_png) -> None:
    root = tmp_path / "data"
    good = write_png(root / "images" / "a.png")
    outside = write_png(tmp_path / "secret.png")
    (root / "images" / "link.png").symlink_to(outside)
    rows = [
        "image,label",
        "images/a.png,cat",
        "../secret.png,cat",
        f"{outside},cat",
        "images/link.png,cat",
        "images/nope.png,cat",
        ",cat",
        f"{good},cat",
    ]
    path = write(root / "t.csv", "\n".join(rows) + "\n")
    records = list(read_csv(path, ReaderOptions()))
    assert records[0].image_path == good.resolve() and records[0].problems == []
    for r in records[1:4]:
        assert r.image_path is None
        assert checks(r) == ["missing_file"] and "escapes the source root" in r.problems[0][1]
    assert records[4].image_path is None and "does not exist" in records[4].problems[0][1]
    assert checks(records[5]) == ["missing_file"]
    assert records[6].image_path == good.resolve() and records[6].problems == []
    assert records[0].fields["meta"] == {"image": "images/a.png"}  # the path as written is kept


def test_image_root_option(tmp_path: Path, write_png) -> None:
    pics = tmp_path / "pics"
    write_png(pics / "a.png")
    (tmp_path / "tables").mkdir()
    path = write(tmp_path / "tables" / "t.csv", "file,class\na.png,cat\n")
    [record] = read_csv(path, ReaderOptions(image_root=pics))
    assert record.image_path == (pics / "a.png").resolve() and record.fields["category"] == "cat"
    [record] = read_csv(path, ReaderOptions())  # relative to the table's folder, where it is not
    assert checks(record) == ["missing_file"]


# --- TSV, JSONL, Parquet ------------------------------------------------------------------


def test_tsv_by_suffix_and_by_format(tmp_path: Path) -> None:
    content = 'text\tlabel\nsaid "hi", twice\tgreet\n'
    [record] = read_source(write(tmp_path / "a.tsv", content), None, ReaderOptions())
    assert record.fields == {"text": 'said "hi", twice', "category": "greet"}
    [record] = read_source(write(tmp_path / "a.txt", content), "tsv", ReaderOptions())
    assert record.fields["category"] == "greet"


def test_jsonl_values_lines_and_labels(tmp_path: Path) -> None:
    lines = [
        '{"text": "a", "label": 1, "score": 0.5, "tags": ["x"]}',
        "",
        '{"text": "b", "label": null, "extra": true}',
        '{"text": null, "label": "z"}',
    ]
    path = write(tmp_path / "a.jsonl", "\n".join(lines) + "\n")
    records = list(read_jsonl(path, ReaderOptions()))
    assert [r.source for r in records] == ["a.jsonl:1", "a.jsonl:3", "a.jsonl:4"]
    assert records[0].fields == {
        "text": "a",
        "category": "1",
        "meta": {"score": "0.5", "tags": '["x"]'},
    }
    assert checks(records[1]) == ["missing_label"] and records[1].fields["meta"] == {
        "extra": "true"
    }
    assert records[2].fields["text"] == ""  # null text is empty text, for the gate to report


def test_jsonl_list_labels_are_multi_label(tmp_path: Path) -> None:
    path = write(
        tmp_path / "a.jsonl", '{"text": "a", "labels": ["x", "y"]}\n{"text": "b", "labels": "z"}\n'
    )
    assert [r.fields["categories"] for r in read_jsonl(path, ReaderOptions())] == [
        ["x", "y"],
        ["z"],
    ]


def test_jsonl_bad_json_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path / "a.jsonl", '{"text": "a", "label": "x"}\n\n{"text": "b", label: "y"}\n')
    with pytest.raises(FormatError) as info:
        list(read_jsonl(path, ReaderOptions()))
    assert info.value.line == 3 and "invalid JSON" in str(info.value)


def test_jsonl_a_line_that_is_not_an_object(tmp_path: Path) -> None:
    path = write(tmp_path / "a.jsonl", '{"text": "a", "label": "x"}\n["b", "y"]\n')
    with pytest.raises(FormatError, match="expected a JSON object, got an array") as info:
        list(read_jsonl(path, ReaderOptions()))
    assert info.value.line == 2


def test_jsonl_invalid_utf8_and_nul_escapes(tmp_path: Path) -> None:
    path = write(
        tmp_path / "a.jsonl",
        b'{"text": "caf\xe9", "label": "x"}\n{"text": "a\\u0000b", "label": "y"}\n',
    )
    first, second = read_jsonl(path, ReaderOptions())
    assert first.fields["text"] == "caf\ufffd" and checks(first) == ["invalid_utf8"]
    assert second.fields["text"] == "ab" and checks(second) == ["non_printable_text"]


def test_parquet_rows_batches_and_list_labels(tmp_path: Path) -> None:
    n = 2500  # more than one batch
    table = pa.table(
        {
            "text": [f"t{i}" for i in range(n)],
            "labels": [["a", "b"] if i % 2 else ["c"] for i in range(n)],
            "n": list(range(n)),
        }
    )
    path = tmp_path / "a.parquet"
    pq.write_table(table, path, row_group_size=700)
    records = list(read_parquet(path, ReaderOptions()))
    assert len(records) == n
    assert records[0].source == "a.parquet:1" and records[-1].source == f"a.parquet:{n}"
    assert records[1].fields == {"text": "t1", "categories": ["a", "b"], "meta": {"n": "1"}}
    assert records[2].fields["categories"] == ["c"]


def test_a_corrupt_parquet_file_is_a_format_error(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.parquet", b"PAR1 this is not parquet PAR1")
    with pytest.raises(FormatError, match="Parquet"):
        list(read_parquet(path, ReaderOptions()))


def test_an_empty_parquet_file_is_a_format_error(tmp_path: Path) -> None:
    path = tmp_path / "e.parquet"
    pq.write_table(
        pa.table({"text": pa.array([], pa.string()), "label": pa.array([], pa.string())}), path
    )
    with pytest.raises(FormatError, match="no rows"):
        list(read_parquet(path, ReaderOptions()))


def test_a_table_with_invalid_utf8_file_name_for_an_image(tmp_path: Path, write_png) -> None:
    # A file name that is not UTF-8 on disk, written with the same bytes in the table, is found.
    name = os.fsdecode(b"caf\xe9.png")
    write_png(tmp_path / name)
    path = write(tmp_path / "t.csv", b"image,label\ncaf\xe9.png,x\n")
    [record] = read_csv(path, ReaderOptions())
    assert record.image_path is not None and record.image_path.name == name
    assert checks(record) == ["invalid_utf8"]  # the path kept in meta was repaired
    json.dumps(record.fields, ensure_ascii=False).encode("utf-8")
