"""Checkpoints: atomic writes, plain contents that load with ``torch.load(path, weights_only=True)``, RNG states.

A checkpoint is a dict of tensors, numbers, strings, lists and dicts only: model / optimizer /
scheduler / scaler / sampler states, loop counters, early-stopping state, RNG states of Python,
NumPy and torch (per rank), and the resolved config as a plain dict. NumPy arrays are stored as
``{"__ndarray__": tensor}`` and come back as arrays from :func:`load_checkpoint`.

Schema: :func:`save_checkpoint` stamps ``kind`` (:data:`CHECKPOINT_KIND`) and ``version``
(:data:`CHECKPOINT_VERSION`) and requires the keys of :data:`CHECKPOINT_KEYS`;
:func:`load_checkpoint` checks all three and turns any file it cannot use (empty, truncated,
random bytes, another tool's file, a newer schema) into a :class:`CheckpointError` naming it.
"""

from __future__ import annotations

import os
import pickle
import random
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from luna_prep.errors import LunaError
from luna_prep.files import atomic_path, is_temporary

LAST = "last.pt"  # written every epoch (and every train.checkpoint_every_steps): what --resume reads
BEST = "best.pt"  # the epoch with the best validation Dice: what evaluation and inference read
CHECKPOINT_KIND = "luna-train-checkpoint"
CHECKPOINT_VERSION = 1
CHECKPOINT_KEYS = ("model", "optimizer", "scheduler", "scaler", "sampler", "state", "per_rank", "config",
                   "world_size")


class CheckpointError(LunaError, ValueError):
    """A checkpoint file that cannot be used (unreadable, not ours, or a newer schema); the message names it."""


class CheckpointWriteError(LunaError, OSError):
    """A checkpoint that could not be written (disk full, file size limit, permissions); the file it would
    have replaced is intact."""


def to_plain(obj: Any) -> Any:
    """``obj`` with NumPy arrays/scalars replaced by weights_only-safe values."""
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": torch.from_numpy(np.ascontiguousarray(obj)).clone(), "dtype": str(obj.dtype)}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_plain(v) for v in obj)
    return obj


def from_plain(obj: Any) -> Any:
    """Inverse of :func:`to_plain`."""
    if isinstance(obj, dict):
        if "__ndarray__" in obj:
            return obj["__ndarray__"].numpy().astype(obj.get("dtype", None) or obj["__ndarray__"].numpy().dtype)
        return {k: from_plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [from_plain(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(from_plain(v) for v in obj)
    return obj


def rng_state() -> dict:
    """Python, NumPy, torch (and CUDA) RNG states as plain values."""
    py = random.getstate()
    np_state = np.random.get_state()
    state = {
        "python": [int(py[0]), [int(v) for v in py[1]], py[2]],
        "numpy": [str(np_state[0]), torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                  int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` returned."""
    py = state["python"]
    random.setstate((int(py[0]), tuple(int(v) for v in py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), int(n[2]), int(n[3]), float(n[4])))
    torch.set_rng_state(state["torch"].cpu().to(torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.to(torch.uint8) for s in cuda])


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def checkpoint_file(name: str) -> str:
    """The file name of a checkpoint asked for as ``best``/``last`` (or already ``best.pt``/``last.pt``)."""
    return name if name.endswith(".pt") else f"{name}.pt"


def save_checkpoint(path: str | Path, payload: dict) -> None:
    """Write ``payload`` (the :data:`CHECKPOINT_KEYS`), stamped with kind and version, to ``path`` atomically
    (temporary file in the same folder, then os.replace)."""
    missing = [k for k in CHECKPOINT_KEYS if k not in payload]
    if missing:
        raise ValueError(f"checkpoint payload for {path} lacks {missing}")
    payload = {"kind": CHECKPOINT_KIND, "version": CHECKPOINT_VERSION, **payload}
    try:
        with atomic_path(path) as tmp:
            torch.save(to_plain(payload), tmp)
    except (OSError, RuntimeError) as exc:  # torch's zip writer reports a failed write as a RuntimeError
        raise CheckpointWriteError(f"{path}: could not write the checkpoint ({_first_line(exc)}); "
                                   f"{_free_space(Path(path).parent)}; the previous {Path(path).name}, if any, "
                                   f"is intact: mend the cause and run with --resume") from exc


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _free_space(folder: Path) -> str:
    try:
        stat = os.statvfs(folder)
    except OSError:
        return "free space unknown"
    return f"{stat.f_bavail * stat.f_frsize / 1e9:.2f} GB free in {folder}"


def remove_partial_writes(run_dir: Path) -> list[Path]:
    """Delete what a killed :func:`save_checkpoint` left in ``run_dir`` (``.last.pt.tmp<pid>`` files)."""
    leftovers = [p for p in run_dir.glob(".*.pt.tmp*") if is_temporary(p)]
    for p in leftovers:
        p.unlink(missing_ok=True)
    return leftovers


def _advice(path: Path) -> str:
    if path.name == LAST:
        return f"; evaluate {BEST} instead (--checkpoint best) or start the run afresh in a new run directory"
    if path.name == BEST:
        return f"; use {LAST} instead (--checkpoint last) or train the run again"
    return ""


def _unreadable(path: Path, exc: Exception) -> str:
    """Why torch could not load ``path``, in our words (torch's own advice to drop weights_only is not ours)."""
    if path.stat().st_size == 0:
        return "empty file (0 bytes)"
    if not zipfile.is_zipfile(path):
        return "not a torch checkpoint: no complete zip archive (a truncated copy, random bytes or another format)"
    if isinstance(exc, pickle.UnpicklingError):
        return "holds Python objects other than tensors and plain values, so luna-train did not write it"
    return f"unreadable torch file ({type(exc).__name__}; truncated or corrupt)"


def _check_schema(data: Any) -> str | None:
    """What is wrong with a loaded checkpoint's kind, version and keys (None: nothing)."""
    if not isinstance(data, dict) or "kind" not in data:
        return f"not a luna-train checkpoint (no {CHECKPOINT_KIND!r} kind; a bare state_dict or another tool's file?)"
    if data["kind"] != CHECKPOINT_KIND:
        return f"not a luna-train checkpoint (kind {data['kind']!r}, expected {CHECKPOINT_KIND!r})"
    version = data.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        return f"invalid checkpoint schema version {version!r}"
    if version > CHECKPOINT_VERSION:
        return (f"written by a newer luna-train (checkpoint schema version {version}, this version reads up to "
                f"{CHECKPOINT_VERSION}); upgrade luna-train")
    missing = [k for k in CHECKPOINT_KEYS if k not in data]
    return f"incomplete checkpoint: lacks {missing}" if missing else None


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """A checkpoint written by :func:`save_checkpoint`, loaded with ``weights_only=True`` and its schema checked.

    Raises :class:`CheckpointError` (naming ``path``) for a file it cannot use, a truncated one included (torch's
    zip reader calls that an OSError, EINVAL); a missing or unreadable file's own OSError passes through.
    """
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            data = torch.load(path, map_location=map_location, weights_only=True)
    except (FileNotFoundError, PermissionError, IsADirectoryError):
        raise
    except Exception as exc:  # torch raises EOFError, RuntimeError, UnpicklingError, KeyError... for bad files
        raise CheckpointError(f"{path}: {_unreadable(path, exc)}{_advice(path)}") from None
    problem = _check_schema(data)
    if problem is not None:
        raise CheckpointError(f"{path}: {problem}{_advice(path)}")
    return from_plain(data)
