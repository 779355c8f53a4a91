"""Small real data shared by the training tests (plain functions, fixed seeds; no network).

Also imported by the subprocess of the kill -9 test, so it depends on nothing from pytest.
"""

from __future__ import annotations

import io
import random
from typing import Any

from aifab.core.config import Spec, parse

DIGIT_LABELS = [str(d) for d in range(10)]


def digits(n: int, *, start: int = 0) -> tuple[list[bytes], list[int]]:
    """scikit-learn's bundled 8x8 digits as real grayscale PNG files (bytes) and their digits."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images, numbers = [], []
    for pixels, number in zip(
        bunch.images[start : start + n], bunch.target[start : start + n], strict=True
    ):
        array = np.clip(pixels * (255.0 / 16.0), 0, 255).astype(np.uint8)  # 0..16 -> 0..255
        buf = io.BytesIO()
        Image.fromarray(array, mode="L").save(buf, format="PNG")
        images.append(buf.getvalue())
        numbers.append(int(number))
    return images, numbers


def digit_split(n_train: int, n_val: int) -> dict[str, Any]:
    """Keyword arguments for train_classifier: digits as single-label targets."""
    images, numbers = digits(n_train + n_val)
    return {
        "train_inputs": images[:n_train],
        "train_targets": [str(d) for d in numbers[:n_train]],
        "val_inputs": images[n_train:],
        "val_targets": [str(d) for d in numbers[n_train:]],
        "labels": list(DIGIT_LABELS),
    }


def image_spec(**train: Any) -> Spec:
    settings = {"epochs": 3, "batch_size": 32, "lr": 3e-3, "seed": 0, **train}
    return parse(
        Spec,
        {
            "task": "image-classification",
            "dataset": "digits",
            "model": {"arch": "smallcnn"},
            "train": settings,
        },
    )


_WEATHER_SUBJECTS = ["the morning", "this afternoon", "tonight", "the weekend", "tomorrow"]
_WEATHER = [
    "brings heavy rain",
    "looks cloudy and cold",
    "will be sunny and warm",
    "has strong winds from the north",
    "turns stormy near the coast",
    "stays dry with clear skies",
    "ends with light snow",
    "feels humid after the thunder",
]
_COOKING_SUBJECTS = ["my grandmother", "the chef", "our neighbour", "my brother", "the baker"]
_COOKING = [
    "bakes fresh bread with butter",
    "simmers the tomato soup slowly",
    "roasts vegetables with garlic",
    "fries eggs in olive oil",
    "chops onions for the stew",
    "whisks cream for the cake",
    "grills fish with lemon",
    "boils pasta in salted water",
]
_ENDINGS = ["", " again", " as usual", " they say", " I think"]


def sentences() -> list[tuple[str, str]]:
    """400 short English sentences about the weather or about cooking, shuffled (seed 0)."""
    rows = []
    for subjects, phrases, label in (
        (_WEATHER_SUBJECTS, _WEATHER, "weather"),
        (_COOKING_SUBJECTS, _COOKING, "cooking"),
    ):
        for subject in subjects:
            for phrase in phrases:
                for ending in _ENDINGS:
                    rows.append((f"{subject.capitalize()} {phrase}{ending}.", label))
    random.Random(0).shuffle(rows)
    return rows


def text_split(n_train: int, n_val: int) -> dict[str, Any]:
    rows = sentences()
    train, val = rows[:n_train], rows[n_train : n_train + n_val]
    return {
        "train_inputs": [t for t, _ in train],
        "train_targets": [y for _, y in train],
        "val_inputs": [t for t, _ in val],
        "val_targets": [y for _, y in val],
        "labels": ["cooking", "weather"],
    }


def text_spec(**train: Any) -> Spec:
    settings = {"epochs": 3, "batch_size": 16, "lr": 3e-3, "seed": 0, **train}
    return parse(
        Spec,
        {
            "task": "text-classification",
            "dataset": "sentences",
            "model": {"arch": "textcnn", "vocab_size": 300, "embed_dim": 32, "num_filters": 16},
            "train": settings,
        },
    )
