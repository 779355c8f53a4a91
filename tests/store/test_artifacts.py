"""The ArtifactStore backend suite.

Every test takes the ``backend`` fixture and runs once per backend in ``BACKENDS``. A new
backend (s3 via moto, gcs, ...) passes the same suite by adding a ``Backend`` subclass that
knows how to build a store, corrupt a stored blob, list raw keys and break the commit step.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fsspec
import pytest

from aifab.core.errors import InputError, IntegrityError, NotFound
from aifab.store import ArtifactStore
from aifab.store import artifacts as artifacts_module


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Backend:
    name = ""

    def make(self, **kwargs: Any) -> ArtifactStore:
        raise NotImplementedError

    def corrupt(self, store: ArtifactStore, digest: str) -> None:
        """Flip one byte of the stored blob behind the store's back."""
        raise NotImplementedError

    def raw_files(self, store: ArtifactStore) -> list[str]:
        """Every file under the store, blobs and anything else."""
        raise NotImplementedError

    def break_commit(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Make the rename/move that publishes a blob fail, as a crash at that moment would."""
        raise NotImplementedError

    def cleanup(self) -> None:
        pass


class LocalBackend(Backend):
    name = "local"

    def __init__(self, tmp_path: Path) -> None:
        self.root = tmp_path / "artifacts"

    def make(self, **kwargs: Any) -> ArtifactStore:
        return ArtifactStore(str(self.root), **kwargs)

    def corrupt(self, store: ArtifactStore, digest: str) -> None:
        path = self.root / "blobs" / digest[:2] / digest[2:]
        data = bytearray(path.read_bytes())
        data[0] ^= 0xFF
        path.write_bytes(bytes(data))

    def raw_files(self, store: ArtifactStore) -> list[str]:
        return sorted(str(p.relative_to(self.root)) for p in self.root.rglob("*") if p.is_file())

    def break_commit(self, monkeypatch: pytest.MonkeyPatch) -> None:
        def crash(*args: Any) -> None:
            raise OSError("simulated crash during rename")

        monkeypatch.setattr(os, "replace", crash)


class MemoryBackend(Backend):
    name = "memory"

    def __init__(self, tmp_path: Path) -> None:
        self.fs = fsspec.filesystem("memory")
        self.base = f"/aifab-test-{uuid.uuid4().hex}"

    def make(self, **kwargs: Any) -> ArtifactStore:
        return ArtifactStore(f"memory://{self.base}", **kwargs)

    def corrupt(self, store: ArtifactStore, digest: str) -> None:
        path = f"{self.base}/blobs/{digest[:2]}/{digest[2:]}"
        data = bytearray(self.fs.cat_file(path))
        data[0] ^= 0xFF
        self.fs.pipe_file(path, bytes(data))

    def raw_files(self, store: ArtifactStore) -> list[str]:
        return sorted(p[len(self.base) + 1 :] for p in self.fs.find(self.base))

    def break_commit(self, monkeypatch: pytest.MonkeyPatch) -> None:
        def crash(*args: Any, **kwargs: Any) -> None:
            raise OSError("simulated crash during move")

        monkeypatch.setattr(self.fs, "mv", crash)

    def cleanup(self) -> None:
        if self.fs.exists(self.base):
            self.fs.rm(self.base, recursive=True)


BACKENDS: dict[str, Callable[[Path], Backend]] = {"local": LocalBackend, "memory": MemoryBackend}


@pytest.fixture(params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    b = BACKENDS[request.param](tmp_path)
    yield b
    b.cleanup()


@pytest.fixture
def store(backend: Backend) -> ArtifactStore:
    return backend.make()


def put(store: ArtifactStore, data: bytes, how: str, tmp_path: Path) -> str:
    if how == "bytes":
        return store.put_bytes(data)
    src = tmp_path / f"src-{uuid.uuid4().hex}.bin"
    src.write_bytes(data)
    return store.put_file(src)


# -- the suite ------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["bytes", "file"])
def test_round_trip_addresses_by_sha256(store: ArtifactStore, how: str, tmp_path: Path) -> None:
    data = os.urandom(3000)
    digest = put(store, data, how, tmp_path)
    assert digest == sha(data)
    assert store.exists(digest)
    assert store.get_bytes(digest) == data
    with store.open(digest) as f:
        assert f.read(10) == data[:10]
        assert f.read() == data[10:]


def test_put_file_streams_across_chunk_boundaries(
    store: ArtifactStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(artifacts_module, "CHUNK_SIZE", 7)
    data = bytes(range(256)) * 3  # 768 bytes: many chunks, the last one partial
    digest = put(store, data, "file", tmp_path)
    assert digest == sha(data)
    assert store.get_bytes(digest) == data


def test_empty_blob(store: ArtifactStore) -> None:
    digest = store.put_bytes(b"")
    assert digest == sha(b"")
    assert store.get_bytes(digest) == b""


@pytest.mark.parametrize("how", ["bytes", "file"])
def test_putting_existing_content_is_a_no_op(
    backend: Backend,
    store: ArtifactStore,
    how: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    digest = store.put_bytes(b"same")
    before = backend.raw_files(store)
    backend.break_commit(monkeypatch)  # a second write would fail: dedupe must not write
    assert put(store, b"same", how, tmp_path) == digest
    assert backend.raw_files(store) == before
    assert list(store.iter_digests()) == [digest]


def test_iter_digests_lists_every_blob_sorted(store: ArtifactStore) -> None:
    assert list(store.iter_digests()) == []
    digests = [store.put_bytes(bytes([i]) * 10) for i in range(5)]
    assert list(store.iter_digests()) == sorted(digests)


def test_corrupted_blob_is_caught_on_read(backend: Backend, store: ArtifactStore) -> None:
    digest = store.put_bytes(b"precious bytes")
    backend.corrupt(store, digest)
    with pytest.raises(IntegrityError, match=digest):
        store.get_bytes(digest)


@pytest.mark.parametrize(
    "bad", ["../../etc/passwd", "AB" * 32, "a" * 63, "a" * 65, "g" * 64, "", "ab/" + "c" * 61]
)
def test_invalid_digest_is_rejected_before_any_path_is_built(
    store: ArtifactStore, bad: str
) -> None:
    for call in (store.get_bytes, store.exists, store.delete, store.local_path):
        with pytest.raises(InputError, match="64 lowercase hex"):
            call(bad)
    with pytest.raises(InputError):
        with store.open(bad):
            pass


def test_missing_blob(store: ArtifactStore) -> None:
    digest = sha(b"never stored")
    assert not store.exists(digest)
    assert store.local_path(digest) is None
    with pytest.raises(NotFound, match=digest):
        store.get_bytes(digest)
    with pytest.raises(NotFound, match=digest):
        with store.open(digest):
            pass
    with pytest.raises(NotFound, match=digest):
        store.delete(digest)


def test_delete(store: ArtifactStore) -> None:
    keep, gone = store.put_bytes(b"keep"), store.put_bytes(b"gone")
    store.delete(gone)
    assert not store.exists(gone)
    assert list(store.iter_digests()) == [keep]
    assert store.put_bytes(b"gone") == gone  # can be stored again
    assert store.get_bytes(gone) == b"gone"


@pytest.mark.parametrize("how", ["bytes", "file"])
def test_crash_before_rename_leaves_no_blob(
    backend: Backend,
    store: ArtifactStore,
    how: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = b"half written?" * 100
    digest = sha(data)
    backend.break_commit(monkeypatch)
    with pytest.raises(OSError, match="simulated crash"):
        put(store, data, how, tmp_path)
    assert not store.exists(digest)
    with pytest.raises(NotFound):
        store.get_bytes(digest)
    assert list(store.iter_digests()) == []
    assert backend.raw_files(store) == []  # the temp file was cleaned up


def test_temp_files_left_by_a_hard_crash_are_not_blobs(
    backend: Backend, store: ArtifactStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = b"interrupted"
    digest = sha(data)
    with monkeypatch.context() as m:
        backend.break_commit(m)
        # A hard crash (kill -9, power loss) runs no cleanup code at all.
        m.setattr(ArtifactStore, "_discard_temp", lambda self, temp: None)
        with pytest.raises(OSError):
            store.put_bytes(data)
    leftovers = backend.raw_files(store)
    assert len(leftovers) == 1 and leftovers[0].startswith("blobs/")
    assert not store.exists(digest)
    assert list(store.iter_digests()) == []
    assert store.put_bytes(data) == digest  # the next write is unaffected
    assert list(store.iter_digests()) == [digest]


def test_a_second_store_on_the_same_url_sees_the_blobs(backend: Backend) -> None:
    digest = backend.make().put_bytes(b"shared")
    assert backend.make().get_bytes(digest) == b"shared"


class XorCipher:
    """A toy cipher that checks its aad, enough to exercise the hook."""

    def encrypt(self, data: bytes, aad: bytes) -> bytes:
        return aad[:8] + bytes(b ^ 0x5A for b in data)

    def decrypt(self, data: bytes, aad: bytes) -> bytes:
        if data[:8] != aad[:8]:
            raise IntegrityError("ciphertext bound to another digest")
        return bytes(b ^ 0x5A for b in data[8:])


@pytest.mark.parametrize("how", ["bytes", "file"])
def test_cipher_encrypts_at_rest_and_addresses_plaintext(
    backend: Backend, how: str, tmp_path: Path
) -> None:
    store = backend.make(cipher=XorCipher())
    data = b"secret text " * 20
    digest = put(store, data, how, tmp_path)
    assert digest == sha(data)
    assert store.get_bytes(digest) == data
    with store.open(digest) as f:
        assert f.read() == data
    assert store.local_path(digest) is None  # the file on disk is ciphertext
    raw = backend.make().open(digest)
    with raw as f:
        assert f.read() != data


# -- local-only behaviour -------------------------------------------------------------------


def test_local_path_points_at_the_blob_file(tmp_path: Path) -> None:
    store = ArtifactStore(str(tmp_path / "a"))
    digest = store.put_bytes(b"zero copy")
    path = store.local_path(digest)
    assert path is not None and path.read_bytes() == b"zero copy"
    assert path == tmp_path / "a" / "blobs" / digest[:2] / digest[2:]


def test_relative_url_resolves_against_root_and_file_url_is_local(tmp_path: Path) -> None:
    digest = ArtifactStore("store", root=tmp_path).put_bytes(b"rel")
    assert (tmp_path / "store" / "blobs" / digest[:2] / digest[2:]).is_file()
    via_url = ArtifactStore((tmp_path / "store").as_uri())
    assert via_url.get_bytes(digest) == b"rel"
    assert via_url.local_path(digest) is not None
