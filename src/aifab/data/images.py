"""The image gate: read one image file safely and decide what to store.

:func:`inspect_image` reads the file once, refuses decompression bombs from the header
alone (before any pixel is decoded), decodes the first frame to prove the file is whole,
normalises unusual modes to 8-bit ``RGB`` or ``L``, applies the EXIF orientation, and
computes a perceptual hash for near-duplicate search. Problems come back as
``(check, message)`` pairs named after :class:`~aifab.core.config.ChecksConfig` fields;
every message starts with the file name.

What is stored (``ImageCheck.data``):

* the original bytes, when the file is an RGB or L image that needs no change;
* PNG bytes re-encoded from the normalised pixels, when the mode had to be converted,
  the image was animated (first frame kept) or the EXIF orientation rotated it;
* ``None``, when the image is unusable (unreadable, truncated, a bomb, missing).

>>> import tempfile
>>> from PIL import Image
>>> path = Path(tempfile.mkdtemp()) / "red.png"
>>> Image.new("RGB", (8, 4), "red").save(path)
>>> check = inspect_image(path, max_pixels=1_000_000)
>>> (check.width, check.height, check.format, check.problems, check.data == path.read_bytes())
(8, 4, 'PNG', (), True)
"""

from __future__ import annotations

import io
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # Pillow and numpy are imported inside the functions: `import aifab` stays fast.
    import numpy as np
    from PIL import Image as PILImage

MAX_FILE_BYTES = 256 * 1024 * 1024
"""Files larger than this are refused before they are read (``image_bomb``)."""

# Only formats that are plain raster images. Pillow also opens EPS (which runs Ghostscript),
# fonts and exotic formats; a dataset has no business feeding those to the decoder. (Pillow's
# JPEG opener also returns multi-picture "MPO" files, as phones write them.)
ALLOWED_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP", "PPM")

_GRAY_MODES = {"1", "L", "LA", "La", "I", "F"}  # plus every "I;16*" mode
_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}
_ORIENTATION_TAG = 0x0112
_SAME_FORMAT = {"MPO": "JPEG"}  # a multi-picture JPEG (phones) is still a .jpg


@dataclass(frozen=True)
class ImageCheck:
    """What the image gate found out about one file.

    ``width``/``height`` are those of the stored image (after the EXIF orientation), or the
    header's size for a refused bomb, or None when unknown. ``mode`` and ``format`` are the
    file's own (Pillow's names). ``phash`` is the 64-bit perceptual hash as an int.
    """

    data: bytes | None
    width: int | None = None
    height: int | None = None
    mode: str | None = None
    format: str | None = None
    phash: int | None = None
    thumb: bytes | None = None
    """16x16 grayscale pixels (256 bytes): confirms perceptual-hash matches pixel by pixel."""
    problems: tuple[tuple[str, str], ...] = ()

    @property
    def usable(self) -> bool:
        return self.data is not None


