"""Drift: are the inputs a model serves still like the data it was trained on?

Two halves, both pure numpy over plain arrays (the pipeline feeds them):

* :func:`reference_stats` summarises the training data once, as a JSON-ready dict: the
  distribution of the predicted class, a 10-bin histogram of the confidence (the top score),
  decile bins of the input length (characters of a text, pixels of an image) and a seeded
  sample of at most 500 penultimate-layer embeddings (:func:`embed`).
* :func:`drift_report` compares a window of served inputs with it:

  - PSI (population stability index) per feature, on the reference's bins:
    ``sum((a - e) * ln(a / e))`` over bins, with reference share ``e`` and served share ``a``
    (both floored at 1e-4 so an empty bin does not give infinity). Rule of thumb:
    < 0.1 stable, 0.1 - 0.2 moderate, > 0.2 a real shift (``alarm_psi``, default 0.2);
  - a two-sample test on the embeddings: the unbiased squared MMD (maximum mean discrepancy)
    with an RBF kernel ``k(x, y) = exp(-|x - y|^2 / m)``, ``m`` the median squared distance
    between all pooled points (the median heuristic), and a permutation p-value
    ``(1 + #{permuted MMD >= observed}) / (1 + permutations)`` over at most 200 label
    shuffles drawn from a fixed seed -- the same inputs always give the same p-value.

  ``alarm`` is true when any PSI exceeds ``alarm_psi`` or the MMD p-value is below
  ``alarm_p``; ``reasons`` says which.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> train = rng.dirichlet([5, 1], size=300)
>>> ref = reference_stats(train, ["ham", "spam"], lengths=rng.integers(10, 80, 300),
...                       embeddings=rng.normal(size=(300, 4)))
>>> same = drift_report(ref, probs=rng.dirichlet([5, 1], size=200),
...                     lengths=rng.integers(10, 80, 200), embeddings=rng.normal(size=(200, 4)))
>>> same["alarm"]
False
>>> moved = drift_report(ref, probs=rng.dirichlet([1, 5], size=200),
...                      lengths=rng.integers(200, 400, 200), embeddings=rng.normal(2, 1, size=(200, 4)))
>>> moved["alarm"], sorted(moved["features"]), moved["embeddings"]["p_value"] < 0.01
(True, ['confidence', 'length', 'predicted_class'], True)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from aifab.core.errors import ConfigError, InputError

REFERENCE_VERSION = 1
EMBEDDING_SAMPLE = 500
MAX_PERMUTATIONS = 200
_CONFIDENCE_CUTS = [round(0.1 * i, 1) for i in range(1, 10)]  # 10 equal bins over [0, 1]
_FLOOR = 1e-4


def reference_stats(
    probs: np.ndarray,
    labels: Sequence[str],
    *,
    lengths: np.ndarray | Sequence[float] | None = None,
    embeddings: np.ndarray | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Summarise a model's answers on its training data (JSON-ready; see the module docstring).

    ``probs`` is ``(N, C)`` with columns in ``labels`` order; ``lengths`` one number per input
    (or None); ``embeddings`` ``(N, D)`` from :func:`embed` (or None). At most 500 embedding
    rows are kept, drawn with ``seed``.

    >>> import numpy as np
    >>> ref = reference_stats(np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3]]), ["a", "b"])
    >>> ref["predicted_class"]["proportions"], [round(x, 2) for x in ref["confidence"]["proportions"]]
    ([0.6666666666666666, 0.3333333333333333], [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.33, 0.33, 0.33, 0.0])
    """
    p = _probs(probs, len(labels), "probs")
    if p.shape[0] == 0:
        raise InputError("reference_stats: no rows in probs; the reference needs at least one input")
    out: dict[str, Any] = {
        "version": REFERENCE_VERSION,
        "labels": list(labels),
        "count": int(p.shape[0]),
        "predicted_class": {"proportions": _class_shares(p).tolist()},
        "confidence": {
            "cuts": list(_CONFIDENCE_CUTS),
            "proportions": _shares(p.max(axis=1), _CONFIDENCE_CUTS).tolist(),
        },
        "length": None,
        "embeddings": None,
    }
    if lengths is not None:
        x = _vector(lengths, p.shape[0], "lengths")
        cuts = np.unique(np.quantile(x, np.linspace(0.1, 0.9, 9))).tolist()
        out["length"] = {"cuts": cuts, "proportions": _shares(x, cuts).tolist()}
    if embeddings is not None:
        e = _matrix(embeddings, p.shape[0], "embeddings")
        sample = _sample(e, EMBEDDING_SAMPLE, seed)
        out["embeddings"] = {"dim": int(e.shape[1]), "sample": np.round(sample, 6).tolist()}
    return out


