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

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

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


class IngestConfig(StrictModel):
    """Where ingest may read from, and how much an archive or a download may unpack.

    ``allowed_schemes``: URL schemes ``aifab ingest`` accepts (``file``: local paths and
    ``file://`` URLs); add ``https``, ``s3``, ``gs``... to read through fsspec. An archive
    (``.zip``, ``.tar``, ``.tar.gz``/``.tgz``, ``.tar.bz2``, ``.tar.xz``) is extracted
    under the workspace within the ``max_archive_*`` limits; the ratio is checked once an
    archive has unpacked more than 1 MiB (small files compress wildly, harmlessly).

    >>> IngestConfig(allowed_schemes=["file", "HTTPS"]).allowed_schemes
    ['file', 'https']
    """

    allowed_schemes: list[str] = Field(default_factory=lambda: ["file"])
    max_archive_bytes: int = Field(default=8 * 1024**3, gt=0, description="total uncompressed bytes of an archive")
    max_archive_members: int = Field(default=1_000_000, gt=0, description="files, folders and links in an archive")
    max_archive_ratio: float = Field(default=100.0, ge=1, description="uncompressed / compressed size")
    max_download_bytes: int = Field(default=8 * 1024**3, gt=0, description="bytes fetched from a URL")
    max_download_files: int = Field(default=1_000_000, gt=0, description="files fetched under a folder URL")

    @model_validator(mode="after")
    def _scheme_names(self) -> IngestConfig:
        import re

        schemes = [s.strip().lower() for s in self.allowed_schemes]
        bad = [s for s in schemes if not re.fullmatch(r"[a-z][a-z0-9+.-]*", s)]
        if bad:
            raise ValueError(f"not URL scheme names: {bad}; e.g. file, https, s3")
        if schemes != self.allowed_schemes:
            # validate_assignment re-runs this validator on the assignment: set the raw dict.
            self.__dict__["allowed_schemes"] = schemes
        return self


RATE_UNITS = {"s": 1.0, "sec": 1.0, "second": 1.0, "m": 60.0, "min": 60.0, "minute": 60.0, "h": 3600.0, "hour": 3600.0}


def parse_rate(text: str) -> tuple[float, int]:
    """A rate such as ``50/s`` or ``3000/min``: ``(requests per second, requests per unit)``.

    >>> parse_rate("50/s"), parse_rate("120/min")
    ((50.0, 50), (2.0, 120))
    >>> parse_rate("fast")
    Traceback (most recent call last):
    ...
    aifab.core.errors.ConfigError: rate 'fast': expected COUNT/UNIT with a whole COUNT > 0 and UNIT one of s, min, h (e.g. 50/s, 3000/min)
    """
    count, _, unit = str(text).strip().partition("/")
    if not count.strip().isdigit() or int(count) < 1 or unit.strip().lower() not in RATE_UNITS:
        raise ConfigError(
            f"rate {text!r}: expected COUNT/UNIT with a whole COUNT > 0 and UNIT one of s, min, h "
            "(e.g. 50/s, 3000/min)"
        )
    return int(count) / RATE_UNITS[unit.strip().lower()], int(count)


