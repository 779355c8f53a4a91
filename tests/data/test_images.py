"""The image gate on real files written by Pillow (and a few crafted by hand)."""

from __future__ import annotations

import io
import struct
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageFile

from aifab.data.dedup import image_near_duplicate_groups
from aifab.data.images import ImageCheck, inspect_image

LIMIT = 10_000_000


def checks_of(result: ImageCheck) -> list[str]:
    return [check for check, _ in result.problems]


def decoded(result: ImageCheck) -> Image.Image:
    assert result.data is not None
    im = Image.open(io.BytesIO(result.data))
    im.load()
    return im


def save(image: Image.Image, path: Path, **params: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **params)
    return path


def pattern(seed: int, size: int = 128) -> Image.Image:
    """A smooth, seeded RGB pattern: distinct perceptual hashes for distinct seeds."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    return Image.fromarray(blocks).resize((size, size), Image.Resampling.BILINEAR)


def png_header(width: int, height: int) -> bytes:
    """A PNG whose IHDR (with a correct CRC) claims width x height RGB pixels; almost no data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + chunk(b"IEND", b"")
    )


# --- usable images: original bytes kept -----------------------------------------------------


@pytest.mark.parametrize(
    ("name", "fmt"), [("ok.png", "PNG"), ("ok.jpg", "JPEG"), ("ok.JPEG", "JPEG")]
)
def test_plain_rgb_image_keeps_its_original_bytes(tmp_path: Path, name: str, fmt: str) -> None:
    path = save(pattern(1, 48).crop((0, 0, 48, 32)), tmp_path / name)
    result = inspect_image(path, max_pixels=LIMIT)
    assert result.problems == ()
    assert result.data == path.read_bytes()
    assert (result.width, result.height, result.mode, result.format) == (48, 32, "RGB", fmt)
    assert result.phash is not None and 0 <= result.phash < 2**64
    assert result.usable


def test_grayscale_png_is_kept_as_is(tmp_path: Path) -> None:
    path = save(pattern(2, 32).convert("L"), tmp_path / "gray.png")
    result = inspect_image(path, max_pixels=LIMIT)
    assert result.problems == () and result.data == path.read_bytes() and result.mode == "L"


# --- unusable files ---------------------------------------------------------------------------


def test_zero_byte_file_is_unreadable(tmp_path: Path) -> None:
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    result = inspect_image(path, max_pixels=LIMIT)
    assert checks_of(result) == ["unreadable_image"]
    assert (
        result.data is None
        and str(path) in result.problems[0][1]
        and "empty" in result.problems[0][1]
    )


