"""The shard byte layout: what the writer packs the reader finds, and zarr agrees."""

import numcodecs
import numpy as np
import pytest

from luna_prep.format.shard_layout import EMPTY, ShardIndex, shard_key, shard_prefix
from luna_prep.format.spec import FormatError


def test_pack_then_decode_finds_every_chunk():
    layout = ShardIndex(4)
    chunks = [b"abc", None, b"", b"0123456789"]
    chunks[2] = None
    data = b"".join(layout.pack(chunks))
    assert len(data) == 3 + 10 + layout.nbytes and layout.nbytes == 4 * 16 + 4
    index = layout.decode(data)
    assert index.dtype == np.dtype("<u8") and index.shape == (4, 2)
    assert index[1].tolist() == [EMPTY, EMPTY]
    assert [(k, data[a:b]) for k, a, b in layout.spans(index)] == [(0, b"abc"), (3, b"0123456789")]
    assert layout.span(index, 2) is None
    # the index is (offset, nbytes) little-endian pairs followed by its crc32c
    tail = data[-layout.nbytes:]
    assert np.frombuffer(tail[:-4], "<u8").reshape(4, 2)[3].tolist() == [3, 10]
    assert tail == bytes(numcodecs.CRC32C().encode(tail[:-4]))


def test_an_empty_shard_is_no_file_and_a_bad_checksum_is_named():
    layout = ShardIndex(2)
    assert layout.pack([None, None]) == []
    data = bytearray(b"".join(layout.pack([b"xy"])))
    data[-5] ^= 1
    with pytest.raises(FormatError, match="s.zarr/x: shard index checksum mismatch"):
        layout.decode(bytes(data), "s.zarr/x")
    with pytest.raises(ValueError, match="do not fit"):
        layout.pack([b"a"] * 3)


def test_shard_keys():
    assert shard_key("patches/64/image", 3) == "patches/64/image/c/3/0/0/0"
    assert shard_key("patches/64/image", 3, ".") == "patches/64/image/c.3.0.0.0"
    assert shard_key("a", 7).startswith(shard_prefix("a", 7) + "/")
