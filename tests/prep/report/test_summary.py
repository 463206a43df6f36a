"""luna-prep info: the same sizes wherever the store lives, or a plain 'unknown' where nothing lists files."""

from __future__ import annotations

import re

from luna_prep.format.reader import PatchStore
from luna_prep.report.summary import store_bytes_by_scale, store_summary

from conftest import write_tiny_store
from http_server import serve_directory


def _sizes(text: str) -> list[str]:
    return re.findall(r"(\d+)\^3: (.*) stored", text)


def test_sizes_are_counted_per_scale(tmp_path):
    root = write_tiny_store(tmp_path / "s.zarr", n_scans=2)
    by_scale = store_bytes_by_scale(PatchStore(root))
    on_disk = {s: sum(p.stat().st_size for p in (tmp_path / "s.zarr" / "patches" / str(s)).rglob("*") if p.is_file())
               for s in (16, 24)}
    assert by_scale == on_disk and all(v > 0 for v in on_disk.values())


def test_info_over_http_gives_the_local_sizes_or_says_unknown(tmp_path, monkeypatch):
    root = write_tiny_store(tmp_path / "s.zarr", n_scans=2)
    local = _sizes(store_summary(PatchStore(root)))
    assert len(local) == 2 and "0 B" not in str(local)
    with serve_directory(tmp_path) as (base, _):
        remote = PatchStore(f"{base}/s.zarr")
        text = store_summary(remote)  # an HTTP index page lists names but no sizes
        assert "sizes: unknown" in text and "0 B" not in text
        sizes = {rel: (tmp_path / "s.zarr" / rel).stat().st_size for rel in PatchStore(root).location.list_files()}
        monkeypatch.setattr(type(remote.location), "list_files", lambda self: sizes)  # a server that gives sizes
        assert _sizes(store_summary(remote)) == local
