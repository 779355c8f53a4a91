"""Loading named weights: local safetensors / .pt files, torchvision's cache, the packaged encoder."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
import torchvision
from safetensors.torch import load_file, save_file

from aifab.core.errors import ConfigError, DependencyMissing, FormatError
from aifab.models.pretrained import (
    load_image_weights,
    load_text_encoder,
    minilm_path,
    read_image_weights,
    resolve_text_source,
)
from aifab.models.text import PretrainedEncoderClassifier
from aifab.models.vision import SmallCNN, build_image_model


def _torchvision_resnet18(seed: int = 3) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return torchvision.models.resnet18(weights=None).state_dict()  # ImageNet layout, 1000 classes


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_torchvision_layout_file_loads_into_resnet18_and_skips_the_classifier(
    suffix: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = _torchvision_resnet18()
    path = tmp_path / f"resnet18{suffix}"
    if suffix == ".safetensors":
        save_file(source, str(path))
    else:
        torch.save({"state_dict": source}, path)  # a wrapped checkpoint, as training scripts write
    torch.manual_seed(0)
    with caplog.at_level(logging.WARNING, logger="aifab.models.pretrained"):
        model = build_image_model("resnet18", num_classes=3, pretrained=str(path))
    own = model.state_dict()
    for key in ("conv1.weight", "layer3.1.conv2.weight", "bn1.running_var", "layer4.1.bn2.bias"):
        assert torch.equal(own[f"net.{key}"], source[key]), key
    assert own["head.linear.weight"].shape == (3, 512)
    assert "fc.weight" in caplog.text and "fc.bias" in caplog.text


def test_own_layout_loads_whole_or_without_a_head_of_another_size(tmp_path: Path) -> None:
    torch.manual_seed(1)
    trained = build_image_model("resnet18", num_classes=5)
    path = tmp_path / "mine.safetensors"
    save_file(trained.state_dict(), str(path))

    torch.manual_seed(2)
    same = build_image_model("resnet18", num_classes=5)
    report = load_image_weights(same, str(path))
    assert report.skipped == []
    for key, value in trained.state_dict().items():
        assert torch.equal(same.state_dict()[key], value), key

    other = build_image_model("resnet18", num_classes=3)
    report = load_image_weights(other, str(path))
    assert report.skipped == ["head.linear.bias", "head.linear.weight"]
    assert torch.equal(
        other.state_dict()["net.conv1.weight"], trained.state_dict()["net.conv1.weight"]
    )


def test_rgb_first_conv_is_summed_for_grayscale(tmp_path: Path) -> None:
    source = _torchvision_resnet18()
    path = tmp_path / "rgb.safetensors"
    save_file(source, str(path))
    model = build_image_model("resnet18", num_classes=2, in_channels=1, pretrained=str(path))
    expected = source["conv1.weight"].sum(dim=1, keepdim=True)  # (64, 1, 7, 7)
    torch.testing.assert_close(model.state_dict()["net.conv1.weight"], expected)
    assert model.eval()(torch.rand(1, 1, 32, 32)).shape == (1, 2)


def test_weights_of_another_architecture_are_refused_naming_the_key(tmp_path: Path) -> None:
    torch.manual_seed(0)
    path50 = tmp_path / "resnet50.safetensors"
    save_file(torchvision.models.resnet50(weights=None).state_dict(), str(path50))
    with pytest.raises(ConfigError, match=r"'layer1\.0\.conv1\.weight'.*\(64, 64, 1, 1\)"):
        build_image_model("resnet18", num_classes=2, pretrained=str(path50))

    path18 = tmp_path / "resnet18.safetensors"
    save_file(_torchvision_resnet18(), str(path18))
    with pytest.raises(ConfigError, match=r"lack .*layer1\.2\."):
        build_image_model("resnet34", num_classes=2, pretrained=str(path18))

    small = tmp_path / "small.safetensors"
    save_file(SmallCNN(num_classes=2).state_dict(), str(small))
    with pytest.raises(ConfigError, match="none of its .* keys fit"):
        build_image_model("resnet18", num_classes=2, pretrained=str(small))


def test_corrupted_and_unsafe_files_raise_format_errors(tmp_path: Path) -> None:
    garbage = tmp_path / "broken.safetensors"
    garbage.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(FormatError, match="broken.safetensors"):
        read_image_weights(str(garbage))

    truncated = tmp_path / "truncated.pt"
    torch.save(_torchvision_resnet18(), truncated)
    truncated.write_bytes(truncated.read_bytes()[:1000])
    with pytest.raises(FormatError, match="truncated.pt"):
        read_image_weights(str(truncated))

    # Arbitrary pickled objects never load: weights_only=True refuses them.
    unsafe = tmp_path / "unsafe.pt"
    torch.save({"conv.weight": torch.zeros(1), "hook": logging.getLogger("x")}, unsafe)
    with pytest.raises(FormatError, match="unsafe.pt"):
        read_image_weights(str(unsafe))

    not_a_dict = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), not_a_dict)
    with pytest.raises(FormatError, match="expected a state dict"):
        read_image_weights(str(not_a_dict))


def test_missing_or_unknown_sources_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        read_image_weights(str(tmp_path / "nope.safetensors"))
    odd = tmp_path / "weights.npz"
    odd.write_bytes(b"x")
    with pytest.raises(ConfigError, match="unknown weights format '.npz'"):
        read_image_weights(str(odd))
    with pytest.raises(ConfigError, match="did you mean 'ResNet18_Weights.IMAGENET1K_V1'"):
        read_image_weights("torchvision:ResNet18_Weights.IMAGENET1K_V9")
    with pytest.raises(ConfigError, match="hf:"):
        read_image_weights("hf:microsoft/resnet-18")


def test_torchvision_weights_come_from_the_hub_cache_without_network(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    cached = tmp_path / "hub" / "checkpoints" / Path(weights.url).name
    cached.parent.mkdir(parents=True)
    source = _torchvision_resnet18(seed=9)
    torch.save(source, cached)  # what a first download would have left there
    model = build_image_model(
        "resnet18", num_classes=4, pretrained="torchvision:ResNet18_Weights.IMAGENET1K_V1"
    )
    assert torch.equal(
        model.state_dict()["net.layer2.0.conv1.weight"], source["layer2.0.conv1.weight"]
    )


def test_timm_source_without_timm_names_the_extra() -> None:
    pytest.importorskip("torch")
    try:
        import timm  # noqa: F401
    except ImportError:
        with pytest.raises(DependencyMissing, match=r"aifab\[timm\]"):
            read_image_weights("timm:resnet18")
    else:
        pytest.skip("timm is installed")


def test_packaged_minilm_is_found_and_loaded_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    folder = minilm_path()
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {
        p.name for p in folder.iterdir()
    }
    assert resolve_text_source("pretrained:minilm") == (str(folder), True)
    assert resolve_text_source(str(folder)) == (str(folder), True)

    model = PretrainedEncoderClassifier("minilm", num_classes=2, freeze_encoder=True)
    on_disk = load_file(str(folder / "model.safetensors"))
    loaded = model.encoder.state_dict()
    for key in ("embeddings.word_embeddings.weight", "encoder.layer.5.output.dense.weight"):
        assert torch.equal(loaded[key], on_disk[key]), key
    assert not any(p.requires_grad for p in model.encoder.parameters())
    assert all(p.requires_grad for p in model.head.parameters())
    model.train()
    assert model.training and model.head.training and not model.encoder.training


def test_text_sources_that_do_not_exist_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_text_source(f"pretrained:{tmp_path / 'missing'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no config.json"):
        load_text_encoder(str(tmp_path / "empty"))
    assert resolve_text_source("sentence-transformers/all-MiniLM-L6-v2") == (
        "sentence-transformers/all-MiniLM-L6-v2",
        False,
    )
