"""Shards from someone else: every size an index or a chunk states is checked, every v2 chunk's crc32c."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import numcodecs
import numpy as np
import pytest
import zarr

from luna_prep.format.codecs import decode_into, parse_codecs
from luna_prep.format.reader import PatchStore
from luna_prep.format.shard_layout import ShardIndex
from luna_prep.format.shards import ShardedPatchArray
from luna_prep.format.spec import FormatError
from luna_prep.format.writer import StorageConfig, write_shard
from luna_prep.sharing.verify import verify

from conftest import write_tiny_store
from http_server import serve_directory

SHARD = "patches/16/image/c/0/0/0/0"  # rows 0..7 of scale 16
LAYOUT = ShardIndex(8)


@pytest.fixture
def store(tmp_path):
    return write_tiny_store(tmp_path / "s.zarr", n_scans=2)


def _set_index(root, rel, change) -> None:
    """Rewrite a shard's index (with a valid crc32c) after ``change(index)``."""
    path = Path(root, rel)
    data = path.read_bytes()
    index = LAYOUT.decode(data).copy()
    change(index)
    path.write_bytes(data[:-LAYOUT.nbytes] + LAYOUT.encode(index))


def _reads(root):
    """Every way a reader gets row 2 of scale 16."""
    return [lambda: PatchStore(root).read_patch(16, 2), lambda: PatchStore(root).read_stored_many(16, [1, 2]),
            lambda: PatchStore(root).patches(16, "image").read_shard(0)]


def test_an_index_entry_of_2_to_the_40_bytes_is_refused_before_reading(store):
    _set_index(store, SHARD, lambda ix: ix.__setitem__((2, 1), 2**40))
    tracemalloc.start()
    for read in _reads(store):
        with pytest.raises(FormatError, match=rf"s\.zarr/{SHARD}: index entry 2 says chunk 2 is 1,099,511,627,776 "
                                              "bytes; a chunk of this array is 1..4,116 bytes"):
            read()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 20e6  # nothing allocated from the stated size
    report = verify(store, deep=True)
    assert any(SHARD in p and "index entry 2" in p for p in report.problems), report.format()


def test_an_offset_past_the_end_of_the_file_is_refused_locally_and_over_http(store, tmp_path, monkeypatch):
    good = PatchStore(store).read_patch(16, 1)[0]
    _set_index(store, SHARD, lambda ix: ix.__setitem__((3, 0), 10**6))
    for read in _reads(store):
        with pytest.raises(FormatError, match=rf"{SHARD}: index entry 3 \(offset 1,000,000, [\d,]+ bytes\) runs past"):
            read()
    with serve_directory(tmp_path) as (base, _):
        # a small shard is read whole over HTTP, so its size is known and the index refused as locally
        for read in _reads(f"{base}/s.zarr"):
            with pytest.raises(FormatError, match=rf"{SHARD}: index entry 3 \(offset 1,000,000, [\d,]+ bytes\) runs"):
                read()
        # a shard larger than the first read: its size is not known, the short read is caught
        monkeypatch.setattr(ShardedPatchArray, "remote_tail", 0)
        remote = PatchStore(f"{base}/s.zarr")
        with pytest.raises(FormatError,
                           match=rf"{SHARD} \(row 3\): the file ends inside the chunk \(0 of [\d,]+ bytes\)"):
            remote.read_patch(16, 3)
        with pytest.raises(FormatError, match=rf"{SHARD} \(row 3\): the file ends inside the chunk"):
            remote.read_stored_many(16, [3])
        assert np.array_equal(remote.read_patch(16, 1)[0], good)  # remotely, the other rows still read


def test_half_empty_entries_and_short_files_are_refused(store, tmp_path):
    _set_index(store, SHARD, lambda ix: ix.__setitem__((4, 1), 2**64 - 1))
    with pytest.raises(FormatError, match=rf"{SHARD}: index entry 4 has an offset or a length but not both"):
        PatchStore(store).read_patch(16, 0)
    Path(store, SHARD).write_bytes(b"\0" * 20)
    with pytest.raises(FormatError, match=rf"{SHARD}: 20 bytes, shorter than its shard index \(132 bytes\)"):
        PatchStore(store).read_patch(16, 0)


def _flip(root, rel, at: int, n: int = 8) -> None:
    path = Path(root, rel)
    data = bytearray(path.read_bytes())
    data[at:at + n] = bytes(b ^ 0xA5 for b in data[at:at + n])
    path.write_bytes(bytes(data))


