"""The layer table of DESIGN.md and the one-public-import-path rule, enforced."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import aifab

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "aifab"


def _layers() -> list[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    (contract,) = config["tool"]["importlinter"]["contracts"]
    return contract["layers"]


def test_import_linter_layers_hold() -> None:
    result = subprocess.run(
        [sys.executable, "-c", "import sys, importlinter.cli as c; sys.exit(c.lint_imports(no_cache=True))"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_package_has_a_layer() -> None:
    """A new top-level package or module must be placed in the layer table, not slip past it."""
    named = {part.strip() for layer in _layers() for part in layer.split("|")}
    found = {f"aifab.{p.name}" for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    found |= {f"aifab.{p.stem}" for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    assert found <= named, f"not in the layer table: {sorted(found - named)}"


def test_public_api_matches_all() -> None:
    """Every name in __all__ resolves, and nothing public sits at the top level outside __all__."""
    for name in aifab.__all__:
        assert getattr(aifab, name) is not None, name
    public = {n for n in dir(aifab) if not n.startswith("_")}
    assert public == {n for n in aifab.__all__ if not n.startswith("_")}
    assert len(set(aifab.__all__)) == len(aifab.__all__)


def test_import_aifab_stays_light() -> None:
    """`import aifab` and `aifab --help` must not pull in torch, pyarrow or SQLAlchemy."""
    code = "import sys, aifab, aifab.cli; print(','.join(m for m in ('torch','pyarrow','sqlalchemy','sklearn') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""


def test_no_pickle_or_unsafe_loading_in_source() -> None:
    import re

    bad = re.compile(r"import pickle|pickle\.loads?\(|yaml\.load\(|(?<![.\w])eval\(|weights_only=False|torch\.load\((?!.*weights_only=True)")
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if bad.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not offenders, offenders
