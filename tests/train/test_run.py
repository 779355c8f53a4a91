"""train_classifier end to end on real small data: digits as PNG files, English sentences."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from aifab.core.errors import Conflict, InputError
from aifab.train.callbacks import Callback, TrainState
from aifab.train.checkpoint import load_checkpoint
from aifab.train.run import TrainedClassifier, predict_proba, rebuild_model, train_classifier

from ._data import digit_split, digits, image_spec, text_spec, text_split

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def digit_model() -> tuple[TrainedClassifier, dict[str, Any]]:
    torch.set_num_threads(1)
    data = digit_split(300, 100)
    return train_classifier(image_spec(), **data), data


@pytest.fixture(scope="module")
def text_model() -> tuple[TrainedClassifier, dict[str, Any]]:
    torch.set_num_threads(1)
    data = text_split(200, 60)
    return train_classifier(text_spec(lr=None), **data), data


def accuracy(probs: np.ndarray, targets: list[str], labels: list[str]) -> float:
    return float(
        np.mean([labels[i] == t for i, t in zip(probs.argmax(axis=1), targets, strict=True)])
    )


def test_smallcnn_learns_digits_from_png_bytes(digit_model) -> None:
    trained, data = digit_model
    assert trained.history[trained.best_epoch - 1]["val.accuracy"] > 0.8
    assert not trained.model.training
    assert all(p.device.type == "cpu" for p in trained.model.parameters())
    probs = predict_proba(trained.model, trained.preprocessing, None, data["val_inputs"])
    assert probs.shape == (100, 10) and np.allclose(probs.sum(axis=1), 1.0)
    assert accuracy(probs, data["val_targets"], data["labels"]) > 0.8
    pre = trained.preprocessing
    assert (pre["kind"], pre["image_size"], pre["channels"], pre["multi_label"]) == (
        "image",
        8,
        1,
        False,
    )
    assert pre["labels"] == data["labels"] and json.loads(json.dumps(pre)) == pre
    assert trained.model_params["in_channels"] == 1 and trained.model_params["image_size"] == 8
    assert trained.effective_spec["model"]["arch"] == "smallcnn"
    assert trained.effective_spec["model"]["image_size"] == 8
    assert trained.effective_spec["train"]["lr"] == 3e-3


def test_textcnn_learns_sentences_with_the_default_rate(text_model) -> None:
    trained, data = text_model
    probs = predict_proba(
        trained.model, trained.preprocessing, trained.tokenizer_json, data["val_inputs"]
    )
    assert accuracy(probs, data["val_targets"], data["labels"]) > 0.8
    fresh = ["The chef roasts fish with garlic.", "Tonight brings strong winds and rain."]
    assert [
        data["labels"][i]
        for i in predict_proba(
            trained.model, trained.preprocessing, trained.tokenizer_json, fresh
        ).argmax(axis=1)
    ] == ["cooking", "weather"]
    assert trained.effective_spec["train"]["lr"] == 1e-3  # models.build.default_lr("textcnn")
    assert trained.preprocessing == {
        "kind": "text",
        "max_length": 128,
        "labels": ["cooking", "weather"],
        "multi_label": False,
    }
    assert trained.model_params["vocab_size"] == len(
        json.loads(trained.tokenizer_json)["model"]["vocab"]
    )


def test_auto_arch_and_rate_are_resolved_and_recorded() -> None:
    data = digit_split(64, 16)
    spec = image_spec(epochs=1, lr=None)
    spec.model.arch = "auto"
    trained = train_classifier(spec, **data)
    assert trained.model_params["arch"] == "smallcnn"  # 8 px images
    assert trained.effective_spec["model"]["arch"] == "smallcnn"
    assert trained.effective_spec["train"]["lr"] == 1e-3
    assert type(rebuild_model(trained.model_params)).__name__ == "SmallCNN"


def test_auto_text_arch_fine_tunes_the_packaged_encoder_with_its_own_tokenizer() -> None:
    from aifab.models.pretrained import packaged_encoder_available
    from aifab.models.tokenizer import load_pretrained_tokenizer

    if not packaged_encoder_available():
        pytest.skip("the packaged MiniLM encoder is not installed")
    spec = text_spec(epochs=1, batch_size=8, lr=1e-2)
    spec.model = spec.model.model_copy(
        update={"arch": "auto", "freeze_encoder": True, "max_length": 32}
    )
    data = text_split(24, 8)
    trained = train_classifier(spec, **data)
    assert trained.model_params["arch"] == "pretrained:minilm"
    assert trained.tokenizer_json == load_pretrained_tokenizer("minilm").to_str()
    rebuilt = rebuild_model(json.loads(json.dumps(trained.model_params)))
    rebuilt.load_state_dict(trained.model.state_dict())
    a = predict_proba(
        trained.model, trained.preprocessing, trained.tokenizer_json, data["val_inputs"]
    )
    b = predict_proba(rebuilt, trained.preprocessing, trained.tokenizer_json, data["val_inputs"])
    assert np.array_equal(a, b)
    assert accuracy(a, data["val_targets"], data["labels"]) > 0.7


@pytest.mark.parametrize("kind", ["image", "text"])
def test_predict_proba_is_identical_after_a_safetensors_round_trip(
    kind: str, digit_model, text_model, tmp_path: Path
) -> None:
    from safetensors.torch import load_file, save_file

    trained, data = digit_model if kind == "image" else text_model
    path = tmp_path / "model.safetensors"
    save_file(trained.model.state_dict(), str(path))
    params = json.loads(json.dumps(trained.model_params))  # what a model version stores
    rebuilt = rebuild_model(params)
    rebuilt.load_state_dict(load_file(str(path)))
    inputs = data["val_inputs"]
    a = predict_proba(
        trained.model, trained.preprocessing, trained.tokenizer_json, inputs, batch_size=7
    )
    b = predict_proba(
        rebuilt, json.loads(json.dumps(trained.preprocessing)), trained.tokenizer_json, inputs
    )
    assert np.array_equal(a, b)
    untrained = predict_proba(
        rebuild_model(params), trained.preprocessing, trained.tokenizer_json, inputs
    )
    assert not np.allclose(untrained, b, atol=1e-3)


def test_multi_label_training_with_bce() -> None:
    images, numbers = digits(400)

    def tags(d: int) -> list[str]:
        return [name for name, on in (("even", d % 2 == 0), ("big", d >= 5)) if on]  # may be empty

    spec = image_spec(epochs=4, batch_size=16)
    spec.multi_label = True
    trained = train_classifier(
        spec,
        train_inputs=images[:300],
        train_targets=[tags(d) for d in numbers[:300]],
        val_inputs=images[300:],
        val_targets=[tags(d) for d in numbers[300:]],
        labels=["even", "big"],
    )
    probs = predict_proba(trained.model, trained.preprocessing, None, images[300:])
    truth = np.array([[d % 2 == 0, d >= 5] for d in numbers[300:]])
    assert probs.shape == (100, 2) and not np.allclose(probs.sum(axis=1), 1.0)  # sigmoids
    assert ((probs >= 0.5) == truth).mean() > 0.75
    assert trained.preprocessing["multi_label"] is True
    assert trained.history[trained.best_epoch - 1]["val.macro_f1"] > 0.7


def test_bad_targets_and_inputs_are_input_errors_naming_the_row() -> None:
    data = digit_split(8, 2)
    with pytest.raises(InputError, match=r"train row 3: label 'x' is not one of the labels"):
        train_classifier(
            image_spec(),
            **{**data, "train_targets": ["1", "2", "3", "x", *data["train_targets"][4:]]},
        )
    with pytest.raises(InputError, match="val: 2 inputs but 1 targets"):
        train_classifier(image_spec(), **{**data, "val_targets": ["1"]})
    with pytest.raises(InputError, match="train row 0: expected image bytes; got str"):
        train_classifier(image_spec(), **{**data, "train_inputs": ["a"] * 8})
    with pytest.raises(InputError, match=r"train row 5: not a decodable image"):
        train_classifier(
            image_spec(epochs=1),
            **{
                **data,
                "train_inputs": [*data["train_inputs"][:5], b"??", *data["train_inputs"][6:]],
            },
        )


# ------------------------------------------------------------------------------------ resume


class Killed(Exception):
    pass


class KilledAfter(Callback):
    """Raises once epoch ``epoch`` ended and its checkpoint was written (it runs after it)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_epoch_end(self, state: TrainState) -> None:
        if state.epoch == self.epoch:
            raise Killed(f"killed after epoch {state.epoch}")


