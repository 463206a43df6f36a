"""Sharing a dataset: cards, verify, pack to .zip, and reading a store over real HTTP."""

from __future__ import annotations

import hashlib
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from luna_prep.build import BuildConfig, run_build
from luna_prep.cli import main as cli
from luna_prep.format.location import StoreLocation
from luna_prep.format.reader import PatchStore
from luna_prep.format.shards import ShardedPatchArray
from luna_prep.format.spec import BUILD_DIR, MANIFEST_FILE, FormatError
from luna_prep.format.writer import write_table
from luna_prep.pipeline.sampling import SamplingConfig
from luna_prep.sharing.cards import (
    SMALL_FILES,
    CardError,
    ChecksumMismatch,
    load_card,
    resolve_dataset,
    validate_card,
    write_card,
)
from luna_prep.sharing.pack import pack_store
from luna_prep.sharing.verify import verify
from luna_prep.synthetic.scans import synthesize

from http_server import serve_directory

SCALES = (32, 48)


def config(data_root, out, subsets=(0, 1, 2, 3)) -> BuildConfig:
    return BuildConfig(data_root=str(data_root), out=str(out), subsets=subsets,
                       sampling=SamplingConfig(scales=SCALES, jitter_copies=1))


@pytest.fixture(scope="module")
def synth4(tmp_path_factory):
    return synthesize(tmp_path_factory.mktemp("synth") / "luna16", n_scans=4, seed=11)


@pytest.fixture(scope="module")
def built(synth4, tmp_path_factory):
    """(store path, card path) of a 4-scan build with its card in a separate manifests folder."""
    base = tmp_path_factory.mktemp("shared")
    out = base / "data" / "patches.zarr"
    report = run_build(config(synth4.root, out), workers=0, progress=False, manifests_dir=base / "manifests")
    assert report.ok and report.scans_ok == 4
    assert report.card == base / "manifests" / "patches.json"
    return out, report.card


@pytest.fixture()
def store_copy(built, tmp_path):
    """A copy of the built store and a card describing the copy (to alter freely)."""
    out = tmp_path / "copy.zarr"
    shutil.copytree(built[0], out)
    return out, write_card(out, "copy", tmp_path / "manifests")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def all_patches(store: PatchStore) -> list[tuple[np.ndarray, np.ndarray]]:
    return [store.read_patch(int(r.scale), int(r.index)) for r in store.manifest.itertuples()]


def assert_same_patches(a: PatchStore, b: PatchStore) -> None:
    pd.testing.assert_frame_equal(a.manifest, b.manifest)
    for (ia, ma), (ib, mb) in zip(all_patches(a), all_patches(b), strict=True):
        assert np.array_equal(ia, ib) and np.array_equal(ma, mb)


# ---------------------------------------------------------------- cards


def test_card_records_what_the_store_holds(built):
    out, card_file = built
    card = load_card(card_file)
    store = PatchStore(out)
    assert card["name"] == "patches"
    assert (card["format"], card["format_version"]) == ("luna-patches", 2)
    assert card["config_hash"] == store.attrs.config_hash and len(card["config_hash"]) == 64
    assert card["build_config"] == store.attrs.build_config
    assert card["software_version"] == store.attrs.software_version
    assert card["store"] == {"location": str(out), "absolute": str(out.resolve())}
    # counts by subset x kind x scale, summing to the manifest
    m = store.manifest
    expected = m.groupby(["subset", "kind", "scale"]).size()
    got = {(c["subset"], c["kind"], c["scale"]): c["patches"] for c in card["counts"]}
    assert got == {k: int(v) for k, v in expected.items()}
    assert sum(got.values()) == len(m) == card["totals"]["patches"]
    assert {k[0] for k in got} == {0, 1, 2, 3} and {k[2] for k in got} == set(SCALES)
    assert card["totals"]["scans_ok"] == 4 and card["totals"]["scans_failed"] == 0
    # every file but _build/, with its size and sha256
    on_disk = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert any(p.startswith(f"{BUILD_DIR}/") for p in on_disk)
    files = {f["path"]: f for f in card["files"]}
    assert sorted(files) == [p for p in on_disk if not p.startswith(f"{BUILD_DIR}/")]
    assert {"zarr.json", "manifest.parquet", "scans.parquet", "patches/48/image/c/0/0/0/0"} <= set(files)
    for rel in ("zarr.json", "manifest.parquet", "patches/32/mask/c/1/0/0/0"):
        assert files[rel]["sha256"] == sha256(out / rel) and files[rel]["size"] == (out / rel).stat().st_size
    assert card["totals"]["bytes"] == sum(f["size"] for f in card["files"])


