"""Tables: CSV / TSV, JSON Lines and Parquet -> RawRecords, one per row.

Columns map to record fields (``text``, ``category`` or ``categories``, ``number``,
the image file, the split); every other column goes to ``meta`` as a string, and so
does the image column (the record's ``image`` field becomes the blob's hash, so the
path the user wrote is kept there). Columns named in :class:`ReaderOptions` are
checked against the header before any row is read.

A broken row is a record with a problem (an empty label, a missing image, invalid
UTF-8, NUL bytes); a broken *file* (ragged rows, bad JSON, unreadable CSV quoting)
raises :class:`~aifab.core.errors.FormatError` naming the line.

``line`` is the physical line where the row starts (CSV: line 1 is the header;
JSONL: the line of the object; Parquet: the row index + 1).
"""

from __future__ import annotations

import csv
import json
import math
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Callable, Generator, Iterable, Iterator

from aifab.core.errors import FormatError, InputError, nearest
from aifab.data.formats import (
    SPLIT_ALIASES,
    ReaderOptions,
    normalize_split,
    option_split,
    repair_text,
)
from aifab.data.formats.paths import confine
from aifab.data.records import RawRecord

TEXT_NAMES = ("text", "sentence", "review", "message", "content")
LABEL_NAMES = ("label", "labels", "category", "class", "target")
IMAGE_NAMES = ("image", "image_path", "path", "file", "filename")
TRUTHY = frozenset({"1", "true", "yes", "y", "t"})
FALSY = frozenset({"0", "false", "no", "n", "f", ""})

Problem = tuple[str, str]
# (line, column -> value, problems the row already has)
Row = tuple[int, dict[str, Any], list[Problem]]
RowSource = Callable[[], Iterator[Row]]
CsvRow = tuple[int, list[str], list[Problem]]


@dataclass(frozen=True)
class _Columns:
    """Which header column feeds which record field."""

    text: str | None
    image: str | None
    labels: tuple[str, ...]
    split: str | None
    number: str | None

    def mapped(self) -> frozenset[str]:
        """Columns whose value becomes a record field (the rest, and the image, go to meta)."""
        named = {self.text, self.split, self.number, *self.labels}
        return frozenset(c for c in named if c is not None)


def read_csv(
    path: Path, options: ReaderOptions, *, delimiter: str | None = None
) -> Iterator[RawRecord]:
    """The rows of a CSV file (tab-separated for ``.tsv``/``.tab`` or ``delimiter="\\t"``).

    The header and the named columns are checked now; rows are read as the result is iterated.

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> _ = (d / "a.csv").write_text("review,labels\\ngreat,pos|fun\\nbad,neg\\n", encoding="utf-8")
    >>> [(r.source, r.fields["categories"]) for r in read_csv(d / "a.csv", ReaderOptions())]
    [('a.csv:2', ['pos', 'fun']), ('a.csv:3', ['neg'])]
    """
    path = Path(path)
    if delimiter is None:
        delimiter = "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
    sep = delimiter

    def rows_with_header() -> Generator[CsvRow, None, None]:
        with _open_text(path) as f:
            yield from _csv_rows(path, f, sep)

    with closing(rows_with_header()) as probe:
        first = next(probe, None)
    if first is None:
        raise FormatError(
            str(path), "the file is empty; expected a header line, then one row per record"
        )
    header_line, header_cells, _ = first
    header = _clean_header(path, header_cells, header_line, tidy=True)

    def rows() -> Iterator[Row]:
        source = rows_with_header()
        next(source)  # the header
        for line, cells, problems in source:
            if len(cells) != len(header):
                raise FormatError(
                    str(path), f"row has {len(cells)} fields, header has {len(header)}", line=line
                )
            yield line, dict(zip(header, cells, strict=True)), problems

    return _read_table(path, header, rows, options)


