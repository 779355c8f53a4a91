"""COCO reader: boxes, broken objects as problems, malformed files as errors, RLE masks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from aifab.core.errors import FormatError, InputError
from aifab.data.formats import ReaderOptions
from aifab.data.formats.coco import read_coco, rle_counts, rle_to_mask
from aifab.data.records import Box


def coco(
    images: list[dict[str, Any]], annotations: list[dict[str, Any]], categories=None
) -> dict[str, Any]:
    return {
        "images": images,
        "annotations": annotations,
        "categories": categories
        if categories is not None
        else [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
    }


def image(i: int, width: int = 640, height: int = 480) -> dict[str, Any]:
    return {"id": i, "file_name": f"{i}.png", "width": width, "height": height}


def write_json(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1), encoding="utf-8")
    return path


# Test-side builders of COCO RLE, written from the COCO API's definitions
# (column-major runs starting with zeros; maskApi.c rleToString for the string form).
def mask_runs(mask: np.ndarray) -> list[int]:
    flat = mask.flatten(order="F").astype(np.uint8)
    runs, current, length = [], 0, 0
    for value in flat:
        if value == current:
            length += 1
        else:
            runs.append(length)
            current, length = value, 1
    runs.append(length)
    return runs


def rle_string(counts: list[int]) -> str:
    out = []
    for i, count in enumerate(counts):
        x = count - counts[i - 2] if i > 2 else count
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = x != -1 if c & 0x10 else x != 0
            if more:
                c |= 0x20
            out.append(chr(c + 48))
    return "".join(out)


def test_images_boxes_and_the_split_from_the_file_name(tmp_path: Path, write_png) -> None:
    write_png(tmp_path / "1.png", (640, 480))
    write_png(tmp_path / "2.png", (640, 480))
    polygon = [10, 10, 50, 10, 50, 40]
    data = coco(
        [image(1), image(2)],
        [
            {
                "id": 5,
                "image_id": 1,
                "category_id": 2,
                "bbox": [10, 10, 40, 30],
                "segmentation": [polygon],
            },
            {"id": 6, "image_id": 1, "category_id": 1, "bbox": [0.5, 1, 2, 3], "iscrowd": 0},
        ],
    )
    path = write_json(tmp_path / "instances_train2017.json", data)
    first, second = read_coco(path, ReaderOptions())
    assert first.source == "1.png" and first.split == "train" and first.problems == []
    assert first.image_path == (tmp_path / "1.png").resolve()
    assert first.fields["boxes"] == [
        Box("dog", 10.0, 10.0, 40.0, 30.0, False, (tuple(float(v) for v in polygon),)),
        Box("cat", 0.5, 1.0, 2.0, 3.0),
    ]
    assert (
        second.fields["boxes"] == [] and second.problems == []
    )  # an image without objects is kept
    assert first.fields["meta"]["coco_image_id"] == "1"
    [record] = read_coco(
        write_json(tmp_path / "x.json", coco([image(1)], [])), ReaderOptions(split="test")
    )
    assert record.split == "test"


@pytest.mark.parametrize(
    ("bbox", "message"),
    [
        ([600, 400, 100, 50], "annotation 17: box [600, 400, 100, 50] outside the 640x480 image"),
        ([-3, 0, 10, 10], "annotation 17: box [-3, 0, 10, 10] outside the 640x480 image"),
        ([0, 0, 641.5, 10], "annotation 17: box [0, 0, 641.5, 10] outside the 640x480 image"),
        ([0, 470, 10, 11.5], "annotation 17: box [0, 470, 10, 11.5] outside the 640x480 image"),
        ([10, 10, 0, 5], "annotation 17: box [10, 10, 0, 5] has no area"),
        ([10, 10, 5, -1], "annotation 17: box [10, 10, 5, -1] has no area"),
    ],
)
def test_a_bad_box_is_a_problem_on_its_image(tmp_path: Path, bbox: list[int], message: str) -> None:
    data = coco([image(1)], [{"id": 17, "image_id": 1, "category_id": 1, "bbox": bbox}])
    [record] = read_coco(write_json(tmp_path / "a.json", data), ReaderOptions())
    assert ("invalid_box", message) in record.problems
    assert len(record.fields["boxes"]) == 1  # kept, for the reviewer to see


def test_a_box_on_the_edge_within_one_pixel_is_fine(tmp_path: Path) -> None:
    data = coco(
        [image(1, 64, 48)], [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 64.7, 48.9]}]
    )
    [record] = read_coco(write_json(tmp_path / "a.json", data), ReaderOptions())
    assert [c for c, _ in record.problems] == ["missing_file"]


def test_an_unknown_category_id_is_a_format_error_naming_the_annotation(tmp_path: Path) -> None:
    data = coco(
        [image(1)],
        [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 2, 2]},
            {"id": 42, "image_id": 1, "category_id": 9, "bbox": [1, 1, 2, 2]},
        ],
    )
    with pytest.raises(FormatError) as info:
        read_coco(write_json(tmp_path / "a.json", data), ReaderOptions())
    assert "annotation 42" in str(info.value) and "category id 9" in str(info.value)
    assert info.value.field == "annotations[1].category_id"


def test_an_unknown_image_id_is_a_format_error(tmp_path: Path) -> None:
    data = coco([image(1)], [{"id": 3, "image_id": 7, "category_id": 1, "bbox": [1, 1, 2, 2]}])
    with pytest.raises(FormatError, match="annotation 3 names image id 7"):
        read_coco(write_json(tmp_path / "a.json", data), ReaderOptions())


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda d: d["annotations"][1].pop("bbox"), "annotations[1].bbox"),
        (lambda d: d["annotations"][0].update(bbox=[1, 2, 3]), "annotations[0].bbox"),
        (lambda d: d["images"][0].pop("file_name"), "images[0].file_name"),
        (lambda d: d["images"].append(image(1)), "images[1].id"),
        (lambda d: d["categories"][0].pop("name"), "categories[0].name"),
        (lambda d: d.pop("images"), "images"),
        (lambda d: d["images"][0].update(width="wide"), "images[0].width"),
    ],
)
def test_a_missing_or_wrong_key_names_its_path(tmp_path: Path, mutate, field: str) -> None:
    data = coco(
        [image(1)],
        [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 2, 2]},
            {"id": 2, "image_id": 1, "category_id": 2, "bbox": [1, 1, 2, 2]},
        ],
    )
    mutate(data)
    with pytest.raises(FormatError) as info:
        read_coco(write_json(tmp_path / "a.json", data), ReaderOptions())
    assert info.value.field == field and f"field {field!r}" in str(info.value)


def test_a_json_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    path.write_text('{\n  "images": [],\n  "annotations": [,]\n}\n', encoding="utf-8")
    with pytest.raises(FormatError) as info:
        read_coco(path, ReaderOptions())
    assert info.value.line == 3 and "invalid JSON" in str(info.value)


def test_rle_literals_decoded_by_hand() -> None:
    # "T3": 'T' is 84-48 = 36 = 0b100100: low group 4, "more"; '3' is group 3: 4 + 3*32 = 100.
    assert rle_counts("T3") == [100]
    # 'O' is 31: the sign bit is set, so -1, a difference from the count two before (2): 1.
    assert rle_counts("324O") == [3, 2, 4, 1]
    assert rle_counts([0, 5, 2]) == [0, 5, 2]
    for bad in ("3\x7f", "T", [1, "2"], [1.5]):
        with pytest.raises(InputError):
            rle_counts(bad)


def test_compressed_and_uncompressed_rle_areas_match_a_known_mask(tmp_path: Path) -> None:
    height, width = 37, 53
    mask = np.zeros((height, width), dtype=bool)
    mask[5:30, 10:20] = True  # a rectangle
    yy, xx = np.mgrid[:height, :width]
    mask |= (yy - 20) ** 2 + (xx - 40) ** 2 < 90  # a disc
    mask[0, :] = True  # a run that wraps from column to column
    runs = mask_runs(mask)
    assert sum(runs) == height * width
    string = rle_string(runs)
    assert rle_counts(string) == runs
    assert np.array_equal(rle_to_mask(rle_counts(string), height, width), mask)
    data = coco(
        [image(1, width, height)],
        [
            {
                "id": 8,
                "image_id": 1,
                "category_id": 1,
                "bbox": [10, 0, 40, 30],
                "iscrowd": 1,
                "segmentation": {"size": [height, width], "counts": string},
            },
            {
                "id": 9,
                "image_id": 1,
                "category_id": 2,
                "bbox": [10, 0, 40, 30],
                "iscrowd": 1,
                "segmentation": {"size": [height, width], "counts": runs},
            },
        ],
    )
    [record] = read_coco(write_json(tmp_path / "a.json", data), ReaderOptions())
    assert [c for c, _ in record.problems] == ["missing_file"]
    area = str(int(mask.sum()))
    assert (
        record.fields["meta"]["rle_area.8"] == area and record.fields["meta"]["rle_area.9"] == area
    )
    assert all(box.iscrowd and box.segmentation == () for box in record.fields["boxes"])


@pytest.mark.parametrize(
    ("segmentation", "why"),
    [
        ({"size": [4, 4], "counts": [3, 2]}, "add up to 5 pixels"),
        ({"size": [4, 4], "counts": "T"}, "middle of a number"),
        ({"size": [5, 4], "counts": [20]}, "does not match"),
        ({"size": [4, 4], "counts": [20, -4]}, "negative"),
        ({"counts": [16]}, "size"),
        ([[1, 2, 3, 4, 5]], "polygon 0 has 5 coordinates"),
        ([[1, 2, 3, 4]], "polygon 0 has 4 coordinates"),
        ("nonsense", "segmentation must be"),
    ],
)
def test_an_invalid_segmentation_is_an_invalid_box(
    tmp_path: Path, segmentation: Any, why: str
) -> None:
    data = coco(
        [image(1, 4, 4)],
        [
            {
                "id": 3,
                "image_id": 1,
                "category_id": 1,
                "bbox": [0, 0, 2, 2],
                "segmentation": segmentation,
            }
        ],
    )
    [record] = read_coco(write_json(tmp_path / "a.json", data), ReaderOptions())
    invalid = [m for c, m in record.problems if c == "invalid_box"]
    assert len(invalid) == 1 and invalid[0].startswith("annotation 3:") and why in invalid[0]


def test_images_are_found_in_the_usual_places_and_confined(tmp_path: Path, write_png) -> None:
    write_png(tmp_path / "coco" / "val2017" / "1.png")
    write_png(tmp_path / "coco" / "images" / "2.png")
    write_png(tmp_path / "secret.png")
    images = [
        image(1),
        image(2),
        {"id": 3, "file_name": "../../secret.png"},
        {"id": 4, "file_name": "4.png"},
        # Outside some roots but inside val2017/: missing, not escaping.
        {"id": 5, "file_name": "../val2017/none.png"},
        {"id": 6, "file_name": "../images/2.png"},
    ]
    path = write_json(
        tmp_path / "coco" / "annotations" / "instances_val2017.json", coco(images, [])
    )
    records = list(read_coco(path, ReaderOptions()))
    assert records[0].image_path == (tmp_path / "coco" / "val2017" / "1.png").resolve()
    assert records[1].image_path == (tmp_path / "coco" / "images" / "2.png").resolve()
    assert records[2].image_path is None and "escapes the source root" in records[2].problems[0][1]
    assert records[3].image_path is None and "not found" in records[3].problems[0][1]
    assert records[4].image_path is None and "not found" in records[4].problems[0][1]
    assert records[5].image_path == records[1].image_path and records[5].problems == []
    assert all(r.split == "val" for r in records)
    # An explicit root is the only place looked in.
    records = list(read_coco(path, ReaderOptions(image_root=tmp_path / "coco" / "images")))
    assert [r.image_path is not None for r in records] == [False, True, False, False, False, True]