def test_cli_build_writes_card_also_when_scans_fail(synth4, tmp_path, monkeypatch):
    root = tmp_path / "luna16"
    shutil.copytree(synth4.root, root)
    bad = synth4.scans[0]
    raw = root / "subset0" / f"{bad.seriesuid}.raw"
    raw.write_bytes(raw.read_bytes()[:1000])
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LUNA_PREP_MANIFESTS_DIR", raising=False)
    args = ["build", "--data-root", "luna16", "--subsets", "0-3", "--out", "stores/mine.zarr", "--scales", "32,48",
            "--jitter-copies", "1", "--workers", "0", "--quiet"]
    result = CliRunner().invoke(cli, args + ["--name", "lung-v1", "--manifests-dir", "cards"])
    assert result.exit_code == 1, result.output
    assert "dataset card: cards/lung-v1.json" in result.output
    card = load_card(tmp_path / "cards" / "lung-v1.json")
    assert card["name"] == "lung-v1"
    assert card["totals"]["scans_ok"] == 3 and card["totals"]["scans_failed"] == 1
    assert card["failed_scans"] == [bad.seriesuid]
    assert {c["subset"] for c in card["counts"]} == {1, 2, 3}
    assert card["store"]["location"] == "stores/mine.zarr"
    assert card["store"]["absolute"] == str((tmp_path / "stores" / "mine.zarr").resolve())
    # default name (the store's stem) and default folder (manifests/ under the current directory)
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1 and "dataset card: manifests/mine.json" in result.output
    again = load_card(tmp_path / "manifests" / "mine.json")
    # the failed scan was retried (scans.parquet records its new attempt); the data files are the same
    same = lambda c: [f for f in c["files"] if f["path"] != "scans.parquet"]  # noqa: E731
    data_bytes = lambda c: c["totals"]["bytes"] - sum(f["size"] for f in c["files"] if f not in same(c))  # noqa: E731
    totals = lambda c: {k: v for k, v in c["totals"].items() if k != "bytes"}  # noqa: E731
    # (scans.parquet's size varies with its contents, e.g. the retry's seconds: compare the rest)
    assert same(again) == same(card) and totals(again) == totals(card) and data_bytes(again) == data_bytes(card)
    # --no-card writes none; a bad name is refused before building
    result = CliRunner().invoke(cli, args + ["--no-card", "--manifests-dir", "none"])
    assert result.exit_code == 1 and not (tmp_path / "none").exists()
    result = CliRunner().invoke(cli, args + ["--name", "../escape"])
    assert result.exit_code != 0 and "card name" in result.output


@pytest.mark.parametrize("path", ["../outside", "/etc/passwd", "patches/../../x", "C:/x", "patches\\..\\x",
                                  "http://evil/x", "", "_build/done/a.json", "./zarr.json"])
def test_card_paths_escaping_the_store_are_refused(built, path):
    card = json.loads(built[1].read_text())
    card["files"].append({"path": path, "size": 1, "sha256": "0" * 64})
    with pytest.raises(CardError):
        validate_card(card)


def test_malformed_cards_are_refused(built, tmp_path):
    good = json.loads(built[1].read_text())
    cases = {
        "card_format": lambda c: c.update(card_format="something"),
        "card_version": lambda c: c.update(card_version=2),
        "format_version": lambda c: c.update(format_version=3),
        "sha256": lambda c: c["files"][0].update(sha256="xyz"),
        "size": lambda c: c["files"][0].update(size=-1),
        "lacks": lambda c: c.update(files=[f for f in c["files"] if f["path"] != MANIFEST_FILE]),
        "twice": lambda c: c["files"].append(dict(c["files"][0])),
    }
    for what, change in cases.items():
        card = json.loads(json.dumps(good))
        change(card)
        path = tmp_path / f"{what}.json"
        path.write_text(json.dumps(card))
        with pytest.raises(CardError, match=what):
            load_card(path)
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(CardError, match="not valid JSON"):
        load_card(tmp_path / "broken.json")


