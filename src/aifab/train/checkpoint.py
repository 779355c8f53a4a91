"""Training checkpoints: everything needed to resume a run exactly, written atomically.

A checkpoint is one ``torch.save`` file that holds only tensors and plain Python values (dicts,
lists, numbers, strings), so it loads with ``torch.load(..., weights_only=True)`` and runs no
pickled code. Keys::

    format            1
    epoch, step       the last finished epoch (1-based) and the optimizer steps so far
    epochs, steps_per_epoch
    history           one dict per finished epoch (see TrainState)
    monitor, mode, best_metric, best_epoch, best_weights      best-so-far tracking
    stop, stop_reason, elapsed_seconds                         early-stopping / time state
    model, optimizer, scheduler, scaler                        state dicts (the last two or None)
    rng               {"torch", "cuda" (list or None), "numpy" {...}, "python" {...}}
    meta              the caller's dict (run fingerprint, preprocessing, ...)

>>> import tempfile, torch
>>> from pathlib import Path
>>> from aifab.train.callbacks import TrainState
>>> net = torch.nn.Linear(2, 2)
>>> state = TrainState(model=net, optimizer=torch.optim.SGD(net.parameters(), lr=0.1), epoch=3)
>>> path = Path(tempfile.mkdtemp()) / "run.ckpt"
>>> save_checkpoint(path, state)
>>> ckpt = load_checkpoint(path)
>>> ckpt["epoch"], sorted(ckpt["rng"])
(3, ['cuda', 'numpy', 'python', 'torch'])
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aifab.core.errors import IntegrityError, NotFound

if TYPE_CHECKING:
    from aifab.train.callbacks import TrainState

__all__ = ["CHECKPOINT_FORMAT", "capture_rng", "load_checkpoint", "restore_rng", "save_checkpoint"]

CHECKPOINT_FORMAT = 1
_REQUIRED = ("format", "epoch", "model", "optimizer", "history", "rng")


def save_checkpoint(path: str | Path, state: TrainState) -> None:
    """Write ``state`` to ``path`` atomically: a crash leaves the previous file or the new one.

    The bytes go to ``<path>.tmp``, are flushed and fsynced, then ``os.replace`` swaps them in
    (atomic on POSIX and Windows) and the folder is fsynced so the rename survives a power cut.
    """
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "epoch": int(state.epoch),
        "step": int(state.step),
        "epochs": int(state.epochs),
        "steps_per_epoch": int(state.steps_per_epoch),
        "history": [dict(record) for record in state.history],
        "monitor": state.monitor,
        "mode": state.mode,
        "best_metric": state.best_metric,
        "best_epoch": int(state.best_epoch),
        "best_weights": state.best_weights,
        "stop": bool(state.stop),
        "stop_reason": state.stop_reason,
        "elapsed_seconds": float(state.elapsed_seconds),
        "model": state.model.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "scheduler": state.scheduler.state_dict() if state.scheduler is not None else None,
        "scaler": state.scaler.state_dict() if state.scaler is not None else None,
        "rng": capture_rng(),
        "meta": state.meta,
    }
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (tensors on the CPU).

    A missing file is :class:`~aifab.core.errors.NotFound`; a truncated, corrupted or foreign
    file is :class:`~aifab.core.errors.IntegrityError`; both name the file.

    >>> import tempfile
    >>> from pathlib import Path
    >>> bad = Path(tempfile.mkdtemp()) / "bad.ckpt"
    >>> _ = bad.write_bytes(b"not a checkpoint")
    >>> try:
    ...     load_checkpoint(bad)
    ... except IntegrityError as err:
    ...     print(str(err).startswith(str(bad)))
    True
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise NotFound(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:  # zip errors, unpickling errors, EOF: all mean damaged bytes
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise IntegrityError(
            f"{path}: checkpoint is corrupted or truncated ({type(exc).__name__}: {detail}); "
            "delete it to train from the start"
        ) from None
    if not isinstance(ckpt, dict) or any(key not in ckpt for key in _REQUIRED):
        raise IntegrityError(
            f"{path}: not an aifab training checkpoint (expected the keys {', '.join(_REQUIRED)})"
        )
    if ckpt["format"] != CHECKPOINT_FORMAT:
        raise IntegrityError(
            f"{path}: checkpoint format {ckpt['format']!r} is not supported "
            f"(this version reads format {CHECKPOINT_FORMAT})"
        )
    return ckpt


def capture_rng() -> dict[str, Any]:
    """The state of every random generator training uses, as tensors and plain values.

    >>> import torch
    >>> saved = capture_rng(); a = torch.rand(1); restore_rng(saved)
    >>> torch.equal(torch.rand(1), a)
    True
    """
    import numpy as np
    import torch

    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64).copy()),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {"version": int(version), "state": list(internal), "gauss_next": gauss_next},
    }


def restore_rng(rng: dict[str, Any]) -> None:
    """Put the generators back in the state :func:`capture_rng` recorded."""
    import numpy as np
    import torch

    torch.set_rng_state(rng["torch"].to(torch.uint8))
    if rng.get("cuda") is not None and torch.cuda.is_available():
        states = rng["cuda"]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.to(torch.uint8) for s in states])
    state = rng["numpy"]
    np.random.set_state(
        (
            state["kind"],
            state["keys"].numpy().astype(np.uint32),
            state["pos"],
            state["has_gauss"],
            state["cached_gaussian"],
        )
    )
    py = rng["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss_next"]))


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # Windows cannot open folders; its rename is durable enough
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
