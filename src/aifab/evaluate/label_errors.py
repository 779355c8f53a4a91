"""Find examples whose given label is probably wrong, with confident learning.

Written from the paper — Northcutt, Jiang & Chuang, "Confident Learning: Estimating Uncertainty
in Dataset Labels", JAIR 70 (2021) — not from any library (cleanlab is AGPL-3.0 and is not used).
Notation: ``ỹ`` is the given (noisy) label, ``y*`` the unknown true label, ``p̂_j(x)`` the
out-of-sample predicted probability of class ``j`` (get it with :func:`out_of_fold_probs`).

1. Per-class thresholds: ``t_j`` = mean of ``p̂_j(x)`` over the examples labelled ``j``.
2. Confident joint ``C[i][j]``: examples labelled ``i`` whose ``p̂_j(x) >= t_j``; when several
   classes pass, the one with the largest ``p̂`` wins; an example with none counts nowhere.
3. Calibrate (paper eq. 2): rescale each row of ``C`` to the number of examples labelled ``i``,
   then divide by the total, giving the joint ``Q[i][j] ≈ P(ỹ=i, y*=j)``.
4. Pick the issues, by one of two methods of the paper:

   * ``confident_joint_offdiag`` (the paper's ``C_ỹ,y*``): every example counted off the
     diagonal of ``C``;
   * ``prune_by_noise_rate`` (the paper's PBNR, the default): for each off-diagonal cell
     ``(i, j)``, the ``round(Q[i][j] * N)`` examples labelled ``i`` with the largest margin
     ``p̂_j(x) - p̂_i(x)``.

The functions are pure — arrays in, arrays out — so the data gate and the pipeline can run them
without a neural network: :func:`text_features` / :func:`image_features` plus
:func:`out_of_fold_probs` (a cross-validated logistic regression) give the probabilities.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from aifab.core.errors import InputError, check_choice

__all__ = [
    "LabelIssues",
    "find_label_issues",
    "image_features",
    "out_of_fold_probs",
    "text_features",
]

Method = Literal["prune_by_noise_rate", "confident_joint_offdiag"]
_METHODS = ("prune_by_noise_rate", "confident_joint_offdiag")


@dataclass(frozen=True, eq=False)
class LabelIssues:
    """What :func:`find_label_issues` found.

    The three arrays are aligned, one entry per suspected example, most suspicious first
    (lowest ``self_confidence``, ties by index):

    * ``indices`` — row numbers into the inputs;
    * ``suggested_labels`` — the arg-max class of ``pred_probs`` for that row (it can equal the
      given label under ``prune_by_noise_rate``, which counts by noise rate, not by arg-max);
    * ``self_confidence`` — ``pred_probs[row, given label]``.

    Matrices are ``C x C`` lists, rows = given label ``ỹ = i``, columns = likely true label
    ``y* = j``: ``confident_joint`` (counts), ``joint`` (calibrated, sums to 1), and
    ``noise_matrix`` = ``P(ỹ = i | y* = j)`` (each column sums to 1; a class never confidently
    seen gets the identity column). ``thresholds`` are the per-class ``t_j`` (``None`` for a class
    with no examples).
    """

    indices: np.ndarray
    suggested_labels: np.ndarray
    self_confidence: np.ndarray
    confident_joint: list[list[int]]
    joint: list[list[float]]
    noise_matrix: list[list[float]]
    thresholds: list[float | None]
    method: str

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (for the data-gate report)."""
        return {
            "method": self.method,
            "indices": self.indices.tolist(),
            "suggested_labels": self.suggested_labels.tolist(),
            "self_confidence": self.self_confidence.tolist(),
            "confident_joint": self.confident_joint,
            "joint": self.joint,
            "noise_matrix": self.noise_matrix,
            "thresholds": self.thresholds,
        }


