"""The label-error check on a dataset version (confident learning; `aifab inspect NAME --label-issues`).

Out-of-fold probabilities come from k-fold cross-validation of a fast model on cheap features
(TF-IDF for text, downscaled pixels for images): a neural network per fold would make the check
as slow as training. The method itself is in :mod:`aifab.evaluate.label_errors`.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

import numpy as np

from aifab.core.errors import InputError
from aifab.core.types import DatasetVersion

if TYPE_CHECKING:
    from aifab.pipeline.project import Workspace


def find_dataset_label_issues(
    ws: Workspace, version: DatasetVersion, *, k: int = 5, seed: int = 0, limit: int | None = None
) -> dict[str, Any]:
    """Suspected label errors among the version's single-label records, most suspicious first.

    Returns a JSON-ready dict: ``suspects`` (record id, source, given label, suggested label,
    self-confidence), ``checked`` (how many records), and the estimated ``noise_matrix``.
    """
    from aifab.evaluate.label_errors import find_label_issues, image_features, out_of_fold_probs, text_features

    records = [r for r in ws.records(version) if r.category is not None and (r.text or r.image)]
    if len(records) < 2 * k:
        raise InputError(f"{version.name}@{version.short_id}: {len(records)} labelled records; the check needs at least {2 * k}")
    labels = sorted({r.category for r in records})
    if len(labels) < 2:
        raise InputError(f"{version.name}@{version.short_id}: one label only ({labels}); nothing to check")
    index = {label: i for i, label in enumerate(labels)}
    y = np.asarray([index[r.category] for r in records])
    if records[0].image is not None:
        features = image_features(np.stack([_pixels(ws.blob(r.image)) for r in records]), seed=seed)
    else:
        features = text_features([r.text or "" for r in records])
    # Stratified k-fold needs k examples of each class; classes rarer than that cannot be judged.
    k_eff = int(min(k, np.bincount(y).min()))
    if k_eff < 2:
        raise InputError(f"{version.name}@{version.short_id}: a label has one record; the check needs 2 per label")
    probs = out_of_fold_probs(features, y, k=k_eff, seed=seed, num_classes=len(labels))
    issues = find_label_issues(y, probs)
    suspects = [
        {
            "id": records[i].id,
            "source": records[i].source,
            "split": records[i].split,
            "label": records[i].category,
            "suggested": labels[int(s)],
            "self_confidence": round(float(c), 4),
        }
        for i, s, c in zip(issues.indices.tolist(), issues.suggested_labels.tolist(), issues.self_confidence.tolist())
    ]
    return {
        "method": issues.method,
        "checked": len(records),
        "labels": labels,
        "noise_matrix": issues.noise_matrix,
        "suspects": suspects[:limit] if limit else suspects,
        "num_suspects": len(suspects),
    }


def _pixels(data: bytes, size: int = 32) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("L").resize((size, size)), dtype=np.uint8)
