"""Fast patch reads from the store's sharded arrays, bypassing zarr-python's per-chunk machinery.

A luna-patches array is a Zarr v3 ``sharding_indexed`` array with one patch per inner chunk, laid
out as :mod:`luna_prep.format.shard_layout` says. Reading a patch costs one ranged read once the shard's index is cached
(one small read per shard), and decoding is a single Blosc call: zarr-python spends about 1 ms
per chunk on top of that. Only the codecs the format allows are accepted, so a store from
someone else cannot make us unpickle anything.
"""

from __future__ import annotations

import json

import numcodecs
import numpy as np

from luna_prep.format.location import StoreLocation
from luna_prep.format.shard_layout import INDEX_CODECS, ShardIndex, shard_key
from luna_prep.format.spec import FormatError

ALLOWED_DTYPES = ("uint8", "float16")
ALLOWED_INNER_CODECS = ("bytes", "blosc", "zstd", "gzip")


def _inner_decoder(codecs: list[dict], where: str):
    names = [c.get("name") for c in codecs]
    bad = [n for n in names if n not in ALLOWED_INNER_CODECS]
    if bad or not names or names[0] != "bytes":
        raise FormatError(f"{where}: codecs {names} are not allowed (allowed: bytes then one of blosc, zstd, gzip)")
    endian = (codecs[0].get("configuration") or {}).get("endian", "little")
    if len(names) == 1:
        return None, endian
    if len(names) > 2:
        raise FormatError(f"{where}: more than one compressor ({names})")
    cfg = codecs[1].get("configuration") or {}
    if names[1] == "blosc":
        return numcodecs.Blosc(), endian
    if names[1] == "zstd":
        return numcodecs.Zstd(), endian
    return numcodecs.GZip(level=int(cfg.get("level", 5))), endian


def _ok(blob):
    if isinstance(blob, Exception):
        raise blob
    return blob


def read_many(arrays: list["ShardedPatchArray"], rows: list[int]) -> list[list[np.ndarray]]:
    """Row ``rows[k]`` of every array in ``arrays`` (e.g. image and mask), fetched in one batch of
    ranged reads (concurrent for remote stores): ``[[arrays[0] rows...], [arrays[1] rows...]]``."""
    plans = [a.requests(rows) for a in arrays]
    wanted = [(j, k, req) for j, plan in enumerate(plans) for k, req in enumerate(plan) if req is not None]
    location = arrays[0].location
    blobs = location.read_ranges([r[0] for _, _, r in wanted], [r[1] for _, _, r in wanted],
                                 [r[2] for _, _, r in wanted]) if wanted else []
    out = [[None] * len(rows) for _ in arrays]
    for (j, k, _), blob in zip(wanted, blobs):
        out[j][k] = arrays[j].decode(_ok(blob))
    for j, a in enumerate(arrays):
        out[j] = [a.empty() if v is None else v for v in out[j]]
    return out


