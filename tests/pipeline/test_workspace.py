"""The workspace facade end to end: real files in, a real SQLite file and artifact folder out."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from aifab.core.errors import GateFailed, NotFound, WorkspaceError
from aifab.pipeline.project import Workspace


def test_init_creates_config_database_and_store(tmp_path: Path) -> None:
    ws = Workspace.init(tmp_path / "w")
    assert (tmp_path / "w" / "aifab.yaml").is_file()
    assert (tmp_path / "w" / ".aifab" / "aifab.db").is_file()
    ws.close()
    # Opening from a subfolder finds the workspace above it, like git.
    sub = tmp_path / "w" / "a" / "b"
    sub.mkdir(parents=True)
    with Workspace.open(sub) as again:
        assert again.root == (tmp_path / "w").resolve()


def test_open_without_workspace_says_how_to_create_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIFAB_WORKSPACE", raising=False)
    with pytest.raises(WorkspaceError, match="aifab init"):
        Workspace.open(tmp_path)


def test_image_folder_keeps_good_images_and_quarantines_broken_ones(workspace: Workspace, image_folder: Path) -> None:
    version = workspace.ingest(image_folder, name="pets")
    assert version.num_records == 24
    assert version.label_counts == {"cat": 12, "dog": 12}
    assert version.num_quarantined == 3
    quarantined = {r.source for r in workspace.quarantined(version)}
    assert quarantined == {"cat/truncated.jpg", "dog/empty.png", "dog/notes.png"}
    report = workspace.report(version)
    reasons = {src: f["message"] for f in report["findings"] for src in f["sources"] if f["check"] == "unreadable_image"}
    assert set(reasons) == quarantined
    # Every kept image decodes from the store, and its size is recorded.
    from PIL import Image
    import io

    for record in workspace.records(version):
        with Image.open(io.BytesIO(workspace.blob(record.image))) as im:
            assert im.size == (record.width, record.height) == (16, 16)


def test_same_data_twice_gives_the_same_version(workspace: Workspace, sms_csv: Path) -> None:
    first = workspace.ingest(sms_csv, name="sms")
    second = workspace.ingest(sms_csv, name="sms")
    assert first.id == second.id
    assert [v.id for v in workspace.datasets("sms")] == [first.id]


def test_duplicates_are_found_and_share_a_split(workspace: Workspace, sms_csv: Path) -> None:
    version = workspace.ingest(sms_csv, name="sms")
    report = workspace.report(version)
    split_of = {r.id: r.split for r in workspace.records(version)}
    exact = [f for f in report["findings"] if f["check"] == "exact_duplicate"]
    assert len(exact) == 1 and len(exact[0]["record_ids"]) == 2
    for f in report["findings"]:
        if f["check"].endswith("duplicate") or f["check"].startswith("near_duplicate"):
            assert len({split_of[i] for i in f["record_ids"] if i in split_of}) == 1
    # The ham template messages differ by one number: near duplicates, found by MinHash.
    assert any(f["check"] == "near_duplicate_text" for f in report["findings"])


def test_a_blocking_policy_refuses_the_version_and_writes_nothing(tmp_path: Path, sms_csv: Path) -> None:
    ws = Workspace.init(tmp_path / "w")
    config = (tmp_path / "w" / "aifab.yaml").read_text().replace("exact_duplicate: warn", "exact_duplicate: block")
    (tmp_path / "w" / "aifab.yaml").write_text(config)
    ws = Workspace.open(tmp_path / "w")
    with pytest.raises(GateFailed, match="exact_duplicate") as info:
        ws.ingest(sms_csv, name="sms")
    assert info.value.details["report"]["blocked"] is True
    assert ws.datasets() == []
    with pytest.raises(NotFound):
        ws.dataset("sms")


def test_child_version_keeps_the_parent_test_split_frozen(workspace: Workspace, tmp_path: Path) -> None:
    def write(rows: int) -> Path:
        path = tmp_path / f"t{rows}.csv"
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["text", "label"])
            for i in range(rows):
                w.writerow([f"sentence {i} about topic {'alpha beta gamma'.split()[i % 3]} with words {i * 7}", "abc"[i % 3]])
        return path

    parent = workspace.ingest(write(60), name="topics")
    child = workspace.ingest(write(90), name="topics")
    assert child.parent == parent.id and child.id != parent.id
    parent_splits = {r.id: r.split for r in workspace.records(parent)}
    child_splits = {r.id: r.split for r in workspace.records(child)}
    for rid, split in parent_splits.items():
        assert child_splits[rid] == split
    assert child.num_records == 90
    # `fresh` starts a new lineage instead.
    assert workspace.ingest(write(30), name="topics", fresh=True).parent is None


def test_unknown_dataset_names_the_nearest(workspace: Workspace, sms_csv: Path) -> None:
    workspace.ingest(sms_csv, name="sms")
    with pytest.raises(NotFound, match="sms"):
        workspace.dataset("smss")


def test_train_and_test_without_val_gets_val_carved_from_train(workspace: Workspace, tmp_path: Path) -> None:
    path = tmp_path / "tt.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label", "split"])
        for i in range(100):
            w.writerow([f"unique sentence {i} {'x' * (i % 7)} number {i * 13}", "ab"[i % 2], "test" if i < 20 else "train"])
    version = workspace.ingest(path, name="tt")
    assert version.split_counts["test"] == 20  # the user's test split is untouched
    assert version.split_counts["val"] > 0 and version.split_counts["train"] + version.split_counts["val"] == 80
    by_source = {r.source: r.split for r in workspace.records(version)}
    assert all(by_source[f"tt.csv:{i + 2}"] == "test" for i in range(20))
