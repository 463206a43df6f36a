"""A store opened through its card is pinned to it: it cannot change under a run unnoticed."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from luna_prep.format.pins import StoreChangedError
from luna_prep.format.reader import PatchStore
from luna_prep.format.spec import MANIFEST_FILE
from luna_prep.sharing.cards import (
    ChecksumMismatch,
    open_dataset,
    resolve_dataset,
    write_card,
)

from conftest import write_tiny_store
from http_server import serve_directory

SHARD = "patches/16/image/c/1/0/0/0"  # rows 8..15 of scale 16


@pytest.fixture
def carded(tmp_path):
    root = Path(write_tiny_store(tmp_path / "s.zarr", n_scans=4))
    card = write_card(root, "s", tmp_path / "manifests")
    return root, str(card)


def _replace_shard(root: Path, donor: str = "patches/16/image/c/2/0/0/0") -> None:
    """Put another shard's bytes in SHARD's place (a valid shard, other patches)."""
    shutil.copyfile(root / donor, root / SHARD)


def test_a_pinned_store_reads_the_same_values(carded):
    root, card = carded
    plain, pinned = PatchStore(root), open_dataset(resolve_dataset(card, pinned=True))
    assert pinned.root == str(root) and pinned.pins is not None
    pd.testing.assert_frame_equal(plain.manifest, pinned.manifest)
    rows = list(range(0, 32, 3))
    for a, b in zip(plain.read_stored_many(16, rows), pinned.read_stored_many(16, rows)):
        assert all(np.array_equal(x, y) for x, y in zip(a, b))
    for i in rows:  # second reads are ranged reads checked block by block
        assert np.array_equal(plain.read_patch(24, i)[0], pinned.read_patch(24, i)[0])


def test_a_manifest_swapped_after_the_check_is_not_used(carded):
    root, card = carded
    store = open_dataset(resolve_dataset(card, pinned=True))
    full = pd.read_parquet(root / MANIFEST_FILE)
    full.head(24).to_parquet(root / MANIFEST_FILE, index=False)  # the server swaps it: 24 rows instead of 64
    assert len(store.manifest) == len(full) == 64  # the checked bytes are held
    with pytest.raises(ChecksumMismatch, match=r"s\.zarr: manifest\.parquet does not match the card"):
        open_dataset(card)  # a process opening the card afresh (a worker) checks it again


def test_a_shard_that_differs_from_the_card_is_refused_on_first_read(carded):
    root, card = carded
    store = open_dataset(card)
    _replace_shard(root)
    for read in (lambda: store.read_patch(16, 9), lambda: store.read_stored_many(16, [8, 9])):
        with pytest.raises(StoreChangedError, match=rf"s\.zarr/{SHARD} changed since the card .*s\.json was checked "
                                                    r"\([\d,]+ bytes, sha256 .*card: [\d,]+ bytes"):
            read()
    assert np.array_equal(store.read_patch(16, 1)[0], PatchStore(root).read_patch(16, 1)[0])  # other shards read


def test_a_shard_replaced_mid_run_is_noticed(carded):
    root, card = carded
    store = open_dataset(card)
    before = store.read_patch(16, 9)[0]  # first read: the whole shard, checked against the card
    data = bytearray((root / SHARD).read_bytes())
    data[100] ^= 0x01  # same size, one bit: the chunk at offset 0 (row 8) and its block change
    (root / SHARD).write_bytes(bytes(data))
    with pytest.raises(StoreChangedError, match=rf"{SHARD} changed since .*bytes 0\.\. differ from what this run "
                                                "read first"):
        store.read_patch(16, 8)
    copy = pickle.loads(pickle.dumps(store))  # a DataLoader worker: the pins travel, the first read is redone
    assert copy.pins == store.pins
    with pytest.raises(StoreChangedError, match=rf"{SHARD} changed since"):
        copy.read_patch(16, 9)
    assert np.array_equal(before, PatchStore(root).read_patch(16, 9)[0])  # the bit is in another chunk


@pytest.mark.parametrize("served", [False, True])
def test_a_shard_replaced_mid_run_is_noticed_by_the_loaders_batch_reads(carded, served, monkeypatch):
    """The training loader reads batches (``read_stored_many``): locally into a reused buffer, remotely as ranges
    arrive. Both go through the pins: they had read the inner location directly, unchecked after a shard's
    first read."""
    from luna_prep.format.shards import ShardedPatchArray

    monkeypatch.setattr(ShardedPatchArray, "remote_tail", 0)  # no small shard held whole: every chunk is fetched
    root, card = carded
    with serve_directory(root.parent) as (base, _):
        store = open_dataset(resolve_dataset(card, store_url=f"{base}/s.zarr" if served else None, pinned=True))
        assert store.pins is not None
        store.read_stored_many(16, [8, 9])  # first read: the whole shard, checked against the card
        data = bytearray((root / SHARD).read_bytes())
        data[100] ^= 0x01
        (root / SHARD).write_bytes(bytes(data))
        with pytest.raises(StoreChangedError, match=rf"{SHARD} changed since .*differ from what this run read first"):
            store.read_stored_many(16, [8, 9])


def test_rows_past_the_arrays_are_an_error_not_blank_patches(carded):
    store = PatchStore(carded[0])
    rows = store.image_array(16).shape[0]
    for row in (rows, -1):
        with pytest.raises(IndexError, match=rf"patches/16/image: row {row} outside 0\.\.{rows - 1}"):
            store.read_stored_many(16, [0, row])


def test_files_the_card_does_not_list_are_refused(carded):
    root, _ = carded
    extra = "patches/24/mask/c/3/0/0/0"
    (root / extra).unlink()  # a shard of empty masks: no file, and the card lists none
    card = str(write_card(root, "s", root.parent / "manifests"))
    store = open_dataset(card)
    assert not store.patches(24, "mask").read(25).any()
    store = open_dataset(card)
    shutil.copyfile(root / "patches/24/mask/c/0/0/0/0", root / extra)
    with pytest.raises(StoreChangedError, match=rf"{extra} changed since .*a file the card does not list"):
        store.patches(24, "mask").read(25)
    (root / SHARD).unlink()  # a listed file that disappears is a change too, not an empty shard
    with pytest.raises(StoreChangedError, match=rf"{SHARD} changed since .*\(missing\)"):
        store.read_patch(16, 8)


def test_the_store_url_reaches_processes_that_reopen_the_card(carded, tmp_path, monkeypatch):
    root, card = carded
    monkeypatch.delenv("LUNA_PREP_CARD_STORES", raising=False)
    moved = tmp_path / "www" / "s.zarr"
    shutil.copytree(root, moved)
    shutil.rmtree(root)
    with serve_directory(tmp_path / "www") as (base, _):
        ref = resolve_dataset(card, store_url=f"{base}/s.zarr", pinned=True)
        assert ref == card
        store = open_dataset(ref)  # what a worker does with the dataset string
        assert store.root == f"{base}/s.zarr" and len(store.manifest) == 64
        assert np.array_equal(store.read_patch(24, 3)[0], PatchStore(moved).read_patch(24, 3)[0])
        _replace_shard(moved)
        with pytest.raises(StoreChangedError, match=rf"{base}/s\.zarr/{SHARD} changed since"):
            store.read_patch(16, 9)
