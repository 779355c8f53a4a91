"""The examples in the docstrings of aifab.models run and print what they claim."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["heads", "vision", "text", "tokenizer", "pretrained", "build"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name: str) -> None:
    module = importlib.import_module(f"aifab.models.{name}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0, f"aifab.models.{name} has no examples"
    assert result.failed == 0
