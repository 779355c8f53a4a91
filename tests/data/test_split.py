"""Leak-free splits: every rule of aifab.data.split as a property, plus the documented examples."""

from __future__ import annotations

import doctest
from collections import Counter, defaultdict

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aifab.core.config import SplitConfig
from aifab.core.errors import InputError
from aifab.data import split as split_module
from aifab.data.split import SPLITS, SplitResult, assign_splits, stratum_of

HELD_OUT = {"train": 0, "val": 1, "test": 2}
PROPERTY = settings(max_examples=200, deadline=None)
LABELS = st.sampled_from(["cat", "dog", "eel", None])


@st.composite
def ratio_configs(draw: st.DrawFn) -> SplitConfig:
    """Ratios including the zero cases and odd fractions."""
    val = draw(st.one_of(st.just(0.0), st.sampled_from([0.1, 0.15, 1 / 3]), st.floats(0.01, 0.45)))
    test = draw(st.one_of(st.just(0.0), st.sampled_from([0.2, 0.25, 0.5]), st.floats(0.01, 0.45)))
    return SplitConfig(val=val, test=test, seed=draw(st.integers(0, 2**32 - 1)))


@st.composite
def grouped_records(draw: st.DrawFn, max_size: int = 60) -> tuple[list[str | None], list[int]]:
    """Strata and group ids with planted duplicate groups (ids arbitrary, even negative)."""
    n = draw(st.integers(0, max_size))
    strata = draw(st.lists(LABELS, min_size=n, max_size=n))
    groups = list(range(n))
    # Plant duplicates: some records join the group of another record.
    for i in draw(st.lists(st.integers(0, max(n - 1, 0)), max_size=n)) if n else []:
        groups[i] = groups[draw(st.integers(0, n - 1))]
    return strata, [g * 7919 - 1000 for g in groups]


def members(groups: list[int]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = defaultdict(list)
    for i, g in enumerate(groups):
        out[g].append(i)
    return out


def assert_groups_whole(groups: list[int], splits: list[str]) -> None:
    for g, idx in members(groups).items():
        kept = {splits[i] for i in idx if splits[i] != ""}
        assert len(kept) <= 1, f"group {g} crosses splits: {kept}"


def assert_stratified(strata: list[str | None], splits: list[str], cfg: SplitConfig) -> None:
    """Each stratum's count per split is within one record of ratio * n; zero ratios get none."""
    per_stratum: dict[str | None, Counter[str]] = defaultdict(Counter)
    for s, name in zip(strata, splits):
        per_stratum[s][name] += 1
    for s, counts in per_stratum.items():
        total = sum(counts.values())
        for name, ratio in (("train", cfg.train), ("val", cfg.val), ("test", cfg.test)):
            assert abs(counts[name] - ratio * total) <= 1 + 1e-9, (s, dict(counts), cfg)
            if ratio == 0:
                assert counts[name] == 0
        assert counts["train"] >= 1, f"stratum {s!r} is missing from train: {dict(counts)}"


# --- rule 1 and 3: nothing given -------------------------------------------------------------


@PROPERTY
@given(grouped_records(), ratio_configs())
def test_every_record_gets_one_split_and_groups_stay_whole(records, cfg):
    strata, groups = records
    result = assign_splits(strata, groups, ratios=cfg)
    assert len(result.splits) == len(strata)
    assert set(result.splits) <= set(SPLITS)
    assert (result.moved, result.excluded, result.groups_crossing) == ([], [], 0)
    assert_groups_whole(groups, result.splits)
    for name, ratio in (("val", cfg.val), ("test", cfg.test)):
        if ratio == 0:
            assert name not in result.splits


@PROPERTY
@given(st.lists(LABELS, max_size=80), ratio_configs())
def test_singletons_are_stratified_within_one_record(strata, cfg):
    result = assign_splits(strata, list(range(len(strata))), ratios=cfg)
    assert_stratified(strata, result.splits, cfg)


@PROPERTY
@given(grouped_records(), ratio_configs())
def test_same_seed_and_inputs_give_the_same_split(records, cfg):
    strata, groups = records
    first = assign_splits(strata, groups, ratios=cfg)
    again = assign_splits(list(strata), list(groups), ratios=SplitConfig(**cfg.model_dump()))
    assert first == again


def test_a_different_seed_gives_a_different_split():
    strata = ["a", "b"] * 100
    groups = [i // 2 if i < 40 else i for i in range(200)]  # some pairs, many singletons
    one = assign_splits(strata, groups, ratios=SplitConfig(seed=1)).splits
    two = assign_splits(strata, groups, ratios=SplitConfig(seed=2)).splits
    assert one != two
    assert Counter(one) == Counter(two)  # same targets, different records


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (1, {"train": 1}),
        (2, {"train": 1, "test": 1}),
        (3, {"train": 2, "test": 1}),  # 1/1/1 would put train 1.1 records off its 2.1 share
        (4, {"train": 2, "val": 1, "test": 1}),
        (10, {"train": 7, "val": 1, "test": 2}),
    ],
)
def test_tiny_classes_appear_in_train_then_test_then_val(n, expected):
    result = assign_splits(["rare"] * n, list(range(n)), ratios=SplitConfig())
    assert Counter(result.splits) == expected