def inspect_image(path: Path, *, max_pixels: int, max_bytes: int = MAX_FILE_BYTES) -> ImageCheck:
    """Check one image file and return the bytes to store (or None) with its problems.

    Checks, in order: missing file, size cap, zero bytes, not an image, decompression bomb
    (header only), truncated or corrupt pixel data, wrong extension, unusual mode / alpha /
    animation (converted), EXIF orientation (applied).

    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "notes.png"
    >>> _ = path.write_text("not an image")
    >>> check = inspect_image(path, max_pixels=1000)
    >>> check.data is None, check.problems[0][0]
    (True, 'unreadable_image')
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    name = str(path)
    raw = _read_capped(path, max_bytes)
    if isinstance(raw, tuple):
        return ImageCheck(data=None, problems=(raw,))
    if not raw:
        return ImageCheck(
            data=None, problems=(("unreadable_image", f"{name}: file is empty (0 bytes)"),)
        )

    # Image.open reads only the header: size, mode and format, no pixels. Pillow's own bomb
    # check runs there against its global MAX_IMAGE_PIXELS; we never change that global (other
    # code in the process may rely on it) and apply our own limit below. Pillow raises above
    # twice its limit, and its warning becomes an exception under `-W error`: both are bombs.
    Image.init()  # registers every plugin (once): `formats=` names plugins Pillow loads lazily
    try:
        im = Image.open(io.BytesIO(raw), formats=ALLOWED_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        return ImageCheck(
            data=None, problems=(("image_bomb", f"{name}: refused before decoding: {exc}"),)
        )
    except UnidentifiedImageError:
        detail = f"not a supported image (allowed formats: {', '.join(ALLOWED_FORMATS)})"
        return ImageCheck(data=None, problems=(("unreadable_image", f"{name}: {detail}"),))
    except Exception as exc:  # noqa: BLE001 - hostile headers make Pillow raise almost anything
        return ImageCheck(
            data=None, problems=(("unreadable_image", f"{name}: cannot read the header: {exc}"),)
        )

    with im:
        width, height = im.size
        mode, fmt = im.mode, im.format
        known = ImageCheck(data=None, width=width, height=height, mode=mode, format=fmt)
        if width * height > max_pixels:
            pixels = width * height
            message = (
                f"{name}: {width}x{height} = {pixels} pixels exceeds the limit of {max_pixels}"
            )
            return replace(known, problems=(("image_bomb", message),))
        problems: list[tuple[str, str]] = []
        wrong = _wrong_extension(path, fmt)
        if wrong:
            problems.append(("wrong_extension", f"{name}: {wrong}"))
        try:
            image, notes, changed = _decode(im)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            return replace(known, problems=(("image_bomb", f"{name}: {exc}"),))
        except Exception as exc:  # noqa: BLE001 - corrupt data: OSError, SyntaxError, ValueError...
            problems.append(("unreadable_image", f"{name}: cannot decode the pixels: {exc}"))
            return replace(known, problems=tuple(problems))
        # Still inside `with`: when nothing changed, `image` is `im`, which closing would free.
        problems += [("image_mode", f"{name}: {note}") for note in notes]
        data = _encode_png(image, icc=im.info.get("icc_profile")) if changed else raw
        return ImageCheck(
            data=data,
            width=image.width,
            height=image.height,
            mode=mode,
            format=fmt,
            phash=_phash(image),
            thumb=_thumb(image),
            problems=tuple(problems),
        )


def _read_capped(path: Path, max_bytes: int) -> bytes | tuple[str, str]:
    """The file's bytes, read once; or the (check, message) that says why not."""
    name = str(path)
    try:
        size = path.stat().st_size
        if size > max_bytes:
            return ("image_bomb", f"{name}: file is {size} bytes; the limit is {max_bytes}")
        with path.open("rb") as fh:
            raw = fh.read(max_bytes + 1)  # the file may grow between stat and read
    except FileNotFoundError:
        return ("missing_file", f"{name}: file does not exist")
    except OSError as exc:  # a directory, no permission, an I/O error
        return ("unreadable_image", f"{name}: cannot read the file: {exc.strerror or exc}")
    if len(raw) > max_bytes:
        return ("image_bomb", f"{name}: file is larger than the limit of {max_bytes} bytes")
    return raw


def _wrong_extension(path: Path, fmt: str | None) -> str | None:
    """Why the extension does not fit the detected format, or None when it fits (or is absent)."""
    from PIL import Image

    ext = path.suffix.lower()
    if not ext or fmt is None:
        return None
    expected = Image.registered_extensions().get(ext)
    if expected is not None and _SAME_FORMAT.get(expected, expected) == _SAME_FORMAT.get(fmt, fmt):
        return None
    named = f"a {expected} extension" if expected else "not an image extension"
    return f"extension {ext!r} is {named} but the file is {fmt}"


