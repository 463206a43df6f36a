"""Checkpoints: atomic writes, plain contents that load with ``torch.load(path, weights_only=True)``, RNG states.

A checkpoint is a dict of tensors, numbers, strings, lists and dicts only: model / optimizer /
scheduler / scaler / sampler states, loop counters, early-stopping state, RNG states of Python,
NumPy and torch (per rank), and the resolved config as a plain dict. NumPy arrays are stored as
``{"__ndarray__": tensor}`` and come back as arrays from :func:`load_checkpoint`.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from luna_prep.files import atomic_path

LAST = "last.pt"
BEST = "best.pt"


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


def save_checkpoint(path: str | Path, payload: dict) -> None:
    """Write ``payload`` to ``path`` atomically (temporary file in the same folder, then os.replace)."""
    with atomic_path(path) as tmp:
        torch.save(to_plain(payload), tmp)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """A checkpoint written by :func:`save_checkpoint`, loaded with ``weights_only=True``."""
    data = torch.load(Path(path), map_location=map_location, weights_only=True)
    return from_plain(data)
