"""Pruning: structured channel pruning really shrinks a CNN (parameters and FLOPs counted), keeps
the strongest channels, and the narrower network saves and loads through the registry to
identical outputs; unstructured pruning keeps its zeros through fine-tuning."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import numpy as np
import pytest

from aifab.core.errors import ConfigError
from aifab.optimize.measure import count_flops, count_nonzero, count_parameters
from aifab.optimize.prune import make_permanent, prune_channels, prune_unstructured, sparsity
from tests.optimize.test_export import (
    TEXT_TRAIN,
    TEXT_TRAIN_Y,
    encoded,
    image_model,
    image_test,
    one_thread,  # noqa: F401  (autouse fixture)
    proba,
    text_model,
)


def test_flops_are_counted_from_layer_shapes() -> None:
    import torch

    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.Flatten(), torch.nn.Linear(4 * 8 * 8, 10))
    # conv: 4 x 8 x 8 outputs, 1 x 3 x 3 multiply-adds each; linear: 10 outputs, 256 each; 2 FLOPs per MAC
    assert count_flops(net, {"input": torch.zeros(1, 1, 8, 8)}) == 2 * (4 * 64 * 9 + 10 * 256)
    assert count_parameters(net) == (4 * 9 + 4) + (256 * 10 + 10)


def test_structured_pruning_really_shrinks_a_cnn() -> None:
    trained = image_model()
    images, _ = image_test()
    one = {k: v[:1] for k, v in encoded(trained, images[:1]).items()}
    before_params, before_flops = count_parameters(trained.model), count_flops(trained.model, one)
    reference = proba(trained.model, trained, images[:50])

    small, widths = prune_channels(trained.model, 0.5)

    assert widths == {"features.0.0": 16, "features.0.3": 16, "features.1.0": 32, "features.1.3": 32,
                      "features.2.0": 64, "features.2.3": 64}
    # Halving both sides of every inner conv leaves about a quarter of the work and weights.
    assert count_parameters(small) < 0.3 * before_params
    assert count_flops(small, one) < 0.3 * before_flops
    assert count_nonzero(small) == count_parameters(small)  # no zeros: fewer weights, not masked ones
    assert small.head.linear.in_features == 64 and small.feature_dim == 64
    # The original is untouched.
    assert count_parameters(trained.model) == before_params
    assert np.array_equal(proba(trained.model, trained, images[:50]), reference)


def test_the_channels_kept_are_those_with_the_largest_l1_norm() -> None:
    import torch

    from aifab.models.vision import SmallCNN

    net = SmallCNN(num_classes=2, in_channels=1).eval()
    first, second = net.features[0][0], net.features[0][3]
    order = torch.randperm(32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for channel, strength in enumerate(order.tolist()):
            first.weight[channel].fill_(strength + 1.0)  # L1 norm grows with `strength`
        # The second conv: output channel c has weights 1000 (c + 1) + i over input channels i,
        # so its strongest outputs are the last ones, and a wrong input slice shows.
        c = torch.arange(32.0).view(32, 1, 1, 1)
        i = torch.arange(32.0).view(1, 32, 1, 1)
        second.weight.copy_((1000 * (c + 1) + i).expand_as(second.weight))
        net.features[0][1].running_var.copy_(torch.arange(1.0, 33.0))  # distinct, so slicing shows
    small, _ = prune_channels(net, 0.75)

    strongest = sorted(order.argsort()[-8:].tolist())  # the 8 channels with the largest norms, in order
    assert torch.equal(small.features[0][0].weight, first.weight[strongest])
    assert torch.equal(small.features[0][1].running_var, net.features[0][1].running_var[strongest])
    assert torch.equal(small.features[0][3].weight, second.weight[24:][:, strongest])


def test_a_pruned_cnn_saves_and_loads_through_the_registry_to_identical_outputs(workspace) -> None:
    from datetime import UTC, datetime

    from aifab.core.types import ModelVersion
    from aifab.registry.versions import bundle_files, load_files

    trained = image_model()
    images, _ = image_test()
    small, widths = prune_channels(trained.model, 0.5)
    pruned = SimpleNamespace(
        model=small.eval(), model_params={**trained.model_params, "channels": widths},
        preprocessing=trained.preprocessing, tokenizer_json=None, effective_spec=trained.effective_spec, history=[],
    )
    files = bundle_files(trained=pruned, metrics={}, lineage={}, card="# pruned\n")
    version = workspace.meta.add_model_version(ModelVersion(
        name="digits", version=0, task="image-classification", created_at=datetime.now(UTC),
        files={name: workspace.artifacts.put_bytes(data) for name, data in files.items()},
    ))

    loaded = load_files(version, workspace.artifacts.get_bytes)
    assert count_parameters(loaded.model) == count_parameters(small) < count_parameters(trained.model)
    assert np.array_equal(loaded.predict_proba(images), proba(small, trained, images))


def test_resnet_blocks_are_pruned_inside_and_rebuilt_from_their_widths() -> None:
    import torch

    from aifab.models.vision import build_image_model

    torch.manual_seed(0)
    net = build_image_model("resnet18", num_classes=3, in_channels=1).eval()
    x = torch.randn(2, 1, 32, 32)
    small, widths = prune_channels(net, 0.5)
    assert len(widths) == 8 and widths["net.layer1.0.conv1"] == 32  # the inner conv of each block
    assert count_parameters(small) < 0.65 * count_parameters(net)
    assert count_flops(small, {"images": x}) < 0.65 * count_flops(net, {"images": x})

    rebuilt = build_image_model("resnet18", num_classes=3, in_channels=1, channels=widths).eval()
    rebuilt.load_state_dict(small.state_dict(), strict=True)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), small.eval()(x))


def test_a_text_model_has_no_channels_to_prune() -> None:
    with pytest.raises(ConfigError, match="unstructured"):
        prune_channels(text_model().model, 0.5)


@pytest.mark.parametrize("net", ["textcnn", "gru"])
def test_unstructured_zeros_stay_zero_through_fine_tuning(net: str) -> None:
    import torch

    from aifab.models.text import RNNClassifier

    trained = text_model()
    model = copy.deepcopy(trained.model) if net == "textcnn" else RNNClassifier(
        trained.model_params["vocab_size"], 2, cell="gru", embed_dim=16, hidden_dim=8)
    keys = set(model.state_dict())
    prune_unstructured(model.train(), 0.5)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    before = {k: v.clone() for k, v in model.state_dict().items() if k.endswith("_orig")}
    targets = torch.tensor([trained.preprocessing["labels"].index(y) for y in TEXT_TRAIN_Y])
    for start in range(0, 96, 32):  # a few real training steps
        rows = list(range(start, start + 16)) + list(range(200 - start, 216 - start))
        batch = encoded(trained, [TEXT_TRAIN[i] for i in rows])
        loss = torch.nn.functional.cross_entropy(model(**batch), targets[rows])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items() if k in before)  # it trained

    make_permanent(model)
    assert set(model.state_dict()) == keys  # plain weights again: the registry stores them as usual
    assert sparsity(model) == pytest.approx(0.5, abs=0.01)
    with torch.no_grad():  # and the model still runs on the pruned weights
        assert model.eval()(**encoded(trained, TEXT_TRAIN[:3])).shape == (3, 2)


def test_amounts_outside_zero_to_one_are_refused() -> None:
    for amount in (0.0, 1.0, 1.5):
        with pytest.raises(ConfigError, match="fraction"):
            prune_unstructured(copy.deepcopy(text_model().model), amount)
