"""luna-prep build on synthetic scans: geometry to the voxel, determinism, resume and failures."""

from __future__ import annotations

import hashlib
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from luna_prep.build import BuildConfig, BuildError, run_build
from luna_prep.format.reader import PatchStore
from luna_prep.format.spec import BUILD_DIR, MANIFEST_COLUMNS, MANIFEST_FILE, conform
from luna_prep.pipeline.sampling import SamplingConfig
from luna_prep.synthetic.scans import synthesize

SCALES = (32, 48)


def small_config(data_root, out, **kw) -> BuildConfig:
    kw.setdefault("subsets", (0, 1, 2))
    return BuildConfig(data_root=str(data_root), out=str(out), sampling=SamplingConfig(scales=SCALES, jitter_copies=2),
                       **kw)


@pytest.fixture(scope="module")
def synth3(tmp_path_factory):
    """Three scans: subset0 plain, subset1 with a flipped direction matrix, subset2 stored as .zraw."""
    return synthesize(tmp_path_factory.mktemp("synth") / "luna16", n_scans=3, seed=3)


@pytest.fixture(scope="module")
def store(synth3, tmp_path_factory):
    out = tmp_path_factory.mktemp("store") / "patches.zarr"
    report = run_build(small_config(synth3.root, out), workers=0, progress=False)
    assert report.ok and report.scans_ok == 3
    return PatchStore(out)


def read_all(store: PatchStore):
    return {s: (np.asarray(store.image_array(s)[:]), np.asarray(store.mask_array(s)[:])) for s in store.attrs.scales}


def sorted_manifest(store: PatchStore) -> pd.DataFrame:
    return store.manifest.sort_values(["sample_id", "scale"], ignore_index=True)


def test_inputs_cover_the_hard_geometry(synth3):
    assert not synth3.scans[1].geometry.is_identity_direction
    assert synth3.scans[2].path.with_suffix(".zraw").exists()
    spacing = synth3.scans[0].geometry.spacing
    assert spacing[0] != spacing[2]  # anisotropic


def test_manifest_follows_the_format(store):
    m = store.manifest
    assert list(m.columns) == list(MANIFEST_COLUMNS)
    assert not m.duplicated(["sample_id", "scale"]).any()
    assert set(m["kind"]) == {"nodule", "random", "candidate"}
    assert (m["index"] < store.attrs.capacity).all()
    # every sample has one patch per scale, at the same row
    per_sample = m.groupby("sample_id").agg(n=("scale", "size"), rows=("index", "nunique"))
    assert (per_sample["n"] == len(SCALES)).all() and (per_sample["rows"] == 1).all()
    # a scan's rows start on a shard boundary, so parallel writers never share a shard
    firsts = m.groupby("seriesuid")["index"].min()
    assert (firsts % store.attrs.shard_patches == 0).all()
    assert store.attrs.image_dtype == "uint8"


def test_manifest_is_every_finished_scans_rows_with_the_build_phase_times(synth3, tmp_path):
    """manifest.parquet (assembled with Arrow) holds exactly the rows each scan task wrote, in order."""
    out = tmp_path / "p.zarr"
    report = run_build(small_config(synth3.root, out, subsets=(0, 2)), workers=0, progress=False,
                       manifests_dir=tmp_path / "cards")
    assert list(report.phases) == ["planning", "scans", "manifest", "card"]
    assert all(v >= 0 for v in report.phases.values()) and sum(report.phases.values()) <= report.seconds
    parts = [pd.read_parquet(p) for p in sorted((out / BUILD_DIR / "done").glob("*.parquet"))]
    expected = conform(pd.concat(parts, ignore_index=True), MANIFEST_COLUMNS, "manifest")
    expected = expected.sort_values(["sample_id", "scale"], ignore_index=True)
    pd.testing.assert_frame_equal(pd.read_parquet(out / MANIFEST_FILE), expected)
    assert len(parts) == 2 and set(expected["subset"]) == {0, 2}


