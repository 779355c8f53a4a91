"""Ensembles: several model versions answering as one.

Three ways to combine the members' probabilities ``(N, C)``:

- ``soft``: their mean;
- ``weighted``: their weighted mean (weights given, or fitted on validation data by
  :func:`fit_weights`);
- ``hard``: a majority vote. A member votes for its arg-max class (multi-label: for every class it
  gives ``>= 0.5``), with its weight (equal by default); an answer's scores are the vote shares.
  Ties go to the class with the higher mean probability: the scores carry a 1e-6 nudge of that
  mean, so the arg-max of :meth:`EnsembleModel.predict_proba` is the decision.

Members must agree on task, input kind and multi-label; their labels must be the same set (in
any order: columns are matched by name). An ensemble is packaged as one model version whose files
hold every member's files under ``members/<i>/`` and an ``ensemble.json`` (see
:func:`load_ensemble`), so it loads, serves and evaluates like any other version.

>>> import numpy as np
>>> a, b = np.array([[0.9, 0.1]]), np.array([[0.3, 0.7]])
>>> combine([a, b], method="soft").round(2).tolist()
[[0.6, 0.4]]
>>> combine([a, b], method="weighted", weights=[1, 3]).round(2).tolist()
[[0.45, 0.55]]
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from aifab.core.errors import ConfigError, InputError, IntegrityError
from aifab.core.types import ModelVersion

__all__ = [
    "MANIFEST",
    "METHODS",
    "EnsembleModel",
    "Member",
    "check_members",
    "check_weights",
    "combine",
    "fit_weights",
    "load_ensemble",
    "member_files",
]

METHODS = ("soft", "hard", "weighted")
MANIFEST = "ensemble.json"
"""The file whose presence makes a model version an ensemble."""
_TIE_NUDGE = 1e-6
_MAX_GRID = 5000  # weight vectors fit_weights tries at most


@dataclass(frozen=True)
class Member:
    """What :func:`check_members` compares about one member."""

    ref: str
    task: str
    kind: str
    multi_label: bool
    labels: tuple[str, ...]


def check_members(members: Sequence[Member]) -> list[str]:
    """The ensemble's labels (the first member's order), or InputError naming the member that
    differs from the first and how.

    >>> m = lambda ref, labels, kind="text": Member(ref, "text-classification", kind, False, labels)
    >>> check_members([m("a@1", ("x", "y")), m("b@1", ("y", "x"))])
    ['x', 'y']
    >>> check_members([m("a@1", ("x", "y")), m("b@1", ("x", "z"))])
    Traceback (most recent call last):
    ...
    aifab.core.errors.InputError: ensemble member b@1: labels differ from a@1's: missing ['y'], extra ['z']
    """
    if len(members) < 2:
        raise ConfigError(f"an ensemble needs at least 2 members; got {len(members)}")
    refs = [m.ref for m in members]
    repeated = sorted({r for r in refs if refs.count(r) > 1})
    if repeated:
        raise ConfigError(f"ensemble members listed more than once: {repeated}; give a weight instead")
    first = members[0]
    for m in members[1:]:
        for what, mine, theirs in (
            ("task", m.task, first.task),
            ("input kind", m.kind, first.kind),
            ("multi-label", m.multi_label, first.multi_label),
        ):
            if mine != theirs:
                raise InputError(f"ensemble member {m.ref}: {what} is {mine!r}, but {first.ref}'s is {theirs!r}")
        if set(m.labels) != set(first.labels) or len(m.labels) != len(first.labels):
            missing = sorted(set(first.labels) - set(m.labels))
            extra = sorted(set(m.labels) - set(first.labels))
            raise InputError(
                f"ensemble member {m.ref}: labels differ from {first.ref}'s: missing {missing}, extra {extra}"
            )
    return list(first.labels)


def check_weights(weights: Sequence[float] | None, members: int, *, method: str) -> list[float]:
    """Weights normalised to sum to 1 (equal ones when None); ConfigError when they do not fit.

    >>> check_weights([1, 3], 2, method="weighted")
    [0.25, 0.75]
    >>> check_weights(None, 4, method="hard")
    [0.25, 0.25, 0.25, 0.25]
    """
    if method not in METHODS:
        raise ConfigError(f"The 'method' parameter of an ensemble must be one of {', '.join(METHODS)}. Got {method!r} instead.")
    if weights is None:
        return [1.0 / members] * members
    values = [float(w) for w in weights]
    if method == "soft" and len(set(values)) > 1:
        raise ConfigError("soft averaging weighs every member equally; give weights with method 'weighted' (or 'hard')")
    if len(values) != members:
        raise ConfigError(f"weights: {len(values)} given for {members} members; give one per member, in order")
    if any(not math.isfinite(w) or w < 0 for w in values) or sum(values) <= 0:
        raise ConfigError(f"weights: must be finite, >= 0 and not all 0; got {values}")
    total = sum(values)
    return [w / total for w in values]


def combine(
    member_probs: Sequence[Any],
    *,
    method: str,
    weights: Sequence[float] | None = None,
    multi_label: bool = False,
) -> np.ndarray:
    """The ensemble's probabilities ``(N, C)`` from each member's ``(N, C)``, columns aligned.

    >>> import numpy as np
    >>> a, b, c = np.array([[0.6, 0.4]]), np.array([[0.6, 0.4]]), np.array([[0.0, 1.0]])
    >>> combine([a, b, c], method="hard").round(3).tolist()  # two votes of three for class 0
    [[0.667, 0.333]]
    """
    stack = np.stack([np.asarray(p, dtype=np.float64) for p in member_probs])  # (M, N, C)
    if stack.ndim != 3:
        raise InputError(f"member probabilities must each be (N, C); got shape {stack.shape[1:]}")
    w = np.asarray(check_weights(weights, len(stack), method=method))
    mean = np.einsum("m,mnc->nc", w, stack)  # soft: w is equal
    if method in ("soft", "weighted"):
        return mean
    if multi_label:
        votes = np.einsum("m,mnc->nc", w, (stack >= 0.5).astype(np.float64))
        # A tie (exactly half the votes) goes the way of the mean probability.
        return np.clip(votes + _TIE_NUDGE * (mean - 0.5), 0.0, 1.0)
    classes = stack.shape[2]
    votes = np.einsum("m,mnc->nc", w, np.eye(classes)[stack.argmax(axis=2)])
    scores = votes + _TIE_NUDGE * mean
    return scores / scores.sum(axis=1, keepdims=True)


def fit_weights(member_probs: Sequence[Any], targets: Any, *, multi_label: bool = False) -> list[float]:
    """Weights for ``weighted`` averaging: of a grid over the simplex (steps of 1/20, coarser for
    many members: at most 5000 points), those whose weighted mean has the lowest log loss on
    ``targets`` (class indices ``(N,)``; multi-label: a 0/1 matrix ``(N, C)``).

    >>> import numpy as np
    >>> good = np.array([[0.9, 0.1], [0.2, 0.8]]); bad = np.array([[0.4, 0.6], [0.6, 0.4]])
    >>> fit_weights([good, bad], [0, 1])
    [1.0, 0.0]
    """
    stack = np.stack([np.asarray(p, dtype=np.float64) for p in member_probs])  # (M, N, C)
    members, rows, _ = stack.shape
    y = np.asarray(targets)
    if rows == 0 or len(y) != rows:
        raise InputError(f"fit_weights: {len(y)} targets for {rows} rows of probabilities; need the same, > 0")
    if multi_label:
        # Per-element probability of what happened: p where the class is on, 1 - p where it is off.
        hit = np.where(y.astype(bool)[None], stack, 1.0 - stack).reshape(members, -1)
    else:
        hit = stack[:, np.arange(rows), y.astype(np.int64)]  # (M, N): each member's p of the truth
    grid = _simplex_grid(members)  # (G, M)
    losses = np.concatenate(
        [-np.log(np.clip(chunk @ hit, 1e-12, None)).mean(axis=1) for chunk in np.array_split(grid, max(len(grid) // 512, 1))]
    )
    best = grid[int(np.argmin(losses))]
    return [round(float(w), 6) for w in best]


def member_files(index: int, files: dict[str, str]) -> dict[str, str]:
    """A member's file map under the ensemble's prefix for it (the blobs are shared by digest).

    >>> member_files(1, {"model.json": "ab", "weights.safetensors": "cd"})
    {'members/1/model.json': 'ab', 'members/1/weights.safetensors': 'cd'}
    """
    return {f"{_prefix(index)}{name}": digest for name, digest in sorted(files.items())}


class EnsembleModel:
    """An ensemble version in memory, with the interface of
    :class:`aifab.registry.versions.LoadedModel`: ``version``, ``labels``, ``kind``,
    ``preprocessing``, ``predict_proba``, ``predict``. ``members`` are loaded model versions
    (anything with ``labels``, ``kind``, ``predict_proba`` and ``predict``).
    """

    def __init__(
        self,
        *,
        version: ModelVersion,
        members: Sequence[Any],
        method: str,
        weights: Sequence[float] | None,
        labels: Sequence[str],
        multi_label: bool,
    ) -> None:
        self.version = version
        self.members = list(members)
        self.method = method
        self.weights = check_weights(weights, len(self.members), method=method)
        self.multi_label = bool(multi_label)
        self._labels = list(labels)
        # Columns of each member's output, in the ensemble's label order (matched by name).
        self._columns = [_columns(m, self._labels) for m in self.members]

    @property
    def labels(self) -> list[str]:
        return list(self._labels)

    @property
    def kind(self) -> str:
        return str(self.members[0].kind)

    @property
    def preprocessing(self) -> dict[str, Any]:
        return {"kind": self.kind, "labels": self.labels, "multi_label": self.multi_label, "ensemble": self.method}

    @property
    def model(self) -> Any:
        """Refused: code that needs one network (embeddings, exports) gets a clear error."""
        raise self._not_one("network")

    @property
    def tokenizer_json(self) -> str | None:
        raise self._not_one("tokenizer")

    def _not_one(self, what: str) -> ConfigError:
        refs = ", ".join(m.version.ref for m in self.members)
        return ConfigError(f"{self.version.ref} is an ensemble of {len(self.members)} models with no single {what}; use a member ({refs})")

    def member_probas(self, inputs: Sequence[Any], *, batch_size: int = 64) -> list[np.ndarray]:
        """Each member's probabilities ``(N, C)``, columns in the ensemble's label order."""
        inputs = list(inputs)
        return [m.predict_proba(inputs, batch_size=batch_size)[:, cols] for m, cols in zip(self.members, self._columns)]

    def predict_proba(self, inputs: Sequence[Any], *, batch_size: int = 64) -> np.ndarray:
        """The combined probabilities ``(N, C)`` of the members' (see :func:`combine`)."""
        probs = self.member_probas(inputs, batch_size=batch_size)
        return combine(probs, method=self.method, weights=self.weights, multi_label=self.multi_label)

    def predict(self, inputs: Sequence[Any], *, batch_size: int = 64, threshold: float = 0.5) -> list[dict[str, Any]]:
        """One answer per input, shaped as a single model's: ``label`` (``labels``) and ``scores``.

        Inputs are what the members take (image bytes or paths, strings); each member reads them.
        """
        inputs = list(inputs)
        probs = []
        for member in self.members:
            answers = member.predict(inputs, batch_size=batch_size)
            probs.append(np.array([[a["scores"][label] for label in self._labels] for a in answers]).reshape(len(inputs), -1))
        combined = combine(probs, method=self.method, weights=self.weights, multi_label=self.multi_label)
        out = []
        for row in combined:
            scores = {label: float(p) for label, p in zip(self._labels, row)}
            if self.multi_label:
                out.append({"labels": [label for label, p in scores.items() if p >= threshold], "scores": scores})
            else:
                out.append({"label": self._labels[int(np.argmax(row))], "scores": scores})
        return out


