"""Files written whole or not at all, and their sha256: one definition for the build, sharing and training."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

HASH_BLOCK = 1 << 20


def temporary_name(path: Path) -> Path:
    """Where :func:`atomic_path` writes ``path`` before renaming it: ``.<name>.tmp<pid>`` beside it."""
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def is_temporary(path: str | Path) -> bool:
    """Whether ``path`` is an :func:`atomic_path` temporary (one a killed process may leave behind)."""
    name = Path(path).name
    return name.startswith(".") and ".tmp" in name and name.rsplit(".tmp", 1)[1].isdigit()


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary name in ``path``'s folder to write to; renamed onto ``path`` when the block ends
    without an error, removed when it raises. Readers never see a half-written ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def exclusive_lock(lock: Path, busy: Callable[[str], Exception]) -> Iterator[None]:
    """Hold an exclusive ``flock`` on the file ``lock`` (holding this process's pid) while the block runs; when
    another process holds it, raise ``busy(its pid)`` at once. The lock dies with its process (kill -9 included).

    The file is deleted when the block ends. A process that opened it just before locks a file no longer there,
    so once locked it checks that the path is still its file, and otherwise takes the new one."""
    import fcntl

    lock.parent.mkdir(parents=True, exist_ok=True)
    while True:
        f = open(lock, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "?"
            f.close()
            raise busy(holder) from None
        try:
            if os.stat(lock).st_ino == os.fstat(f.fileno()).st_ino:
                break
        except FileNotFoundError:
            pass
        f.close()  # the previous holder deleted this file as we locked it
    with f:
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        try:
            yield
        finally:
            lock.unlink(missing_ok=True)


def write_bytes_atomic(path: str | Path, parts: bytes | list[bytes]) -> None:
    """Write ``parts`` (one bytes object or several, back to back) to ``path`` atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.writelines([parts] if isinstance(parts, bytes) else parts)


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def sha256_stream(f: BinaryIO, block: int = HASH_BLOCK) -> tuple[str, int]:
    """(hex sha256, byte count) of what is left to read of a binary file object, block by block."""
    h = hashlib.sha256()
    n = 0
    for chunk in iter(lambda: f.read(block), b""):
        h.update(chunk)
        n += len(chunk)
    return h.hexdigest(), n


def sha256_file(path: str | Path) -> tuple[str, int]:
    """(hex sha256, size) of a local file, read in 1 MiB blocks."""
    with open(path, "rb") as f:
        return sha256_stream(f)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
