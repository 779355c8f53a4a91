"""CoNLL reader: sentences, -DOCSTART-, tag checks, one-column lines, folders of split files."""

from __future__ import annotations

from pathlib import Path

import pytest

from aifab.core.errors import FormatError
from aifab.data.formats import ReaderOptions, read_source
from aifab.data.formats.conll import read_conll

CONLL_2003 = """-DOCSTART- -X- -X- O

EU NNP B-NP B-ORG
rejects VBZ B-VP O
German JJ B-NP B-MISC
call NN I-NP O

Peter NNP B-NP B-PER
Blackburn NNP I-NP I-PER
"""


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return path


def test_sentences_tokens_tags_and_lines(tmp_path: Path) -> None:
    path = write(tmp_path / "eng.conll", CONLL_2003)
    first, second = read_conll(path, ReaderOptions())
    assert first.source == "eng.conll:3" and second.source == "eng.conll:8"
    assert first.fields == {
        "text": "EU rejects German call",
        "tokens": ["EU", "rejects", "German", "call"],
        "tags": ["B-ORG", "O", "B-MISC", "O"],
    }
    assert second.fields["tags"] == ["B-PER", "I-PER"]
    assert first.problems == [] and second.problems == [] and first.split is None


def test_docstart_ends_a_sentence_and_blank_runs_are_one_boundary(tmp_path: Path) -> None:
    path = write(tmp_path / "a.txt", "a O\n-DOCSTART- O\nb O\n\n\n\nc\tB-X\r\n")
    assert [r.fields["tokens"] for r in read_conll(path, ReaderOptions())] == [["a"], ["b"], ["c"]]


def test_tag_schemes_iob1_iob2_iobes_are_accepted(tmp_path: Path) -> None:
    path = write(tmp_path / "a.txt", "x O\ny I-PER\nz I-PER\n\na S-LOC\nb B-ORG\nc E-ORG\n")
    assert all(r.problems == [] for r in read_conll(path, ReaderOptions()))


def test_a_bad_tag_is_an_unknown_tag_problem_with_its_line(tmp_path: Path) -> None:
    path = write(tmp_path / "a.txt", "ok O\n\nJohn B-PER\nlives PER\nhere X-LOC\n")
    first, second = read_conll(path, ReaderOptions())
    assert first.problems == []
    assert second.problems == [
        ("unknown_tag", "line 4: tag 'PER' is not O, B-TYPE, I-TYPE, E-TYPE or S-TYPE"),
        ("unknown_tag", "line 5: tag 'X-LOC' is not O, B-TYPE, I-TYPE, E-TYPE or S-TYPE"),
    ]
    assert second.fields["tags"] == ["B-PER", "PER", "X-LOC"]  # kept as read, for the report


def test_allowed_tags_limit_the_types(tmp_path: Path) -> None:
    path = write(tmp_path / "a.txt", "Ada B-PER\nin O\nParis B-LCO\n")
    [record] = read_conll(path, ReaderOptions(allowed_tags=("PER", "LOC")))
    assert record.problems == [
        (
            "unknown_tag",
            "line 3: tag 'B-LCO' has type 'LCO', not one of LOC, PER; did you mean 'LOC'?",
        )
    ]
    [record] = read_conll(
        path, ReaderOptions(allowed_tags=("B-PER", "B-LCO"))
    )  # full tags work too
    assert record.problems == []


def test_a_one_column_line_is_a_format_error_naming_the_line(tmp_path: Path) -> None:
    path = write(tmp_path / "a.txt", "a O\nb O\n\nlonely\n")
    with pytest.raises(FormatError) as info:
        list(read_conll(path, ReaderOptions()))
    assert info.value.line == 4 and "one column" in str(info.value) and str(path) in str(info.value)


def test_an_empty_file_is_a_format_error(tmp_path: Path) -> None:
    path = write(tmp_path / "a.txt", "\n\n-DOCSTART- O\n\n")
    with pytest.raises(FormatError, match="no sentences"):
        list(read_conll(path, ReaderOptions()))


def test_a_folder_reads_every_file_with_its_split(tmp_path: Path) -> None:
    root = tmp_path / "ner"
    write(root / "train.txt", "a O\n")
    write(root / "dev.txt", "b O\n")
    write(root / "valid.conll", "c O\n")
    write(root / "test.iob", "d O\n")
    write(root / "extra.bio", "e O\n")
    write(root / ".hidden.txt", "not read\n")
    write(root / "notes.md", "not read\n")
    records = list(read_source(root, None, ReaderOptions()))
    assert [(r.source, r.split) for r in records] == [
        ("dev.txt:1", "val"),
        ("extra.bio:1", None),
        ("test.iob:1", "test"),
        ("train.txt:1", "train"),
        ("valid.conll:1", "val"),
    ]


def test_unicode_tokens_and_invalid_utf8(tmp_path: Path) -> None:
    path = write(
        tmp_path / "a.txt",
        "שלום O\n😀 O\n\nbad\xff B-X\n".encode("utf-8").replace(b"\xc3\xbf", b"\xff"),
    )
    first, second = read_conll(path, ReaderOptions())
    assert first.fields["text"] == "שלום 😀" and first.problems == []
    assert second.fields["tokens"] == ["bad\ufffd"] and [c for c, _ in second.problems] == [
        "invalid_utf8"
    ]
