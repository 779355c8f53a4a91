"""Behaviour of the individual networks beyond the contract: shapes at the edges, pooling, learning."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from aifab.models.heads import penultimate
from aifab.models.text import (
    RNNClassifier,
    TextCNN,
    TransformerClassifier,
    masked_pool,
    sinusoidal_table,
)
from aifab.data.transforms import encode_texts as encode_batch
from aifab.models.tokenizer import train_tokenizer
from aifab.models.vision import SmallCNN


@pytest.mark.parametrize("size", [8, 9, 28, 32, 64])
def test_smallcnn_takes_any_small_size_and_gives_fixed_features(size: int) -> None:
    net = SmallCNN(num_classes=10, in_channels=1, width=8).eval()
    features = penultimate(net, torch.rand(3, 1, size, size))
    assert features.shape == (3, 32)


def test_textcnn_handles_texts_shorter_than_its_widest_kernel() -> None:
    net = TextCNN(vocab_size=30, num_classes=2, kernel_sizes=(2, 5), num_filters=3).eval()
    with torch.no_grad():
        one = net(torch.tensor([[7]]), torch.tensor([[1]]))
        padded = net(torch.tensor([[7, 0, 0, 0, 0, 0, 0]]), torch.tensor([[1, 0, 0, 0, 0, 0, 0]]))
    assert one.shape == (1, 2)
    torch.testing.assert_close(one, padded)


def test_rnn_last_pooling_reads_each_text_at_its_own_end() -> None:
    torch.manual_seed(0)
    net = RNNClassifier(
        vocab_size=30,
        num_classes=2,
        cell="lstm",
        embed_dim=8,
        hidden_dim=6,
        num_layers=2,
        pooling="last",
    ).eval()
    ids = torch.tensor([[2, 5, 3, 0, 0], [2, 7, 8, 9, 3]])  # shortest first: packing must reorder
    mask = (ids != 0).long()
    with torch.no_grad():
        batched = net.forward_features(ids, mask)
        first = net.forward_features(ids[:1, :3], mask[:1, :3])
        # The forward direction's final state is its output at the last valid step.
        out, _ = net.rnn(net.embedding(ids[:1, :3]))
    torch.testing.assert_close(batched[:1], first)
    torch.testing.assert_close(batched[0, :6], out[0, 2, :6])


def test_masked_pool_ignores_padding_and_transformer_survives_an_empty_row() -> None:
    hidden = torch.tensor([[[1.0, -5.0], [3.0, -1.0], [50.0, 50.0]]])  # (1, 3, 2)
    mask = torch.tensor([[1, 1, 0]])
    assert masked_pool(hidden, mask, "mean").tolist() == [[2.0, -3.0]]
    assert masked_pool(hidden, mask, "max").tolist() == [[3.0, -1.0]]
    net = TransformerClassifier(
        vocab_size=20,
        num_classes=2,
        embed_dim=8,
        num_heads=2,
        ff_dim=16,
        num_layers=1,
        max_length=6,
    ).eval()
    with torch.no_grad():
        logits = net(torch.tensor([[0, 0, 0], [2, 5, 3]]), torch.tensor([[0, 0, 0], [1, 1, 1]]))
    assert torch.isfinite(logits).all()
    with pytest.raises(ValueError, match="max_length 6"):
        net(torch.ones(1, 7, dtype=torch.long), torch.ones(1, 7, dtype=torch.long))


def test_sinusoidal_positions_are_distinct_and_bounded() -> None:
    table = sinusoidal_table(50, 16)
    assert table.abs().max() <= 1.0
    assert torch.cdist(table, table).fill_diagonal_(1.0).min() > 0.1  # every position is told apart
    assert table[0, 0::2].abs().max() == 0 and torch.all(table[0, 1::2] == 1)


def test_smallcnn_learns_sklearn_digits_on_cpu() -> None:
    """The 8x8 digits (bundled with scikit-learn, no download): a few epochs must reach >= 90%."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (N, 1, 8, 8)
    y = torch.tensor(digits.target)
    gen = torch.Generator().manual_seed(0)
    order = torch.randperm(len(y), generator=gen)
    train, test = order[:1400], order[1400:]
    torch.manual_seed(0)
    net = SmallCNN(num_classes=10, in_channels=1, width=16, dropout=0.1)
    optimizer = torch.optim.AdamW(net.parameters(), lr=3e-3)
    for _ in range(4):
        net.train()
        for batch in train[torch.randperm(len(train), generator=gen)].split(64):
            optimizer.zero_grad()
            nn.functional.cross_entropy(net(x[batch]), y[batch]).backward()
            optimizer.step()
    with torch.no_grad():
        accuracy = (net.eval()(x[test]).argmax(1) == y[test]).float().mean().item()
    assert accuracy >= 0.9, accuracy


@pytest.mark.parametrize("arch", ["textcnn", "gru", "transformer"])
def test_text_nets_learn_which_words_decide_the_label(arch: str) -> None:
    """Label = whether a 'good' or a 'bad' word appears; the held-out texts mix words differently."""
    good, bad = ["great", "lovely", "superb", "tasty"], ["awful", "rude", "cold", "slow"]
    fillers = ["the", "soup", "was", "and", "service", "really", "today", "quite", "staff", "room"]
    gen = torch.Generator().manual_seed(1)

    def make(n: int) -> tuple[list[str], torch.Tensor]:
        texts, labels = [], []
        for i in range(n):
            label = i % 2
            words = [fillers[int(j)] for j in torch.randint(len(fillers), (6,), generator=gen)]
            key = (bad if label else good)[int(torch.randint(4, (1,), generator=gen))]
            words.insert(int(torch.randint(7, (1,), generator=gen)), key)
            texts.append(" ".join(words))
            labels.append(label)
        return texts, torch.tensor(labels)

    train_texts, train_y = make(240)
    test_texts, test_y = make(60)
    tok = train_tokenizer(train_texts, kind="wordpiece", vocab_size=200)
    torch.manual_seed(0)
    vocab = tok.get_vocab_size()
    net: nn.Module
    if arch == "textcnn":
        net = TextCNN(vocab, 2, embed_dim=16, num_filters=16, kernel_sizes=(1, 2, 3))
    elif arch == "gru":
        net = RNNClassifier(vocab, 2, cell="gru", embed_dim=16, hidden_dim=16, pooling="max")
    else:
        net = TransformerClassifier(
            vocab, 2, embed_dim=32, num_heads=2, ff_dim=64, num_layers=1, max_length=16
        )
    optimizer = torch.optim.AdamW(net.parameters(), lr=3e-3)
    ids, mask = encode_batch(tok, train_texts, max_length=16)
    for _ in range(12):
        net.train()
        for batch in torch.randperm(len(train_y), generator=gen).split(32):
            optimizer.zero_grad()
            nn.functional.cross_entropy(net(ids[batch], mask[batch]), train_y[batch]).backward()
            optimizer.step()
    test_ids, test_mask = encode_batch(tok, test_texts, max_length=16)
    with torch.no_grad():
        accuracy = (net.eval()(test_ids, test_mask).argmax(1) == test_y).float().mean().item()
    assert accuracy >= 0.9, accuracy
