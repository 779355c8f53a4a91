"""Text -> token ids: tokenizers trained on the dataset, or the one shipped with a pretrained encoder.

Both kinds are Hugging Face ``tokenizers.Tokenizer`` objects stored as one ``tokenizer.json``
(:func:`tokenizer_to_json` / :func:`tokenizer_from_json`), so serving tokenizes exactly as
training did; :func:`aifab.data.transforms.encode_texts` turns either into padded tensors.

Trained tokenizers reserve the same special tokens at fixed ids: ``[PAD]`` = 0, ``[UNK]`` = 1,
``[CLS]`` = 2, ``[SEP]`` = 3, ``[MASK]`` = 4, and wrap every text as ``[CLS] ... [SEP]``.

>>> tok = train_tokenizer(["the cat sat", "the dog ran"] * 5, kind="wordpiece", vocab_size=100)
>>> enc = tok.encode("The cat ran")
>>> enc.tokens
['[CLS]', 'the', 'cat', 'ran', '[SEP]']
>>> tok.decode(enc.ids)
'the cat ran'
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from aifab.core.errors import ConfigError, FormatError, check_choice

if TYPE_CHECKING:
    from tokenizers import Tokenizer

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
PAD, UNK, CLS, SEP, MASK = SPECIAL_TOKENS


def _deterministic_vocab(tok: Tokenizer, texts: Iterable[str], vocab_size: int) -> dict[str, int]:
    from collections import Counter

    normalizer, pre = tok.normalizer, tok.pre_tokenizer
    words: Counter[str] = Counter()
    for text in texts:
        if text:
            words.update(w for w, _ in pre.pre_tokenize_str(normalizer.normalize_str(text)))
    chars = sorted({c for w in words for c in w})
    vocab: dict[str, int] = {}
    for piece in [*SPECIAL_TOKENS, *chars, *(f"##{c}" for c in chars)]:
        vocab.setdefault(piece, len(vocab))
    for word, _ in sorted(words.items(), key=lambda kv: (-kv[1], kv[0])):
        if len(vocab) >= vocab_size:
            break
        vocab.setdefault(word, len(vocab))
    return vocab


def train_tokenizer(
    texts: Iterable[str],
    *,
    kind: Literal["wordpiece", "bpe"] = "wordpiece",
    vocab_size: int = 20000,
    lowercase: bool = True,
) -> Tokenizer:
    """Train a WordPiece or BPE tokenizer on ``texts`` (the training split only, to avoid leakage).

    Normalization: NFD, then lowercase and accent stripping when ``lowercase`` (BERT-uncased style)
    for WordPiece; NFKC (+ lowercase) for BPE. Pre-tokenization splits on whitespace and
    punctuation. Characters never seen in training become ``[UNK]``. The vocabulary can come out
    smaller than ``vocab_size`` on little text; use ``tok.get_vocab_size()`` for the embedding.

    >>> tok = train_tokenizer(["héllo world"] * 3, kind="bpe", vocab_size=100)
    >>> tok.token_to_id("[PAD]"), tok.token_to_id("[MASK]")
    (0, 4)
    >>> tok.encode("Hello §").tokens[-2:]
    ['[UNK]', '[SEP]']
    """
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )

    check_choice("tokenizer", kind, ("wordpiece", "bpe"), where="model.tokenizer")
    if vocab_size < len(SPECIAL_TOKENS) + 1:
        raise ConfigError(f"model.vocab_size: must be > {len(SPECIAL_TOKENS)}; got {vocab_size}")
    steps: list[normalizers.Normalizer]
    trainer: trainers.Trainer
    if kind == "wordpiece":
        tok = Tokenizer(models.WordPiece(unk_token=UNK))
        steps = [normalizers.NFD()]
        if lowercase:
            steps += [normalizers.Lowercase(), normalizers.StripAccents()]
        tok.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(
            vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False
        )
    else:
        tok = Tokenizer(models.BPE(unk_token=UNK, end_of_word_suffix="</w>"))
        steps = [normalizers.NFKC()] + ([normalizers.Lowercase()] if lowercase else [])
        tok.decoder = decoders.BPEDecoder(suffix="</w>")
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=list(SPECIAL_TOKENS),
            end_of_word_suffix="</w>",
            show_progress=False,
        )
    tok.normalizer = normalizers.Sequence(steps)
    tok.pre_tokenizer = pre_tokenizers.Whitespace()  # runs of \w, or runs of punctuation
    if kind == "wordpiece":
        # The WordPieceTrainer's vocabulary changes from run to run on the same texts (its
        # hash maps break ties at random: huggingface/tokenizers#1794), which breaks "same
        # spec, data and seed -> same model". This vocabulary is built deterministically:
        # every character (as a word start and as a ##continuation), then whole words by
        # frequency, ties broken alphabetically. Unknown words fall back to characters.
        tok = Tokenizer(models.WordPiece(_deterministic_vocab(tok, texts, vocab_size), unk_token=UNK))
        tok.normalizer = normalizers.Sequence(steps)
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        tok.decoder = decoders.WordPiece()
        tok.add_special_tokens(list(SPECIAL_TOKENS))  # already in the vocab: only marks them special
    else:
        tok.train_from_iterator((t for t in texts if t), trainer=trainer)
    cls_id, sep_id = tok.token_to_id(CLS), tok.token_to_id(SEP)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{CLS} $A {SEP}",
        pair=f"{CLS} $A {SEP} $B:1 {SEP}:1",
        special_tokens=[(CLS, cls_id), (SEP, sep_id)],
    )
    return tok


def pad_id(tok: Tokenizer) -> int:
    """The id padding uses: ``[PAD]``, else the tokenizer's configured pad id, else 0.

    >>> pad_id(train_tokenizer(["x y"], kind="wordpiece", vocab_size=50))
    0
    """
    found = tok.token_to_id(PAD)
    if found is None:
        found = tok.token_to_id("<pad>")
    if found is None and tok.padding is not None:
        found = tok.padding.get("pad_id")
    return int(found) if found is not None else 0


def tokenizer_to_json(tok: Tokenizer) -> str:
    """The ``tokenizer.json`` text of ``tok`` (what a model version stores).

    >>> tok = train_tokenizer(["x y"], kind="wordpiece", vocab_size=50)
    >>> tokenizer_from_json(tokenizer_to_json(tok)).get_vocab() == tok.get_vocab()
    True
    """
    return tok.to_str()


def tokenizer_from_json(text: str, *, source: str = "tokenizer.json") -> Tokenizer:
    """A tokenizer from ``tokenizer.json`` text; a :class:`~aifab.core.errors.FormatError` naming
    ``source`` when the text is not one.

    >>> try:
    ...     tokenizer_from_json("{}", source="v1/tokenizer.json")
    ... except FormatError as err:
    ...     print(err.path, "|", err.message.split(" (")[0])
    v1/tokenizer.json | v1/tokenizer.json: not a valid tokenizer.json
    """
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_str(text)
    except Exception as exc:  # tokenizers raises a bare Exception for bad JSON
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise FormatError(source, f"not a valid tokenizer.json ({detail})") from None


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Read a ``tokenizer.json`` file (see :func:`tokenizer_from_json`)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: tokenizer file not found") from None
    return tokenizer_from_json(text, source=str(path))


def load_pretrained_tokenizer(source: str | Path) -> Tokenizer:
    """The tokenizer of a pretrained encoder: its folder's ``tokenizer.json``, read with
    ``tokenizers`` alone; ``source`` is a folder, a hub id or ``minilm`` (with or without
    ``pretrained:``). Padding/truncation presets in the file are switched off: :func:`aifab.data.transforms.encode_texts`
    decides them. A folder with only ``vocab.txt`` etc. is converted through transformers.

    >>> tok = load_pretrained_tokenizer("pretrained:minilm")
    >>> tok.encode("Hello world").tokens
    ['[CLS]', 'hello', 'world', '[SEP]']
    """
    from aifab.models.pretrained import resolve_text_source

    name, local = resolve_text_source(str(source))
    if local:
        file = Path(name) / "tokenizer.json"
        tok = load_tokenizer(file) if file.is_file() else _convert_with_transformers(name)
    else:
        from tokenizers import Tokenizer

        try:
            tok = Tokenizer.from_pretrained(name)
        except Exception as exc:  # network / missing file errors surface as bare Exceptions
            raise ConfigError(
                f"model.arch: pretrained:{name}: could not load its tokenizer ({exc})"
            ) from None
    tok.no_padding()
    tok.no_truncation()
    return tok


def _convert_with_transformers(folder: str) -> Tokenizer:
    from tokenizers import Tokenizer

    try:
        from transformers import AutoTokenizer

        fast = AutoTokenizer.from_pretrained(folder, local_files_only=True, use_fast=True)
        backend = fast.backend_tokenizer
    except (OSError, ValueError, AttributeError) as exc:
        raise ConfigError(
            f"{folder}: no tokenizer.json and no convertible tokenizer files ({exc})"
        ) from None
    # A copy, so later settings do not leak into the transformers object.
    return Tokenizer.from_str(json.dumps(json.loads(backend.to_str())))
