"""Preprocessing shared by training and serving: images -> normalised tensors, texts -> token ids.

Both preprocessors are rebuilt from their parameters alone, which a model version stores as JSON
(``to_dict``; the tokenizer itself goes into its own ``tokenizer.json``), so serving decodes,
resizes, normalises and tokenizes exactly as training did.

Image pipeline: bytes -> Pillow (EXIF orientation applied) -> mode ``L`` or ``RGB`` -> square
resize to ``image_size`` (bilinear; Pillow's resize filters antialias when shrinking) -> float
tensor ``(C, H, W)`` in [0, 1] -> [train only: augmentation] -> ``(x - mean) / std``.

>>> import io
>>> from PIL import Image
>>> buf = io.BytesIO(); Image.new("L", (20, 10), 128).save(buf, format="PNG")
>>> pre = ImagePreprocessor(image_size=8, channels=1, mean=(0.5,), std=(0.25,))
>>> pre([buf.getvalue()]).shape
torch.Size([1, 1, 8, 8])
>>> ImagePreprocessor.from_dict(pre.to_dict()) == pre
True
"""

from __future__ import annotations

import io
import math
import random
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aifab.core.errors import ConfigError, FormatError, InputError

if TYPE_CHECKING:
    import torch
    from tokenizers import Tokenizer

    from aifab.core.config import AugmentConfig

__all__ = [
    "ImagePreprocessor",
    "TextPreprocessor",
    "encode_texts",
    "pad_token_id",
]

MIN_IMAGE_SIZE = 8
MAX_AUTO_IMAGE_SIZE = 224
# A channel whose pixels are all equal has std 0; dividing by it would give inf. Leaving such a
# channel unscaled (std 1) keeps the values finite and changes nothing that could be learned.
_MIN_STD = 1e-6
_GRAY_MODES = ("1", "L", "LA", "I", "I;16", "F")
_PAD_TOKENS = ("[PAD]", "<pad>")


