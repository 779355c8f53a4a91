"""The bad-input corpus: hostile and broken files, built here as real bytes (nothing downloaded).

Each case says what aifab must do with it, which is one of:

* :class:`Quarantined`: the version is made, the bad record is kept out of it and the data
  gate's report names the check and the record's source;
* :class:`Kept`: the record is in the version, repaired or converted, with the finding that
  says so (``check``), never silently;
* :class:`Refused`: nothing is made; an error of ``error``'s class whose message names the
  file, member, row or limit (``says``).

The cases are parametrized over by ``test_corpus_cli.py`` (``aifab ingest`` / ``aifab predict``)
and ``test_corpus_http.py`` (a served model).
"""

from __future__ import annotations

import csv
import io
import json
import stat
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from aifab.core.errors import AifabError, FormatError, InputError, LimitExceeded

# The tiny trained text and image models of the serving tests, trained once per session here too.
from tests.serve.conftest import bundles  # noqa: F401

# ------------------------------------------------------------------------------------------
# What each case must give
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Quarantined:
    check: str
    source: str


@dataclass(frozen=True)
class Kept:
    source: str
    check: str | None = None  # the finding that says what was repaired (None: nothing to say)


@dataclass(frozen=True)
class Refused:
    error: type[AifabError]
    says: tuple[str, ...]


Expect = Quarantined | Kept | Refused


@dataclass(frozen=True)
class Case:
    """``build(folder) -> path to ingest``; ``expect`` what ingesting it must give."""

    name: str
    build: Callable[[Path], Path]
    expect: Expect


# ------------------------------------------------------------------------------------------
# Images
# ------------------------------------------------------------------------------------------


