"""aifab: image and text AI from the lab to the factory.

The public Python API. Everything listed in ``__all__`` is importable from ``aifab``
directly; everything else lives in modules you need not know about.

>>> import aifab
>>> "Workspace" in aifab.__all__
True
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "AifabError",
    "CheckReport",
    "ConfigError",
    "DatasetVersion",
    "Finding",
    "FormatError",
    "GateFailed",
    "InputError",
    "NotFound",
    "ReaderOptions",
    "Record",
    "Spec",
    "Workspace",
    "WorkspaceConfig",
    "__version__",
    "load_model",
]

# Lazy attributes keep `import aifab` fast: torch, pyarrow and SQLAlchemy load on first use.
_LAZY = {
    "AifabError": "aifab.core.errors",
    "ConfigError": "aifab.core.errors",
    "FormatError": "aifab.core.errors",
    "GateFailed": "aifab.core.errors",
    "InputError": "aifab.core.errors",
    "NotFound": "aifab.core.errors",
    "CheckReport": "aifab.core.types",
    "DatasetVersion": "aifab.core.types",
    "Finding": "aifab.core.types",
    "Spec": "aifab.core.config",
    "WorkspaceConfig": "aifab.core.config",
    "ReaderOptions": "aifab.data.formats",
    "Record": "aifab.data.records",
    "Workspace": "aifab.pipeline.project",
}

if TYPE_CHECKING:  # pragma: no cover
    from aifab.core.config import Spec, WorkspaceConfig
    from aifab.core.errors import AifabError, ConfigError, FormatError, GateFailed, InputError, NotFound
    from aifab.core.types import CheckReport, DatasetVersion, Finding
    from aifab.data.formats import ReaderOptions
    from aifab.data.records import Record
    from aifab.pipeline.project import Workspace


def load_model(ref: str, *, workspace: str | None = None) -> Any:
    """Load a registered model from the workspace here (or ``workspace``) for prediction.

    >>> # aifab.load_model("sms@production").predict(["WIN a prize, text CLAIM now"])
    """
    from aifab.pipeline.project import Workspace

    ws = Workspace.open(workspace)
    try:
        return ws.load_model(ref)
    finally:
        ws.close()


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'aifab' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