def test_resolve_dataset(built, store_copy, tmp_path, monkeypatch):
    out, card_file = built
    assert resolve_dataset("data/somewhere.zarr") == "data/somewhere.zarr"
    assert resolve_dataset("http://host/x.zarr", store_url="ignored") == "http://host/x.zarr"
    assert resolve_dataset(str(card_file)) == str(out.resolve())
    # the recorded location as given (relative to the current directory) when the absolute one is gone
    card = json.loads(card_file.read_text())
    card["store"] = {"location": "data/patches.zarr", "absolute": "/nonexistent/patches.zarr"}
    moved = tmp_path / "moved.json"
    moved.write_text(json.dumps(card))
    monkeypatch.chdir(out.parent.parent)
    assert resolve_dataset(str(moved)) == "data/patches.zarr"
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="--store-url"):
        resolve_dataset(str(moved))
    assert resolve_dataset(str(moved), verify=False) == "data/patches.zarr"
    assert resolve_dataset(str(moved), store_url=str(out)) == str(out)
    # a store whose manifest changed since the card: an error naming the file, unless verify=False
    copy, copy_card = store_copy
    saved = (copy / MANIFEST_FILE).read_bytes()
    m = pd.read_parquet(copy / MANIFEST_FILE)
    write_table(m.iloc[2:], copy / MANIFEST_FILE)
    with pytest.raises(ChecksumMismatch, match="manifest.parquet"):
        resolve_dataset(str(copy_card))
    assert resolve_dataset(str(copy_card), verify=False) == str(copy.resolve())
    # the card checks content, not location: the untouched original matches the copy's card
    assert resolve_dataset(str(copy_card), store_url=str(out)) == str(out)
    (copy / MANIFEST_FILE).write_bytes(saved)
    assert resolve_dataset(str(copy_card)) == str(copy.resolve())
    (copy / "scans.parquet").unlink()
    with pytest.raises(ChecksumMismatch, match="scans.parquet is missing"):
        resolve_dataset(str(copy_card), verify=True, store_url=str(copy))


# ---------------------------------------------------------------- verify


def test_verify_a_good_store_and_card(built):
    out, card_file = built
    report = verify(str(card_file), deep=True)
    assert report.ok, report.format()
    assert report.files_checked == len(load_card(card_file)["files"])
    assert report.rows_checked == len(PatchStore(out).manifest)
    assert report.patches_read == report.rows_checked
    assert verify(str(out)).ok
    result = CliRunner().invoke(cli, ["verify", str(card_file), "--deep"])
    assert result.exit_code == 0, result.output
    assert "OK: the store is intact" in result.output and "0 missing, 0 altered, 0 unexpected" in result.output


def test_verify_reports_missing_altered_and_unexpected_files(store_copy):
    copy, card_file = store_copy
    (copy / "patches/48/mask/c/1/0/0/0").unlink()
    shard = copy / "patches/32/image/c/2/0/0/0"
    data = bytearray(shard.read_bytes())
    data[100] ^= 0xFF
    shard.write_bytes(bytes(data))
    (copy / "patches/32/image/c/9").mkdir(parents=True)
    (copy / "patches/32/image/c/9/extra").write_bytes(b"x")
    (copy / BUILD_DIR / "scratch").write_bytes(b"bookkeeping is ignored")
    report = verify(str(card_file))
    assert report.missing == ["patches/48/mask/c/1/0/0/0"]
    assert len(report.altered) == 1 and report.altered[0].startswith("patches/32/image/c/2/0/0/0: sha256")
    assert report.unexpected == ["patches/32/image/c/9/extra"]
    assert not report.ok
    result = CliRunner().invoke(cli, ["verify", str(card_file)])
    assert result.exit_code == 1
    for line in ("MISSING patches/48/mask/c/1/0/0/0", "ALTERED patches/32/image/c/2/0/0/0",
                 "UNEXPECTED patches/32/image/c/9/extra", "FAILED"):
        assert line in result.output


