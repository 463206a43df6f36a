"""Fuzz: random bytes of a small store's shards, shard indexes and metadata are corrupted (seeded); every
read must then either return the original values or fail with an error naming the corrupted file."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from luna_prep.format.reader import PatchStore
from luna_prep.format.shard_layout import ShardIndex
from luna_prep.sharing.cards import open_dataset, write_card

from conftest import write_tiny_store

SCALE = 16
TRIALS = 300
LAYOUT = ShardIndex(8)


def _snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _targets(files: dict[str, bytes]) -> list[tuple[str, int, int]]:
    """(file, first byte, end) regions to corrupt: shard data, shard indexes, zarr.json files, tables."""
    out = []
    for rel, data in files.items():
        if "/c/" in rel:
            out += [(rel, 0, len(data) - LAYOUT.nbytes), (rel, len(data) - LAYOUT.nbytes, len(data))]
        else:
            out.append((rel, 0, len(data)))
    return out


def _read_all(store: PatchStore, rows: list[int]) -> tuple[pd.DataFrame, list[np.ndarray]]:
    """The manifest, and every row read in one batch and every fifth row alone."""
    manifest = store.manifest
    images, masks = store.read_stored_many(SCALE, rows)
    singles = [a for i in rows[::5] for a in store.read_stored(SCALE, i)]
    return manifest, images + masks + singles


def _same(a, b) -> bool:
    return a[0].equals(b[0]) and all(x.dtype == y.dtype and np.array_equal(x, y) for x, y in zip(a[1], b[1]))


def _fuzz(root: Path, open_store, seed: int, trials: int, skip=lambda rel: False) -> dict[str, int]:
    files = _snapshot(root)
    targets = [t for t in _targets(files) if not skip(t[0])]
    rows = list(range(int(open_store().attrs.capacity)))
    original = _read_all(open_store(), rows)
    rng = np.random.default_rng(seed)
    outcome = {"same": 0, "named error": 0}
    for _ in range(trials):
        rel, lo, hi = targets[rng.integers(len(targets))]
        data = bytearray(files[rel])
        for at in rng.integers(lo, hi, size=rng.integers(1, 9)):
            data[at] ^= int(rng.integers(1, 256))
        (root / rel).write_bytes(bytes(data))
        try:
            got = _read_all(open_store(), rows)
        except Exception as exc:  # noqa: BLE001 - any error is fine if it names the file
            assert rel in str(exc), f"{rel} corrupted: {type(exc).__name__}: {exc}"
            outcome["named error"] += 1
        else:
            assert _same(got, original), f"{rel} corrupted at {lo}..{hi}: different values, no error"
            outcome["same"] += 1
        finally:
            (root / rel).write_bytes(files[rel])
    return outcome


def test_fuzz_a_store_read_directly(tmp_path):
    """Without a card, zarr.json has no checksum: a changed attribute (say spacing_mm) reads as changed;
    the patches and tables read must still be the original ones or an error. With a card, see below."""
    root = Path(write_tiny_store(tmp_path / "s.zarr", scales=(SCALE,), n_scans=3, samples_per_scan=6))
    t = time.perf_counter()
    outcome = _fuzz(root, lambda: PatchStore(root), seed=15, trials=TRIALS)
    assert time.perf_counter() - t < 20
    assert outcome["named error"] > TRIALS // 2 and sum(outcome.values()) == TRIALS, outcome


def test_fuzz_a_store_pinned_to_its_card(tmp_path):
    root = Path(write_tiny_store(tmp_path / "s.zarr", scales=(SCALE,), n_scans=3, samples_per_scan=6))
    card = str(write_card(root, "s", tmp_path / "manifests"))

    def never_read(rel):
        return rel.endswith("/zarr.json")

    outcome = _fuzz(root, lambda: open_dataset(card), seed=16, trials=TRIALS // 2, skip=never_read)
    assert outcome["same"] == 0 and outcome["named error"] == TRIALS // 2, outcome  # every change is caught


def test_reading_many_into_given_arrays_equals_reading_them_alone(tmp_path):
    """``read_stored_many(out=...)`` decodes into the caller's batch arrays; rows never written (empty
    masks) are filled with zeros, whatever the arrays held before."""
    from conftest import write_tiny_store

    root = write_tiny_store(tmp_path / "s.zarr", scales=(16,), n_scans=2, samples_per_scan=4)
    store = PatchStore(root)
    rows = list(range(len(store.manifest)))[::-1]
    images, masks = store.read_stored_many(16, rows)
    assert any(not m.any() for m in masks)
    out = tuple(np.full((len(rows), 16, 16, 16), 7, dtype=d) for d in store.stored_dtypes(16))
    got_images, got_masks = store.read_stored_many(16, rows, out=out)
    np.testing.assert_array_equal(out[0], np.stack(images))
    np.testing.assert_array_equal(out[1], np.stack(masks))
    assert all(np.shares_memory(g, out[0]) for g in got_images) and all(np.shares_memory(g, out[1]) for g in got_masks)
