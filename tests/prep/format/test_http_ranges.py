"""HTTP(S) stores read through libcurl: exact bytes for every kind of range, transient failures retried,
missing files and refusals named, and handles that survive DataLoader workers forking."""

from __future__ import annotations

import multiprocessing
import shutil
import subprocess
import time

import numpy as np
import pytest
import torch

from luna_prep.format import http_ranges
from luna_prep.format.http_ranges import CurlReader, HTTPStatusError
from luna_prep.format.location import StoreLocation
from luna_prep.format.reader import PatchStore
from luna_train.data.dataset import PatchDataset
from luna_train.data.loader import make_loader
from luna_train.data.sampler import SamplerConfig, WeightedPatchSampler

from conftest import write_tiny_store
from http_server import serve_directory

pytestmark = pytest.mark.skipif(not http_ranges.available(), reason="pycurl is not installed")
DATA = bytes(range(100))


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "f.bin").write_bytes(DATA)
    return tmp_path


@pytest.fixture
def quick_retries(monkeypatch):
    monkeypatch.setattr(CurlReader, "backoff_s", 0.01)


def test_whole_files_ranges_and_suffixes_are_the_files_bytes(folder):
    with serve_directory(folder) as (base, log):
        url = f"{base}/f.bin"
        got = CurlReader().get([url] * 6, [None, 10, 0, -4, -500, 95], [None, 20, 1, None, None, None])
        assert got == [DATA, DATA[10:20], DATA[:1], DATA[-4:], DATA, DATA[95:]]
        sent = sorted((r[2] or "") for r in log.requests)  # concurrent: in any order
        assert sent == sorted(["", "bytes=10-19", "bytes=0-0", "bytes=-4", "bytes=-500", "bytes=95-"])
        past = CurlReader().get([url], [200], [210])[0]
        assert isinstance(past, HTTPStatusError) and past.status == 416
        assert StoreLocation.open(base).read_range("f.bin", 200, 210) == b""  # as a local read past the end


def test_each_gives_every_answer_once_in_the_order_they_arrive(folder):
    with serve_directory(folder) as (base, _):
        starts = list(range(0, 100, 5))
        arrived = list(CurlReader().each([f"{base}/f.bin"] * len(starts), starts, [s + 5 for s in starts]))
    assert sorted(k for k, _ in arrived) == list(range(len(starts)))
    assert all(blob == DATA[starts[k]:starts[k] + 5] for k, blob in arrived)


def test_transient_failures_are_retried(folder, quick_retries):
    with serve_directory(folder, fail_first=2) as (base, log):
        assert CurlReader().get([f"{base}/f.bin"], [3], [9]) == [DATA[3:9]]
        assert [r[3] for r in log.requests] == [503, 503, 206]


def test_a_server_that_keeps_failing_is_named_after_its_retries(folder, quick_retries, monkeypatch):
    monkeypatch.setattr(CurlReader, "retries", 2)
    with serve_directory(folder, fail_first=100) as (base, log):
        with pytest.raises(HTTPStatusError, match=r"/f\.bin: HTTP 503") as info:
            StoreLocation.open(base).read_range("f.bin", 0, 10)
        assert info.value.status == 503
        assert log.count == 3  # the first attempt and two retries


def test_a_missing_file_is_named_and_not_retried(folder, quick_retries):
    with serve_directory(folder) as (base, log):
        with pytest.raises(FileNotFoundError, match=r"127\.0\.0\.1:\d+: nope\.bin not found"):
            StoreLocation.open(base).read("nope.bin")
        with pytest.raises(FileNotFoundError, match=r"/nope\.bin: not found \(HTTP 404\)"):
            StoreLocation.open(base).read_range("nope.bin", 0, 10)
        assert log.count == 2


def test_a_closed_port_is_an_error_naming_the_url(quick_retries, monkeypatch):
    monkeypatch.setattr(CurlReader, "retries", 1)
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once the socket is closed
    got = CurlReader().get([f"http://127.0.0.1:{port}/f.bin"], [0], [4])[0]
    assert isinstance(got, OSError) and f"127.0.0.1:{port}/f.bin" in str(got) and "curl error 7" in str(got)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make a certificate")
