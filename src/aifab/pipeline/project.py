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
from aifab.core.errors import ConfigError, Conflict, NotFound, WorkspaceError
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
# Where ingest may read from (file = local paths; add https, s3, gs, ...), and archive limits.
ingest:
  allowed_schemes: [file]
  max_archive_bytes: 8589934592       # total unpacked bytes of a .zip / .tar.gz
  max_archive_members: 1000000
  max_archive_ratio: 100              # unpacked / compressed: more is a zip bomb
"""


class Workspace:
    """An opened workspace. Build it with :meth:`init` or :meth:`open`."""

    def __init__(self, root: Path, config: WorkspaceConfig, *, key: Any = None) -> None:
        from aifab.security.crypto import workspace_cipher
        from aifab.store import ArtifactStore, MetadataStore

        self.root = root
        self.config = config
        # None unless aifab.yaml says encrypted; then the key is found and checked here, first.
        cipher = workspace_cipher(config.encryption, root, key=key)
        self.meta = MetadataStore(_resolve_db_url(config.store.url, root), cipher=cipher)
        self.artifacts = ArtifactStore(config.artifacts.url, root=root, cipher=cipher)

    # -- lifecycle ------------------------------------------------------------------------

    @classmethod
    def init(
        cls,
        root: str | Path = ".",
        *,
        exist_ok: bool = True,
        encrypt: bool = False,
        key_file: str | Path | None = None,
        key_env: str | None = None,
    ) -> Workspace:
        """Create ``aifab.yaml`` and ``.aifab/`` in ``root`` (idempotent) and migrate the database.

        ``encrypt`` encrypts the workspace at rest with the master key in ``key_file`` or in the
        environment variable ``key_env`` (default ``AIFAB_KEY``); see docs/encryption.md.
        """
        root = Path(root).resolve()
        config_path = root / CONFIG_FILE
        if config_path.exists() and not exist_ok:
            raise WorkspaceError(f"{config_path}: a workspace exists here already")
        # The key is found before anything is created: a missing key leaves no half workspace.
        encryption = _encryption_block(root, key_file, key_env) if encrypt else ""
        root.mkdir(parents=True, exist_ok=True)
        (root / STATE_DIR).mkdir(exist_ok=True)
        if not config_path.exists():
            tmp = config_path.with_suffix(".yaml.tmp")
            tmp.write_text(_CONFIG_TEMPLATE + encryption, encoding="utf-8")
            os.replace(tmp, config_path)
        config = load_yaml(WorkspaceConfig, config_path)
        if encrypt and not config.encryption.enabled:
            raise Conflict(
                f"{config_path}: this workspace exists and is not encrypted; an existing workspace cannot be "
                "encrypted in place: create a new one with --encrypt and ingest the data again"
            )
        ws = cls(root, config)
        ws.meta.migrate()
        return ws

    @classmethod
    def open(cls, root: str | Path | None = None, *, key: Any = None) -> Workspace:
        """Open the workspace at ``root``, or the nearest one above the current folder (like git).

        An encrypted workspace takes its master key from where ``aifab.yaml`` says, or ``key``
        (a :class:`aifab.security.crypto.MasterKey`)."""
        start = Path(root or os.environ.get("AIFAB_WORKSPACE") or ".").resolve()
        for folder in (start, *start.parents):
            if (folder / CONFIG_FILE).is_file():
                ws = cls(folder, load_yaml(WorkspaceConfig, folder / CONFIG_FILE), key=key)
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
        ``source`` may be an archive (extracted safely under ``.aifab/tmp``, then removed) or a
        URL whose scheme ``ingest.allowed_schemes`` allows (see :mod:`aifab.data.sources`).
        """
        from aifab.data.formats import ReaderOptions, count_hint, read_source
        from aifab.data.ingest import build_version, parquet_to_table, table_to_parquet
        from aifab.data.sources import open_source

        _check_name(name)
        options = options or ReaderOptions()
        progress = progress or NullProgress()
        parent = None if fresh else self._latest(name)
        parent_table = None if parent is None else parquet_to_table(self.artifacts.get_bytes(parent.manifest))
        scratch = self.root / STATE_DIR / "tmp"
        with open_source(source, scratch=scratch, config=self.config.ingest, progress=progress) as local:
            built = build_version(
                read_source(local.path, fmt, options),
                put_blob=self.artifacts.put_bytes,
                config=self.config,
                parent=parent_table,
                total=count_hint(local.path, fmt),
                progress=progress,
            )
        report = to_jsonable(built.report)
        report["quarantine_manifest"] = self.artifacts.put_bytes(table_to_parquet(built.quarantine))
        report["source"] = local.origin
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
            source=local.origin,
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
        from aifab.pipeline import training

        spec = training.as_spec(spec)
        version = training.train(self, spec, resume=resume, progress=progress)
        if self.config.encryption.enabled:
            # A run's checkpoint is a plain torch file (weights, vocabulary) kept only to resume:
            # once the run is registered (encrypted) it goes (docs/encryption.md).
            import shutil

            shutil.rmtree(self.root / STATE_DIR / "runs" / version.run_id, ignore_errors=True)
        return version

    def evaluate(self, ref: str, *, dataset: str | None = None, split: str = "test") -> dict[str, Any]:
        """Metrics of model ``NAME[@VERSION|@ALIAS]`` on a split (default: its own dataset's test split).

        An ensemble's metrics hold each member's on the same records under ``members``.
        """
        from aifab.pipeline import ensembling, training

        if "ensemble.json" in self.model(ref).files:
            return ensembling.evaluate(self, ref, dataset=dataset, split=split)
        return training.evaluate(self, ref, dataset=dataset, split=split)

    def ensemble(self, refs: list[str], *, method: str = "soft", weights: list[float] | None = None,
                 name: str | None = None, dataset: str | None = None, progress: Progress | None = None) -> dict[str, Any]:
        """Register an ensemble of model versions ``refs`` as one version (``soft``, ``weighted`` or
        ``hard``; see :func:`aifab.pipeline.ensembling.create_ensemble`), evaluated beside each member."""
        from aifab.pipeline.ensembling import create_ensemble

        return create_ensemble(self, refs, method=method, weights=weights, name=name, dataset=dataset, progress=progress)

    def distill(self, teacher: str, *, arch: str | None = None, spec: Any = None, temperature: float | None = None,
                alpha: float | None = None, name: str | None = None, epochs: int | None = None,
                progress: Progress | None = None) -> Any:
        """Train a small student of model version ``teacher`` on its soft targets and register it
        (see :func:`aifab.pipeline.distilling.distill`)."""
        from aifab.pipeline.distilling import distill

        return distill(self, teacher, arch=arch, spec=spec, temperature=temperature, alpha=alpha, name=name,
                       epochs=epochs, progress=progress)

    def tune(self, spec: Any, *, trials: int | None = None, study: str | None = None,
             progress: Progress | None = None) -> dict[str, Any]:
        """Search the spec's ``search`` space with Optuna (resumable) and register the best trial
        (see :func:`aifab.pipeline.tuning.tune`)."""
        from aifab.pipeline.tuning import tune

        return tune(self, spec, trials=trials, study=study, progress=progress)

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

    def optimize(self, ref: str, *, progress: Progress | None = None, **options: Any) -> dict[str, Any]:
        """Prune / export to ONNX / quantize model version ``ref`` into a new version of the same
        model with a before/after table (options: :func:`aifab.pipeline.optimizing.optimize`)."""
        from aifab.pipeline.optimizing import optimize

        return optimize(self, ref, progress=progress, **options)

    def set_alias(self, ref: str, alias: str, *, actor: str = "", reason: str = "") -> Any:
        name, _, version = ref.partition("@")
        mv = self.meta.get_model_version(name, version or None)
        return self.meta.set_alias(name, alias, mv.version, actor=actor, reason=reason)

    # -- encryption at rest (docs/encryption.md) ---------------------------------------------

    def rotate_key(
        self,
        new_key: Any,
        *,
        key_file: str | Path | None = None,
        key_env: str | None = None,
        old_keys: Any = (),
        progress: Progress | None = None,
    ) -> dict[str, Any]:
        """Re-wrap every data key (blobs and logged text inputs) under ``new_key``, found from now
        on at ``key_file`` or in ``key_env``; the ciphertexts stay as they are.

        ``aifab.yaml`` is pointed at the new key last, so a crash part-way loses nothing: each
        blob is whole under the old key or the new one, and running this again with both keys
        (``old_keys``, besides the key the workspace was opened with) finishes the job.
        """
        from aifab.security.crypto import EnvelopeCipher, encryption_section, write_encryption_section

        current = self.artifacts.cipher
        if current is None:
            raise ConfigError(f"{self.root / CONFIG_FILE}: this workspace is not encrypted; there is no key to rotate")
        section = encryption_section(self.root, key=new_key, key_file=key_file, key_env=key_env)
        rotating = EnvelopeCipher(new_key, previous=[*old_keys, current.master])
        blobs = self.artifacts.rewrap(rotating.rewrap, progress=progress)
        rows = self.meta.rewrap_prediction_inputs(rotating.rewrap)
        write_encryption_section(self.root / CONFIG_FILE, section)
        self.config = self.config.model_copy(update={"encryption": section})
        self.artifacts.cipher = self.meta.cipher = EnvelopeCipher(new_key)
        return {"key_id": new_key.key_id, "previous_key_id": current.key_id, "blobs_rewrapped": blobs, "predictions_rewrapped": rows}

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


def _encryption_block(root: Path, key_file: str | Path | None, key_env: str | None) -> str:
    """The ``encryption:`` block of a new encrypted workspace; the key must be there already."""
    from aifab.security.crypto import DEFAULT_KEY_ENV, MasterKey, encryption_section, encryption_yaml

    if key_file is None and key_env is None:
        key_env = DEFAULT_KEY_ENV
    key = MasterKey.load(key_file=key_file, key_env=key_env)
    return "\n" + encryption_yaml(encryption_section(root, key=key, key_file=key_file, key_env=key_env))


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