@pytest.mark.parametrize(
    ("val", "test", "n", "expected"),
    [
        (0.0, 0.2, 2, {"train": 1, "test": 1}),
        (0.1, 0.0, 2, {"train": 1, "val": 1}),  # no test split: val comes second
        (0.0, 0.0, 5, {"train": 5}),
        (0.45, 0.5, 1, {"train": 1}),  # train first even when its share is the smallest
    ],
)
def test_tiny_classes_with_zero_or_extreme_ratios(val, test, n, expected):
    result = assign_splits(["x"] * n, list(range(n)), ratios=SplitConfig(val=val, test=test))
    assert Counter(result.splits) == expected


def test_a_lone_duplicate_group_of_a_class_goes_to_train():
    result = assign_splits(["rare", "rare", "common"], [5, 5, 6], ratios=SplitConfig())
    assert result.splits[:2] == ["train", "train"]


def realistic(n: int, seed: int) -> tuple[list[str], list[int]]:
    """Imbalanced classes; 10% of the records copy another record (same content, same label)."""
    rng = np.random.default_rng(seed)
    strata = rng.choice(["a", "b", "c", "d", "e"], size=n, p=[0.45, 0.25, 0.15, 0.1, 0.05])
    groups = np.arange(n)
    copies = rng.choice(n, n // 10, replace=False)
    originals = rng.choice(np.setdiff1d(np.arange(n), copies), copies.size)
    groups[copies] = originals
    strata[copies] = strata[originals]
    return strata.tolist(), groups.tolist()


@pytest.mark.parametrize("seed", range(5))
def test_totals_stay_close_to_the_ratios_with_ten_percent_duplicates(seed):
    n = 5000
    strata, groups = realistic(n, seed)
    cfg = SplitConfig(val=0.15, test=0.2, seed=seed)
    result = assign_splits(strata, groups, ratios=cfg)
    assert_groups_whole(groups, result.splits)
    totals = Counter(result.splits)
    for name, ratio in (("train", cfg.train), ("val", cfg.val), ("test", cfg.test)):
        assert abs(totals[name] - ratio * n) <= 0.005 * n, totals
    # Duplicates share their label here, so each class also stays close to the ratios.
    assert_close_per_stratum(strata, result.splits, cfg, slack=3)


def assert_close_per_stratum(strata, splits, cfg, *, slack: int) -> None:
    per_stratum: dict[str, Counter[str]] = defaultdict(Counter)
    for s, name in zip(strata, splits):
        per_stratum[s][name] += 1
    for counts in per_stratum.values():
        total = sum(counts.values())
        for name, ratio in (("train", cfg.train), ("val", cfg.val), ("test", cfg.test)):
            assert abs(counts[name] - ratio * total) <= slack, counts


def test_duplicate_groups_spread_over_all_splits_not_only_train():
    """Duplicated content is placed like the rest: it is held out in proportion too."""
    groups = [i // 2 for i in range(200)] + list(range(100, 900))  # 100 pairs, 800 singletons
    result = assign_splits(["a"] * 1000, groups, ratios=SplitConfig())
    assert Counter(result.splits) == {"train": 700, "val": 100, "test": 200}
    assert Counter(result.splits[:200]) == {"train": 140, "val": 20, "test": 40}


def test_singletons_fill_the_largest_deficit_left_by_a_big_group():
    # 10 records -> targets 7/1/2; the group of 9 overshoots train by 2, so the last record
    # goes where the most is missing: test (2) before val (1).
    result = assign_splits(["a"] * 10, [0] * 9 + [1], ratios=SplitConfig())
    assert result.splits == ["train"] * 9 + ["test"]


def test_equal_sized_groups_are_shuffled_by_the_seed():
    groups = [i // 2 for i in range(400)]
    one = assign_splits(["a"] * 400, groups, ratios=SplitConfig(seed=1)).splits
    two = assign_splits(["a"] * 400, groups, ratios=SplitConfig(seed=2)).splits
    assert one != two


def test_a_group_takes_the_stratum_most_of_its_members_have():
    # One group of 3 (2 x "b", 1 x "a") plus 7 singletons of "b": the group counts toward "b",
    # so "b" (10 records) gets exactly 7/1/2 and stratum "a" has no records of its own to place.
    strata = ["b", "a", "b"] + ["b"] * 7
    groups = [0, 0, 0] + list(range(1, 8))
    result = assign_splits(strata, groups, ratios=SplitConfig())
    assert Counter(result.splits) == {"train": 7, "val": 1, "test": 2}


def test_two_hundred_thousand_records_run():
    n = 200_000
    strata, groups = realistic(n, seed=11)
    result = assign_splits(strata, groups, ratios=SplitConfig(seed=11))
    codes = np.array([HELD_OUT[s] for s in result.splits])
    group_ids = np.array(groups)
    order = np.argsort(group_ids, kind="stable")
    same_group = np.diff(group_ids[order]) == 0
    assert np.all(np.diff(codes[order])[same_group] == 0)
    assert abs(np.mean(codes == 2) - 0.2) < 0.001


# --- rule 2: the user's split ---------------------------------------------------------------


@st.composite
def with_given(draw: st.DrawFn, *, complete: bool):
    strata, groups = draw(grouped_records())
    choice = st.sampled_from(SPLITS) if complete else st.sampled_from([*SPLITS, None, ""])
    given_splits = draw(st.lists(choice, min_size=len(strata), max_size=len(strata)))
    return strata, groups, given_splits


def expected_from_given(groups, given_splits):
    """The most held-out given split of each group, or None when no member brings one."""
    most: dict[int, str | None] = {}
    for g, idx in members(groups).items():
        brought = [given_splits[i] for i in idx if given_splits[i]]
        most[g] = max(brought, key=HELD_OUT.__getitem__) if brought else None
    return most


@PROPERTY
@given(with_given(complete=True), ratio_configs())
def test_a_complete_given_split_is_kept_except_crossing_groups(case, cfg):
    strata, groups, given_splits = case
    result = assign_splits(strata, groups, given=given_splits, ratios=cfg)
    most = expected_from_given(groups, given_splits)
    assert result.splits == [most[g] for g in groups]
    assert result.moved == [i for i, s in enumerate(given_splits) if result.splits[i] != s]
    assert result.groups_crossing == sum(
        len({given_splits[i] for i in idx}) > 1 for idx in members(groups).values()
    )
    assert result.excluded == []
    assert all(result.splits[i] == "test" for i, s in enumerate(given_splits) if s == "test")


@PROPERTY
@given(with_given(complete=False), ratio_configs())
def test_a_partial_given_split_is_kept_and_the_rest_split_whole(case, cfg):
    strata, groups, given_splits = case
    result = assign_splits(strata, groups, given=given_splits, ratios=cfg)
    most = expected_from_given(groups, given_splits)
    assert set(result.splits) <= set(SPLITS)
    assert_groups_whole(groups, result.splits)
    for i, g in enumerate(groups):
        if most[g] is not None:
            assert result.splits[i] == most[g]
    assert result.moved == [
        i for i, s in enumerate(given_splits) if s and result.splits[i] != s
    ]


@PROPERTY
@given(st.lists(st.tuples(LABELS, st.sampled_from([*SPLITS, None]))), ratio_configs())
def test_records_without_a_given_split_are_split_by_ratio(rows, cfg):
    strata = [s for s, _ in rows]
    given_splits = [g for _, g in rows]
    result = assign_splits(strata, list(range(len(rows))), given=given_splits, ratios=cfg)
    rest = [i for i, g in enumerate(given_splits) if g is None]
    assert_stratified([strata[i] for i in rest], [result.splits[i] for i in rest], cfg)


# --- rule 4: child versions -----------------------------------------------------------------


@st.composite
def parent_and_child(draw: st.DrawFn):
    """A parent split by aifab, then new records: some duplicate parent records, some are new."""
    strata, groups = draw(grouped_records(max_size=40))
    cfg = draw(ratio_configs())
    parent = assign_splits(strata, groups, ratios=cfg)
    k = draw(st.integers(0, 30))
    new_strata = draw(st.lists(LABELS, min_size=k, max_size=k))
    pool = sorted(set(groups)) + [10**9 + j for j in range(k + 1)]  # old groups or fresh ones
    new_groups = draw(st.lists(st.sampled_from(pool), min_size=k, max_size=k))
    frozen = dict(enumerate(parent.splits))
    return strata + new_strata, groups + new_groups, frozen, cfg


@PROPERTY
@given(parent_and_child(), st.sampled_from([None, "train"]))
def test_a_child_keeps_its_parents_splits_and_never_leaks_its_test_set(case, new_records_to):
    strata, groups, frozen, cfg = case
    result = assign_splits(
        strata, groups, frozen=frozen, ratios=cfg, new_records_to=new_records_to
    )
    assert all(result.splits[i] == s for i, s in frozen.items())
    old_split = {groups[i]: s for i, s in frozen.items()}
    new = [i for i in range(len(strata)) if i not in frozen]
    assert result.excluded == [i for i in new if old_split.get(groups[i]) == "test"]
    assert all(result.splits[i] == "" for i in result.excluded)
    for i in new:
        if old_split.get(groups[i]) in ("train", "val"):
            assert result.splits[i] == old_split[groups[i]]
        elif groups[i] not in old_split and new_records_to == "train":
            assert result.splits[i] == "train"
    assert_groups_whole(groups, result.splits)
    child_test = {i for i, s in enumerate(result.splits) if s == "test"}
    parent_test = {i for i, s in frozen.items() if s == "test"}
    assert parent_test <= child_test
    if new_records_to == "train":
        assert child_test == parent_test
    assert result.moved == []
    assert result.groups_crossing == (0 if new_records_to is None else sum(
        len({old_split[g], "train"}) > 1 for g in {groups[i] for i in new} if g in old_split
    ))


@PROPERTY
@given(st.lists(LABELS, min_size=1, max_size=40), st.integers(0, 40), ratio_configs())
def test_new_records_of_a_child_are_stratified_by_ratio(new_strata, n_old, cfg):
    strata = ["old"] * n_old + new_strata
    frozen = {i: "val" for i in range(n_old)}  # an odd parent: the child must not care
    result = assign_splits(strata, list(range(len(strata))), frozen=frozen, ratios=cfg)
    assert result.splits[:n_old] == ["val"] * n_old
    assert_stratified(new_strata, result.splits[n_old:], cfg)


@PROPERTY
@given(
    grouped_records(),
    st.data(),
    ratio_configs(),
    st.sampled_from([None, "train", "val"]),
)
def test_any_frozen_map_is_kept_exactly_and_frozen_test_groups_get_no_new_records(
    records, data, cfg, new_records_to
):
    strata, groups = records
    n = len(strata)
    frozen = data.draw(
        st.dictionaries(st.integers(0, n - 1), st.sampled_from(SPLITS)) if n else st.just({})
    )
    given_splits = data.draw(st.lists(st.sampled_from([*SPLITS, None]), min_size=n, max_size=n))
    result = assign_splits(
        strata, groups, given=given_splits, frozen=frozen, ratios=cfg, new_records_to=new_records_to
    )
    assert all(result.splits[i] == s for i, s in frozen.items())
    frozen_test_groups = {groups[i] for i, s in frozen.items() if s == "test"}
    assert result.excluded == [
        i for i in range(n) if i not in frozen and groups[i] in frozen_test_groups
    ]
    for g, idx in members(groups).items():
        if len({frozen[i] for i in idx if i in frozen}) <= 1:  # a parent that did not leak
            assert len({result.splits[i] for i in idx} - {""}) <= 1


# --- helpers, inputs, examples ----------------------------------------------------------------


def test_stratum_is_the_rarest_label():
    counts = {"cat": 50, "dog": 5, "eel": 5}
    assert stratum_of(["cat", "eel", "dog"], counts) == "dog"
    assert stratum_of(["cat"], counts) == "cat"
    assert stratum_of(["new", "cat"], counts) == "new"
    assert stratum_of([], counts) is None


def test_empty_input_gives_an_empty_result():
    assert assign_splits([], [], ratios=SplitConfig()) == SplitResult([], [], [], 0)


def test_the_module_examples_run():
    assert doctest.testmod(split_module).failed == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"groups": [1]}, "groups has 1 entries but strata has 2"),
        ({"given": ["train", "tset"]}, "record 1, field 'split': unknown split 'tset'"),
        ({"given": ["train"]}, "given has 1 entries"),
        ({"frozen": {5: "train"}}, "record index 5 out of range"),
        ({"frozen": {0: "dev"}}, "frozen split of record 0: unknown split 'dev'"),
        ({"new_records_to": "test"}, "'new_records_to' parameter"),
        ({"groups": ["a", "b"]}, "groups must be integer ids"),
    ],
)
def test_bad_inputs_name_what_is_wrong(kwargs, message):
    arguments = {"groups": [1, 2], "ratios": SplitConfig(), **kwargs}
    with pytest.raises(InputError, match=message):
        assign_splits(["a", "b"], **arguments)
