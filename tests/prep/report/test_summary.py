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


def _odd_folder(root):
    """Files a store listing must sort out: _build at the top and below, a temporary, symlinks."""
    from pathlib import Path

    root = Path(root)
    for rel, data in {"zarr.json": b"{}", "patches/16/c/0": b"abc", "_build/done/x.json": b"12345",
                      "volumes/u/_build": b"77", "volumes/_build/y": b"8888", ".manifest.parquet.tmp42": b"t"}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    (root / "linked").symlink_to(root / "patches", target_is_directory=True)  # not entered
    (root / "alias").symlink_to(root / "zarr.json")  # a file through a link: counted
    (root / "broken").symlink_to(root / "missing")
    return root


def test_folder_bytes_leaves_out_build_folders_at_every_depth(tmp_path):
    from luna_prep.report.summary import folder_bytes

    root = _odd_folder(tmp_path)
    # zarr.json 2 + patches 3 + temporary 1 + alias 2; every _build file or folder left out
    assert folder_bytes(root) == 2 + 3 + 1 + 2


def test_build_summary_gives_the_phase_times():
    import pandas as pd

    from luna_prep.build import BuildReport
    from luna_prep.report.summary import build_summary

    report = BuildReport(store="s.zarr", scans_ok=1, scans_failed=0, failures=[], patches=pd.DataFrame(),
                         bytes_written=10, seconds=12.34, skipped=0,
                         phases={"planning": 1.0, "scans": 10.0, "manifest": 0.5, "card": 0.84})
    assert "time: 12.3 s (planning 1.0 s, scans 10.0 s, manifest 0.5 s, card 0.8 s)" in build_summary(report)
