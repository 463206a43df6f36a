"""Where a store lives: links out of a local store are refused; servers that ignore Range are named."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from luna_prep.format.location import RangeRequestIgnored, StoreLocation, UnsafePathError
from luna_prep.format.reader import PatchStore
from luna_prep.format.shards import ShardedPatchArray

from conftest import write_tiny_store
from http_server import serve_directory


def test_a_link_out_of_the_store_is_not_followed(tmp_path):
    root = write_tiny_store(tmp_path / "s.zarr", n_scans=1)
    secret = tmp_path / "secret.txt"
    secret.write_text("not yours")
    os.symlink(secret, f"{root}/manifest.parquet.link")
    shard = f"{root}/patches/16/image/c/0/0/0/0"
    os.replace(shard, tmp_path / "outside-shard")
    os.symlink(tmp_path / "outside-shard", shard)
    loc = StoreLocation.open(root)
    with pytest.raises(UnsafePathError, match=r"manifest\.parquet\.link is a link to .*secret\.txt, outside the store"):
        loc.read("manifest.parquet.link")
    with pytest.raises(UnsafePathError, match="outside the store"):
        loc.list_files()
    with pytest.raises(UnsafePathError, match=r"patches/16/image/c/0/0/0/0 is a link"):
        PatchStore(root).read_patch(16, 0)


def test_a_link_inside_the_store_is_read(tmp_path):
    root = write_tiny_store(tmp_path / "s.zarr", n_scans=1)
    os.symlink(f"{root}/manifest.parquet", f"{root}/alias.parquet")
    loc = StoreLocation.open(root)
    assert loc.read("alias.parquet") == loc.read("manifest.parquet")


def test_a_server_that_ignores_range_is_named(tmp_path, monkeypatch):
    root = write_tiny_store(tmp_path / "s.zarr", n_scans=1)
    with serve_directory(tmp_path, ranges=False) as (base, _):
        store = PatchStore(f"{base}/s.zarr")
        assert len(store.manifest) == 16  # whole-file reads still work
        # a shard smaller than a remote shard's first read is asked for whole, so the answer is right
        assert all(np.array_equal(a, b) for a, b in zip(store.read_patch(16, 0), PatchStore(root).read_patch(16, 0)))
        monkeypatch.setattr(ShardedPatchArray, "remote_tail", 0)  # shards larger than that first read
        store = PatchStore(f"{base}/s.zarr")
        with pytest.raises(RangeRequestIgnored, match=r"s\.zarr: the server ignored an HTTP Range request for "
                                                      r"patches/16/image/c/0/0/0/0"):
            store.read_patch(16, 0)
        with pytest.raises(RangeRequestIgnored, match="ignored an HTTP Range request"):
            store.read_stored_many(16, [0, 1])


def test_the_same_store_over_a_server_with_ranges_reads_the_same(tmp_path):
    root = write_tiny_store(tmp_path / "s.zarr", n_scans=1)
    local = PatchStore(root)
    with serve_directory(tmp_path) as (base, _):
        remote = PatchStore(f"{base}/s.zarr")
        for i in range(4):
            assert all(np.array_equal(a, b) for a, b in zip(local.read_patch(24, i), remote.read_patch(24, i)))


def test_local_listing_gives_every_file_and_its_size(tmp_path):
    root = write_tiny_store(tmp_path / "s.zarr", n_scans=2)
    os.symlink(f"{root}/manifest.parquet", f"{root}/alias.parquet")  # a link inside the store: listed
    os.symlink(f"{root}/patches", f"{root}/patches/16/loop")  # a linked folder: an entry, not walked
    files = StoreLocation.open(root).list_files()
    expected = {p.relative_to(root).as_posix(): p.stat().st_size for p in Path(root).rglob("*") if p.is_file()}
    expected["patches/16/loop"] = (Path(root) / "patches").stat().st_size
    assert files == expected
    assert files["alias.parquet"] == (Path(root) / "manifest.parquet").stat().st_size
    assert sum(k.startswith("patches/16/image/") for k in files) >= 1


def test_ranged_reads_into_the_scratch_buffer_are_the_file_bytes(tmp_path):
    data = np.random.default_rng(0).integers(0, 256, 100_000, dtype=np.uint8).tobytes()
    (tmp_path / "f.bin").write_bytes(data)
    loc = StoreLocation.open(tmp_path)
    assert loc.is_local
    for start, stop in [(10, 20), (0, 50_000), (1_000, 99_000), (99_990, 100_000), (5, 6)]:  # the buffer grows once
        assert bytes(loc.read_range_into("f.bin", start, stop)) == data[start:stop]
    assert bytes(loc.read_range_into("f.bin", 99_000, 101_000)) == data[99_000:]  # short where the file ends
    with pytest.raises(FileNotFoundError):
        loc.read_range_into("missing.bin", 0, 10)


def test_threads_reading_one_store_at_once_get_the_values_read_alone(tmp_path):
    """Each thread reads into its own scratch buffer, and no thread closes a descriptor another is reading:
    with 2 descriptors kept open, nearly every read evicts one."""
    from concurrent.futures import ThreadPoolExecutor

    root = write_tiny_store(tmp_path / "s.zarr", n_scans=2, samples_per_scan=8)
    store = PatchStore(root)
    rows = list(range(len(store.patches(16, "image"))))
    images_alone, masks_alone = store.read_stored_many(16, rows)
    store.location.max_open_files = 2
    orders = [rows[k::3] + rows[:k:-1] for k in range(6)] * 4
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda order: store.read_stored_many(16, order), orders))
    for order, (images, masks) in zip(orders, results):
        for row, image, mask in zip(order, images, masks):
            assert np.array_equal(image, images_alone[row]) and np.array_equal(mask, masks_alone[row])


def test_a_damaged_or_unreachable_zip_is_named_with_what_is_wrong(tmp_path):
    """A truncated download raised zipfile.BadZipFile from deep inside fsspec; a server without Range support
    raised fsspec's ValueError; a missing one said only its address."""
    from luna_prep.format.spec import FormatError
    from luna_prep.sharing.pack import pack_store

    pack_store(write_tiny_store(tmp_path / "s.zarr", n_scans=1), tmp_path / "s.zip")
    whole = (tmp_path / "s.zip").read_bytes()
    (tmp_path / "trunc.zip").write_bytes(whole[:len(whole) // 2])
    with pytest.raises(FormatError, match=r"trunc\.zip: not a complete zip archive \(File is not a zip file\); a "
                                          r"truncated download\?"):
        StoreLocation.open(tmp_path / "trunc.zip")
    with pytest.raises(FileNotFoundError, match=r"nope\.zip: no such file"):
        StoreLocation.open(tmp_path / "nope.zip")
    with serve_directory(tmp_path, ranges=False) as (base, _):
        with pytest.raises(RangeRequestIgnored, match=r"s\.zip: the server does not support HTTP Range requests, "
                                                      r"which reading a \.zip there needs"):
            StoreLocation.open(f"{base}/s.zip")
        with pytest.raises(FileNotFoundError, match=r"nope\.zip: no such file"):
            StoreLocation.open(f"{base}/nope.zip")
    with serve_directory(tmp_path) as (base, _):
        assert len(PatchStore(f"{base}/s.zip").manifest) == 16
