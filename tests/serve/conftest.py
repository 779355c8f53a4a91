"""Serving fixtures: real trained models (tiny), a real store, real tokens, a real uvicorn server.

The models are trained once per session with ``aifab.train.run.train_classifier`` (a few
seconds on the CPU) and registered the way the training pipeline does: their files go into
the artifact store, a model version points at them, the ``production`` alias at that version.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

TEXT_MODEL = "sms"
IMAGE_MODEL = "shapes"
ROLES = ("client", "annotator", "operator", "admin")

SPAM = [f"WINNER!! claim your prize number {i} now, text CLAIM to 8{i}0{i}" for i in range(16)]
HAM = [f"hey are we still meeting at {i} o'clock near the station tonight" for i in range(16)]


def png_bytes(*, seed: int, size: int = 16, bright: bool = False) -> bytes:
    """A real PNG: a seeded random pattern, dark or bright."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    low, high = (160, 256) if bright else (0, 96)
    pixels = rng.integers(low, high, size=(size, size), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass(frozen=True)
class Bundles:
    """The files of each trained model, ready to register as many versions as a test needs."""

    text: dict[str, bytes]
    image: dict[str, bytes]


def _bundle(trained: Any) -> dict[str, bytes]:
    from aifab.registry.versions import bundle_files

    return bundle_files(trained=trained, metrics={}, lineage={"test": True}, card="# test model\n")


@pytest.fixture(scope="session")
def bundles() -> Bundles:
    from aifab.core.config import Spec, parse
    from aifab.train.run import train_classifier

    common = {
        "epochs": 3,
        "batch_size": 8,
        "device": "cpu",
        "amp": False,
        "early_stopping": None,
        "seed": 1,
    }
    text_spec = parse(
        Spec,
        {
            "task": "text-classification",
            "dataset": "sms",
            "model": {
                "arch": "textcnn",
                "embed_dim": 16,
                "num_filters": 8,
                "vocab_size": 200,
                "max_length": 32,
            },
            "train": {**common, "lr": 0.01},
        },
    )
    texts = SPAM[:12] + HAM[:12]
    targets = ["spam"] * 12 + ["ham"] * 12
    text = train_classifier(
        text_spec,
        train_inputs=texts,
        train_targets=targets,
        val_inputs=SPAM[12:] + HAM[12:],
        val_targets=["spam"] * 4 + ["ham"] * 4,
        labels=["ham", "spam"],
    )
    image_spec = parse(
        Spec,
        {
            "task": "image-classification",
            "dataset": "shapes",
            "model": {"arch": "smallcnn", "image_size": 16},
            "train": {**common, "epochs": 2, "lr": 0.01},
        },
    )
    images = [png_bytes(seed=i, bright=i % 2 == 1) for i in range(16)]
    image = train_classifier(
        image_spec,
        train_inputs=images[:12],
        train_targets=["bright" if i % 2 else "dark" for i in range(12)],
        val_inputs=images[12:],
        val_targets=["bright" if i % 2 else "dark" for i in range(12, 16)],
        labels=["bright", "dark"],
    )
    return Bundles(text=_bundle(text), image=_bundle(image))


def register(
    meta: Any,
    artifacts: Any,
    name: str,
    task: str,
    files: dict[str, bytes],
    *,
    production: bool = True,
) -> Any:
    """Register ``files`` as the next version of ``name`` (and point ``production`` at it)."""
    from aifab.core.types import ModelVersion

    digests = {fname: artifacts.put_bytes(data) for fname, data in files.items()}
    version = meta.add_model_version(
        ModelVersion(name=name, version=0, files=digests, task=task, created_at=datetime.now(UTC))
    )
    if production:
        meta.set_alias(name, "production", version.version, actor="test")
    return version


@dataclass
class Store:
    meta: Any
    artifacts: Any
    tokens: dict[str, str]  # role -> plaintext


def make_store(root: Path, bundles: Bundles) -> Store:
    from aifab.security.tokens import issue_token
    from aifab.store import ArtifactStore, MetadataStore

    meta = MetadataStore(f"sqlite:///{root / 'aifab.db'}")
    meta.migrate()
    artifacts = ArtifactStore(str(root / "artifacts"))
    register(meta, artifacts, TEXT_MODEL, "text-classification", bundles.text)
    register(meta, artifacts, IMAGE_MODEL, "image-classification", bundles.image)
    tokens = {}
    for role in ROLES:
        plaintext, token = issue_token(f"test-{role}", role)
        meta.add_token(token)
        tokens[role] = plaintext
    return Store(meta=meta, artifacts=artifacts, tokens=tokens)


@contextmanager
def running(app: Any) -> Iterator[str]:
    """Serve ``app`` with uvicorn on 127.0.0.1 on a free port, in a thread; yield its base URL."""
    import uvicorn

    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, name="uvicorn-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("the server stopped during startup (see the log above)")
        if time.monotonic() > deadline:
            raise TimeoutError("the server did not start in 60 s")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


def loaded(store: Store, name: str) -> Any:
    """The production version of ``name`` loaded directly, the reference answers come from."""
    from aifab.registry.versions import load_files

    return load_files(store.meta.get_model_version(name, "production"), store.artifacts.get_bytes)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, bundles: Bundles) -> Iterator[Store]:
    s = make_store(tmp_path_factory.mktemp("serve"), bundles)
    yield s
    s.meta.dispose()


@pytest.fixture(scope="module")
def server(store: Store) -> Iterator[str]:
    """The server most tests share: auth on, default limits but small ones a test can hit cheaply."""
    from aifab.serve.app import create_app
    from aifab.serve.limits import ServeLimits

    limits = ServeLimits(
        max_body_bytes=200_000, max_instances=64, max_text_chars=500, max_image_pixels=64 * 64
    )
    app = create_app(
        meta=store.meta, artifacts=store.artifacts, limits=limits, max_wait_ms=20.0, poll_seconds=0
    )
    with running(app) as url:
        yield url


def auth(store: Store, role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {store.tokens[role]}"}
