"""Duplicate search that scales: exact keys, near-duplicate texts (MinHash LSH), similar images.

Every function returns *group ids*: an int array with one entry per input, where records
that belong together share an id. The id of a group is the index of its first member,
so ``group[i] == i`` marks the first copy (the one a quarantine policy keeps), and an
input with nothing to compare (``None``, an empty text) is a group of its own.

Near-duplicate texts, in four vectorised steps (numpy over flat arrays, no Python loop
per shingle or per pair):

1. **shingles**: each text is normalised (:func:`normalize_text`) and cut into word
   n-grams (default: single words), each hashed to 32 bits with CRC-32 of its UTF-8
   bytes (stable across processes and machines, unlike ``hash()``); a text with fewer
   words than the n-gram size falls back to character 5-grams;
2. **MinHash**: ``num_perm`` multiply-shift hashes of every shingle, minimum per text;
3. **LSH banding**: texts whose signatures agree on a whole band become candidates;
4. **verification**: the *exact* Jaccard similarity of the candidates' shingle sets,
   kept when >= threshold; connected components of the kept pairs are the groups.

Why single words by default: with 3-word shingles, one substituted word in a 20-word
sentence already drops the Jaccard similarity to ~0.71, below the default threshold of
0.8; with single words it is 19/21 = 0.90 (two words: 18/22 = 0.82). Why the exact
Jaccard: a 64-permutation estimate has a standard error of ~0.05 near 0.8, which would
lose a large share of true pairs sitting just above the threshold.

>>> texts = ["The quick brown fox jumps over the lazy dog near the river bank today",
...          "the QUICK brown fox jumps over the lazy dog, near the river bank today!",
...          "Completely unrelated words about invoices and shipping containers"]
>>> near_duplicate_groups(texts, threshold=0.8).group.tolist()
[0, 0, 2]
"""

from __future__ import annotations

import functools
import re
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

_MASK32 = np.uint64(0xFFFFFFFF)
_MIX = np.uint64(0x9E3779B97F4A7C15)  # 2^64 / golden ratio: an odd constant for combining hashes
_EMPTY = np.uint32(0xFFFFFFFF)  # the signature of a text without shingles
_TEXT_CHUNK = 20_000  # texts per shingling chunk: bounds the temporary Python strings
_PAIR_CHUNK_ELEMENTS = 4_000_000  # shingles per verification chunk: bounds the sort's memory
_MAX_BUCKET = 50  # LSH buckets larger than this are linked as a star + chain, not all pairs


@dataclass(frozen=True)
class NearDupResult:
    """Near-duplicate groups and the verified pairs that made them.

    ``group``: (N,) int64 group ids (index of the group's first member); ``pairs``: (M, 2)
    int64 index pairs ``i < j`` whose Jaccard similarity is >= the threshold;
    ``similarity``: (M,) float64 that Jaccard similarity.
    """

    group: np.ndarray
    pairs: np.ndarray
    similarity: np.ndarray


# ---------------------------------------------------------------------------------------------
# Exact keys
# ---------------------------------------------------------------------------------------------


def exact_groups(keys: Sequence[str | None]) -> np.ndarray:
    """Group ids by equal key; ``None`` is never equal to anything.

    >>> exact_groups(["a", "b", "a", None, None]).tolist()
    [0, 1, 0, 3, 4]
    """
    first: dict[str, int] = {}
    out = np.empty(len(keys), dtype=np.int64)
    for i, key in enumerate(keys):
        out[i] = i if key is None else first.setdefault(key, i)
    return out


# ---------------------------------------------------------------------------------------------
# Text normalisation and shingles
# ---------------------------------------------------------------------------------------------


