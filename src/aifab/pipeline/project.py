"""The workspace: the facade every interface (CLI, HTTP, Python) calls.

A workspace is a folder holding ``aifab.yaml`` and ``.aifab/`` (the metadata database and
the artifact store), or, through ``aifab.yaml``, a database URL and an fsspec URL elsewhere.

>>> import tempfile
>>> ws = Workspace.init(tempfile.mkdtemp())
>>> ws.config.split.test
0.2
>>> ws.datasets()
[]
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa

from aifab.core.config import WorkspaceConfig, load_yaml
from aifab.core.errors import ConfigError, InputError, NotFound, WorkspaceError
from aifab.core.progress import NullProgress, Progress
from aifab.core.types import DatasetVersion, to_jsonable

CONFIG_FILE = "aifab.yaml"
STATE_DIR = ".aifab"

_CONFIG_TEMPLATE = """\
# aifab workspace. Every key is optional; unknown keys are errors.
version: 1
store:
  url: sqlite:///.aifab/aifab.db      # any SQLAlchemy URL, e.g. postgresql+psycopg://user@host/db
artifacts:
  url: .aifab/artifacts               # a folder, or an fsspec URL such as s3://bucket/prefix
# Data gate: one policy per check: block | quarantine | warn | off
checks:
  unreadable_image: quarantine
  image_bomb: quarantine
  missing_file: quarantine
  empty_text: quarantine
  conflicting_labels: quarantine
  exact_duplicate: warn
  near_duplicate_text: warn
  near_duplicate_image: warn
thresholds:
  max_image_pixels: 89478485
  near_duplicate_text_jaccard: 0.8
  near_duplicate_image_hamming: 4
split:
  val: 0.1
  test: 0.2
  seed: 0
