"""Typed, strict configuration: the workspace file ``aifab.yaml`` and the building blocks of specs.

Every model forbids unknown keys; :func:`parse` turns pydantic's errors into one
:class:`~aifab.core.errors.ConfigError` that names the file, the key path and the
nearest valid key, e.g. ``aifab.yaml: checks.near_duplicte_text: unknown key (did you
mean 'near_duplicate_text'?)``.

>>> cfg = parse(WorkspaceConfig, {"split": {"seed": 7}})
>>> cfg.split.seed, cfg.split.test
(7, 0.2)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from aifab.core.errors import ConfigError, nearest

Policy = Literal["block", "quarantine", "warn", "off"]
M = TypeVar("M", bound=BaseModel)


class StrictModel(BaseModel):
    """Base of every config model: unknown keys are errors; values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class StoreConfig(StrictModel):
    """Where metadata lives: any SQLAlchemy URL; relative SQLite paths are relative to the workspace."""

    url: str = "sqlite:///.aifab/aifab.db"


class ArtifactsConfig(StrictModel):
    """Where blobs live: a local folder (relative to the workspace) or any fsspec URL such as ``s3://bucket/p``."""

    url: str = ".aifab/artifacts"


class ChecksConfig(StrictModel):
    """One policy per data-gate check.

    ``block`` refuses the whole version, ``quarantine`` keeps the records out of the
    version (listed in the report), ``warn`` only reports, ``off`` skips the check.
    """

    unreadable_image: Policy = "quarantine"
    image_bomb: Policy = "quarantine"
    image_mode: Policy = "warn"
    wrong_extension: Policy = "warn"
    missing_file: Policy = "quarantine"
    empty_text: Policy = "quarantine"
    non_printable_text: Policy = "quarantine"
    invalid_utf8: Policy = "warn"
    missing_label: Policy = "quarantine"
    unknown_tag: Policy = "quarantine"
    invalid_box: Policy = "quarantine"
    exact_duplicate: Policy = "warn"
    near_duplicate_image: Policy = "warn"
    near_duplicate_text: Policy = "warn"
    conflicting_labels: Policy = "quarantine"
    class_imbalance: Policy = "warn"
    rare_label: Policy = "warn"
    split_leak: Policy = "warn"


class ThresholdsConfig(StrictModel):
    """Numbers the checks use."""

    max_image_pixels: int = Field(default=89_478_485, gt=0, description="Pillow's own default bomb limit")
    near_duplicate_text_jaccard: float = Field(default=0.8, gt=0, le=1)
    near_duplicate_image_hamming: int = Field(default=4, ge=0, le=32)
    near_duplicate_image_pixel_diff: float = Field(
        default=5.0, ge=0, le=255, description="mean abs difference of 16x16 thumbnails that confirms a hash match"
    )
    non_printable_fraction: float = Field(default=0.3, gt=0, le=1)
    imbalance_ratio: float = Field(default=10.0, gt=1, description="largest class / smallest class")
    min_records_per_label: int = Field(default=3, ge=1, description="fewer cannot be split train/val/test")


class SplitConfig(StrictModel):
    """Ratios for the split aifab makes when the data brings none; the remainder is ``train``."""

    val: float = Field(default=0.1, ge=0, lt=1)
    test: float = Field(default=0.2, ge=0, lt=1)
    seed: int = 0

    @model_validator(mode="after")
    def _leave_room_for_train(self) -> SplitConfig:
        if self.val + self.test >= 1:
            raise ValueError(f"val + test must be < 1 so that train keeps records; got {self.val} + {self.test}")
        return self

    @property
    def train(self) -> float:
        return 1.0 - self.val - self.test


class WorkspaceConfig(StrictModel):
    """The contents of ``aifab.yaml``."""

    version: Literal[1] = 1
    store: StoreConfig = StoreConfig()
    artifacts: ArtifactsConfig = ArtifactsConfig()
    checks: ChecksConfig = ChecksConfig()
    thresholds: ThresholdsConfig = ThresholdsConfig()
    split: SplitConfig = SplitConfig()


