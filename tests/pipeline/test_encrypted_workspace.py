"""Encryption at rest end to end (docs/encryption.md), on a real encrypted workspace.

One module-scoped workspace is built the way a user builds one: ``init --encrypt`` with a key
file, a CSV of texts and a folder of PNGs ingested, a tiny TextCNN trained and registered, text
predictions served over HTTP (FastAPI TestClient) and an image prediction logged. Then every
file under the workspace folder, the SQLite file and its -wal included, is searched for known
plaintext. Tests that change the workspace (rotation, tampering) work on a copy of the folder.
"""

from __future__ import annotations

import base64
import csv
import json
import shutil
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from aifab.core.errors import AuthError, ConfigError, Conflict, IntegrityError
from aifab.pipeline.project import Workspace
from aifab.security.crypto import MasterKey, read_envelope, write_key_file
from tests.conftest import write_png

SECRET = "Bartholomew the quokka juggles seventeen tangerines at dawn"
SERVED = "Persephone the wombat recites limericks to harbour pilots"
# The sentences, and words of them a leaked vocabulary or a plaintext row would hold.
MARKERS = [SECRET, SERVED, "Bartholomew", "tangerines", "Persephone", "limericks"]
SPEC = {
    "task": "text-classification",
    "dataset": "notes",
    "model": {"arch": "textcnn", "embed_dim": 16, "num_filters": 8, "vocab_size": 200, "max_length": 24},
    "train": {"epochs": 2, "batch_size": 8, "lr": 0.01, "device": "cpu", "amp": False, "early_stopping": None},
}


def texts() -> list[tuple[str, str]]:
    ham = [(SECRET, "ham")] + [(f"Bartholomew the quokka naps under tree {i} until the tangerines fall", "ham") for i in range(14)]
    spam = [(f"WINNER claim your prize number {i} now, text CLAIM to 8{i}0{i}", "spam") for i in range(15)]
    return ham + spam