class ShardedPatchArray:
    """Read-only (N, s, s, s) array of a luna-patches store, one patch per inner chunk."""

    def __init__(self, location: StoreLocation, path: str, metadata: dict | None = None):
        self.location = location
        self.path = path
        where = f"{location.display}/{path}"
        meta = metadata if metadata is not None else json.loads(location.read(f"{path}/zarr.json"))
        dtype = meta.get("data_type")
        if dtype not in ALLOWED_DTYPES:
            raise FormatError(f"{where}: data type {dtype!r} not allowed (allowed: {ALLOWED_DTYPES})")
        codecs = meta.get("codecs") or []
        if len(codecs) != 1 or codecs[0].get("name") != "sharding_indexed":
            raise FormatError(f"{where}: expected one sharding_indexed codec, got {[c.get('name') for c in codecs]}")
        conf = codecs[0]["configuration"]
        self.shape = tuple(int(v) for v in meta["shape"])
        self.shard_len = int(meta["chunk_grid"]["configuration"]["chunk_shape"][0])
        inner = tuple(int(v) for v in conf["chunk_shape"])
        if inner != (1,) + self.shape[1:]:
            raise FormatError(f"{where}: inner chunks {inner}, expected one patch {(1,) + self.shape[1:]}")
        index_codecs = [c.get("name") for c in conf.get("index_codecs", [])]
        if index_codecs != INDEX_CODECS or conf.get("index_location", "end") != "end":
            raise FormatError(f"{where}: unsupported shard index {index_codecs} at {conf.get('index_location')}")
        self.decoder, endian = _inner_decoder(conf["codecs"], where)
        self.dtype = np.dtype(dtype).newbyteorder("<" if endian == "little" else ">")
        self.fill_value = meta.get("fill_value", 0)
        self.layout = ShardIndex(self.shard_len)
        self._key_sep = (meta.get("chunk_key_encoding", {}).get("configuration") or {}).get("separator", "/")
        self._indexes: dict[int, np.ndarray | None] = {}  # shard -> (offset, nbytes) per chunk; None: no file

    def __len__(self) -> int:
        return self.shape[0]

    def shard_key(self, shard: int) -> str:
        return shard_key(self.path, shard, self._key_sep)

    def _index(self, shard: int) -> np.ndarray | None:
        """The shard's chunk index, read once (a few hundred bytes at the file's end) and cached."""
        if shard not in self._indexes:
            try:
                raw = self.location.read_range(self.shard_key(shard), -self.layout.nbytes, None)
            except FileNotFoundError:
                self._indexes[shard] = None
            else:
                self._indexes[shard] = self._parse_index(shard, raw)
        return self._indexes[shard]

    def _parse_index(self, shard: int, raw: bytes) -> np.ndarray:
        return self.layout.decode(raw, f"{self.location.display}/{self.shard_key(shard)}")

    def prefetch_indexes(self, rows) -> None:
        """Fetch the indexes of the shards holding ``rows`` that are not cached yet, in one batch."""
        missing = sorted({int(r) // self.shard_len for r in rows} - set(self._indexes))
        if not missing:
            return
        blobs = self.location.read_ranges([self.shard_key(k) for k in missing], [-self.layout.nbytes] * len(missing),
                                          [None] * len(missing))
        for k, blob in zip(missing, blobs):
            self._indexes[k] = None if isinstance(blob, FileNotFoundError) else self._parse_index(k, _ok(blob))

    def requests(self, rows) -> list[tuple[str, int, int] | None]:
        """(shard key, start, stop) of each row's chunk, None for rows never written."""
        self.prefetch_indexes(rows)
        out = []
        for i in rows:
            shard, within = divmod(int(i), self.shard_len)
            index = self._index(shard)
            span = None if index is None else self.layout.span(index, within)
            out.append(None if span is None else (self.shard_key(shard), *span))
        return out

    def empty(self) -> np.ndarray:
        return np.full(self.shape[1:], self.fill_value, dtype=self.dtype.newbyteorder("="))

    def decode(self, blob: bytes) -> np.ndarray:
        """A writable native-endian patch decoded straight into its own buffer."""
        out = np.empty(self.shape[1:], dtype=self.dtype)
        if self.decoder is not None:
            self.decoder.decode(blob, out=out)
        else:
            out.reshape(-1).view(np.uint8)[:] = np.frombuffer(blob, dtype=np.uint8)
        return out.astype(self.dtype.newbyteorder("="), copy=False)

    def read(self, i: int) -> np.ndarray:
        """Patch ``i`` as an (s, s, s) array; rows never written read as the fill value."""
        if not 0 <= i < self.shape[0]:
            raise IndexError(f"{self.path}: row {i} outside 0..{self.shape[0] - 1}")
        shard, within = divmod(int(i), self.shard_len)
        index = self._index(shard)
        span = None if index is None else self.layout.span(index, within)
        if span is None:
            return self.empty()
        return self.decode(self.location.read_range(self.shard_key(shard), *span))

    def read_shard(self, shard: int) -> dict[int, np.ndarray]:
        """Every written patch of one shard, from one whole-file read: {row: patch}."""
        try:
            data = self.location.read(self.shard_key(shard))
        except FileNotFoundError:
            return {}
        index = self.layout.decode(data, f"{self.location.display}/{self.shard_key(shard)}")
        first = shard * self.shard_len
        return {first + k: self.decode(data[start:stop]) for k, start, stop in self.layout.spans(index)}
