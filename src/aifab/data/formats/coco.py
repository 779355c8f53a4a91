"""COCO detection JSON -> one RawRecord per image, its objects as :class:`~aifab.data.records.Box`.

A malformed *file* raises :class:`~aifab.core.errors.FormatError` naming the key
path (``annotations[3].bbox``) or, for a JSON syntax error, the line: a missing
key, a wrong type, an annotation naming an image or a category that the file does
not define. A broken *object* is a problem on its image's record: a box outside
the image or without area, a polygon with an odd number of coordinates, an RLE
mask that does not decode to the image's pixels (``invalid_box``), an image file
that is not there (``missing_file``).

Polygon segmentations are kept on the box; RLE segmentations (``iscrowd`` regions)
are decoded to check them, and their pixel area is kept in ``meta`` as
``rle_area.<annotation id>`` (the box stays the object's geometry).

Image files are looked up, in order, under ``options.image_root`` if given, else
the JSON's folder and its ``images/`` folder, and, when the JSON lies in an
``annotations/`` folder (the COCO release layout), the folder above it, its
``images/`` folder and the folder named after the file (``instances_val2017.json``
-> ``val2017/``). Every lookup is confined to its root.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterator

from aifab.core.errors import FormatError, InputError
from aifab.data.formats import ReaderOptions, option_split, repair_text, split_from_name
from aifab.data.formats.paths import confine
from aifab.data.records import Box, RawRecord

Problem = tuple[str, str]
# A compressed RLE count has at most this many 5-bit groups: 60 bits is more pixels than any
# image has, and the cap keeps a hostile string from building a huge integer.
_MAX_RLE_GROUPS = 12


def read_coco(path: Path, options: ReaderOptions) -> Iterator[RawRecord]:
    """Every image of a COCO JSON file with its boxes (the file is parsed and checked now).

    >>> import json, tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> coco = {"images": [{"id": 1, "file_name": "a.png", "width": 64, "height": 48}],
    ...         "annotations": [{"id": 7, "image_id": 1, "category_id": 3,
    ...                          "bbox": [60, 0, 10, 10]}],
    ...         "categories": [{"id": 3, "name": "cat"}]}
    >>> _ = (d / "instances_val.json").write_text(json.dumps(coco), encoding="utf-8")
    >>> [r] = read_coco(d / "instances_val.json", ReaderOptions())
    >>> r.split, r.fields["boxes"][0].label, r.problems[0]
    ('val', 'cat', ('invalid_box', 'annotation 7: box [60, 0, 10, 10] outside the 64x48 image'))
    """
    path = Path(path)
    data = _load(path)
    images = _images(path, data)
    categories = _categories(path, data)
    annotations = _annotations(path, data, images, categories)
    split = option_split(options) or split_from_name(path.name)
    roots = (
        [Path(options.image_root)]
        if options.image_root is not None
        else _candidate_roots(path, split)
    )
    return _records(images, annotations, roots, split)


def rle_counts(counts: list[int] | str) -> list[int]:
    """The run lengths of a COCO RLE: an uncompressed list as is, a compressed string decoded.

    The string form is ``maskApi.c``'s ``rleToString``: each count (after the third,
    as the difference from the count two before) in 5-bit groups, low first, each
    char ``48 + group``, with ``0x20`` meaning "more groups follow" and ``0x10`` in the
    last group the sign. Runs alternate 0 and 1, starting with 0, in column-major order.

    >>> rle_counts("324O"), rle_counts("T3")
    ([3, 2, 4, 1], [100])
    """
    if isinstance(counts, str):
        return _decode_counts(counts)
    if isinstance(counts, list) and all(
        isinstance(c, int) and not isinstance(c, bool) for c in counts
    ):
        return list(counts)
    raise InputError("RLE counts must be a list of integers or a compressed string")


def rle_to_mask(counts: list[int], height: int, width: int) -> Any:
    """The boolean ``(height, width)`` numpy mask of run lengths; InputError if they do not fill it.

    >>> rle_to_mask([1, 2, 1], 2, 2).astype(int).tolist()
    [[0, 1], [1, 0]]
    """
    import numpy as np

    _check_counts(counts, height, width)
    values = np.zeros(len(counts), dtype=bool)
    values[1::2] = True
    return np.repeat(values, counts).reshape((height, width), order="F")


# --- loading and checking the file --------------------------------------------------------


def _load(path: Path) -> dict[str, Any]:
    raw = path.read_bytes()
    if raw[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise FormatError(str(path), "the file is UTF-16 encoded; save it as UTF-8")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise FormatError(str(path), f"not valid UTF-8 (byte {exc.start})") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise FormatError(
            str(path), f"invalid JSON: {exc.msg} (column {exc.colno})", line=exc.lineno
        ) from exc
    except (ValueError, RecursionError) as exc:
        raise FormatError(str(path), f"invalid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise FormatError(
            str(path), "expected a JSON object with 'images', 'annotations' and 'categories'"
        )
    return data


def _images(path: Path, data: dict[str, Any]) -> dict[Any, dict[str, Any]]:
    images: dict[Any, dict[str, Any]] = {}
    for i, image in enumerate(_list(path, data, "images", required=True)):
        where = f"images[{i}]"
        image_id = _id(path, image, where)
        if image_id in images:
            raise FormatError(str(path), f"duplicate image id {image_id!r}", field=f"{where}.id")
        name = _get(path, image, "file_name", where)
        if not isinstance(name, str) or not name.strip():
            raise FormatError(
                str(path), "expected a non-empty file name", field=f"{where}.file_name"
            )
        size = {key: _optional_size(path, image, key, where) for key in ("width", "height")}
        images[image_id] = {"file_name": name, **size}
    return images


def _categories(path: Path, data: dict[str, Any]) -> dict[Any, str]:
    categories: dict[Any, str] = {}
    for i, category in enumerate(_list(path, data, "categories", required=False)):
        where = f"categories[{i}]"
        category_id = _id(path, category, where)
        if category_id in categories:
            raise FormatError(
                str(path), f"duplicate category id {category_id!r}", field=f"{where}.id"
            )
        name = _get(path, category, "name", where)
        if (
            isinstance(name, bool)
            or not isinstance(name, (str, int, float))
            or not str(name).strip()
        ):
            raise FormatError(
                str(path), "expected a non-empty category name", field=f"{where}.name"
            )
        categories[category_id] = repair_text(str(name).strip())[0]
    return categories


def _annotations(
    path: Path, data: dict[str, Any], images: dict[Any, dict[str, Any]], categories: dict[Any, str]
) -> dict[Any, list[dict[str, Any]]]:
    """Annotations grouped by image id, each checked for shape and references."""
    by_image: dict[Any, list[dict[str, Any]]] = {}
    for i, annotation in enumerate(_list(path, data, "annotations", required=False)):
        where = f"annotations[{i}]"
        if not isinstance(annotation, dict):
            raise FormatError(str(path), "expected an object", field=where)
        annotation_id = _id(path, annotation, where) if "id" in annotation else i
        image_id = _get(path, annotation, "image_id", where)
        if not _hashable_id(image_id) or image_id not in images:
            raise FormatError(
                str(path),
                f"annotation {annotation_id!r} names image id {image_id!r}, which no image has",
                field=f"{where}.image_id",
            )
        category_id = _get(path, annotation, "category_id", where)
        if not _hashable_id(category_id) or category_id not in categories:
            known = ", ".join(repr(c) for c in list(categories)[:20])
            raise FormatError(
                str(path),
                f"annotation {annotation_id!r} names category id {category_id!r}, "
                "which is not in categories "
                f"(known: {known or 'none'})",
                field=f"{where}.category_id",
            )
        bbox = _get(path, annotation, "bbox", where)
        if not isinstance(bbox, list) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
            raise FormatError(
                str(path), "expected [x, y, width, height] numbers", field=f"{where}.bbox"
            )
        iscrowd = annotation.get("iscrowd", 0)
        if iscrowd not in (0, 1) or isinstance(iscrowd, float):
            raise FormatError(str(path), "expected 0 or 1", field=f"{where}.iscrowd")
        by_image.setdefault(image_id, []).append(
            {
                "id": annotation_id,
                "label": categories[category_id],
                "bbox": [_float(v) for v in bbox],
                "iscrowd": bool(iscrowd),
                "segmentation": annotation.get("segmentation"),
            }
        )
    return by_image


def _list(path: Path, data: dict[str, Any], key: str, *, required: bool) -> list[Any]:
    if key not in data:
        if required:
            raise FormatError(str(path), "missing; a COCO file lists its images", field=key)
        return []
    value = data[key]
    if not isinstance(value, list):
        raise FormatError(str(path), "expected a list", field=key)
    return value


def _get(path: Path, obj: Any, key: str, where: str) -> Any:
    if not isinstance(obj, dict):
        raise FormatError(str(path), "expected an object", field=where)
    if key not in obj:
        raise FormatError(str(path), "missing", field=f"{where}.{key}")
    return obj[key]


def _id(path: Path, obj: Any, where: str) -> Any:
    value = _get(path, obj, "id", where)
    if not _hashable_id(value):
        raise FormatError(str(path), "expected an integer or string id", field=f"{where}.id")
    return value


def _hashable_id(value: Any) -> bool:
    return isinstance(value, (int, str)) and not isinstance(value, bool)


def _optional_size(path: Path, image: dict[str, Any], key: str, where: str) -> float | None:
    value = image.get(key)
    if value is None:
        return None
    number = _float(value) if _is_number(value) else math.nan
    if not (math.isfinite(number) and number > 0):
        raise FormatError(str(path), "expected a positive number of pixels", field=f"{where}.{key}")
    return number


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _float(value: int | float) -> float:
    """``float(value)``, with integers too large for a float as infinity (JSON allows them)."""
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


# --- records ------------------------------------------------------------------------------


def _records(
    images: dict[Any, dict[str, Any]],
    annotations: dict[Any, list[dict[str, Any]]],
    roots: list[Path],
    split: str | None,
) -> Iterator[RawRecord]:
    for image_id, image in images.items():
        problems: list[Problem] = []
        meta = {"coco_image_id": str(image_id)}
        boxes = [_box(a, image, problems, meta) for a in annotations.get(image_id, [])]
        source, bad_name = repair_text(image["file_name"])
        if bad_name:
            problems.append(
                (
                    "invalid_utf8",
                    "file_name is not valid UTF-8; bad characters replaced with U+FFFD",
                )
            )
        image_path = _locate(roots, image["file_name"], problems)
        yield RawRecord(
            source=source,
            fields={"boxes": boxes, "meta": meta},
            image_path=image_path,
            split=split,
            problems=problems,
        )


def _box(
    annotation: dict[str, Any], image: dict[str, Any], problems: list[Problem], meta: dict[str, str]
) -> Box:
    name = f"annotation {annotation['id']}"
    x, y, w, h = annotation["bbox"]
    width, height = image["width"], image["height"]
    shown = "[" + ", ".join(_number_text(v) for v in (x, y, w, h)) + "]"
    if not all(math.isfinite(v) for v in (x, y, w, h)) or not (w > 0 and h > 0):
        problems.append(("invalid_box", f"{name}: box {shown} has no area"))
    # One pixel of slack: annotation tools round box edges outwards.
    elif (
        x < 0
        or y < 0
        or (width is not None and x + w > width + 1)
        or (height is not None and y + h > height + 1)
    ):
        size = f"{_number_text(width)}x{_number_text(height)} " if width and height else ""
        problems.append(("invalid_box", f"{name}: box {shown} outside the {size}image"))
    polygons = _segmentation(name, annotation, image, problems, meta)
    return Box(
        label=annotation["label"],
        x=x,
        y=y,
        w=w,
        h=h,
        iscrowd=annotation["iscrowd"],
        segmentation=polygons,
    )


def _segmentation(
    name: str,
    annotation: dict[str, Any],
    image: dict[str, Any],
    problems: list[Problem],
    meta: dict[str, str],
) -> tuple[tuple[float, ...], ...]:
    segmentation = annotation["segmentation"]
    if segmentation is None or segmentation == []:
        return ()
    if isinstance(segmentation, dict):
        try:
            area = _rle_area(segmentation, image)
        except InputError as exc:
            problems.append(("invalid_box", f"{name}: invalid RLE segmentation: {exc.message}"))
        else:
            meta[f"rle_area.{annotation['id']}"] = str(area)
        return ()
    if not isinstance(segmentation, list):
        problems.append(
            ("invalid_box", f"{name}: segmentation must be a list of polygons or an RLE object")
        )
        return ()
    polygons = []
    for k, polygon in enumerate(segmentation):
        if not isinstance(polygon, list) or not all(
            _is_number(v) and math.isfinite(_float(v)) for v in polygon
        ):
            problems.append(("invalid_box", f"{name}: polygon {k} is not a list of numbers"))
            return ()
        if len(polygon) < 6 or len(polygon) % 2:
            problems.append(
                (
                    "invalid_box",
                    f"{name}: polygon {k} has {len(polygon)} coordinates; "
                    "expected an even number, at least 6",
                )
            )
            return ()
        polygons.append(tuple(float(v) for v in polygon))
    return tuple(polygons)


def _rle_area(rle: dict[str, Any], image: dict[str, Any]) -> int:
    """The mask's pixel count, after checking the RLE fills exactly its ``size`` (and the image)."""
    size = rle.get("size")
    if not isinstance(size, list) or len(size) != 2 or not all(_is_count(v) for v in size):
        raise InputError("size must be [height, width]")
    height, width = int(size[0]), int(size[1])
    if (
        image["height"] is not None
        and image["width"] is not None
        and (height, width) != (image["height"], image["width"])
    ):
        raise InputError(
            f"size [{height}, {width}] does not match the {_number_text(image['width'])}x"
            f"{_number_text(image['height'])} image"
        )
    if "counts" not in rle:
        raise InputError("counts are missing")
    counts = rle_counts(rle["counts"])
    _check_counts(counts, height, width)
    return sum(counts[1::2])