class CountEpochs(Callback):
    def __init__(self) -> None:
        self.started: list[int] = []

    def on_epoch_start(self, state: TrainState) -> None:
        self.started.append(state.epoch)


def assert_same_run(a: TrainedClassifier, b: TrainedClassifier) -> None:
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key
    strip = [{k: v for k, v in h.items() if k != "seconds"} for h in a.history]
    assert strip == [{k: v for k, v in h.items() if k != "seconds"} for h in b.history]
    assert a.best_epoch == b.best_epoch


def same_tokenizer_every_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """Training a tokenizer twice on the same texts can give two vocabularies (tokenizers' trainers
    break ties in hash-map order: huggingface/tokenizers#1794). A resumed run reuses the tokenizer
    saved in its checkpoint; the uninterrupted run it is compared with must use that one too."""
    from aifab.models import tokenizer as tokenizer_module

    real = tokenizer_module.train_tokenizer
    trained: dict[str, str] = {}

    def once(texts, **kw):
        texts = list(texts)
        key = json.dumps([texts, kw], sort_keys=True)
        if key not in trained:
            trained[key] = real(texts, **kw).to_str()
        return tokenizer_module.tokenizer_from_json(trained[key])

    monkeypatch.setattr(tokenizer_module, "train_tokenizer", once)


