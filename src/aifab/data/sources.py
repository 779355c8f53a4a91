"""Where ingest reads from: a local path, a URL (through fsspec), an archive; all made local.

:func:`open_source` turns what the user named into a path the format readers can read:

* a local path or a ``file://`` URL is read in place;
* any other URL (``https://``, ``s3://``, ``gs://``...) is fetched through fsspec into a
  scratch folder, a file or every file under a folder URL, within
  ``ingest.max_download_bytes`` and ``ingest.max_download_files``; its scheme must be in
  ``ingest.allowed_schemes`` (default: only ``file``), otherwise a
  :class:`~aifab.core.errors.ConfigError` names the scheme and that key;
* an archive (``.zip``, ``.tar``, ``.tar.gz``...) is extracted into the scratch folder by
  :func:`aifab.data.formats.archive.extract_archive`, then its
  :func:`~aifab.data.formats.archive.entry_point` is read.

The scratch folder lives inside the workspace (the caller names its parent) and is
removed when the ``with`` block ends, however it ends. A process killed mid-way leaves
it behind; the next :func:`open_source` on the same host removes folders whose process
is gone.

>>> import tempfile
>>> d = Path(tempfile.mkdtemp())
>>> _ = (d / "a.csv").write_text("text,label\\nhi,x\\n")
>>> with open_source(str(d / "a.csv"), scratch=d / "tmp", config=IngestConfig()) as src:
...     src.path.name, src.origin == str((d / "a.csv").resolve())
('a.csv', True)
>>> with open_source("https://example.com/a.csv", scratch=d / "tmp", config=IngestConfig()) as src:
...     pass
Traceback (most recent call last):
...
aifab.core.errors.ConfigError: https://example.com/a.csv: the URL scheme 'https' is not allowed for ingest (allowed: file); add 'https' to ingest.allowed_schemes in aifab.yaml
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import tempfile
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Iterator
from urllib.parse import unquote, urlsplit

from aifab.core.config import IngestConfig
from aifab.core.errors import ConfigError, DependencyMissing, InputError, LimitExceeded, NotFound
from aifab.core.progress import NullProgress, Progress
from aifab.data.formats.archive import entry_point, extract_archive, is_archive, member_path

_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_CHUNK = 1 << 20
_SCRATCH_PREFIX = "ingest-"


@dataclass(frozen=True)
class LocalSource:
    """``path``: what the readers read; ``origin``: what the dataset version records as its source."""

    path: Path
    origin: str


def url_scheme(source: str | Path) -> str:
    """The URL scheme of ``source``, lower-cased; ``file`` for a plain path (a Path is always local).

    >>> url_scheme("S3://bucket/x.csv"), url_scheme("data/x.csv"), url_scheme("C:\\\\data\\\\x.csv")
    ('s3', 'file', 'file')
    """
    if isinstance(source, Path):
        return "file"
    match = _URL.match(source)
    return match.group(1).lower() if match else "file"


def check_scheme(source: str | Path, allowed: list[str]) -> str:
    """The scheme of ``source`` if ``allowed`` holds it; ConfigError naming it and the key otherwise.

    Chained fsspec URLs (``simplecache::s3://...``) are refused: each link would need its own check.

    >>> check_scheme("s3://bucket/x.csv", ["file", "s3"])
    's3'
    """
    text = str(source)
    if isinstance(source, str) and "::" in text and "://" in text:
        raise ConfigError(f"{text}: chained fsspec URLs ('a::b://') are not supported by ingest; name the URL itself")
    scheme = url_scheme(source)
    if scheme not in allowed:
        what = "local files are" if scheme == "file" else f"the URL scheme {scheme!r} is"
        raise ConfigError(
            f"{text}: {what} not allowed for ingest (allowed: {', '.join(allowed) or 'none'}); "
            f"add {scheme!r} to ingest.allowed_schemes in aifab.yaml",
            details={"scheme": scheme, "key": "ingest.allowed_schemes"},
        )
    return scheme


@contextmanager
def open_source(
    source: str | Path,
    *,
    scratch: Path,
    config: IngestConfig,
    progress: Progress | None = None,
) -> Iterator[LocalSource]:
    """``source`` as a local, readable :class:`LocalSource` for the ``with`` block (see the module doc).

    ``scratch`` is the folder under which downloads and extractions go (created when needed).
    """
    progress = progress or NullProgress()
    scheme = check_scheme(source, config.allowed_schemes)
    with ExitStack() as stack:
        folder: list[Path] = []

        def work() -> Path:
            if not folder:
                folder.append(stack.enter_context(scratch_folder(scratch)))
            return folder[0]

        if scheme == "file":
            path = _local_path(source)
            origin = str(path.resolve())
        else:
            path = fetch(str(source), work() / "download", config=config, progress=progress)
            origin = str(source)
        if path.is_file() and is_archive(path):
            root = extract_archive(path, work() / "extracted", config=config, progress=progress)
            path = entry_point(root, label=origin)
        yield LocalSource(path=path, origin=origin)


def _local_path(source: str | Path) -> Path:
    if isinstance(source, str) and _URL.match(source):
        parts = urlsplit(source)
        if parts.netloc not in ("", "localhost"):
            raise InputError(f"{source}: a file:// URL must name a local file (no host, or localhost)")
        path = Path(unquote(parts.path))
    else:
        path = Path(source)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    return path


# ---------------------------------------------------------------------------------------------
# Downloads
# ---------------------------------------------------------------------------------------------


def fetch(url: str, dest: Path, *, config: IngestConfig, progress: Progress | None = None) -> Path:
    """Download ``url`` (a file, or every file under a folder URL) into ``dest`` through fsspec.

    Returns the downloaded file, or ``dest`` for a folder. LimitExceeded past
    ``ingest.max_download_bytes`` / ``ingest.max_download_files``; NotFound when nothing is
    there; DependencyMissing when fsspec needs a package for the scheme (``s3fs``, ``aiohttp``).

    >>> import fsspec, tempfile
    >>> with fsspec.open("memory://doc/sms.csv", "wb") as f:
    ...     _ = f.write(b"text,label\\nhi,x\\n")
    >>> fetch("memory://doc/sms.csv", Path(tempfile.mkdtemp()), config=IngestConfig()).read_text()
    'text,label\\nhi,x\\n'
    """
    progress = progress or NullProgress()
    fs, path = _filesystem(url)
    try:
        info = fs.info(path)
    except FileNotFoundError:
        raise NotFound(f"{url}: no such file or folder") from None
    except Exception as exc:  # noqa: BLE001 - every backend raises its own types (network, auth, ...)
        raise InputError(f"{url}: cannot be read ({type(exc).__name__}: {exc})") from exc
    dest.mkdir(parents=True, exist_ok=True)
    if info.get("type") == "directory":
        _fetch_folder(fs, url, path, dest, config=config, progress=progress)
        return dest
    target = dest / _file_name(path)
    _copy(fs, url, path, target, size=info.get("size"), budget=[config.max_download_bytes], config=config, progress=progress)
    return target


def _filesystem(url: str) -> tuple[Any, str]:
    import fsspec

    scheme = url_scheme(url)
    try:
        return fsspec.core.url_to_fs(url)
    except ImportError as exc:
        raise DependencyMissing(f"{url}: reading {scheme}:// URLs needs a package fsspec uses: {exc}") from None
    except ValueError as exc:
        raise ConfigError(f"{url}: fsspec knows no file system for the scheme {scheme!r} ({exc})") from None


def _fetch_folder(fs: Any, url: str, path: str, dest: Path, *, config: IngestConfig, progress: Progress) -> None:
    try:
        found = fs.find(path, detail=True)
    except Exception as exc:  # noqa: BLE001 - as above
        raise InputError(f"{url}: cannot list the folder ({type(exc).__name__}: {exc})") from exc
    files = sorted((name, info) for name, info in found.items() if info.get("type") != "directory")
    if not files:
        raise InputError(f"{url}: the folder holds no files")
    if len(files) > config.max_download_files:
        raise LimitExceeded(
            f"{url}: {len(files)} files, more than ingest.max_download_files={config.max_download_files}",
            details={"url": url, "limit": "ingest.max_download_files"},
        )
    base = path.rstrip("/") + "/"
    budget = [config.max_download_bytes]
    with progress.task(f"downloading {url}", total=len(files)) as task:
        for name, info in files:
            relative = name[len(base):] if name.startswith(base) else PurePosixPath(name).name
            target = member_path(dest, relative, where=url)
            target.parent.mkdir(parents=True, exist_ok=True)
            _copy(fs, url, name, target, size=info.get("size"), budget=budget, config=config, progress=None)
            task.advance()


def _copy(
    fs: Any,
    url: str,
    path: str,
    target: Path,
    *,
    size: int | None,
    budget: list[int],
    config: IngestConfig,
    progress: Progress | None,
) -> None:
    """Stream one remote file to ``target``, charging ``budget[0]`` bytes (shared by a folder's files)."""

    def too_big() -> LimitExceeded:
        return LimitExceeded(
            f"{url}: more than ingest.max_download_bytes={config.max_download_bytes} bytes (at {path})",
            details={"url": url, "limit": "ingest.max_download_bytes"},
        )

    if size is not None and size > budget[0]:
        raise too_big()  # declared too big: refused before a byte moves
    progress = progress or NullProgress()
    try:
        with progress.task(f"downloading {url}", total=size) as task, fs.open(path, "rb") as src, open(target, "xb") as out:
            while chunk := src.read(_CHUNK):
                budget[0] -= len(chunk)
                if budget[0] < 0:
                    raise too_big()
                out.write(chunk)
                task.advance(len(chunk))
    except LimitExceeded:
        raise
    except FileExistsError:
        raise InputError(f"{url}: {path} has the same local name as another file of the folder") from None
    except FileNotFoundError:
        raise NotFound(f"{url}: {path} disappeared while it was downloaded") from None
    except Exception as exc:  # noqa: BLE001 - network and backend errors of every kind
        raise InputError(f"{url}: download failed ({type(exc).__name__}: {exc})") from exc


def _file_name(path: str) -> str:
    """A safe local name for a downloaded file: the URL's last part (its suffix picks the format)."""
    name = PurePosixPath(path.split("?", 1)[0]).name
    name = re.sub(r"[^\w.+-]", "_", name)[-200:]
    return name if name.strip(".") else "download"


# ---------------------------------------------------------------------------------------------
# Scratch folders
# ---------------------------------------------------------------------------------------------


@contextmanager
def scratch_folder(parent: Path) -> Iterator[Path]:
    """A new folder under ``parent``, removed when the block ends; stale ones of dead processes go first.

    >>> import tempfile
    >>> parent = Path(tempfile.mkdtemp())
    >>> with scratch_folder(parent) as d:
    ...     d.parent == parent and d.is_dir()
    True
    >>> list(parent.iterdir())
    []
    """
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(parent)
    path = Path(tempfile.mkdtemp(prefix=f"{_SCRATCH_PREFIX}{_host()}-{os.getpid()}-", dir=parent))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def sweep_stale(parent: Path) -> list[Path]:
    """Remove scratch folders under ``parent`` left by processes of this host that are gone.

    >>> import tempfile
    >>> parent = Path(tempfile.mkdtemp())
    >>> (parent / f"ingest-{_host()}-999999999-abc").mkdir()
    >>> [p.name.split("-")[-2] for p in sweep_stale(parent)], list(parent.iterdir())
    (['999999999'], [])
    """
    removed = []
    for folder in Path(parent).glob(f"{_SCRATCH_PREFIX}*"):
        head, _, rest = folder.name.rpartition("-")
        host, _, pid = head.rpartition("-")
        if not rest or host != f"{_SCRATCH_PREFIX}{_host()}" or not pid.isdigit():
            continue
        if int(pid) != os.getpid() and not _alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9]", "_", socket.gethostname())[:64] or "host"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # someone else's process, or not a pid at all: leave the folder alone
    return True
