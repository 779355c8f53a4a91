"""Shared fixtures: tiny real data written to tmp_path. Nothing here needs ../shared or the network."""

from __future__ import annotations

import os

# Tests never reach the network: Hugging Face libraries must load only local files.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import csv
import io
from pathlib import Path

import pytest


def write_png(path: Path, *, seed: int, size: int = 16, mode: str = "L") -> Path:
    """A real, distinct image: a seeded random pattern (so perceptual hashes differ between seeds)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, size=(8, 8), dtype=np.uint8)
    pixels = np.kron(blocks, np.ones((size // 8, size // 8), dtype=np.uint8))
    image = Image.fromarray(pixels, mode="L").convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """An image folder by class with 2 x 12 good images, plus a truncated JPEG, a zero-byte file
    and a text file pretending to be a PNG."""
    root = tmp_path / "images"
    for label, offset in (("cat", 0), ("dog", 100)):
        for i in range(12):
            write_png(root / label / f"{i:02d}.png", seed=offset + i)
    jpeg = io.BytesIO()
    from PIL import Image

    Image.new("RGB", (64, 64), (200, 30, 30)).save(jpeg, format="JPEG")
    (root / "cat" / "truncated.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    (root / "dog" / "empty.png").write_bytes(b"")
    (root / "dog" / "notes.png").write_text("this is not an image")
    return root


@pytest.fixture
def sms_csv(tmp_path: Path) -> Path:
    """A small spam/ham CSV with unicode, an exact duplicate pair and a near-duplicate pair."""
    rows = [("text", "label")]
    for i in range(30):
        rows.append((f"hey are we still meeting at {i} o'clock near the station tonight", "ham"))
    for i in range(12):
        rows.append((f"WINNER!! claim your prize number {i} now, text CLAIM to 8{i}0{i}", "spam"))
    rows.append(("Free entry in 2 a wkly comp to win FA Cup final tkts, text FA to 87121", "spam"))
    rows.append(("Free entry in 2 a wkly comp to win FA Cup final tkts, text FA to 87121", "spam"))
    rows.append(("Café crème at 5? 😊 مرحبا", "ham"))
    path = tmp_path / "sms.csv"
    with open(path, "w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows(rows)
    return path


@pytest.fixture
def workspace(tmp_path: Path):
    from aifab.pipeline.project import Workspace

    ws = Workspace.init(tmp_path / "ws")
    yield ws
    ws.close()
