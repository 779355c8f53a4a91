"""aifab.store: metadata (SQL) and artifacts (content-addressed blobs)."""

from aifab.store.artifacts import ArtifactStore
from aifab.store.db import MetadataStore

__all__ = ["ArtifactStore", "MetadataStore"]