def _manifest(store: Path) -> pd.DataFrame:
    return pd.read_parquet(store / MANIFEST_FILE)


def test_verify_checks_manifest_invariants(store_copy):
    copy, _ = store_copy
    original = _manifest(copy)
    capacity = PatchStore(copy).attrs.capacity
    m = original.copy()
    m.loc[0, "index"] = capacity
    m.loc[1, "scale"] = 40
    m.loc[2, "kind"] = "tumour"
    m = pd.concat([m, m.iloc[[5]]], ignore_index=True)
    write_table(m, copy / MANIFEST_FILE)
    problems = "\n".join(verify(str(copy)).problems)
    assert f"1 rows with index outside 0..{capacity - 1} (e.g. {capacity})" in problems
    assert "1 rows with a scale not in [32, 48] (e.g. 40)" in problems
    assert "1 rows with a kind not in ['nodule', 'random', 'candidate'] (e.g. 'tumour')" in problems
    assert "1 duplicate (sample_id, scale) rows" in problems
    # column types
    m = original.copy()
    m["fg_voxels"] = m["fg_voxels"].astype("float64")
    m = m.drop(columns=["diameter_mm"])
    write_table(m, copy / MANIFEST_FILE)
    problems = "\n".join(verify(str(copy)).problems)
    assert "column 'fg_voxels' is double, expected int64" in problems
    assert "column 'diameter_mm' is missing" in problems
    # a mask that disagrees with fg_voxels: only --deep reads patches
    m = original.copy()
    row = m.index[m["fg_voxels"] > 0][0]
    m.loc[row, "fg_voxels"] += 1
    write_table(m, copy / MANIFEST_FILE)
    assert verify(str(copy)).ok
    deep = verify(str(copy), deep=True)
    assert not deep.ok and "1 patches whose mask disagrees with the manifest" in deep.problems[0]
    result = CliRunner().invoke(cli, ["verify", str(copy), "--deep"])
    assert result.exit_code == 1 and "PROBLEM 1 patches whose mask disagrees" in result.output


def _edit_zarr_json(store: Path, change) -> None:
    path = store / "zarr.json"
    meta = json.loads(path.read_text())
    change(meta)
    path.write_text(json.dumps(meta))


def test_verify_checks_root_attributes_and_array_metadata(store_copy):
    copy, _ = store_copy
    saved = (copy / "zarr.json").read_text()
    _edit_zarr_json(copy, lambda m: m["attributes"].update(format_version=3))
    assert "format_version 3" in verify(str(copy)).problems[0]
    (copy / "zarr.json").write_text(saved)
    _edit_zarr_json(copy, lambda m: m["attributes"].pop("capacity"))
    assert "root attributes missing ['capacity']" in verify(str(copy)).problems[0]
    (copy / "zarr.json").write_text(saved)
    _edit_zarr_json(copy, lambda m: m["attributes"].update(capacity=m["attributes"]["capacity"] + 32))
    problems = "\n".join(verify(str(copy)).problems)
    assert "patches/32/image: shape (128, 32, 32, 32), expected (160, 32, 32, 32)" in problems
    (copy / "zarr.json").write_text(saved)
    # consolidated metadata that disagrees with the array's own zarr.json
    _edit_zarr_json(copy, lambda m: m["consolidated_metadata"]["metadata"]["patches/48/mask"].update(fill_value=1))
    assert "consolidated metadata of patches/48/mask differs" in "\n".join(verify(str(copy)).problems)
    (copy / "zarr.json").write_text(saved)
    assert verify(str(copy)).ok


# ---------------------------------------------------------------- safety


def _array_meta(store: Path, path: str) -> dict:
    return json.loads((store / path / "zarr.json").read_text())


