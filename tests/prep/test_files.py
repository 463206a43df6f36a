"""Atomic writes and file checksums."""

import hashlib

import pytest

from luna_prep.files import atomic_path, sha256_bytes, sha256_file, write_bytes_atomic, write_text_atomic


def test_atomic_write_replaces_whole_or_leaves_the_old_file(tmp_path):
    target = tmp_path / "sub" / "f.bin"
    write_bytes_atomic(target, [b"ab", b"cd"])
    assert target.read_bytes() == b"abcd"
    with pytest.raises(RuntimeError, match="killed"), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed")
    assert target.read_bytes() == b"abcd"
    assert sorted(p.name for p in target.parent.iterdir()) == ["f.bin"]  # no temporary file left
    write_text_atomic(target, "new")
    assert target.read_text() == "new"


def test_sha256_of_a_file_is_read_in_blocks(tmp_path):
    data = bytes(range(256)) * 9000  # over two 1 MiB blocks
    path = tmp_path / "x"
    path.write_bytes(data)
    assert sha256_file(path) == (hashlib.sha256(data).hexdigest(), len(data))
    assert sha256_bytes(data) == hashlib.sha256(data).hexdigest()
