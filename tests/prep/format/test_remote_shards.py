"""Remote shards: a small shard is read whole by its first request and its patches cost no more requests;
larger shards fall back to index reads; what is held stays under its cap. Values always equal local reads."""

from __future__ import annotations

import numpy as np
import pytest

from luna_prep.format.reader import PatchStore
from luna_prep.format.shards import ShardedPatchArray

from conftest import write_tiny_store
from http_server import serve_directory

N_SCANS = 4  # shard_patches 8, 8 samples a scan: one shard per scan and array


@pytest.fixture
def served(tmp_path):
    root = write_tiny_store(tmp_path / "s.zarr", scales=(16,), n_scans=N_SCANS)
    with serve_directory(tmp_path) as (base, log):
        yield PatchStore(root), f"{base}/s.zarr", log


def _all_rows(store: PatchStore) -> list[int]:
    return sorted(int(i) for i in store.manifest["index"])


def _assert_same(remote: PatchStore, local: PatchStore, rows: list[int]) -> None:
    for got, want in zip(remote.read_stored_many(16, rows), local.read_stored_many(16, rows)):
        assert all(np.array_equal(a, b) for a, b in zip(got, want))


def _shard_reads(log) -> list[tuple[str, str | None]]:
    return [(path, rng) for path, rng in log.ranged() if "/patches/" in path]


def test_small_remote_shards_are_read_whole_once(served):
    local, url, log = served
    remote = PatchStore(url)
    assert len(remote.manifest) == 8 * N_SCANS  # read before the log is reset
    rows = _all_rows(local)
    log.reset()
    _assert_same(remote, local, rows)
    reads = _shard_reads(log)
    # one request per shard file (image and mask of each scan), each the first read's suffix range
    assert sorted(p for p, _ in reads) == sorted({p for p, _ in reads})
    assert len(reads) == 2 * N_SCANS
    assert {rng for _, rng in reads} == {f"bytes=-{ShardedPatchArray.remote_tail}"}
    log.reset()
    _assert_same(remote, local, rows[::-1])
    assert remote.read_patch(16, rows[3])[1].sum() == local.read_patch(16, rows[3])[1].sum()
    assert _shard_reads(log) == []  # everything from the held shards
    image = remote.patches(16, "image")
    held = sum(len(b) for b in image._held.values())
    assert held == image._held_bytes == sum(
        local.location.local_size(image.shard_key(k)) for k in range(N_SCANS))


def test_shards_larger_than_the_first_read_fall_back_to_index_reads(served, monkeypatch):
    local, url, log = served
    remote = PatchStore(url)
    image = remote.patches(16, "image")
    index_bytes = image.layout.nbytes
    monkeypatch.setattr(ShardedPatchArray, "remote_tail", index_bytes + 8)  # smaller than every shard file
    assert len(remote.manifest) == 8 * N_SCANS  # read before the log is reset
    log.reset()
    first = [r for r in _all_rows(local) if r < 8]  # the first scan's shard
    _assert_same(remote, local, first)
    reads = [rng for path, rng in _shard_reads(log) if "/image/" in path]
    assert reads[0] == f"bytes=-{index_bytes + 8}"  # the tail, not the whole file
    assert len(reads) == 1 + len(first)  # then one request a patch
    log.reset()
    later = [r for r in _all_rows(local) if 8 <= r < 16]
    _assert_same(remote, local, later)
    reads = [rng for path, rng in _shard_reads(log) if "/image/" in path]
    assert reads[0] == f"bytes=-{index_bytes}"  # this array's shards are larger: the index alone
    assert image._held == {}


def test_held_shards_stop_at_their_cap(served, monkeypatch):
    local, url, _ = served
    one_shard = local.location.local_size(local.patches(16, "image").shard_key(0))
    monkeypatch.setattr(ShardedPatchArray, "max_held_bytes", one_shard + 1)
    remote = PatchStore(url)
    rows = _all_rows(local)
    _assert_same(remote, local, rows)
    image = remote.patches(16, "image")
    assert image._held_bytes <= one_shard + 1 and len(image._held) == 1
    _assert_same(remote, local, rows[::-1])  # the rest read by ranges, the same values


def test_only_http_stores_ask_for_more_than_the_index(served, tmp_path):
    local, url, _ = served
    from luna_prep.sharing.pack import pack_store

    pack_store(local.root, tmp_path / "s.zip")
    index_bytes = local.patches(16, "image").layout.nbytes
    assert local.patches(16, "image")._tail_bytes() == index_bytes  # a folder: pread costs next to nothing
    # a .zip (and object stores, whose clients may not take a suffix longer than the file): the index alone
    assert PatchStore(tmp_path / "s.zip").patches(16, "image")._tail_bytes() == index_bytes
    assert PatchStore(url).patches(16, "image")._tail_bytes() == ShardedPatchArray.remote_tail