def test_https_with_the_ca_bundle_named_and_a_refused_certificate_named(folder, tmp_path, monkeypatch):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    with serve_directory(folder, tls=(str(cert), str(key))) as (base, log):
        assert base.startswith("https://")
        monkeypatch.setenv("CURL_CA_BUNDLE", str(cert))
        assert CurlReader().get([f"{base}/f.bin"], [5], [15]) == [DATA[5:15]]
        monkeypatch.setenv("CURL_CA_BUNDLE", str(key))  # not a CA bundle: the certificate cannot be verified
        monkeypatch.delenv("SSL_CERT_FILE", raising=False)
        monkeypatch.setattr(CurlReader, "backoff_s", 5.0)  # a retry would wait 5 s
        t = time.monotonic()
        got = CurlReader().get([f"{base}/f.bin"], [5], [15])[0]
        assert isinstance(got, OSError) and f"{base}/f.bin" in str(got) and "curl error" in str(got)
        assert time.monotonic() - t < 4  # a certificate problem is not retried


def _read_in_child(url, queue):
    queue.put(http_ranges.reader().get([url], [0], [10])[0])


def test_a_forked_child_reads_through_handles_of_its_own(folder):
    with serve_directory(folder) as (base, _):
        url = f"{base}/f.bin"
        assert http_ranges.reader().get([url], [0], [10]) == [DATA[:10]]  # the parent's handles now exist
        ctx = multiprocessing.get_context("fork")
        queue = ctx.Queue()
        child = ctx.Process(target=_read_in_child, args=(url, queue))
        child.start()
        try:
            assert queue.get(timeout=30) == DATA[:10]
        finally:
            child.join(10)
            child.kill()
        assert http_ranges.reader().get([url], [10], [20]) == [DATA[10:20]]  # and the parent's still work


def test_the_fsspec_client_reads_the_same(tmp_path, monkeypatch):
    root = write_tiny_store(tmp_path / "s.zarr", scales=(16,), n_scans=2)
    rows = sorted(int(i) for i in PatchStore(root).manifest["index"])
    with serve_directory(tmp_path) as (base, _):
        curl = PatchStore(f"{base}/s.zarr")
        monkeypatch.setenv("LUNA_HTTP_CLIENT", "fsspec")
        plain = PatchStore(f"{base}/s.zarr")
        assert curl.location._curl and not plain.location._curl
        for a, b in zip(curl.read_stored_many(16, rows), plain.read_stored_many(16, rows)):
            assert all(np.array_equal(x, y) for x, y in zip(a, b))


def test_the_fsspec_clients_errors_name_the_file(tmp_path, monkeypatch):
    """aiohttp's errors name only the host; a reader needs the file (and the store) that could not be read."""
    import socket

    from luna_prep.format.location import StoreLocation

    monkeypatch.setenv("LUNA_HTTP_CLIENT", "fsspec")
    with socket.socket() as s:  # a port with no server behind it
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/s.zarr"
    location = StoreLocation.open(url)
    assert not location._curl
    with pytest.raises(OSError, match=rf"{url}/zarr\.json: \w+"):
        location.read("zarr.json")
    shard = "patches/16/image/c/0/0/0/0"
    with pytest.raises(OSError, match=rf"{url}/{shard}: \w+"):
        location.read_range(shard, -100, None)


def test_loader_workers_over_http_give_the_local_batches(tmp_path):
    root = write_tiny_store(tmp_path / "s.zarr", scales=(16,), n_scans=4)
    rows = PatchStore(root).manifest
    rows = rows[rows["scale"] == 16].reset_index(drop=True)

    def batches(store: str, workers: int) -> list[dict]:
        ds = PatchDataset(store, rows, train_size=16, stored=True)
        sampler = WeightedPatchSampler(rows, SamplerConfig(samples_per_epoch=24), seed=3)
        return list(make_loader(ds, sampler, batch_size=8, num_workers=workers, persistent_workers=False))

    local = batches(root, 0)
    with serve_directory(tmp_path) as (base, _):
        remote = PatchStore(f"{base}/s.zarr")
        remote.read_stored_many(16, [0, 1])  # the parent's libcurl handles exist before the workers fork
        for got in (batches(f"{base}/s.zarr", 2), batches(f"{base}/s.zarr", 0)):
            assert len(got) == len(local) == 3
            for a, b in zip(got, local):
                assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