def test_card_takes_the_scan_tasks_digests_and_they_are_the_files_bytes(synth3, tmp_path):
    """Each scan task records sha256 and size of the shards and volume it wrote; the card built from them
    equals the card of a full re-read."""
    import json

    from luna_prep.sharing.cards import file_checksums

    out = tmp_path / "v.zarr"
    report = run_build(small_config(synth3.root, out, subsets=(0, 1), volumes=True), workers=0, progress=False,
                       manifests_dir=tmp_path / "cards")
    records = [json.loads(p.read_text()) for p in sorted((out / BUILD_DIR / "done").glob("*.json"))]
    owned = {rel: d for r in records for rel, d in r["files"].items()}
    assert {rel.split("/")[0] for rel in owned} == {"patches", "volumes"}
    for r in records:  # a scan's own volume folder and shards only, never a shared metadata file
        assert all(rel.startswith(f"volumes/{r['seriesuid']}/") or "/c/" in rel for rel in r["files"])
    for rel, (digest, size) in owned.items():
        data = (out / rel).read_bytes()
        assert size == len(data) and digest == hashlib.sha256(data).hexdigest()
    card = json.loads(report.card.read_text())
    assert card["files"] == file_checksums(out)
    assert set(owned) < {f["path"] for f in card["files"]}


def test_positive_patches_sit_where_world_coordinates_say(store, synth3):
    """Mask and bright voxels of each nodule land within one voxel of its world centre."""
    arrays = read_all(store)
    sp = store.attrs.spacing_mm
    truth = {(s.seriesuid, i): n for s in synth3.scans for i, n in enumerate(s.nodules)}
    ann = pd.read_csv(synth3.annotations_csv)
    m = store.manifest
    pos = m[m["kind"] == "nodule"]
    assert len(pos) > 0 and set(pos["seriesuid"]) == {s.seriesuid for s in synth3.scans}
    checked_flipped = 0
    for r in pos.itertuples():
        images, masks = arrays[r.scale]
        img, mask = images[r.index], masks[r.index]
        nodule_world = ann.loc[r.annotation_index, ["coordX", "coordY", "coordZ"]].to_numpy(float)
        centre_world = np.array([r.center_x, r.center_y, r.center_z])
        # patch voxel (z, y, x) of the nodule centre: identity orientation, voxel [s//2]^3 is centre_world
        rel_zyx = ((nodule_world - centre_world) / sp)[::-1] + r.scale // 2
        k = tuple(np.rint(rel_zyx).astype(int))
        assert mask[k] == 1, "nodule centre voxel is not in the mask"
        assert img[k] > 0.55 * 255, "nodule centre voxel is not bright"  # ~+30 HU -> 0.73
        # centroid of the mask component holding the centre, in world mm
        from scipy import ndimage

        labels, _ = ndimage.label(mask)
        comp = np.argwhere(labels == labels[k])
        d = ann.loc[r.annotation_index, "diameter_mm"]
        r_vox = d / 2 / sp
        fully_inside = np.all(rel_zyx - r_vox > 0) and np.all(rel_zyx + r_vox < r.scale - 1)
        if fully_inside:
            np.testing.assert_allclose(comp.mean(axis=0), rel_zyx, atol=1.0)
            bright = np.argwhere((img > 0.55 * 255) & (labels == labels[k]))
            np.testing.assert_allclose(bright.mean(axis=0), rel_zyx, atol=1.0)
            expected_volume = 4 / 3 * np.pi * r_vox ** 3
            assert abs(len(comp) - expected_volume) / expected_volume < 0.35 + 3 / max(r_vox, 1) ** 2
        if r.seriesuid == synth3.scans[1].seriesuid:
            checked_flipped += 1
    assert checked_flipped > 0
    # the centred sample of each nodule is centred to within half a voxel per axis
    centred = pos.drop_duplicates("annotation_index")
    for r in centred.itertuples():
        nodule_world = ann.loc[r.annotation_index, ["coordX", "coordY", "coordZ"]].to_numpy(float)
        assert np.all(np.abs(nodule_world - [r.center_x, r.center_y, r.center_z]) <= 0.5 * sp + 1e-6)
    assert len(truth) == len(ann)


