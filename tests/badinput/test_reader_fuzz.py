"""Fuzzing the readers this issue added or hardened: whatever the bytes, only AifabErrors escape.

``tests/data/formats/test_formats_fuzz.py`` fuzzes the table, COCO, CoNLL and folder readers
with generated content; this file adds archives (random bytes, hostile structure, mutations
of valid archives), byte-level mutations of valid files of every table format, the image gate,
the server's image check, and the text checks. Besides "no foreign exception", each test checks
what came out: nothing is written outside the extraction folder, no link is ever created, a
stored image decodes, a repaired text is valid UTF-8.
"""

from __future__ import annotations

import io
import os
import stat
import tarfile
import tempfile
import warnings
import zipfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from aifab.core.config import IngestConfig
from aifab.core.errors import AifabError, InputError
from aifab.data.formats import ReaderOptions, read_source
from aifab.data.formats.archive import entry_point, extract_archive
from aifab.data.images import inspect_image
from aifab.data.texts import check_unicode, repair_text, text_problems
from tests.badinput.conftest import GOOD_CSV, encode, pattern

# AIFAB_FUZZ_EXAMPLES=2000 for a deeper run; the default keeps the file near 20 s.
FUZZ = settings(max_examples=int(os.environ.get("AIFAB_FUZZ_EXAMPLES", "120")), deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
SMALL = IngestConfig(max_archive_bytes=200_000, max_archive_members=40, max_archive_ratio=50)

# Names that hurt: escapes, absolute and drive paths, NUL, dot segments, clashes, odd characters.
name_part = st.sampled_from(
    ["..", ".", "", "a", "b.csv", "C:", "\\..", "/", "x\x00y", "é", "😀", "__MACOSX", ".hidden", "a" * 300, "train", "cat"]
)
member_name = st.lists(name_part, min_size=1, max_size=4).map("/".join)


def mutate(data: bytes, edits: list[tuple[int, int]], cut: float | None) -> bytes:
    """``data`` with each (position, byte) written over it, then cut to a fraction when ``cut``."""
    out = bytearray(data)
    for position, value in edits:
        if out:
            out[position % len(out)] = value
    if cut is not None:
        out = out[: int(len(out) * cut)]
    return bytes(out)


edits = st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), max_size=6)
cuts = st.none() | st.floats(0.0, 1.0)


def extract_checked(archive: Path, dest: Path) -> None:
    """Extract; an AifabError is fine. Whatever was written is inside ``dest``, and no link exists."""
    try:
        root = extract_archive(archive, dest, config=SMALL)
        entry_point(root, label=archive.name)
        event("extracted")
    except AifabError as exc:
        event(f"{type(exc).__name__}: {exc.message.split(': ', 1)[-1][:40]}")
    total = 0
    for path in dest.rglob("*"):
        assert not path.is_symlink(), path
        assert path.resolve().is_relative_to(dest.resolve()), path
        if path.is_file():
            total += path.stat().st_size
            assert stat.S_ISREG(path.lstat().st_mode)
    assert total <= SMALL.max_archive_bytes
    assert sorted(p.name for p in archive.parent.iterdir()) == sorted([archive.name, dest.name])


