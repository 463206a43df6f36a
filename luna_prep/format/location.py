"""Read-only access to a store's files wherever it lives: a folder, a .zip, or an fsspec URL.

``StoreLocation.open`` accepts a local path (folder or ``.zip``), ``file://``, ``http(s)://``
and, when their fsspec packages are installed, ``s3://`` and ``gs://`` URLs (a ``.zip`` at any
of them too). Paths inside the store are relative, forward-slashed and may not escape it.
"""

from __future__ import annotations

import os
import posixpath
import threading
from collections import OrderedDict
from pathlib import Path
from urllib.parse import urlparse

import fsspec
import fsspec.implementations.local
import numpy as np

from luna_prep.errors import LunaError
from luna_prep.format import http_ranges


class UnsafePathError(LunaError, ValueError):
    """A path that would leave the store (absolute, ``..``, backslashes, drive letters)."""


class RangeRequestIgnored(LunaError, OSError):
    """A server that answers ranged reads with more bytes than asked (it ignores HTTP Range)."""


class StoreReadError(LunaError, OSError):
    """A file of the store (or the location itself) that could not be read: a connection, archive or server
    failure, named with the file (an ``OSError`` still, for code that catches those)."""


def safe_relpath(rel: str, where: str = "store") -> str:
    """``rel`` normalized; raise :class:`UnsafePathError` when it escapes the store."""
    if not isinstance(rel, str) or not rel or "\\" in rel or "\x00" in rel:
        raise UnsafePathError(f"{where}: unsafe path {rel!r}")
    if rel.startswith("/") or (len(rel) > 1 and rel[1] == ":") or "://" in rel:
        raise UnsafePathError(f"{where}: absolute path {rel!r} is not allowed")
    norm = posixpath.normpath(rel)
    if norm == ".." or norm.startswith("../") or "/../" in f"/{norm}/":
        raise UnsafePathError(f"{where}: path {rel!r} escapes the store")
    return norm


def _named(display: str, rel: str, exc: Exception) -> StoreReadError:
    """An fsspec client's error (aiohttp's name only the host) as a :class:`StoreReadError` naming the file
    (``rel`` "": the location itself, e.g. a .zip)."""
    err = StoreReadError(f"{display}{'/' + rel if rel else ''}: {type(exc).__name__}: {exc}")
    err.__cause__ = exc
    return err


def _ok(blob):
    if isinstance(blob, Exception):
        raise blob
    return blob


def _zip_filesystem(loc: str) -> fsspec.AbstractFileSystem:
    """The files of the ``.zip`` at ``loc`` (a path or URL); errors name the archive and say what is wrong."""
    import zipfile

    from luna_prep.format.spec import FormatError

    try:
        return fsspec.filesystem("zip", fo=loc if is_url(loc) else str(Path(loc).resolve()))
    except zipfile.BadZipFile as exc:
        raise FormatError(f"{loc}: not a complete zip archive ({exc}); a truncated download? Fetch it again "
                          "(`luna-prep verify CARD --store-url ...` checks every file against its card)") from None
    except FileNotFoundError:
        raise FileNotFoundError(f"{loc}: no such file") from None
    except ValueError as exc:  # fsspec's HTTP file: "The HTTP server doesn't appear to support range requests"
        if "range" not in str(exc).lower():
            raise
        raise RangeRequestIgnored(f"{loc}: the server does not support HTTP Range requests, which reading a .zip "
                                  "there needs; serve it from a server that does, or download it first") from None
    except OSError as exc:
        raise _named(loc, "", exc) from None


_EXTRAS = {"s3": ("s3fs", "s3"), "s3a": ("s3fs", "s3"), "gs": ("gcsfs", "gcs"), "gcs": ("gcsfs", "gcs")}