def test_negatives_hold_no_nodule_and_random_ones_lie_in_the_lungs(store):
    arrays = read_all(store)
    m = store.manifest
    rand = m[m["kind"] == "random"]
    assert len(rand) > 0 and (rand["fg_voxels"] == 0).all()
    for r in rand.itertuples():
        assert arrays[r.scale][1][r.index].sum() == 0
    centre_values = [arrays[r.scale][0][r.index][(r.scale // 2,) * 3]
                     for r in rand[rand["scale"] == SCALES[0]].itertuples()]
    assert np.median(centre_values) < 0.3 * 255  # lung parenchyma (-850 HU -> 0.11), not soft tissue
    # fg_voxels agrees with the stored masks for every patch
    fg = [int(arrays[r.scale][1][r.index].sum()) for r in m.itertuples()]
    assert fg == m["fg_voxels"].tolist()


def test_scans_table_records_geometry(store, synth3):
    scans = store.scans.set_index("seriesuid")
    for s in synth3.scans:
        row = scans.loc[s.seriesuid]
        assert row["status"] == "ok"
        np.testing.assert_allclose(row["original_direction"], s.geometry.direction)
        np.testing.assert_allclose(row["original_spacing_xyz"], s.geometry.spacing)
        assert list(row["original_size_xyz"]) == list(s.geometry.size)


def test_same_output_whatever_the_number_of_workers(synth3, store, tmp_path):
    out = tmp_path / "two.zarr"
    report = run_build(small_config(synth3.root, out), workers=2, progress=False)
    assert report.ok
    other = PatchStore(out)
    pd.testing.assert_frame_equal(sorted_manifest(other), sorted_manifest(store))
    a, b = read_all(store), read_all(other)
    for s in SCALES:
        assert np.array_equal(a[s][0], b[s][0]) and np.array_equal(a[s][1], b[s][1])


def test_rerun_with_other_config_refuses_unless_overwrite(synth3, store, tmp_path):
    out = tmp_path / "copy.zarr"
    shutil.copytree(store.root, out)
    with pytest.raises(BuildError, match="different configuration"):
        run_build(small_config(synth3.root, out, seed=1), workers=0, progress=False)
    report = run_build(small_config(synth3.root, out, seed=1), workers=0, overwrite=True, progress=False)
    assert report.ok and report.skipped == 0


def test_killed_build_resumes_to_identical_output(synth3, store, tmp_path):
    out = tmp_path / "killed.zarr"
    cmd = [sys.executable, "-m", "luna_prep.cli", "build", "--data-root", str(synth3.root), "--subsets", "0-2",
           "--out", str(out), "--scales", ",".join(map(str, SCALES)), "--jitter-copies", "2", "--workers", "0",
           "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    done = out / BUILD_DIR / "done"
    deadline = time.time() + 120
    while time.time() < deadline and not (done.exists() and any(done.glob("*.json"))):
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)  # at once: the next scan is being written (3 scans take well under a second)
    proc.wait()
    n_done = len(list(done.glob("*.json")))
    assert 1 <= n_done < 3, "the kill should land mid-build"
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"({n_done} kept from an earlier run)" in result.stdout
    resumed = PatchStore(out)
    pd.testing.assert_frame_equal(sorted_manifest(resumed), sorted_manifest(store))
    a, b = read_all(store), read_all(resumed)
    for s in SCALES:
        assert np.array_equal(a[s][0], b[s][0]) and np.array_equal(a[s][1], b[s][1])


def test_bad_inputs_are_reported_and_the_rest_is_built(synth3, tmp_path):
    root = tmp_path / "luna16"
    shutil.copytree(synth3.root, root)
    s0, s1, s2 = synth3.scans
    raw0 = root / "subset0" / f"{s0.seriesuid}.raw"
    raw0.write_bytes(raw0.read_bytes()[:1000])  # truncated
    # an annotation outside scan 1's volume
    ann = pd.read_csv(root / "annotations.csv")
    ann.loc[len(ann)] = [s1.seriesuid, 5000.0, 5000.0, 5000.0, 6.0]
    ann.to_csv(root / "annotations.csv", index=False)
    out = tmp_path / "bad.zarr"
    cmd = [sys.executable, "-m", "luna_prep.cli", "build", "--data-root", str(root), "--subsets", "0-2",
           "--out", str(out), "--scales", ",".join(map(str, SCALES)), "--jitter-copies", "2", "--workers", "0",
           "--quiet"]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 1
    assert "1 ok, 2 failed" in result.stdout
    assert f"{s0.seriesuid}.raw is 1,000 bytes, header says" in result.stdout
    assert "lies outside the volume" in result.stdout and s1.seriesuid in result.stdout
    built = PatchStore(out)
    scans = built.scans.set_index("seriesuid")
    assert scans.loc[s2.seriesuid, "status"] == "ok"
    assert scans.loc[s0.seriesuid, "status"] == "failed" and "header says" in scans.loc[s0.seriesuid, "error"]
    assert set(built.manifest["seriesuid"]) == {s2.seriesuid}
    # a missing data file is named too; fixing the truncated file lets a re-run build only what is missing
    shutil.copy(synth3.root / "subset0" / f"{s0.seriesuid}.raw", raw0)
    (root / "subset2" / f"{s2.seriesuid}.zraw").unlink()
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 1
    assert "2 ok, 1 failed (1 kept from an earlier run)" in result.stdout
    assert "lies outside the volume" in result.stdout


def test_missing_data_file_is_named(synth3, tmp_path):
    root = tmp_path / "luna16"
    shutil.copytree(synth3.root, root)
    s0 = synth3.scans[0]
    (root / "subset0" / f"{s0.seriesuid}.raw").unlink()
    report = run_build(small_config(root, tmp_path / "m.zarr", subsets=(0,)), workers=0, progress=False)
    assert report.scans_failed == 1
    assert f"data file {s0.seriesuid}.raw is missing" in report.failures[0][1]


def test_patches_are_padded_with_air_whatever_the_hu_window(tmp_path):
    """Beyond the scan's edge a patch holds air (-1000 HU), as the resampler fills: not the window's low end,
    which with a -1200 HU window would be a band darker than any air in the scan."""
    data = synthesize(tmp_path / "luna16", n_scans=1, seed=2, size="tiny")  # ~90 mm across: 96-voxel patches pad
    out = tmp_path / "p.zarr"
    cfg = BuildConfig(data_root=str(data.root), out=str(out), subsets=(0,), hu_window=(-1200.0, 600.0),
                      sampling=SamplingConfig(scales=(32, 96), jitter_copies=0))
    assert run_build(cfg, workers=0, progress=False).ok
    store = PatchStore(out)
    scan = store.scans.iloc[0]
    shape, origin = np.asarray(scan["resampled_shape_zyx"]), np.asarray(scan["resampled_origin_xyz"], float)
    images = np.asarray(store.image_array(96)[:])
    air = round(255 * (-1000 + 1200) / 1800)  # 28
    padded_voxels = 0
    for r in store.manifest[store.manifest["scale"] == 96].itertuples():
        centre = np.rint((np.array([r.center_x, r.center_y, r.center_z]) - origin)[::-1] / store.attrs.spacing_mm)
        inside = np.ones((96, 96, 96), bool)
        for axis in range(3):
            pos = centre[axis] - 48 + np.arange(96)
            keep = (pos >= 0) & (pos < shape[axis])
            inside &= keep.reshape([-1 if a == axis else 1 for a in range(3)])
        beyond = images[r.index][~inside]
        padded_voxels += beyond.size
        assert np.all(beyond == air), np.unique(beyond)
    assert padded_voxels > 0