@pytest.mark.parametrize("dtype", ["object", "|O", "string", "variable_length_utf8", "float64", "int64"])
def test_arrays_with_other_dtypes_are_refused(built, dtype):
    out, _ = built
    meta = _array_meta(out, "patches/32/image")
    meta["data_type"] = dtype
    with pytest.raises(FormatError, match="not allowed"):
        ShardedPatchArray(StoreLocation.open(out), "patches/32/image", meta)


@pytest.mark.parametrize("inner", [
    [{"name": "bytes"}, {"name": "numcodecs.pickle"}],
    [{"name": "vlen-utf8"}],
    [{"name": "bytes"}, {"name": "numcodecs.msgpack2"}],
    [{"name": "pickle"}],
    [{"name": "bytes"}, {"name": "blosc"}, {"name": "zstd"}],
])
def test_pickle_and_other_codecs_are_refused(built, inner):
    out, _ = built
    meta = _array_meta(out, "patches/32/image")
    meta["codecs"][0]["configuration"]["codecs"] = inner
    with pytest.raises(FormatError, match="not allowed|more than one compressor"):
        ShardedPatchArray(StoreLocation.open(out), "patches/32/image", meta)


def test_store_with_a_pickle_codec_fails_to_read_and_verify(store_copy):
    copy, card_file = store_copy

    def poison(meta):
        meta["codecs"][0]["configuration"]["codecs"] = [{"name": "bytes"}, {"name": "numcodecs.pickle"}]
        meta["data_type"] = "object"

    path = copy / "patches/32/image/zarr.json"
    meta = json.loads(path.read_text())
    poison(meta)
    path.write_text(json.dumps(meta))
    _edit_zarr_json(copy, lambda m: poison(m["consolidated_metadata"]["metadata"]["patches/32/image"]))
    with pytest.raises(FormatError, match="not allowed"):
        PatchStore(copy).read_patch(32, 0)
    report = verify(str(card_file))
    assert "zarr.json: sha256" in report.altered[0] or "zarr.json:" in report.altered[0]
    assert any("data type 'object' not allowed" in p for p in report.problems)
    # with --no-verify the trainer's resolver hands the store over; reading it still refuses
    assert resolve_dataset(str(card_file), verify=False) == str(copy.resolve())
    with pytest.raises(ChecksumMismatch, match="zarr.json"):
        resolve_dataset(str(card_file))


def test_a_foreign_array_in_the_metadata_is_reported(store_copy):
    copy, _ = store_copy
    extra = _array_meta(copy, "patches/32/image")
    _edit_zarr_json(copy, lambda m: m["consolidated_metadata"]["metadata"].update({"extra/thing": extra}))
    assert "extra/thing: an array that is not part of the format" in verify(str(copy)).problems


# ---------------------------------------------------------------- pack


def test_pack_to_zip_reads_and_verifies_like_the_folder(built, tmp_path):
    out, card_file = built
    zip_path = tmp_path / "patches.zip"
    report = pack_store(out, zip_path)
    card = load_card(card_file)
    with zipfile.ZipFile(zip_path) as zf:
        infos = zf.infolist()
    names = [i.filename for i in infos]
    assert sorted(names) == sorted(f["path"] for f in card["files"])  # store-relative, _build/ left out
    assert names[:3] == list(SMALL_FILES)
    assert all(i.compress_type == zipfile.ZIP_STORED for i in infos)
    assert report.files == len(names) and report.bytes == card["totals"]["bytes"]
    # PatchStore, verify and zarr's ZipStore open it directly
    assert_same_patches(PatchStore(zip_path), PatchStore(out))
    assert set(StoreLocation.open(zip_path).list_files()) == set(names)
    assert np.array_equal(PatchStore(zip_path).image_array(48)[:40], PatchStore(out).image_array(48)[:40])
    checked = verify(str(card_file), store_url=str(zip_path), deep=True)
    assert checked.ok and checked.files_checked == len(names), checked.format()
    assert verify(str(zip_path)).ok
    assert resolve_dataset(str(card_file), store_url=str(zip_path)) == str(zip_path)
    # info and preview take the zip as they take the folder
    info = CliRunner().invoke(cli, ["info", str(zip_path)])
    folder_info = CliRunner().invoke(cli, ["info", str(out)]).output
    assert info.exit_code == 0 and info.output.splitlines()[1:] == folder_info.splitlines()[1:]  # but the store line
    shown = CliRunner().invoke(cli, ["preview", str(zip_path), "--out", str(tmp_path / "zip.png"), "-n", "2"])
    assert shown.exit_code == 0 and (tmp_path / "zip.png").stat().st_size > 1000, shown.output
    # same bytes every time; the CLI does the same
    result = CliRunner().invoke(cli, ["pack", str(out), str(tmp_path / "again.zip")])
    assert result.exit_code == 0 and f"{len(names)} files" in result.output
    assert sha256(tmp_path / "again.zip") == sha256(zip_path)
    result = CliRunner().invoke(cli, ["pack", str(out), str(out / "inside.zip")])
    assert result.exit_code != 0 and "inside the store" in result.output


