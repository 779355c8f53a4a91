"""Per-text checks: what is a problem, what is ordinary text in any script."""

from __future__ import annotations

import pytest

from aifab.data.texts import repair_text, text_problems

T = 0.3


def checks(text: str, threshold: float = T) -> list[str]:
    return [check for check, _ in text_problems(text, non_printable_fraction=threshold)]


@pytest.mark.parametrize(
    "text",
    [
        "plain ascii, with punctuation!",
        "line one\nline two\r\n\tindented",
        "emoji 😀👍🏽 and a family 👨\u200d👩\u200d👧 (zero-width joiners)",
        "مرحبا بالعالم",  # Arabic, right-to-left
        "\u200fשלום עולם\u200e",  # Hebrew with direction marks
        "你好，世界。こんにちは。안녕하세요",  # CJK with full-width punctuation
        "नमस्ते दुनिया",  # Devanagari with combining marks
        "x",
    ],
)
def test_ordinary_text_in_any_script_has_no_problem(text: str) -> None:
    assert text_problems(text, non_printable_fraction=T) == []


@pytest.mark.parametrize("text", ["", " ", "\n\t \r\n", "\u3000\u2003"])
def test_empty_or_whitespace_only(text: str) -> None:
    assert checks(text) == ["empty_text"]


def test_mostly_control_characters_is_non_printable() -> None:
    problems = text_problems("\x01\x02\x03\x1bab", non_printable_fraction=T)
    assert [c for c, _ in problems] == ["non_printable_text"]
    assert "4 of 6" in problems[0][1]


def test_replacement_characters_and_c1_controls_count() -> None:
    assert checks("\ufffd\ufffd\ufffd\ufffdok") == ["non_printable_text"]
    assert checks("\x85\x9f\x80ab") == ["non_printable_text"]


def test_threshold_is_a_strict_upper_bound() -> None:
    assert checks("\x01\x01\x01abcdefg", threshold=0.3) == []  # exactly 30%
    assert checks("\x01\x01\x01\x01abcdef", threshold=0.3) == ["non_printable_text"]  # 40%


def test_a_few_control_characters_in_long_text_are_fine() -> None:
    assert checks("a normal sentence with one bell\x07 character in it") == []


def test_lone_surrogates_from_surrogateescape_are_invalid_utf8() -> None:
    text = b"caf\xe9 au lait \xff\xfe ok".decode("utf-8", "surrogateescape")
    problems = text_problems(text, non_printable_fraction=T)
    assert [c for c, _ in problems] == ["invalid_utf8"]
    assert problems[0][1].startswith("3 bytes")


def test_binary_junk_is_both_invalid_and_non_printable() -> None:
    text = bytes(range(128, 256)).decode("utf-8", "surrogateescape") + "ab"
    assert checks(text) == ["invalid_utf8", "non_printable_text"]


def test_repair_replaces_surrogates_and_removes_nul() -> None:
    broken = b"a\x00b \xff".decode("utf-8", "surrogateescape")
    fixed = repair_text(broken)
    assert fixed == "ab \ufffd"
    assert fixed.encode("utf-8") == b"ab \xef\xbf\xbd"


def test_repair_leaves_clean_text_alone() -> None:
    text = "emoji 😀 مرحبا\n你好\t"
    assert repair_text(text) == text