def normalize_text(text: str) -> str:
    """The form texts are compared in: casefolded, punctuation removed, whitespace collapsed.

    Punctuation is every Unicode ``P*`` character; letters, digits, marks, symbols and
    emoji stay, so scripts that need combining marks (Devanagari, Thai) are kept intact.

    >>> normalize_text("  Hello,   WORLD!\\n¿Qué tal?  ")
    'hello world qué tal'
    """
    pattern, ascii_punct = _punctuation()
    if text.isascii():  # the common case: a byte-table delete is ~20x faster than the regex
        return " ".join(
            text.lower().encode("ascii").translate(None, ascii_punct).decode("ascii").split()
        )
    return " ".join(pattern.sub("", text.casefold()).split())


@functools.cache
def _punctuation() -> tuple[re.Pattern[str], bytes]:
    """A regex matching runs of Unicode punctuation, and the ASCII punctuation as bytes.

    Built once per process (~0.3 s) from the Unicode database of this Python.
    """
    import sys
    import unicodedata

    points = [i for i in range(sys.maxunicode + 1) if unicodedata.category(chr(i)).startswith("P")]
    ranges: list[tuple[int, int]] = []
    for p in points:
        if ranges and ranges[-1][1] == p - 1:
            ranges[-1] = (ranges[-1][0], p)
        else:
            ranges.append((p, p))
    body = "".join(
        re.escape(chr(a)) if a == b else f"{re.escape(chr(a))}-{re.escape(chr(b))}"
        for a, b in ranges
    )
    return re.compile(f"[{body}]+"), bytes(p for p in points if p < 128)


def _crc(text: str) -> int:
    return zlib.crc32(text.encode("utf-8", "surrogatepass"))


def _shingle_sets(texts: Sequence[str], *, shingle: int) -> tuple[np.ndarray, np.ndarray]:
    """Every text's set of shingle hashes.

    Returns the flat uint32 hashes (sorted and unique within each text) and the (N+1,)
    offsets: text i's set is ``flat[offsets[i]:offsets[i + 1]]``.
    """
    if shingle < 1:
        raise ValueError(f"shingle must be >= 1; got {shingle}")
    parts: list[np.ndarray] = []
    counts: list[np.ndarray] = []
    for start in range(0, len(texts), _TEXT_CHUNK):
        hashes, n_per_text = _chunk_shingles(texts[start : start + _TEXT_CHUNK], shingle=shingle)
        parts.append(hashes)
        counts.append(n_per_text)
    n_all = np.concatenate(counts) if counts else np.zeros(0, dtype=np.int64)
    offsets = np.zeros(len(texts) + 1, dtype=np.int64)
    np.cumsum(n_all, out=offsets[1:])
    flat = np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint32)
    return flat, offsets


def _chunk_shingles(texts: Sequence[str], *, shingle: int) -> tuple[np.ndarray, np.ndarray]:
    """Shingle hashes of one chunk of texts, deduplicated within each text."""
    norms = [normalize_text(t) for t in texts]
    n_words = np.array([s.count(" ") + 1 if s else 0 for s in norms], dtype=np.int64)
    # All words of the chunk in one C-level split; CRC-32 once per distinct word.
    words = " ".join(norms).split()
    vocab = {w: _crc(w) for w in dict.fromkeys(words)}
    word_hash = np.fromiter(map(vocab.__getitem__, words), dtype=np.uint64, count=len(words))

    word_starts = np.zeros(len(norms), dtype=np.int64)
    np.cumsum(n_words[:-1], out=word_starts[1:])
    long_enough = n_words >= shingle
    # Word n-grams: combine `shingle` consecutive word hashes; windows never cross texts.
    n_grams = np.where(long_enough, n_words - shingle + 1, 0)
    gram_start = _ranges(word_starts, n_grams)
    h = word_hash[gram_start]
    for j in range(1, shingle):
        h = h * _MIX + word_hash[gram_start + j]
    if shingle > 1:
        h = _fmix64(h) >> np.uint64(32)
    text_of = np.repeat(np.arange(len(norms), dtype=np.uint64), n_grams)

    # Short texts (fewer words than the n-gram size): character 5-grams, tagged apart from words.
    short = np.flatnonzero(~long_enough & (n_words > 0))
    if len(short):
        extra_h: list[int] = []
        extra_t: list[int] = []
        for i in short.tolist():
            s = norms[i]
            grams = [s[k : k + 5] for k in range(len(s) - 4)] or [s]
            extra_h.extend(_crc("\x00" + g) for g in grams)
            extra_t.extend([i] * len(grams))
        h = np.concatenate([h, np.array(extra_h, dtype=np.uint64)])
        text_of = np.concatenate([text_of, np.array(extra_t, dtype=np.uint64)])

    # One sort makes each text's set: sorted by (text, hash), duplicates dropped.
    keys = _sorted_unique((text_of << np.uint64(32)) | (h & _MASK32))
    per_text = np.bincount((keys >> np.uint64(32)).astype(np.int64), minlength=len(norms))
    return (keys & _MASK32).astype(np.uint32), per_text.astype(np.int64)