@pytest.mark.parametrize("kind", ["image", "text"])
def test_resume_after_a_crash_gives_the_uninterrupted_weights(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec, data = (
        (image_spec(), digit_split(96, 32))
        if kind == "image"
        else (text_spec(), text_split(96, 32))
    )
    if kind == "text":
        same_tokenizer_every_time(monkeypatch)
    # resume=True without a checkpoint file trains from the start.
    whole = train_classifier(spec, **data, checkpoint_path=tmp_path / "whole.ckpt", resume=True)
    ckpt = tmp_path / "run.ckpt"
    with pytest.raises(Killed):
        train_classifier(spec, **data, checkpoint_path=ckpt, callbacks=[KilledAfter(1)])
    assert load_checkpoint(ckpt)["epoch"] == 1
    counter = CountEpochs()
    # The pipeline resumes with the spec it recorded: the dataset pinned to a version.
    pinned = spec.model_copy(update={"dataset": f"{spec.dataset}@v1", "name": "renamed"})
    resumed = train_classifier(
        pinned, **data, checkpoint_path=ckpt, resume=True, callbacks=[counter]
    )
    assert counter.started == [2, 3]
    assert_same_run(whole, resumed)
    assert load_checkpoint(ckpt)["epoch"] == 3


def test_resume_refuses_a_checkpoint_of_other_data(tmp_path: Path) -> None:
    data = digit_split(48, 16)
    ckpt = tmp_path / "run.ckpt"
    train_classifier(image_spec(epochs=1), **data, checkpoint_path=ckpt)
    other = {**data, "train_targets": list(reversed(data["train_targets"]))}
    with pytest.raises(Conflict, match="run.ckpt: this checkpoint belongs to another run"):
        train_classifier(image_spec(epochs=1), **other, checkpoint_path=ckpt, resume=True)


_KILLED_CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import torch
    sys.path.insert(0, sys.argv[2])
    torch.set_num_threads(1)
    from tests.train._data import digit_split, image_spec
    from aifab.train.callbacks import Callback
    from aifab.train.run import train_classifier

    class Slow(Callback):  # epoch 2 takes long enough to be killed in the middle of it
        def on_batch_end(self, state):
            if state.epoch >= 2:
                time.sleep(0.5)

    train_classifier(image_spec(), **digit_split(96, 32), checkpoint_path=Path(sys.argv[1]),
                     callbacks=[Slow()])
    print("finished")
    """
)


def test_resume_after_kill_9_gives_the_uninterrupted_weights(tmp_path: Path) -> None:
    ckpt = tmp_path / "run.ckpt"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    child = subprocess.Popen(
        [sys.executable, "-c", _KILLED_CHILD, str(ckpt), str(ROOT)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        deadline = time.monotonic() + 120
        while not ckpt.exists():
            if child.poll() is not None:
                pytest.fail(f"the child exited early: {child.stderr.read().decode()[-2000:]}")
            assert time.monotonic() < deadline, "no checkpoint appeared within 120 s"
            time.sleep(0.05)
        time.sleep(0.3)  # inside epoch 2
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        out, _ = child.communicate()
    assert child.returncode == -signal.SIGKILL and b"finished" not in out
    assert load_checkpoint(ckpt)["epoch"] == 1

    data = digit_split(96, 32)
    counter = CountEpochs()
    resumed = train_classifier(
        image_spec(), **data, checkpoint_path=ckpt, resume=True, callbacks=[counter]
    )
    whole = train_classifier(image_spec(), **data)
    assert counter.started == [2, 3]
    assert_same_run(whole, resumed)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_training_with_amp_checkpoints_and_resumes(tmp_path: Path) -> None:
    data = digit_split(300, 100)
    ckpt = tmp_path / "run.ckpt"
    with pytest.raises(Killed):
        train_classifier(
            image_spec(amp=True),
            **data,
            checkpoint_path=ckpt,
            callbacks=[KilledAfter(1)],
            device="cuda",
        )
    saved = load_checkpoint(ckpt)
    assert saved["scaler"] is not None and saved["rng"]["cuda"] is not None
    trained = train_classifier(image_spec(amp=True), **data, checkpoint_path=ckpt, resume=True)
    assert all(p.device.type == "cpu" for p in trained.model.parameters())
    assert trained.history[trained.best_epoch - 1]["val.accuracy"] > 0.8