def test_text_file_named_png_is_unreadable(tmp_path: Path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("this is not an image")
    result = inspect_image(path, max_pixels=LIMIT)
    assert checks_of(result) == ["unreadable_image"]
    assert result.data is None and result.phash is None and str(path) in result.problems[0][1]


def test_missing_file(tmp_path: Path) -> None:
    result = inspect_image(tmp_path / "gone.png", max_pixels=LIMIT)
    assert checks_of(result) == ["missing_file"] and "gone.png" in result.problems[0][1]


def test_truncated_jpeg_is_unreadable_and_not_silently_padded(tmp_path: Path) -> None:
    buf = io.BytesIO()
    pattern(3, 64).save(buf, format="JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    result = inspect_image(path, max_pixels=LIMIT)
    assert checks_of(result) == ["unreadable_image"]
    assert "truncated" in result.problems[0][1] and str(path) in result.problems[0][1]
    assert result.data is None
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_eps_is_not_handed_to_ghostscript(tmp_path: Path) -> None:
    path = tmp_path / "x.png"
    path.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    result = inspect_image(path, max_pixels=LIMIT)
    assert (
        checks_of(result) == ["unreadable_image"]
        and "not a supported image" in result.problems[0][1]
    )


# --- decompression bombs ------------------------------------------------------------------------


def test_header_bomb_is_refused_fast_without_decoding(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(png_header(100_000, 100_000))
    before = Image.MAX_IMAGE_PIXELS
    start = time.perf_counter()
    result = inspect_image(path, max_pixels=LIMIT)
    assert time.perf_counter() - start < 2
    assert (
        checks_of(result) == ["image_bomb"]
        and result.data is None
        and str(path) in result.problems[0][1]
    )
    assert Image.MAX_IMAGE_PIXELS == before  # Pillow's global is never changed


def test_our_limit_protects_even_without_pillows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With Pillow's global check disabled, our own limit refuses the bomb from the header alone."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)

    def no_decoding(self: ImageFile.ImageFile) -> None:
        raise AssertionError("pixels of a bomb must never be decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    path = tmp_path / "bomb.png"
    path.write_bytes(png_header(100_000, 100_000))
    result = inspect_image(path, max_pixels=LIMIT)
    assert checks_of(result) == ["image_bomb"]
    assert "100000x100000" in result.problems[0][1] and str(LIMIT) in result.problems[0][1]
    assert (result.width, result.height) == (100_000, 100_000)


def test_limit_below_pillows_refuses_without_warnings(tmp_path: Path) -> None:
    path = save(pattern(4, 64), tmp_path / "big.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = inspect_image(path, max_pixels=64 * 64 - 1)
        assert checks_of(result) == ["image_bomb"]
        assert checks_of(inspect_image(path, max_pixels=64 * 64)) == []


def test_between_pillows_warning_and_error_is_ours_to_refuse(tmp_path: Path) -> None:
    """Pillow only warns between its limit and twice it; under -W error that is still a bomb."""
    path = tmp_path / "wide.png"
    path.write_bytes(png_header(10_000, 10_000))  # 1e8 pixels: above Pillow's 89e6, below 2x
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert checks_of(inspect_image(path, max_pixels=LIMIT)) == ["image_bomb"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert checks_of(inspect_image(path, max_pixels=LIMIT)) == ["image_bomb"]


def test_file_size_cap(tmp_path: Path) -> None:
    path = save(pattern(5, 64), tmp_path / "a.png")
    result = inspect_image(path, max_pixels=LIMIT, max_bytes=100)
    assert checks_of(result) == ["image_bomb"] and "bytes" in result.problems[0][1]


# --- wrong extension ---------------------------------------------------------------------------


def test_png_named_jpg_is_a_warning_and_still_usable(tmp_path: Path) -> None:
    path = save(pattern(6, 32), tmp_path / "photo.jpg", format="PNG")
    result = inspect_image(path, max_pixels=LIMIT)
    assert checks_of(result) == ["wrong_extension"]
    assert "'.jpg'" in result.problems[0][1] and "PNG" in result.problems[0][1]
    assert result.data == path.read_bytes() and result.format == "PNG"


def test_missing_extension_is_not_wrong(tmp_path: Path) -> None:
    path = save(pattern(6, 32), tmp_path / "noext", format="PNG")
    assert inspect_image(path, max_pixels=LIMIT).problems == ()


# --- modes converted to 8-bit RGB / L ----------------------------------------------------------


def test_cmyk_jpeg_becomes_rgb_png(tmp_path: Path) -> None:
    path = save(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), tmp_path / "cmyk.jpg")
    result = inspect_image(path, max_pixels=LIMIT)
    assert checks_of(result) == ["image_mode"] and "CMYK -> RGB" in result.problems[0][1]
    im = decoded(result)
    assert im.format == "PNG" and im.mode == "RGB" and result.mode == "CMYK"
    r, g, b = im.getpixel((8, 8))
    assert r > 230 and g < 30 and b < 30  # red, not inverted


def test_16_bit_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    values = np.array([[0, 257 * 10, 32768, 65535]], dtype=np.uint16)
    path = save(Image.fromarray(values), tmp_path / "depth.png")
    result = inspect_image(path, max_pixels=LIMIT)
    assert checks_of(result) == ["image_mode"] and "-> L" in result.problems[0][1]
    assert result.mode is not None and result.mode.startswith("I")
    im = decoded(result)
    assert im.mode == "L"
    assert np.asarray(im).tolist() == [[0, 10, 128, 255]]


def test_palette_png_becomes_rgb_with_its_colours(tmp_path: Path) -> None:
    im = Image.new("P", (4, 2))
    im.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    im.putpixel((3, 1), 1)
    path = save(im, tmp_path / "pal.png")
    result = inspect_image(path, max_pixels=LIMIT)
    assert checks_of(result) == ["image_mode"] and "P -> RGB" in result.problems[0][1]
    out = decoded(result)
    assert out.getpixel((0, 0)) == (255, 0, 0) and out.getpixel((3, 1)) == (0, 0, 255)


def test_rgba_is_composited_over_white(tmp_path: Path) -> None:
    im = Image.new("RGBA", (3, 1))
    im.putdata([(255, 0, 0, 0), (255, 0, 0, 128), (0, 0, 255, 255)])
    path = save(im, tmp_path / "alpha.png")
    result = inspect_image(path, max_pixels=LIMIT)
    assert checks_of(result) == ["image_mode"] and "over white" in result.problems[0][1]
    out = decoded(result)
    assert out.mode == "RGB"
    assert out.getpixel((0, 0)) == (255, 255, 255)  # fully transparent -> white, not red or black
    r, g, b = out.getpixel((1, 0))
    assert r == 255 and 120 <= g <= 135 and 120 <= b <= 135
    assert out.getpixel((2, 0)) == (0, 0, 255)


def test_gray_alpha_becomes_gray(tmp_path: Path) -> None:
    im = Image.new("LA", (2, 1))
    im.putdata([(0, 0), (0, 255)])
    result = inspect_image(save(im, tmp_path / "la.png"), max_pixels=LIMIT)
    out = decoded(result)
    assert out.mode == "L" and np.asarray(out).tolist() == [[255, 0]]


def test_one_bit_image_becomes_gray(tmp_path: Path) -> None:
    im = Image.new("1", (2, 1))
    im.putpixel((1, 0), 1)
    out = decoded(inspect_image(save(im, tmp_path / "bw.png"), max_pixels=LIMIT))
    assert out.mode == "L" and np.asarray(out).tolist() == [[0, 255]]


def test_animated_gif_keeps_the_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50)
    result = inspect_image(path, max_pixels=LIMIT)
    messages = " ".join(m for _, m in result.problems)
    assert set(checks_of(result)) == {"image_mode"} and "first frame" in messages
    out = decoded(result)
    assert out.mode == "RGB" and out.getpixel((4, 4)) == (255, 0, 0)


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    im = Image.new("RGB", (40, 20), (255, 0, 0))
    im.paste((0, 0, 255), (20, 0, 40, 20))  # left red, right blue
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = save(im, tmp_path / "phone.jpg", exif=exif, quality=95)
    result = inspect_image(path, max_pixels=LIMIT)
    out = decoded(result)
    assert out.format == "PNG" and (result.width, result.height) == out.size == (20, 40)
    top, bottom = out.getpixel((10, 5)), out.getpixel((10, 35))
    assert top[0] > 200 and top[2] < 60  # the left (red) side is now on top
    assert bottom[2] > 200 and bottom[0] < 60


# --- perceptual hash ---------------------------------------------------------------------------


def test_brightened_resized_copy_is_a_near_duplicate_unrelated_is_not(tmp_path: Path) -> None:
    original = pattern(10)
    paths = [
        save(original, tmp_path / "a.png"),
        save(
            ImageEnhance.Brightness(original).enhance(1.1).resize((100, 100)),
            tmp_path / "b.jpg",
            quality=90,
        ),
        save(pattern(11), tmp_path / "c.png"),
        save(pattern(12), tmp_path / "d.png"),
    ]
    hashes = [inspect_image(p, max_pixels=LIMIT).phash for p in paths]
    groups = image_near_duplicate_groups(hashes, max_hamming=4).tolist()
    assert groups[0] == groups[1]
    assert len({groups[0], groups[2], groups[3]}) == 3