def encode(image: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def pattern(seed: int, size: int = 16, mode: str = "L") -> Image.Image:
    """A seeded random block pattern: distinct images with distinct perceptual hashes."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, size=(4, 4), dtype=np.uint8)
    pixels = np.kron(blocks, np.ones((size // 4, size // 4), dtype=np.uint8))
    return Image.fromarray(pixels, mode="L").convert(mode)


def png_header_bomb(width: int = 50_000, height: int = 50_000) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` pixels, with no pixel data at all."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


def animated_gif() -> bytes:
    frames = [pattern(40 + i, 32, "P") for i in range(3)]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)


def gray16_png() -> bytes:
    pixels = (np.arange(32 * 32, dtype=np.uint16).reshape(32, 32) * 60).astype(np.uint16)
    image = Image.fromarray(pixels)
    assert image.mode == "I;16", image.mode
    return encode(image, "PNG")


def rgba_png() -> bytes:
    rgba = pattern(31, 32, "RGB").convert("RGBA")
    rgba.putalpha(Image.fromarray(np.tile(np.arange(0, 256, 8, dtype=np.uint8), (32, 1))))
    return encode(rgba, "PNG")


# name -> (bytes, whether the image is usable after the gate's conversion)
BAD_IMAGES: dict[str, tuple[Callable[[], bytes], bool]] = {
    "truncated.png": (lambda: truncated(encode(pattern(1, 64, "RGB"), "PNG")), False),
    "truncated.jpg": (lambda: truncated(encode(pattern(2, 64, "RGB"), "JPEG", quality=95)), False),
    "empty.png": (lambda: b"", False),
    "bomb.png": (png_header_bomb, False),
    "cmyk.jpg": (lambda: encode(pattern(3, 32, "CMYK"), "JPEG"), True),
    "gray16.png": (gray16_png, True),
    "alpha.png": (rgba_png, True),
    "animated.gif": (animated_gif, True),
}
UNUSABLE_CHECK = {"truncated.png": "unreadable_image", "truncated.jpg": "unreadable_image",
                  "empty.png": "unreadable_image", "bomb.png": "image_bomb"}


def image_folder(folder: Path, bad_name: str) -> Path:
    """Two classes of five good images each, and the bad one in ``cat/``."""
    root = folder / "images"
    for label, offset in (("cat", 0), ("dog", 100)):
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(5):
            pattern(offset + i).save(root / label / f"{i}.png")
    (root / "cat" / bad_name).write_bytes(BAD_IMAGES[bad_name][0]())
    return root


def image_case(name: str) -> Case:
    usable = BAD_IMAGES[name][1]
    source = f"cat/{name}"
    expect: Expect = Kept(source, "image_mode") if usable else Quarantined(UNUSABLE_CHECK[name], source)
    return Case(f"image:{name}", lambda folder: image_folder(folder, name), expect)


# ------------------------------------------------------------------------------------------
# Texts and tables
# ------------------------------------------------------------------------------------------

HUGE_TEXT = "lorem ipsum dolor sit amet " * 400_000  # 10.8 MB
RTL_EMOJI = "مرحبا بالعالم ‏שלום עולם‎ 👋🏽 👩‍👩‍👧‍👦 🇩🇪"
GOOD_TEXTS = [
    (f"{word} message number {i}: {' '.join(word[::-1] * (j + 1) for j in range(3))}", label)
    for i, (word, label) in enumerate(
        [(w, "ham") for w in ("tea", "lunch", "bus", "movie", "garden", "piano")]
        + [(w, "spam") for w in ("prize", "winner", "casino", "lottery", "bonus", "crypto")]
    )
]

# name -> (the text cell's UTF-8 bytes, expectation builder by CSV line)
BAD_TEXTS: dict[str, bytes] = {
    "huge": HUGE_TEXT.encode(),
    "nul": "hello\x00 there, a NUL byte".encode(),
    "invalid_utf8": b"caf\xe9 cr\xe8me, latin-1 bytes in a UTF-8 file",
    "rtl_emoji": RTL_EMOJI.encode(),
}
TEXT_EXPECT: dict[str, Callable[[str], Expect]] = {
    # Python's csv caps a field at 131072 characters: a clear error, the file and line named.
    "huge": lambda source: Refused(FormatError, ("texts.csv", f"line {source.split(':')[1]}", "131072", "JSONL")),
    "nul": lambda source: Quarantined("non_printable_text", source),
    "invalid_utf8": lambda source: Kept(source, "invalid_utf8"),
    "rtl_emoji": lambda source: Kept(source),
}


def text_table(folder: Path, cell: bytes) -> Path:
    """``texts.csv``: the good rows, then the bad text as the last row (label ``ham``)."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows([("text", "label"), *GOOD_TEXTS])
    path = folder / "texts.csv"
    path.write_bytes(buffer.getvalue().encode() + b'"' + cell.replace(b'"', b'""') + b'",ham\n')
    return path


def text_case(name: str) -> Case:
    line = len(GOOD_TEXTS) + 2
    return Case(f"text:{name}", lambda folder: text_table(folder, BAD_TEXTS[name]), TEXT_EXPECT[name](f"texts.csv:{line}"))


def jsonl_table(folder: Path, text: str) -> Path:
    """``texts.jsonl``: the good rows, then ``text`` (label ``ham``) on the last line."""
    rows = [{"text": t, "label": label} for t, label in GOOD_TEXTS] + [{"text": text, "label": "ham"}]
    path = folder / "texts.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def ragged_csv(folder: Path) -> Path:
    path = folder / "ragged.csv"
    path.write_text("text,label\nfine row,ham\none, two,spam\n", encoding="utf-8")
    return path


def utf16_csv(folder: Path) -> Path:
    path = folder / "utf16.csv"
    path.write_bytes("text,label\nhello,ham\n".encode("utf-16"))
    return path


def coco_outside(folder: Path) -> Path:
    images = folder / "images"
    images.mkdir(parents=True)
    entries, annotations = [], []
    for i in range(6):
        pattern(200 + i, 32, "RGB").save(images / f"{i}.png")
        entries.append({"id": i, "file_name": f"{i}.png", "width": 32, "height": 32})
        annotations.append({"id": i, "image_id": i, "category_id": 1, "bbox": [2, 2, 10, 10]})
    annotations[3]["bbox"] = [20, 20, 40, 40]  # reaches x=60 in a 32 px image
    coco = {"images": entries, "annotations": annotations, "categories": [{"id": 1, "name": "thing"}]}
    path = folder / "instances.json"
    path.write_text(json.dumps(coco), encoding="utf-8")
    return path


def conll_unknown_tag(folder: Path) -> Path:
    path = folder / "train.conll"
    sentences = [f"Ada B-PER\nLovelace I-PER\nwrote{i} O\n" for i in range(5)]
    sentences.append("Paris B-LOC\nis O\nlovely X-MISC\n")  # X- is no BIO/IOBES prefix
    path.write_text("\n".join(sentences), encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------
# Archives
# ------------------------------------------------------------------------------------------

GOOD_CSV = "text,label\n" + "".join(f"{t},{label}\n" for t, label in GOOD_TEXTS)


def zip_with(folder: Path, name: str, members: list[tuple[str, bytes]], *, links: dict[str, str] | None = None) -> Path:
    """A zip of ``members``; ``links`` maps member names to symlink targets (Unix mode bits)."""
    path = folder / name
    with zipfile.ZipFile(path, "w") as archive:
        for member, data in members:
            archive.writestr(member, data)
        for member, target in (links or {}).items():
            info = zipfile.ZipInfo(member)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, target)
    return path


def tar_with(folder: Path, name: str, members: list[tarfile.TarInfo | tuple[str, bytes]]) -> Path:
    path = folder / name
    with tarfile.open(path, "w:gz") as archive:
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                archive.addfile(member)
            else:
                info = tarfile.TarInfo(member[0])
                info.size = len(member[1])
                archive.addfile(info, io.BytesIO(member[1]))
    return path


def tar_link(name: str, target: str, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


def tar_device(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.CHRTYPE
    info.devmajor, info.devminor = 1, 3  # /dev/null's numbers
    return info


def zip_bomb(folder: Path) -> Path:
    """1 GiB of zeros deflated into ~4.6 MB (level 1: built in about a second)."""
    path = folder / "bomb.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        with archive.open("data/zeros.csv", "w", force_zip64=True) as member:
            chunk = bytes(1 << 20)
            for _ in range(1024):
                member.write(chunk)
    return path


def tgz_bomb(folder: Path) -> Path:
    """A tar.gz whose one member is 256 MiB of zeros (about 250 KB compressed)."""

    class Zeros(io.RawIOBase):
        def __init__(self, size: int) -> None:
            self.left = size

        def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
            n = min(len(buffer), self.left)
            buffer[:n] = bytes(n)
            self.left -= n
            return n

        def readable(self) -> bool:
            return True

    path = folder / "bomb.tar.gz"
    info = tarfile.TarInfo("zeros.csv")
    info.size = 256 << 20
    with tarfile.open(path, "w:gz", compresslevel=1) as archive:
        archive.addfile(info, io.BufferedReader(Zeros(info.size), 1 << 20))
    return path


def archive_cases() -> list[Case]:
    def refused(error: type[AifabError], *says: str) -> Refused:
        return Refused(error, says)

    return [
        Case("archive:zip-slip", lambda f: zip_with(f, "slip.zip", [("sms.csv", GOOD_CSV.encode()), ("../../evil.csv", b"x")]),
             refused(InputError, "slip.zip", "../../evil.csv", "leads out")),
        Case("archive:absolute", lambda f: zip_with(f, "abs.zip", [("/tmp/aifab-evil.csv", b"x")]),
             refused(InputError, "abs.zip", "/tmp/aifab-evil.csv", "absolute")),
        Case("archive:zip-symlink-out", lambda f: zip_with(f, "link.zip", [("sms.csv", GOOD_CSV.encode())], links={"passwd.csv": "/etc/passwd"}),
             refused(InputError, "link.zip", "passwd.csv", "/etc/passwd", "outside")),
        Case("archive:tar-symlink-out", lambda f: tar_with(f, "link.tar.gz", [("sms.csv", GOOD_CSV.encode()), tar_link("up.csv", "../../../etc/passwd", tarfile.SYMTYPE)]),
             refused(InputError, "link.tar.gz", "up.csv", "outside")),
        Case("archive:tar-hardlink-out", lambda f: tar_with(f, "hard.tar.gz", [tar_link("h.csv", "/etc/passwd", tarfile.LNKTYPE)]),
             refused(InputError, "hard.tar.gz", "h.csv", "hardlink", "outside")),
        Case("archive:tar-device", lambda f: tar_with(f, "dev.tar.gz", [("sms.csv", GOOD_CSV.encode()), tar_device("null.csv")]),
             refused(InputError, "dev.tar.gz", "null.csv", "device file")),
        Case("archive:zip-bomb", zip_bomb, refused(LimitExceeded, "bomb.zip", "data/zeros.csv", "ingest.max_archive_ratio")),
        Case("archive:tgz-bomb", tgz_bomb, refused(LimitExceeded, "bomb.tar.gz", "zeros.csv", "ingest.max_archive_ratio")),
        Case("archive:not-a-zip", lambda f: _write(f / "fake.zip", b"PK\x03\x04 this is not a zip"),
             refused(FormatError, "fake.zip", "not a readable zip")),
    ]


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# ------------------------------------------------------------------------------------------
# The corpus
# ------------------------------------------------------------------------------------------

CORPUS: list[Case] = [
    *(image_case(name) for name in BAD_IMAGES),
    *(text_case(name) for name in BAD_TEXTS),
    Case("text:huge-jsonl", lambda folder: jsonl_table(folder, HUGE_TEXT), Kept(f"texts.jsonl:{len(GOOD_TEXTS) + 1}")),
    Case("table:ragged", ragged_csv, Refused(FormatError, ("ragged.csv", "line 3", "row has 3 fields, header has 2"))),
    Case("table:utf16", utf16_csv, Refused(FormatError, ("utf16.csv", "UTF-16"))),
    Case("coco:box-outside", coco_outside, Quarantined("invalid_box", "3.png")),
    Case("conll:unknown-tag", conll_unknown_tag, Quarantined("unknown_tag", "train.conll:21")),
    *archive_cases(),
]


@pytest.fixture(scope="module")
def workspace_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One workspace for a module's cases (each case ingests under its own dataset name)."""
    from aifab.pipeline.project import Workspace

    root = tmp_path_factory.mktemp("corpus") / "ws"
    Workspace.init(root).close()
    yield root