"""


class Workspace:
    """An opened workspace. Build it with :meth:`init` or :meth:`open`."""

    def __init__(self, root: Path, config: WorkspaceConfig) -> None:
        from aifab.store import ArtifactStore, MetadataStore

        self.root = root
        self.config = config
        self.meta = MetadataStore(_resolve_db_url(config.store.url, root))
        self.artifacts = ArtifactStore(config.artifacts.url, root=root)

    # -- lifecycle ------------------------------------------------------------------------

    @classmethod
    def init(cls, root: str | Path = ".", *, exist_ok: bool = True) -> Workspace:
        """Create ``aifab.yaml`` and ``.aifab/`` in ``root`` (idempotent) and migrate the database."""
        root = Path(root).resolve()
        root.mkdir(parents=True, exist_ok=True)
        config_path = root / CONFIG_FILE
        if config_path.exists() and not exist_ok:
            raise WorkspaceError(f"{config_path}: a workspace exists here already")
        (root / STATE_DIR).mkdir(exist_ok=True)
        if not config_path.exists():
            tmp = config_path.with_suffix(".yaml.tmp")
            tmp.write_text(_CONFIG_TEMPLATE, encoding="utf-8")
            os.replace(tmp, config_path)
        ws = cls(root, load_yaml(WorkspaceConfig, config_path))
        ws.meta.migrate()
        return ws

    @classmethod
    def open(cls, root: str | Path | None = None) -> Workspace:
        """Open the workspace at ``root``, or the nearest one above the current folder (like git)."""
        start = Path(root or os.environ.get("AIFAB_WORKSPACE") or ".").resolve()
        for folder in (start, *start.parents):
            if (folder / CONFIG_FILE).is_file():
                ws = cls(folder, load_yaml(WorkspaceConfig, folder / CONFIG_FILE))
                ws.meta.migrate()
                return ws
        raise WorkspaceError(f"no aifab workspace at {start} or above it; create one with: aifab init {start}")

    def close(self) -> None:
        self.meta.dispose()

    def __enter__(self) -> Workspace:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- datasets -------------------------------------------------------------------------

    def ingest(
        self,
        source: str | Path,
        *,
        name: str,
        fmt: str | None = None,
        options: Any = None,
        fresh: bool = False,
        progress: Progress | None = None,
    ) -> DatasetVersion:
        """Read ``source``, run the data gate and the split, and commit a dataset version.

        The version's parent is the latest version of ``name`` (its test split stays frozen)
        unless ``fresh``. Ingesting the same data twice returns the same version.
        """
        from aifab.data.formats import ReaderOptions, count_hint, read_source
        from aifab.data.ingest import build_version, parquet_to_table, table_to_parquet

        _check_name(name)
        path = Path(source)
        if not path.exists():
            raise InputError(f"{path}: no such file or folder")
        options = options or ReaderOptions()
        parent = None if fresh else self._latest(name)
        parent_table = None if parent is None else parquet_to_table(self.artifacts.get_bytes(parent.manifest))
        built = build_version(
            read_source(path, fmt, options),
            put_blob=self.artifacts.put_bytes,
            config=self.config,
            parent=parent_table,
            total=count_hint(path, fmt),
            progress=progress or NullProgress(),
        )
        report = to_jsonable(built.report)
        report["quarantine_manifest"] = self.artifacts.put_bytes(table_to_parquet(built.quarantine))
        report["source"] = str(path.resolve())
        version = DatasetVersion(
            id=_version_id(name, built.version_id),
            name=name,
            manifest=self.artifacts.put_bytes(table_to_parquet(built.table)),
            report=self.artifacts.put_bytes(json.dumps(report, ensure_ascii=False, indent=1).encode()),
            parent=None if parent is None or parent.id == _version_id(name, built.version_id) else parent.id,
            created_at=datetime.now(timezone.utc),
            num_records=built.table.num_rows,
            split_counts=built.split_counts,
            label_counts=built.label_counts,
            fields=built.fields,
            source=str(path.resolve()),
            num_quarantined=built.quarantine.num_rows,
        )
        # The one commit: until this transaction, the new blobs are unreferenced and invisible.
        return self.meta.add_dataset_version(version)

    def datasets(self, name: str | None = None) -> list[DatasetVersion]:
        """Every dataset version (of ``name``), newest first."""
        return self.meta.list_dataset_versions(name)

    def dataset(self, ref: str) -> DatasetVersion:
        """Look a version up by ``NAME``, ``NAME@VERSION`` (a full id or a unique prefix)."""
        name, _, version = ref.partition("@")
        return self.meta.get_dataset_version(name, version or None)

    def manifest(self, version: DatasetVersion) -> pa.Table:
        from aifab.data.ingest import parquet_to_table

        return parquet_to_table(self.artifacts.get_bytes(version.manifest))

    def records(self, version: DatasetVersion, split: str | None = None) -> list[Any]:
        """The records of a version (of one split), as :class:`aifab.data.records.Record` objects."""
        from aifab.data.records import table_to_records

        table = self.manifest(version)
        if split is not None:
            import pyarrow.compute as pc

            table = table.filter(pc.equal(table.column("split"), split))
        return table_to_records(table)

    def report(self, version: DatasetVersion) -> dict[str, Any]:
        """The data gate's report of a version (JSON-ready)."""
        return json.loads(self.artifacts.get_bytes(version.report))

    def quarantined(self, version: DatasetVersion) -> list[Any]:
        from aifab.data.ingest import parquet_to_table
        from aifab.data.records import table_to_records

        digest = self.report(version).get("quarantine_manifest")
        if not digest:
            return []
        return table_to_records(parquet_to_table(self.artifacts.get_bytes(digest)))

    def label_issues(self, version: DatasetVersion, *, k: int = 5, limit: int | None = None) -> dict[str, Any]:
        """Suspected label errors in a version (confident learning over out-of-fold probabilities)."""
        from aifab.pipeline.label_issues import find_dataset_label_issues

        return find_dataset_label_issues(self, version, k=k, limit=limit)

    def blob(self, digest: str) -> bytes:
        return self.artifacts.get_bytes(digest)

    # -- models ---------------------------------------------------------------------------

    def train(self, spec: Any, *, resume: str | None = None, progress: Progress | None = None) -> Any:
        """Train a spec (a :class:`aifab.Spec`, a dict, or a YAML path) and register a model version.

        ``resume`` continues a killed run (by run id) from its last checkpoint.
        """
        from aifab.core.config import Spec, parse
        from aifab.pipeline import training

        if isinstance(spec, (str, Path)):
            spec = training.load_spec(spec)
        elif isinstance(spec, dict):
            spec = parse(Spec, spec, source="spec")
        return training.train(self, spec, resume=resume, progress=progress)

    def evaluate(self, ref: str, *, dataset: str | None = None, split: str = "test") -> dict[str, Any]:
        """Metrics of model ``NAME[@VERSION|@ALIAS]`` on a split (default: its own dataset's test split)."""
        from aifab.pipeline import training

        return training.evaluate(self, ref, dataset=dataset, split=split)

    def model(self, ref: str) -> Any:
        """The :class:`aifab.core.types.ModelVersion` for ``NAME``, ``NAME@3`` or ``NAME@production``."""
        name, _, version = ref.partition("@")
        return self.meta.get_model_version(name, version or None)

    def models(self, name: str | None = None) -> list[Any]:
        return self.meta.list_model_versions(name)

    def load_model(self, ref: str) -> Any:
        """Load a model version into memory (no network, no pickle) for :meth:`predict`."""
        from aifab.registry.versions import load_files

        return load_files(self.model(ref), self.artifacts.get_bytes)

    def set_alias(self, ref: str, alias: str, *, actor: str = "", reason: str = "") -> Any:
        name, _, version = ref.partition("@")
        mv = self.meta.get_model_version(name, version or None)
        return self.meta.set_alias(name, alias, mv.version, actor=actor, reason=reason)

    def _latest(self, name: str) -> DatasetVersion | None:
        try:
            return self.meta.get_dataset_version(name, None)
        except NotFound:
            return None


def _version_id(name: str, content_digest: str) -> str:
    """A version id is the content digest scoped by the dataset name: the same data under the same
    name is the same version; the same data under another name is another dataset."""
    import hashlib

    return hashlib.sha256(f"{name}\n{content_digest}".encode()).hexdigest()


def _resolve_db_url(url: str, root: Path) -> str:
    """Relative SQLite paths in aifab.yaml are relative to the workspace, not the current folder."""
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/") and ":memory:" not in url:
        return prefix + str((root / url[len(prefix):]).resolve())
    return url


def _check_name(name: str) -> None:
    import re

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}", name):
        raise ConfigError(
            f"The 'name' parameter must be 1-100 letters, digits, '_', '.', '-' starting with a letter or digit;"
            f" got {name!r}"
        )