def _fmix64(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finaliser: spreads every input bit over the high bits we keep."""
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(0xFF51AFD7ED558CCD)
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(0xC4CEB9FE1A85EC53)
    out: np.ndarray = h ^ (h >> np.uint64(33))
    return out


def _sorted_unique(values: np.ndarray) -> np.ndarray:
    """``np.unique`` for integers, by sorting: numpy 2's hash-based unique is ~50x slower here."""
    out: np.ndarray = np.sort(values)
    if len(out) < 2:
        return out
    unique: np.ndarray = out[np.concatenate([[True], out[1:] != out[:-1]])]
    return unique


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(s, s + l)`` for every (s, l), without a Python loop.

    >>> _ranges(np.array([10, 20, 30]), np.array([2, 0, 3])).tolist()
    [10, 11, 30, 31, 32]
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    before = np.cumsum(lengths) - lengths
    return np.repeat(np.asarray(starts, dtype=np.int64) - before, lengths) + np.arange(
        total, dtype=np.int64
    )


# ---------------------------------------------------------------------------------------------
# MinHash
# ---------------------------------------------------------------------------------------------


def minhash_signatures(
    texts: Sequence[str], *, num_perm: int = 64, shingle: int = 1, seed: int = 0
) -> np.ndarray:
    """MinHash signatures, (N, num_perm) uint32; the fraction of equal columns estimates Jaccard.

    A text without shingles (empty after normalisation) gets a row of 0xFFFFFFFF.

    Hand-vectorised rather than datasketch: datasketch's ``MinHash.update`` is a Python call
    per shingle (~50x too slow for a million texts in the ingest budget). Here each of the
    ``num_perm`` hash functions is one pass of numpy over all shingles of a chunk, and the
    per-text minimum is one ``np.minimum.reduceat``.

    >>> sig = minhash_signatures(["a b c d", "a b c d", "w x y z"], num_perm=16)
    >>> sig.shape, bool((sig[0] == sig[1]).all()), float((sig[0] == sig[2]).mean())
    ((3, 16), True, 0.0)
    """
    flat, offsets = _shingle_sets(texts, shingle=shingle)
    return _signatures(flat, offsets, num_perm=num_perm, seed=seed)


def _signatures(flat: np.ndarray, offsets: np.ndarray, *, num_perm: int, seed: int) -> np.ndarray:
    # Multiply-add-shift hashing (Dietzfelbinger): for a 32-bit key x and random 64-bit a, b,
    # ((a*x + b) mod 2^64) >> 32 is a 2-independent 32-bit hash. It needs no modulo by a prime
    # (integer division is the slowest numpy op) and never overflows into wrong results.
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 2**64, size=num_perm, dtype=np.uint64, endpoint=False) | np.uint64(1)
    b = rng.integers(0, 2**64, size=num_perm, dtype=np.uint64, endpoint=False)
    n = len(offsets) - 1
    sig = np.full((n, num_perm), _EMPTY, dtype=np.uint32)
    step = 1 << 20  # shingles per block: two uint64 temporaries of 8 MiB
    counts = np.diff(offsets)
    row = 0
    while row < n:
        # Whole texts per block, as many as fit in `step` shingles (at least one).
        end = max(int(np.searchsorted(offsets, offsets[row] + step, side="right")) - 1, row + 1)
        end = min(end, n)
        lo, hi = int(offsets[row]), int(offsets[end])
        nonempty = np.flatnonzero(counts[row:end] > 0)
        if len(nonempty):
            x = flat[lo:hi].astype(np.uint64)
            starts = offsets[row:end][nonempty] - lo
            tmp = np.empty_like(x)
            for p in range(num_perm):
                np.multiply(x, a[p], out=tmp)
                np.add(tmp, b[p], out=tmp)
                np.right_shift(tmp, np.uint64(32), out=tmp)
                sig[row + nonempty, p] = np.minimum.reduceat(tmp, starts)
        row = end
    return sig


