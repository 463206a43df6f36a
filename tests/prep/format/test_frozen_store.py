"""Format regression: the frozen v1 store in tests/data (written once by make_v1_store.py) must be
read, with the same values, by this and every later version. Never regenerate it to make this pass."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import zarr

from luna_prep.format.reader import PatchStore
from luna_prep.format.spec import MANIFEST_COLUMNS, SCANS_COLUMNS
from luna_prep.sharing.verify import verify

from paths import DATA

STORE = DATA / "store_v1.zarr"
UIDS = ("1.3.6.1.4.1.14519.5.2.1.9999.405005096909568485736450088280",
        "1.3.6.1.4.1.14519.5.2.1.9999.589290190990462287198313740760")
# sha256 of the stored bytes of (image, mask) at (scale, row); row 13 is a hole (zeros)
PATCHES = {
    (16, 0): ("814498ad9f31e1947410e962290d7ea3033d1134831d3a327c7efa80bf4973a3",
              "caeaa08592f68b4fb5702a512d9ae60f06bb04c8ca7fe8328d444fd78f43b440"),
    (16, 3): ("b3c5ef6e0c35fa126676794d471dd2197f64a9f534d8ec8c58c366256b248879",
              "6e03ec27fd550a1a772cbff5d56b6e5b565bec912ecb9dbf4e4d6843903706ed"),
    (24, 8): ("bffbe49aaf7482311c05c0c1dfd76c2d0afa757b418ee9865e21043d81d2a343",
              "b52a751f2f926e91e4b9b50798684ad4152d3ce175d444bb46e60871b945bdf4"),
    (24, 13): ("299407adb3f1bd645191cfecb3c33a47510b1dfba3c0a936d741bdd8513526c0",
               "299407adb3f1bd645191cfecb3c33a47510b1dfba3c0a936d741bdd8513526c0"),
}
VOLUMES = {UIDS[0]: ((52, 42, 42), 7206, "6f2eeb3bdb2d4720bfbf63a7f4a69df0a0277efccb0e55bb7e5d20b70faf3df8"),
           UIDS[1]: ((56, 43, 43), 9739, "7613f1726ec9e12821c176d53d54b66f86a6473800f8a887d803a14b4d1aac02")}


def _sha(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


@pytest.fixture(scope="module")
def store():
    return PatchStore(STORE)


def test_the_frozen_files_are_unchanged():
    digest = hashlib.sha256()
    for p in sorted(STORE.rglob("*")):
        if p.is_file():
            digest.update(p.relative_to(STORE).as_posix().encode())
            digest.update(hashlib.sha256(p.read_bytes()).digest())
    assert digest.hexdigest() == "88b2240fbd44d6d8c0794d4400c0cffff2980e350495ca91b9239c8862e65021"


def test_attributes(store):
    a = store.attrs
    assert (a.spacing_mm, a.hu_window, a.scales, a.image_dtype) == (3.0, (-1000.0, 400.0), (16, 24), "uint8")
    assert (a.shard_patches, a.capacity, a.software_version) == (8, 16, "0.1.0")
    assert a.config_hash == "72e78b30556679daa1e71a6837dbbff52e4d664e822eaecf0a370dde3ea4cdba"
    assert a.build_config["sampling"]["scales"] == [16, 24] and a.build_config["volumes"] is True


def test_manifest_rows(store):
    m = store.manifest
    assert list(m.columns) == list(MANIFEST_COLUMNS) and len(m) == 24
    assert m["kind"].value_counts().to_dict() == {"nodule": 12, "candidate": 6, "random": 6}
    assert m.groupby("seriesuid")["index"].agg(["min", "max"]).to_numpy().tolist() == [[0, 7], [8, 11]]
    first = m.iloc[0]
    assert (first["seriesuid"], first["scale"], first["index"], first["kind"]) == (UIDS[0], 16, 0, "nodule")
    np.testing.assert_allclose(first[["center_x", "center_y", "center_z"]].astype(float), [-157.131, -184.207, -52.537])
    assert (first["fg_voxels"], first["annotation_index"], first["mask_source"]) == (5, 0, "sphere")
    assert first["diameter_mm"] == pytest.approx(5.383313, abs=1e-6)
    assert m["fg_voxels"].tolist()[:8] == [5, 5, 5, 5, 5, 5, 1, 5]


def test_scans_table(store):
    s = store.scans
    assert list(s.columns) == list(SCANS_COLUMNS)
    assert s["seriesuid"].tolist() == list(UIDS) and s["status"].tolist() == ["ok", "ok"]
    assert [list(v) for v in s["resampled_shape_zyx"]] == [[52, 42, 42], [56, 43, 43]]
    assert list(s["original_direction"].iloc[1]) == [-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, -1.0]
    assert s[["n_nodule", "n_random", "n_candidate", "first_index"]].to_numpy().tolist() == [[4, 2, 2, 0], [2, 1, 1, 8]]


@pytest.mark.parametrize("key", sorted(PATCHES))
def test_patches_read_the_same_bytes_by_both_readers(store, key):
    scale, row = key
    image, mask = store.read_stored(scale, row)
    assert (_sha(image), _sha(mask)) == PATCHES[key]
    group = zarr.open_group(str(STORE), mode="r")
    np.testing.assert_array_equal(group[f"patches/{scale}/image"][row], image)
    np.testing.assert_array_equal(group[f"patches/{scale}/mask"][row], mask)


def test_decoded_intensities_and_volumes(store):
    image, _ = store.read_patch(24, 0)
    assert image.dtype == np.float32 and float(image[12, 12, 12]) == pytest.approx(191 / 255)
    for uid, (shape, lung_voxels, digest) in VOLUMES.items():
        vol = store.read_volume(uid)
        assert vol.image.shape == shape and int(vol.lungs.sum()) == lung_voxels and _sha(vol.image) == digest


def test_verify_finds_it_intact():
    report = verify(str(STORE), deep=True)
    assert report.ok, report.format()
    assert report.rows_checked == 24 and report.patches_read == 24


def test_info_reports_the_stores_own_version(store):
    from luna_prep.report.summary import store_summary

    assert "format: luna-patches v1," in store_summary(store)


def test_plain_zarr_sees_the_volumes_as_documented(store):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # parquet tables beside the arrays are not zarr nodes
        group = zarr.open_group(str(STORE), mode="r", use_consolidated=False)
        uids = sorted(group["volumes"].keys())
        assert uids == sorted(store.scans["seriesuid"])
        volume = store.read_volume(uids[0])
        image = group[f"volumes/{uids[0]}/image"]
        assert image.shape == volume.image.shape and list(image.attrs["origin_xyz"]) == list(volume.origin_xyz)
