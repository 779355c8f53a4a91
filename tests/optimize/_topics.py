"""Tiny real text data for the ensemble, distillation and search tests: a CSV of sentences on
three topics, ingested into a real workspace (SQLite file, artifact folder, data gate, split).

The sentences share filler words and a third of them carry a word of another topic, so the
tiny networks below learn the topics without being perfect at once.
"""

from __future__ import annotations

import csv
import random
from pathlib import Path
from typing import Any

NAME = "topics"
TOPICS = {
    "weather": "rain snow wind storm cloud thunder frost fog drizzle breeze hail sunshine".split(),
    "food": "bread cheese soup pasta salad curry noodle pepper garlic butter honey lemon".split(),
    "sport": "football tennis rugby cycling rowing boxing hockey sprint marathon golf skiing judo".split(),
}
FILLER = "the a near today was again very big small old new early late with our at".split()

# Tiny networks: a few seconds for a whole test module on a busy CPU.
TEXTCNN = {"arch": "textcnn", "vocab_size": 300, "embed_dim": 32, "num_filters": 16, "max_length": 24}
TRANSFORMER = {"arch": "transformer", "vocab_size": 300, "embed_dim": 16, "num_heads": 2, "num_layers": 1,
               "hidden_dim": 32, "max_length": 24}
TRAIN = {"epochs": 4, "batch_size": 16, "device": "cpu", "amp": False, "early_stopping": None}


def sentences(n_per_topic: int, *, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    rows = []
    for label, words in TOPICS.items():
        others = [w for other, ws in TOPICS.items() if other != label for w in ws]
        for i in range(n_per_topic):
            tokens = [rng.choice(words), rng.choice(words), *rng.sample(FILLER, 3), f"item{i}"]
            if rng.random() < 0.33:
                tokens.append(rng.choice(others))
            rng.shuffle(tokens)
            rows.append((" ".join(tokens), label))
    return rows


def write_csv(path: Path, rows: list[tuple[str, str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("text", "label"), *rows])
    return path


def spec(model: dict[str, Any], *, dataset: str = NAME, name: str = NAME, **train: Any) -> dict[str, Any]:
    return {"task": "text-classification", "dataset": dataset, "name": name, "model": dict(model),
            "train": {**TRAIN, "lr": 0.01, **train}}


def workspace(root: Path, *, n_per_topic: int = 80) -> Any:
    """A workspace holding the ``topics`` dataset (3 x ``n_per_topic`` sentences)."""
    from aifab.pipeline.project import Workspace

    ws = Workspace.init(root / "ws")
    ws.ingest(write_csv(root / "topics.csv", sentences(n_per_topic, seed=0)), name=NAME)
    return ws
