"""Archives and URLs as ingest sources: extracted safely, within limits, read like folders.

The hostile archives of the corpus (zip-slip, absolute names, links out, devices, bombs) are
in ``test_corpus_cli.py``; here: an archive ingests exactly like the folder it holds, where
the readers start inside it, what links inside it become, each limit from ``aifab.yaml``,
corrupt archives, URL schemes, downloads through fsspec, and the scratch folders.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import fsspec
import pytest
from typer.testing import CliRunner

from aifab.cli import app
from aifab.core.config import IngestConfig
from aifab.core.errors import ConfigError, DependencyMissing, FormatError, InputError, LimitExceeded, NotFound
from aifab.data.formats.archive import entry_point, extract_archive
from aifab.data.sources import open_source, sweep_stale
from aifab.pipeline.project import Workspace
from tests.badinput.conftest import GOOD_CSV, encode, pattern, tar_link


def aifab(*args: str) -> tuple[int, dict[str, Any]]:
    result = CliRunner().invoke(app, [*args, "--json"])
    return result.exit_code, json.loads(result.stdout)


def image_tree(root: Path, n: int = 4) -> Path:
    for label, offset in (("cat", 0), ("dog", 50)):
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            pattern(offset + i).save(root / label / f"{i}.png")
    return root


def pack(folder: Path, archive: Path, *, prefix: str = "") -> Path:
    """Every file under ``folder`` into a .zip or .tar.gz (by ``archive``'s suffix)."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    if archive.suffix == ".zip":
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
            for p in files:
                z.write(p, prefix + p.relative_to(folder).as_posix())
    else:
        with tarfile.open(archive, "w:gz") as t:
            for p in files:
                t.add(p, prefix + p.relative_to(folder).as_posix())
    return archive


def zip_of(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


def scratch_is_empty(ws_root: Path) -> bool:
    tmp = ws_root / ".aifab" / "tmp"
    return not tmp.exists() or not any(tmp.iterdir())


@pytest.fixture
def ws(tmp_path: Path) -> Any:
    workspace = Workspace.init(tmp_path / "ws")
    yield workspace
    workspace.close()


def set_ingest_config(ws_root: Path, **values: Any) -> None:
    path = ws_root / "aifab.yaml"
    text = path.read_text(encoding="utf-8")
    head = text[: text.index("ingest:")]
    path.write_text(head + "ingest:\n" + "".join(f"  {k}: {json.dumps(v)}\n" for k, v in values.items()), encoding="utf-8")


# ------------------------------------------------------------------------------------------
# An archive is its folder
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".zip", ".tar.gz"])
def test_an_archive_ingests_exactly_like_the_folder_it_holds(ws: Workspace, tmp_path: Path, suffix: str) -> None:
    folder = image_tree(tmp_path / "pets")
    archive = pack(folder, tmp_path / f"pets{suffix}", prefix="pets/")  # a wrapping folder, as zip tools make
    code, body = aifab("ingest", str(archive), "--name", "from-archive", "-w", str(ws.root))
    assert code == 0, body
    from_folder = ws.ingest(folder, name="from-folder")
    from_archive = ws.dataset("from-archive")
    assert from_archive.source == str(archive.resolve()) == body["report"]["source"]
    assert from_archive.label_counts == from_folder.label_counts == {"cat": 4, "dog": 4}

    def content(version: Any) -> list[tuple[str, str, str | None, str | None]]:
        return sorted((r.id, r.source, r.category, r.image) for r in ws.records(version))

    assert content(from_archive) == content(from_folder)  # same ids, sources, labels, pixels
    assert scratch_is_empty(ws.root)