@dataclass(frozen=True)
class ImagePreprocessor:
    """Decode, resize and normalise images; the parameters are all a model version stores.

    ``channels`` is 1 (grayscale, mode ``L``) or 3 (``RGB``); ``mean``/``std`` hold one value per
    channel, for pixels scaled to [0, 1].

    >>> ImagePreprocessor(image_size=8, channels=3, mean=(0.5,), std=(0.2,))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    aifab.core.errors.ConfigError: preprocessing: mean and std need 3 values (one per channel); ...
    """

    image_size: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise ConfigError(f"preprocessing: channels must be 1 or 3; got {self.channels!r}")
        if not isinstance(self.image_size, int) or self.image_size < MIN_IMAGE_SIZE:
            raise ConfigError(
                f"preprocessing: image_size must be an integer >= {MIN_IMAGE_SIZE}; "
                f"got {self.image_size!r}"
            )
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ConfigError(
                f"preprocessing: mean and std need {self.channels} values (one per channel); "
                f"got {len(self.mean)} and {len(self.std)}"
            )
        if not all(math.isfinite(s) and s > 0 for s in self.std):
            raise ConfigError(f"preprocessing: std values must be finite and > 0; got {self.std}")

    # ------------------------------------------------------------------------------ saving

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready parameters.

        >>> ImagePreprocessor(image_size=8, channels=1, mean=(0.5,), std=(0.25,)).to_dict()
        {'image_size': 8, 'channels': 1, 'mean': [0.5], 'std': [0.25]}
        """
        return {
            "image_size": self.image_size,
            "channels": self.channels,
            "mean": list(self.mean),
            "std": list(self.std),
        }

    @classmethod
    def from_dict(cls, params: dict[str, Any]) -> ImagePreprocessor:
        """Rebuild from :meth:`to_dict`'s output; extra keys (``kind``, ``labels``) are ignored.

        >>> ImagePreprocessor.from_dict({"image_size": 8, "channels": 1, "mean": [0.1]})
        Traceback (most recent call last):
        ...
        aifab.core.errors.ConfigError: preprocessing: missing key 'std'
        """
        for key in ("image_size", "channels", "mean", "std"):
            if key not in params:
                raise ConfigError(f"preprocessing: missing key {key!r}")
        return cls(
            image_size=int(params["image_size"]),
            channels=int(params["channels"]),
            mean=tuple(params["mean"]),
            std=tuple(params["std"]),
        )

    # ----------------------------------------------------------------------------- fitting

    @classmethod
    def fit(
        cls,
        images: Sequence[bytes],
        *,
        image_size: int | None,
        max_samples: int = 2000,
        seed: int = 0,
        where: str = "image",
    ) -> ImagePreprocessor:
        """Choose channels and size and compute per-channel mean/std on (a sample of) ``images``.

        Call it on the training split only. ``channels`` is 1 when every sampled image is
        grayscale, else 3. ``image_size=None`` takes the median of the sampled images' longer
        side, rounded to a multiple of 4 (28 px MNIST stays 28) and clamped to [8, 224]. The statistics are measured
        after the resize, on what the network will see. An undecodable image is an
        :class:`~aifab.core.errors.InputError` naming it as ``f"{where} {index}"``.

        >>> import io
        >>> from PIL import Image
        >>> def png(size, value):
        ...     buf = io.BytesIO(); Image.new("L", size, value).save(buf, format="PNG")
        ...     return buf.getvalue()
        >>> pre = ImagePreprocessor.fit([png((30, 20), 0), png((41, 41), 255)], image_size=None)
        >>> pre.image_size, pre.channels, pre.mean, pre.std
        (36, 1, (0.5,), (0.5,))
        """
        import torch

        if len(images) == 0:
            raise InputError("images: no training images to fit the preprocessing on")
        if max_samples < 1:
            raise ValueError(f"max_samples must be >= 1; got {max_samples}")
        picked = range(len(images))
        if len(images) > max_samples:
            picked = sorted(random.Random(seed).sample(range(len(images)), max_samples))
        opened = [_open(images[i], where=f"{where} {i}") for i in picked]
        gray = all(im.mode in _GRAY_MODES for im in opened)
        channels = 1 if gray else 3
        if image_size is None:
            median = statistics.median(max(im.size) for im in opened)
            image_size = int(round(median / 4.0)) * 4
            image_size = min(max(image_size, MIN_IMAGE_SIZE), MAX_AUTO_IMAGE_SIZE)
        # Sums in float64: millions of pixels in float32 lose the digits that the std needs.
        total = torch.zeros(channels, dtype=torch.float64)
        squares = torch.zeros(channels, dtype=torch.float64)
        count = 0
        for im in opened:
            x = _to_tensor(im, channels, image_size).double()  # (C, H, W)
            total += x.sum(dim=(1, 2))
            squares += (x * x).sum(dim=(1, 2))
            count += x.shape[1] * x.shape[2]
        mean = total / count
        var = (squares / count - mean * mean).clamp(min=0.0)
        std = var.sqrt()
        return cls(
            image_size=image_size,
            channels=channels,
            mean=tuple(float(m) for m in mean),
            std=tuple(float(s) if s > _MIN_STD else 1.0 for s in std),
        )

    # ---------------------------------------------------------------------------- applying

    def decode(self, data: bytes, *, where: str = "image") -> torch.Tensor:
        """One image's bytes -> float tensor ``(C, H, W)`` in [0, 1], resized, not normalised.

        An image of the other colour kind is converted (RGB -> L weighs the channels, L -> RGB
        repeats it). An undecodable image is an :class:`~aifab.core.errors.InputError` whose
        message starts with ``where`` (e.g. ``"train row 12"``).

        >>> import io
        >>> from PIL import Image
        >>> buf = io.BytesIO(); Image.new("RGB", (4, 6), (255, 0, 0)).save(buf, format="PNG")
        >>> pre = ImagePreprocessor(image_size=8, channels=3, mean=(0,) * 3, std=(1,) * 3)
        >>> x = pre.decode(buf.getvalue())
        >>> x.shape, x[:, 0, 0].tolist()
        (torch.Size([3, 8, 8]), [1.0, 0.0, 0.0])
        """
        return _to_tensor(_open(data, where=where), self.channels, self.image_size)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """``(x - mean) / std`` per channel for ``(C, H, W)`` or ``(B, C, H, W)`` tensors.

        >>> import torch
        >>> pre = ImagePreprocessor(image_size=8, channels=1, mean=(0.5,), std=(0.25,))
        >>> pre.normalize(torch.ones(1, 8, 8))[0, 0, 0].item()
        2.0
        """
        import torch

        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        return (x - mean) / std

    def __call__(
        self,
        batch: Sequence[bytes],
        *,
        augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Images -> normalised ``(B, C, H, W)``; ``augment`` (from :meth:`train_transform`) runs
        on each decoded image before normalisation. A bad image raises an
        :class:`~aifab.core.errors.InputError` naming its position in the batch.
        """
        import torch

        if isinstance(batch, bytes | bytearray | str):
            raise TypeError("an ImagePreprocessor takes a sequence of images' bytes, not one")
        if len(batch) == 0:
            return torch.zeros(0, self.channels, self.image_size, self.image_size)
        decoded = []
        for i, data in enumerate(batch):
            x = _to_tensor(_open(data, where=f"image {i}"), self.channels, self.image_size)
            decoded.append(augment(x) if augment is not None else x)
        return self.normalize(torch.stack(decoded))  # (B, C, H, W)

    def train_transform(self, aug: AugmentConfig) -> Callable[[torch.Tensor], torch.Tensor]:
        """The random augmentation for training, on a decoded ``(C, H, W)`` tensor in [0, 1].

        It draws from torch's global random generator (the training loop seeds it), and keeps
        the shape. ``aug.enabled=False`` or nothing switched on gives the identity.

        >>> import torch
        >>> from aifab.core.config import AugmentConfig
        >>> pre = ImagePreprocessor(image_size=8, channels=1, mean=(0.5,), std=(0.25,))
        >>> augment = pre.train_transform(AugmentConfig(hflip=True, rotation_degrees=10))
        >>> augment(torch.rand(1, 8, 8)).shape
        torch.Size([1, 8, 8])
        >>> t = pre.train_transform(AugmentConfig(enabled=False)); x = torch.rand(1, 8, 8)
        >>> torch.equal(t(x), x)
        True
        """
        from torchvision.transforms import v2

        steps: list[Any] = []
        if aug.enabled:
            if aug.random_resized_crop:
                steps.append(
                    v2.RandomResizedCrop(
                        (self.image_size, self.image_size), scale=(0.8, 1.0), antialias=True
                    )
                )
            if aug.rotation_degrees > 0 or aug.translate > 0:
                steps.append(
                    v2.RandomAffine(
                        degrees=aug.rotation_degrees,
                        translate=(aug.translate, aug.translate) if aug.translate > 0 else None,
                    )
                )
            if aug.hflip:
                steps.append(v2.RandomHorizontalFlip())
            if aug.color_jitter > 0:
                c = aug.color_jitter
                # Saturation has no meaning for one channel.
                steps.append(
                    v2.ColorJitter(
                        brightness=c, contrast=c, saturation=c if self.channels == 3 else None
                    )
                )
        if not steps:
            return _identity
        return v2.Compose(steps)


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _open(data: bytes, *, where: str) -> Any:
    """A fully decoded Pillow image with its EXIF orientation applied, or an InputError."""
    from PIL import Image, ImageOps

    if not isinstance(data, bytes | bytearray | memoryview):
        raise InputError(f"{where}: expected image bytes; got {type(data).__name__}")
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
        # Serving gets photos straight from cameras; the data gate already rotated stored ones.
        return ImageOps.exif_transpose(image)
    except Exception as exc:  # Pillow raises many types (OSError, SyntaxError, bomb errors, ...)
        raise InputError(f"{where}: not a decodable image ({type(exc).__name__}: {exc})") from None


