"""Content-addressed, atomic blob storage on a local folder or any fsspec URL.

A blob's address is the sha256 hex digest of its plaintext; it lives at
``<url>/blobs/<first 2 hex>/<other 62 hex>``. Writing the same bytes twice stores them
once. Every write goes to a temporary name first and is renamed into place only when
complete, so a crash leaves the blob whole or absent, never half written. Temporary
names start with ``.tmp-`` and are never taken for blobs.

>>> import tempfile
>>> store = ArtifactStore(tempfile.mkdtemp())
>>> digest = store.put_bytes(b"hello")
>>> digest[:12]
'2cf24dba5fb0'
>>> store.get_bytes(digest)
b'hello'
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, BinaryIO, Protocol

from aifab.core.errors import AuthError, InputError, IntegrityError, NotFound
from aifab.core.progress import NullProgress, Progress

CHUNK_SIZE = 1 << 20  # 1 MiB: big enough to stream fast, small enough to keep memory flat
_DIGEST = re.compile(r"[0-9a-f]{64}")
_BLOB_KEY = re.compile(r"(?:^|/)blobs/([0-9a-f]{2})/([0-9a-f]{62})$")
_TEMP_PREFIX = ".tmp-"


class Cipher(Protocol):
    """Encrypts blobs at rest. ``aad`` is the blob's digest (ASCII), binding the ciphertext
    to its address so a blob cannot be swapped for another. ``decrypt`` must raise
    :class:`~aifab.core.errors.IntegrityError` when authentication fails (and may raise
    :class:`~aifab.core.errors.AuthError` for a key it does not hold); the store adds the
    blob's digest to the message. :class:`aifab.security.crypto.EnvelopeCipher` is the one
    encrypted workspaces use."""

    def encrypt(self, data: bytes, aad: bytes) -> bytes: ...

    def decrypt(self, data: bytes, aad: bytes) -> bytes: ...


def check_digest(digest: str) -> str:
    """Return ``digest`` if it is a sha256 hex digest; raise InputError otherwise.

    Checked before any path is built from it, so a digest can never reach outside the store.

    >>> check_digest("../../etc/passwd")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    aifab.core.errors.InputError: digest '../../etc/passwd': not a sha256 digest; ...
    """
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
        raise InputError(
            f"digest {digest!r}: not a sha256 digest; expected 64 lowercase hex characters"
        )
    return digest


class ArtifactStore:
    """Blobs addressed by sha256, on a local folder or an fsspec URL (``memory://``, ``s3://``...).

    ``url`` is a folder path (a relative one is resolved against ``root``, default the current
    directory) or an fsspec URL. ``cipher`` (optional) encrypts blobs at rest; the address stays
    the sha256 of the plaintext.

    >>> store = ArtifactStore("memory://doctest-artifacts")
    >>> d = store.put_bytes(b"x")
    >>> store.exists(d), store.local_path(d)
    (True, None)
    >>> store.delete(d)
    """

    def __init__(self, url: str, *, root: Path | None = None, cipher: Cipher | None = None) -> None:
        self.url = url
        self.root = root
        self.cipher = cipher
        self._backend: _Backend = _open_backend(url, root)

    def __repr__(self) -> str:
        return f"ArtifactStore({self.url!r})"

    # -- writes ---------------------------------------------------------------------------

    def put_bytes(self, data: bytes) -> str:
        """Store ``data``; return its sha256 digest. Storing existing content is a no-op."""
        digest = hashlib.sha256(data).hexdigest()
        key = _key(digest)
        if self._backend.exists(key):
            return digest
        stored = self.cipher.encrypt(data, digest.encode()) if self.cipher else data
        self._write(key, stored)
        return digest

    def put_file(self, path: Path | str) -> str:
        """Store a file's content, streamed in chunks and hashed while copying; return its digest.

        With a cipher the whole file is read into memory, since :class:`Cipher` works on
        whole messages.
        """
        if self.cipher is not None:
            return self.put_bytes(Path(path).read_bytes())
        hasher = hashlib.sha256()
        temp = self._backend.temp_key()
        try:
            with open(path, "rb") as src, self._backend.open_write(temp) as dst:
                while chunk := src.read(CHUNK_SIZE):
                    hasher.update(chunk)
                    dst.write(chunk)
            digest = hasher.hexdigest()
            key = _key(digest)
            if self._backend.exists(key):
                self._discard_temp(temp)
            else:
                self._backend.commit(temp, key)
        except BaseException:
            self._discard_temp(temp)
            raise
        return digest

    def delete(self, digest: str) -> None:
        """Remove a blob; NotFound if it is not there."""
        key = _key(digest)
        if not self._backend.exists(key):
            raise self._not_found(digest)
        self._backend.remove(key)

    # -- reads ----------------------------------------------------------------------------

    def exists(self, digest: str) -> bool:
        return self._backend.exists(_key(digest))

    def get_bytes(self, digest: str) -> bytes:
        """The blob's bytes, verified against the digest (IntegrityError if they differ)."""
        key = _key(digest)
        try:
            stored = self._backend.read(key)
        except FileNotFoundError:
            raise self._not_found(digest) from None
        data = self._decrypt(digest, stored) if self.cipher else stored
        actual = hashlib.sha256(data).hexdigest()
        if actual != digest:
            raise IntegrityError(
                f"blob {digest} in {self.url}: stored bytes hash to {actual}; the blob is corrupt",
                details={"digest": digest, "actual": actual},
            )
        return data

    @contextlib.contextmanager
    def open(self, digest: str) -> Iterator[BinaryIO]:
        """A readable binary file over the blob, for large blobs (e.g. to hand to pyarrow).

        Unlike :meth:`get_bytes`, the content is NOT verified: hashing would mean reading the
        whole blob before the caller's first read. With a cipher, the blob is decrypted (and so
        authenticated) into memory.
        """
        key = _key(digest)
        if self.cipher is not None:
            yield io.BytesIO(self.get_bytes(digest))
            return
        try:
            f = self._backend.open_read(key)
        except FileNotFoundError:
            raise self._not_found(digest) from None
        with f:
            yield f

    def local_path(self, digest: str) -> Path | None:
        """The blob's file on local disk, for zero-copy reads (e.g. memory-mapping); None when
        the backend is not local, the blob is missing, or it is encrypted at rest."""
        if self.cipher is not None:
            return None
        return self._backend.local_path(_key(digest))

    def iter_digests(self) -> Iterator[str]:
        """Every stored digest, in sorted order; temporary files are skipped."""
        for key in self._backend.list_keys("blobs"):
            m = _BLOB_KEY.search(key)
            if m:
                yield m.group(1) + m.group(2)

    # -- key rotation ---------------------------------------------------------------------

    def rewrap(self, rewrap: Callable[[bytes], bytes | None], *, progress: Progress | None = None) -> int:
        """Pass every blob's stored (encrypted) bytes through ``rewrap`` and atomically replace
        the blob with what it returns (None: keep it as it is); return how many were replaced.

        Key rotation (:meth:`aifab.security.crypto.EnvelopeCipher.rewrap`) goes through here:
        the store never sees a key, and a crash leaves each blob wrapped under the old key or
        the new one, whole either way. An error names the blob.
        """
        digests = list(self.iter_digests())
        replaced = 0
        with (progress or NullProgress()).task("re-wrapping blobs", total=len(digests)) as task:
            for digest in digests:
                key = _key(digest)
                try:
                    new = rewrap(self._backend.read(key))
                except (IntegrityError, AuthError) as exc:
                    raise self._named(digest, exc) from None
                if new is not None:
                    self._write(key, new)
                    replaced += 1
                task.advance()
        return replaced

    # -- helpers --------------------------------------------------------------------------

    def _write(self, key: str, stored: bytes) -> None:
        """Write ``stored`` under ``key`` atomically: a temp name first, then a rename (which
        replaces an existing blob whole)."""
        temp = self._backend.temp_key()
        try:
            with self._backend.open_write(temp) as f:
                f.write(stored)
            self._backend.commit(temp, key)
        except BaseException:
            self._discard_temp(temp)
            raise

    def _decrypt(self, digest: str, stored: bytes) -> bytes:
        assert self.cipher is not None
        try:
            return self.cipher.decrypt(stored, digest.encode())
        except (IntegrityError, AuthError) as exc:
            raise self._named(digest, exc) from None

    def _named(self, digest: str, exc: IntegrityError | AuthError) -> IntegrityError | AuthError:
        return type(exc)(f"blob {digest} in {self.url}: {exc.message}", details={"digest": digest, **exc.details})

    def _discard_temp(self, temp: str) -> None:
        # Best effort: a leftover temp file wastes space but is never read as a blob.
        with contextlib.suppress(OSError):
            self._backend.remove(temp)

    def _not_found(self, digest: str) -> NotFound:
        return NotFound(f"blob {digest} not found in {self.url}", details={"digest": digest})


def _key(digest: str) -> str:
    check_digest(digest)
    return f"blobs/{digest[:2]}/{digest[2:]}"


# -- backends: byte I/O with atomic commit; the store above does hashing and checks --------


class _Backend(Protocol):
    def exists(self, key: str) -> bool: ...
    def read(self, key: str) -> bytes: ...
    def open_read(self, key: str) -> BinaryIO: ...
    def open_write(self, temp: str) -> contextlib.AbstractContextManager[IO[bytes]]: ...
    def temp_key(self) -> str: ...
    def commit(self, temp: str, key: str) -> None: ...
    def remove(self, key: str) -> None: ...
    def local_path(self, key: str) -> Path | None: ...
    def list_keys(self, prefix: str) -> list[str]: ...


def _open_backend(url: str, root: Path | None) -> _Backend:
    if "://" not in url:
        path = Path(url).expanduser()
        if not path.is_absolute():
            path = (root or Path.cwd()) / path
        return _LocalBackend(path)
    import fsspec
    from fsspec.implementations.local import LocalFileSystem

    fs, base = fsspec.core.url_to_fs(url)
    if isinstance(fs, LocalFileSystem):
        return _LocalBackend(Path(base))
    return _FsspecBackend(fs, base.rstrip("/"))


class _LocalBackend:
    """Plain files. Temp files sit in ``blobs/`` (same filesystem as every shard directory),
    so ``os.replace`` into ``blobs/ab/`` is an atomic rename."""

    def __init__(self, base: Path) -> None:
        self.base = base

    def _path(self, key: str) -> Path:
        return self.base / key

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def read(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def open_read(self, key: str) -> BinaryIO:
        return open(self._path(key), "rb")

    @contextlib.contextmanager
    def open_write(self, temp: str) -> Iterator[IO[bytes]]:
        path = self._path(temp)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "xb") as f:
            yield f
            # Data must be on disk before the rename makes it visible.
            f.flush()
            os.fsync(f.fileno())

    def temp_key(self) -> str:
        return f"blobs/{_TEMP_PREFIX}{uuid.uuid4().hex}"

    def commit(self, temp: str, key: str) -> None:
        final = self._path(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self._path(temp), final)
        _fsync_dir(final.parent)  # make the rename itself durable

    def remove(self, key: str) -> None:
        self._path(key).unlink()

    def local_path(self, key: str) -> Path | None:
        path = self._path(key)
        return path if path.is_file() else None

    def list_keys(self, prefix: str) -> list[str]:
        top = self._path(prefix)
        if not top.is_dir():
            return []
        return sorted(
            str(p.relative_to(self.base).as_posix()) for p in top.glob("*/*") if p.is_file()
        )


def _fsync_dir(path: Path) -> None:
    if os.name != "posix":  # Windows cannot open a directory; its rename is durable enough
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _FsspecBackend:
    """Any fsspec filesystem. A blob is written under a temp key and moved into place with
    ``fs.mv``: on object stores (s3, gcs) that is a server-side copy, and each object PUT or
    copy is atomic, so readers see the whole blob or none; on ``memory://`` the file only
    appears when closed. Temp keys sit in ``blobs/`` beside the shard "directories"."""

    def __init__(self, fs: Any, base: str) -> None:
        self.fs = fs
        self.base = base

    def _path(self, key: str) -> str:
        return f"{self.base}/{key}"

    def exists(self, key: str) -> bool:
        return bool(self.fs.isfile(self._path(key)))

    def read(self, key: str) -> bytes:
        return bytes(self.fs.cat_file(self._path(key)))

    def open_read(self, key: str) -> BinaryIO:
        f: BinaryIO = self.fs.open(self._path(key), "rb")
        return f

    @contextlib.contextmanager
    def open_write(self, temp: str) -> Iterator[IO[bytes]]:
        with self.fs.open(self._path(temp), "wb") as f:
            yield f

    def temp_key(self) -> str:
        return f"blobs/{_TEMP_PREFIX}{uuid.uuid4().hex}"

    def commit(self, temp: str, key: str) -> None:
        self.fs.mv(self._path(temp), self._path(key))

    def remove(self, key: str) -> None:
        self.fs.rm_file(self._path(key))

    def local_path(self, key: str) -> Path | None:
        return None

    def list_keys(self, prefix: str) -> list[str]:
        top = self._path(prefix)
        if not self.fs.isdir(top):
            return []
        return sorted(_relative(p, self.base) for p in self.fs.find(top))


def _relative(path: str, base: str) -> str:
    # fsspec may return paths with or without the leading "/" of ``base``.
    path, base = path.lstrip("/"), base.lstrip("/")
    return path[len(base) + 1 :] if path.startswith(base + "/") else path
