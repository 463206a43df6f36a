"""The byte layout of one shard file of a luna-patches array: the only place it is written down.

A patch array is a Zarr v3 ``sharding_indexed`` array, one patch per inner chunk, its index at the
end (``index_codecs`` bytes + crc32c). A shard file is::

    chunk 0 | chunk 1 | ... (stored chunks back to back, compressed)
    index: n_chunks x (offset, nbytes) little-endian uint64, then crc32c of the index (4 bytes)

A chunk never written (all fill value) has index entry (2^64-1, 2^64-1) and no bytes; a shard with
no stored chunk is no file at all. The shard holding rows [k*n, (k+1)*n) is ``<array>/c/<k>/0/0/0``.
The writer (:mod:`~luna_prep.format.writer`), the reader (:mod:`~luna_prep.format.shards`) and
``clear_rows`` all go through :class:`ShardIndex` and :func:`shard_key`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numcodecs
import numpy as np

from luna_prep.format.spec import FormatError

EMPTY = np.uint64(2**64 - 1)  # offset and nbytes of a chunk that is not stored
INDEX_DTYPE = np.dtype("<u8")
INDEX_CODECS = ["bytes", "crc32c"]  # zarr's index_codecs for this layout (index at the end)
_CRC = numcodecs.CRC32C()


def shard_prefix(array: str, shard: int, sep: str = "/") -> str:
    """The key prefix of shard ``shard`` of ``array``: the folder holding its file in a local store."""
    return f"{array}/c{sep}{int(shard)}"


def shard_key(array: str, shard: int, sep: str = "/") -> str:
    """Key of the shard file holding rows [shard * n, (shard + 1) * n) of a (N, s, s, s) array."""
    return f"{shard_prefix(array, shard, sep)}{sep}0{sep}0{sep}0"


@dataclass(frozen=True)
class ShardIndex:
    """The index codec of shards holding ``n_chunks`` chunks (patches)."""

    n_chunks: int

    @property
    def nbytes(self) -> int:
        """Size of the index at the end of every shard file: 16 bytes per chunk plus the crc32c."""
        return self.n_chunks * 16 + 4

    def empty(self) -> np.ndarray:
        """An (n_chunks, 2) index with every chunk absent."""
        return np.full((self.n_chunks, 2), EMPTY, dtype=INDEX_DTYPE)

    def encode(self, index: np.ndarray) -> bytes:
        """The index's bytes as they end a shard file (little-endian pairs, then crc32c)."""
        return bytes(_CRC.encode(np.ascontiguousarray(index, dtype=INDEX_DTYPE).tobytes()))

    def decode(self, tail: bytes, where: str = "shard") -> np.ndarray:
        """The (n_chunks, 2) index from a shard file's last :attr:`nbytes` bytes (or the whole file)."""
        if len(tail) < self.nbytes:
            raise FormatError(f"{where}: {len(tail)} bytes, shorter than its shard index ({self.nbytes} bytes)")
        try:
            body = _CRC.decode(tail[-self.nbytes:])
        except RuntimeError as exc:
            raise FormatError(f"{where}: shard index checksum mismatch") from exc
        return np.frombuffer(body, dtype=INDEX_DTYPE).reshape(self.n_chunks, 2)

    def check(self, index: np.ndarray, max_chunk: int, file_size: int | None, where: str) -> np.ndarray:
        """``index`` if every stored entry is sane: no chunk longer than ``max_chunk`` bytes and, when the
        file's size is known, every chunk inside the data region (before the index). FormatError otherwise."""
        offset, nbytes = index[:, 0], index[:, 1]
        absent = offset == EMPTY
        bad = np.flatnonzero(absent != (nbytes == EMPTY))
        if bad.size:
            raise FormatError(f"{where}: index entry {int(bad[0])} has an offset or a length but not both")
        stored = ~absent
        big = np.flatnonzero(stored & ((nbytes > max_chunk) | (nbytes == 0)))
        if big.size:
            k = int(big[0])
            raise FormatError(f"{where}: index entry {k} says chunk {k} is {int(nbytes[k]):,} bytes; "
                              f"a chunk of this array is 1..{max_chunk:,} bytes")
        if file_size is not None:
            end = file_size - self.nbytes
            past = np.flatnonzero(stored & ((offset > end) | (nbytes > end - np.minimum(offset, end))))
            if past.size:
                k = int(past[0])
                raise FormatError(f"{where}: index entry {k} (offset {int(offset[k]):,}, {int(nbytes[k]):,} bytes) "
                                  f"runs past the data region (the index starts at byte {end:,})")
        return index

    def pack(self, chunks: Sequence[bytes | None]) -> list[bytes]:
        """The parts of a shard file holding ``chunks`` (None: not stored), or [] when none is stored."""
        if len(chunks) > self.n_chunks:
            raise ValueError(f"{len(chunks)} chunks do not fit a shard of {self.n_chunks}")
        index, parts, offset = self.empty(), [], 0
        for k, blob in enumerate(chunks):
            if blob is None:
                continue
            index[k] = (offset, len(blob))
            parts.append(blob)
            offset += len(blob)
        return parts + [self.encode(index)] if parts else []

    @staticmethod
    def span(index: np.ndarray, k: int) -> tuple[int, int] | None:
        """(start, stop) byte range of chunk ``k`` in its shard file, None when it is not stored."""
        offset, nbytes = index[k]
        if offset == EMPTY:
            return None
        return int(offset), int(offset + nbytes)

    def spans(self, index: np.ndarray) -> Iterator[tuple[int, int, int]]:
        """(k, start, stop) of every stored chunk."""
        for k in range(self.n_chunks):
            span = self.span(index, k)
            if span is not None:
                yield k, span[0], span[1]