def load_ensemble(
    version: ModelVersion, read: Callable[[str], bytes], *, load_member: Callable[[ModelVersion, Callable[[str], bytes]], Any]
) -> EnsembleModel:
    """Rebuild an ensemble version: each member from its own files under ``members/<i>/`` (so an
    ensemble never depends on its members' versions still existing), combined as ``ensemble.json``
    says. ``load_member(version, read)`` loads one member (a plain version or another ensemble).
    """
    try:
        manifest = json.loads(read(version.files[MANIFEST]))
        entries = manifest["members"]
        method, weights, labels = manifest["method"], manifest["weights"], manifest["labels"]
    except (KeyError, TypeError, ValueError) as exc:
        raise IntegrityError(f"{version.ref}: {MANIFEST} is not a valid ensemble manifest ({exc})") from None
    members = []
    for index, entry in enumerate(entries):
        prefix = _prefix(index)
        files = {name[len(prefix):]: digest for name, digest in version.files.items() if name.startswith(prefix)}
        if not files:
            raise IntegrityError(f"{version.ref}: ensemble member {index} ({entry.get('ref')}) has no files under {prefix}")
        member = ModelVersion(
            name=str(entry.get("name", version.name)),
            version=int(entry.get("version", 0)),
            files=files,
            task=version.task,
            created_at=version.created_at,
        )
        members.append(load_member(member, read))
    return EnsembleModel(
        version=version,
        members=members,
        method=method,
        weights=weights,
        labels=labels,
        multi_label=bool(manifest.get("multi_label", False)),
    )


# ---------------------------------------------------------------------------------------------


def _prefix(index: int) -> str:
    return f"members/{index}/"


def _columns(member: Any, labels: list[str]) -> list[int]:
    own = list(member.labels)
    if sorted(own) != sorted(labels):
        ref = getattr(getattr(member, "version", None), "ref", "?")
        raise InputError(f"ensemble member {ref}: labels {own} are not the ensemble's {labels}")
    return [own.index(label) for label in labels]


def _simplex_grid(members: int) -> np.ndarray:
    """Every weight vector with entries in steps of 1/k summing to 1, for the finest k (<= 20)
    that keeps the grid within _MAX_GRID points (stars and bars)."""
    k = next(k for k in (20, 10, 5, 4, 3, 2, 1) if math.comb(k + members - 1, members - 1) <= _MAX_GRID)
    rows = []
    for bars in itertools.combinations(range(k + members - 1), members - 1):
        edges = (-1, *bars, k + members - 1)
        rows.append([edges[i + 1] - edges[i] - 1 for i in range(members)])
    return np.asarray(rows, dtype=np.float64) / k
