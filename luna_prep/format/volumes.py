"""Whole-scan ``volumes/<seriesuid>/{image,lungs}`` arrays, read without trusting their metadata.

Before a byte of data is read, an array's ``zarr.json`` must declare a plain chunked Zarr v3 array
with an allowed dtype, the same codec whitelist as patches (:mod:`luna_prep.format.codecs`: no
pickle, no filters) and the shape the scans table recorded for the scan (``resampled_shape_zyx``),
so a volume declared 800^3 on a 200^3 scan is refused instead of allocated. Chunks are then read
in one batch and decoded with the same bounded decoder as patches.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from itertools import product

import numpy as np

from luna_prep.format.codecs import ChunkCodecs, decode_into, parse_codecs
from luna_prep.format.location import StoreLocation
from luna_prep.format.spec import FormatError

MAX_CHUNK_VOXELS = 256**3  # far above the 64^3 the writer uses; bounds one chunk's buffer


@dataclass(frozen=True)
class VolumeArray:
    """A checked ``volumes/<seriesuid>/<name>`` array: what to read and how to decode it."""

    path: str
    shape: tuple[int, int, int]
    chunks: tuple[int, int, int]
    dtype: np.dtype  # as stored (byte order included)
    codecs: ChunkCodecs
    fill_value: float
    separator: str
    attributes: dict

    def chunk_keys(self) -> list[tuple[tuple[int, ...], str]]:
        grid = [range(-(-n // c)) for n, c in zip(self.shape, self.chunks)]
        return [(ijk, f"{self.path}/c{self.separator}" + self.separator.join(map(str, ijk))) for ijk in product(*grid)]

    def read(self, location: StoreLocation) -> np.ndarray:
        """The whole array, native byte order; FormatError naming the chunk file on a bad chunk."""
        out = np.full(self.shape, self.fill_value, dtype=self.dtype.newbyteorder("="))
        keys = self.chunk_keys()
        blobs = location.read_ranges([k for _, k in keys], [0] * len(keys), [None] * len(keys))
        buf = np.empty(self.chunks, dtype=self.dtype)
        for (ijk, key), blob in zip(keys, blobs):
            if isinstance(blob, FileNotFoundError):
                continue  # a chunk never written: the fill value
            if isinstance(blob, Exception):
                raise blob
            decode_into(self.codecs, blob, buf, f"{location.display}/{key}")
            lo = [i * c for i, c in zip(ijk, self.chunks)]
            region = tuple(slice(a, min(a + c, n)) for a, c, n in zip(lo, self.chunks, self.shape))
            out[region] = buf[tuple(slice(0, r.stop - r.start) for r in region)]
        return out


def check_volume(meta: dict, path: str, dtype: str, shape_zyx, require_checksum: bool) -> VolumeArray:
    """The checked array of metadata ``meta`` at ``path``: FormatError naming ``path`` otherwise."""
    if not isinstance(meta, dict) or meta.get("zarr_format") != 3 or meta.get("node_type") != "array":
        raise FormatError(f"{path}: not a Zarr v3 array")
    if meta.get("data_type") != dtype:
        raise FormatError(f"{path}: data type {meta.get('data_type')!r}, expected {dtype!r}")
    shape = tuple(int(v) for v in meta.get("shape") or ())
    if shape_zyx is None:
        raise FormatError(f"{path}: no scan with this seriesuid in the scans table, so its shape cannot be checked")
    expected = tuple(int(v) for v in shape_zyx)
    if shape != expected:
        raise FormatError(f"{path}: shape {shape}, but the scans table records {expected} for the scan; not read")
    grid = meta.get("chunk_grid") or {}
    chunks = tuple(int(v) for v in (grid.get("configuration") or {}).get("chunk_shape") or ())
    if grid.get("name") != "regular" or len(chunks) != 3 or min(chunks) < 1 or np.prod(chunks) > MAX_CHUNK_VOXELS:
        raise FormatError(f"{path}: chunk grid {grid} is not a regular grid of at most {MAX_CHUNK_VOXELS:,} voxels")
    encoding = meta.get("chunk_key_encoding") or {}
    separator = (encoding.get("configuration") or {}).get("separator", "/")
    if encoding.get("name") != "default" or separator not in ("/", "."):
        raise FormatError(f"{path}: chunk key encoding {encoding} is not zarr's default")
    codecs = parse_codecs(meta.get("codecs") or [], path, require_checksum)
    fill = meta.get("fill_value", 0)
    if isinstance(fill, bool) or not isinstance(fill, (int, float)):
        raise FormatError(f"{path}: fill value {fill!r}")
    order = "<" if codecs.endian == "little" else ">"
    return VolumeArray(path=path, shape=shape, chunks=chunks, dtype=np.dtype(dtype).newbyteorder(order),
                       codecs=codecs, fill_value=fill, separator=separator,
                       attributes=dict(meta.get("attributes") or {}))


def open_volume(location: StoreLocation, path: str, dtype: str, shape_zyx, require_checksum: bool) -> VolumeArray:
    """Read and check ``path/zarr.json``; FileNotFoundError when the volume is absent."""
    try:
        meta = json.loads(location.read(f"{path}/zarr.json"))
    except ValueError as exc:
        raise FormatError(f"{location.display}/{path}/zarr.json: not valid JSON ({exc})") from exc
    try:
        return check_volume(meta, path, dtype, shape_zyx, require_checksum)
    except FormatError as exc:
        raise FormatError(f"{location.display}/{exc}") from None
    except (TypeError, ValueError, AttributeError) as exc:
        raise FormatError(f"{location.display}/{path}: malformed metadata ({type(exc).__name__}: {exc})") from exc
