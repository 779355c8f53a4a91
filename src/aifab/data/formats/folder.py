"""Image folders by class: ``root/<label>/*.png``, optionally under split folders.

Layouts::

    root/cat/1.png                 root/train/cat/1.png
    root/dog/2.jpg                 root/val/dog/2.jpg      (or valid/, validation/, dev/)
                                   root/test/cat/3.png

When every top-level folder is named like a split, they are the splits and the
class folders are one level below; otherwise the top-level folders are the classes.
Images deeper inside a class folder belong to that class. Hidden files and folders
(``.DS_Store``, ``.git/``) and files that are not images (by suffix, any case) are
skipped; an image outside any class folder is yielded with a ``missing_label``
problem, and an empty or broken image is yielded as is: the image gate judges it.
Symlinked folders are not followed; a symlink leading out of the root is yielded
with a ``missing_file`` problem and never opened. Order is sorted by name.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

from aifab.core.errors import FormatError, InputError
from aifab.data.formats import ReaderOptions, normalize_split, option_split, repair_text
from aifab.data.formats.paths import confine
from aifab.data.records import RawRecord

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
# Folders archivers leave behind that never hold data.
_JUNK_FOLDERS = frozenset({"__MACOSX"})
_LAYOUT = (
    "expected one folder per class (root/<label>/<image>), optionally inside split folders "
    "(root/train/<label>/<image>, root/val/..., root/test/...)"
)


def read_folder(root: Path, options: ReaderOptions) -> Iterator[RawRecord]:
    """Every image under ``root``, labelled by its class folder (the layout is checked now).

    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> for rel in ("train/cat/1.png", "train/dog/2.JPG", "val/cat/3.png", "train/cat/notes.txt"):
    ...     (root / rel).parent.mkdir(parents=True, exist_ok=True)
    ...     _ = (root / rel).write_bytes(b"")
    >>> for r in read_folder(root, ReaderOptions()):
    ...     print(r.source, r.fields["category"], r.split)
    train/cat/1.png cat train
    train/dog/2.JPG dog train
    val/cat/3.png cat val
    """
    root = Path(root)
    if not root.is_dir():
        raise FormatError(str(root), f"not a folder; {_LAYOUT}")
    root = root.resolve()
    splits = _split_folders(root)
    tops = [folder for _, folder in splits] if splits else [root]
    if not any(_folders(top) for top in tops):
        raise FormatError(str(root), f"no class folders found; {_LAYOUT}")
    return _records(root, splits, option_split(options))


def count_images(root: Path) -> int:
    """How many image files lie under ``root`` (hidden ones and symlinked folders aside).

    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> (root / "cat").mkdir()
    >>> _ = (root / "cat" / "a.png").write_bytes(b"")
    >>> _ = (root / "cat" / ".b.png").write_bytes(b"")
    >>> count_images(root)
    1
    """
    count = 0
    for _, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if _visible(d)]
        count += sum(1 for f in files if _visible(f) and _is_image_name(f))
    return count


def _records(
    root: Path, splits: list[tuple[str, Path]] | None, default_split: str | None
) -> Iterator[RawRecord]:
    if splits is None:
        yield from _labelled(root, root, default_split)
        return
    for entry in _children(root):  # files next to the split folders: images without a class
        if not _is_folder(entry):
            yield from _entry(root, entry, None, default_split)
    for split, folder in splits:
        yield from _labelled(root, folder, split)


def _labelled(root: Path, top: Path, split: str | None) -> Iterator[RawRecord]:
    """The images under ``top``: each class folder's with its label, loose files without one."""
    for entry in _children(top):
        if _is_folder(entry):
            yield from _walk(root, entry, entry.name, split)
        else:
            yield from _entry(root, entry, None, split)


def _walk(root: Path, folder: Path, label: str, split: str | None) -> Iterator[RawRecord]:
    for entry in _children(folder):
        if _is_folder(entry):
            yield from _walk(root, entry, label, split)
        else:
            yield from _entry(root, entry, label, split)


def _entry(root: Path, entry: Path, label: str | None, split: str | None) -> Iterator[RawRecord]:
    """The record of one file or symlink, if it is an image or a link out of the root."""
    relative = entry.relative_to(root).as_posix()
    source, bad_name = repair_text(relative)
    image_path = root / relative
    if entry.is_symlink():
        try:
            image_path = confine(root, relative)
        except InputError as exc:
            # Reported, never opened: a link out of the dataset is the user's to fix.
            yield RawRecord(
                source=source,
                image_path=None,
                split=split,
                problems=[("missing_file", exc.message)],
            )
            return
        if image_path.is_dir():
            return  # a symlinked folder: not followed
        if not image_path.is_file():
            if _is_image_name(entry.name):
                problem = (
                    "missing_file",
                    f"{source} is a link to {image_path}, which does not exist",
                )
                yield RawRecord(source=source, image_path=None, split=split, problems=[problem])
            return
    if not _is_image_name(entry.name):
        return
    fields: dict[str, object] = {}
    problems: list[tuple[str, str]] = []
    if label is None:
        problems.append(("missing_label", "image is not inside a class folder"))
    else:
        fields["category"] = repair_text(label)[0]
    if bad_name:
        problems.append(
            ("invalid_utf8", "the file name is not valid UTF-8; bad bytes replaced with U+FFFD")
        )
    yield RawRecord(
        source=source, fields=fields, image_path=image_path, split=split, problems=problems
    )


def _split_folders(root: Path) -> list[tuple[str, Path]] | None:
    """``[(split, folder)]`` when every top-level folder is named like a split, else None."""
    folders = _folders(root)
    splits = [normalize_split(p.name) for p in folders]
    if not folders or None in splits:
        return None
    return [
        (split, folder) for split, folder in zip(splits, folders, strict=True) if split is not None
    ]


def _folders(folder: Path) -> list[Path]:
    return [p for p in _children(folder) if _is_folder(p)]


def _is_folder(path: Path) -> bool:
    """A real folder (symlinked folders are not followed: they could loop or lead out)."""
    return path.is_dir() and not path.is_symlink()


def _children(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if _visible(p.name)), key=lambda p: p.name)


def _visible(name: str) -> bool:
    return not name.startswith(".") and name not in _JUNK_FOLDERS


def _is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES
