"""Small real inputs shared by the model tests (not fixtures: plain functions with fixed seeds)."""

from __future__ import annotations

import torch

SUBJECTS = [
    "the cat",
    "my neighbour",
    "a small dog",
    "the old teacher",
    "our team",
    "the pilot",
    "a curious child",
    "the chef",
    "every student",
    "the museum guide",
]
VERBS = [
    "likes",
    "found",
    "painted",
    "carried",
    "watched",
    "cooked",
    "forgot",
    "described",
    "repaired",
    "ordered",
]
OBJECTS = [
    "a red bicycle",
    "the morning train",
    "fresh bread",
    "an old map",
    "the blue door",
    "a quiet garden",
    "the broken radio",
    "strong coffee",
    "a long letter",
    "the city lights",
]
ENDINGS = [
    "yesterday.",
    "before lunch!",
    "in the rain.",
    "near the station.",
    "again, sadly.",
    "with great care.",
    "for the first time.",
    "at midnight?",
]


def sentences(n: int = 300) -> list[str]:
    """``n`` varied, grammatical English sentences (deterministic)."""
    out = []
    for i in range(n):
        s = SUBJECTS[i % len(SUBJECTS)]
        v = VERBS[(i // 3) % len(VERBS)]
        o = OBJECTS[(i * 7) % len(OBJECTS)]
        e = ENDINGS[(i * 5) % len(ENDINGS)]
        out.append(f"{s.capitalize()} {v} {o} {e}")
    return out


def text_batch(vocab_size: int = 50) -> tuple[torch.Tensor, torch.Tensor]:
    """Two right-padded id rows of different lengths: ``(2, 7)`` ids and mask."""
    ids = torch.tensor([[2, 11, 17, 23, 29, 31, 3], [2, 13, 19, 3, 0, 0, 0]])
    mask = (ids != 0).long()
    assert int(ids.max()) < vocab_size
    return ids, mask