def test_eight_flipped_bytes_inside_an_image_chunk_are_found(store, tmp_path):
    good = PatchStore(store).read_stored(16, 1)[0]
    start, stop = LAYOUT.span(LAYOUT.decode(Path(store, SHARD).read_bytes()), 2)
    _flip(store, SHARD, (start + stop) // 2)
    for read in _reads(store):
        with pytest.raises(FormatError, match=rf"s\.zarr/{SHARD} \(row 2\): chunk checksum \(crc32c\) mismatch"):
            read()
    assert np.array_equal(PatchStore(store).read_stored(16, 1)[0], good)  # the other rows still read
    with serve_directory(tmp_path) as (base, _), \
            pytest.raises(FormatError, match=rf"{SHARD} \(row 2\): chunk checksum \(crc32c\) mismatch"):
        PatchStore(f"{base}/s.zarr").read_patch(16, 2)
    report = verify(store, deep=True)
    assert not report.ok and "(row 2): chunk checksum (crc32c) mismatch" in report.format()


def test_a_blosc_header_that_lies_about_the_size_is_refused(store):
    """A chunk with a valid crc32c whose Blosc header claims another decoded size (a decompression bomb)."""
    data = bytearray(Path(store, SHARD).read_bytes())
    start, stop = LAYOUT.span(LAYOUT.decode(bytes(data)), 0)
    payload = bytearray(data[start:stop - 4])
    payload[4:8] = (2**31 - 1).to_bytes(4, "little")  # nbytes of the Blosc header
    data[start:stop] = bytes(numcodecs.CRC32C().encode(bytes(payload)))
    Path(store, SHARD).write_bytes(bytes(data))
    with pytest.raises(FormatError, match=rf"{SHARD} \(row 0\): chunk decodes to 2,147,483,647 bytes, the array's "
                                          "chunk is 4,096"):
        PatchStore(store).read_patch(16, 0)


def test_the_direct_writer_writes_the_bytes_zarr_writes(tmp_path, store):
    """Format v2 shards: zarr-python writing the same patches into the same metadata gives the same file."""
    images = np.stack([PatchStore(store).read_stored(24, i)[0] for i in range(8)])
    images[5] = 0  # an empty chunk: not stored by either
    write_shard(store, "patches/24/image", 0, images, StorageConfig(shard_patches=8))
    arr = zarr.open_group(store, mode="r+")["patches/24/image"]
    assert [c.get("name") for c in arr.metadata.to_dict()["codecs"][0]["configuration"]["codecs"]] == \
        ["bytes", "blosc", "crc32c"]
    arr[8:16] = images
    mine = Path(store, "patches/24/image/c/0/0/0/0").read_bytes()
    theirs = Path(store, "patches/24/image/c/1/0/0/0").read_bytes()
    assert mine == theirs
    assert np.array_equal(arr[0:8], images) and np.array_equal(PatchStore(store).read_stored(24, 13)[0], images[5])


def test_a_v2_array_without_chunk_checksums_is_refused(store):
    meta_path = Path(store, "zarr.json")
    meta = json.loads(meta_path.read_text())
    node = meta["consolidated_metadata"]["metadata"]["patches/16/image"]
    node["codecs"][0]["configuration"]["codecs"].pop()  # drop crc32c: a v2 store must have it
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(FormatError, match=r"patches/16/image: codecs \['bytes', 'blosc'\] lack the crc32c"):
        PatchStore(store).read_patch(16, 0)


@pytest.mark.parametrize("name, codec", [("zstd", numcodecs.Zstd()), ("gzip", numcodecs.GZip()),
                                         ("blosc", numcodecs.Blosc())])
def test_every_allowed_compressor_decodes_and_refuses_a_bomb(name, codec):
    chain = parse_codecs([{"name": "bytes"}, {"name": name}, {"name": "crc32c"}], "a", require_checksum=True)
    patch = np.random.default_rng(0).integers(0, 9, (64, 64, 64), dtype=np.uint8)
    out = np.empty_like(patch)
    decode_into(chain, bytes(numcodecs.CRC32C().encode(codec.encode(patch))), out, "a/c/0/0/0/0 (row 0)")
    assert np.array_equal(out, patch)
    bomb = bytes(numcodecs.CRC32C().encode(codec.encode(np.zeros(2**24, np.uint8))))  # 16 MiB decoded
    assert len(bomb) < patch.nbytes
    with pytest.raises(FormatError, match=r"a/c/0/0/0/0 \(row 0\): chunk decodes to (16,777,216|an unknown number of) "
                                          "bytes, the array's chunk is 262,144"):
        decode_into(chain, bomb, out, "a/c/0/0/0/0 (row 0)")
    with pytest.raises(FormatError, match=r"codecs \['bytes', 'numcodecs.pickle', 'crc32c'\] are not allowed"):
        parse_codecs([{"name": "bytes"}, {"name": "numcodecs.pickle"}, {"name": "crc32c"}], "a")


def test_blosc_decodes_on_the_calling_thread_and_leaves_numcodecs_switch_as_it_was(monkeypatch):
    from numcodecs import blosc

    seen = []
    real = blosc.decompress
    monkeypatch.setattr(blosc, "decompress", lambda data, out: (seen.append(blosc.use_threads), real(data, out)))
    monkeypatch.setattr(blosc, "use_threads", True)
    chain = parse_codecs([{"name": "bytes"}, {"name": "blosc"}, {"name": "crc32c"}], "a", require_checksum=True)
    patch = np.random.default_rng(1).integers(0, 200, (32, 32, 32), dtype=np.uint8)
    out = np.empty_like(patch)
    decode_into(chain, bytes(numcodecs.CRC32C().encode(numcodecs.Blosc().encode(patch))), out, "a")
    assert np.array_equal(out, patch)
    assert seen == [False]  # Blosc's own threads off while decoding (readers are parallel across processes)
    assert blosc.use_threads is True  # the caller's setting is back


def test_requests_are_the_shard_index_spans_including_rows_never_written(store):
    from luna_prep.format.shard_layout import EMPTY

    for name in ("image", "mask"):
        array = PatchStore(store).patches(16, name)
        rows = list(range(len(array)))
        expected = []
        for row in rows:
            shard, within = divmod(row, array.shard_len)
            path = Path(store, array.shard_key(shard))
            if not path.exists():
                expected.append(None)
                continue
            offset, nbytes = LAYOUT.decode(path.read_bytes())[within]
            expected.append(None if offset == EMPTY else (array.shard_key(shard), int(offset), int(offset + nbytes)))
        assert array.requests(rows[::-1]) == expected[::-1]
        assert array.requests(rows) == expected  # the second time from the cached per-shard lists
    assert any(r is None for r in PatchStore(store).patches(16, "mask").requests(rows))  # empty masks are not stored
