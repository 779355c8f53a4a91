"""Format readers: a user's folder or file -> :class:`~aifab.data.records.RawRecord` s.

One reader per family of formats, each a generator so that a large source streams:

==========  ==============================================  ===================
format      what it reads                                    module
==========  ==============================================  ===================
``folder``  ``root/<label>/*.png`` (optionally under         :mod:`.folder`
            ``train/``, ``val/``, ``test/``)
``csv``     comma-separated (``.tsv``: tab-separated)       :mod:`.table`
``tsv``     tab-separated, whatever the suffix              :mod:`.table`
``jsonl``   one JSON object per line                         :mod:`.table`
``parquet`` a Parquet file (read in batches)                 :mod:`.table`
``coco``    COCO detection JSON (``images``,                 :mod:`.coco`
            ``annotations``, ``categories``)
``conll``   BIO/IOBES token-per-line files, or a folder      :mod:`.conll`
            of them
==========  ==============================================  ===================

A reader raises :class:`~aifab.core.errors.FormatError` only when the *file* is
malformed (a ragged row, bad JSON, a missing column); a broken *record* (an empty
label, an image that is not there, a box outside its image) is yielded with a
``(check, message)`` problem so that the data gate quarantines it with its reason.

>>> import tempfile
>>> d = Path(tempfile.mkdtemp())
>>> _ = (d / "sms.csv").write_text("text,label,split\\nhello,ham,validation\\n", encoding="utf-8")
>>> detect_format(d / "sms.csv")
'csv'
>>> records = read_source(d / "sms.csv", None, ReaderOptions())
>>> [(r.source, r.fields["category"], r.split) for r in records]
[('sms.csv:2', 'ham', 'val')]
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from aifab.core.errors import ConfigError, InputError, NotFound, check_choice

if TYPE_CHECKING:
    from aifab.data.records import RawRecord

FORMATS = ("folder", "csv", "tsv", "jsonl", "parquet", "coco", "conll")
SPLITS = ("train", "val", "test")
# Names people give their splits, lower-cased; each maps to one of SPLITS.
SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "dev": "val",
    "test": "test",
    "testing": "test",
}
CONLL_SUFFIXES = (".conll", ".txt", ".iob", ".bio")
_SUFFIX_FORMATS = {
    ".csv": "csv",
    ".tsv": "csv",
    ".tab": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
    **{suffix: "conll" for suffix in CONLL_SUFFIXES},
}
# A split name inside a file name: ``instances_train2017`` -> train, ``eng-dev`` -> val;
# letters may not touch it (``trainval`` names no split), digits may.
_SURROGATE = re.compile("[\ud800-\udfff]")
_SPLIT_IN_NAME = re.compile(
    r"(?:^|[^a-z])(training|train|validation|valid|val|dev|testing|test)(?=$|[^a-z])"
)


@dataclass(frozen=True)
class ReaderOptions:
    """How to read a source; every field has a default that suits the usual layouts.

    Column fields name table columns; ``None`` means "find the usual name"
    (``text``/``sentence``/``review``/``message``/``content`` for text,
    ``label``/``labels``/``category``/``class``/``target`` for the label,
    ``image``/``image_path``/``path``/``file``/``filename`` for images).
    Several ``label_columns`` are read as a multi-label one-hot table (a truthy
    cell, ``1``/``true``/``yes``/``y``/``t``, means the column's name applies).
    ``label_separator`` splits a multi-label cell such as ``"a|b"`` (``""`` turns
    splitting off). ``split`` is the split of records whose data names none; a split
    column or split folders win over it, and it wins over a split guessed from a file
    name (COCO, CoNLL). ``image_root`` is where table and COCO image paths are
    resolved, and confined (default: the table's or the JSON's folder).

    >>> ReaderOptions(label_columns=("toxic", "obscene")).label_separator
    '|'
    """

    text_column: str | None = None
    image_column: str | None = None
    label_columns: tuple[str, ...] = ()
    split_column: str = "split"
    label_separator: str = "|"
    number_column: str | None = None
    id_column: str | None = None
    allowed_tags: tuple[str, ...] | None = None
    image_root: Path | None = None
    split: str | None = None


def normalize_split(value: str) -> str | None:
    """The canonical split (``train``/``val``/``test``) for a name, or None if it is not one.

    >>> normalize_split(" Validation "), normalize_split("dev"), normalize_split("holdout")
    ('val', 'val', None)
    """
    return SPLIT_ALIASES.get(value.strip().lower())


def split_from_name(name: str) -> str | None:
    """The split a file name names, if any (used for COCO and CoNLL files).

    >>> [split_from_name(n) for n in ("instances_val2017.json", "dev.txt", "trainval.json")]
    ['val', 'val', None]
    """
    stem = Path(name).stem.lower()
    match = _SPLIT_IN_NAME.search(stem)
    return SPLIT_ALIASES[match.group(1)] if match else None


def option_split(options: ReaderOptions) -> str | None:
    """``options.split`` checked and normalised (a ConfigError names the valid ones).

    >>> option_split(ReaderOptions(split="valid"))
    'val'
    """
    if options.split is None:
        return None
    split = normalize_split(options.split)
    if split is None:
        aliases = ", ".join(sorted(SPLIT_ALIASES))
        raise ConfigError(
            f"The 'split' option must be one of {list(SPLITS)} (or {aliases}); "
            f"got {options.split!r}"
        )
    return split


def repair_text(value: str) -> tuple[str, bool]:
    """``value`` with every lone surrogate replaced by U+FFFD, and whether there was one.

    Readers decode with ``errors="surrogateescape"`` so that a file with a few bad
    bytes is still read; each bad byte comes out as a lone surrogate, which cannot be
    stored (Arrow and SQLite want valid UTF-8), so it is repaired here and reported.

    >>> repair_text("caf\\udce9")
    ('caf\ufffd', True)
    """
    repaired = _SURROGATE.sub("\ufffd", value)
    return repaired, repaired != value


def detect_format(path: Path) -> str:
    """The format of ``path``, from its suffix (and, for ``.json``, its top-level keys).

    A directory is an image ``folder``, unless it holds only CoNLL files (no
    subfolders), which makes it ``conll``.

    >>> detect_format(Path("reviews.tsv")), detect_format(Path("ner/train.conll"))
    ('csv', 'conll')
    """
    path = Path(path)
    if path.is_dir():
        return "conll" if _is_conll_dir(path) else "folder"
    suffix = path.suffix.lower()
    if suffix in _SUFFIX_FORMATS:
        return _SUFFIX_FORMATS[suffix]
    if suffix == ".json":
        if not path.exists():
            raise NotFound(f"{path}: no such file or directory")
        if _looks_like_coco(path):
            return "coco"
        raise ConfigError(
            f"{path}: a .json file is read only as COCO "
            "(an object with 'images' and 'annotations'); "
            "for one record per line use .jsonl"
        )
    raise ConfigError(
        f"{path}: cannot tell the format from the suffix {suffix or '(none)'!r}; valid formats are "
        f"{list(FORMATS)} (a folder, .csv, .tsv, .jsonl, .ndjson, .parquet, COCO .json, "
        ".conll, .txt, .iob, .bio); name one with --format"
    )


def read_source(path: Path, fmt: str | None, options: ReaderOptions) -> Iterator[RawRecord]:
    """Every record of a source, read by the reader of ``fmt`` (detected when None).

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> _ = (d / "a.jsonl").write_text('{"text": "hi", "label": "greet"}\\n', encoding="utf-8")
    >>> [r.fields["text"] for r in read_source(d / "a.jsonl", "jsonl", ReaderOptions())]
    ['hi']
    """
    path = Path(path)
    if not path.exists():
        raise NotFound(f"{path}: no such file or directory")
    fmt = detect_format(path) if fmt is None else check_choice("format", fmt, FORMATS)
    try:
        records = _dispatch(path, fmt, options)
    except OSError as exc:
        raise _unreadable(path, exc) from exc
    return _os_errors_as_input_errors(path, records)


def _dispatch(path: Path, fmt: str, options: ReaderOptions) -> Iterator[RawRecord]:
    # Readers are imported here, not at module level: they import this module for
    # ReaderOptions, and each pulls in what only it needs (pyarrow, numpy).
    if fmt == "folder":
        from aifab.data.formats.folder import read_folder

        return read_folder(path, options)
    if fmt in ("csv", "tsv"):
        from aifab.data.formats.table import read_csv

        return read_csv(path, options, delimiter="\t" if fmt == "tsv" else None)
    if fmt == "jsonl":
        from aifab.data.formats.table import read_jsonl

        return read_jsonl(path, options)
    if fmt == "parquet":
        from aifab.data.formats.table import read_parquet

        return read_parquet(path, options)
    if fmt == "coco":
        from aifab.data.formats.coco import read_coco

        return read_coco(path, options)
    from aifab.data.formats.conll import read_conll

    return read_conll(path, options)


def _os_errors_as_input_errors(path: Path, records: Iterator[RawRecord]) -> Iterator[RawRecord]:
    """``records``, with a file system error (a folder not readable, a file that is a
    folder) reported as the user's input problem rather than a crash."""
    try:
        yield from records
    except OSError as exc:
        raise _unreadable(path, exc) from exc


def _unreadable(path: Path, exc: OSError) -> InputError:
    where = exc.filename if exc.filename is not None else path
    return InputError(f"{where}: cannot be read ({exc.strerror or exc})")


def count_hint(path: Path, fmt: str | None) -> int | None:
    """A cheap estimate of how many records ``path`` holds (for a progress bar), or None.

    Never raises: a source that cannot be counted cheaply gives None.

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> _ = (d / "a.csv").write_text("text,label\\nhi,a\\nho,b\\n", encoding="utf-8")
    >>> count_hint(d / "a.csv", None)
    2
    """
    try:
        fmt = detect_format(Path(path)) if fmt is None else fmt
        if fmt == "folder":
            from aifab.data.formats.folder import count_images

            return count_images(Path(path))
        if fmt in ("csv", "tsv"):
            return max(_count_lines(Path(path)) - 1, 0)
        if fmt == "jsonl":
            return _count_lines(Path(path))
        if fmt == "parquet":
            import pyarrow.parquet as pq

            return int(pq.ParquetFile(path).metadata.num_rows)
    except Exception:  # noqa: BLE001 - a hint must never stop the real read from reporting the error
        return None
    return None


def _count_lines(path: Path) -> int:
    """Lines of a text file; a last line without a newline counts."""
    count, last = 0, b"\n"
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            count += chunk.count(b"\n")
            last = chunk[-1:]
    return count + (last != b"\n")


def _is_conll_dir(path: Path) -> bool:
    entries = [p for p in path.iterdir() if not p.name.startswith(".")]
    if any(p.is_dir() for p in entries):
        return False
    return any(p.suffix.lower() in CONLL_SUFFIXES for p in entries)


def _looks_like_coco(path: Path) -> bool:
    """True when the file is a JSON object naming both ``images`` and ``annotations``.

    Scans the bytes rather than parsing: COCO files reach hundreds of megabytes and
    the reader parses them once anyway.
    """
    keys = {b'"images"': False, b'"annotations"': False}
    key_pattern = re.compile(rb'"(images|annotations)"\s*:')
    with path.open("rb") as f:
        head = f.read(1 << 16)
        if not head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"{"):
            return False
        tail = b""
        chunk = head
        while chunk:
            window = tail + chunk
            for match in key_pattern.finditer(window):
                keys[b'"' + match.group(1) + b'"'] = True
            if all(keys.values()):
                return True
            tail = window[-32:]
            chunk = f.read(1 << 20)
    return False
