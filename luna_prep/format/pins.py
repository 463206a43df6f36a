"""Reading a store pinned to what a dataset card recorded, so it cannot change under a run.

:class:`PinnedLocation` wraps a :class:`~luna_prep.format.location.StoreLocation`. The small files
checked when the card was resolved (``zarr.json``, ``manifest.parquet``, ``scans.parquet``) are
served from the bytes held then, never re-read. Any other file is read whole the first time it is
touched, and its size and sha256 must match the card; from then on it is read by ranges widened to
32 KiB blocks, each compared with the crc32c recorded at that first read. A file that differs from
the card, or changes after its first read, is a :class:`StoreChangedError` naming it; a file the
card does not list is refused. Pins pickle with the store, so DataLoader workers keep them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numcodecs
import numpy as np

from luna_prep.format.location import StoreLocation
from luna_prep.format.spec import FormatError

BLOCK = 1 << 15  # bytes per crc32c block of a verified file


class StoreChangedError(FormatError):
    """A store file that differs from what the card recorded (or from what this run first read)."""


@dataclass(frozen=True)
class StorePins:
    """What a card pinned: every file's (size, sha256), and the bytes of the files already checked."""

    source: str  # the card, for messages
    files: dict[str, tuple[int, str]]
    held: dict[str, bytes] = field(default_factory=dict)


def _block_crcs(data) -> np.ndarray:
    view = np.frombuffer(data, dtype=np.uint8)
    view.flags.writeable = False
    return np.array([numcodecs.CRC32C.checksum(view[i:i + BLOCK]) for i in range(0, len(view), BLOCK)], np.uint32)


class PinnedLocation:
    """A StoreLocation whose files must be what ``pins`` says (same read interface)."""

    def __init__(self, inner: StoreLocation, pins: StorePins):
        self.inner = inner
        self.pins = pins
        self.display = inner.display
        self._blocks: dict[str, np.ndarray] = {}  # verified file -> crc32c of each block

    def __getattr__(self, name):  # fs, root, exists, list_files, zarr_store, ...: as the inner location
        if name.startswith(("read", "each")):  # a read the inner location would serve unchecked
            raise AttributeError(f"PinnedLocation has no {name}: it would read around the card's pins")
        return getattr(self.inner, name)

    def read_range_into(self, rel: str, start: int, stop: int) -> memoryview:
        """The local batch reader's call: the checked bytes of :meth:`read_range`."""
        return memoryview(self.read_range(rel, start, stop))

    def each_range(self, rels: list[str], starts: list[int], stops: list[int | None]):
        """The remote batch reader's call: ``(position, checked bytes or exception)`` of :meth:`read_ranges`."""
        yield from enumerate(self.read_ranges(rels, starts, stops))

    def _changed(self, rel: str, why: str) -> StoreChangedError:
        return StoreChangedError(f"{self.display}/{rel} changed since the card {self.pins.source} was checked ({why}); "
                                 "the store must not change under a run: rebuild the card, or re-fetch the store")

    def _expected(self, rel: str) -> tuple[int, str]:
        want = self.pins.files.get(rel)
        if want is None:
            if self.inner.exists(rel):
                raise self._changed(rel, "a file the card does not list")
            raise FileNotFoundError(f"{self.display}: {rel} not found")
        return want

    def _verify(self, rel: str, data) -> bytes:
        size, sha = self.pins.files[rel]
        if isinstance(data, FileNotFoundError):
            raise self._changed(rel, "missing")
        if isinstance(data, Exception):
            raise data
        got = hashlib.sha256(data).hexdigest()
        if len(data) != size or got != sha:
            raise self._changed(rel, f"{len(data):,} bytes, sha256 {got[:12]}...; card: {size:,} bytes, {sha[:12]}...")
        self._blocks[rel] = _block_crcs(data)
        return data

    def read(self, rel: str) -> bytes:
        if rel in self.pins.held:
            return self.pins.held[rel]
        self._expected(rel)
        if rel in self._blocks:
            return self.read_range(rel, 0, None)
        try:
            data = self.inner.read(rel)
        except FileNotFoundError as exc:
            data = exc
        return self._verify(rel, data)

    def local_size(self, rel: str) -> int | None:
        """The size the card recorded: known for remote files too."""
        want = self.pins.files.get(rel)
        return None if want is None else want[0]

    def _bounds(self, rel: str, start: int, stop: int | None) -> tuple[int, int]:
        size = self.pins.files[rel][0]
        start = max(0, size + start) if start < 0 else min(start, size)
        return start, size if stop is None else max(start, min(stop, size))

    def _aligned(self, rel: str, start: int, stop: int) -> tuple[int, int]:
        return start // BLOCK * BLOCK, min(self.pins.files[rel][0], -(-stop // BLOCK) * BLOCK)

    def _check_blocks(self, rel: str, first: int, data) -> None:
        want = self._blocks[rel][first // BLOCK:first // BLOCK + -(-len(data) // BLOCK)]
        got = _block_crcs(data)
        if len(got) != len(want) or (got != want).any():
            raise self._changed(rel, f"bytes {first:,}.. differ from what this run read first")

    def read_range(self, rel: str, start: int, stop: int | None) -> bytes:
        return self._ok(self.read_ranges([rel], [start], [stop])[0])

    @staticmethod
    def _ok(blob):
        if isinstance(blob, Exception):
            raise blob
        return blob

    def read_ranges(self, rels: list[str], starts: list[int], stops: list[int | None]) -> list[bytes | Exception]:
        """As StoreLocation.read_ranges; files read for the first time come whole (and are verified)."""
        out: list[bytes | Exception | None] = [None] * len(rels)
        for k, rel in enumerate(rels):
            try:
                self._expected(rel)
            except (FileNotFoundError, StoreChangedError) as exc:
                out[k] = exc
        first = sorted({rel for k, rel in enumerate(rels) if out[k] is None and rel not in self._blocks})
        whole = dict(zip(first, self.inner.read_ranges(first, [0] * len(first), [None] * len(first)))) if first else {}
        for rel in first:
            whole[rel] = self._verify(rel, whole[rel])
        todo = [k for k, rel in enumerate(rels) if out[k] is None and rel not in whole]
        spans = [self._aligned(rels[k], *self._bounds(rels[k], starts[k], stops[k])) for k in todo]
        blobs = self.inner.read_ranges([rels[k] for k in todo], [a for a, _ in spans], [b for _, b in spans])
        for k, (a, _), blob in zip(todo, spans, blobs):
            if isinstance(blob, FileNotFoundError):
                blob = self._changed(rels[k], "missing")
            if not isinstance(blob, Exception):
                self._check_blocks(rels[k], a, blob)
                lo, hi = self._bounds(rels[k], starts[k], stops[k])
                blob = blob[lo - a:hi - a]
            out[k] = blob
        for k, rel in enumerate(rels):
            if out[k] is None:
                lo, hi = self._bounds(rel, starts[k], stops[k])
                out[k] = whole[rel][lo:hi]
        return out
