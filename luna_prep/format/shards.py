"""Fast patch reads from the store's sharded arrays, bypassing zarr-python's per-chunk machinery.

A luna-patches array is a Zarr v3 ``sharding_indexed`` array with one patch per inner chunk, laid
out as :mod:`luna_prep.format.shard_layout` says. Reading a patch costs one ranged read once the shard's index is cached
(one small read per shard), and decoding is a single Blosc call: zarr-python spends about 1 ms
per chunk on top of that. Only the codecs the format allows are accepted, so a store from
someone else cannot make us unpickle anything, and every size an index or a chunk header states is
checked before it is used (:meth:`ShardIndex.check`, :func:`~luna_prep.format.codecs.decode_into`).
"""

from __future__ import annotations

import json
from contextlib import closing

import numpy as np

from luna_prep.format.codecs import decode_into, parse_codecs
from luna_prep.format.location import StoreLocation
from luna_prep.format.shard_layout import EMPTY, INDEX_CODECS, ShardIndex, shard_key
from luna_prep.format.spec import FormatError

ALLOWED_DTYPES = ("uint8", "float16")


def _ok(blob):
    if isinstance(blob, Exception):
        raise blob
    return blob


def read_many(arrays: list[ShardedPatchArray], rows: list[int],
              out: list[np.ndarray] | None = None) -> list[list[np.ndarray]]:
    """Row ``rows[k]`` of every array in ``arrays`` (e.g. image and mask), fetched in one batch of
    ranged reads (concurrent for remote stores): ``[[arrays[0] rows...], [arrays[1] rows...]]``.

    With ``out`` (one ``(len(rows), s, s, s)`` native-endian C-contiguous array per array), each patch is
    decoded straight into ``out[j][k]`` (a batch needs no stacking afterwards); the lists then hold
    those views."""
    plans = [a.requests(rows) for a in arrays]
    wanted = [(j, k, req) for j, plan in enumerate(plans) for k, req in enumerate(plan) if req is not None]
    location = arrays[0].location
    got = [[None] * len(rows) for _ in arrays]
    if location.is_local:  # each chunk read into one reused buffer as it is decoded, while it is in cache
        blobs = ((i, location.read_range_into(*req)) for i, (_, _, req) in enumerate(wanted))
    else:
        blobs = _remote_chunks(location, [(arrays[j], req) for j, _, req in wanted])
    with closing(blobs):
        for i, blob in blobs:
            j, k, (_, start, stop) = wanted[i]
            got[j][k] = arrays[j].decode(_ok(blob), rows[k], stop - start, None if out is None else out[j][k])
    for j, a in enumerate(arrays):
        for k, v in enumerate(got[j]):
            if v is None and out is not None:
                out[j][k].fill(a.fill_value)
                got[j][k] = out[j][k]
            elif v is None:
                got[j][k] = a.empty()
    return got


def _remote_chunks(location: StoreLocation, wanted: list[tuple[ShardedPatchArray, tuple[str, int, int]]]):
    """``(position, chunk bytes)`` of each ``(array, request)``: first those of small shards held whole, then
    the rest as they arrive from one batch of concurrent ranged reads."""
    fetch = []
    for i, (array, request) in enumerate(wanted):
        blob = array.held_chunk(*request)
        if blob is None:
            fetch.append(i)
        else:
            yield i, blob
    if not fetch:
        return
    arrivals = location.each_range(*(list(r) for r in zip(*(wanted[i][1] for i in fetch))))
    try:
        for n, blob in arrivals:
            yield fetch[n], blob
    finally:
        arrivals.close()


