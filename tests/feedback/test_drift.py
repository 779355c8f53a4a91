"""Drift statistics: PSI per feature, an MMD permutation test on embeddings, and the embeddings."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from aifab.core.errors import ConfigError, InputError
from aifab.feedback.drift import drift_report, embed, mmd_test, psi, reference_stats

LABELS = ["ham", "spam"]


def sample(seed: int, n: int, *, shift: float = 0.0, spam: float = 1.0, long: bool = False):
    """Scores, lengths and 8-d embeddings of n inputs; ``shift`` moves the embeddings, ``spam``
    the class balance, ``long`` the lengths."""
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet([4.0, spam], size=n)
    lengths = rng.integers(200, 600, n) if long else rng.integers(10, 120, n)
    embeddings = rng.normal(shift, 1.0, size=(n, 8))
    return probs, lengths, embeddings


@pytest.fixture(scope="module")
def reference() -> dict:
    probs, lengths, embeddings = sample(0, 800)
    return reference_stats(probs, LABELS, lengths=lengths, embeddings=embeddings)


def report(reference: dict, probs, lengths, embeddings, **kw):
    return drift_report(reference, probs=probs, lengths=lengths, embeddings=embeddings, **kw)


def test_reference_is_json_with_a_bounded_seeded_sample(reference: dict) -> None:
    again = json.loads(json.dumps(reference))
    assert again == reference
    assert len(reference["embeddings"]["sample"]) == 500 and reference["embeddings"]["dim"] == 8
    assert sum(reference["confidence"]["proportions"]) == pytest.approx(1.0)
    assert len(reference["confidence"]["proportions"]) == 10
    assert sum(reference["length"]["proportions"]) == pytest.approx(1.0)
    # Decile bins: each holds about a tenth of the reference lengths.
    assert max(reference["length"]["proportions"]) < 0.15
    probs, lengths, embeddings = sample(0, 800)
    assert reference_stats(probs, LABELS, lengths=lengths, embeddings=embeddings) == reference
    other = reference_stats(probs, LABELS, lengths=lengths, embeddings=embeddings, seed=1)
    assert other["embeddings"]["sample"] != reference["embeddings"]["sample"]
    rows = {tuple(np.round(r, 6)) for r in embeddings}
    assert all(tuple(r) in rows for r in reference["embeddings"]["sample"])


def test_the_same_distribution_raises_no_alarm(reference: dict) -> None:
    out = report(reference, *sample(1, 400))
    assert out["alarm"] is False and out["reasons"] == []
    assert set(out["features"]) == {"predicted_class", "confidence", "length"}
    assert all(entry["psi"] < 0.1 for entry in out["features"].values())
    assert out["embeddings"]["p_value"] > 0.05
    assert out["count"] == 400 and out["reference_count"] == 800


def test_a_shifted_class_balance_alarms_by_psi_only(reference: dict) -> None:
    probs, _, _ = sample(2, 400, spam=6.0)
    _, lengths, embeddings = sample(3, 400)
    out = report(reference, probs, lengths, embeddings)
    assert out["alarm"] is True
    assert out["features"]["predicted_class"]["psi"] > 0.2
    assert out["features"]["length"]["psi"] < 0.1
    assert out["embeddings"]["p_value"] > 0.01
    assert any(r.startswith("predicted_class: PSI") for r in out["reasons"])
    assert not any(r.startswith("embeddings") for r in out["reasons"])


def test_shifted_embeddings_alarm_by_mmd_only(reference: dict) -> None:
    probs, lengths, _ = sample(4, 300)
    _, _, embeddings = sample(5, 300, shift=0.5)
    out = report(reference, probs, lengths, embeddings)
    assert all(entry["psi"] < 0.2 for entry in out["features"].values())
    assert out["alarm"] is True and out["embeddings"]["p_value"] < 0.01
    assert out["embeddings"]["mmd2"] > 0
    assert [r.split(":")[0] for r in out["reasons"]] == ["embeddings"]


def test_longer_inputs_alarm_on_length(reference: dict) -> None:
    probs, lengths, embeddings = sample(6, 300, long=True)
    out = report(reference, probs, lengths, embeddings)
    assert out["features"]["length"]["psi"] > 1.0
    assert any(r.startswith("length: PSI") for r in out["reasons"])


def test_p_values_are_deterministic_and_capped(reference: dict) -> None:
    probs, lengths, embeddings = sample(7, 200, shift=0.05)
    first = report(reference, probs, lengths, embeddings)
    second = report(reference, probs, lengths, embeddings)
    assert first == second
    many = report(reference, probs, lengths, embeddings, permutations=5000)
    assert many["embeddings"]["permutations"] == 200
    # The p-value is (1 + k) / 201 for some whole k.
    k = many["embeddings"]["p_value"] * 201 - 1
    assert k == pytest.approx(round(k)) and 0 <= round(k) <= 200


def test_psi_and_mmd_values() -> None:
    assert psi([0.5, 0.5], [0.9, 0.1]) == pytest.approx(0.4 * np.log(1.8) + 0.4 * np.log(5))
    assert psi([0.25] * 4, [0.25] * 4) == 0.0
    # An empty served bin is floored, not infinite.
    assert np.isfinite(psi([0.5, 0.5], [1.0, 0.0]))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 3))
    test = mmd_test(x, x.copy(), permutations=50)
    assert test["mmd2"] < 0 or test["mmd2"] == pytest.approx(0, abs=0.05)
    assert mmd_test(x[:1], x)["p_value"] is None


def test_threshold_and_shape_errors(reference: dict) -> None:
    probs, lengths, embeddings = sample(8, 50)
    # A looser threshold silences a moderate PSI; a stricter one raises it.
    shifted, _, _ = sample(9, 50, spam=2.0)
    features = report(reference, shifted, None, None)["features"]
    value = max(entry["psi"] for entry in features.values())
    assert 0.05 < value < 1
    assert report(reference, shifted, None, None, alarm_psi=value + 0.01)["alarm"] is False
    assert report(reference, shifted, None, None, alarm_psi=value - 0.01)["alarm"] is True
    with pytest.raises(ConfigError, match="alarm_psi"):
        report(reference, probs, lengths, embeddings, alarm_psi=0)
    with pytest.raises(InputError, match=r"\(N, 2\)"):
        report(reference, probs[:, :1], lengths, embeddings)
    with pytest.raises(InputError, match="8"):
        report(reference, probs, lengths, embeddings[:, :4])
    empty = report(reference, np.zeros((0, 2)), None, None)
    assert empty["alarm"] is False and empty["count"] == 0


def test_embed_feeds_the_head_what_predict_proba_sees() -> None:
    """softmax(head(embed(x))) must equal predict_proba(x): same preprocessing, same features."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers

    from aifab.train.run import predict_proba, rebuild_model

    words = "good fine great day bad awful poor night".split()
    tok = Tokenizer(models.WordLevel({"[PAD]": 0, "[UNK]": 1, **{w: i + 2 for i, w in enumerate(words)}},
                                     unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    net = rebuild_model({"task": "text-classification", "arch": "textcnn", "num_classes": 2, "vocab_size": 10,
                         "pad_id": 0, "model": {"arch": "textcnn", "embed_dim": 16, "num_filters": 8}}).eval()
    trained = SimpleNamespace(model=net, tokenizer_json=tok.to_str(),
                              preprocessing={"kind": "text", "max_length": 16, "labels": ["neg", "pos"],
                                             "multi_label": False})
    loaded = SimpleNamespace(model=trained.model, preprocessing=trained.preprocessing,
                             tokenizer_json=trained.tokenizer_json)
    queries = ["great good day", "awful", "an unseen word salad here", "x"]
    features = embed(loaded, queries, batch_size=3)
    assert features.shape == (4, trained.model.feature_dim)
    with torch.no_grad():
        logits = trained.model.head(torch.as_tensor(features, dtype=torch.float32)).double()
    np.testing.assert_allclose(torch.softmax(logits, dim=1).numpy(),
                               predict_proba(trained.model, trained.preprocessing, trained.tokenizer_json, queries),
                               atol=1e-5)
    assert embed(loaded, []).shape == (0, trained.model.feature_dim)
    with pytest.raises(InputError, match="input 1: expected a string"):
        embed(loaded, ["ok", b"bytes"])


def test_embed_images_matches_predict_proba(tmp_path) -> None:
    import io

    import torch
    from PIL import Image

    from aifab.train.run import predict_proba, rebuild_model

    net = rebuild_model({"task": "image-classification", "arch": "smallcnn", "num_classes": 3,
                         "in_channels": 1, "image_size": 16, "model": {"arch": "smallcnn"}}).eval()
    pre = {"kind": "image", "image_size": 16, "channels": 1, "mean": [0.4], "std": [0.3],
           "labels": ["a", "b", "c"], "multi_label": False}
    images = []
    for seed in range(3):
        buf = io.BytesIO()
        pixels = np.random.default_rng(seed).integers(0, 256, (20, 24), dtype=np.uint8)
        Image.fromarray(pixels, mode="L").save(buf, format="PNG")
        images.append(buf.getvalue())
    features = embed(SimpleNamespace(model=net, preprocessing=pre, tokenizer_json=None), images)
    with torch.no_grad():
        probs = torch.softmax(net.head(torch.as_tensor(features, dtype=torch.float32)).double(), dim=1).numpy()
    np.testing.assert_allclose(probs, predict_proba(net, pre, None, images), atol=1e-5)