# ---------------------------------------------------------------------------------------------
# LSH banding
# ---------------------------------------------------------------------------------------------


def lsh_params(threshold: float, num_perm: int, *, recall: float = 0.99) -> tuple[int, int]:
    """(bands, rows) with bands*rows <= num_perm: the most selective banding that still makes
    a pair of Jaccard similarity ``threshold`` a candidate with probability >= ``recall``.

    A pair of similarity s is a candidate with probability 1 - (1 - s^rows)^bands; the
    S-curve's midpoint (1/bands)^(1/rows) therefore lands below the threshold, and the
    exact verification removes the extra candidates.

    >>> lsh_params(0.8, 64)
    (12, 5)
    """
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1]; got {threshold}")
    best = (num_perm, 1)
    for rows in range(1, num_perm + 1):
        bands = num_perm // rows
        if 1 - (1 - threshold**rows) ** bands >= recall:
            best = (bands, rows)
    return best


def lsh_candidate_pairs(signatures: np.ndarray, *, bands: int, rows: int) -> np.ndarray:
    """Candidate pairs (M, 2) int64, ``i < j``, unique: rows that agree on at least one band.

    Each band's ``rows`` columns are hashed to one uint64; sorting the keys puts equal
    bands next to each other. A bucket of up to 50 members yields all its pairs; a larger
    one (a flood of exact copies) is linked as a star from its first member plus a chain,
    which keeps it connected for the grouping at linear cost.

    >>> sig = np.array([[1, 2, 3, 4], [1, 2, 9, 9], [7, 7, 7, 7]], dtype=np.uint32)
    >>> lsh_candidate_pairs(sig, bands=2, rows=2).tolist()
    [[0, 1]]
    """
    signatures = np.asarray(signatures)
    n = len(signatures)
    if bands * rows > signatures.shape[1]:
        raise ValueError(
            f"bands * rows = {bands * rows} exceeds the signature length {signatures.shape[1]}"
        )
    found = [_band_pairs(signatures, band, rows) for band in range(bands)]
    return _unique_pairs(np.concatenate(found) if found else np.zeros((0, 2), dtype=np.int64), n)


def _band_pairs(signatures: np.ndarray, band: int, rows: int) -> np.ndarray:
    """Unique candidate pairs of one band (rows agreeing on all of the band's columns)."""
    n = len(signatures)
    block = signatures[:, band * rows : (band + 1) * rows].astype(np.uint64)
    key = np.zeros(n, dtype=np.uint64)
    for col in range(rows):
        key = _fmix64((key * _MIX) ^ block[:, col])
    order = np.argsort(key, kind="stable")
    return _unique_pairs(_pairs_in_buckets(key[order], order), n)