def _is_count(value: Any) -> bool:
    return _is_number(value) and math.isfinite(_float(value)) and value >= 0 and value == int(value)


def _check_counts(counts: list[int], height: int, width: int) -> None:
    if any(c < 0 for c in counts):
        raise InputError("a run length is negative")
    total = sum(counts)
    if total != height * width:
        raise InputError(
            f"run lengths add up to {total} pixels; a {height}x{width} mask has {height * width}"
        )


def _decode_counts(text: str) -> list[int]:
    """``maskApi.c``'s ``rleFrString``, in Python."""
    counts: list[int] = []
    p, n = 0, len(text)
    while p < n:
        x, k, more = 0, 0, True
        while more:
            if p >= n:
                raise InputError("the compressed counts end in the middle of a number")
            if k >= _MAX_RLE_GROUPS:
                raise InputError("a compressed count is too large")
            c = ord(text[p]) - 48
            if not 0 <= c < 64:
                raise InputError(f"invalid character {text[p]!r} in the compressed counts at {p}")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p, k = p + 1, k + 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)  # sign-extend: the count is a (negative) difference
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def _locate(roots: list[Path], file_name: str, problems: list[Problem]) -> Path | None:
    """The first root holding the image; a ``missing_file`` problem if none does."""
    escape: str | None = None
    inside_a_root = False
    for root in roots:
        try:
            candidate = confine(root, file_name)
        except InputError as exc:
            escape = escape or exc.message
            continue
        inside_a_root = True
        try:
            if candidate.is_file():
                return candidate
        except OSError:  # e.g. a name longer than the file system allows
            continue
    if escape is not None and not inside_a_root:
        problems.append(("missing_file", escape))
    else:
        shown = repair_text(file_name)[0]
        problems.append(
            ("missing_file", f"{shown} not found under {', '.join(str(r) for r in roots)}")
        )
    return None


def _candidate_roots(path: Path, split: str | None) -> list[Path]:
    here = path.parent
    candidates = [here, here / "images"]
    if here.name.lower() in ("annotations", "annotation"):
        above = here.parent
        candidates += [above, above / "images"]
        if "_" in path.stem:
            named = path.stem.split("_", 1)[1]  # instances_val2017 -> val2017
            candidates += [above / named, above / "images" / named]
    if split is not None:
        candidates.append(here / "images" / split)
    found = [c for c in dict.fromkeys(candidates) if c.is_dir()]
    return found or [here]


def _number_text(value: float | None) -> str:
    if value is None:
        return "?"
    return str(int(value)) if float(value).is_integer() else str(value)