def test_verify_finds_an_altered_zip_entry(built, tmp_path):
    out, card_file = built
    zip_path = tmp_path / "p.zip"
    pack_store(out, zip_path)
    blob = bytearray(zip_path.read_bytes())
    with zipfile.ZipFile(zip_path) as zf:
        info = zf.getinfo("patches/48/image/c/0/0/0/0")
    # local header: 30 bytes + name + extra, then the stored data
    start = info.header_offset + 30 + len(info.filename) + len(info.extra) + 64
    blob[start] ^= 0x01
    zip_path.write_bytes(bytes(blob))
    report = verify(str(card_file), store_url=str(zip_path))
    assert report.altered == ["patches/48/image/c/0/0/0/0: unreadable (BadZipFile: Bad CRC-32 for file "
                              "'patches/48/image/c/0/0/0/0')"]
    assert report.files_checked == len(load_card(card_file)["files"]) and not report.missing


# ---------------------------------------------------------------- HTTP


def test_store_over_http(built, tmp_path):
    out, card_file = built
    serve_root = tmp_path / "www"
    shutil.copytree(out, serve_root / "patches.zarr")
    pack_store(out, serve_root / "patches.zip")
    local = PatchStore(out)
    with serve_directory(serve_root) as (base, log):
        url = f"{base}/patches.zarr"
        # open + manifest: consolidated metadata, so two GETs (zarr.json, manifest.parquet)
        remote = PatchStore(url)
        manifest = remote.manifest
        assert log.paths() == ["/patches.zarr/zarr.json", "/patches.zarr/manifest.parquet"]
        assert all(r[3] == 200 for r in log.requests)
        # N patches of one shard: one suffix-range read of the shard's tail (its index; here the shard is
        # larger than that first read), then one ranged read each
        log.reset()
        n = 8
        rows = manifest[(manifest["scale"] == 48) & (manifest["index"] < local.attrs.shard_patches)].head(n)
        image = remote.patches(48, "image")
        for r in rows.itertuples():
            assert np.array_equal(image.read(int(r.index)), local.patches(48, "image").read(int(r.index)))
        assert log.count == n + 1
        assert log.requests[0][2] == f"bytes=-{ShardedPatchArray.remote_tail}"
        assert all(r[3] == 206 for r in log.requests)
        # their masks: the mask shard is smaller than that first read, so it is read whole, once
        log.reset()
        mask = remote.patches(48, "mask")
        for r in rows.itertuples():
            assert np.array_equal(mask.read(int(r.index)), local.patches(48, "mask").read(int(r.index)))
        assert log.count == 1
        # every manifest row reads the same over HTTP as locally
        assert_same_patches(remote, local)
        # resolving a card to the served store checks zarr.json, manifest and scans: three GETs
        log.reset()
        assert resolve_dataset(str(card_file), store_url=url) == url
        assert sorted(log.paths()) == sorted(f"/patches.zarr/{f}" for f in SMALL_FILES)
        # verify over HTTP uses the card's file list (no listing)
        log.reset()
        report = verify(str(card_file), store_url=url, deep=True)
        assert report.ok and report.files_checked == len(load_card(card_file)["files"]), report.format()
        assert "cannot be listed" in report.notes[0]
        assert report.unexpected == []
        (serve_root / "patches.zarr" / "patches/32/mask/c/0/0/0/0").unlink()
        report = verify(str(card_file), store_url=url)
        assert report.missing == ["patches/32/mask/c/0/0/0/0"]
        # the packed zip over HTTP, read by ranges
        zipped = PatchStore(f"{base}/patches.zip")
        assert_same_patches(zipped, local)
        assert verify(str(card_file), store_url=f"{base}/patches.zip").ok


