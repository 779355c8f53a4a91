"""CoNLL-style BIO files -> one RawRecord per sentence (``tokens``, ``tags``, ``text``).

One token per line, the token first and the tag last, separated by whitespace
(middle columns such as CoNLL-2003's POS and chunk tags are ignored); a blank line
ends a sentence; ``-DOCSTART-`` lines are skipped. Tags follow IOB1, IOB2 or IOBES:
``O``, ``B-TYPE``, ``I-TYPE``, ``E-TYPE``, ``S-TYPE``. An ``I-`` after ``O`` is legal
IOB1; a tag of another shape, or a type outside ``allowed_tags``, is an
``unknown_tag`` problem on the sentence. A line with a single column is a malformed
file. A folder source reads every ``.conll``/``.txt``/``.iob``/``.bio`` file in it,
each file's split taken from its name (``train.txt``, ``dev.txt``/``valid.txt``,
``test.txt``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import IO, Iterator

from aifab.core.errors import FormatError, nearest
from aifab.data.formats import (
    CONLL_SUFFIXES,
    ReaderOptions,
    option_split,
    repair_text,
    split_from_name,
)
from aifab.data.records import RawRecord

_TAG = re.compile(r"^(?:O|[BIES]-(?P<type>\S+))$")
_DOCSTART = "-DOCSTART-"


def read_conll(path: Path, options: ReaderOptions) -> Iterator[RawRecord]:
    """Every sentence of a CoNLL file, or of every CoNLL file in a folder (sorted by name).

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> text = "-DOCSTART- O\\n\\nAda B-PER\\nLovelace I-PER\\nwrote O\\n"
    >>> _ = (d / "train.txt").write_text(text, encoding="utf-8")
    >>> [r] = read_conll(d, ReaderOptions())
    >>> r.source, r.fields["text"], r.fields["tags"], r.split
    ('train.txt:3', 'Ada Lovelace wrote', ['B-PER', 'I-PER', 'O'], 'train')
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(
            (
                p
                for p in path.iterdir()
                if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in CONLL_SUFFIXES
            ),
            key=lambda p: p.name,
        )
        if not files:
            raise FormatError(
                str(path),
                "no CoNLL files in the folder; "
                f"expected files ending in {', '.join(CONLL_SUFFIXES)}",
            )
    else:
        files = [path]
    forced_split = option_split(options)
    allowed = None if options.allowed_tags is None else frozenset(options.allowed_tags)
    return _read_files(files, forced_split, allowed)


def _read_files(
    files: list[Path], forced_split: str | None, allowed: frozenset[str] | None
) -> Iterator[RawRecord]:
    for file in files:
        split = forced_split or split_from_name(file.name)
        count = 0
        with _open_text(file) as f:
            for record in _sentences(file, f, split, allowed):
                count += 1
                yield record
        if count == 0:
            raise FormatError(
                str(file),
                "no sentences; expected one 'token tag' line per token, "
                "a blank line between sentences",
            )


def _open_text(path: Path) -> IO[str]:
    with path.open("rb") as f:
        head = f.read(2)
    if head in (b"\xff\xfe", b"\xfe\xff"):
        raise FormatError(str(path), "the file is UTF-16 encoded; save it as UTF-8")
    # Bad bytes survive as lone surrogates, to be repaired and reported per sentence.
    return path.open(encoding="utf-8-sig", errors="surrogateescape")


def _sentences(
    path: Path, lines: IO[str], split: str | None, allowed: frozenset[str] | None
) -> Iterator[RawRecord]:
    tokens: list[str] = []
    tags: list[str] = []
    problems: list[tuple[str, str]] = []
    start = 0
    for number, line in enumerate(lines, 1):
        columns = line.split()
        if not columns or columns[0] == _DOCSTART:
            if tokens:
                yield _record(path, start, tokens, tags, problems, split)
                tokens, tags, problems = [], [], []
            continue
        if len(columns) == 1:
            raise FormatError(
                str(path),
                f"line has one column ({repair_text(columns[0])[0]!r}); "
                "expected the token first and the tag last",
                line=number,
            )
        if not tokens:
            start = number
        tag = columns[-1]
        problem = _check_tag(tag, allowed)
        if problem:
            problems.append(("unknown_tag", f"line {number}: {problem}"))
        tokens.append(columns[0])
        tags.append(tag)
    if tokens:
        yield _record(path, start, tokens, tags, problems, split)


def _check_tag(tag: str, allowed: frozenset[str] | None) -> str | None:
    """Why ``tag`` is not acceptable, or None."""
    shown = repair_text(tag)[0]
    match = _TAG.match(tag)
    if match is None:
        return f"tag {shown!r} is not O, B-TYPE, I-TYPE, E-TYPE or S-TYPE"
    kind = match.group("type")
    if allowed is None or kind is None or kind in allowed or tag in allowed:
        return None
    hint = nearest(kind, sorted(allowed))
    guess = f"; did you mean {hint!r}?" if hint else ""
    known = ", ".join(sorted(allowed))
    return f"tag {shown!r} has type {repair_text(kind)[0]!r}, not one of {known}{guess}"


def _record(
    path: Path,
    start: int,
    tokens: list[str],
    tags: list[str],
    problems: list[tuple[str, str]],
    split: str | None,
) -> RawRecord:
    repaired_tokens = [repair_text(t) for t in tokens]
    repaired_tags = [repair_text(t) for t in tags]
    if any(bad for _, bad in repaired_tokens + repaired_tags):
        problems = [
            *problems,
            ("invalid_utf8", "tokens are not valid UTF-8; bad bytes replaced with U+FFFD"),
        ]
    clean_tokens = [t for t, _ in repaired_tokens]
    return RawRecord(
        source=f"{repair_text(path.name)[0]}:{start}",
        fields={
            "text": " ".join(clean_tokens),
            "tokens": clean_tokens,
            "tags": [t for t, _ in repaired_tags],
        },
        split=split,
        problems=problems,
    )
