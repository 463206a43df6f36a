"""The chunk codecs a luna-patches store may use, and bounded decoding of one chunk.

Patches and whole-scan volumes share one whitelist: ``bytes``, then at most one compressor (blosc,
zstd or gzip), then (format v2) ``crc32c``. Anything else, pickle included, is refused before a
byte of data is read. Decoding checks every size it is told before allocating or copying: a chunk
longer than a compressed chunk of its shape can be, a compressed header whose decompressed size is
not the chunk's, and (v2) a payload whose crc32c does not match are each a :class:`FormatError`
naming the file, never a ``MemoryError`` or values that differ from what was written.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numcodecs
import numpy as np
from numcodecs import blosc

from luna_prep.format.spec import FormatError

COMPRESSORS = ("blosc", "zstd", "gzip")
CHECKSUM = "crc32c"
ALLOWED_CODECS = ("bytes",) + COMPRESSORS + (CHECKSUM,)
_ZSTD_MAGIC = 0xFD2FB528


@dataclass(frozen=True)
class ChunkCodecs:
    """A parsed, allowed chunk codec chain."""

    compressor: str | None  # one of COMPRESSORS, or None (raw bytes)
    endian: str  # "little" or "big"
    checksum: bool  # a crc32c ends every chunk

    def max_encoded(self, raw_nbytes: int) -> int:
        """The most bytes a stored chunk of ``raw_nbytes`` decoded bytes can take."""
        if self.compressor is None:
            body = raw_nbytes
        elif self.compressor == "blosc":
            body = raw_nbytes + blosc.MAX_OVERHEAD
        else:  # deflate stores incompressible data with 5 bytes per 16 KiB; zstd needs less
            body = raw_nbytes + raw_nbytes // 1024 + 5 * (raw_nbytes // 16384 + 1) + 64
        return body + (4 if self.checksum else 0)


def parse_codecs(codecs: list, where: str, require_checksum: bool = False) -> ChunkCodecs:
    """The chain ``codecs`` of an array's metadata, if allowed; FormatError naming ``where`` otherwise."""
    names = [c.get("name") if isinstance(c, dict) else c for c in (codecs or [])]
    allowed = "bytes, then one of blosc, zstd, gzip, then crc32c"
    if not names or names[0] != "bytes" or any(n not in ALLOWED_CODECS for n in names):
        raise FormatError(f"{where}: codecs {names} are not allowed (allowed: {allowed})")
    checksum = names[-1] == CHECKSUM
    middle = names[1:-1] if checksum else names[1:]
    if len(middle) > 1 or any(n not in COMPRESSORS for n in middle):
        raise FormatError(f"{where}: codecs {names} are not allowed (allowed: {allowed})")
    if require_checksum and not checksum:
        raise FormatError(f"{where}: codecs {names} lack the crc32c this format version requires")
    endian = (codecs[0].get("configuration") or {}).get("endian", "little") if isinstance(codecs[0], dict) else "little"
    if endian not in ("little", "big"):
        raise FormatError(f"{where}: endian {endian!r}")
    return ChunkCodecs(compressor=middle[0] if middle else None, endian=endian, checksum=checksum)


def _zstd_content_size(b: bytes) -> int | None:
    """The decompressed size a zstd frame header declares (None: not declared or not a frame)."""
    if len(b) < 6 or int.from_bytes(b[:4], "little") != _ZSTD_MAGIC:
        return None
    fhd = b[4]
    single, fcs_flag, dict_flag = (fhd >> 5) & 1, fhd >> 6, fhd & 3
    pos = 5 + (0 if single else 1) + (0, 1, 2, 4)[dict_flag]
    width = (1 if single else 0, 2, 4, 8)[fcs_flag]
    if width == 0 or len(b) < pos + width:
        return None
    return int.from_bytes(b[pos:pos + width], "little") + (256 if width == 2 else 0)


def decode_into(codecs: ChunkCodecs, blob, out: np.ndarray, where: str) -> None:
    """Decode one stored chunk into ``out`` (C-contiguous, the chunk's shape and stored dtype)."""
    raw = out.nbytes
    if len(blob) > codecs.max_encoded(raw):
        raise FormatError(f"{where}: {len(blob):,} stored bytes, more than a chunk of {raw:,} bytes can take")
    data = np.frombuffer(blob, dtype=np.uint8)
    data.flags.writeable = False  # the crc32c implementation takes read-only buffers only
    if codecs.checksum:
        if len(data) < 4 or numcodecs.CRC32C.checksum(data[:-4]) != int.from_bytes(data[-4:].tobytes(), "little"):
            raise FormatError(f"{where}: chunk checksum (crc32c) mismatch: its bytes changed since they were written")
        data = data[:-4]
    target = out.reshape(-1).view(np.uint8)
    try:
        _decompress(codecs.compressor, data, target, where)
    except FormatError:
        raise
    except (RuntimeError, ValueError, TypeError, zlib.error, MemoryError) as exc:
        raise FormatError(f"{where}: chunk cannot be decoded ({type(exc).__name__}: {exc})") from exc


def _decompress(compressor: str | None, data: np.ndarray, target: np.ndarray, where: str) -> None:
    raw = target.nbytes
    if compressor is None:
        got = len(data)
    elif compressor == "blosc":
        if len(data) < blosc.MAX_OVERHEAD:
            raise FormatError(f"{where}: {len(data)} bytes, too short for a Blosc chunk")
        got, cbytes, _ = blosc._cbuffer_sizes(data)
        if cbytes != len(data):
            raise FormatError(f"{where}: Blosc header says {cbytes:,} compressed bytes, the chunk has {len(data):,}")
    elif compressor == "zstd":
        got = _zstd_content_size(data[:18].tobytes())
    else:
        d = zlib.decompressobj(wbits=31)
        plain = d.decompress(data, raw + 1)
        got = len(plain) if d.eof else None
    if got != raw:
        raise FormatError(f"{where}: chunk decodes to {'an unknown number of' if got is None else f'{got:,}'} bytes, "
                          f"the array's chunk is {raw:,}")
    if compressor is None:
        target[:] = data
    elif compressor == "blosc":
        blosc_decompress(data, target)
    elif compressor == "zstd":
        numcodecs.Zstd().decode(data, out=target)
    else:
        target[:] = np.frombuffer(plain, dtype=np.uint8)


@contextmanager
def blosc_on_this_thread() -> Iterator[None]:
    """Blosc encodes and decodes on the calling thread inside this block.

    numcodecs lets Blosc start its own threads when called from a process's main thread (a training
    process, each DataLoader worker, a build run with ``--workers 0``). Readers and builds are already
    parallel across processes, and on the development VM those threads made Blosc slower: decoding a
    64^3 patch 0.19 ms with one thread against 0.28 ms with them, encoding 0.41 against 0.66 ms. The
    bytes are the same either way: threads entering and leaving such blocks at once change only which
    of the two runs, and may leave numcodecs' switch off.
    """
    previous = blosc.use_threads
    blosc.use_threads = False
    try:
        yield
    finally:
        blosc.use_threads = previous


def blosc_decompress(data, target) -> None:
    """Blosc-decode ``data`` into ``target`` on the calling thread (:func:`blosc_on_this_thread`)."""
    with blosc_on_this_thread():
        blosc.decompress(data, target)