def test_http_server_ranges(tmp_path):
    import urllib.request

    (tmp_path / "f.bin").write_bytes(bytes(range(100)))

    def get(url, rng=None):
        req = urllib.request.Request(url, headers={"Range": rng} if rng else {})
        try:
            with urllib.request.urlopen(req) as r:
                return r.status, r.read(), r.headers.get("Content-Range")
        except urllib.error.HTTPError as e:
            return e.code, b"", None

    with serve_directory(tmp_path) as (base, log):
        assert get(f"{base}/f.bin") == (200, bytes(range(100)), None)
        assert get(f"{base}/f.bin", "bytes=10-19") == (206, bytes(range(10, 20)), "bytes 10-19/100")
        assert get(f"{base}/f.bin", "bytes=95-") == (206, bytes(range(95, 100)), "bytes 95-99/100")
        assert get(f"{base}/f.bin", "bytes=-4") == (206, bytes(range(96, 100)), "bytes 96-99/100")
        assert get(f"{base}/f.bin", "bytes=90-200") == (206, bytes(range(90, 100)), "bytes 90-99/100")
        assert get(f"{base}/f.bin", "bytes=100-")[0] == 416
        assert get(f"{base}/missing")[0] == 404
        assert log.count == 7


def test_store_files_lists_data_files_only(tmp_path):
    from luna_prep.sharing.cards import store_files

    for rel in ("zarr.json", "patches/16/c/0", "_build/done/x.json", "volumes/u/_build", "volumes/_build/y",
                ".manifest.parquet.tmp42", "patches/16/.c.tmp7"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    (tmp_path / "linked").symlink_to(tmp_path / "patches", target_is_directory=True)  # not entered
    (tmp_path / "alias").symlink_to(tmp_path / "zarr.json")
    (tmp_path / "broken").symlink_to(tmp_path / "missing")
    # only the top _build/ is the build's bookkeeping; temporaries anywhere are left out
    assert store_files(tmp_path) == ["alias", "patches/16/c/0", "volumes/_build/y", "volumes/u/_build", "zarr.json"]


def test_file_checksums_in_batches_keep_each_files_own_digest(tmp_path):
    from luna_prep.sharing.cards import file_checksums

    for i in range(7):
        (tmp_path / f"d{i % 3}" / f"f{i}").parent.mkdir(exist_ok=True)
        (tmp_path / f"d{i % 3}" / f"f{i}").write_bytes(bytes([i]) * (i + 1))
    rows = file_checksums(tmp_path, threads=3, files_per_task=2)
    assert [r["path"] for r in rows] == sorted(f"d{i % 3}/f{i}" for i in range(7))
    for r in rows:
        data = (tmp_path / r["path"]).read_bytes()
        assert r["size"] == len(data) and r["sha256"] == hashlib.sha256(data).hexdigest()


def test_file_checksums_take_known_digests_only_where_the_size_still_matches(tmp_path):
    from luna_prep.sharing.cards import file_checksums

    (tmp_path / "a").write_bytes(b"aaaa")
    (tmp_path / "b").write_bytes(b"bb")
    known = {"a": ("recorded-by-the-writer", 4), "b": ("stale", 3), "gone": ("x", 1)}
    rows = {r["path"]: r for r in file_checksums(tmp_path, known=known)}
    assert set(rows) == {"a", "b"}
    assert rows["a"]["sha256"] == "recorded-by-the-writer"  # the writer's digest, the bytes not read again
    assert rows["b"] == {"path": "b", "size": 2, "sha256": hashlib.sha256(b"bb").hexdigest()}