def _to_tensor(image: Any, channels: int, size: int) -> torch.Tensor:
    import numpy as np
    import torch
    from PIL import Image

    mode = "L" if channels == 1 else "RGB"
    if image.mode in ("I", "I;16", "F") and mode == "L":
        # convert("L") clips 16-bit values at 255; scale the range into 8 bits instead.
        array = np.asarray(image, dtype=np.float64)
        top = array.max() if array.size else 0.0
        image = Image.fromarray((array * (255.0 / top) if top > 0 else array).astype(np.uint8))
    if image.mode != mode:
        image = image.convert(mode)
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR)
    array = np.asarray(image, dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)  # (C, H, W)


# ------------------------------------------------------------------------------------- text


@dataclass(frozen=True)
class TextPreprocessor:
    """Texts -> ``(input_ids, attention_mask)`` with one tokenizer and a maximum length.

    ``tokenizer_json`` is the text of a ``tokenizer.json`` (saved beside the model, not inside
    :meth:`to_dict`). Encoding follows :func:`encode_texts`.

    >>> from tokenizers import Tokenizer, models, pre_tokenizers
    >>> vocab = {"[PAD]": 0, "[UNK]": 1, "hi": 2, "there": 3}
    >>> tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    >>> tok.pre_tokenizer = pre_tokenizers.Whitespace()
    >>> pre = TextPreprocessor(tok.to_str(), max_length=8)
    >>> ids, mask = pre(["hi there", "hi"])
    >>> ids.tolist(), mask.tolist(), pre.to_dict()
    ([[2, 3], [2, 0]], [[1, 1], [1, 0]], {'max_length': 8})
    """

    tokenizer_json: str = field(repr=False)
    max_length: int
    _tokenizer: Any = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        from tokenizers import Tokenizer

        if not isinstance(self.max_length, int) or self.max_length < 1:
            raise ConfigError(
                f"preprocessing: max_length must be an integer >= 1; got {self.max_length!r}"
            )
        try:
            tok = Tokenizer.from_str(self.tokenizer_json)
        except Exception as exc:  # tokenizers raises a bare Exception for bad JSON
            detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise FormatError("tokenizer.json", f"not a valid tokenizer.json ({detail})") from None
        object.__setattr__(self, "_tokenizer", tok)

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready parameters, without the tokenizer (stored as ``tokenizer.json``)."""
        return {"max_length": self.max_length}

    @classmethod
    def from_files(cls, tokenizer_json: str, params: dict[str, Any]) -> TextPreprocessor:
        """Rebuild from ``tokenizer.json``'s text and :meth:`to_dict`'s output (extra keys
        ignored)."""
        if "max_length" not in params:
            raise ConfigError("preprocessing: missing key 'max_length'")
        return cls(tokenizer_json, max_length=int(params["max_length"]))

    @property
    def tokenizer(self) -> Tokenizer:
        return self._tokenizer

    @property
    def pad_id(self) -> int:
        return pad_token_id(self._tokenizer)

    @property
    def vocab_size(self) -> int:
        return int(self._tokenizer.get_vocab_size(with_added_tokens=True))

    def __call__(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return encode_texts(self._tokenizer, texts, max_length=self.max_length)


MIN_CHARS_KEPT = 20_000
CHARS_PER_TOKEN_BOUND = 200
"""encode_texts reads at most max(MIN_CHARS_KEPT, max_length * CHARS_PER_TOKEN_BOUND) characters."""


def encode_texts(
    tok: Tokenizer, texts: Sequence[str], *, max_length: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)``, both ``LongTensor (B, T)``, T = the longest text capped at
    ``max_length``; a text is truncated *before* the special tokens are added, so ``[CLS]`` and
    ``[SEP]`` survive; padding (right) uses :func:`pad_token_id`.

    The tokenizer's own padding/truncation settings are ignored, so one text encodes the same
    alone or in a batch. This is the one encoder: training, evaluation and serving all use it.

    >>> from tokenizers import Tokenizer, models, pre_tokenizers
    >>> vocab = {"[PAD]": 0, "[UNK]": 1, "a": 2, "b": 3}
    >>> tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    >>> tok.pre_tokenizer = pre_tokenizers.Whitespace()
    >>> ids, mask = encode_texts(tok, ["a b a b", "zz"], max_length=3)
    >>> ids.tolist(), mask.tolist()
    ([[2, 3, 2], [1, 0, 0]], [[1, 1, 1], [1, 0, 0]])
    """
    import torch
    from tokenizers import Tokenizer

    if max_length < 1:
        raise ValueError(f"max_length must be >= 1; got {max_length}")
    if isinstance(texts, str):
        raise TypeError("encode_texts takes a sequence of texts, not one string")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise InputError(f"text {i}: expected a string; got {type(text).__name__}")
    if tok.padding is not None or tok.truncation is not None:
        tok = Tokenizer.from_str(tok.to_str())
        tok.no_padding()
        tok.no_truncation()
    room = max(max_length - tok.num_special_tokens_to_add(False), 0)
    encodings = []
    # Tokenizing a 10 MB text to keep its first few hundred tokens costs most of a minute: cut the
    # characters first, far past where max_length tokens end for any real text (a token takes at
    # least one character; only a text of mostly whitespace or huge words would reach the cut).
    chars = max(MIN_CHARS_KEPT, max_length * CHARS_PER_TOKEN_BOUND)
    for raw in tok.encode_batch([t[:chars] for t in texts], add_special_tokens=False):
        raw.truncate(room)  # truncate the text first, so [CLS]/[SEP] survive
        encodings.append(tok.post_process(raw, None, True))
    width = max((len(e.ids) for e in encodings), default=0)
    width = max(min(width, max_length), 1)
    ids = torch.full((len(encodings), width), pad_token_id(tok), dtype=torch.long)  # (B, T)
    mask = torch.zeros((len(encodings), width), dtype=torch.long)  # (B, T)
    for row, enc in enumerate(encodings):
        n = min(len(enc.ids), width)
        ids[row, :n] = torch.tensor(enc.ids[:n], dtype=torch.long)
        mask[row, :n] = 1
    return ids, mask


def pad_token_id(tok: Tokenizer) -> int:
    """The id padding uses: ``[PAD]``, else ``<pad>``, else the configured pad id, else 0.

    >>> from tokenizers import Tokenizer, models
    >>> pad_token_id(Tokenizer(models.WordLevel({"x": 0, "<pad>": 1}, unk_token="x")))
    1
    """
    for token in _PAD_TOKENS:
        found = tok.token_to_id(token)
        if found is not None:
            return int(found)
    if tok.padding is not None and tok.padding.get("pad_id") is not None:
        return int(tok.padding["pad_id"])
    return 0