def drift_report(
    reference: dict[str, Any],
    *,
    probs: np.ndarray,
    lengths: np.ndarray | Sequence[float] | None = None,
    embeddings: np.ndarray | None = None,
    alarm_psi: float = 0.2,
    alarm_p: float = 0.01,
    permutations: int = MAX_PERMUTATIONS,
    seed: int = 0,
) -> dict[str, Any]:
    """Compare served inputs with a :func:`reference_stats` summary; every number is in the result.

    ``probs`` is ``(N, C)`` in the reference's label order; ``lengths`` and ``embeddings`` as in
    :func:`reference_stats` (each compared only when both sides have it; ``embeddings`` may hold
    fewer rows than ``probs`` when some served inputs were not kept). At most 500 served
    embeddings are compared, drawn with ``seed``; ``permutations`` is capped at 200.

    >>> import numpy as np
    >>> ref = reference_stats(np.array([[0.9, 0.1]] * 50 + [[0.3, 0.7]] * 50), ["a", "b"])
    >>> report = drift_report(ref, probs=np.array([[0.3, 0.7]] * 100))
    >>> round(report["features"]["predicted_class"]["psi"], 2), report["alarm"], report["reasons"][0]
    (4.6, True, 'predicted_class: PSI 4.604 > 0.2')
    """
    for name, value, low, high in (("alarm_psi", alarm_psi, 0.0, None), ("alarm_p", alarm_p, 0.0, 1.0)):
        if not isinstance(value, (int, float)) or value <= low or (high is not None and value >= high):
            bound = f"> {low}" + (f" and < {high}" if high is not None else "")
            raise ConfigError(
                f"The {name!r} parameter of drift_report must be a number {bound}. Got {value!r} instead."
            )
    if isinstance(permutations, bool) or not isinstance(permutations, int) or permutations < 1:
        raise ConfigError(
            "The 'permutations' parameter of drift_report must be an integer >= 1. "
            f"Got {permutations!r} instead."
        )
    labels = list(reference.get("labels") or [])
    p = _probs(probs, len(labels), "probs")
    report: dict[str, Any] = {
        "count": int(p.shape[0]),
        "reference_count": int(reference.get("count", 0)),
        "thresholds": {"psi": float(alarm_psi), "p_value": float(alarm_p)},
        "features": {},
        "embeddings": None,
        "alarm": False,
        "reasons": [],
    }
    if p.shape[0] == 0:
        report["reasons"] = []
        report["note"] = "no served inputs in the window; nothing to compare"
        return report
    features: dict[str, Any] = report["features"]
    features["predicted_class"] = _psi_entry(
        reference["predicted_class"]["proportions"], _class_shares(p), names=labels
    )
    conf = reference["confidence"]
    features["confidence"] = _psi_entry(conf["proportions"], _shares(p.max(axis=1), conf["cuts"]), cuts=conf["cuts"])
    if lengths is not None and reference.get("length"):
        x = _vector(lengths, None, "lengths")
        if x.size:
            ref_len = reference["length"]
            features["length"] = _psi_entry(ref_len["proportions"], _shares(x, ref_len["cuts"]), cuts=ref_len["cuts"])
    if embeddings is not None and reference.get("embeddings"):
        ref_emb = np.asarray(reference["embeddings"]["sample"], dtype=np.float64)
        cur = _matrix(embeddings, None, "embeddings")
        if cur.shape[0] and cur.shape[1] != ref_emb.shape[1]:
            raise InputError(
                f"embeddings: {cur.shape[1]} columns but the reference has {ref_emb.shape[1]}; "
                "embed with the model the reference was made from"
            )
        report["embeddings"] = mmd_test(
            ref_emb, _sample(cur, EMBEDDING_SAMPLE, seed), permutations=min(permutations, MAX_PERMUTATIONS), seed=seed
        )
    reasons = [
        f"{name}: PSI {entry['psi']:.3f} > {alarm_psi}"
        for name, entry in features.items()
        if entry["psi"] > alarm_psi
    ]
    emb = report["embeddings"]
    if emb is not None and emb["p_value"] is not None and emb["p_value"] < alarm_p:
        reasons.append(f"embeddings: MMD p-value {emb['p_value']:.4f} < {alarm_p} (MMD^2 {emb['mmd2']:.4g})")
    report["alarm"] = bool(reasons)
    report["reasons"] = reasons
    return report


