"""Duplicate search: exact keys, MinHash LSH on texts, Hamming search on perceptual hashes.

The near-duplicate tests compare against brute force (exact Jaccard of word sets, popcount
of every pair) on data with planted duplicates, so recall and precision are measured, not
assumed.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys

import numpy as np
import pytest

from aifab.data.dedup import (
    exact_groups,
    image_near_duplicate_groups,
    lsh_candidate_pairs,
    lsh_params,
    minhash_signatures,
    near_duplicate_groups,
    normalize_text,
)


def components(n: int, edges: list[tuple[int, int]]) -> list[int]:
    """Brute-force union-find; the id of a component is its smallest member (the contract)."""
    parent = list(range(n))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in edges:
        ra, rb = find(a), find(b)
        parent[max(ra, rb)] = min(ra, rb)
    return [find(i) for i in range(n)]


# --- exact ---------------------------------------------------------------------------------


def test_exact_groups_point_to_the_first_copy_and_none_stays_alone() -> None:
    assert exact_groups(["x", "y", "x", None, "y", None, "x"]).tolist() == [0, 1, 0, 3, 1, 5, 0]
    assert exact_groups([]).tolist() == []


# --- normalisation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Hello,  World!!", "hello world"),
        ("\tSTRASSE straße\n", "strasse strasse"),  # casefold, not lower
        ("«Bonjour» — dit-il…", "bonjour ditil"),
        ("price: $5 + 3€ 😀", "price $5 + 3€ 😀"),  # symbols and emoji are not punctuation
        ("नमस्ते, दुनिया!", "नमस्ते दुनिया"),  # combining marks survive
        ("你好，世界。", "你好世界"),
        ("...", ""),
    ],
)
def test_normalize_text(text: str, expected: str) -> None:
    assert normalize_text(text) == expected


def test_ascii_fast_path_agrees_with_the_unicode_path() -> None:
    sample = "Mixed CASE, with: (brackets) [x] {y} 'q' \"d\" a-b_c #1 @me ~t ^u |v 50% & co. ok?!"
    # Appending a non-ASCII letter forces the general path; the ASCII part must normalise the same.
    assert normalize_text(sample) + " é" == normalize_text(sample + " é")


# --- MinHash -----------------------------------------------------------------------------------


def test_signature_agreement_estimates_jaccard() -> None:
    a = " ".join(f"w{i}" for i in range(0, 100))
    b = " ".join(f"w{i}" for i in range(50, 150))  # Jaccard 50 / 150
    c = " ".join(f"w{i}" for i in range(0, 90))  # Jaccard with a: 90 / 100
    sig = minhash_signatures([a, b, c], num_perm=256)
    assert sig.shape == (3, 256) and sig.dtype == np.uint32
    assert abs((sig[0] == sig[1]).mean() - 1 / 3) < 0.1
    assert abs((sig[0] == sig[2]).mean() - 0.9) < 0.06


def test_signature_of_normalised_equal_texts_is_equal_and_seed_matters() -> None:
    sig = minhash_signatures(["The cat, sat.", "the CAT sat", "a dog"], num_perm=32)
    assert (sig[0] == sig[1]).all() and not (sig[0] == sig[2]).any()
    other = minhash_signatures(["the cat sat"], num_perm=32, seed=1)
    assert not (other[0] == sig[0]).all()


def test_text_without_shingles_gets_the_empty_signature() -> None:
    sig = minhash_signatures(["", "!!!", "word"], num_perm=8)
    assert (sig[:2] == 0xFFFFFFFF).all() and not (sig[2] == 0xFFFFFFFF).all()


def test_signatures_are_stable_across_processes() -> None:
    """Hashes must not depend on PYTHONHASHSEED (the built-in hash() would)."""
    code = (
        "from aifab.data.dedup import minhash_signatures;"
        "print(minhash_signatures(['the quick brown fox', 'hi'], num_perm=8, shingle=3).tolist())"
    )
    here = minhash_signatures(["the quick brown fox", "hi"], num_perm=8, shingle=3).tolist()
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        assert out.stdout.strip() == str(here)


# --- LSH -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("threshold", "num_perm"), [(0.8, 64), (0.5, 64), (0.9, 128), (0.7, 32)])
def test_lsh_params_meet_recall_at_the_threshold_and_are_most_selective(
    threshold: float, num_perm: int
) -> None:
    bands, rows = lsh_params(threshold, num_perm)
    assert bands * rows <= num_perm

    def p(b: int, r: int) -> float:
        return 1 - (1 - threshold**r) ** b

    assert p(bands, rows) >= 0.99
    assert all(p(num_perm // r, r) < 0.99 for r in range(rows + 1, num_perm + 1))
    assert (1 / bands) ** (1 / rows) < threshold  # the S-curve's midpoint sits below the threshold


def test_giant_bucket_is_linked_in_linear_pairs_but_stays_connected() -> None:
    sig = np.tile(np.arange(8, dtype=np.uint32), (2000, 1))
    sig = np.vstack([sig, np.arange(100, 108, dtype=np.uint32)])  # one unrelated row
    pairs = lsh_candidate_pairs(sig, bands=4, rows=2)
    assert len(pairs) < 3 * 2000  # not 2000 * 1999 / 2
    assert (pairs[:, 0] < pairs[:, 1]).all() and len(np.unique(pairs, axis=0)) == len(pairs)
    assert set(components(2001, [tuple(p) for p in pairs.tolist()])) == {0, 2000}


def test_small_bucket_yields_every_pair() -> None:
    sig = np.array([[1, 1], [1, 1], [1, 1], [2, 2]], dtype=np.uint32)
    assert lsh_candidate_pairs(sig, bands=1, rows=2).tolist() == [[0, 1], [0, 2], [1, 2]]


# --- near-duplicate texts: recall and precision on planted pairs ---------------------------------


def random_sentences(rng: np.random.Generator, n: int) -> list[list[str]]:
    vocab = [
        f"{a}{b}{c}" for a, b, c in itertools.product("bcdfghklmnprstvz", "aeiou", "lmnrst")
    ]  # 480 words
    stop = ["the", "a", "of", "and", "to", "in", "is", "it"]
    out = []
    for _ in range(n):
        k = int(rng.integers(20, 31))
        words = [
            stop[int(rng.integers(len(stop)))]
            if rng.random() < 0.25
            else vocab[int(rng.integers(len(vocab)))]
            for _ in range(k)
        ]
        out.append(words)
    return out


def plant(rng: np.random.Generator, words: list[str], kind: int) -> str:
    """A near-duplicate: case and punctuation changed, or 1 or 2 words replaced by new ones."""
    if kind == 0:
        return (
            " ".join(w.upper() if i % 3 == 0 else w for i, w in enumerate(words)).replace(
                " ", ", ", 2
            )
            + "!"
        )
    changed = list(words)
    for pos in rng.choice(len(words), size=kind, replace=False):
        changed[int(pos)] = f"new{int(rng.integers(10**6))}"
    return " ".join(changed)


def test_planted_near_duplicates_are_found_and_unrelated_texts_are_not() -> None:
    rng = np.random.default_rng(7)
    base = random_sentences(rng, 3000)
    texts = [" ".join(w) for w in base]
    planted: list[tuple[int, int]] = []
    for i in range(300):
        texts.append(plant(rng, base[i], kind=i % 3))
        planted.append((i, len(texts) - 1))

    result = near_duplicate_groups(texts, threshold=0.8)
    group = result.group
    recall = np.mean([group[a] == group[b] for a, b in planted])
    assert recall >= 0.95, recall

    # Precision: every verified pair is a planted pair (unrelated sentences never pair up) ...
    planted_set = set(planted)
    found = {tuple(p) for p in result.pairs.tolist()}
    assert found <= planted_set
    # ... and groups are exactly the planted pairs: no group of unrelated originals.
    assert len(set(group[:3000].tolist())) == 3000
    # The similarity reported is the exact Jaccard of the normalised word sets.
    for (a, b), s in zip(result.pairs.tolist(), result.similarity.tolist(), strict=True):
        sa, sb = set(normalize_text(texts[a]).split()), set(normalize_text(texts[b]).split())
        assert s == pytest.approx(len(sa & sb) / len(sa | sb))
        assert s >= 0.8


def test_near_duplicate_groups_match_brute_force() -> None:
    """On a small set with overlaps of every degree, the groups equal brute-force components."""
    rng = np.random.default_rng(3)
    pool = [f"t{i}" for i in range(60)]
    texts = []
    for _ in range(120):
        start = int(rng.integers(0, 40))
        length = int(rng.integers(15, 21))
        texts.append(" ".join(pool[start : start + length]))
    sets = [set(t.split()) for t in texts]
    edges = [
        (a, b)
        for a, b in itertools.combinations(range(len(texts)), 2)
        if len(sets[a] & sets[b]) / len(sets[a] | sets[b]) >= 0.8
    ]
    assert len(edges) > 20  # the data really has near-duplicates of varied similarity
    assert near_duplicate_groups(texts, threshold=0.8).group.tolist() == components(
        len(texts), edges
    )


def test_empty_texts_are_never_near_duplicates() -> None:
    group = near_duplicate_groups(
        ["", "", "!!!", "  ", "same words here", "same words here"], threshold=0.5
    ).group
    assert group.tolist() == [0, 1, 2, 3, 4, 4]


def test_short_texts_fall_back_to_character_grams() -> None:
    texts = ["good movie", "good movies", "bad film"]
    group = near_duplicate_groups(texts, threshold=0.6, shingle=3).group.tolist()
    assert group == [0, 0, 2]
    # With word shingles these two share only one word of three: not near-duplicates.
    assert near_duplicate_groups(texts, threshold=0.6, shingle=1).group.tolist() == [0, 1, 2]


def test_word_ngrams_respect_text_boundaries() -> None:
    """An n-gram never spans two texts: 'c d' + 'e f' must not create the shingle 'd e'."""
    sig = minhash_signatures(["a b c d", "e f g h", "d e x y"], num_perm=64, shingle=2)
    assert not (sig[2] == sig[0]).any() and not (sig[2] == sig[1]).any()


# --- images: Hamming distance on 64-bit hashes --------------------------------------------------


@pytest.mark.parametrize("max_hamming", [0, 4, 8])
def test_image_groups_match_brute_force(max_hamming: int) -> None:
    rng = np.random.default_rng(max_hamming)
    hashes: list[int | None] = [int(h) for h in rng.integers(0, 2**64, size=400, dtype=np.uint64)]
    for i in range(0, 120, 2):  # plant variants at distances 0..max_hamming+2
        flips = rng.choice(64, size=int(rng.integers(0, max_hamming + 3)), replace=False)
        hashes.append(hashes[i] ^ sum(1 << int(b) for b in flips))
    hashes[5] = None
    hashes.append(None)
    n = len(hashes)
    edges = [
        (a, b)
        for a, b in itertools.combinations(range(n), 2)
        if hashes[a] is not None
        and hashes[b] is not None
        and bin(hashes[a] ^ hashes[b]).count("1") <= max_hamming
    ]  # type: ignore[operator]
    assert len(edges) >= 10
    assert image_near_duplicate_groups(hashes, max_hamming=max_hamming).tolist() == components(
        n, edges
    )


def test_flood_of_identical_hashes_is_one_group_quickly() -> None:
    hashes: list[int | None] = [0] * 20_000 + [2**64 - 1, 1]
    group = image_near_duplicate_groups(hashes, max_hamming=4)
    assert (group[:20_000] == 0).all() and group[20_000] == 20_000 and group[20_001] == 0


def test_empty_inputs_give_empty_groups() -> None:
    assert near_duplicate_groups([], threshold=0.8).group.tolist() == []
    assert near_duplicate_groups(["only one"], threshold=0.8).group.tolist() == [0]
    assert image_near_duplicate_groups([], max_hamming=4).tolist() == []
    assert image_near_duplicate_groups([None, 3], max_hamming=4).tolist() == [0, 1]