def write_csv(path: Path) -> Path:
    with open(path, "w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows([("text", "label"), *texts()])
    return path


def files_under(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def leaks(files: dict[str, bytes], needles: list[bytes]) -> list[str]:
    return [f"{name}: {needle[:40]!r}" for name, data in files.items() for needle in needles if needle in data]


@dataclass
class Built:
    root: Path
    ws: Path
    key_file: Path
    png: bytes  # the raw file of one ingested image
    notes_version: str
    shapes_version: str
    served: list[dict[str, Any]]  # the HTTP answers
    image_prediction: str
    needles: list[bytes]
    files_while_open: dict[str, bytes]
    files_after_close: dict[str, bytes]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    import torch
    from fastapi.testclient import TestClient

    from aifab.feedback.log import PredictionLog
    from aifab.serve.app import create_app

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny model on a shared machine: one thread is fastest
    root = tmp_path_factory.mktemp("encrypted")
    (root / "keys").mkdir()
    key_file = write_key_file(root / "keys" / "master.key", MasterKey.generate())
    data = root / "data"
    data.mkdir()
    for label, offset in (("dark", 0), ("light", 50)):
        for i in range(6):
            write_png(data / "shapes" / label / f"{i}.png", seed=offset + i, size=32)
    png = (data / "shapes" / "dark" / "0.png").read_bytes()

    ws = Workspace.init(root / "ws", encrypt=True, key_file=key_file)
    notes = ws.ingest(write_csv(data / "notes.csv"), name="notes")
    shapes = ws.ingest(data / "shapes", name="shapes")
    model = ws.train(SPEC)
    ws.meta.set_alias("notes", "production", model.version, actor="test")
    with TestClient(create_app(meta=ws.meta, artifacts=ws.artifacts, auth=False)) as client:
        response = client.post("/v1/models/notes:predict", json={"instances": [SERVED, SECRET]})
        assert response.status_code == 200, response.text
    [image_prediction] = PredictionLog(ws.meta, ws.artifacts).record(
        "shapes", 1, [png], [{"label": "dark", "scores": {"dark": 0.9, "light": 0.1}}], latency_ms=1.0
    )
    # A slice from the middle of the PNG too: a partial copy of an image is a leak as well.
    needles = [m.encode() for m in MARKERS] + [png, png[len(png) // 2 : len(png) // 2 + 32]]
    files_while_open = files_under(root / "ws")
    ws.close()
    torch.set_num_threads(threads)
    yield Built(
        root=root,
        ws=root / "ws",
        key_file=key_file,
        png=png,
        notes_version=notes.id,
        shapes_version=shapes.id,
        served=response.json()["predictions"],
        image_prediction=image_prediction,
        needles=needles,
        files_while_open=files_while_open,
        files_after_close=files_under(root / "ws"),
    )


def copy_of(built: Built, tmp_path: Path) -> Path:
    """A copy of the workspace folder (the key file stays where aifab.yaml says)."""
    return Path(shutil.copytree(built.ws, tmp_path / "ws"))


# -- nothing readable at rest ---------------------------------------------------------------


def test_the_scan_would_see_plaintext(built: Built) -> None:
    """The scan below is meaningful: it finds the markers in the source data it was given."""
    sources = files_under(built.root / "data")
    assert leaks(sources, built.needles)
    assert any(needle in sources["notes.csv"] for needle in built.needles[:2])


def test_no_file_in_the_workspace_holds_plaintext(built: Built) -> None:
    for files in (built.files_while_open, built.files_after_close):
        assert any(name.startswith(".aifab/aifab.db") for name in files)
        assert sum(name.startswith(".aifab/artifacts/blobs/") for name in files) > 20
        assert leaks(files, built.needles) == []
    # The run's plaintext checkpoint was removed once the model was registered encrypted.
    assert not [name for name in built.files_after_close if name.startswith(".aifab/runs/")]
    # The write-ahead log was scanned too, while the workspace was open and writing.
    assert ".aifab/aifab.db-wal" in built.files_while_open


def test_the_key_is_not_in_the_workspace(built: Built) -> None:
    key_text = built.key_file.read_bytes().strip()
    key = MasterKey.parse(key_text, where="test")
    assert leaks(built.files_after_close, [key_text]) == []
    config = (built.ws / "aifab.yaml").read_text()
    assert str(built.key_file) in config and key.key_id in config


def test_everything_reads_back_with_the_key(built: Built) -> None:
    with Workspace.open(built.ws) as ws:
        notes = ws.dataset(f"notes@{built.notes_version}")
        assert sorted(r.text for r in ws.records(notes)) == sorted(t for t, _ in texts())
        shapes = ws.dataset(f"shapes@{built.shapes_version}")
        assert built.png in [ws.blob(r.image) for r in ws.records(shapes)]
        logged = {p.input_text for p in ws.meta.list_predictions("notes")}
        assert logged == {SERVED, SECRET}
        image = ws.meta.get_prediction(built.image_prediction)
        assert ws.blob(image.input_blob) == built.png
        answers = ws.load_model("notes@production").predict([SERVED, SECRET])
    assert [a["label"] for a in answers] == [a["label"] for a in built.served]
    for got, served in zip(answers, built.served):
        assert got["scores"] == pytest.approx(served["scores"], abs=1e-5)


# -- the wrong key, no key ------------------------------------------------------------------


def test_a_missing_key_file_is_named_with_the_config_key(built: Built, tmp_path: Path) -> None:
    ws_dir = copy_of(built, tmp_path)
    text = (ws_dir / "aifab.yaml").read_text().replace(str(built.key_file), str(tmp_path / "gone.key"))
    (ws_dir / "aifab.yaml").write_text(text)
    with pytest.raises(AuthError) as err:
        Workspace.open(ws_dir)
    assert "encryption.key_file" in err.value.message and str(tmp_path / "gone.key") in err.value.message


def test_a_missing_key_variable_is_named_with_the_config_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = MasterKey.generate()
    monkeypatch.setenv("AIFAB_TEST_KEY", key.export())
    Workspace.init(tmp_path / "ws", encrypt=True, key_env="AIFAB_TEST_KEY").close()
    monkeypatch.delenv("AIFAB_TEST_KEY")
    with pytest.raises(AuthError) as err:
        Workspace.open(tmp_path / "ws")
    assert "encryption.key_env" in err.value.message and "AIFAB_TEST_KEY" in err.value.message
    assert "not set" in err.value.message


def test_the_wrong_key_names_both_key_ids(built: Built) -> None:
    wrong = MasterKey.generate()
    right = MasterKey.from_file(built.key_file)
    with pytest.raises(AuthError) as err:
        Workspace.open(built.ws, key=wrong)
    assert f"encrypted with key {right.key_id}" in err.value.message
    assert wrong.key_id in err.value.message


# -- rotation -------------------------------------------------------------------------------


def envelopes(ws_dir: Path) -> dict[str, Any]:
    """Every envelope at rest: blobs by digest, logged texts by prediction id (read raw)."""
    blobs = ws_dir / ".aifab" / "artifacts" / "blobs"
    found = {p.parent.name + p.name: read_envelope(p.read_bytes()) for p in blobs.glob("*/*") if p.is_file()}
    with sqlite3.connect(ws_dir / ".aifab" / "aifab.db") as db:
        for pid, value in db.execute("SELECT id, input_text FROM predictions WHERE input_text IS NOT NULL"):
            assert value.startswith("aifab-enc1:")
            found[pid] = read_envelope(base64.b64decode(value.removeprefix("aifab-enc1:")))
    return found


def test_rotation_rewraps_every_data_key_and_leaves_the_ciphertexts(built: Built, tmp_path: Path) -> None:
    ws_dir = copy_of(built, tmp_path)
    old = MasterKey.from_file(built.key_file)
    new_file = write_key_file(tmp_path / "new.key", MasterKey.generate())
    new = MasterKey.from_file(new_file)
    before = envelopes(ws_dir)
    with Workspace.open(ws_dir) as ws:
        result = ws.rotate_key(new, key_file=new_file)
    after = envelopes(ws_dir)

    assert result["blobs_rewrapped"] == sum(len(k) == 64 for k in before) and result["predictions_rewrapped"] == 2
    assert before.keys() == after.keys()
    for name, envelope in after.items():
        assert before[name].key_id == old.key_id and envelope.key_id == new.key_id, name
        assert envelope.body == before[name].body, name  # the ciphertext was not rewritten
        assert envelope.wrapped_key != before[name].wrapped_key, name

    with pytest.raises(AuthError, match=f"encrypted with key {new.key_id}; the key given is key {old.key_id}"):
        Workspace.open(ws_dir, key=old)
    with Workspace.open(ws_dir) as ws:  # aifab.yaml now names the new key file
        assert ws.config.encryption.key_id == new.key_id
        assert sorted(r.text for r in ws.records(ws.dataset("notes"))) == sorted(t for t, _ in texts())
        assert {p.input_text for p in ws.meta.list_predictions("notes")} == {SERVED, SECRET}
        assert ws.blob(ws.meta.get_prediction(built.image_prediction).input_blob) == built.png
        assert [a["label"] for a in ws.load_model("notes@production").predict([SERVED, SECRET])] == [
            a["label"] for a in built.served
        ]


@pytest.fixture
def small(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """A small encrypted workspace: one text dataset, one logged text prediction; its key file."""
    from aifab.feedback.log import PredictionLog

    key_file = write_key_file(tmp_path / "a.key", MasterKey.generate())
    with Workspace.init(tmp_path / "ws", encrypt=True, key_file=key_file) as ws:
        ws.ingest(write_csv(tmp_path / "notes.csv"), name="notes")
        PredictionLog(ws.meta, ws.artifacts).record("notes", 1, [SERVED], [{"label": "ham", "scores": {"ham": 1.0}}], latency_ms=1.0)
    yield tmp_path / "ws", key_file


def test_an_interrupted_rotation_loses_nothing_and_resumes(small: tuple[Path, Path], tmp_path: Path) -> None:
    ws_dir, key_file = small
    new_file = write_key_file(tmp_path / "b.key", MasterKey.generate())
    new = MasterKey.from_file(new_file)

    class Crash(Exception):
        pass

    with Workspace.open(ws_dir) as ws:
        from aifab.security.crypto import EnvelopeCipher

        rotating = EnvelopeCipher(new, previous=[ws.artifacts.cipher.master])
        done: list[str] = []

        def crash_after_two(stored: bytes) -> bytes | None:
            if len(done) == 2:
                raise Crash
            done.append("x")
            return rotating.rewrap(stored)

        with pytest.raises(Crash):
            ws.artifacts.rewrap(crash_after_two)
        total = sum(1 for _ in ws.artifacts.iter_digests())

    # aifab.yaml still names the old key: a blob already moved says which key it needs.
    with Workspace.open(ws_dir) as ws:
        with pytest.raises(AuthError, match=f"encrypted with key {new.key_id}") as err:
            for digest in ws.artifacts.iter_digests():
                ws.blob(digest)
        assert "blob " in err.value.message and "aifab key rotate" in err.value.message
        # Running the rotation again finishes it: only the blobs not moved yet are re-wrapped.
        result = ws.rotate_key(new, key_file=new_file)
    assert result["blobs_rewrapped"] == total - 2 and result["predictions_rewrapped"] == 1
    with Workspace.open(ws_dir) as ws:
        assert all(ws.blob(d) for d in ws.artifacts.iter_digests())
        assert [p.input_text for p in ws.meta.list_predictions("notes")] == [SERVED]
    assert {e.key_id for e in envelopes(ws_dir).values()} == {new.key_id}


def test_the_cli_generates_keys_inits_and_rotates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from aifab.cli import app

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("AIFAB_WORKSPACE", raising=False)
    monkeypatch.delenv("AIFAB_KEY", raising=False)

    def aifab(*args: str) -> tuple[int, Any]:
        # In process (typer's runner): the same commands and exit codes, without a new interpreter each.
        out = CliRunner().invoke(app, [*args, "--json"])
        return out.exit_code, json.loads(out.stdout)

    code, made = aifab("key", "generate", "--out", "a.key")
    assert code == 0 and (tmp_path / "a.key").stat().st_mode & 0o777 == 0o600
    assert aifab("key", "generate", "--out", "a.key")[0] == 5  # never overwritten
    code, init = aifab("init", "ws", "--encrypt", "--key-file", "a.key")
    assert code == 0 and init["encryption"]["key_id"] == made["key_id"]
    code, missing = aifab("init", "ws2", "--encrypt")  # AIFAB_KEY is not set
    assert code == 7 and "AIFAB_KEY" in missing["error"]["message"] and not (tmp_path / "ws2").exists()
    aifab("key", "generate", "--out", "b.key")
    (tmp_path / "a.key").rename(tmp_path / "old.key")  # aifab.yaml no longer finds the current key
    code, nokey = aifab("datasets", "-w", "ws")
    assert code == 7 and nokey["error"]["code"] == "unauthorized" and "encryption.key_file" in nokey["error"]["message"]
    code, rotated = aifab("key", "rotate", "-w", "ws", "--new-key-file", "b.key", "--old-key-file", "old.key")
    assert code == 0 and rotated["previous_key_id"] == made["key_id"], rotated
    assert aifab("datasets", "-w", "ws") == (0, {"datasets": []})


# -- tampering and misuse -------------------------------------------------------------------


def test_one_changed_byte_in_a_blob_is_an_integrity_error_naming_it(small: tuple[Path, Path]) -> None:
    ws_dir, _ = small
    with Workspace.open(ws_dir) as ws:
        version = ws.dataset("notes")
        path = ws_dir / ".aifab" / "artifacts" / "blobs" / version.manifest[:2] / version.manifest[2:]
        data = bytearray(path.read_bytes())
        data[-20] ^= 0x01  # inside the ciphertext body
        path.write_bytes(bytes(data))
        with pytest.raises(IntegrityError, match=f"blob {version.manifest}.*altered or damaged"):
            ws.manifest(version)


def test_a_changed_logged_text_is_an_integrity_error_naming_the_prediction(small: tuple[Path, Path]) -> None:
    ws_dir, _ = small
    with sqlite3.connect(ws_dir / ".aifab" / "aifab.db") as db:
        pid, value = db.execute("SELECT id, input_text FROM predictions").fetchone()
        flipped = value[:-6] + ("A" if value[-6] != "A" else "B") + value[-5:]
        db.execute("UPDATE predictions SET input_text = ? WHERE id = ?", (flipped, pid))
    with Workspace.open(ws_dir) as ws, pytest.raises(IntegrityError, match=f"prediction '{pid}', field 'input_text'"):
        ws.meta.get_prediction(pid)


def test_an_existing_plain_workspace_is_not_encrypted_in_place(tmp_path: Path) -> None:
    Workspace.init(tmp_path / "ws").close()
    key_file = write_key_file(tmp_path / "a.key", MasterKey.generate())
    with pytest.raises(Conflict, match="not encrypted"):
        Workspace.init(tmp_path / "ws", encrypt=True, key_file=key_file)


def test_a_key_file_inside_the_workspace_is_refused(tmp_path: Path) -> None:
    (tmp_path / "ws").mkdir()
    key_file = write_key_file(tmp_path / "ws" / "a.key", MasterKey.generate())
    with pytest.raises(ConfigError, match="inside the workspace"):
        Workspace.init(tmp_path / "ws", encrypt=True, key_file=key_file)
    assert not (tmp_path / "ws" / "aifab.yaml").exists()
