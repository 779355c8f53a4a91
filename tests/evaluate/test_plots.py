"""Plots are real PNGs, deterministic, and leave matplotlib's global state alone."""

from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from aifab.core.errors import InputError
from aifab.evaluate.calibration import reliability_bins
from aifab.evaluate.plots import (
    confusion_matrix_png,
    learning_curves_png,
    per_class_f1_png,
    reliability_png,
)


def _decode(png: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(png))
    image.load()  # raises on a truncated or corrupt file
    assert image.format == "PNG"
    return image


def test_confusion_matrix_png_is_a_real_image_and_deterministic() -> None:
    cm = [[50, 2, 0], [3, 40, 7], [0, 1, 60]]
    png = confusion_matrix_png(cm, ["cat", "dog", "$\\frac{bird"])  # a label that is not TeX
    image = _decode(png)
    assert image.width > 200 and image.height > 200
    # The heat map has colour: the darkest cell is far darker than the white background.
    pixels = np.asarray(image.convert("L"))
    assert pixels.min() < 80 and pixels.max() > 240
    assert confusion_matrix_png(cm, ["cat", "dog", "$\\frac{bird"]) == png


def test_confusion_matrix_shape_must_match_labels() -> None:
    with pytest.raises(InputError, match="2 x 2"):
        confusion_matrix_png([[1, 2, 3], [4, 5, 6], [7, 8, 9]], ["a", "b"])


def test_many_classes_still_draw() -> None:
    rng = np.random.default_rng(0)
    labels = [f"class_{i}" for i in range(40)]
    _decode(confusion_matrix_png(rng.integers(0, 9, size=(40, 40)).tolist(), labels))


def test_learning_curves_skip_missing_values() -> None:
    history = [
        {"epoch": 1, "train.loss": 1.0, "val.loss": 1.1, "val.macro_f1": 0.4},
        {"epoch": 2, "train.loss": 0.6, "val.loss": None, "val.macro_f1": 0.6},
        {"epoch": 3, "train.loss": 0.4, "val.accuracy": 0.8},
    ]
    image = _decode(learning_curves_png(history))
    assert image.width > image.height  # two panels side by side
    with pytest.raises(InputError, match="history"):
        learning_curves_png([])


def test_reliability_and_per_class_pngs() -> None:
    rng = np.random.default_rng(1)
    probs = rng.dirichlet([2.0, 1.0], size=100)
    bins = reliability_bins(probs, rng.integers(0, 2, size=100), n_bins=10)
    _decode(reliability_png(bins))
    tall = _decode(per_class_f1_png({f"c{i}": {"f1": i / 20} for i in range(20)}))
    short = _decode(per_class_f1_png({"a": {"f1": 0.5}, "b": {"f1": 0.9}}))
    assert tall.height > short.height  # one bar per class


def test_no_pyplot_and_no_backend_change() -> None:
    # Run in a fresh interpreter: importing aifab's evaluation code must not import matplotlib,
    # and drawing must not import pyplot or switch the user's backend.
    code = (
        "import sys\n"
        "import aifab.evaluate.plots, aifab.evaluate.report, aifab.evaluate.metrics\n"
        "assert 'matplotlib' not in sys.modules, 'matplotlib imported at import time'\n"
        "import matplotlib\n"
        "matplotlib.use('svg')\n"
        "aifab.evaluate.plots.confusion_matrix_png([[1, 0], [0, 1]], ['a', 'b'])\n"
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot imported'\n"
        "assert matplotlib.get_backend().lower() == 'svg', matplotlib.get_backend()\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