def test_a_tar_made_inside_its_folder_reads_as_the_folder(tmp_path: Path) -> None:
    """``tar -C pets -czf pets.tgz .``: members ``./``, ``./cat/0.png``... read as the folder."""
    folder = image_tree(tmp_path / "pets", n=2)
    archive = tmp_path / "pets.tgz"
    with tarfile.open(archive, "w:gz") as t:
        t.add(folder, arcname=".")
    assert tarfile.open(archive).getnames()[0] == "."
    root = extract_archive(archive, tmp_path / "out")
    assert entry_point(root, label="pets.tgz") == root
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png")) == [
        "cat/0.png", "cat/1.png", "dog/0.png", "dog/1.png"
    ]


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"data/cat/1.png": b"", "data/dog/2.png": b""}, "data"),  # a wrapper: looked through
        ({"train/cat/1.png": b"", "test/cat/2.png": b""}, "."),  # split folders are the layout
        ({"cat/1.png": b"", "cat/2.png": b""}, "."),  # one class folder stays a class
        ({"train/cat/1.png": b""}, "."),  # a lone split folder is not a wrapper
        ({"d/sms.csv": b"t", "d/images/a.png": b"", "d/README.md": b""}, "d/sms.csv"),
        ({"coco/annotations/instances_val.json": b"{}", "coco/val/1.png": b""}, "coco/annotations/instances_val.json"),
        ({"ner/train.conll": b"a O\n", "ner/dev.conll": b"b O\n"}, "ner"),
        ({"only.jsonl": b"{}", "__MACOSX/._only.jsonl": b"", ".DS_Store": b""}, "only.jsonl"),
    ],
)
def test_where_the_readers_start_inside_an_archive(tmp_path: Path, files: dict[str, bytes], expected: str) -> None:
    root = extract_archive(zip_of(tmp_path / "a.zip", files), tmp_path / "out")
    assert entry_point(root, label="a.zip") == (root / expected if expected != "." else root)


def test_an_archive_with_several_data_files_or_none_is_refused(tmp_path: Path) -> None:
    root = extract_archive(zip_of(tmp_path / "two.zip", {"a.csv": b"x", "b.csv": b"y"}), tmp_path / "out")
    with pytest.raises(InputError, match=r"two.zip: the archive holds several data files \(a.csv, b.csv\)"):
        entry_point(root, label="two.zip")
    empty = extract_archive(zip_of(tmp_path / "empty.zip", {"__MACOSX/._x": b""}), tmp_path / "out2")
    with pytest.raises(InputError, match="empty.zip: the archive holds no files"):
        entry_point(empty, label="empty.zip")


def test_links_inside_the_archive_become_copies(tmp_path: Path) -> None:
    archive = tmp_path / "links.tar.gz"
    with tarfile.open(archive, "w:gz") as t:
        data = GOOD_CSV.encode()
        info = tarfile.TarInfo("d/sms.csv")
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
        t.addfile(tar_link("d/hard.txt", "d/sms.csv", tarfile.LNKTYPE))
        t.addfile(tar_link("d/sub/soft.txt", "../sms.csv", tarfile.SYMTYPE))
    root = extract_archive(archive, tmp_path / "out")
    for name in ("d/hard.txt", "d/sub/soft.txt"):
        path = root / name
        assert not path.is_symlink() and path.read_bytes() == data
    assert not any(p.is_symlink() for p in root.rglob("*"))


def test_a_link_to_a_folder_or_to_nothing_is_refused(tmp_path: Path) -> None:
    for target, what in (("d", "a folder"), ("d/missing.csv", "not a file in the archive")):
        archive = tmp_path / f"{what[:5]}.tar"
        with tarfile.open(archive, "w") as t:
            folder = tarfile.TarInfo("d")
            folder.type = tarfile.DIRTYPE
            t.addfile(folder)
            t.addfile(tar_link("link.csv", target, tarfile.SYMTYPE))
        with pytest.raises(InputError, match=f"member 'link.csv' links to {target!r}, which is {what}"):
            extract_archive(archive, tmp_path / f"out-{what[:5]}")


def test_clashing_and_backslash_members_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="member 'a.csv' appears twice"):
        with pytest.warns(UserWarning, match="Duplicate name"):
            extract_archive(zip_of_twice(tmp_path / "dup.zip"), tmp_path / "o1")
    with pytest.raises(InputError, match=r"member '..\\\\..\\\\evil.csv' leads out"):
        extract_archive(zip_of(tmp_path / "win.zip", {"..\\..\\evil.csv": b"x"}), tmp_path / "o2")
    with pytest.raises(InputError, match="member 'C:/evil.csv' has an absolute path"):
        extract_archive(zip_of(tmp_path / "drive.zip", {"C:/evil.csv": b"x"}), tmp_path / "o3")
    fifo = tarfile.TarInfo("pipe.csv")
    fifo.type = tarfile.FIFOTYPE
    with tarfile.open(tmp_path / "fifo.tar", "w") as t:
        t.addfile(fifo)
    with pytest.raises(InputError, match="member 'pipe.csv' is a FIFO"):
        extract_archive(tmp_path / "fifo.tar", tmp_path / "o4")
    assert not list(tmp_path.rglob("evil.csv"))


