"""verify and the reader on damaged or unreachable stores: lost image shards, unreadable volume chunks in a .zip,
dead servers, servers that ignore Range, and URL schemes whose package is not installed."""

from __future__ import annotations

import socket
import time
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from luna_prep.cli import main as cli
from luna_prep.errors import LunaError
from luna_prep.format.http_ranges import CurlReader
from luna_prep.format.location import StoreLocation
from luna_prep.format.reader import PatchStore
from luna_prep.format.shard_layout import EMPTY, ShardIndex
from luna_prep.format.spec import FormatError
from luna_prep.sharing.cards import write_card
from luna_prep.sharing.pack import pack_store
from luna_prep.sharing.verify import verify

from conftest import write_tiny_store
from http_server import serve_directory
from paths import DATA

IMAGE_SHARD = "patches/16/image/c/1/0/0/0"  # rows 8..15 of scale 16: nodules 8..11, negatives 12..15
LAYOUT = ShardIndex(8)


@pytest.fixture
def store(tmp_path):
    return Path(write_tiny_store(tmp_path / "s.zarr", n_scans=2))


def _empty_entry(root: Path, row: int) -> None:
    """Mark ``row``'s chunk of IMAGE_SHARD as not stored (the index keeps its valid crc32c)."""
    path = root / IMAGE_SHARD
    data = path.read_bytes()
    index = LAYOUT.decode(data).copy()
    index[row - 8] = EMPTY
    path.write_bytes(data[:-LAYOUT.nbytes] + LAYOUT.encode(index))


def test_a_lost_image_shard_fails_verify_deep_and_the_reader(store):
    (store / IMAGE_SHARD).unlink()
    report = verify(str(store), deep=True)
    assert report.problems == [f"{IMAGE_SHARD} is missing, yet manifest rows 8..15 (8 rows) use it: "
                               "they would read as blank images"], report.format()
    result = CliRunner().invoke(cli, ["verify", str(store), "--deep"])
    assert result.exit_code == 1 and f"PROBLEM {IMAGE_SHARD} is missing" in result.output
    reader = PatchStore(store)
    for read in (lambda: reader.read_patch(16, 9), lambda: reader.read_stored_many(16, [0, 9])):
        with pytest.raises(FormatError, match=rf"s\.zarr/{IMAGE_SHARD}: missing, but the mask of row 9 is stored"):
            read()
    assert reader.read_patch(16, 0)[0].max() > 0  # the other shard still reads


def test_an_image_not_stored_under_a_mask_is_reported_and_an_all_zero_negative_is_not(store):
    _empty_entry(store, 13)  # a negative: an all-0 image, as the writer leaves out
    assert verify(str(store), deep=True).ok
    _empty_entry(store, 9)  # a nodule's image
    report = verify(str(store), deep=True)
    assert report.problems == ["1 patches whose image is not stored (a blank patch) under a mask with foreground; "
                               f"first: scale 16 row 9 (sample 9) in {IMAGE_SHARD}"], report.format()


