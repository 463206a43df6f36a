"""Whole-scan volumes from someone else: codecs, dtype and shape are checked before any data is read."""

from __future__ import annotations

import json
import shutil
import time
import tracemalloc

import numpy as np
import pandas as pd
import pytest
import zarr

from luna_prep.format.reader import PatchStore
from luna_prep.format.spec import (
    SCANS_FILE,
    FormatError,
    VolumeAttributes,
    decode_image,
    encode_image,
)
from luna_prep.format.writer import StorageConfig, write_volume
from luna_prep.sharing.verify import verify

from conftest import write_tiny_store
from paths import DATA

UID = "1.3.6.1.4.1.14519.5.2.1.9999.405005096909568485736450088280"  # (52, 42, 42) in the frozen store
IMAGE = f"volumes/{UID}/image"


@pytest.fixture
def v1_copy(tmp_path):
    root = tmp_path / "v1.zarr"
    shutil.copytree(DATA / "store_v1.zarr", root)
    return root


def _edit(root, path, change) -> None:
    meta_path = root / path / "zarr.json"
    meta = json.loads(meta_path.read_text())
    change(meta)
    meta_path.write_text(json.dumps(meta))


def test_a_pickle_codec_in_a_volume_is_refused_and_reported_by_verify_deep(v1_copy):
    _edit(v1_copy, IMAGE, lambda m: m["codecs"].insert(1, {"name": "numcodecs.pickle", "configuration": {}}))
    with pytest.raises(FormatError, match=rf"v1\.zarr/{IMAGE}: codecs \['bytes', 'numcodecs.pickle', 'blosc'\] are "
                                          "not allowed"):
        PatchStore(v1_copy).read_volume(UID)
    report = verify(str(v1_copy), deep=True)
    assert not report.ok and any(IMAGE in p and "numcodecs.pickle" in p for p in report.problems), report.format()
    assert verify(str(DATA / "store_v1.zarr"), deep=True).volumes_read == 4


def test_a_volume_declared_800_cubed_is_refused_before_reading(v1_copy):
    def huge(m):
        m["shape"] = [800, 800, 800]
        m["chunk_grid"]["configuration"]["chunk_shape"] = [64, 64, 64]
    _edit(v1_copy, IMAGE, huge)
    tracemalloc.start()
    t = time.perf_counter()
    with pytest.raises(FormatError, match=rf"{IMAGE}: shape \(800, 800, 800\), but the scans table records "
                                          r"\(52, 42, 42\) for the scan; not read"):
        PatchStore(v1_copy).read_volume(UID)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert time.perf_counter() - t < 5 and peak < 50e6
    assert any("shape (800, 800, 800)" in p for p in verify(str(v1_copy), deep=True).problems)


@pytest.mark.parametrize("change, message", [
    (lambda m: m.update(data_type="float64"), "data type 'float64', expected 'uint8'"),
    (lambda m: m["chunk_grid"]["configuration"].update(chunk_shape=[1024, 1024, 1024]), "chunk grid"),
    (lambda m: m.update(node_type="group"), "not a Zarr v3 array"),
])
def test_other_bad_volume_metadata_is_refused(v1_copy, change, message):
    _edit(v1_copy, IMAGE, change)
    with pytest.raises(FormatError, match=message):
        PatchStore(v1_copy).read_volume(UID)


def test_a_v2_volume_chunk_with_flipped_bytes_is_named(tmp_path):
    root = write_tiny_store(tmp_path / "s.zarr", n_scans=1)
    rng = np.random.default_rng(1)
    image = encode_image(rng.random((70, 40, 30)), "uint8")
    lungs = rng.random((70, 40, 30)) > 0.5
    attrs = VolumeAttributes(origin_xyz=(1.0, 2.0, 3.0), spacing_mm=1.0, subset=0, original={}).to_attrs()
    write_volume(zarr.open_group(str(root), mode="r+"), "1.2.3.0", image, lungs, attrs, StorageConfig())
    scans = pd.read_parquet(f"{root}/{SCANS_FILE}")
    scans["resampled_shape_zyx"] = [[70, 40, 30]]
    scans.to_parquet(f"{root}/{SCANS_FILE}", index=False)
    vol = PatchStore(root).read_volume("1.2.3.0")
    assert np.array_equal(vol.image, decode_image(image, "uint8")) and np.array_equal(vol.lungs, lungs)
    chunk = tmp_path / "s.zarr/volumes/1.2.3.0/image/c/1/0/0"  # z 64..69
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))
    with pytest.raises(FormatError, match=r"s\.zarr/volumes/1\.2\.3\.0/image/c/1/0/0: chunk checksum \(crc32c\) "
                                          "mismatch"):
        PatchStore(root).read_volume("1.2.3.0")