def _url_filesystem(loc: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """fsspec's filesystem and root of a URL; a protocol whose package is not installed is named with the extra
    that installs it."""
    try:
        return fsspec.core.url_to_fs(loc)
    except ImportError as exc:
        protocol = loc.split("://", 1)[0].lower()
        package, extra = _EXTRAS.get(protocol, (None, None))
        hint = f"{package}: pip install 'luna-patches[{extra}]'" if package else f"a package fsspec names: {exc}"
        raise StoreReadError(f"{loc}: reading {protocol}:// needs {hint}") from None


def is_url(location: str) -> bool:
    return "://" in str(location)


class StoreLocation:
    """Files of one store: ``read``, ``read_range``, ``size`` and ``list_files`` by relative path."""

    max_open_files = 256  # descriptors kept open per location (a scale's shards of a 30-scan store: 216 files)

    def __init__(self, fs: fsspec.AbstractFileSystem, root: str, display: str):
        self.fs = fs
        self.root = root.rstrip("/")
        self.display = display
        self._local = isinstance(fs, fsspec.implementations.local.LocalFileSystem)
        self._real_root = os.path.realpath(self.root) if self._local else ""
        self._fds: OrderedDict[str, int] = OrderedDict()  # open local files, for pread
        self._checked: set[str] = set()  # local paths whose real path was found inside the store
        self._thread = threading.local()  # read_range_into's buffer, one per thread
        self._fd_lock = threading.Lock()  # a descriptor is not closed by one thread while another reads it
        self._paths: dict[str, str] = {}  # relative path -> checked full path
        # a folder served over HTTP(S) (not a .zip there): read through libcurl, at half the CPU per request of
        # fsspec's client; suffix ranges longer than a file are answered with the whole file
        self.is_http = display.lower().startswith(("http://", "https://")) and not display.lower().endswith(".zip")
        self._curl = self.is_http and http_ranges.available()

    def __del__(self):
        for fd in getattr(self, "_fds", {}).values():
            os.close(fd)

    def _inside(self, path: str) -> str:
        """A local path, after checking that no symbolic link takes it out of the store.

        A path is checked once per location (``realpath`` takes an ``lstat`` per path component, 0.6 ms
        for a shard: more than reading a patch); the check guards against links shipped inside a store,
        not against a store being changed while it is read.
        """
        if path in self._checked:
            return path
        real = os.path.realpath(path)
        if real != self._real_root and not real.startswith(self._real_root + os.sep):
            rel = path[len(self.root):].lstrip("/")
            raise UnsafePathError(f"{self.display}: {rel} is a link to {real}, outside the store; refusing to read it")
        self._checked.add(path)
        return path

    def _fd(self, path: str) -> int:
        """A cached read-only descriptor (at most ``max_open_files``; the caller holds ``_fd_lock``): local
        ranged reads skip open() and fsspec."""
        fd = self._fds.get(path)
        if fd is None:
            fd = os.open(self._inside(path), os.O_RDONLY)
            self._fds[path] = fd
            if len(self._fds) > self.max_open_files:
                os.close(self._fds.popitem(last=False)[1])
        else:
            self._fds.move_to_end(path)
        return fd

    @classmethod
    def open(cls, location: str | Path) -> StoreLocation:
        loc = str(location)
        if loc.startswith("file://"):
            loc = urlparse(loc).path
        if loc.lower().endswith(".zip"):
            return cls(_zip_filesystem(loc), "", loc)
        if is_url(loc):
            return cls(*_url_filesystem(loc), loc)
        path = Path(loc)
        if not path.is_dir():
            raise FileNotFoundError(f"{loc}: no store here (not a folder, .zip or URL)")
        return cls(fsspec.filesystem("file"), str(path.resolve()), loc)

    def _path(self, rel: str) -> str:
        """The full path of ``rel``, checked by :func:`safe_relpath` once per path (a loader asks per patch)."""
        path = self._paths.get(rel)
        if path is None:
            safe = safe_relpath(rel, self.display)
            path = self._paths[rel] = f"{self.root}/{safe}" if self.root else safe
        return path

    def read(self, rel: str) -> bytes:
        path = self._path(rel)
        try:
            if self._curl:
                return _ok(http_ranges.reader().get([path], [None], [None])[0])
            return self.fs.cat_file(self._inside(path) if self._local else path)
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"{self.display}: {rel} not found") from exc
        except Exception as exc:
            if self._local or self._curl:  # their errors name the file already
                raise
            raise _named(self.display, rel, exc) from exc

    def read_range(self, rel: str, start: int, stop: int | None) -> bytes:
        """Bytes [start, stop) of a file; negative ``start`` counts from the end."""
        if not self._local:  # one read of the batch path: the same client, checks and errors
            return _ok(self.read_ranges([rel], [start], [stop])[0])
        path = self._path(rel)
        with self._fd_lock:
            fd = self._fd(path)
            if start < 0 or stop is None:
                size = os.fstat(fd).st_size
                start = max(0, size + start) if start < 0 else start
                stop = size if stop is None else stop
            return os.pread(fd, stop - start, start)

    @property
    def is_local(self) -> bool:
        """A folder on this machine: ranged reads are ``pread`` calls, with nothing to gain from batching them."""
        return self._local

    def read_range_into(self, rel: str, start: int, stop: int) -> memoryview:
        """Bytes [start, stop) of a local file, read into this location's scratch buffer (valid until the next
        call in the same thread; shorter where the file ends first). A fresh ``bytes`` per patch cost a third
        of the read."""
        scratch = getattr(self._thread, "scratch", None)
        if scratch is None or scratch.nbytes < stop - start:
            scratch = self._thread.scratch = np.empty(max(stop - start, 0 if scratch is None else 2 * scratch.nbytes),
                                                      dtype=np.uint8)
        view = memoryview(scratch)[:stop - start]
        path = self._path(rel)
        with self._fd_lock:
            got = os.preadv(self._fd(path), [view], start)
        return view[:got]

    def local_size(self, rel: str) -> int | None:
        """The size of a local file from its cached descriptor (free after a ranged read), None elsewhere."""
        if not self._local:
            return None
        try:
            path = self._path(rel)
            with self._fd_lock:
                return os.fstat(self._fd(path)).st_size
        except FileNotFoundError:
            return None

    def read_ranges(self, rels: list[str], starts: list[int], stops: list[int | None]) -> list[bytes | Exception]:
        """Many ranged reads at once; remote ones are issued concurrently. A failed read (e.g. a
        missing file) comes back as its exception in place of the bytes."""
        if self._local:
            out: list[bytes | Exception] = []
            for rel, start, stop in zip(rels, starts, stops):
                try:
                    out.append(self.read_range(rel, start, stop))
                except FileNotFoundError as exc:
                    out.append(exc)
            return out
        paths = [self._path(r) for r in rels]
        if self._curl:
            blobs = http_ranges.reader().get(paths, list(starts), list(stops))
        else:
            blobs = self.fs.cat_ranges(paths, list(starts), list(stops), on_error="return")
        return [self._checked_range(*args) for args in zip(rels, starts, stops, blobs)]

    def each_range(self, rels: list[str], starts: list[int], stops: list[int]):
        """``(position, bytes or exception)`` of the remote ranged reads of :meth:`read_ranges`, in the order
        they arrive over HTTP(S) (a reader decodes one while the rest are in flight), else in order."""
        if not self._curl:
            yield from enumerate(self.read_ranges(rels, starts, stops))
            return
        arrivals = http_ranges.reader().each([self._path(r) for r in rels], list(starts), list(stops))
        try:
            for k, blob in arrivals:
                yield k, self._checked_range(rels[k], starts[k], stops[k], blob)
        finally:
            arrivals.close()

    def _checked_range(self, rel: str, start: int, stop: int | None, blob):
        """``blob`` unless it is longer than the range asked for: a server that ignores Range sends
        the whole file with status 200, which would otherwise be decoded as if it were the range."""
        asked = (stop - start) if stop is not None and start >= 0 else (-start if start < 0 and stop is None else None)
        if isinstance(blob, http_ranges.ResponseTooLarge) or (not isinstance(blob, Exception) and asked is not None
                                                               and len(blob) > asked):
            sent = "more" if isinstance(blob, Exception) else f"{len(blob):,}"
            raise RangeRequestIgnored(
                f"{self.display}: the server ignored an HTTP Range request for {rel} (sent {sent} bytes for "
                f"{asked:,}); serve the store from a server that supports Range requests, or download it first")
        if isinstance(blob, Exception):
            if getattr(blob, "status", None) == 416:
                if start >= 0:  # a range starting at or past the file's end (RFC 9110): no bytes, as a local read
                    return b""
                # a suffix range is satisfiable from any non-empty file
                return StoreReadError(f"{self.display}: {rel}: HTTP 416 (range not satisfiable) for its last "
                                      f"{-start:,} bytes: the file is empty, or the server refuses suffix ranges")
            if self._curl or isinstance(blob, FileNotFoundError):  # these name the file already, or mean "none"
                return blob
            return _named(self.display, rel, blob)
        return blob

    def exists(self, rel: str) -> bool:
        return self.fs.exists(self._path(rel))

    def size(self, rel: str) -> int:
        return int(self.fs.size(self._path(rel)))

    def list_files(self) -> dict[str, int]:
        """Every file under the store with its size (not possible over plain HTTP)."""
        if self._local:
            return self._local_files()
        out = {}
        for path, info in self.fs.find(self.root or "", detail=True, withdirs=False).items():
            if self._local:
                self._inside(path)
            rel = path[len(self.root):].lstrip("/") if self.root else path.lstrip("/")
            out[rel] = int(info.get("size") or 0)
        return out

    def _local_files(self) -> dict[str, int]:
        """``list_files`` of a local folder as fsspec's ``find`` gives it (a linked folder is an entry, not walked),
        with one scandir per folder and the outside-the-store check only where a link is met: a store of 888 scans
        has ~21,000 files, and ``find`` plus a realpath per file took 13 s."""
        out: dict[str, int] = {}
        folders = [(self.root, "")]
        while folders:
            folder, prefix = folders.pop()
            with os.scandir(folder) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        folders.append((entry.path, f"{prefix}{entry.name}/"))
                        continue
                    if entry.is_symlink():
                        self._inside(entry.path)
                    try:
                        out[prefix + entry.name] = entry.stat().st_size
                    except FileNotFoundError:  # a dangling link
                        out[prefix + entry.name] = entry.stat(follow_symlinks=False).st_size
        return out

    def zarr_store(self):
        """A read-only zarr store over the same files (for users who want zarr arrays)."""
        from zarr.storage import FsspecStore, LocalStore, ZipStore

        if self.display.lower().endswith(".zip") and not is_url(self.display):
            return ZipStore(self.display, mode="r")
        if isinstance(self.fs, fsspec.implementations.local.LocalFileSystem):
            return LocalStore(self.root, read_only=True)
        return FsspecStore.from_url(self.display, read_only=True)
