"""Builders of tiny real files for the format reader tests."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest
from PIL import Image


def _png(
    path: Path, size: tuple[int, int] = (4, 3), color: tuple[int, int, int] = (200, 30, 30)
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, format="PNG")
    return path


@pytest.fixture
def write_png() -> Callable[..., Path]:
    """``write_png(path, size=(w, h))`` writes a real PNG (parents created) and returns its path."""
    return _png