def zip_of_twice(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("a.csv", b"one")
        z.writestr("a.csv", b"two")
    return path


@pytest.mark.parametrize("cut", [0.5, 0.9])
def test_corrupt_archives_are_format_errors(tmp_path: Path, cut: float) -> None:
    folder = image_tree(tmp_path / "pets")
    for suffix in (".zip", ".tar.gz"):
        whole = pack(folder, tmp_path / f"pets{suffix}").read_bytes()
        broken = tmp_path / f"broken{suffix}"
        broken.write_bytes(whole[: int(len(whole) * cut)])
        with pytest.raises(FormatError, match=f"broken{suffix}"):
            extract_archive(broken, tmp_path / f"out{suffix}{cut}")


# ------------------------------------------------------------------------------------------
# Limits, from aifab.yaml
# ------------------------------------------------------------------------------------------


def test_each_archive_limit_comes_from_the_workspace_config(ws: Workspace, tmp_path: Path) -> None:
    archive = pack(image_tree(tmp_path / "pets", n=3), tmp_path / "pets.zip")  # 6 members, ~1 KB
    set_ingest_config(ws.root, max_archive_members=5)
    code, body = aifab("ingest", str(archive), "--name", "x", "-w", str(ws.root))
    assert code == 3 and body["error"]["code"] == "limit_exceeded"
    assert "member 'dog/2.png' is member 6, more than ingest.max_archive_members=5" in body["error"]["message"]
    assert body["error"]["details"] == {"archive": str(archive), "member": "dog/2.png", "limit": "ingest.max_archive_members"}

    set_ingest_config(ws.root, max_archive_bytes=500)
    code, body = aifab("ingest", str(archive), "--name", "x", "-w", str(ws.root))
    assert code == 3 and "more than ingest.max_archive_bytes=500" in body["error"]["message"]

    set_ingest_config(ws.root, max_archive_members=100)  # the other limits back to their defaults
    zeros = zip_of(tmp_path / "zeros.zip", {"zeros.csv": bytes(3 << 20)})  # 3 MiB -> ~3 KB: 1000x
    code, body = aifab("ingest", str(zeros), "--name", "x", "-w", str(ws.root))
    assert code == 3 and "ingest.max_archive_ratio=100" in body["error"]["message"]
    assert scratch_is_empty(ws.root) and ws.datasets() == []


def test_a_zip_bomb_writes_nothing_and_a_tar_bomb_stops_at_its_header(tmp_path: Path) -> None:
    config = IngestConfig(max_archive_ratio=50)
    bomb = zip_of(tmp_path / "b.zip", {"a.csv": b"text,label\n", "zeros.bin": bytes(8 << 20)})
    with pytest.raises(LimitExceeded, match="member 'zeros.bin' expands"):
        extract_archive(bomb, tmp_path / "out", config=config)
    assert list((tmp_path / "out").rglob("*")) == []  # refused on the central directory

    tgz = tmp_path / "b.tar.gz"
    with tarfile.open(tgz, "w:gz") as t:
        for name, size in (("a.csv", 11), ("zeros.bin", 8 << 20)):
            info = tarfile.TarInfo(name)
            info.size = size
            t.addfile(info, io.BytesIO(bytes(size)))
    with pytest.raises(LimitExceeded, match="member 'zeros.bin' brings the unpacked size to"):
        extract_archive(tgz, tmp_path / "out2", config=config)
    assert [p.name for p in (tmp_path / "out2").rglob("*")] == ["a.csv"]


def test_links_cost_their_bytes(tmp_path: Path) -> None:
    """A 400 KB file linked twenty times is 8 MB unpacked: a link bomb is still a bomb."""
    archive = tmp_path / "links.tar"
    with tarfile.open(archive, "w") as t:
        info = tarfile.TarInfo("big.bin")
        info.size = 400_000
        t.addfile(info, io.BytesIO(os.urandom(info.size)))
        for i in range(20):
            t.addfile(tar_link(f"copy{i}.bin", "big.bin", tarfile.LNKTYPE))
    with pytest.raises(LimitExceeded, match=r"member 'copy\d+.bin' .* more than ingest.max_archive_bytes=2000000"):
        extract_archive(archive, tmp_path / "out", config=IngestConfig(max_archive_bytes=2_000_000))


# ------------------------------------------------------------------------------------------
# URLs
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["https://example.com/sms.csv", "s3://bucket/sms.zip", "HTTP://x/y.csv"])
def test_a_url_scheme_not_allowed_names_the_scheme_and_the_key(ws: Workspace, url: str) -> None:
    code, body = aifab("ingest", url, "--name", "x", "-w", str(ws.root))
    scheme = url.split(":")[0].lower()
    assert code == ConfigError.exit_code and body["error"]["code"] == "invalid_config"
    message = body["error"]["message"]
    assert f"the URL scheme {scheme!r} is not allowed" in message and "ingest.allowed_schemes" in message
    assert scratch_is_empty(ws.root)