def read_jsonl(path: Path, options: ReaderOptions) -> Iterator[RawRecord]:
    """The objects of a JSON Lines file, one record per non-blank line.

    The first object's keys are the header the named columns are checked against;
    a key missing from a later object reads as empty.

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> _ = (d / "a.jsonl").write_text('{"text": "hi", "label": 1, "lang": "en"}\\n')
    >>> [r] = read_jsonl(d / "a.jsonl", ReaderOptions())
    >>> r.fields["category"], r.fields["meta"]
    ('1', {'lang': 'en'})
    """
    path = Path(path)

    def rows() -> Generator[Row, None, None]:
        with _open_text(path) as f:
            yield from _jsonl_rows(path, f)

    with closing(rows()) as probe:
        first = next(probe, None)
    if first is None:
        raise FormatError(str(path), "the file is empty; expected one JSON object per line")
    header = _clean_header(path, list(first[1]), first[0])
    return _read_table(path, header, rows, options)


def read_parquet(path: Path, options: ReaderOptions) -> Iterator[RawRecord]:
    """The rows of a Parquet file, read in batches (``line`` is the row index + 1).

    >>> import tempfile, pyarrow as pa, pyarrow.parquet as pq
    >>> d = Path(tempfile.mkdtemp())
    >>> pq.write_table(pa.table({"text": ["hi"], "label": ["greet"]}), d / "a.parquet")
    >>> [(r.source, r.fields["category"]) for r in read_parquet(d / "a.parquet", ReaderOptions())]
    [('a.parquet:1', 'greet')]
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    arrow_errors = (pa.ArrowException, OSError, ValueError)
    try:
        header = list(pq.ParquetFile(path).schema_arrow.names)
    except arrow_errors as exc:
        raise FormatError(str(path), f"not a readable Parquet file: {exc}") from exc
    header = _clean_header(path, header, None)

    def rows() -> Iterator[Row]:
        line = 0
        try:
            with pq.ParquetFile(path) as parquet:
                for batch in parquet.iter_batches(batch_size=1024):
                    for values in batch.to_pylist():
                        line += 1
                        yield line, values, []
        except arrow_errors as exc:
            raise FormatError(
                str(path), f"cannot read the Parquet data: {exc}", line=line + 1
            ) from exc

    return _read_table(path, header, rows, options)


# --- reading rows -------------------------------------------------------------------------


def _open_text(path: Path) -> IO[str]:
    """Open a text table: UTF-8 (BOM stripped), bad bytes kept as lone surrogates to be flagged."""
    with path.open("rb") as f:
        head = f.read(2)
    if head in (b"\xff\xfe", b"\xfe\xff"):
        raise FormatError(str(path), "the file is UTF-16 encoded; save it as UTF-8")
    return path.open(encoding="utf-8-sig", errors="surrogateescape", newline="")


def _csv_rows(path: Path, f: IO[str], delimiter: str) -> Iterator[CsvRow]:
    """Non-blank CSV rows as (first line, cells, problems); NUL bytes are removed and reported."""
    nul_lines: list[int] = []

    def without_nul(lines: Iterable[str]) -> Iterator[str]:
        # Python 3.11's csv raises "line contains NUL"; one stray byte must not sink the file.
        for number, line in enumerate(lines, 1):
            if "\0" in line:
                nul_lines.append(number)
                line = line.replace("\0", "")
            yield line

    reader = csv.reader(without_nul(f), delimiter=delimiter)
    end = 0
    try:
        for cells in reader:
            start, end = end + 1, reader.line_num
            problems: list[Problem] = []
            if nul_lines and nul_lines[0] <= end:
                problems.append(("non_printable_text", "NUL bytes removed"))
                nul_lines[:] = [n for n in nul_lines if n > end]
            if cells:  # a blank line
                yield start, cells, problems
    except csv.Error as exc:
        if "field larger than field limit" in str(exc):
            # Python's csv module caps a field (process-wide setting; we leave it alone).
            limit = csv.field_size_limit()
            raise FormatError(
                str(path),
                f"a field is longer than {limit} characters, the CSV reader's limit; "
                "put very long texts in a JSONL or Parquet file",
                line=reader.line_num,
            ) from exc
        raise FormatError(str(path), f"not valid CSV: {exc}", line=reader.line_num) from exc


def _jsonl_rows(path: Path, f: IO[str]) -> Iterator[Row]:
    for line, text in enumerate(f, 1):
        if not text.strip():
            continue
        try:
            # strict=False: raw tabs and control characters inside strings are common
            # in hand-made files; the data gate judges non-printable text.
            value = json.loads(text, strict=False)
        except json.JSONDecodeError as exc:
            raise FormatError(
                str(path), f"invalid JSON: {exc.msg} (column {exc.colno})", line=line
            ) from exc
        except (ValueError, RecursionError) as exc:
            raise FormatError(str(path), f"invalid JSON: {exc}", line=line) from exc
        if not isinstance(value, dict):
            raise FormatError(
                str(path), f"expected a JSON object, got {_json_type(value)}", line=line
            )
        yield line, value, []


def _clean_header(
    path: Path, names: list[Any], line: int | None, *, tidy: bool = False
) -> list[str]:
    """The header as column names; ``tidy`` (CSV: rows are keyed by it) strips and repairs them."""
    header = [repair_text(str(name).strip())[0] if tidy else str(name) for name in names]
    seen: set[str] = set()
    for name in header:
        if name in seen:
            raise FormatError(str(path), f"column {name!r} appears twice in the header", line=line)
        seen.add(name)
    return header


# --- columns ------------------------------------------------------------------------------


def _resolve_columns(path: Path, header: list[str], options: ReaderOptions) -> _Columns:
    def named(option: str, column: str) -> str:
        if column in header:
            return column
        hint = nearest(column, header)
        guess = f"; did you mean {hint!r}?" if hint else "."
        raise FormatError(
            str(path),
            f"no column {column!r} (option {option}){guess} The header has: {', '.join(header)}",
        )

    def usual(role: str, option: str, names: tuple[str, ...]) -> str | None:
        found = [c for c in header if c.lower() in names]
        if len(found) > 1:
            raise FormatError(
                str(path),
                f"several columns could be the {role} ({', '.join(found)}); name one with {option}",
            )
        return found[0] if found else None

    text = (
        named("text_column", options.text_column)
        if options.text_column
        else usual("text", "text_column", TEXT_NAMES)
    )
    image = (
        named("image_column", options.image_column)
        if options.image_column
        else usual("image", "image_column", IMAGE_NAMES)
    )
    if options.label_columns:
        labels = tuple(named("label_columns", c) for c in options.label_columns)
    else:
        label = usual("label", "label_columns", LABEL_NAMES)
        labels = (label,) if label else ()
    number = named("number_column", options.number_column) if options.number_column else None
    if options.id_column:
        named("id_column", options.id_column)
    if options.split_column in header:
        split: str | None = options.split_column
    elif options.split_column != ReaderOptions.split_column:
        split = named("split_column", options.split_column)
    else:
        split = None
    columns = _Columns(text=text, image=image, labels=labels, split=split, number=number)
    used = [c for c in (text, image, number, split) if c] + list(labels)
    clash = {c for c in used if used.count(c) > 1}
    if clash:
        raise FormatError(
            str(path),
            f"column {sorted(clash)[0]!r} is named for two roles; each column has one role",
        )
    return columns


def _is_multi_label(rows: Iterator[Row], column: str, separator: str) -> bool:
    """Whether any cell of the label column holds several labels (``a|b`` or a JSON list)."""
    return any(_cell_is_multi(values.get(column), separator) for _, values, _ in rows)


def _cell_is_multi(value: Any, separator: str) -> bool:
    if isinstance(value, (list, tuple)):
        return True
    if not isinstance(value, str):
        return False
    stripped = value.strip()
    return bool(separator and separator in stripped) or _json_list(stripped) is not None


# --- rows -> records ----------------------------------------------------------------------


def _read_table(
    path: Path, header: list[str], rows: RowSource, options: ReaderOptions
) -> Iterator[RawRecord]:
    """Check the columns now; return the generator that turns rows into records."""
    columns = _resolve_columns(path, header, options)
    default_split = option_split(options)
    image_root = Path(options.image_root) if options.image_root is not None else path.parent
    return _records(path, columns, rows, options, default_split, image_root)


def _records(
    path: Path,
    columns: _Columns,
    rows: RowSource,
    options: ReaderOptions,
    default_split: str | None,
    image_root: Path,
) -> Iterator[RawRecord]:
    # Whether one label column is multi-label is a property of the column, not the
    # cell: a row with the single label "a" in a multi-label file means ["a"].
    # Deciding it costs one extra pass over the rows.
    multi = len(columns.labels) == 1 and _is_multi_label(
        rows(), columns.labels[0], options.label_separator
    )
    count = 0
    for line, values, problems in rows():
        count += 1
        yield _record(
            path, line, values, list(problems), columns, options, multi, default_split, image_root
        )
    if count == 0:
        raise FormatError(str(path), "the file has a header but no rows")


def _record(
    path: Path,
    line: int,
    values: dict[str, Any],
    problems: list[Problem],
    columns: _Columns,
    options: ReaderOptions,
    multi: bool,
    default_split: str | None,
    image_root: Path,
) -> RawRecord:
    fields: dict[str, Any] = {}
    if columns.text is not None:
        # A null text is an empty text: the data gate reports it as such.
        fields["text"] = _cell_str(values.get(columns.text)) or ""
    if len(columns.labels) > 1:
        fields["categories"] = _one_hot(values, columns.labels, problems)
    elif columns.labels:
        _label(
            values.get(columns.labels[0]),
            columns.labels[0],
            multi,
            options.label_separator,
            fields,
            problems,
        )
    if columns.number is not None:
        number = _number(values.get(columns.number), columns.number, problems)
        if number is not None:
            fields["number"] = number
    image_path = None
    if columns.image is not None:
        image_path = _image(values.get(columns.image), columns.image, image_root, problems)
    split = default_split
    if columns.split is not None:
        split = _split(path, line, columns.split, values.get(columns.split)) or default_split
    mapped = columns.mapped()
    meta = {key: _cell_str(value) or "" for key, value in values.items() if key not in mapped}
    if meta:
        fields["meta"] = meta
    _clean_strings(fields, problems)
    return RawRecord(
        source=f"{path.name}:{line}",
        fields=fields,
        image_path=image_path,
        split=split,
        problems=problems,
    )


def _label(
    value: Any,
    column: str,
    multi: bool,
    separator: str,
    fields: dict[str, Any],
    problems: list[Problem],
) -> None:
    if value is None or (isinstance(value, str) and not value.strip()):
        problems.append(("missing_label", f"column {column!r} is empty"))
        return
    if not multi:
        fields["category"] = (_cell_str(value) or "").strip()
        return
    items: list[str | None]
    if isinstance(value, (list, tuple)):
        items = [_cell_str(v) for v in value]
    else:
        text = (_cell_str(value) or "").strip()
        parsed = _json_list(text)
        if parsed is not None:
            items = [_cell_str(v) for v in parsed]
        elif separator:
            items = list(text.split(separator))
        else:
            items = [text]
    labels = [item.strip() for item in items if item is not None and item.strip()]
    fields["categories"] = list(dict.fromkeys(labels))  # de-duplicated, order kept


def _one_hot(
    values: dict[str, Any], columns: tuple[str, ...], problems: list[Problem]
) -> list[str]:
    chosen = []
    for column in columns:
        value = values.get(column)
        flag: bool | None
        if value is None or isinstance(value, bool):
            flag = bool(value)
        elif isinstance(value, (int, float)):
            flag = True if value == 1 else False if value == 0 else None
        else:
            word = str(value).strip().lower()
            flag = True if word in TRUTHY else False if word in FALSY else None
        if flag is None:
            problems.append(
                (
                    "missing_label",
                    f"column {column!r} holds {_cell_str(value)!r}; "
                    "expected 1/0, true/false or yes/no",
                )
            )
        elif flag:
            chosen.append(column)
    return chosen


def _number(value: Any, column: str, problems: list[Problem]) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        problems.append(("missing_label", f"column {column!r} is empty"))
        return None
    try:
        if isinstance(value, bool):
            raise ValueError
        number = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError, OverflowError):
        problems.append(
            ("missing_label", f"column {column!r} holds {_cell_str(value)!r}, not a number")
        )
        return None
    if not math.isfinite(number):
        problems.append(("missing_label", f"column {column!r} holds {number}, not a finite number"))
        return None
    return number


def _image(value: Any, column: str, root: Path, problems: list[Problem]) -> Path | None:
    name = _cell_str(value)
    if name is None or not name.strip():
        problems.append(("missing_file", f"column {column!r} is empty"))
        return None
    name = name.strip()
    try:
        target = confine(root, name)
        exists = target.is_file()
    except InputError as exc:
        problems.append(("missing_file", exc.message))
        return None
    except OSError as exc:  # e.g. a name longer than the file system allows
        problems.append(
            ("missing_file", f"{repair_text(name)[0]} cannot be opened: {exc.strerror}")
        )
        return None
    if not exists:
        problems.append(("missing_file", f"{repair_text(name)[0]} does not exist under {root}"))
        return None
    return target


def _split(path: Path, line: int, column: str, value: Any) -> str | None:
    text = _cell_str(value)
    if text is None or not text.strip():
        return None
    split = normalize_split(text)
    if split is None:
        names = ", ".join(sorted(SPLIT_ALIASES))
        raise FormatError(
            str(path),
            f"split {repair_text(text)[0]!r} is not one of {names}",
            line=line,
            field=column,
        )
    return split


def _clean_strings(fields: dict[str, Any], problems: list[Problem]) -> None:
    """Repair invalid UTF-8 and drop NUL bytes in every string field, reporting each once."""
    bad_utf8: list[str] = []
    had_nul = False

    def clean(name: str, value: str) -> str:
        nonlocal had_nul
        if "\0" in value:
            had_nul = True
            value = value.replace("\0", "")
        value, repaired = repair_text(value)
        if repaired and name not in bad_utf8:
            bad_utf8.append(name)
        return value

    for name, value in list(fields.items()):
        if isinstance(value, str):
            fields[name] = clean(name, value)
        elif name == "categories":
            fields[name] = [clean(name, v) for v in value]
        elif name == "meta":
            fields[name] = {clean("meta", k): clean("meta", v) for k, v in value.items()}
    if bad_utf8:
        problems.append(
            (
                "invalid_utf8",
                f"{', '.join(bad_utf8)}: not valid UTF-8; bad bytes replaced with U+FFFD",
            )
        )
    if had_nul and ("non_printable_text", "NUL bytes removed") not in problems:
        problems.append(("non_printable_text", "NUL bytes removed"))


# --- cells --------------------------------------------------------------------------------


def _cell_str(value: Any) -> str | None:
    """A cell as text: JSON scalars as JSON writes them, lists and objects as JSON."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, ensure_ascii=False, default=str)
    return str(value)


def _json_list(text: str) -> list[Any] | None:
    if not text.startswith("["):
        return None
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, list) else None


def _json_type(value: Any) -> str:
    names = {
        list: "an array",
        str: "a string",
        bool: "a boolean",
        int: "a number",
        float: "a number",
    }
    return names.get(type(value), "null")