def parse(model: type[M], data: Any, *, source: str = "config") -> M:
    """Validate ``data`` against ``model``; on failure raise one ConfigError naming every bad key.

    >>> parse(SplitConfig, {"tset": 0.1}, source="aifab.yaml")
    Traceback (most recent call last):
    ...
    aifab.core.errors.ConfigError: aifab.yaml: split config is invalid:
      - tset: unknown key (did you mean 'test'?)
    """
    if data is None:
        data = {}
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = [_describe(model, err) for err in exc.errors()]
        title = model.__name__.removesuffix("Config").lower() or model.__name__
        message = f"{source}: {title} config is invalid:\n" + "\n".join(f"  - {p}" for p in problems)
        raise ConfigError(message, details={"problems": problems}) from None


def load_yaml(model: type[M], path: str | Path) -> M:
    """Read a YAML file safely (``yaml.safe_load``) and validate it with :func:`parse`."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}, line {mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level; got {type(data).__name__}")
    return parse(model, data, source=str(path))


def _describe(model: type[BaseModel], err: Any) -> str:
    loc = [str(part) for part in err["loc"]]
    where = ".".join(loc) or "(top level)"
    if err["type"] == "extra_forbidden":
        valid = _valid_keys(model, loc[:-1])
        hint = nearest(loc[-1], valid)
        suffix = f" (did you mean {hint!r}?)" if hint else f" (valid keys: {', '.join(valid)})"
        return f"{where}: unknown key{suffix}"
    return f"{where}: {err['msg']}; got {err.get('input')!r}"


def _valid_keys(model: type[BaseModel], path: list[str]) -> list[str]:
    """The field names of the sub-model reached by ``path`` (best effort through nesting)."""
    current: Any = model
    for part in path:
        fields = getattr(current, "model_fields", None)
        if not fields or part not in fields:
            return []
        annotation = fields[part].annotation
        current = annotation if isinstance(annotation, type) else None
    fields = getattr(current, "model_fields", None) or {}
    return list(fields)


# --------------------------------------------------------------------------------------------
# The task spec: what `aifab train SPEC.yaml` reads. Every default is written into the run's
# saved effective spec, so a run can always be reproduced from what it stored.
# --------------------------------------------------------------------------------------------

TaskName = Literal["image-classification", "text-classification"]
IMAGE_ARCHS = (
    "resnet18",
    "resnet34",
    "resnet50",
    "efficientnet_b0",
    "mobilenet_v3_small",
    "mobilenet_v3_large",
    "smallcnn",
)
TEXT_ARCHS = ("textcnn", "bilstm", "gru", "transformer")


class ModelConfig(StrictModel):
    """Which network, and its shape. ``arch: auto`` picks by task and data size (recorded in the run).

    Text archs also accept ``pretrained:<local path or hub id>`` (a transformers encoder).
    ``pretrained`` for image archs: a local ``.safetensors``/``.pt`` file, or ``torchvision:<weights enum>``,
    ``timm:<name>`` or ``hf:<repo id>`` (the network is used only when a hub id is named).
    """

    arch: str = "auto"
    pretrained: str | None = None
    image_size: int | None = Field(default=None, ge=8, le=1024)
    max_length: int = Field(default=128, ge=4, le=4096)
    tokenizer: Literal["wordpiece", "bpe"] = "wordpiece"
    vocab_size: int = Field(default=20000, ge=100)
    embed_dim: int = Field(default=128, ge=8)
    hidden_dim: int = Field(default=128, ge=8)
    num_layers: int = Field(default=2, ge=1, le=48)
    num_heads: int = Field(default=4, ge=1)
    kernel_sizes: tuple[int, ...] = (3, 4, 5)
    num_filters: int = Field(default=100, ge=1)
    dropout: float = Field(default=0.1, ge=0, lt=1)
    pooling: Literal["mean", "cls", "max"] = "mean"
    freeze_encoder: bool = False

    @model_validator(mode="after")
    def _known_arch(self) -> ModelConfig:
        known = ("auto", *IMAGE_ARCHS, *TEXT_ARCHS)
        if self.arch not in known and not self.arch.startswith("pretrained:"):
            hint = nearest(self.arch, list(known))
            raise ValueError(
                f"unknown arch {self.arch!r}" + (f" (did you mean {hint!r}?)" if hint else "")
                + f"; valid: {', '.join(known)} or pretrained:<path or hub id>"
            )
        return self


class EarlyStoppingConfig(StrictModel):
    metric: str = "val.macro_f1"
    mode: Literal["max", "min"] = "max"
    patience: int = Field(default=3, ge=1)
    min_delta: float = Field(default=0.0, ge=0)


class AugmentConfig(StrictModel):
    """Image augmentation (torchvision transforms v2); off for text."""

    enabled: bool = True
    random_resized_crop: bool = False
    hflip: bool = False
    rotation_degrees: float = Field(default=0.0, ge=0, le=180)
    translate: float = Field(default=0.1, ge=0, le=0.5)
    color_jitter: float = Field(default=0.0, ge=0, le=1)


class TrainConfig(StrictModel):
    epochs: int | None = Field(default=None, ge=1, description="None = 3 for pretrained encoders, 10 otherwise")
    batch_size: int = Field(default=32, ge=1)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float | None = Field(default=None, gt=0, description="None = the arch's default")
    weight_decay: float = Field(default=0.01, ge=0)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    schedule: Literal["cosine", "onecycle", "step", "plateau", "none"] = "cosine"
    warmup_ratio: float = Field(default=0.06, ge=0, lt=1)
    step_size: int = Field(default=3, ge=1)
    gamma: float = Field(default=0.1, gt=0, le=1)
    label_smoothing: float = Field(default=0.0, ge=0, lt=1)
    grad_clip: float | None = Field(default=1.0, gt=0)
    amp: bool = True
    class_weights: Literal["auto", "balanced", "none"] = "auto"
    early_stopping: EarlyStoppingConfig | None = EarlyStoppingConfig()
    augment: AugmentConfig = AugmentConfig()
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_workers: int = Field(default=0, ge=0)
    max_minutes: float | None = Field(default=None, gt=0, description="stop after this much wall time")


class GateConfig(StrictModel):
    """The quality gate (the feedback-loop issue uses it): floors, no regression, a latency budget."""

    floors: dict[str, float] = Field(default_factory=dict, description='e.g. {"test.macro_f1": 0.85}')
    max_regression: float = Field(default=0.01, ge=0)
    max_class_regression: float = Field(default=0.05, ge=0)
    metric: str = "macro_f1"
    latency_p95_ms: float | None = Field(default=None, gt=0)
    require_clean_data: bool = False


class DriftConfig(StrictModel):
    """When served inputs have drifted from the training data far enough to raise the alarm."""

    alarm_psi: float = Field(default=0.2, gt=0, description="population stability index of any feature")
    alarm_p: float = Field(default=0.01, gt=0, lt=1, description="p-value of the embedding two-sample test")
    window: int = Field(default=500, ge=20, description="most recent served predictions compared")


class Spec(StrictModel):
    """One task: which data, which fields in and out, which model, how to train, which gate.

    >>> s = parse(Spec, {"task": "text-classification", "dataset": "sms"})
    >>> s.input_field, s.output_field, s.model.arch
    ('text', 'category', 'auto')
    """

    task: TaskName
    dataset: str = Field(description="NAME or NAME@VERSION")
    name: str | None = Field(default=None, description="model name; default: the dataset name")
    multi_label: bool = False
    input: Literal["text", "image", "auto"] = "auto"
    output: Literal["category", "categories", "auto"] = "auto"
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    gate: GateConfig = GateConfig()
    drift: DriftConfig = DriftConfig()

    @property
    def input_field(self) -> str:
        if self.input != "auto":
            return self.input
        return "image" if self.task == "image-classification" else "text"

    @property
    def output_field(self) -> str:
        if self.output != "auto":
            return self.output
        return "categories" if self.multi_label else "category"