def _runs(sorted_keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Starts and lengths of the runs of equal values in a sorted array."""
    if len(sorted_keys) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    starts = np.flatnonzero(np.concatenate([[True], sorted_keys[1:] != sorted_keys[:-1]]))
    lengths = np.diff(np.append(starts, len(sorted_keys)))
    return starts, lengths


def _pairs_in_buckets(sorted_keys: np.ndarray, order: np.ndarray) -> np.ndarray:
    starts, lengths = _runs(sorted_keys)
    small = (lengths > 1) & (lengths <= _MAX_BUCKET)
    left, right = _all_pairs_in_runs(starts[small], lengths[small])
    pairs = [np.stack([order[left], order[right]], axis=1)]
    big = lengths > _MAX_BUCKET
    if big.any():
        members = _ranges(starts[big], lengths[big])
        firsts = np.repeat(starts[big], lengths[big])
        later = members != firsts
        pairs.append(np.stack([order[firsts[later]], order[members[later]]], axis=1))  # star
        pairs.append(np.stack([order[members[later] - 1], order[members[later]]], axis=1))  # chain
    return np.concatenate(pairs)


def _all_pairs_in_runs(starts: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every (p, q), p < q, of positions inside the same run.

    >>> [x.tolist() for x in _all_pairs_in_runs(np.array([0, 5]), np.array([3, 2]))]
    [[0, 0, 1, 5], [1, 2, 2, 6]]
    """
    pos = _ranges(starts, lengths)
    later = np.repeat(starts + lengths, lengths) - pos - 1  # members after each position in its run
    left = np.repeat(pos, later)
    right = left + 1 + _ranges(np.zeros(len(later), dtype=np.int64), later)
    return left, right


def _unique_pairs(pairs: np.ndarray, n: int) -> np.ndarray:
    if len(pairs) == 0:
        return np.zeros((0, 2), dtype=np.int64)
    lo = np.minimum(pairs[:, 0], pairs[:, 1]).astype(np.int64)
    hi = np.maximum(pairs[:, 0], pairs[:, 1]).astype(np.int64)
    keep = lo != hi
    code = _sorted_unique(lo[keep] * n + hi[keep])
    return np.stack([code // n, code % n], axis=1)


# ---------------------------------------------------------------------------------------------
# Verification and grouping
# ---------------------------------------------------------------------------------------------


def _exact_jaccard(pairs: np.ndarray, flat: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Jaccard similarity of the shingle sets of every pair, vectorised in bounded chunks."""
    sizes = np.diff(offsets)
    out = np.zeros(len(pairs), dtype=np.float64)
    work = sizes[pairs[:, 0]] + sizes[pairs[:, 1]] if len(pairs) else np.zeros(0, dtype=np.int64)
    bounds = np.cumsum(work)
    start = 0
    while start < len(pairs):
        base = bounds[start - 1] if start else 0
        stop = max(
            int(np.searchsorted(bounds, base + _PAIR_CHUNK_ELEMENTS, side="right")), start + 1
        )
        chunk = pairs[start:stop]
        m = len(chunk)
        la, lb = sizes[chunk[:, 0]], sizes[chunk[:, 1]]
        pid = np.arange(m, dtype=np.uint64)
        # Each set is sorted and unique, so an element present in both sets of a pair shows up
        # as two equal neighbours once (pair id, hash) keys of both sides are sorted together.
        keys = np.concatenate(
            [
                (np.repeat(pid, la) << np.uint64(32))
                | flat[_ranges(offsets[chunk[:, 0]], la)].astype(np.uint64),
                (np.repeat(pid, lb) << np.uint64(32))
                | flat[_ranges(offsets[chunk[:, 1]], lb)].astype(np.uint64),
            ]
        )
        keys.sort()
        same = keys[1:] == keys[:-1]
        inter = np.bincount((keys[1:][same] >> np.uint64(32)).astype(np.int64), minlength=m)
        union = la + lb - inter
        out[start:stop] = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
        start = stop
    return out


def _components(pairs: np.ndarray, n: int) -> np.ndarray:
    """Group ids (index of each component's first member) of the graph with these edges."""
    if len(pairs) == 0:
        return np.arange(n, dtype=np.int64)
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix(
        (np.ones(len(pairs), dtype=np.int8), (pairs[:, 0], pairs[:, 1])), shape=(n, n)
    )
    _, labels = connected_components(graph, directed=False)
    first = np.full(int(labels.max()) + 1, n, dtype=np.int64)
    np.minimum.at(first, labels, np.arange(n, dtype=np.int64))
    group: np.ndarray = first[labels]
    return group


def near_duplicate_groups(
    texts: Sequence[str],
    *,
    threshold: float,
    num_perm: int = 64,
    shingle: int = 1,
    seed: int = 0,
) -> NearDupResult:
    """Group texts whose normalised shingle sets have Jaccard similarity >= ``threshold``.

    Groups are connected components: if a~b and b~c, all three share a group. A text that
    is empty after normalisation is never anyone's near-duplicate.

    >>> r = near_duplicate_groups(["red green blue cyan magenta yellow black white",
    ...                            "red green blue cyan magenta yellow black grey",
    ...                            "one two three"], threshold=0.7)
    >>> r.group.tolist(), r.pairs.tolist(), r.similarity.round(3).tolist()
    ([0, 0, 2], [[0, 1]], [0.778])
    """
    n = len(texts)
    flat, offsets = _shingle_sets(texts, shingle=shingle)
    sig = _signatures(flat, offsets, num_perm=num_perm, seed=seed)
    has_shingles = np.flatnonzero(np.diff(offsets) > 0)
    sig = sig[has_shingles]
    bands, rows = lsh_params(threshold, num_perm)
    # Verify band by band and keep only the confirmed pairs: on texts with a small vocabulary
    # the candidates run to dozens per text, and holding all of them at once cost gigabytes
    # at a million texts. A pair that collides in several bands is verified more than once,
    # which costs time, not memory.
    kept_pairs: list[np.ndarray] = []
    kept_sims: list[np.ndarray] = []
    for band in range(bands):
        candidates = has_shingles[_band_pairs(sig, band, rows)]
        if not len(candidates):
            continue
        similarity = _exact_jaccard(candidates, flat, offsets)
        keep = similarity >= threshold
        kept_pairs.append(candidates[keep].reshape(-1, 2))
        kept_sims.append(similarity[keep])
    if kept_pairs:
        pairs = np.concatenate(kept_pairs)
        sims = np.concatenate(kept_sims)
        pairs, first = np.unique(pairs, axis=0, return_index=True)
        sims = sims[first]
    else:
        pairs, sims = np.zeros((0, 2), dtype=np.int64), np.zeros(0)
    return NearDupResult(group=_components(pairs, n), pairs=pairs, similarity=sims)


# ---------------------------------------------------------------------------------------------
# Images: perceptual hashes within a Hamming distance
# ---------------------------------------------------------------------------------------------


def image_near_duplicate_groups(
    phashes: Sequence[int | None],
    *,
    max_hamming: int,
    thumbs: np.ndarray | None = None,
    max_pixel_diff: float = 10.0,
) -> np.ndarray:
    """Group 64-bit perceptual hashes within ``max_hamming`` differing bits; None stays alone.

    Multi-index hashing: the 64 bits are cut into ``max_hamming + 1`` chunks; two hashes
    within the distance differ in at most ``max_hamming`` chunks, so (pigeonhole) they agree
    exactly on at least one. Only pairs sharing a chunk are compared (popcount of the XOR).
    The work grows with the bucket sizes, about N^2 / 2^(64 / (max_hamming + 1)) pairs per
    chunk: cheap for the usual distances (<= 8), quadratic for large ones.

    With ``thumbs`` (N, 256) uint8 (16x16 grayscale thumbnails), every hash match is confirmed
    pixel by pixel: the mean absolute difference of the mean-centred thumbnails must be at most
    ``max_pixel_diff`` (of 255). Hashes alone are too coarse for small images — on 28x28 MNIST
    digits, thousands of different digits fall within 4 bits of each other and chain into
    giant groups.

    >>> image_near_duplicate_groups([0b1111, 0b0111, None, 2**64 - 1], max_hamming=2).tolist()
    [0, 0, 2, 3]
    >>> thumbs = np.array([[0] * 128 + [255] * 128, [255] * 128 + [0] * 128, [0] * 256, [0] * 256], dtype=np.uint8)
    >>> image_near_duplicate_groups([0b1111, 0b0111, None, 2**64 - 1], max_hamming=2, thumbs=thumbs).tolist()
    [0, 1, 2, 3]
    """
    if not 0 <= max_hamming < 64:
        raise ValueError(f"max_hamming must be in [0, 63]; got {max_hamming}")
    n = len(phashes)
    present = np.array([i for i, h in enumerate(phashes) if h is not None], dtype=np.int64)
    if len(present) < 2:
        return np.arange(n, dtype=np.int64)
    # Equal hashes (blank frames, exact copies) are joined first and compared once: a flood of
    # identical hashes would otherwise be one bucket with quadratically many pairs.
    values, first_of, which = np.unique(
        np.array([phashes[i] for i in present.tolist()], dtype=np.uint64),
        return_index=True,
        return_inverse=True,
    )
    rep = present[first_of]  # an original index standing for each distinct hash
    found = [np.stack([rep[which], present], axis=1)]
    chunks = max_hamming + 1
    widths = [64 // chunks + (1 if c < 64 % chunks else 0) for c in range(chunks)]
    shift = 0
    for width in widths:
        key = (values >> np.uint64(shift)) & np.uint64((1 << width) - 1)
        shift += width
        order = np.argsort(key, kind="stable")
        starts, lengths = _runs(key[order])
        multi = lengths > 1
        # Runs are expanded in batches so a few huge buckets cannot exhaust memory at once.
        for run_starts, run_lengths in _batches(starts[multi], lengths[multi], max_pairs=2_000_000):
            left, right = _all_pairs_in_runs(run_starts, run_lengths)
            i, j = order[left], order[right]
            close = np.bitwise_count(values[i] ^ values[j]) <= max_hamming
            found.append(np.stack([rep[i[close]], rep[j[close]]], axis=1))
    pairs = _unique_pairs(np.concatenate(found), n)
    if thumbs is not None and len(pairs):
        pairs = pairs[_thumbs_close(np.asarray(thumbs), pairs, max_pixel_diff)]
    return _components(pairs, n)


def _thumbs_close(thumbs: np.ndarray, pairs: np.ndarray, max_diff: float) -> np.ndarray:
    """Whether each pair's mean-centred thumbnails differ by at most ``max_diff`` on average."""
    keep = np.zeros(len(pairs), dtype=bool)
    for start in range(0, len(pairs), 100_000):
        chunk = pairs[start : start + 100_000]
        a = thumbs[chunk[:, 0]].astype(np.float32)
        b = thumbs[chunk[:, 1]].astype(np.float32)
        a -= a.mean(axis=1, keepdims=True)  # a brightness shift is still the same picture
        b -= b.mean(axis=1, keepdims=True)
        keep[start : start + len(chunk)] = np.abs(a - b).mean(axis=1) <= max_diff
    return keep


def _batches(
    starts: np.ndarray, lengths: np.ndarray, *, max_pairs: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Split runs into consecutive batches of at most ~max_pairs pairs (a huge run alone)."""
    per_run = lengths * (lengths - 1) // 2
    bounds = np.cumsum(per_run)
    start = 0
    while start < len(starts):
        base = bounds[start - 1] if start else 0
        stop = max(int(np.searchsorted(bounds, base + max_pairs, side="right")), start + 1)
        yield starts[start:stop], lengths[start:stop]
        start = stop
