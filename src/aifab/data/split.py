"""Leak-free train/val/test splits: duplicate groups never cross splits.

:func:`assign_splits` decides one split per record from, in this order of authority:

1. ``frozen`` -- the parent version's split (child versions). A frozen record never moves.
   A new record whose duplicate group holds a frozen ``test`` record is *excluded*: the
   parent's test examples must not leak into the child's train or val. A new record whose
   group holds frozen ``train``/``val`` records joins that split.
2. ``new_records_to`` -- child versions built from feedback put every other new record in
   one split (``"train"``), whatever ``given`` says.
3. ``given`` -- the split the data brought. A duplicate group whose given splits disagree
   goes whole to its most held-out split (test > val > train), so a user's test record
   never leaves test (unless a frozen parent record decides otherwise).
4. the ratios -- the remaining groups are split by ``SplitConfig`` ratios, stratified, among
   themselves: in a child version the new records are split by the ratios and the parent's
   records are not rebalanced, so growing a dataset never reshuffles what it had.

Stratified split of the remaining records (per stratum, e.g. the label):

* Targets come from largest-remainder rounding of ``ratio * n`` per stratum, so each split
  is within one record of its exact share. Ties go to train, then test, then val.
* Tiny classes: a class appears in train first, then in test, then in val -- each only
  while every split stays within one record of its share. With the default ratios
  (0.7 / 0.1 / 0.2): 1 record -> train; 2 -> train + test; 3 -> 2 train + 1 test;
  4 -> 2 train + 1 val + 1 test. A split whose ratio is 0 never receives records.
* Duplicate groups (two or more records) are placed whole, largest first, each to the
  split with the largest remaining deficit of its stratum relative to that split's target
  (a group's stratum is its most common member stratum), so duplicated content spreads over
  the splits in proportion. Singletons then fill what is left, one by one to the largest
  absolute deficit, dealt in an order shuffled by ``SplitConfig.seed``.

Everything is vectorised with numpy except one loop over duplicate groups of two or more
records (and one over their strata): a million records with 10% duplicates take under a
second.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from aifab.core.config import SplitConfig
from aifab.core.errors import InputError

SPLITS = ("train", "val", "test")
"""Split names; a higher index is more held out and wins a group whose members disagree."""

_CODE = {name: code for code, name in enumerate(SPLITS)}
_EXCLUDED = len(SPLITS)
_UNSET = -1
# Tiny classes appear in this order; also the tie-break order of every greedy choice.
_PRIORITY = (_CODE["train"], _CODE["test"], _CODE["val"])


@dataclass(frozen=True)
class SplitResult:
    """The outcome of :func:`assign_splits`.

    ``splits`` has one of ``"train"``/``"val"``/``"test"`` per record, or ``""`` for an
    excluded record. ``moved`` lists every record whose given split was not kept (excluded
    records are in ``excluded`` instead). ``groups_crossing`` counts the duplicate groups
    whose requested splits -- the frozen split, else ``new_records_to``, else the given
    split -- disagreed and had to be resolved.
    """

    splits: list[str]
    moved: list[int]
    excluded: list[int]
    groups_crossing: int


def stratum_of(labels: list[str], label_counts: Mapping[str, int]) -> str | None:
    """The stratification key of a record: its rarest label (ties: alphabetical), None if unlabeled.

    A label missing from ``label_counts`` counts as 0, the rarest.

    >>> stratum_of(["cat", "dog"], {"cat": 90, "dog": 10})
    'dog'
    >>> stratum_of(["b", "a"], {"a": 5, "b": 5})
    'a'
    >>> stratum_of([], {"cat": 1}) is None
    True
    """
    if not labels:
        return None
    return min(labels, key=lambda label: (label_counts.get(label, 0), label))


def assign_splits(
    strata: Sequence[str | None],
    groups: Sequence[int],
    *,
    given: Sequence[str | None] | None = None,
    frozen: Mapping[int, str] | None = None,
    ratios: SplitConfig,
    new_records_to: str | None = None,
) -> SplitResult:
    """Give every record one split so that no duplicate group crosses splits.

    ``strata`` is the stratification key per record (None = unlabeled, its own stratum),
    ``groups`` the duplicate-group id per record (duplicates share an id). ``given`` is the
    data's own split per record (None or ``""`` = not given), ``frozen`` maps record index
    to the parent version's split, ``new_records_to`` (``"train"`` or ``"val"``) forces
    every record that is neither frozen nor in a frozen group into that split. The module
    docstring states the rules.

    >>> from aifab.core.config import SplitConfig
    >>> result = assign_splits(
    ...     ["cat", "cat", "dog"], [7, 7, 8], given=["train", "test", "val"], ratios=SplitConfig()
    ... )
    >>> result.splits, result.moved, result.groups_crossing
    (['test', 'test', 'val'], [0], 1)
    >>> child = assign_splits(
    ...     ["cat", "cat", "dog"], [7, 7, 9], frozen={0: "test"}, ratios=SplitConfig(),
    ...     new_records_to="train",
    ... )
    >>> child.splits, child.excluded
    (['test', '', 'train'], [1])
    """
    n = len(strata)
    group_ids = _group_array(groups, n)
    given_codes = _given_codes(given, n)
    frozen_codes = _frozen_codes(frozen, n)
    forced = _forced_code(new_records_to)

    if n == 0:
        return SplitResult(splits=[], moved=[], excluded=[], groups_crossing=0)
    _, group_of = np.unique(group_ids, return_inverse=True)
    group_of = group_of.reshape(-1)
    order = np.argsort(group_of, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(group_of[order]) != 0])

    def group_max(codes: np.ndarray) -> np.ndarray:
        """Per record: the largest code in its group (``_UNSET`` when none is set)."""
        return np.maximum.reduceat(codes[order], starts)[group_of]

    is_frozen = frozen_codes >= 0
    requested = np.where(is_frozen, frozen_codes, forced if forced is not None else given_codes)
    high = group_max(requested)
    # The smallest requested code, as a max over codes mirrored around the top split.
    top = len(SPLITS) - 1
    low = top - group_max(np.where(requested >= 0, top - requested, _UNSET))
    crossing = (high >= 0) & (low != high)
    groups_crossing = int(np.unique(group_of[crossing]).size)

    out = np.full(n, _UNSET, dtype=np.int8)
    out[is_frozen] = frozen_codes[is_frozen]
    frozen_in_group = group_max(frozen_codes)
    new = ~is_frozen
    out[new & (frozen_in_group == _CODE["test"])] = _EXCLUDED
    joins = new & (frozen_in_group >= 0) & (frozen_in_group != _CODE["test"])
    out[joins] = frozen_in_group[joins]
    free = new & (frozen_in_group < 0)
    if forced is not None:
        out[free] = forced
    else:
        given_in_group = group_max(given_codes)
        honoured = free & (given_in_group >= 0)
        out[honoured] = given_in_group[honoured]
        pool = np.flatnonzero(free & (given_in_group < 0))
        if pool.size:
            out[pool] = _split_by_ratio(
                _factorize([strata[i] for i in pool.tolist()]), group_of[pool], ratios
            )

    names = np.array([*SPLITS, ""], dtype=object)
    moved = np.flatnonzero((given_codes >= 0) & (out != given_codes) & (out != _EXCLUDED))
    return SplitResult(
        splits=names[out].tolist(),
        moved=moved.tolist(),
        excluded=np.flatnonzero(out == _EXCLUDED).tolist(),
        groups_crossing=groups_crossing,
    )


def _split_by_ratio(stratum: np.ndarray, group: np.ndarray, ratios: SplitConfig) -> np.ndarray:
    """Split codes for records with no split yet; every group of ``group`` lies wholly here."""
    shares = np.array([ratios.train, ratios.val, ratios.test])
    allowed = [code for code in _PRIORITY if shares[code] > 0]
    _, local_group, size = np.unique(group, return_inverse=True, return_counts=True)
    local_group = local_group.reshape(-1)
    n_strata = int(stratum.max()) + 1

    group_stratum = np.empty(size.size, dtype=np.int64)
    single = size[local_group] == 1
    group_stratum[local_group[single]] = stratum[single]
    multi = np.flatnonzero(size > 1)
    if multi.size:
        # A group's stratum is its most common member stratum (ties: the lower code).
        key = local_group[~single].astype(np.int64) * n_strata + stratum[~single]
        pair, count = np.unique(key, return_counts=True)
        pair_group, pair_stratum = pair // n_strata, pair % n_strata
        best = np.lexsort((pair_stratum, -count, pair_group))
        first = best[np.r_[True, np.diff(pair_group[best]) != 0]]
        group_stratum[pair_group[first]] = pair_stratum[first]

    per_stratum = np.bincount(group_stratum, weights=size, minlength=n_strata).astype(np.int64)
    targets = _allocate(per_stratum, shares)
    seeds = np.random.SeedSequence(ratios.seed).spawn(2)

    # Whole duplicate groups first, largest first (random among equals), each to the split
    # with the largest remaining deficit of its stratum, relative to the split's target:
    # relative, so that duplicated content is spread over the splits like the rest instead of
    # all landing in train (whose absolute deficit is the largest).
    group_split = np.full(size.size, _UNSET, dtype=np.int8)
    deficit = targets.tolist()
    scale = np.maximum(targets, 1).tolist()
    if multi.size:
        tie = np.random.default_rng(seeds[0]).random(multi.size)
        ranked = multi[np.lexsort((tie, -size[multi], group_stratum[multi]))]
        for g, s, k in zip(ranked.tolist(), group_stratum[ranked].tolist(), size[ranked].tolist()):
            row, per = deficit[s], scale[s]
            best_split = max(allowed, key=lambda j: row[j] / per[j])  # first of ties wins
            row[best_split] -= k
            group_split[g] = best_split

    # Singletons fill what is left; where no group was placed that is exactly the targets.
    single_alloc = targets.copy()
    for s in np.unique(group_stratum[multi]).tolist():
        # Targets sum to the stratum's size, so what is left of them is its singleton count.
        single_alloc[s] = _fill_largest_deficit(deficit[s], sum(deficit[s]), allowed)

    codes = group_split[local_group]
    single_idx = np.flatnonzero(single)
    if single_idx.size:
        shuffled = np.random.default_rng(seeds[1]).permutation(single_idx)
        dealt = shuffled[np.argsort(stratum[shuffled], kind="stable")]
        dealt_stratum = stratum[dealt]
        count = np.bincount(dealt_stratum, minlength=n_strata)
        rank = np.arange(dealt.size) - (np.cumsum(count) - count)[dealt_stratum]
        cut = np.cumsum(single_alloc, axis=1)[dealt_stratum]
        codes[dealt] = (rank[:, None] >= cut[:, :2]).sum(axis=1)
    return codes


def _allocate(n: np.ndarray, shares: np.ndarray) -> np.ndarray:
    """Records per (stratum, split): largest remainder, then tiny-class minima within +-1.

    >>> _allocate(np.array([1, 2, 3, 4, 10]), np.array([0.7, 0.1, 0.2])).tolist()
    [[1, 0, 0], [1, 0, 1], [2, 0, 1], [2, 1, 1], [7, 1, 2]]
    """
    exact = n[:, None] * shares[None, :]
    counts = np.floor(exact).astype(np.int64)
    leftover = n - counts.sum(axis=1)
    remainder = exact - counts
    priority_rank = np.empty(len(SPLITS), dtype=np.int64)
    priority_rank[list(_PRIORITY)] = np.arange(len(SPLITS))
    # The priority order breaks ties, and near-ties that are only float noise.
    score = np.where(shares[None, :] > 0, remainder - priority_rank[None, :] * 1e-11, -np.inf)
    rank = np.argsort(np.argsort(-score, axis=1, kind="stable"), axis=1)
    counts += rank < leftover[:, None]

    minimum = np.zeros_like(counts)
    required = [code for code in _PRIORITY if shares[code] > 0]
    donor_order = np.argsort(priority_rank)[::-1]  # least important split gives first
    for position, code in enumerate(required):
        needs = (n > position) & (counts[:, code] == 0)
        surplus = (counts - exact).astype(float)
        # A donor stays within one record of its share and above its own minimum.
        can_give = (counts >= exact - 1e-9) & (counts - 1 >= minimum)
        can_give[:, code] = False
        candidates = np.where(can_give, surplus, -np.inf)[:, donor_order]
        donor = donor_order[np.argmax(candidates, axis=1)]
        ok = needs & np.isfinite(candidates.max(axis=1))
        rows = np.flatnonzero(ok)
        counts[rows, donor[ok]] -= 1
        counts[rows, code] += 1
        minimum[:, code] = (n > position).astype(np.int64)
    return counts


def _fill_largest_deficit(deficit: list[int], m: int, allowed: list[int]) -> list[int]:
    """How many of ``m`` records each split gets when each goes to the largest remaining deficit.

    Equal to handing them out one by one (ties in ``allowed`` order), in O(splits) steps.

    >>> _fill_largest_deficit([5, 1, 3], 4, [0, 2, 1])
    [3, 0, 1]
    """
    remaining = list(deficit)
    take = [0] * len(deficit)
    while m > 0:
        top = max(remaining[j] for j in allowed)
        tops = [j for j in allowed if remaining[j] == top]
        lower = [remaining[j] for j in allowed if remaining[j] < top]
        step = top - max(lower) if lower else None
        if step is not None and m >= len(tops) * step:
            for j in tops:
                take[j] += step
                remaining[j] -= step
            m -= len(tops) * step
            continue
        rounds, extra = divmod(m, len(tops))
        for position, j in enumerate(tops):
            take[j] += rounds + (position < extra)
        m = 0
    return take


def _factorize(values: list[str | None]) -> np.ndarray:
    """Codes in order of first appearance (None is a stratum of its own)."""
    index: dict[str | None, int] = {}
    return np.fromiter((index.setdefault(v, len(index)) for v in values), dtype=np.int64)


def _group_array(groups: Sequence[int], n: int) -> np.ndarray:
    if len(groups) != n:
        raise InputError(
            f"assign_splits: groups has {len(groups)} entries but strata has {n}; "
            "expected one group id per record"
        )
    array = np.asarray(groups)
    if n and array.dtype.kind not in "iu":
        raise InputError(f"assign_splits: groups must be integer ids; got dtype {array.dtype}")
    return array.astype(np.int64, copy=False).reshape(n)


def _given_codes(given: Sequence[str | None] | None, n: int) -> np.ndarray:
    if given is None:
        return np.full(n, _UNSET, dtype=np.int8)
    if len(given) != n:
        raise InputError(
            f"assign_splits: given has {len(given)} entries but strata has {n}; "
            "expected one split (or None) per record"
        )
    lookup: dict[str | None, int] = {**_CODE, None: _UNSET, "": _UNSET}
    codes = [lookup.get(value, -2) for value in given]
    array = np.array(codes, dtype=np.int8)
    bad = np.flatnonzero(array == -2)
    if bad.size:
        i = int(bad[0])
        raise InputError(
            f"record {i}, field 'split': unknown split {given[i]!r}; expected one of {SPLITS} "
            f"({bad.size} record(s) affected)",
            details={"indices": bad[:20].tolist()},
        )
    return array


def _frozen_codes(frozen: Mapping[int, str] | None, n: int) -> np.ndarray:
    array = np.full(n, _UNSET, dtype=np.int8)
    for index, split in (frozen or {}).items():
        if not 0 <= index < n:
            raise InputError(f"frozen split: record index {index} out of range 0..{n - 1}")
        if split not in _CODE:
            raise InputError(
                f"frozen split of record {index}: unknown split {split!r}; expected one of {SPLITS}"
            )
        array[index] = _CODE[split]
    return array


def _forced_code(new_records_to: str | None) -> int | None:
    if new_records_to is None:
        return None
    if new_records_to not in ("train", "val"):
        # A child's test split is its parent's: new records may not be forced into it.
        raise InputError(
            "The 'new_records_to' parameter of assign_splits must be 'train', 'val' or None. "
            f"Got {new_records_to!r} instead."
        )
    return _CODE[new_records_to]