def psi(expected: Sequence[float], actual: Sequence[float]) -> float:
    """Population stability index between two distributions over the same bins.

    >>> psi([0.5, 0.5], [0.5, 0.5])
    0.0
    >>> round(psi([0.5, 0.5], [0.9, 0.1]), 3)
    0.879
    """
    e = np.maximum(np.asarray(expected, dtype=np.float64), _FLOOR)
    a = np.maximum(np.asarray(actual, dtype=np.float64), _FLOOR)
    if e.shape != a.shape:
        raise InputError(f"psi: {e.size} reference bins but {a.size} served bins; they must match")
    return float(np.sum((a - e) * np.log(a / e)))


def mmd_test(x: np.ndarray, y: np.ndarray, *, permutations: int = MAX_PERMUTATIONS, seed: int = 0) -> dict[str, Any]:
    """Two-sample test: unbiased squared MMD with an RBF kernel (median heuristic) and a
    permutation p-value from a fixed seed. Fewer than 2 rows on a side gives no test (None).

    >>> import numpy as np
    >>> rng = np.random.default_rng(1)
    >>> a, b = rng.normal(size=(60, 3)), rng.normal(size=(60, 3))
    >>> mmd_test(a, b)["p_value"] > 0.05, mmd_test(a, b + 3)["p_value"] < 0.01
    (True, True)
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    m, n = len(x), len(y)
    out: dict[str, Any] = {"mmd2": None, "p_value": None, "bandwidth": None, "permutations": 0,
                           "reference_n": m, "current_n": n}
    if m < 2 or n < 2:
        out["note"] = "too few embeddings on one side (need 2 or more each)"
        return out
    z = np.vstack([x, y])
    sq = np.sum(z * z, axis=1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * (z @ z.T), 0.0)
    upper = d2[np.triu_indices(len(z), k=1)]
    positive = upper[upper > 0]
    scale = float(np.median(positive)) if positive.size else 1.0
    k = np.exp(-d2 / scale)
    # Membership vectors, one column per draw: column 0 is the real split, the rest shuffles.
    rng = np.random.default_rng(seed)
    member = np.zeros((m + n, permutations + 1))
    member[:m, 0] = 1.0
    for j in range(1, permutations + 1):
        member[rng.permutation(m + n)[:m], j] = 1.0
    stats = _mmd2_columns(k, member, m, n)
    observed = float(stats[0])
    p_value = (1.0 + float(np.sum(stats[1:] >= observed - 1e-12))) / (1.0 + permutations)
    out.update(mmd2=observed, p_value=p_value, bandwidth=float(np.sqrt(scale / 2.0)), permutations=permutations)
    return out


def embed(loaded_model: Any, inputs: Sequence[Any], *, batch_size: int = 64, device: str = "cpu") -> np.ndarray:
    """Penultimate-layer embeddings ``(N, D)`` of a loaded model version (``forward_features``),
    with the preprocessing it was trained and served with: texts are strings, images bytes.

    ``loaded_model`` is what ``Workspace.load_model`` returns (it needs ``model``,
    ``preprocessing`` and ``tokenizer_json``).

    >>> # embed(ws.load_model("sms@production"), ["WIN a prize", "see you at 5"]).shape -> (2, 300)
    """
    import torch

    from aifab.data.transforms import ImagePreprocessor, TextPreprocessor
    from aifab.models.heads import penultimate

    if batch_size < 1:
        raise ConfigError(f"The 'batch_size' parameter of embed must be an integer >= 1. Got {batch_size!r} instead.")
    if isinstance(inputs, (str, bytes)):
        raise InputError("embed takes a sequence of inputs, not one")
    pre = loaded_model.preprocessing
    kind = pre.get("kind")
    encoder: Any
    if kind == "text":
        if loaded_model.tokenizer_json is None:
            raise ConfigError("preprocessing: a text model needs its tokenizer.json; got none")
        encoder, want = TextPreprocessor.from_files(loaded_model.tokenizer_json, pre), str
    elif kind == "image":
        encoder, want = ImagePreprocessor.from_dict(pre), (bytes, bytearray, memoryview)
    else:
        raise ConfigError(f"preprocessing: kind must be 'image' or 'text'; got {kind!r}")
    for row, item in enumerate(inputs):
        if not isinstance(item, want):
            expected = "a string" if kind == "text" else "image bytes"
            raise InputError(f"input {row}: expected {expected}; got {type(item).__name__}")
    model = loaded_model.model.to(device).eval()
    chunks = []
    with torch.no_grad():
        for start in range(0, len(inputs), batch_size):
            items = list(inputs[start : start + batch_size])
            if kind == "text":
                ids, mask = encoder(items)
                features = penultimate(model, ids.to(device), mask.to(device))  # (B, D)
            else:
                features = penultimate(model, encoder([bytes(x) for x in items]).to(device))  # (B, D)
            chunks.append(features.double().cpu().numpy())
    if not chunks:
        return np.zeros((0, int(getattr(model, "feature_dim", 0))), dtype=np.float64)
    return np.concatenate(chunks)


# ---------------------------------------------------------------------------------------------


def _mmd2_columns(k: np.ndarray, member: np.ndarray, m: int, n: int) -> np.ndarray:
    """Unbiased MMD^2 for every membership column at once (one matrix product).

    With s the 0/1 vector of the first sample and t = 1 - s: s'Ks sums the first sample's
    kernel block, t'Kt the second's, s'Kt the cross block; the diagonal (k(x, x) = 1) is
    left out of the within-sample means.
    """
    other = 1.0 - member
    ks = k @ member
    kt = k @ other
    xx = np.sum(member * ks, axis=0)
    yy = np.sum(other * kt, axis=0)
    xy = np.sum(other * ks, axis=0)
    return (xx - m) / (m * (m - 1)) + (yy - n) / (n * (n - 1)) - 2.0 * xy / (m * n)


def _psi_entry(expected: Sequence[float], actual: np.ndarray, **bins: Any) -> dict[str, Any]:
    return {"psi": psi(expected, actual), "reference": list(expected), "current": actual.tolist(), **bins}


def _class_shares(p: np.ndarray) -> np.ndarray:
    counts = np.bincount(p.argmax(axis=1), minlength=p.shape[1]) if p.shape[0] else np.zeros(p.shape[1])
    return counts / max(p.shape[0], 1)


def _shares(x: np.ndarray, cuts: Sequence[float]) -> np.ndarray:
    """Share of values per bin; bin i holds cuts[i-1] < x <= cuts[i] (open at both ends)."""
    index = np.searchsorted(np.asarray(cuts, dtype=np.float64), x, side="left")
    return np.bincount(index, minlength=len(cuts) + 1) / max(len(x), 1)


def _sample(e: np.ndarray, size: int, seed: int) -> np.ndarray:
    if len(e) <= size:
        return e
    rows = np.sort(np.random.default_rng(seed).choice(len(e), size=size, replace=False))
    return e[rows]


def _probs(probs: Any, width: int, name: str) -> np.ndarray:
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != width:
        raise InputError(
            f"{name}: expected an (N, {width}) array of class scores, one column per label; "
            f"got shape {p.shape}"
        )
    if not np.all(np.isfinite(p)):
        raise InputError(f"{name}: holds NaN or infinite scores")
    return p


def _vector(values: Any, n: int | None, name: str) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    if n is not None and x.size != n:
        raise InputError(f"{name}: {x.size} values for {n} inputs; expected one per input")
    if not np.all(np.isfinite(x)):
        raise InputError(f"{name}: holds NaN or infinite values")
    return x


def _matrix(values: Any, n: int | None, name: str) -> np.ndarray:
    e = np.asarray(values, dtype=np.float64)
    if e.ndim != 2 or (n is not None and e.shape[0] != n):
        rows = "N" if n is None else str(n)
        raise InputError(f"{name}: expected an ({rows}, D) array, one row per input; got shape {e.shape}")
    if not np.all(np.isfinite(e)):
        raise InputError(f"{name}: holds NaN or infinite values")
    return e
