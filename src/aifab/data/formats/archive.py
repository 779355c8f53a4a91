"""Archives as ingest sources: ``.zip`` and tar files, extracted safely, then read like a folder.

:func:`extract_archive` streams every member into an empty folder (the caller's scratch
folder inside the workspace) and refuses, with the archive and the member named:

* path escapes: a name with ``..``, an absolute name (``/etc/x``, ``C:\\x``), a NUL byte
  (:class:`~aifab.core.errors.InputError`);
* links out: a symlink or hardlink whose target leaves the archive; a link that stays
  inside is written as a copy of its target (no link is ever created on disk);
* device files, FIFOs and sockets;
* decompression bombs (:class:`~aifab.core.errors.LimitExceeded`): more members than
  ``ingest.max_archive_members``, more unpacked bytes than ``ingest.max_archive_bytes``,
  or an expansion (unpacked / compressed bytes, of the archive and of each zip member)
  above ``ingest.max_archive_ratio`` once more than :data:`RATIO_FLOOR_BYTES` are unpacked.

Zip limits are checked on the central directory before the first byte is written (the
``zipfile`` module never inflates a member past its declared size); tar limits are checked
on each member's header before its data is written. A corrupt archive is a
:class:`~aifab.core.errors.FormatError`.

:func:`entry_point` then picks what the format readers read: the one data file inside
(a CSV/TSV/JSONL/Parquet table or a COCO ``.json``, also ``annotations/*.json``), else the
folder (an image folder tree, or CoNLL files), looking through a single wrapping folder.

>>> import tempfile, zipfile
>>> tmp = Path(tempfile.mkdtemp())
>>> with zipfile.ZipFile(tmp / "sms.zip", "w") as z:
...     z.writestr("sms/sms.csv", "text,label\\nhello,ham\\n")
>>> root = extract_archive(tmp / "sms.zip", tmp / "out")
>>> entry_point(root, label="sms.zip").relative_to(root).as_posix()
'sms/sms.csv'
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING, Callable

from aifab.core.config import IngestConfig
from aifab.core.errors import FormatError, InputError, LimitExceeded
from aifab.core.progress import NullProgress, Progress
from aifab.data.formats import normalize_split, repair_text

if TYPE_CHECKING:
    import tarfile
    import zipfile

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
RATIO_FLOOR_BYTES = 1 << 20
"""Below this many unpacked bytes the ratio is not checked: tiny files compress wildly, harmlessly."""
DATA_SUFFIXES = (".csv", ".tsv", ".tab", ".jsonl", ".ndjson", ".parquet", ".pq", ".json")
_CHUNK = 1 << 20
_MAX_LINK_TARGET = 4096
_DRIVE = re.compile(r"^[A-Za-z]:")
# Folders archivers add that never hold data (macOS resource forks).
_JUNK = frozenset({"__MACOSX"})


def is_archive(path: str | Path) -> bool:
    """Whether ``path`` names an archive ingest extracts (by its suffix, any case).

    >>> is_archive("data.ZIP"), is_archive("x/images.tar.gz"), is_archive("sms.csv")
    (True, True, False)
    """
    name = Path(path).name.lower()
    return any(name.endswith(suffix) for suffix in ARCHIVE_SUFFIXES)


def member_path(root: Path, name: str, *, where: str, folder: bool = False) -> Path:
    """Where member ``name`` of an archive (or a file under a folder URL) goes under ``root``.

    Only plain relative names are accepted: InputError, naming ``where`` and the member,
    for ``..``, an absolute name, a drive letter or a NUL byte. A ``folder`` may name the
    root itself (``tar -C data -czf data.tgz .`` starts with the member ``./``).

    >>> member_path(Path("/x"), "cat/1.png", where="a.zip").as_posix()
    '/x/cat/1.png'
    >>> member_path(Path("/x"), "../../evil", where="a.zip")
    Traceback (most recent call last):
    ...
    aifab.core.errors.InputError: a.zip: member '../../evil' leads out of the archive ('..'); only relative names inside it are allowed
    """
    shown = repair_text(name)[0]
    clean = name.replace("\\", "/")
    if "\x00" in clean:
        raise InputError(f"{where}: member {shown!r} has a NUL byte in its name")
    if clean.startswith("/") or _DRIVE.match(clean):
        raise InputError(
            f"{where}: member {shown!r} has an absolute path; only relative names inside the archive are allowed"
        )
    parts = [p for p in clean.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise InputError(
            f"{where}: member {shown!r} leads out of the archive ('..'); only relative names inside it are allowed"
        )
    if not parts and not folder:
        raise InputError(f"{where}: member {shown!r} has an empty name")
    return root.joinpath(*parts)


def extract_archive(
    archive: Path,
    dest: Path,
    *,
    config: IngestConfig | None = None,
    progress: Progress | None = None,
) -> Path:
    """Extract ``archive`` (zip or tar, by suffix) into ``dest`` within ``config``'s limits.

    ``dest`` is created and must be empty. On an error part of the archive may be on disk:
    the caller removes ``dest`` (ingest extracts into a scratch folder it always removes).

    >>> import tempfile, zipfile
    >>> tmp = Path(tempfile.mkdtemp())
    >>> with zipfile.ZipFile(tmp / "bomb.zip", "w", zipfile.ZIP_DEFLATED) as z:
    ...     z.writestr("zeros.csv", bytes(4 << 20))
    >>> extract_archive(tmp / "bomb.zip", tmp / "out")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    aifab.core.errors.LimitExceeded: ...bomb.zip: member 'zeros.csv' expands ... more than ingest.max_archive_ratio=100...
    """
    archive = Path(archive)
    config = config or IngestConfig()
    progress = progress or NullProgress()
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    if any(dest.iterdir()):
        raise InputError(f"{dest}: the extraction folder must be empty")
    try:
        size = archive.stat().st_size
    except OSError as exc:
        raise InputError(f"{archive}: cannot be read ({exc.strerror or exc})") from exc
    writer = _Writer(archive=archive, root=dest.resolve(), config=config, archive_size=size)
    if archive.name.lower().endswith(".zip"):
        _extract_zip(writer, progress)
    else:
        _extract_tar(writer, progress)
    writer.finish_links()
    return dest


def entry_point(root: Path, *, label: str) -> Path:
    """The path under an extracted ``root`` that the format readers should read.

    Looks through one wrapping folder (``data/`` holding ``cat/``, ``dog/``), unless it is
    a split folder or a folder of images only (then it is a class). Then: the one data
    file (table or COCO JSON) at that level or in ``annotations/``, a lone file, or the
    folder itself. InputError (naming ``label``) when the archive is empty or holds
    several data files.

    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> for rel in ("photos/cat/1.png", "photos/dog/2.png", "photos/README.txt"):
    ...     (root / rel).parent.mkdir(parents=True, exist_ok=True)
    ...     _ = (root / rel).write_bytes(b"")
    >>> entry_point(root, label="photos.zip").name
    'photos'
    """
    here = Path(root)
    while True:
        entries = _visible(here)
        if not entries:
            raise InputError(f"{label}: the archive holds no files")
        only = entries[0] if len(entries) == 1 else None
        if only is not None and only.is_dir() and _is_wrapper(only):
            here = only
            continue
        break
    data = [p for p in entries if p.is_file() and p.suffix.lower() in DATA_SUFFIXES]
    if not data and (here / "annotations").is_dir():
        data = [p for p in _visible(here / "annotations") if p.is_file() and p.suffix.lower() == ".json"]
    if len(data) > 1:
        names = ", ".join(p.relative_to(root).as_posix() for p in data[:5])
        raise InputError(
            f"{label}: the archive holds several data files ({names}); it can hold one table or "
            "COCO file (or one image folder tree); extract it and ingest one file at a time"
        )
    if data:
        return data[0]
    if len(entries) == 1 and entries[0].is_file():
        return entries[0]
    return here


# ---------------------------------------------------------------------------------------------
# Writing members: one code path for zip and tar, with the budget checked before each write
# ---------------------------------------------------------------------------------------------


@dataclass
class _Link:
    name: str
    target: Path
    shown_target: str


class _Writer:
    """Writes members under ``root`` and keeps the count and byte budget of one archive."""

    def __init__(self, *, archive: Path, root: Path, config: IngestConfig, archive_size: int) -> None:
        self.archive = archive
        self.root = root
        self.config = config
        self.archive_size = max(archive_size, 1)
        self.members = 0
        self.unpacked = 0
        self.links: list[_Link] = []

    # -- the budget ---------------------------------------------------------------------

    def admit(self, name: str, size: int, compressed: int | None = None) -> None:
        """Count one member of ``size`` bytes; LimitExceeded before it would pass a limit."""
        self.members += 1
        if self.members > self.config.max_archive_members:
            raise self._limit(
                name,
                f"is member {self.members}, more than ingest.max_archive_members={self.config.max_archive_members}",
                "max_archive_members",
            )
        self.add_bytes(name, size, compressed)

    def add_bytes(self, name: str, size: int, compressed: int | None = None) -> None:
        cfg = self.config
        if size < 0:
            raise FormatError(str(self.archive), f"member {repair_text(name)[0]!r} declares a negative size")
        total = self.unpacked + size
        if total > cfg.max_archive_bytes:
            raise self._limit(
                name,
                f"({size} bytes) brings the unpacked size to {total} bytes, "
                f"more than ingest.max_archive_bytes={cfg.max_archive_bytes}",
                "max_archive_bytes",
            )
        packed = max(compressed or 0, 1)
        if compressed is not None and size > RATIO_FLOOR_BYTES and size > cfg.max_archive_ratio * packed:
            raise self._limit(
                name,
                f"expands {packed} bytes to {size} ({size / packed:.0f}x), "
                f"more than ingest.max_archive_ratio={cfg.max_archive_ratio:g}",
                "max_archive_ratio",
            )
        if total > RATIO_FLOOR_BYTES and total > cfg.max_archive_ratio * self.archive_size:
            raise self._limit(
                name,
                f"brings the unpacked size to {total} bytes from {self.archive_size} compressed "
                f"({total / self.archive_size:.0f}x), more than ingest.max_archive_ratio={cfg.max_archive_ratio:g}",
                "max_archive_ratio",
            )
        self.unpacked = total

    def _limit(self, name: str, what: str, key: str) -> LimitExceeded:
        shown = repair_text(name)[0]
        return LimitExceeded(
            f"{self.archive}: member {shown!r} {what}",
            details={"archive": str(self.archive), "member": shown, "limit": f"ingest.{key}"},
        )

    # -- members ------------------------------------------------------------------------

    def path(self, name: str) -> Path:
        return member_path(self.root, name, where=str(self.archive))

    def folder(self, name: str) -> None:
        target = member_path(self.root, name, where=str(self.archive), folder=True)
        try:
            target.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise self._os_error(name, exc) from exc

    def file(self, name: str, size: int, stream: Callable[[], IO[bytes]]) -> None:
        """Copy a regular member of declared ``size`` from ``stream()``, never more bytes than that."""
        target = self.path(name)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            # "x": a member named twice is refused, and an existing path is never followed.
            with stream() as src, open(target, "xb") as out:
                written = 0
                while chunk := src.read(_CHUNK):
                    written += len(chunk)
                    if written > size:
                        raise FormatError(
                            str(self.archive),
                            f"member {repair_text(name)[0]!r} holds more bytes than its header declares ({size})",
                        )
                    out.write(chunk)
        except FileExistsError as exc:
            raise InputError(
                f"{self.archive}: member {repair_text(name)[0]!r} appears twice (or clashes with a folder)"
            ) from exc
        except OSError as exc:
            raise self._os_error(name, exc) from exc

    def link(self, name: str, target: str, *, hard: bool) -> None:
        """Remember a link; it is written as a copy of its target once every file is out."""
        shown, shown_target = repair_text(name)[0], repair_text(target)[0]
        self.path(name)  # the link's own name must be safe too
        base = PurePosixPath() if hard else PurePosixPath(name.replace("\\", "/")).parent
        joined = target.replace("\\", "/")
        escapes = joined.startswith("/") or bool(_DRIVE.match(joined)) or "\x00" in joined
        parts: list[str] = []
        for part in (*base.parts, *joined.split("/")):
            if part in ("", "."):
                continue
            if part == "..":
                if not parts:
                    escapes = True
                    break
                parts.pop()
            else:
                parts.append(part)
        kind = "hardlink" if hard else "symlink"
        if escapes or not parts:
            raise InputError(
                f"{self.archive}: member {shown!r} is a {kind} to {shown_target!r}, outside the archive; "
                "links may point only at files inside it"
            )
        self.links.append(_Link(name=name, target=self.root.joinpath(*parts), shown_target=shown_target))

    def special(self, name: str, what: str) -> None:
        raise InputError(
            f"{self.archive}: member {repair_text(name)[0]!r} is a {what}; an archive may hold only files and folders"
        )

    def finish_links(self) -> None:
        for link in self.links:
            shown = repair_text(link.name)[0]
            source = link.target
            try:
                is_file, is_dir = source.is_file(), source.is_dir()
            except OSError:  # e.g. a target name longer than the file system allows
                is_file = is_dir = False
            if not is_file:
                what = "a folder" if is_dir else "not a file in the archive"
                raise InputError(
                    f"{self.archive}: member {shown!r} links to {link.shown_target!r}, which is {what}; "
                    "links may point only at files inside the archive"
                )
            size = source.stat().st_size
            self.add_bytes(link.name, size)  # a copy costs its bytes: no link bombs
            self.file(link.name, size, lambda src=source: open(src, "rb"))  # type: ignore[misc]

    def _os_error(self, name: str, exc: OSError) -> InputError:
        return InputError(
            f"{self.archive}: member {repair_text(name)[0]!r} cannot be extracted ({exc.strerror or exc})"
        )


# ---------------------------------------------------------------------------------------------
# zip
# ---------------------------------------------------------------------------------------------


def _extract_zip(writer: _Writer, progress: Progress) -> None:
    import zipfile
    import zlib

    broken = (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, ValueError, NotImplementedError)
    try:
        archive = zipfile.ZipFile(writer.archive)
    except broken as exc:
        raise FormatError(str(writer.archive), f"not a readable zip file ({exc})") from exc
    except OSError as exc:
        raise InputError(f"{writer.archive}: cannot be read ({exc.strerror or exc})") from exc
    with archive:
        infos = archive.infolist()
        # Every limit is checked on the central directory first: a bomb writes nothing.
        dry_run = _Writer(archive=writer.archive, root=writer.root, config=writer.config, archive_size=writer.archive_size)
        for info in infos:
            dry_run.admit(info.filename, info.file_size, info.compress_size)
        with progress.task(f"extracting {writer.archive.name}", total=len(infos)) as task:
            for info in infos:
                try:
                    _zip_member(writer, archive, info)
                except broken as exc:  # NotImplementedError (a compression method) first: a RuntimeError
                    raise FormatError(
                        str(writer.archive), f"member {repair_text(info.filename)[0]!r} is corrupt ({exc})"
                    ) from exc
                except RuntimeError as exc:  # an encrypted member asks for a password
                    raise InputError(f"{writer.archive}: member {repair_text(info.filename)[0]!r}: {exc}") from exc
                task.advance()


def _zip_member(writer: _Writer, archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> None:
    mode = info.external_attr >> 16
    kind = stat.S_IFMT(mode)
    name = info.filename
    writer.admit(name, info.file_size, info.compress_size)
    if info.is_dir() or kind == stat.S_IFDIR:
        writer.folder(name)
    elif kind == stat.S_IFLNK:
        with archive.open(info) as f:
            target = f.read(_MAX_LINK_TARGET + 1)
        if len(target) > _MAX_LINK_TARGET:
            raise InputError(f"{writer.archive}: member {repair_text(name)[0]!r}: the link target is too long")
        writer.link(name, os.fsdecode(target), hard=False)
    elif kind not in (0, stat.S_IFREG):  # 0: made on a system that records no file type
        writer.special(name, _special_name(kind))
    else:
        writer.file(name, info.file_size, lambda: archive.open(info))


# ---------------------------------------------------------------------------------------------
# tar (plain, gzip, bzip2, xz)
# ---------------------------------------------------------------------------------------------


def _extract_tar(writer: _Writer, progress: Progress) -> None:
    import lzma
    import tarfile
    import zlib

    broken = (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, ValueError, OSError)
    try:
        archive = tarfile.open(writer.archive, mode="r:*")
    except broken as exc:
        raise FormatError(str(writer.archive), f"not a readable tar archive ({exc})") from exc
    with archive, progress.task(f"extracting {writer.archive.name}") as task:
        last = "(the start)"
        while True:
            try:
                member = archive.next()
                if member is None:
                    break
                last = repr(repair_text(member.name)[0])
                _tar_member(writer, archive, member)
            except (InputError, FormatError):
                raise
            except broken as exc:
                raise FormatError(str(writer.archive), f"corrupt after member {last} ({exc})") from exc
            task.advance()


def _tar_member(writer: _Writer, archive: tarfile.TarFile, member: tarfile.TarInfo) -> None:
    name = member.name
    if member.isreg():
        writer.admit(name, member.size)

        def stream() -> IO[bytes]:
            f = archive.extractfile(member)
            assert f is not None  # a regular member always has data
            return f

        writer.file(name, member.size, stream)
        return
    writer.admit(name, 0)
    if member.isdir():
        writer.folder(name)
    elif member.issym() or member.islnk():
        writer.link(name, member.linkname, hard=member.islnk())
    elif member.ischr() or member.isblk():
        writer.special(name, "device file")
    elif member.isfifo():
        writer.special(name, "FIFO")
    else:
        writer.special(name, f"tar member of type {member.type!r}")


def _special_name(kind: int) -> str:
    names = {stat.S_IFCHR: "device file", stat.S_IFBLK: "device file", stat.S_IFIFO: "FIFO", stat.S_IFSOCK: "socket"}
    return names.get(kind, f"file of type {oct(kind)}")


# ---------------------------------------------------------------------------------------------
# entry point helpers
# ---------------------------------------------------------------------------------------------


def _visible(folder: Path) -> list[Path]:
    return sorted(
        (p for p in folder.iterdir() if not p.name.startswith(".") and p.name not in _JUNK),
        key=lambda p: p.name,
    )


def _is_wrapper(folder: Path) -> bool:
    """A lone top folder to look through: not a split, and holding more than images."""
    if normalize_split(folder.name) is not None:
        return False
    from aifab.data.formats.folder import IMAGE_SUFFIXES

    inside = _visible(folder)
    return any(p.is_dir() or p.suffix.lower() not in IMAGE_SUFFIXES for p in inside)