def _validate(labels: Any, pred_probs: Any) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels)
    p = np.asarray(pred_probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 2:
        raise InputError(f"pred_probs: must be an (N, C) matrix with C >= 2; got shape {p.shape}")
    if y.ndim != 1 or y.shape[0] != p.shape[0]:
        raise InputError(
            f"labels: must have shape ({p.shape[0]},) to match pred_probs; got {y.shape}"
        )
    if y.shape[0] == 0:
        raise InputError("labels: no examples; expected at least one")
    if not np.issubdtype(y.dtype, np.integer):
        raise InputError(f"labels: must be integer class indices; got dtype {y.dtype}")
    bad = np.flatnonzero((y < 0) | (y >= p.shape[1]))
    if bad.size:
        raise InputError(
            f"labels: row {int(bad[0])}: class {int(y[bad[0]])} is outside 0..{p.shape[1] - 1}"
        )
    if not np.all(np.isfinite(p)) or p.min() < 0.0 or p.max() > 1.0:
        raise InputError("pred_probs: every value must be a finite probability in [0, 1]")
    return y.astype(np.int64), p


def _per_class_thresholds(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    num_classes = p.shape[1]
    sums = np.bincount(y, weights=p[np.arange(y.shape[0]), y], minlength=num_classes)
    counts = np.bincount(y, minlength=num_classes)
    # A class nobody is labelled with has no threshold; +inf means no example is confidently it.
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.inf)


def _confident_guess(p: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Per example, the most probable class among those at or above their threshold; -1 if none."""
    above = p >= thresholds[None, :]
    guess = np.where(above, p, -np.inf).argmax(axis=1)
    return np.where(above.any(axis=1), guess, -1)


def _calibrated_joint(cj: np.ndarray, counts: np.ndarray) -> np.ndarray:
    rows = cj.sum(axis=1, keepdims=True).astype(np.float64)
    calibrated: np.ndarray = np.divide(
        cj * counts[:, None], rows, out=np.zeros(cj.shape), where=rows > 0
    )
    total = float(calibrated.sum())
    return calibrated / total if total > 0 else calibrated


def _noise_matrix(q: np.ndarray) -> np.ndarray:
    cols = q.sum(axis=0, keepdims=True)
    nm: np.ndarray = np.divide(q, cols, out=np.eye(q.shape[0]), where=cols > 0)
    return nm


def _cap_per_class(
    flagged: np.ndarray, y: np.ndarray, self_conf: np.ndarray, counts: np.ndarray, keep: int
) -> np.ndarray:
    """Unflag the least suspicious examples of any class that would keep fewer than ``keep``."""
    out = flagged.copy()
    for i in np.flatnonzero(counts):
        rows = np.flatnonzero(flagged & (y == i))
        budget = max(int(counts[i]) - keep, 0)
        if rows.size > budget:
            order = rows[np.lexsort((rows, -self_conf[rows]))]  # most confident first
            out[order[: rows.size - budget]] = False
    return out


def _prune_by_noise_rate(
    y: np.ndarray, p: np.ndarray, q: np.ndarray, counts: np.ndarray, keep: int
) -> np.ndarray:
    n = y.shape[0]
    flagged = np.zeros(n, dtype=bool)
    for i in range(p.shape[1]):
        rows = np.flatnonzero(y == i)
        if rows.size == 0:
            continue
        wanted = np.rint(q[i] * n).astype(np.int64)
        wanted[i] = 0
        budget = max(rows.size - keep, 0)
        if wanted.sum() > budget:
            # Shrink every cell in proportion so the class keeps at least `keep` examples.
            wanted = np.floor(wanted * budget / wanted.sum()).astype(np.int64)
        for j in np.flatnonzero(wanted):
            margin = p[rows, j] - p[rows, i]
            order = np.lexsort((rows, -margin))  # largest margin first, ties by index
            flagged[rows[order[: wanted[j]]]] = True
    return flagged


def find_label_issues(
    labels: Any,
    pred_probs: Any,
    *,
    method: Method = "prune_by_noise_rate",
    min_per_class: int = 1,
) -> LabelIssues:
    """Indices of examples whose given label is likely wrong (confident learning).

    ``labels`` (N,) are the given class indices; ``pred_probs`` (N, C) must be out-of-sample
    (e.g. from :func:`out_of_fold_probs`) — in-sample probabilities agree with the given labels
    and find nothing. No class is left with fewer than ``min_per_class`` examples.

    >>> labels = np.array([0, 0, 0, 1, 1, 1])
    >>> probs = np.array([[.9, .1], [.8, .2], [.1, .9], [.15, .85], [.3, .7], [.1, .9]])
    >>> issues = find_label_issues(labels, probs)
    >>> issues.indices.tolist(), issues.suggested_labels.tolist(), issues.confident_joint
    ([2], [1], [[2, 1], [0, 2]])
    """
    check_choice("method", method, _METHODS)
    if not isinstance(min_per_class, int) or min_per_class < 0:
        raise InputError(f"min_per_class: must be an integer >= 0; got {min_per_class!r}")
    y, p = _validate(labels, pred_probs)
    num_classes = p.shape[1]
    counts = np.bincount(y, minlength=num_classes)
    thresholds = _per_class_thresholds(y, p)
    guess = _confident_guess(p, thresholds)
    counted = guess >= 0
    cj = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cj, (y[counted], guess[counted]), 1)
    q = _calibrated_joint(cj, counts)
    self_conf = p[np.arange(y.shape[0]), y]

    if method == "confident_joint_offdiag":
        flagged = _cap_per_class(counted & (guess != y), y, self_conf, counts, min_per_class)
    else:
        flagged = _prune_by_noise_rate(y, p, q, counts, min_per_class)

    idx = np.flatnonzero(flagged)
    idx = idx[np.lexsort((idx, self_conf[idx]))]
    return LabelIssues(
        indices=idx,
        suggested_labels=p[idx].argmax(axis=1),
        self_confidence=self_conf[idx],
        confident_joint=cj.tolist(),
        joint=q.tolist(),
        noise_matrix=_noise_matrix(q).tolist(),
        thresholds=[float(t) if np.isfinite(t) else None for t in thresholds],
        method=method,
    )


def out_of_fold_probs(
    features: Any,
    labels: Any,
    *,
    k: int = 5,
    seed: int = 0,
    model: str = "logreg",
    num_classes: int | None = None,
) -> np.ndarray:
    """Cross-validated predicted probabilities (N, C), each row from a model that never saw it.

    ``features`` is an (N, D) array or scipy sparse matrix (see :func:`text_features`,
    :func:`image_features`); ``labels`` (N,) class indices. Folds are stratified and shuffled
    with ``seed``; ``k`` shrinks to the size of the smallest class (at least 2). The model is a
    logistic regression (``model="logreg"``, the only one so far: fast and calibrated enough).

    >>> X = np.array([[0.0], [0.1], [0.2], [0.3], [1.0], [1.1], [1.2], [1.3]])
    >>> probs = out_of_fold_probs(X * 10, np.array([0, 0, 0, 0, 1, 1, 1, 1]), k=2)
    >>> probs.shape, probs.argmax(axis=1).tolist()
    ((8, 2), [0, 0, 0, 0, 1, 1, 1, 1])
    """
    from sklearn.model_selection import StratifiedKFold
    from threadpoolctl import threadpool_limits

    check_choice("model", model, ["logreg"])
    y = np.asarray(labels)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer) or (y.size and y.min() < 0):
        raise InputError("labels: must be a 1-D array of class indices >= 0")
    n_rows = features.shape[0] if hasattr(features, "shape") else len(features)
    if n_rows != y.shape[0]:
        raise InputError(f"features: has {n_rows} rows; labels has {y.shape[0]}")
    if not isinstance(k, int) or k < 2:
        raise InputError(f"k: must be an integer >= 2; got {k!r}")
    width = int(y.max()) + 1 if y.size else 0
    num_classes = width if num_classes is None else num_classes
    if num_classes < width:
        raise InputError(f"num_classes: is {num_classes} but labels go up to {width - 1}")
    present = np.bincount(y, minlength=num_classes)
    present = present[present > 0]
    if present.size < 2:
        raise InputError("labels: need at least two different classes to cross-validate")
    n_splits = max(2, min(k, int(present.min())))

    out = np.zeros((y.shape[0], num_classes), dtype=np.float64)
    folds = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        # A class with one example cannot be in every fold; that is expected and handled below.
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        splits = list(folds.split(np.zeros(y.shape[0]), y))
    # The per-fold problems are small: BLAS threads only spin against each other (measured 10-40x
    # slower on a busy 2-core machine), so hold BLAS to one thread, as scikit-learn's KMeans does.
    with threadpool_limits(limits=1, user_api="blas"):
        for train_idx, test_idx in splits:
            _fit_fold(features, y, train_idx, test_idx, out)
    return out


def _fit_fold(
    features: Any, y: np.ndarray, train_idx: np.ndarray, test_idx: np.ndarray, out: np.ndarray
) -> None:
    from sklearn.linear_model import LogisticRegression

    seen = np.unique(y[train_idx])
    if seen.size == 1:  # the fold's model can only say one thing
        out[test_idx, seen[0]] = 1.0
        return
    clf = LogisticRegression(C=1.0, max_iter=1000)
    clf.fit(features[train_idx], y[train_idx])
    # Classes missing from this training fold get probability 0 for its held-out rows.
    out[np.ix_(test_idx, clf.classes_)] = clf.predict_proba(features[test_idx])


def text_features(texts: list[str]) -> Any:
    """TF-IDF of word 1- and 2-grams with sublinear term frequency: a scipy sparse matrix (N, V).

    >>> X = text_features(["free prize now", "lunch at noon", "free lunch"])
    >>> X.shape[0], X.shape[1] > 6
    (3, True)
    """
    from sklearn.feature_extraction.text import TfidfVectorizer

    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
        raise InputError("texts: must be a list of strings")
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1)
    try:
        return vectorizer.fit_transform(list(texts))
    except ValueError as exc:  # sklearn's "empty vocabulary" for blank or stop-word-only texts
        raise InputError(f"texts: no words to build features from ({exc})") from exc


def image_features(images: Any, *, max_dims: int | None = 64, seed: int = 0) -> np.ndarray:
    """Flattened pixels scaled to [0, 1], reduced by PCA to at most ``max_dims`` dimensions.

    ``images`` is (N, H, W) or (N, H, W, C); uint8 pixels are divided by 255, float pixels are
    taken as already in [0, 1]. ``max_dims=None`` keeps every pixel.

    >>> imgs = np.random.default_rng(0).integers(0, 256, size=(10, 16, 16), dtype=np.uint8)
    >>> image_features(imgs, max_dims=8).shape, image_features(imgs, max_dims=None).shape
    ((10, 8), (10, 256))
    """
    arr = np.asarray(images)
    if arr.ndim not in (3, 4) or arr.shape[0] == 0:
        raise InputError(
            f"images: must be a non-empty (N, H, W) or (N, H, W, C) array; got shape {arr.shape}"
        )
    if arr.dtype == np.uint8:
        flat = arr.reshape(arr.shape[0], -1).astype(np.float64) / 255.0
    elif np.issubdtype(arr.dtype, np.floating):
        flat = arr.reshape(arr.shape[0], -1).astype(np.float64)
    else:
        raise InputError(f"images: pixels must be uint8 or float; got dtype {arr.dtype}")
    if max_dims is not None and (not isinstance(max_dims, int) or max_dims < 1):
        raise InputError(f"max_dims: must be a positive integer or None; got {max_dims!r}")
    if max_dims is None or flat.shape[1] <= max_dims:
        return flat
    from sklearn.decomposition import PCA

    # PCA sees no labels, so fitting it on all rows leaks nothing into the folds.
    n_components = min(max_dims, flat.shape[0])
    reduced: np.ndarray = PCA(n_components=n_components, random_state=seed).fit_transform(flat)
    return reduced
