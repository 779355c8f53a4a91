"""The contract every architecture must pass (the scikit-learn ``parametrize_with_checks`` idea).

Each arch, built from a ModelConfig: one optimizer step lowers the loss on its batch, the
feature/head split holds, a safetensors round trip into a freshly built model reproduces the
outputs exactly, and nothing touches the network.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from aifab.core.config import IMAGE_ARCHS, TEXT_ARCHS, ModelConfig
from aifab.models.build import build_model
from aifab.models.heads import penultimate
from aifab.data.transforms import encode_texts as encode_batch
from aifab.models.tokenizer import load_pretrained_tokenizer

from ._helpers import text_batch

ALL_ARCHS = (*IMAGE_ARCHS, *TEXT_ARCHS, "pretrained:minilm")
NUM_CLASSES = 3
VOCAB = 50


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    torch.set_num_threads(2)


def _config(arch: str) -> ModelConfig:
    return ModelConfig(
        arch=arch,
        dropout=0.0,
        embed_dim=16,
        hidden_dim=16,
        num_layers=1,
        num_heads=2,
        num_filters=8,
        max_length=16,
    )


def _build(arch: str, *, seed: int, load_pretrained: bool = True) -> nn.Module:
    torch.manual_seed(seed)
    if arch in IMAGE_ARCHS:
        return build_model(
            _config(arch),
            task="image-classification",
            num_classes=NUM_CLASSES,
            in_channels=1 if arch == "smallcnn" else 3,
            load_pretrained=load_pretrained,
        )
    return build_model(
        _config(arch),
        task="text-classification",
        num_classes=NUM_CLASSES,
        vocab_size=VOCAB,
        load_pretrained=load_pretrained,
    )


def _inputs(arch: str) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(7)
    if arch == "smallcnn":
        return (torch.rand(2, 1, 8, 8, generator=gen),)  # sklearn-digits size
    if arch in IMAGE_ARCHS:
        # 64 px, not 32: at 32 px with batch 2 the last BatchNorms of ImageNet nets see a 1x1 map,
        # i.e. 2 values per channel, and their gradients explode (1e4..1e10); 64 px keeps 8.
        return (torch.rand(2, 3, 64, 64, generator=gen),)
    if arch.startswith("pretrained:"):
        tok = load_pretrained_tokenizer(arch)
        return encode_batch(tok, ["The train was late again.", "Great food!"], max_length=16)
    return text_batch(VOCAB)


def _loss(
    model: nn.Module, inputs: tuple[torch.Tensor, ...], targets: torch.Tensor
) -> torch.Tensor:
    torch.manual_seed(
        123
    )  # the same dropout masks (inside pretrained encoders) for both evaluations
    return nn.functional.cross_entropy(model(*inputs), targets)


@pytest.mark.parametrize("arch", ALL_ARCHS)
def test_one_optimizer_step_lowers_the_loss_on_its_batch(arch: str) -> None:
    model = _build(arch, seed=0).train()
    inputs, targets = _inputs(arch), torch.tensor([0, 2])
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    loss = _loss(model, inputs, targets)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # as training does (train.grad_clip)
    optimizer.step()
    after = _loss(model, inputs, targets)
    assert math.isfinite(loss.item()) and math.isfinite(after.item())
    assert after.item() < loss.item()
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.startswith("head.") for k in changed)
    assert any(not k.startswith("head.") for k in changed), "the body must train too"


@pytest.mark.parametrize("arch", ALL_ARCHS)
def test_logits_are_the_head_of_the_features(arch: str) -> None:
    model = _build(arch, seed=0).eval()
    inputs = _inputs(arch)
    features = penultimate(model, *inputs)
    assert features.shape == (2, model.feature_dim)
    with torch.no_grad():
        logits = model(*inputs)
        assert logits.shape == (2, NUM_CLASSES) and model.num_classes == NUM_CLASSES
        torch.testing.assert_close(logits, model.head(features))
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("arch", ALL_ARCHS)
def test_safetensors_round_trip_into_a_fresh_model_gives_identical_outputs(
    arch: str, tmp_path: Path
) -> None:
    model = _build(arch, seed=0)
    inputs = _inputs(arch)
    with torch.no_grad():
        model.train()(*inputs)  # moves BatchNorm running statistics off their initial values
    with torch.no_grad():
        expected = model.eval()(*inputs)
    path = tmp_path / "model.safetensors"
    save_file(model.state_dict(), str(path))

    fresh = _build(arch, seed=1, load_pretrained=False).eval()  # what a registry does on load
    with torch.no_grad():
        assert not torch.allclose(fresh(*inputs), expected), "the fresh model must start different"
    fresh.load_state_dict(load_file(str(path)), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(fresh(*inputs), expected, rtol=0, atol=0)


@pytest.mark.parametrize("arch", [*TEXT_ARCHS, "pretrained:minilm"])
def test_text_scores_the_same_alone_and_in_a_padded_batch(arch: str) -> None:
    """Serving batches requests together; padding must not change anyone's answer."""
    model = _build(arch, seed=0).eval()
    ids, mask = _inputs(arch)
    short = int(mask[1].sum())
    with torch.no_grad():
        batched = model(ids, mask)
        alone = model(ids[1:, :short], mask[1:, :short])
        longer = model(
            torch.nn.functional.pad(ids[1:], (0, 5)), torch.nn.functional.pad(mask[1:], (0, 5))
        )
    torch.testing.assert_close(alone, batched[1:], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(longer, batched[1:], rtol=1e-4, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("arch", ALL_ARCHS)
def test_runs_on_cuda_under_autocast_and_matches_cpu(arch: str) -> None:
    model = _build(arch, seed=0).eval()
    inputs = _inputs(arch)
    with torch.no_grad():
        on_cpu = model(*inputs)
        model.cuda()
        on_gpu = model(*(t.cuda() for t in inputs)).cpu()
    # Loose: cuDNN convolutions may run in TF32; a device bug (masks, lengths) is far larger.
    torch.testing.assert_close(on_gpu, on_cpu, rtol=1e-2, atol=2e-2)
    model.train()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = nn.functional.cross_entropy(
            model(*(t.cuda() for t in inputs)), torch.tensor([0, 2]).cuda()
        )
    loss.backward()
    assert math.isfinite(loss.item())
