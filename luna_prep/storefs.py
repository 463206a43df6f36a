"""Read-only access to a store's files wherever it lives: a folder, a .zip, or an fsspec URL.

``StoreLocation.open`` accepts a local path (folder or ``.zip``), ``file://``, ``http(s)://``
and, when their fsspec packages are installed, ``s3://`` and ``gs://`` URLs (a ``.zip`` at any
of them too). Paths inside the store are relative, forward-slashed and may not escape it.
"""

from __future__ import annotations

import posixpath
from pathlib import Path
from urllib.parse import urlparse

import fsspec


class UnsafePathError(ValueError):
    """A path that would leave the store (absolute, ``..``, backslashes, drive letters)."""


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


def is_url(location: str) -> bool:
    return "://" in str(location)


class StoreLocation:
    """Files of one store: ``read``, ``read_range``, ``size`` and ``list_files`` by relative path."""

    def __init__(self, fs: fsspec.AbstractFileSystem, root: str, display: str):
        self.fs = fs
        self.root = root.rstrip("/")
        self.display = display

    @classmethod
    def open(cls, location: str | Path) -> "StoreLocation":
        loc = str(location)
        if loc.startswith("file://"):
            loc = urlparse(loc).path
        if loc.lower().endswith(".zip"):
            fo = loc if is_url(loc) else str(Path(loc).resolve())
            return cls(fsspec.filesystem("zip", fo=fo), "", loc)
        if is_url(loc):
            fs, root = fsspec.core.url_to_fs(loc)
            return cls(fs, root, loc)
        path = Path(loc)
        if not path.is_dir():
            raise FileNotFoundError(f"{loc}: no store here (not a folder, .zip or URL)")
        return cls(fsspec.filesystem("file"), str(path.resolve()), loc)

    def _path(self, rel: str) -> str:
        rel = safe_relpath(rel, self.display)
        return f"{self.root}/{rel}" if self.root else rel

    def read(self, rel: str) -> bytes:
        try:
            return self.fs.cat_file(self._path(rel))
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"{self.display}: {rel} not found") from exc

    def read_range(self, rel: str, start: int, stop: int) -> bytes:
        """Bytes [start, stop) of a file; negative ``start`` counts from the end."""
        return self.fs.cat_file(self._path(rel), start=start, end=stop)

    def exists(self, rel: str) -> bool:
        return self.fs.exists(self._path(rel))

    def size(self, rel: str) -> int:
        return int(self.fs.size(self._path(rel)))

    def list_files(self) -> dict[str, int]:
        """Every file under the store with its size (not possible over plain HTTP)."""
        out = {}
        for path, info in self.fs.find(self.root or "", detail=True, withdirs=False).items():
            rel = path[len(self.root):].lstrip("/") if self.root else path.lstrip("/")
            out[rel] = int(info.get("size") or 0)
        return out

    def zarr_store(self):
        """A read-only zarr store over the same files (for users who want zarr arrays)."""
        from zarr.storage import FsspecStore, LocalStore, ZipStore

        if self.display.lower().endswith(".zip") and not is_url(self.display):
            return ZipStore(self.display, mode="r")
        if isinstance(self.fs, fsspec.implementations.local.LocalFileSystem):
            return LocalStore(self.root, read_only=True)
        return FsspecStore.from_url(self.display, read_only=True)
