"""The bad-input corpus through the command line: ``aifab ingest`` and ``aifab predict``.

Every case ends in one of three ways (see ``conftest.py``): quarantined with its reason,
kept with a finding saying what was repaired (and the repair checked here, pixel by pixel
or character by character), or refused with the error class's exit code and a message
naming the file, row, member or limit. Nothing crashes, nothing is silently wrong, and
no extraction folder is left behind.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from aifab.cli import app
from aifab.pipeline.project import Workspace
from tests.badinput.conftest import (
    BAD_IMAGES,
    BAD_TEXTS,
    CORPUS,
    HUGE_TEXT,
    RTL_EMOJI,
    Case,
    Kept,
    Quarantined,
    Refused,
    animated_gif,
)
from tests.serve.conftest import Bundles, register


def aifab(*args: str) -> tuple[int, dict[str, Any]]:
    """Run the CLI in-process with ``--json``; its exit code and its one JSON document."""
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, json.loads(result.stdout)


def dataset_name(case: Case) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", case.name).strip("-")


def stored_image(ws: Workspace, record: Any) -> Image.Image:
    image = Image.open(io.BytesIO(ws.blob(record.image)))
    image.load()
    return image


# What each kept record must hold: the repair done right, not merely done.
def _alpha_over_white(ws: Workspace, record: Any) -> None:
    image = stored_image(ws, record)
    assert image.mode == "RGB" and image.size == (32, 32)
    assert image.getpixel((0, 5)) == (255, 255, 255)  # alpha 0 there: white, not the hidden colour


def _gray16_scaled(ws: Workspace, record: Any) -> None:
    image = stored_image(ws, record)
    assert image.mode == "L"
    pixels = np.asarray(image)
    # 16-bit 0..61380 scaled by 255/65535, not clipped at 255 (which would make most of it white).
    assert pixels[0, 0] == 0 and pixels[-1, -1] == round(61380 * 255 / 65535)


def _cmyk_as_rgb(ws: Workspace, record: Any) -> None:
    assert stored_image(ws, record).mode == "RGB"


def _first_frame(ws: Workspace, record: Any) -> None:
    with Image.open(io.BytesIO(animated_gif())) as gif:
        first = np.asarray(gif.convert("RGB"))
    assert np.array_equal(np.asarray(stored_image(ws, record)), first)


def _text_is(expected: str) -> Any:
    def check(ws: Workspace, record: Any) -> None:
        assert record.text == expected

    return check


CONTENT = {
    "image:alpha.png": _alpha_over_white,
    "image:gray16.png": _gray16_scaled,
    "image:cmyk.jpg": _cmyk_as_rgb,
    "image:animated.gif": _first_frame,
    "text:invalid_utf8": _text_is(BAD_TEXTS["invalid_utf8"].decode("utf-8", "replace")),
    "text:rtl_emoji": _text_is(RTL_EMOJI),
    "text:huge-jsonl": _text_is(HUGE_TEXT),
}


@pytest.mark.parametrize("case", CORPUS, ids=[c.name for c in CORPUS])
def test_ingest(case: Case, workspace_dir: Path, tmp_path: Path) -> None:
    source = case.build(tmp_path)
    name = dataset_name(case)
    code, body = aifab("ingest", str(source), "--name", name, "-w", str(workspace_dir))
    expect = case.expect
    with Workspace.open(workspace_dir) as ws:
        if isinstance(expect, Refused):
            assert code == expect.error.exit_code, body
            assert body["error"]["code"] == expect.error.code
            for part in expect.says:
                assert part in body["error"]["message"], body
            assert name not in {v.name for v in ws.datasets()}  # nothing half made
        else:
            assert code == 0, body
            assert_reported(case, body["report"], expect)
            version = ws.dataset(name)
            kept = {r.source: r for r in ws.records(version)}
            quarantined = {r.source for r in ws.quarantined(version)}
            if isinstance(expect, Quarantined):
                assert expect.source in quarantined and expect.source not in kept
            else:
                assert expect.source in kept and expect.source not in quarantined
                if case.name in CONTENT:
                    CONTENT[case.name](ws, kept[expect.source])
    # Extraction folders are removed whatever happened, and nothing escaped the archive.
    assert list((workspace_dir / ".aifab" / "tmp").glob("*")) == [] or not (workspace_dir / ".aifab" / "tmp").exists()
    assert not list(workspace_dir.rglob("evil*")) and not Path("/tmp/aifab-evil.csv").exists()


def assert_reported(case: Case, report: dict[str, Any], expect: Quarantined | Kept) -> None:
    """The data gate's report names the record's source under the check, with the right action."""
    if isinstance(expect, Kept) and expect.check is None:
        assert not [f for f in report["findings"] if expect.source in f["sources"]], report["findings"]
        return
    check = expect.check
    found = [f for f in report["findings"] if f["check"] == check and expect.source in f["sources"]]
    assert found, (case.name, report["findings"])
    action = "quarantine" if isinstance(expect, Quarantined) else "warn"
    assert {f["action"] for f in found} == {action}


# ------------------------------------------------------------------------------------------
# aifab predict
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served_workspace(tmp_path_factory: pytest.TempPathFactory, bundles: Bundles) -> Path:
    root = tmp_path_factory.mktemp("predict") / "ws"
    with Workspace.init(root) as ws:
        register(ws.meta, ws.artifacts, "sms", "text-classification", bundles.text)
        register(ws.meta, ws.artifacts, "shapes", "image-classification", bundles.image)
    return root


@pytest.mark.parametrize("name", list(BAD_IMAGES))
def test_predict_images(name: str, served_workspace: Path, tmp_path: Path) -> None:
    good = tmp_path / "good.png"
    Image.new("L", (16, 16), 200).save(good)
    bad = tmp_path / name
    bad.write_bytes(BAD_IMAGES[name][0]())
    code, body = aifab("predict", "shapes", str(good), str(bad), "-w", str(served_workspace))
    if BAD_IMAGES[name][1]:
        assert code == 0, body
        assert [p["input"] for p in body["predictions"]] == [str(good), str(bad)]
        assert all(p["label"] in ("bright", "dark") for p in body["predictions"])
    else:
        assert code == 3, body
        assert body["error"]["code"] == "invalid_input"
        assert body["error"]["message"].startswith(f"{bad}: ")  # the file is named, not a batch row


@pytest.mark.parametrize("name", list(BAD_TEXTS))
def test_predict_texts_as_arguments_and_in_a_table(name: str, served_workspace: Path, tmp_path: Path) -> None:
    raw = BAD_TEXTS[name]
    argument = raw.decode("utf-8", "surrogateescape")  # what Python makes of such bytes in argv
    table = tmp_path / "texts.csv"
    table.write_bytes(b'text\n"' + raw + b'"\n')
    # Linux refuses a single command-line argument over 128 KiB (MAX_ARG_STRLEN), so a 10 MB text
    # reaches `aifab predict` only inside a file; the server refuses it by max_text_chars.
    forms = [([str(table)], str(table))] if name == "huge" else [([argument], "argument"), ([str(table)], str(table))]
    for inputs, what in forms:
        code, body = aifab("predict", "sms", *inputs, "-w", str(served_workspace))
        if name in ("nul", "rtl_emoji"):
            assert code == 0, body
            (prediction,) = body["predictions"]
            assert prediction["label"] in ("ham", "spam") and prediction["input"] == raw.decode()
        else:
            assert code == 3, (what, body)
            message = body["error"]["message"]
            assert body["error"]["code"] == "invalid_input"
            if what == "argument":
                assert "not valid UTF-8" in message and "U+DCE9" in message
            else:
                assert message.startswith(f"{table}: ")
                assert ("UTF-8" in message) if name == "invalid_utf8" else ("field larger than field limit" in message)