class ShardedPatchArray:
    """Read-only (N, s, s, s) array of a luna-patches store, one patch per inner chunk.

    Stores over HTTP(S): a shard's first read asks for the last :attr:`remote_tail` bytes of its file rather
    than its index alone. Where that is the whole file (a mask shard: masks compress to ~1 %), the file is
    held in memory and its patches cost no further request: a third of a batch's requests were masks.
    """

    remote_tail = 128 * 1024  # bytes a remote shard's first read asks for: its index, or all of a small shard
    max_held_bytes = 64 * 1024 * 1024  # small remote shards held whole, per array

    def __init__(self, location: StoreLocation, path: str, metadata: dict | None = None,
                 require_checksum: bool = False):
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
        self.codecs = parse_codecs(conf["codecs"], where, require_checksum)
        self.dtype = np.dtype(dtype).newbyteorder("<" if self.codecs.endian == "little" else ">")
        self.max_chunk = self.codecs.max_encoded(int(np.prod(self.shape[1:])) * self.dtype.itemsize)
        self.fill_value = meta.get("fill_value", 0)
        if self.fill_value != 0 or isinstance(self.fill_value, bool):
            raise FormatError(f"{where}: fill value {self.fill_value!r}; the format's is 0")
        self.layout = ShardIndex(self.shard_len)
        encoding = meta.get("chunk_key_encoding") or {}
        self._key_sep = (encoding.get("configuration") or {}).get("separator", "/")
        if encoding.get("name", "default") != "default" or self._key_sep != "/":
            raise FormatError(f"{where}: chunk key encoding {encoding}; the format's is zarr's default with '/'")
        self._indexes: dict[int, np.ndarray | None] = {}  # shard -> (offset, nbytes) per chunk; None: no file
        self._shard_requests: dict[int, list] = {}  # shard -> requests() of each of its rows, from its index
        self._held: dict[str, bytes] = {}  # shard key -> the whole file of a small remote shard
        self._held_bytes = 0
        self._tails = [0, 0]  # remote shards whose tail read was [the whole file, not]

    def __len__(self) -> int:
        return self.shape[0]

    def shard_key(self, shard: int) -> str:
        return shard_key(self.path, shard, self._key_sep)

    def _index(self, shard: int) -> np.ndarray | None:
        """The shard's chunk index, read once (a few hundred bytes at the file's end) and cached."""
        if shard not in self._indexes:
            tail = self._tail_bytes()
            try:
                raw = self.location.read_range(self.shard_key(shard), -tail, None)
            except FileNotFoundError:
                self._indexes[shard] = None
            else:
                self._indexes[shard] = self._take_tail(shard, raw, tail)
        return self._indexes[shard]

    def _tail_bytes(self) -> int:
        """How many bytes a shard's first read asks for: more than the index only over HTTP(S) (locally a
        ``pread`` costs next to nothing; object-store clients may not take a suffix longer than the file), and
        not for arrays whose shards have mostly been larger than :attr:`remote_tail`."""
        whole, larger = self._tails
        if not self.location.is_http or larger > whole or self._held_bytes >= self.max_held_bytes:
            return self.layout.nbytes
        return max(self.remote_tail, self.layout.nbytes)

    def _take_tail(self, shard: int, raw: bytes, asked: int) -> np.ndarray:
        """The checked index from a shard's tail ``raw`` (``asked`` bytes were asked for); a tail shorter than
        asked is the whole file, held (up to :attr:`max_held_bytes`) for the shard's chunk reads."""
        if asked == self.layout.nbytes:
            return self._parse_index(shard, raw)
        whole = len(raw) < asked
        self._tails[0 if whole else 1] += 1
        if not whole:
            return self._parse_index(shard, raw)
        index = self._parse_index(shard, raw, len(raw))  # the whole file: its size is known
        if self._held_bytes + len(raw) <= self.max_held_bytes:
            self._held[self.shard_key(shard)] = raw = bytes(raw)
            self._held_bytes += len(raw)
        return index

    def held_chunk(self, key: str, start: int, stop: int) -> memoryview | None:
        """Bytes [start, stop) of shard ``key`` when the whole file is held, else None."""
        data = self._held.get(key)
        return None if data is None else memoryview(data)[start:stop]

    def _where(self, shard: int) -> str:
        return f"{self.location.display}/{self.shard_key(shard)}"

    def _parse_index(self, shard: int, raw: bytes, file_size: int | None = None) -> np.ndarray:
        """The checked index of a shard from its tail (local files: checked against the file's size too)."""
        where = self._where(shard)
        size = self.location.local_size(self.shard_key(shard)) if file_size is None else file_size
        return self.layout.check(self.layout.decode(raw, where), self.max_chunk, size, where)

    def prefetch_indexes(self, rows) -> None:
        """Fetch the indexes of the shards holding ``rows`` that are not cached yet, in one batch."""
        missing = sorted(k for k in {int(r) // self.shard_len for r in rows} if k not in self._indexes)
        if not missing:
            return
        tail = self._tail_bytes()
        blobs = self.location.read_ranges([self.shard_key(k) for k in missing], [-tail] * len(missing),
                                          [None] * len(missing))
        for k, blob in zip(missing, blobs):
            self._indexes[k] = None if isinstance(blob, FileNotFoundError) else self._take_tail(k, _ok(blob), tail)

    def requests(self, rows) -> list[tuple[str, int, int] | None]:
        """(shard key, start, stop) of each row's chunk, None for rows never written."""
        bad = [int(i) for i in rows if not 0 <= int(i) < self.shape[0]]
        if bad:  # else a row past the end maps to a shard that does not exist, and reads as a blank patch
            raise IndexError(f"{self.path}: row {bad[0]} outside 0..{self.shape[0] - 1}")
        self.prefetch_indexes(rows)
        return [self._requests_of(shard)[within] for shard, within in (divmod(int(i), self.shard_len) for i in rows)]

    def _requests_of(self, shard: int) -> list[tuple[str, int, int] | None]:
        """(shard key, start, stop) of each row of a shard, None where not stored: its index as Python values,
        converted once and cached (a per-row lookup into the numpy index took an eighth of the loader's time)."""
        cached = self._shard_requests.get(shard)
        if cached is None:
            index = self._index(shard)
            if index is None:
                cached = [None] * self.shard_len
            else:
                key, empty = self.shard_key(shard), int(EMPTY)
                cached = [None if offset == empty else (key, offset, offset + nbytes)
                          for offset, nbytes in index.tolist()]
            self._shard_requests[shard] = cached
        return cached

    def has_file(self, row: int) -> bool:
        """Whether the shard file holding ``row`` exists (its index is read once and cached)."""
        return self._index(int(row) // self.shard_len) is not None

    def is_stored(self, row: int) -> bool:
        """Whether ``row``'s chunk is stored (not all fill)."""
        shard, within = divmod(int(row), self.shard_len)
        return self._requests_of(shard)[within] is not None

    def empty(self) -> np.ndarray:
        return np.full(self.shape[1:], self.fill_value, dtype=self.dtype.newbyteorder("="))

    def decode(self, blob: bytes, row: int, expected: int | None = None, out: np.ndarray | None = None) -> np.ndarray:
        """Row ``row``'s stored chunk ``blob`` (``expected`` bytes long, per the index) as a writable
        native-endian patch, decoded straight into its own buffer, or into ``out`` (native-endian,
        C-contiguous, one patch); FormatError naming the file and row."""
        where = f"{self._where(int(row) // self.shard_len)} (row {int(row)})"
        if expected is not None and len(blob) != expected:
            raise FormatError(f"{where}: the file ends inside the chunk ({len(blob):,} of {expected:,} bytes)")
        if out is not None and out.dtype == self.dtype and out.flags.c_contiguous:
            decode_into(self.codecs, blob, out, where)
            return out
        target = np.empty(self.shape[1:], dtype=self.dtype)
        decode_into(self.codecs, blob, target, where)
        if out is None:
            return target.astype(self.dtype.newbyteorder("="), copy=False)
        out[...] = target
        return out

    def read(self, i: int) -> np.ndarray:
        """Patch ``i`` as an (s, s, s) array; rows never written read as the fill value."""
        if not 0 <= i < self.shape[0]:
            raise IndexError(f"{self.path}: row {i} outside 0..{self.shape[0] - 1}")
        shard, within = divmod(int(i), self.shard_len)
        request = self._requests_of(shard)[within]
        if request is None:
            return self.empty()
        key, start, stop = request
        blob = self.held_chunk(key, start, stop)
        if blob is None:
            blob = self.location.read_range(key, start, stop)
        return self.decode(blob, i, stop - start)

    def read_shard(self, shard: int) -> dict[int, np.ndarray] | None:
        """Every written patch of one shard, from one whole-file read: {row: patch}; None when there is no file."""
        try:
            data = self.location.read(self.shard_key(shard))
        except FileNotFoundError:
            return None
        index = self._parse_index(shard, data, len(data))
        first = shard * self.shard_len
        return {first + k: self.decode(data[start:stop], first + k) for k, start, stop in self.layout.spans(index)}
