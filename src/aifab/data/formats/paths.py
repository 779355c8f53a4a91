"""Path confinement: a path named inside user data may only point inside the source root.

Tables and COCO files name image files; a hostile or careless file could name
``../../etc/passwd``, an absolute path, or a symlink leading out of the dataset.
:func:`confine` resolves the path (following symlinks) and refuses anything that
ends up outside the root, so no reader ever opens a file the user did not hand in.
"""

from __future__ import annotations

from pathlib import Path

from aifab.core.errors import InputError


def confine(root: Path, relative: str) -> Path:
    """The resolved path of ``relative`` under ``root``; InputError if it leaves the root.

    ``relative`` may be absolute, as long as it (and every symlink on the way) stays
    inside ``root``. The file need not exist: whether it does is the caller's check.

    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> confine(root, "images/a.png") == root.resolve() / "images" / "a.png"
    True
    >>> confine(root, "../secret.png")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    aifab.core.errors.InputError: path escapes the source root: '../secret.png' is not inside ...
    """
    if not relative or not relative.strip():
        raise InputError("path is empty")
    try:
        base = Path(root).resolve()
        target = (base / relative).resolve()
    except (OSError, ValueError, RuntimeError) as exc:
        # ValueError: an embedded NUL or an unencodable surrogate; RuntimeError: a
        # symlink loop (Python 3.11). Either way the path cannot name a readable file.
        raise InputError(f"path {relative!r} cannot be resolved: {exc}") from exc
    if not target.is_relative_to(base):
        raise InputError(f"path escapes the source root: {relative!r} is not inside {str(base)!r}")
    return target