class ServeConfig(StrictModel):
    """The HTTP server's access policy (``serve:`` in ``aifab.yaml``; ``aifab serve`` options override it).

    ``rate_limit``: requests one API token may send, ``COUNT/UNIT`` (``50/s``, ``3000/min``), as a
    token bucket that holds ``rate_burst`` requests (default: COUNT) and refills at the rate; none:
    no limit. ``cors_origins``: browser origins (``https://shop.example.com``) allowed to call the
    API from their pages; empty: no cross-origin access.

    >>> ServeConfig(rate_limit="10/s", cors_origins=["https://shop.example.com"]).rate_limit
    '10/s'
    """

    rate_limit: str | None = Field(default=None, description="per API token, e.g. 50/s or 3000/min; none: off")
    rate_burst: int | None = Field(default=None, gt=0, description="requests at once (default: the rate's COUNT)")
    cors_origins: list[str] = Field(default_factory=list, description="scheme://host[:port] of each allowed origin")

    @field_validator("rate_limit")
    @classmethod
    def _rate(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                parse_rate(value)
            except ConfigError as exc:
                raise ValueError(exc.message) from None
        return value

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        import re

        bad = [o for o in value if not re.fullmatch(r"https?://[^/\s?#]+", o)]
        if bad:
            raise ValueError(f"not origins: {bad}; an origin is scheme://host[:port], e.g. https://shop.example.com")
        return value


class EncryptionConfig(StrictModel):
    """Encryption at rest (docs/encryption.md): where the master key is and its key id, never the key.

    Exactly one of ``key_file`` (a path outside the workspace) or ``key_env`` (an environment
    variable) when ``enabled``; ``key_id`` is the key's fingerprint, checked on every open.
    """

    enabled: bool = False
    key_file: str | None = None
    key_env: str | None = None
    key_id: str | None = Field(default=None, pattern=r"^[0-9a-f]{16}$")

    @model_validator(mode="after")
    def _one_key_source(self) -> EncryptionConfig:
        if self.enabled and (self.key_file is None) == (self.key_env is None):
            raise ValueError("an encrypted workspace needs exactly one of key_file or key_env")
        if self.enabled and self.key_id is None:
            raise ValueError("an encrypted workspace needs the key_id of its key")
        return self


class WorkspaceConfig(StrictModel):
    """The contents of ``aifab.yaml``."""

    version: Literal[1] = 1
    store: StoreConfig = StoreConfig()
    artifacts: ArtifactsConfig = ArtifactsConfig()
    checks: ChecksConfig = ChecksConfig()
    thresholds: ThresholdsConfig = ThresholdsConfig()
    split: SplitConfig = SplitConfig()
    ingest: IngestConfig = IngestConfig()
    serve: ServeConfig = ServeConfig()
    encryption: EncryptionConfig = EncryptionConfig()


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


class DistillConfig(StrictModel):
    """Knowledge distillation from a teacher's probabilities (``aifab distill``): the loss is
    ``alpha * KL(teacher_T || student_T) * T^2 + (1 - alpha) * CE(hard labels)``, where ``_T``
    is a softmax at ``temperature`` (a sigmoid per class for multi-label)."""

    temperature: float = Field(default=4.0, gt=0, le=100)
    alpha: float = Field(default=0.7, ge=0, le=1, description="weight of the soft (teacher) term")


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
    distill: DistillConfig | None = Field(default=None, description="set by aifab distill; needs a teacher")


class SearchParam(StrictModel):
    """One searched parameter: a range ``low``..``high`` (``log`` scale, ``step``) or ``choices``.

    Whole-number ``low``, ``high`` (and ``step``) draw integers; any other number draws floats.

    >>> SearchParam(low=1e-4, high=1e-2, log=True).log, SearchParam(choices=[0.1, 0.3]).choices
    (True, [0.1, 0.3])
    """

    low: int | float | None = None
    high: int | float | None = None
    log: bool = False
    step: int | float | None = Field(default=None, gt=0)
    choices: list[str | int | float | bool | None] | None = None

    @model_validator(mode="after")
    def _range_or_choices(self) -> SearchParam:
        if self.choices is not None:
            if self.low is not None or self.high is not None or self.step is not None or self.log:
                raise ValueError("give either choices or low/high (with log or step), not both")
            if not self.choices:
                raise ValueError("choices: empty; give at least one value")
            return self
        if self.low is None or self.high is None:
            raise ValueError("give low and high (a range) or choices (a list)")
        if not self.low < self.high:
            raise ValueError(f"low must be < high; got low={self.low}, high={self.high}")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0; got low={self.low}")
        if self.log and self.step is not None:
            raise ValueError("log and step cannot be combined (Optuna draws either on a log scale or on a grid)")
        return self


def tunable_paths() -> list[str]:
    """Every ``model.*`` and ``train.*`` setting a ``search.space`` may name (nested sections dotted).

    >>> "train.lr" in tunable_paths(), "train.early_stopping.patience" in tunable_paths()
    (True, True)
    """
    import typing

    def leaves(model: type[BaseModel], prefix: str) -> list[str]:
        out = []
        for key, info in model.model_fields.items():
            inner = [a for a in (info.annotation, *typing.get_args(info.annotation)) if isinstance(a, type)]
            section = next((a for a in inner if issubclass(a, BaseModel)), None)
            out += leaves(section, f"{prefix}{key}.") if section else [f"{prefix}{key}"]
        return out

    return leaves(ModelConfig, "model.") + leaves(TrainConfig, "train.")


class SearchConfig(StrictModel):
    """Hyperparameter search (``aifab tune``): Optuna's TPE sampler over ``space``, a median
    pruner on ``metric`` after each epoch, ``trials`` finished trials in all.

    ``metric`` (default ``val.`` + the gate's metric) is read at the epoch whose weights a trial
    keeps; ``val.loss`` and ``val.ece`` are minimised, every other metric maximised.

    >>> s = SearchConfig(space={"train.lr": {"low": 1e-4, "high": 1e-2, "log": True}})
    >>> s.trials, s.space["train.lr"].high
    (20, 0.01)
    """

    metric: str | None = Field(default=None, description="a val.* metric; default val.<gate.metric>")
    trials: int = Field(default=20, ge=1, description="finished trials wanted (aifab tune --trials overrides)")
    space: dict[str, SearchParam]
    prune: bool = True
    startup_trials: int = Field(default=5, ge=0, description="trials run in full before pruning starts")
    warmup_epochs: int = Field(default=1, ge=0, description="epochs of a trial never pruned")

    @field_validator("space")
    @classmethod
    def _known_paths(cls, value: dict[str, SearchParam]) -> dict[str, SearchParam]:
        if not value:
            raise ValueError('empty; name at least one setting, e.g. {"train.lr": {low: 1e-4, high: 1e-2, log: true}}')
        valid = tunable_paths()
        for path in value:
            if path not in valid:
                hint = nearest(path, valid)
                raise ValueError(
                    f"unknown parameter {path!r}" + (f" (did you mean {hint!r}?)" if hint else "")
                    + "; a path is model.<key> or train.<key>"
                )
        return value

    @field_validator("metric")
    @classmethod
    def _validation_metric(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("val."):
            raise ValueError(f"must be a validation metric such as val.macro_f1; got {value!r}")
        return value


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


class LoopConfig(StrictModel):
    """When ``aifab loop`` (or ``aifab serve --loop``) retrains a model by itself: once
    ``min_corrections`` new corrections have arrived since the last retrain attempt, or (with
    ``on_drift``) when the drift alarm fires and at least one new correction is there to learn
    from and the alarm rests on at least ``min_drift_predictions`` served predictions (a
    handful of inputs always looks drifted); never within ``cooldown_s`` seconds of the last
    attempt."""

    min_corrections: int = Field(default=50, ge=1, description="new corrections that trigger a retrain")
    cooldown_s: float = Field(default=3600.0, ge=0, description="seconds after a retrain attempt with no other")
    on_drift: bool = Field(default=True, description="the drift alarm triggers a retrain too")
    min_drift_predictions: int = Field(
        default=100, ge=1, description="served predictions a drift alarm must rest on to count"
    )


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
    loop: LoopConfig = LoopConfig()
    search: SearchConfig | None = None

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
