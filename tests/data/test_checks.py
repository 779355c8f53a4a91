"""Dataset-level findings and the policy step (block / quarantine / warn / off)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from aifab.core.config import ChecksConfig
from aifab.core.types import Finding
from aifab.data.checks import (
    DUPLICATE_CHECKS,
    apply_policies,
    duplicate_findings,
    label_findings,
    record_findings,
)
from aifab.data.images import inspect_image
from aifab.data.texts import text_problems

# --- per-record problems -> findings ---------------------------------------------------------


def test_record_findings_keep_every_record_and_source() -> None:
    problems = {
        "r1": [("empty_text", "text is empty"), ("missing_label", "no label")],
        "r2": [("empty_text", "text is empty")],
        "r3": [
            ("wrong_extension", "a.jpg: extension '.jpg' is a JPEG extension but the file is PNG")
        ],
    }
    sources = {"r1": "t.csv:2", "r2": "t.csv:3", "r3": "a.jpg"}
    found = {(f.check, f.message): f for f in record_findings(problems, sources)}
    assert len(found) == 3
    empty = found[("empty_text", "text is empty")]
    assert empty.record_ids == ("r1", "r2") and empty.sources == ("t.csv:2", "t.csv:3")
    assert empty.severity == "error"
    assert found[("missing_label", "no label")].record_ids == ("r1",)
    assert found[("wrong_extension", problems["r3"][0][1])].severity == "warning"


def test_unusable_data_is_an_error_and_the_rest_warnings() -> None:
    problems = {
        f"r{i}": [(check, "m")]
        for i, check in enumerate(
            [
                "unreadable_image",
                "image_bomb",
                "missing_file",
                "empty_text",
                "image_mode",
                "invalid_utf8",
                "rare_label",
            ]
        )
    }
    severity = {f.check: f.severity for f in record_findings(problems, {})}
    assert severity == {
        "unreadable_image": "error",
        "image_bomb": "error",
        "missing_file": "error",
        "empty_text": "error",
        "image_mode": "warning",
        "invalid_utf8": "warning",
        "rare_label": "warning",
    }


# --- duplicates and conflicting labels ---------------------------------------------------------


def test_duplicate_findings_one_per_group_first_member_kept() -> None:
    ids = ["a", "b", "c", "d", "e"]
    keys = ["text:x", "text:y", "text:x", "text:y", "text:z"]
    labels = [["spam"], ["ham"], ["spam"], ["ham"], ["ham"]]
    found = duplicate_findings(
        ids,
        keys,
        labels,
        kind="exact",
        groups=[0, 1, 0, 1, 4],
        sources=["s:1", "s:2", "s:3", "s:4", "s:5"],
    )
    assert [(f.check, f.record_ids, f.sources) for f in found] == [
        ("exact_duplicate", ("a", "c"), ("s:1", "s:3")),
        ("exact_duplicate", ("b", "d"), ("s:2", "s:4")),
    ]
    assert "'text:x'" in found[0].message and "a is the copy kept" in found[0].message


def test_group_ids_may_be_any_ints_and_members_keep_input_order() -> None:
    ids = ["a", "b", "c", "d"]
    found = duplicate_findings(
        ids, ["k"] * 4, [[]] * 4, kind="near_text", groups=np.array([7, -1, 7, -2])
    )
    assert [(f.check, f.record_ids) for f in found] == [("near_duplicate_text", ("a", "c"))]
    found = duplicate_findings(ids, ["k"] * 4, [[]] * 4, kind="near_image", groups=[5, 5, 3, 5])
    assert [(f.check, f.record_ids) for f in found] == [("near_duplicate_image", ("a", "b", "d"))]


def test_conflicting_labels_list_every_label_and_flag_the_minority() -> None:
    ids = ["a", "b", "c", "d"]
    labels = [["spam"], ["ham"], ["spam"], []]
    found = duplicate_findings(ids, ["text:win"] * 4, labels, kind="exact", groups=[0, 0, 0, 0])
    conflict = [f for f in found if f.check == "conflicting_labels"]
    # 'spam' is the clear majority: only the copy labelled otherwise is suspect.
    assert len(conflict) == 1 and conflict[0].record_ids == ("b",)
    assert "'ham' (1), 'spam' (2)" in conflict[0].message and "majority" in conflict[0].message


def test_conflicting_labels_without_a_majority_flag_every_labelled_copy() -> None:
    labels = [["spam"], ["ham"], []]
    found = duplicate_findings(["a", "b", "c"], ["k"] * 3, labels, kind="exact", groups=[0, 0, 0])
    conflict = [f for f in found if f.check == "conflicting_labels"]
    assert conflict[0].record_ids == ("a", "b")


def test_same_label_sets_in_any_order_do_not_conflict() -> None:
    labels = [["x", "y"], ["y", "x"], []]  # an unlabeled copy is a missing label, not a conflict
    found = duplicate_findings(["a", "b", "c"], ["k"] * 3, labels, kind="exact", groups=[0, 0, 0])
    assert [f.check for f in found] == ["exact_duplicate"]


def test_duplicate_findings_refuse_unknown_kind_and_ragged_input() -> None:
    from aifab.core.errors import ConfigError

    with pytest.raises(ConfigError, match="near_txt"):
        duplicate_findings(["a"], ["k"], [[]], kind="near_txt", groups=[0])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="one entry per record"):
        duplicate_findings(["a", "b"], ["k"], [[], []], kind="exact", groups=[0, 0])


# --- labels ------------------------------------------------------------------------------------


def test_class_imbalance_names_both_classes_and_counts() -> None:
    labels = [["ham"]] * 25 + [["spam"]] * 2 + [["eggs"]] * 5
    ids = [f"r{i}" for i in range(len(labels))]
    found = label_findings(ids, labels, imbalance_ratio=10, min_records_per_label=1)
    assert [f.check for f in found] == ["class_imbalance"]
    assert "'ham' has 25" in found[0].message and "'spam' has 2" in found[0].message


def test_ratio_at_the_limit_is_not_imbalanced() -> None:
    labels = [["a"]] * 10 + [["b"]]
    found = label_findings(
        [str(i) for i in range(11)], labels, imbalance_ratio=10, min_records_per_label=1
    )
    assert found == []


def test_rare_labels_list_their_records_multi_label_counted_once_each() -> None:
    ids = ["a", "b", "c", "d"]
    labels = [["x", "y"], ["x", "x"], ["x"], ["z"]]
    found = label_findings(ids, labels, imbalance_ratio=100, min_records_per_label=2)
    assert [(f.check, f.record_ids) for f in found] == [
        ("rare_label", ("a",)),
        ("rare_label", ("d",)),
    ]
    assert "'y' has 1 record;" in found[0].message


# --- policies ------------------------------------------------------------------------------------


def finding(check: str, *ids: str) -> Finding:
    return Finding(check=check, severity="warning", message=f"{check} found", record_ids=ids)


def test_off_drops_the_finding() -> None:
    report = apply_policies([finding("rare_label", "a")], ChecksConfig(rare_label="off"))
    assert report.findings == () and report.quarantined == () and not report.blocked


def test_warn_reports_and_keeps_the_records() -> None:
    report = apply_policies([finding("empty_text", "a")], ChecksConfig(empty_text="warn"))
    assert [f.action for f in report.findings] == ["warn"] and report.quarantined == ()
    assert not report.blocked


def test_quarantine_takes_every_record_of_a_record_check() -> None:
    report = apply_policies(
        [finding("empty_text", "a", "b")], ChecksConfig(empty_text="quarantine")
    )
    assert report.quarantined == ("a", "b") and report.findings[0].action == "quarantine"


@pytest.mark.parametrize("check", sorted(DUPLICATE_CHECKS.values()))
def test_quarantine_of_a_duplicate_group_keeps_the_first_copy(check: str) -> None:
    report = apply_policies(
        [finding(check, "keep", "dup1", "dup2")], ChecksConfig(**{check: "quarantine"})
    )
    assert report.quarantined == ("dup1", "dup2")


def test_quarantine_of_conflicting_labels_takes_every_member() -> None:
    report = apply_policies([finding("conflicting_labels", "a", "b")], ChecksConfig())
    assert report.quarantined == ("a", "b")


def test_block_refuses_the_version() -> None:
    report = apply_policies(
        [finding("class_imbalance"), finding("rare_label", "x")],
        ChecksConfig(class_imbalance="block"),
    )
    assert report.blocked and report.counts["blocked_by"] == ["class_imbalance"]
    assert {f.check: f.action for f in report.findings} == {
        "class_imbalance": "block",
        "rare_label": "warn",
    }


def test_unknown_check_is_a_warning_not_dropped() -> None:
    report = apply_policies([finding("brand_new_check", "a")], ChecksConfig())
    assert [(f.check, f.action) for f in report.findings] == [("brand_new_check", "warn")]


def test_counts_and_idempotence() -> None:
    findings = [
        finding("empty_text", "a", "b"),
        finding("non_printable_text", "b", "c"),
        finding("exact_duplicate", "d", "e"),
        finding("invalid_utf8", "f"),
    ]
    policies = ChecksConfig(exact_duplicate="quarantine")
    report = apply_policies(findings, policies)
    assert report.quarantined == ("a", "b", "c", "e")
    assert report.counts["quarantined"] == 4
    assert report.counts["records_by_check"] == {
        "empty_text": 2,
        "exact_duplicate": 2,
        "invalid_utf8": 1,
        "non_printable_text": 2,
    }
    assert report.counts["findings_by_action"] == {"quarantine": 3, "warn": 1}
    again = apply_policies(report.findings, policies)
    assert again == report


# --- every emitted check name is a ChecksConfig policy -----------------------------------------


def test_every_emitted_check_has_a_policy(tmp_path: Path) -> None:
    emitted: set[str] = set()
    (tmp_path / "empty.png").write_bytes(b"")
    Image.new("RGBA", (4, 4)).save(tmp_path / "alpha.jpg", format="PNG")  # mode + wrong extension
    Image.new("RGB", (64, 64)).save(tmp_path / "big.png")
    for name, limit in (
        ("empty.png", 100),
        ("alpha.jpg", 100),
        ("big.png", 100),
        ("gone.png", 100),
    ):
        emitted |= {check for check, _ in inspect_image(tmp_path / name, max_pixels=limit).problems}
    for text in ("", "\x01\x02\x03", "a\udcff"):
        emitted |= {check for check, _ in text_problems(text, non_printable_fraction=0.3)}
    for kind in DUPLICATE_CHECKS:
        found = duplicate_findings(
            ["a", "b"],
            ["k", "k"],
            [["x"], ["y"]],
            kind=kind,
            groups=[0, 0],  # type: ignore[arg-type]
        )
        emitted |= {f.check for f in found}
    emitted |= {
        f.check
        for f in label_findings(
            ["a"] * 3, [["x"], ["x"], ["y"]], imbalance_ratio=1.5, min_records_per_label=2
        )
    }
    expected = {
        "unreadable_image",
        "image_bomb",
        "image_mode",
        "wrong_extension",
        "missing_file",
        "empty_text",
        "non_printable_text",
        "invalid_utf8",
        "exact_duplicate",
        "near_duplicate_text",
        "near_duplicate_image",
        "conflicting_labels",
        "class_imbalance",
        "rare_label",
    }
    assert emitted == expected  # every check this package emits was exercised ...
    assert emitted <= set(ChecksConfig.model_fields)  # ... and each has a policy