def _flip_entry(zip_path: Path, name_matches) -> str:
    """Flip a byte of the first entry whose name ``name_matches``; its name."""
    blob = bytearray(zip_path.read_bytes())
    with zipfile.ZipFile(zip_path) as zf:
        info = next(i for i in zf.infolist() if name_matches(i.filename))
    blob[info.header_offset + 30 + len(info.filename) + len(info.extra) + min(64, info.file_size // 2)] ^= 0x01
    zip_path.write_bytes(bytes(blob))
    return info.filename


def test_an_unreadable_volume_chunk_in_a_zip_is_a_problem(tmp_path):
    zip_path = tmp_path / "v1.zip"
    pack_store(DATA / "store_v1.zarr", zip_path)
    chunk = _flip_entry(zip_path, lambda name: name.startswith("volumes/") and "/image/c/" in name)
    report = verify(str(zip_path), deep=True)
    volume = chunk.rsplit("/c/", 1)[0]
    assert any(p.startswith(f"{volume}: unreadable (") and "Bad CRC-32" in p
               for p in report.problems), report.format()
    assert len(report.problems) == 1 and report.volumes_read == 3


@pytest.fixture
def quick_retries(monkeypatch):
    monkeypatch.setattr(CurlReader, "backoff_s", 0.01)


def test_an_unreadable_zarr_json_in_a_zip_is_a_problem_and_the_card_still_checked(store, tmp_path):
    card = write_card(store, "s", tmp_path / "manifests")
    zip_path = tmp_path / "s.zip"
    pack_store(store, zip_path)
    _flip_entry(zip_path, lambda name: name == "zarr.json")
    report = verify(str(card), store_url=str(zip_path))
    assert len(report.problems) == 1 and report.problems[0].startswith("cannot read zarr.json: "), report.format()
    assert "Bad CRC-32" in report.problems[0]
    assert [a.split(":")[0] for a in report.altered] == ["zarr.json"] and report.files_checked > 1


def _dead_url() -> str:
    with socket.socket() as s:  # a port nothing listens on once the socket is closed
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/patches.zarr"


def test_a_dead_server_is_one_problem_and_one_error_line(store, tmp_path, quick_retries):
    card = write_card(store, "s", tmp_path / "manifests")
    url = _dead_url()
    started = time.monotonic()
    report = verify(str(card), store_url=url)
    assert len(report.problems) == 1 and report.files_checked == 0, report.format()
    assert report.problems[0].startswith(f"cannot read zarr.json: {url}/zarr.json: ")
    assert "curl error 7" in report.problems[0]
    assert time.monotonic() - started < 5
    for args in (["info", url], ["verify", url]):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 1 and isinstance(result.exception, SystemExit)  # not an escaped exception
        assert f"{url}/zarr.json" in result.output
    with pytest.raises(LunaError, match=rf"{url}/zarr\.json: .*curl error 7"):
        PatchStore(url)


@pytest.mark.parametrize("url, package, extra", [("s3://bucket/p.zarr", "s3fs", "s3"),
                                                 ("gs://bucket/p.zarr", "gcsfs", "gcs")])
def test_a_cloud_url_without_its_package_names_the_extra(url, package, extra):
    pytest.importorskip("fsspec")
    try:
        __import__(package)
        pytest.skip(f"{package} is installed")
    except ImportError:
        pass
    scheme = url.split(":")[0]
    with pytest.raises(LunaError, match=rf"^{url}: reading {scheme}:// needs {package}: "
                                        rf"pip install 'luna-patches\[{extra}\]'$"):
        StoreLocation.open(url)
    result = CliRunner().invoke(cli, ["info", url])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert f"Error: {url}: reading {scheme}:// needs {package}" in result.output


def test_an_empty_shard_over_http_names_the_416(store):
    (store / IMAGE_SHARD).write_bytes(b"")
    with serve_directory(store.parent) as (base, _):
        with pytest.raises(OSError, match=rf"s\.zarr: {IMAGE_SHARD}: HTTP 416 \(range not satisfiable\) for its last "
                                          "131,072 bytes: the file is empty"):
            PatchStore(f"{base}/s.zarr").read_patch(16, 9)
        location = StoreLocation.open(f"{base}/s.zarr")
        assert location.read_range("zarr.json", 10**6, 10**6 + 10) == b""  # past the end: no bytes, as locally


def test_a_server_that_ignores_range_fails_verify(store, tmp_path):
    card = write_card(store, "s", tmp_path / "manifests")
    with serve_directory(store.parent, ranges=False) as (base, _):
        report = verify(str(card), store_url=f"{base}/s.zarr")
    assert report.files_checked > 0 and not report.altered and not report.missing
    assert len(report.problems) == 1, report.format()
    assert report.problems[0].startswith(f"{base}/s.zarr: the server ignored an HTTP Range request for zarr.json")
    with serve_directory(store.parent) as (base, _):
        assert verify(str(card), store_url=f"{base}/s.zarr").ok
