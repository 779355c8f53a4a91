"""Tokenizers trained on real-ish sentences; tokenizer.json round trips; padding and truncation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from aifab.core.errors import ConfigError, FormatError
from aifab.data.transforms import encode_texts as encode_batch
from aifab.models.tokenizer import (
    SPECIAL_TOKENS,
    load_pretrained_tokenizer,
    load_tokenizer,
    tokenizer_from_json,
    tokenizer_to_json,
    train_tokenizer,
)

from ._helpers import sentences

KINDS = ("wordpiece", "bpe")


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return sentences(300)


@pytest.mark.parametrize("kind", KINDS)
def test_special_tokens_have_fixed_ids_and_wrap_every_text(corpus: list[str], kind: str) -> None:
    tok = train_tokenizer(corpus, kind=kind, vocab_size=300)
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    tokens = tok.encode("The chef cooked fresh bread.").tokens
    assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]"
    assert "[UNK]" not in tokens
    assert 5 < tok.get_vocab_size() <= 300


@pytest.mark.parametrize("kind", KINDS)
def test_round_trip_through_tokenizer_json_file(
    corpus: list[str], kind: str, tmp_path: Path
) -> None:
    tok = train_tokenizer(corpus, kind=kind, vocab_size=300)
    path = tmp_path / "tokenizer.json"
    path.write_text(tokenizer_to_json(tok), encoding="utf-8")
    again = load_tokenizer(path)
    texts = ["Our team repaired the broken radio at midnight?", "A curious child found an old map."]
    ids, mask = encode_batch(tok, texts, max_length=32)
    ids2, mask2 = encode_batch(again, texts, max_length=32)
    assert torch.equal(ids, ids2) and torch.equal(mask, mask2)
    assert again.decode(ids2[1].tolist()).replace(" .", ".") == "a curious child found an old map."


def test_wordpiece_lowercases_and_strips_accents_unless_told_not_to(corpus: list[str]) -> None:
    tok = train_tokenizer(corpus, kind="wordpiece", vocab_size=300)
    assert tok.encode("THE CAFÉ").ids == tok.encode("the cafe").ids
    cased = train_tokenizer(corpus, kind="wordpiece", vocab_size=300, lowercase=False)
    assert cased.encode("The").ids != cased.encode("the").ids


@pytest.mark.parametrize("kind", KINDS)
def test_unknown_characters_become_unk(corpus: list[str], kind: str) -> None:
    tok = train_tokenizer(corpus, kind=kind, vocab_size=300)
    tokens = tok.encode("the cat 東京 found").tokens
    assert tokens.count("[UNK]") >= 1
    assert "东" not in tokens and "東" not in "".join(tokens)


def test_padding_to_the_longest_and_truncation_keep_the_special_tokens(corpus: list[str]) -> None:
    tok = train_tokenizer(corpus, kind="wordpiece", vocab_size=300)
    long = " ".join(corpus[:5])
    short = "the cat"
    ids, mask = encode_batch(tok, [short, long], max_length=12)
    assert ids.shape == mask.shape == (2, 12) and ids.dtype == mask.dtype == torch.long
    assert ids[1, 0].item() == tok.token_to_id("[CLS]") and ids[1, -1].item() == tok.token_to_id(
        "[SEP]"
    )
    assert mask[1].tolist() == [1] * 12
    assert mask[0].tolist() == [1, 1, 1, 1] + [0] * 8  # [CLS] the cat [SEP]
    assert ids[0, 4:].tolist() == [0] * 8  # [PAD] = 0

    ids, mask = encode_batch(tok, [short, "the dog"], max_length=12)
    assert ids.shape == (2, 4), "pads to the longest text, not to max_length"


def test_a_text_encodes_the_same_alone_and_in_a_batch(corpus: list[str]) -> None:
    tok = train_tokenizer(corpus, kind="bpe", vocab_size=300)
    alone, _ = encode_batch(tok, [corpus[3]], max_length=64)
    batch, mask = encode_batch(tok, [corpus[0] + " " + corpus[1], corpus[3]], max_length=64)
    n = int(mask[1].sum())
    assert torch.equal(batch[1, :n], alone[0])


def test_bad_tokenizer_json_is_a_format_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "tokenizer.json"
    path.write_text('{"model": "nonsense"}', encoding="utf-8")
    with pytest.raises(FormatError, match="tokenizer.json"):
        load_tokenizer(path)
    with pytest.raises(FormatError, match=r"^v2/tokenizer\.json: not a valid tokenizer\.json"):
        tokenizer_from_json("[1, 2", source="v2/tokenizer.json")
    with pytest.raises(ConfigError, match="not found"):
        load_tokenizer(tmp_path / "missing.json")
    with pytest.raises(ConfigError, match="wordpiece"):
        train_tokenizer(["a b"], kind="wordpeice", vocab_size=100)  # type: ignore[arg-type]


def test_packaged_encoder_tokenizer_is_read_without_its_fixed_padding() -> None:
    tok = load_pretrained_tokenizer("pretrained:minilm")
    ids, mask = encode_batch(tok, ["Hello world", "hi"], max_length=128)
    # The file pads every text to 128; encode_batch pads to the longest text instead.
    assert ids.shape == (2, 4)
    # BERT-uncased vocabulary: [CLS]=101, hello=7592, world=2088, [SEP]=102, [PAD]=0.
    assert ids.tolist() == [[101, 7592, 2088, 102], [101, 7632, 102, 0]]
    assert tok.padding is None and tok.truncation is None