def _decode(im: PILImage.Image) -> tuple[PILImage.Image, list[str], bool]:
    """Decode the first frame, orient it and bring it to 8-bit RGB or L.

    Returns the image, notes for the ``image_mode`` check and whether the pixels differ
    from what the original bytes decode to (then the bytes must be re-encoded).
    """
    from PIL import ImageOps

    notes: list[str] = []
    changed = False
    if getattr(
        im, "is_animated", False
    ):  # checks for a second frame only; n_frames would scan them all
        im.seek(0)
        notes.append(f"animated / multi-frame {im.format}: kept the first frame")
        changed = True
    # Raises OSError("image file is truncated ...") on cut files: LOAD_TRUNCATED_IMAGES stays off.
    im.load()
    image: PILImage.Image = im
    if im.getexif().get(_ORIENTATION_TAG, 1) in range(2, 9):
        image = ImageOps.exif_transpose(im)
        changed = True
    if image.mode not in ("RGB", "L"):
        target, how = _to_8bit_mode(image.mode)
        converted = _convert(image, target)
        notes.append(f"converted {image.mode} -> {target}{how}")
        image, changed = converted, True
    return image, notes, changed


def _to_8bit_mode(mode: str) -> tuple[str, str]:
    """The mode a file's mode becomes, and a note on how."""
    target = "L" if mode in _GRAY_MODES or mode.startswith("I;16") else "RGB"
    if mode in _ALPHA_MODES:
        return target, " (alpha composited over white)"
    if mode.startswith("I"):
        return target, " (scaled to 8 bits)"
    return target, ""


def _convert(image: PILImage.Image, target: str) -> PILImage.Image:
    from PIL import Image

    mode = image.mode
    if mode.startswith("I") or mode == "F":
        return Image.fromarray(_scale_to_uint8(image))
    if mode in _ALPHA_MODES or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert(target)
    return image.convert(target)


def _scale_to_uint8(image: PILImage.Image) -> np.ndarray:
    """16/32-bit and float pixels scaled (not clipped) to 0..255, as a numpy uint8 array.

    Pillow's own ``convert("L")`` clips 16-bit values, turning every mid-grey above 255
    into white; a 16-bit image is scaled by 255/65535 instead (32768 -> 128).
    """
    import numpy as np

    arr = np.asarray(image)
    if image.mode.startswith("I;16"):
        wide = arr.astype(np.uint32)
        return ((wide * 255 + 32767) // 65535).astype(np.uint8)
    values = arr.astype(np.float64)
    lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if image.mode == "I" and lo >= 0 and hi <= 255:
        scaled = values
    elif image.mode == "I" and lo >= 0 and hi <= 65535:  # a 16-bit image Pillow widened to 32 bits
        scaled = values * 255 / 65535
    elif image.mode == "F" and lo >= 0 and hi <= 1:
        scaled = values * 255
    else:  # no known range: stretch what is there
        scaled = (values - lo) * (255 / (hi - lo)) if hi > lo else np.zeros_like(values)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _encode_png(image: PILImage.Image, *, icc: bytes | None) -> bytes:
    """Deterministic PNG bytes; the ICC profile is kept only when it fits the new mode."""
    buf = io.BytesIO()
    keep_icc = icc is not None and _icc_space(icc) == {"RGB": b"RGB ", "L": b"GRAY"}.get(image.mode)
    image.save(buf, format="PNG", icc_profile=icc if keep_icc else None)
    return buf.getvalue()


def _icc_space(icc: bytes) -> bytes:
    """The colour space signature of an ICC profile (bytes 16..20 of its header)."""
    return bytes(icc[16:20])


def _thumb(image: PILImage.Image) -> bytes:
    from PIL import Image

    return image.convert("L").resize((16, 16), Image.Resampling.BILINEAR).tobytes()


def _phash(image: PILImage.Image) -> int:
    import imagehash

    return int(str(imagehash.phash(image)), 16)