def test_local_files_can_be_switched_off_and_file_urls_are_local(ws: Workspace, tmp_path: Path) -> None:
    csv_path = tmp_path / "sms.csv"
    csv_path.write_text(GOOD_CSV, encoding="utf-8")
    code, body = aifab("ingest", csv_path.as_uri(), "--name", "sms", "-w", str(ws.root))
    assert code == 0 and body["dataset"]["num_records"] == 12
    assert body["dataset"]["source"] == str(csv_path.resolve())
    set_ingest_config(ws.root, allowed_schemes=["s3"])
    code, body = aifab("ingest", str(csv_path), "--name", "sms", "-w", str(ws.root))
    assert code == 2 and "local files are not allowed for ingest (allowed: s3); add 'file'" in body["error"]["message"]
    with pytest.raises(ConfigError, match="chained fsspec URLs"):
        with open_source("simplecache::s3://b/x.csv", scratch=tmp_path, config=IngestConfig(allowed_schemes=["s3"])):
            pass


@pytest.fixture
def memory_fs() -> Any:
    fs = fsspec.filesystem("memory")
    root = f"/aifab-test-{os.getpid()}"
    yield fs, root
    fs.rm(root, recursive=True)


def test_files_folders_and_archives_are_fetched_through_fsspec(tmp_path: Path, memory_fs: Any) -> None:
    fs, root = memory_fs
    fs.pipe(f"{root}/sms.csv", GOOD_CSV.encode())
    for label, offset in (("cat", 0), ("dog", 50)):
        for i in range(3):
            fs.pipe(f"{root}/pets/{label}/{i}.png", encode(pattern(offset + i), "PNG"))
    fs.pipe(f"{root}/pets.zip", zip_of(tmp_path / "pets.zip", {f"p/{k}/{i}.png": encode(pattern(i + 9 * (k == 'dog')), "PNG") for k in ("cat", "dog") for i in range(3)}).read_bytes())
    ws = Workspace.init(tmp_path / "ws")
    ws.config.ingest.allowed_schemes = ["file", "memory"]
    try:
        sms = ws.ingest(f"memory://{root}/sms.csv", name="sms")
        assert sms.num_records == 12 and sms.source == f"memory://{root}/sms.csv"
        pets = ws.ingest(f"memory://{root}/pets", name="pets")
        assert pets.label_counts == {"cat": 3, "dog": 3}
        zipped = ws.ingest(f"memory://{root}/pets.zip", name="zipped")
        assert zipped.label_counts == {"cat": 3, "dog": 3}
        with pytest.raises(NotFound, match=f"memory://{root}/nothing.csv: no such file"):
            ws.ingest(f"memory://{root}/nothing.csv", name="x")
        ws.config.ingest.max_download_bytes = 100
        with pytest.raises(LimitExceeded, match="more than ingest.max_download_bytes=100 "):
            ws.ingest(f"memory://{root}/sms.csv", name="x")
        ws.config.ingest.max_download_files = 5
        with pytest.raises(LimitExceeded, match="6 files, more than ingest.max_download_files=5"):
            ws.ingest(f"memory://{root}/pets", name="x")
        assert scratch_is_empty(ws.root)
    finally:
        ws.close()


def test_a_scheme_whose_backend_is_missing_is_a_typed_error(tmp_path: Path) -> None:
    """No network: port 9 on the loopback answers nothing; either aiohttp is missing (fsspec's
    http backend needs it) or the connection is refused; both are our own errors."""
    config = IngestConfig(allowed_schemes=["http"])
    try:
        import aiohttp  # noqa: F401
    except ImportError:
        expected: type[Exception] = DependencyMissing
    else:
        expected = InputError
    with pytest.raises(expected, match="http://127.0.0.1:9/sms.csv"):
        with open_source("http://127.0.0.1:9/sms.csv", scratch=tmp_path / "tmp", config=config):
            pass
    assert scratch_is_empty(tmp_path)


def test_scratch_folders_of_dead_processes_are_swept(tmp_path: Path) -> None:
    from aifab.data.sources import _host

    dead = tmp_path / f"ingest-{_host()}-999999999-abc"
    mine = tmp_path / f"ingest-{_host()}-{os.getpid()}-abc"
    other_host = tmp_path / "ingest-elsewhere-999999999-abc"
    for folder in (dead, mine, other_host):
        (folder / "extracted").mkdir(parents=True)
    assert sweep_stale(tmp_path) == [dead]
    assert not dead.exists() and mine.exists() and other_host.exists()
