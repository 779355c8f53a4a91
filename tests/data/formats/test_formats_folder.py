"""Image folders by class: layouts, splits, skipped files, loose images and symlinks."""

from __future__ import annotations

from pathlib import Path

import pytest

from aifab.core.errors import FormatError
from aifab.data.formats import ReaderOptions, count_hint
from aifab.data.formats.folder import read_folder


def summary(root: Path, **options) -> list[tuple[str, str | None, str | None, list[str]]]:
    return [
        (r.source, r.fields.get("category"), r.split, [c for c, _ in r.problems])
        for r in read_folder(root, ReaderOptions(**options))
    ]


def test_class_folders_hidden_and_non_image_files(tmp_path: Path, write_png) -> None:
    root = tmp_path / "pets"
    write_png(root / "dog" / "b.png")
    write_png(root / "cat" / "z.JPG")
    write_png(root / "cat" / "a.jpeg")
    write_png(root / "cat" / "more" / "deep.webp")
    write_png(root / "cat" / ".hidden.png")
    write_png(root / ".thumbs" / "x.png")
    write_png(root / "__MACOSX" / "cat" / "y.png")
    (root / "cat" / ".DS_Store").write_bytes(b"\0\0")
    (root / "cat" / "README.txt").write_text("not an image")
    (root / "dog" / "c.Tiff").write_bytes(b"")  # empty: still yielded, the image gate judges it
    assert summary(root) == [
        ("cat/a.jpeg", "cat", None, []),
        ("cat/more/deep.webp", "cat", None, []),
        ("cat/z.JPG", "cat", None, []),
        ("dog/b.png", "dog", None, []),
        ("dog/c.Tiff", "dog", None, []),
    ]
    records = list(read_folder(root, ReaderOptions()))
    assert records[0].image_path == (root / "cat" / "a.jpeg").resolve()
    assert records[0].image_path.is_absolute()


def test_split_folders_with_aliases(tmp_path: Path, write_png) -> None:
    root = tmp_path / "ds"
    write_png(root / "train" / "cat" / "1.png")
    write_png(root / "train" / "dog" / "2.png")
    write_png(root / "validation" / "cat" / "3.png")
    write_png(root / "test" / "dog" / "4.png")
    assert summary(root, split="train") == [  # the folders win over the option
        ("test/dog/4.png", "dog", "test", []),
        ("train/cat/1.png", "cat", "train", []),
        ("train/dog/2.png", "dog", "train", []),
        ("validation/cat/3.png", "cat", "val", []),
    ]


def test_a_class_named_like_a_split_among_others_is_a_class(tmp_path: Path, write_png) -> None:
    root = tmp_path / "ds"
    write_png(root / "test" / "1.png")
    write_png(root / "prod" / "2.png")
    assert summary(root) == [("prod/2.png", "prod", None, []), ("test/1.png", "test", None, [])]


def test_images_outside_class_folders_are_yielded_without_a_label(
    tmp_path: Path, write_png
) -> None:
    root = tmp_path / "ds"
    write_png(root / "cat" / "1.png")
    write_png(root / "loose.png")
    assert summary(root) == [
        ("cat/1.png", "cat", None, []),
        ("loose.png", None, None, ["missing_label"]),
    ]
    split_root = tmp_path / "split"
    write_png(split_root / "train" / "cat" / "1.png")
    write_png(split_root / "train" / "stray.png")
    write_png(split_root / "top.png")
    assert summary(split_root) == [
        ("top.png", None, None, ["missing_label"]),
        ("train/cat/1.png", "cat", "train", []),
        ("train/stray.png", None, "train", ["missing_label"]),
    ]


def test_a_folder_without_class_folders_explains_the_layout(tmp_path: Path, write_png) -> None:
    write_png(tmp_path / "a.png")
    with pytest.raises(FormatError, match=r"root/<label>/<image>"):
        read_folder(tmp_path, ReaderOptions())
    (tmp_path / ".git").mkdir()  # hidden folders are not classes
    with pytest.raises(FormatError, match="no class folders"):
        read_folder(tmp_path, ReaderOptions())
    with pytest.raises(FormatError, match="not a folder"):
        read_folder(tmp_path / "a.png", ReaderOptions())


def test_symlinks_out_of_the_root_are_reported_and_not_followed(tmp_path: Path, write_png) -> None:
    root = tmp_path / "ds"
    write_png(root / "cat" / "1.png")
    outside = write_png(tmp_path / "elsewhere" / "secret.png")
    (root / "cat" / "leak.png").symlink_to(outside)
    (root / "dog").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (root / "cat" / "inside.png").symlink_to(root / "cat" / "1.png")
    (root / "cat" / "dangling.png").symlink_to(root / "cat" / "gone.png")
    records = {r.source: r for r in read_folder(root, ReaderOptions())}
    assert sorted(records) == [
        "cat/1.png",
        "cat/dangling.png",
        "cat/inside.png",
        "cat/leak.png",
        "dog",
    ]
    for source in ("cat/leak.png", "dog"):
        assert records[source].image_path is None
        assert records[source].problems[0][0] == "missing_file"
        assert "escapes the source root" in records[source].problems[0][1]
    assert records["cat/inside.png"].image_path == (root / "cat" / "1.png").resolve()
    assert records["cat/inside.png"].problems == []
    assert [c for c, _ in records["cat/dangling.png"].problems] == ["missing_file"]


def test_class_names_and_file_names_in_unicode(tmp_path: Path, write_png) -> None:
    root = tmp_path / "ds"
    write_png(root / "猫" / "写真 1.png")
    write_png(root / "قطة" / "صورة.png")
    assert summary(root) == [("قطة/صورة.png", "قطة", None, []), ("猫/写真 1.png", "猫", None, [])]


def test_count_hint_counts_the_images(tmp_path: Path, write_png) -> None:
    write_png(tmp_path / "cat" / "1.png")
    write_png(tmp_path / "cat" / "2.png")
    write_png(tmp_path / "dog" / ".3.png")
    (tmp_path / "dog" / "notes.md").write_text("x")
    assert count_hint(tmp_path, None) == 2