@FUZZ
@given(content=st.binary(max_size=600), suffix=st.sampled_from([".zip", ".tar", ".tar.gz", ".tgz", ".tar.xz"]))
def test_random_bytes_as_archives(content: bytes, suffix: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / f"a{suffix}"
        archive.write_bytes(content)
        extract_checked(archive, Path(tmp) / "out")


zip_member = st.tuples(
    member_name,
    st.binary(max_size=64) | st.sampled_from([b"../../etc/passwd", b"/etc/passwd", b"b.csv", b"."]),
    st.sampled_from([0, stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK, stat.S_IFIFO, stat.S_IFCHR, stat.S_IFSOCK]),
    st.booleans(),
)


@FUZZ
@given(members=st.lists(zip_member, max_size=6))
def test_hostile_zip_structure(members: list[tuple[str, bytes, int, bool]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / "a.zip"
        with zipfile.ZipFile(archive, "w") as z, warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # duplicate names are part of the point
            for name, data, kind, deflate in members:
                info = zipfile.ZipInfo(name or "x")
                info.external_attr = (kind | 0o644) << 16
                info.compress_type = zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED
                try:
                    z.writestr(info, data)
                except ValueError:
                    continue  # zipfile itself refuses to write some names (e.g. NUL)
        extract_checked(archive, Path(tmp) / "out")


tar_member = st.tuples(
    member_name,
    st.sampled_from([tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE,
                     tarfile.BLKTYPE, tarfile.FIFOTYPE, tarfile.CONTTYPE, b"Z"]),
    member_name | st.sampled_from(["/etc/passwd", "../x", "a", "b.csv"]),
    st.binary(max_size=64),
)


@FUZZ
@given(members=st.lists(tar_member, max_size=6), compress=st.sampled_from(["", "gz"]))
def test_hostile_tar_structure(members: list[tuple[str, bytes, str, bytes]], compress: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / ("a.tar.gz" if compress else "a.tar")
        with tarfile.open(archive, f"w:{compress}", format=tarfile.PAX_FORMAT) as t:
            for name, kind, target, data in members:
                info = tarfile.TarInfo(name or "x")
                info.type = kind
                info.linkname = target
                try:
                    if kind in (tarfile.REGTYPE, tarfile.CONTTYPE):
                        info.size = len(data)
                        t.addfile(info, io.BytesIO(data))
                    else:
                        t.addfile(info)
                except (ValueError, UnicodeError):
                    continue
        extract_checked(archive, Path(tmp) / "out")


def _valid_archive(path: Path) -> Path:
    files = {"d/sms.csv": GOOD_CSV.encode(), "d/cat/1.png": encode(pattern(1), "PNG"), "d/dog/2.png": encode(pattern(2), "PNG")}
    if path.suffix == ".zip":
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
            for name, data in files.items():
                z.writestr(name, data)
    else:
        with tarfile.open(path, "w:gz") as t:
            for name, data in files.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
    return path


@FUZZ
@given(suffix=st.sampled_from([".zip", ".tar.gz"]), changes=edits, cut=cuts)
def test_mutated_archives(suffix: str, changes: list[tuple[int, int]], cut: float | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / f"a{suffix}"
        archive.write_bytes(mutate(_valid_archive(archive).read_bytes(), changes, cut))
        extract_checked(archive, Path(tmp) / "out")


def _seed_files() -> dict[str, bytes]:
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [line.split(",") for line in GOOD_CSV.splitlines()[1:]]
    parquet = io.BytesIO()
    pq.write_table(pa.table({"text": [r[0] for r in rows], "label": [r[1] for r in rows]}), parquet)
    coco = {"images": [{"id": 1, "file_name": "a.png", "width": 16, "height": 16}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 4, 4]}],
            "categories": [{"id": 1, "name": "thing"}]}
    return {
        "a.csv": GOOD_CSV.encode(),
        "a.tsv": GOOD_CSV.replace(",", "\t").encode(),
        "a.jsonl": "".join(json.dumps({"text": r[0], "label": r[1]}) + "\n" for r in rows).encode(),
        "a.parquet": parquet.getvalue(),
        "instances.json": json.dumps(coco).encode(),
        "train.conll": b"Ada B-PER\nLovelace I-PER\n\nParis B-LOC\n",
    }


SEEDS = _seed_files()


@FUZZ
@given(name=st.sampled_from(sorted(SEEDS)), changes=edits, cut=cuts)
def test_mutated_files_of_every_table_format(name: str, changes: list[tuple[int, int]], cut: float | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "a.png").write_bytes(encode(pattern(3), "PNG"))
        path = root / name
        path.write_bytes(mutate(SEEDS[name], changes, cut))
        try:
            records = list(read_source(path, "coco" if name.endswith(".json") else None, ReaderOptions()))
        except AifabError:
            return
        for record in records:
            for value in (record.source, *(v for v in record.fields.values() if isinstance(v, str))):
                value.encode("utf-8")  # a lone surrogate would fail here: readers repair them
            assert record.image_path is None or record.image_path.resolve().is_relative_to(root.resolve())


def _image_seeds() -> list[bytes]:
    rgb = pattern(7, 32, "RGB")
    return [
        encode(rgb, "PNG"),
        encode(rgb, "JPEG"),
        encode(pattern(8, 32, "P"), "GIF", save_all=True, append_images=[pattern(9, 32, "P")]),
        encode(rgb, "BMP"),
        encode(rgb, "TIFF"),
        encode(rgb, "WEBP"),
        encode(pattern(10, 32, "RGBA"), "PNG"),
    ]


IMAGE_SEEDS = _image_seeds()


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow warns about the broken TIFF tags we made
@FUZZ
@given(seed=st.integers(0, len(IMAGE_SEEDS) - 1), changes=edits, cut=cuts, raw=st.none() | st.binary(max_size=200))
def test_image_gate_and_server_check_on_mutated_images(
    seed: int, changes: list[tuple[int, int]], cut: float | None, raw: bytes | None
) -> None:
    """``inspect_image`` never raises (problems are findings); what it stores decodes; the
    server's check either passes the bytes or raises InputError."""
    from aifab.serve.limits import ServeLimits, decode_instances

    data = raw if raw is not None else mutate(IMAGE_SEEDS[seed], changes, cut)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.png"
        path.write_bytes(data)
        check = inspect_image(path, max_pixels=1_000_000)
    if check.data is not None:
        with Image.open(io.BytesIO(check.data)) as stored:
            stored.load()
            assert stored.mode in ("RGB", "L") and stored.size == (check.width, check.height)
    else:
        assert {"unreadable_image", "image_bomb"} & {name for name, _ in check.problems}, check.problems
    try:
        decode_instances([data], kind="image", limits=ServeLimits(max_image_pixels=1_000_000))
    except InputError:
        pass


@settings(max_examples=200, deadline=None)
@given(text=st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=60))
def test_text_checks_on_any_text(text: str) -> None:
    problems = text_problems(text, non_printable_fraction=0.3)
    assert all(check in ("empty_text", "invalid_utf8", "non_printable_text") for check, _ in problems)
    repaired = repair_text(text)
    repaired.encode("utf-8")  # always storable
    assert "\x00" not in repaired
    has_surrogate = any(0xD800 <= ord(c) <= 0xDFFF for c in text)
    assert ("invalid_utf8" in {c for c, _ in problems}) == has_surrogate
    if has_surrogate:
        with pytest.raises(InputError, match="not valid UTF-8 text"):
            check_unicode(text, where="t")
    else:
        assert check_unicode(text, where="t") == text


def test_the_fuzzers_reach_the_interesting_paths(tmp_path: Path) -> None:
    """A guard against fuzzers that only ever hit the first error: hand-made members of each
    kind the strategies generate are refused for the reason meant."""
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as z:
        info = zipfile.ZipInfo("dev.csv")
        info.external_attr = (stat.S_IFCHR | 0o644) << 16
        z.writestr(info, b"")
    with pytest.raises(InputError, match="member 'dev.csv' is a device file"):
        extract_archive(archive, tmp_path / "out")
    assert os.listdir(tmp_path / "out") == []
