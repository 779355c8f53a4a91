"""Per-text checks of the data gate, and the repair applied to every stored text.

They run once per record over millions of texts, so each check is one precompiled
regular expression scanned in C, never a Python loop over characters. Problems are
``(check, message)`` pairs named after :class:`~aifab.core.config.ChecksConfig` fields.

* ``empty_text``: empty or only whitespace (then nothing else is checked);
* ``invalid_utf8``: lone surrogates, which is how ``errors="surrogateescape"`` keeps
  bytes that are not UTF-8 (one surrogate per bad byte);
* ``non_printable_text``: more than a fraction of the characters are control characters
  (other than tab, newline, carriage return), U+FFFD replacement characters or lone
  surrogates: binary junk or a file read with the wrong encoding.

Emoji, right-to-left scripts, CJK and format characters (zero-width joiners, direction
marks) are ordinary text.

>>> text_problems("hello 👋 مرحبا 你好", non_printable_fraction=0.3)
[]
>>> text_problems("   ", non_printable_fraction=0.3)
[('empty_text', 'text is only whitespace (3 characters)')]
"""

from __future__ import annotations

import re

from aifab.core.errors import InputError

# C0 controls except \t \n \r, DEL, C1 controls, the replacement character, lone surrogates.
_NON_PRINTABLE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ufffd\ud800-\udfff]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def text_problems(text: str, *, non_printable_fraction: float) -> list[tuple[str, str]]:
    """The problems of one text as ``(check, message)`` pairs; ``[]`` for a clean text.

    >>> text_problems("caf\\udce9", non_printable_fraction=0.5)
    [('invalid_utf8', '1 byte is not valid UTF-8 (kept as a lone surrogate; stored as U+FFFD)')]
    >>> text_problems("\\x00\\x01\\x02ab", non_printable_fraction=0.3)[0][0]
    'non_printable_text'
    """
    if not text or text.isspace():
        what = "empty" if not text else f"only whitespace ({len(text)} characters)"
        return [("empty_text", f"text is {what}")]
    if _NON_PRINTABLE.search(text) is None:  # the common case: one scan, nothing found
        return []
    problems: list[tuple[str, str]] = []
    surrogates = len(_SURROGATE.findall(text))
    if surrogates:
        noun = "byte is" if surrogates == 1 else "bytes are"
        problems.append(
            (
                "invalid_utf8",
                f"{surrogates} {noun} not valid UTF-8 (kept as a lone surrogate; stored as U+FFFD)",
            )
        )
    bad = len(_NON_PRINTABLE.findall(text))
    share = bad / len(text)
    if share > non_printable_fraction:
        problems.append(
            (
                "non_printable_text",
                f"{bad} of {len(text)} characters ({share:.0%}) are control or replacement "
                f"characters; at most {non_printable_fraction:.0%} are allowed",
            )
        )
    return problems


def check_unicode(text: str, *, where: str) -> str:
    """``text`` when it can be encoded as UTF-8; InputError naming ``where`` when it holds a lone
    surrogate (what a byte that is not UTF-8 becomes in a command-line argument, or a ``\\udXXX``
    escape in JSON). Predictions refuse such input rather than guess; ingest repairs and reports it.

    >>> check_unicode("héllo 👋", where="instances[0]")
    'héllo 👋'
    >>> check_unicode("caf\\udce9", where="instances[0]")
    Traceback (most recent call last):
    ...
    aifab.core.errors.InputError: instances[0]: not valid UTF-8 text (an unpaired surrogate U+DCE9 at character 3)
    """
    bad = _SURROGATE.search(text)
    if bad is None:
        return text
    raise InputError(
        f"{where}: not valid UTF-8 text (an unpaired surrogate U+{ord(bad.group()):04X} at character {bad.start()})"
    )


def repair_text(text: str) -> str:
    """The text as stored: lone surrogates become U+FFFD and NUL characters are removed.

    The result is always encodable as UTF-8 (Parquet, JSON and tokenizers need that).

    >>> repair_text("a\\x00b\\udcff")
    'ab\\ufffd'
    """
    if "\x00" in text:
        text = text.replace("\x00", "")
    return _SURROGATE.sub("\ufffd", text)
