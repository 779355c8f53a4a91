"""Preprocessing shared by training and serving: real PNG/JPEG bytes (Pillow), real tokenizers."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from aifab.core.config import AugmentConfig
from aifab.core.errors import ConfigError, FormatError, InputError
from aifab.data.transforms import ImagePreprocessor, TextPreprocessor, encode_texts


def encode(image: Image.Image, fmt: str = "PNG", **kw: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


def noise(seed: int, size: tuple[int, int], mode: str = "L") -> bytes:
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0]) + ((3,) if mode == "RGB" else ())
    pixels = rng.integers(0, 256, size=shape, dtype=np.uint8)
    if mode == "RGB":
        pixels[..., 0] //= 4  # channels with different statistics
        pixels[..., 2] = 255 - pixels[..., 2] // 2
    return encode(Image.fromarray(pixels, mode=mode))


# ------------------------------------------------------------------------------------ images


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_fitted_stats_normalise_the_training_pixels_to_mean_0_std_1(mode: str) -> None:
    images = [noise(i, (12 + i, 20 - i), mode) for i in range(8)]
    pre = ImagePreprocessor.fit(images, image_size=16)
    assert pre.channels == (1 if mode == "L" else 3)
    x = pre(images).double()  # (B, C, H, W)
    assert x.shape == (8, pre.channels, 16, 16)
    per_channel = x.transpose(0, 1).reshape(pre.channels, -1)
    assert torch.allclose(
        per_channel.mean(dim=1), torch.zeros(pre.channels, dtype=torch.float64), atol=1e-5
    )
    assert torch.allclose(
        per_channel.std(dim=1, unbiased=False),
        torch.ones(pre.channels, dtype=torch.float64),
        atol=1e-4,
    )
    if mode == "RGB":  # the three channels got their own statistics
        assert len(set(round(m, 3) for m in pre.mean)) == 3


def test_fit_picks_gray_only_when_every_sampled_image_is_gray() -> None:
    gray = [noise(i, (8, 8)) for i in range(4)]
    assert ImagePreprocessor.fit(gray, image_size=8).channels == 1
    mixed = [*gray, noise(9, (8, 8), "RGB")]
    assert ImagePreprocessor.fit(mixed, image_size=8).channels == 3


@pytest.mark.parametrize(
    ("sizes", "expected"),
    [
        ([(10, 30), (40, 20), (50, 50)], 40),  # median of longer sides 30, 40, 50
        ([(21, 21), (21, 21)], 20),  # 21 rounds to the nearest multiple of 4
        ([(28, 28)], 28),  # MNIST keeps its size
        ([(4, 3)], 8),  # clamped up to 8
        ([(1000, 800), (600, 900)], 224),  # clamped down to 224
    ],
)
def test_image_size_defaults_to_the_median_longer_side(sizes: list, expected: int) -> None:
    images = [encode(Image.new("L", size, 100)) for size in sizes]
    assert ImagePreprocessor.fit(images, image_size=None).image_size == expected


def test_fit_on_a_sample_is_seeded_and_a_constant_image_gets_std_1() -> None:
    images = [noise(i, (8, 8)) for i in range(30)]
    a = ImagePreprocessor.fit(images, image_size=8, max_samples=5, seed=1)
    b = ImagePreprocessor.fit(images, image_size=8, max_samples=5, seed=1)
    full = ImagePreprocessor.fit(images, image_size=8)
    assert a == b and a != full
    flat = ImagePreprocessor.fit([encode(Image.new("L", (8, 8), 51))], image_size=8)
    assert flat.mean == pytest.approx((0.2,)) and flat.std == (1.0,)


def test_to_dict_round_trips_through_json() -> None:
    pre = ImagePreprocessor.fit([noise(i, (9, 9), "RGB") for i in range(3)], image_size=16)
    again = ImagePreprocessor.from_dict(json.loads(json.dumps({"kind": "image", **pre.to_dict()})))
    assert again == pre
    images = [noise(7, (30, 10), "RGB")]
    assert torch.equal(again(images), pre(images))


@pytest.mark.parametrize(
    ("params", "problem"),
    [
        (
            {"image_size": 8, "channels": 2, "mean": [0, 0], "std": [1, 1]},
            "channels must be 1 or 3",
        ),
        ({"image_size": 8, "channels": 3, "mean": [0], "std": [1]}, "need 3 values"),
        (
            {"image_size": 8, "channels": 1, "mean": [0], "std": [0]},
            "std values must be finite and > 0",
        ),
        ({"image_size": 4, "channels": 1, "mean": [0], "std": [1]}, "image_size must be"),
        ({"image_size": 8, "channels": 1, "mean": [0]}, "missing key 'std'"),
    ],
)
def test_invalid_parameters_are_config_errors(params: dict, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        ImagePreprocessor.from_dict(params)


def test_decode_converts_colour_kind_and_resizes_to_a_square() -> None:
    colour = Image.new("RGB", (30, 10), (200, 40, 90))
    as_gray = ImagePreprocessor(image_size=8, channels=1, mean=(0,), std=(1,)).decode(
        encode(colour)
    )
    assert as_gray.shape == (1, 8, 8)
    expected = colour.convert("L").getpixel((0, 0)) / 255.0
    assert torch.allclose(as_gray, torch.full((1, 8, 8), expected))
    gray = Image.fromarray(np.tile(np.arange(0, 256, 32, dtype=np.uint8), (8, 1)), mode="L")
    as_rgb = ImagePreprocessor(image_size=8, channels=3, mean=(0,) * 3, std=(1,) * 3).decode(
        encode(gray)
    )
    assert as_rgb.shape == (3, 8, 8)
    assert torch.equal(as_rgb[0], as_rgb[1]) and torch.equal(as_rgb[1], as_rgb[2])
    assert torch.equal(as_rgb[0, 0], torch.arange(0, 256, 32).float() / 255.0)


def test_decode_applies_the_exif_orientation() -> None:
    pixels = np.zeros((10, 20), dtype=np.uint8)
    pixels[:, 10:] = 255  # left half black, right half white
    image = Image.fromarray(pixels, mode="L").convert("RGB")
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display": the left side goes on top
    pre = ImagePreprocessor(image_size=8, channels=1, mean=(0,), std=(1,))
    shown = pre.decode(encode(image, "JPEG", exif=exif, quality=95))
    # Unrotated, every row would be half black and half white (mean 0.5).
    assert shown[0, :3].mean() < 0.1 and shown[0, -3:].mean() > 0.9


def test_bad_bytes_are_input_errors_naming_the_image() -> None:
    pre = ImagePreprocessor(image_size=8, channels=1, mean=(0,), std=(1,))
    good = encode(Image.new("L", (8, 8)))
    with pytest.raises(InputError, match=r"^image 1: not a decodable image"):
        pre([good, b"not an image"])
    with pytest.raises(InputError, match=r"^train row 12: not a decodable image"):
        pre.decode(good[: len(good) // 2], where="train row 12")
    with pytest.raises(InputError, match="no training images"):
        ImagePreprocessor.fit([], image_size=8)


def test_train_transform_is_random_keeps_shape_and_off_means_identity() -> None:
    pre = ImagePreprocessor(image_size=16, channels=3, mean=(0,) * 3, std=(1,) * 3)
    x = torch.rand(3, 16, 16)
    assert pre.train_transform(AugmentConfig(enabled=False))(x) is x
    nothing = AugmentConfig(translate=0.0)
    assert pre.train_transform(nothing)(x) is x
    full = pre.train_transform(
        AugmentConfig(random_resized_crop=True, hflip=True, rotation_degrees=15, color_jitter=0.3)
    )
    torch.manual_seed(0)
    outs = [full(x) for _ in range(4)]
    assert all(o.shape == x.shape for o in outs)
    assert not any(torch.equal(o, x) for o in outs)
    torch.manual_seed(0)
    assert all(torch.equal(o, full(x)) for o in outs)  # drawn from torch's seeded generator


def test_hflip_alone_flips_or_keeps_and_jitter_works_on_one_channel() -> None:
    flip = ImagePreprocessor(image_size=8, channels=1, mean=(0,), std=(1,)).train_transform(
        AugmentConfig(hflip=True, translate=0.0)
    )
    x = torch.rand(1, 8, 8)
    torch.manual_seed(1)
    seen = {torch.equal(flip(x), x.flip(-1)) for _ in range(20)}
    assert seen == {True, False}
    jitter = ImagePreprocessor(image_size=8, channels=1, mean=(0,), std=(1,)).train_transform(
        AugmentConfig(color_jitter=0.5, translate=0.0)
    )
    assert jitter(x).shape == (1, 8, 8)


# -------------------------------------------------------------------------------------- text


@pytest.fixture(scope="module")
def tokenizer():
    from aifab.models.tokenizer import train_tokenizer

    corpus = [
        "the chef simmers tomato soup slowly",
        "heavy rain falls on the coast tonight",
        "my brother grills fish with lemon",
        "strong winds blow from the north",
    ] * 5
    return train_tokenizer(corpus, kind="wordpiece", vocab_size=120)

def test_one_text_encodes_the_same_alone_or_batched_and_presets_are_ignored(tokenizer) -> None:
    from tokenizers import Tokenizer

    alone, _ = encode_texts(tokenizer, ["rain on the coast"], max_length=16)
    batched, _ = encode_texts(
        tokenizer, ["rain on the coast", "the chef simmers tomato soup slowly"], max_length=16
    )
    assert torch.equal(alone[0], batched[0, : alone.shape[1]])
    preset = Tokenizer.from_str(tokenizer.to_str())
    preset.enable_padding(length=40)
    preset.enable_truncation(max_length=3)
    again, _ = encode_texts(preset, ["rain on the coast"], max_length=16)
    assert torch.equal(again, alone)


def test_text_preprocessor_saves_params_without_the_tokenizer(tokenizer) -> None:
    pre = TextPreprocessor(tokenizer.to_str(), max_length=8)
    params = json.loads(json.dumps(pre.to_dict()))
    assert params == {"max_length": 8}
    again = TextPreprocessor.from_files(tokenizer.to_str(), {"kind": "text", **params})
    texts = ["heavy rain tonight", "the chef"]
    assert all(torch.equal(a, b) for a, b in zip(pre(texts), again(texts), strict=True))
    assert pre.vocab_size == tokenizer.get_vocab_size() and pre.pad_id == 0
    with pytest.raises(FormatError, match="not a valid tokenizer.json"):
        TextPreprocessor("{}", max_length=8)
    with pytest.raises(ConfigError, match="max_length"):
        TextPreprocessor.from_files(tokenizer.to_str(), {})


def test_pretrained_tokenizer_truncates_inside_cls_and_sep() -> None:
    from aifab.models.pretrained import packaged_encoder_available

    if not packaged_encoder_available():
        pytest.skip("the packaged MiniLM encoder is not installed")
    from aifab.models.tokenizer import load_pretrained_tokenizer

    tok = load_pretrained_tokenizer("minilm")
    texts = ["Hello world, this is a long sentence to truncate", "Hi"]
    ids, mask = TextPreprocessor(tok.to_str(), max_length=6)(texts)
    assert ids.shape == (2, 6) and mask.sum(dim=1).tolist() == [6, 3]
    # The file pads every text to 128; here padding goes to the longest text and [SEP] survives.
    assert ids[0, 0].item() == tok.token_to_id("[CLS]") and ids[0, -1].item() == tok.token_to_id(
        "[SEP]"
    )