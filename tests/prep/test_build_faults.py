"""A build under faults: a second build of the same store, write errors, odd scans and stray annotations."""

from __future__ import annotations

import errno
import shutil
from dataclasses import replace

import numpy as np
import pytest
import SimpleITK as sitk

import luna_prep.build as build_module
from luna_prep.build import BuildConfig, BuildError, build_lock, run_build
from luna_prep.format.reader import PatchStore
from luna_prep.luna16.reading import intensity_warnings
from luna_prep.luna16.tables import find_scans, read_annotations, read_candidates
from luna_prep.pipeline.plan import plan_build
from luna_prep.pipeline.sampling import SamplingConfig
from luna_prep.report.summary import build_summary
from luna_prep.synthetic.scans import synthesize


def config(root, out) -> BuildConfig:
    return BuildConfig(data_root=str(root), out=str(out), subsets=(0, 1),
                       sampling=SamplingConfig(scales=(24, 32), jitter_copies=1))


@pytest.fixture()
def synth2(tmp_path):
    data = synthesize(tmp_path / "luna16", n_scans=2, seed=5)
    return data.root


def test_a_second_build_of_the_same_store_is_refused(synth2, tmp_path):
    out = tmp_path / "p.zarr"
    with build_lock(out):
        with pytest.raises(BuildError, match=r"p\.zarr: another luna-prep build is writing this store \(pid \d+\)"):
            run_build(config(synth2, out), workers=0, progress=False)
    assert run_build(config(synth2, out), workers=0, progress=False).ok  # the lock went with its holder
    assert not (tmp_path / "p.zarr.lock").exists()


def test_a_write_error_is_named_and_a_rerun_resumes(synth2, tmp_path, monkeypatch):
    out = tmp_path / "p.zarr"
    real = build_module.write_table

    def disk_full(df, path):
        if str(path).endswith("manifest.parquet"):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(df, path)

    monkeypatch.setattr(build_module, "write_table", disk_full)
    with pytest.raises(BuildError, match=r"p\.zarr: the build stopped \(No space left on device: .*manifest\.parquet\)"
                                         r"\. Finished scans are kept.*run the same command again to resume"):
        run_build(config(synth2, out), workers=0, progress=False)
    assert not list(out.glob(".*tmp*")), "no temporary file is left in the store"
    monkeypatch.setattr(build_module, "write_table", real)
    report = run_build(config(synth2, out), workers=0, progress=False)
    assert report.ok and report.skipped == 2  # both scans had finished before the failed write
    assert len(PatchStore(out).manifest) > 0


def test_annotations_without_a_scan_are_counted(synth2, tmp_path):
    ann = synth2 / "annotations.csv"
    ann.write_text(ann.read_text() + "1.2.3.404,1,2,3,6\n1.2.3.405,1,2,3,7\n")
    report = run_build(config(synth2, tmp_path / "p.zarr"), workers=0, progress=False)
    assert report.ok and report.unmatched_annotations == ["1.2.3.404", "1.2.3.405"]
    assert "annotations of 2 seriesuids with no scan under the data root" in build_summary(report)


def test_a_header_that_lies_about_the_element_type_builds_with_a_warning(synth2, tmp_path):
    mhd = next((synth2 / "subset0").glob("*.mhd"))
    mhd.write_text(mhd.read_text().replace("MET_SHORT", "MET_USHORT"))
    report = run_build(config(synth2, tmp_path / "p.zarr"), workers=0, progress=False)
    assert report.ok and len(report.warnings) == 2
    assert all(str(mhd) in w for w in report.warnings)
    assert "are air" in report.warnings[0] and "will be clipped" in report.warnings[1]
    assert f"WARNING {mhd}" in build_summary(report)
    shutil.rmtree(tmp_path / "p.zarr")


def test_intensity_warnings_stay_quiet_on_plausible_ct():
    rng = np.random.default_rng(0)
    ct = rng.normal(-100, 300, size=(20, 64, 64)).astype(np.int16)
    ct[:, :8] = -1000  # air around the body
    assert intensity_warnings(sitk.GetImageFromArray(ct), "scan.mhd", (-1000, 400)) == []
    no_air = sitk.GetImageFromArray(np.full((4, 16, 16), 40, np.int16))
    assert len(intensity_warnings(no_air, "scan.mhd", (-1000, 400))) == 1


def test_a_killed_table_writes_temporary_is_neither_kept_nor_listed(synth2, tmp_path):
    from luna_prep.files import is_temporary
    from luna_prep.sharing.cards import store_files

    out = tmp_path / "p.zarr"
    assert run_build(config(synth2, out), workers=0, progress=False).ok
    stale = out / ".manifest.parquet.tmp4242"  # what a write killed between open and rename leaves
    stale.write_bytes(b"partial")
    assert is_temporary(stale) and not is_temporary(out / "manifest.parquet")
    assert ".manifest.parquet.tmp4242" not in store_files(out)
    assert run_build(config(synth2, out), workers=0, progress=False).skipped == 2  # a re-run cleans it up
    assert not stale.exists()


def test_a_store_whose_creation_was_killed_is_created_again_not_resumed(synth2, tmp_path):
    """The root zarr.json (with the config hash) is written before the arrays: a build killed in between left a
    store that matched the hash, was resumed as sound and failed verification. Only a store whose creation ended
    (``_build/done/`` exists) is resumed."""
    from luna_prep.format.spec import BUILD_DIR
    from luna_prep.sharing.verify import verify

    out = tmp_path / "p.zarr"
    assert run_build(config(synth2, out), workers=0, progress=False).ok
    for path in (out / BUILD_DIR, out / "patches" / "32"):  # as a kill between the root and the arrays leaves it
        shutil.rmtree(path)
    for name in ("manifest.parquet", "scans.parquet"):
        (out / name).unlink()
    report = run_build(config(synth2, out), workers=0, progress=False)
    assert report.ok and report.skipped == 0  # built again: nothing in it had finished
    assert verify(str(out)).ok
    # a finished store without build records (a copy, an unpacked zip) is never taken for a killed creation
    shutil.rmtree(out / BUILD_DIR)
    with pytest.raises(BuildError, match=r"p\.zarr: a finished luna-patches store without its build records"):
        run_build(config(synth2, out), workers=0, progress=False)
    assert verify(str(out)).ok
    assert run_build(config(synth2, out), workers=0, progress=False, overwrite=True).ok


def test_an_overwrite_killed_while_deleting_leaves_nothing_to_resume(synth2, tmp_path, monkeypatch):
    out = tmp_path / "p.zarr"
    assert run_build(config(synth2, out), workers=0, progress=False).ok
    real_rmtree = shutil.rmtree

    def killed(path, *args, **kwargs):  # the deletion stops after the first scale's arrays
        real_rmtree(next(p for p in (tmp_path / ".p.zarr.deleting" / "patches").iterdir() if p.is_dir()))
        raise KeyboardInterrupt

    monkeypatch.setattr(build_module.shutil, "rmtree", killed)
    with pytest.raises(KeyboardInterrupt):
        run_build(config(synth2, out), workers=0, progress=False, overwrite=True)
    monkeypatch.setattr(build_module.shutil, "rmtree", real_rmtree)
    assert not out.exists() and (tmp_path / ".p.zarr.deleting").is_dir()  # the old store was moved aside whole
    report = run_build(config(synth2, out), workers=0, progress=False)
    assert report.ok and report.skipped == 0 and not (tmp_path / ".p.zarr.deleting").exists()


def test_overwrite_replaces_only_a_store_and_out_may_not_hold_an_input(synth2, tmp_path):
    keep = tmp_path / "results"
    keep.mkdir()
    (keep / "notes.txt").write_text("mine")
    for overwrite in (False, True):
        with pytest.raises(BuildError, match=r"results: exists and is not a luna-patches store; --overwrite "
                                             r"replaces only a store"):
            run_build(config(synth2, keep), workers=0, progress=False, overwrite=overwrite)
    assert (keep / "notes.txt").read_text() == "mine"
    with pytest.raises(BuildError, match=rf"{tmp_path.name}: --out holds the input .*luna16; build into a folder"):
        run_build(config(synth2, tmp_path), workers=0, progress=False, overwrite=True)
    assert (synth2 / "annotations.csv").is_file()


def test_a_changed_setting_is_named_when_the_store_was_built_otherwise(synth2, tmp_path):
    out = tmp_path / "p.zarr"
    assert run_build(config(synth2, out), workers=0, progress=False).ok
    cfg = config(synth2, out)
    with pytest.raises(BuildError, match=r"changed: seed: 0 -> 1; subsets: \[0, 1\] -> \[0\]\)\. Build into another "
                                         r"--out, or re-run with --overwrite"):
        run_build(BuildConfig(**{**cfg.__dict__, "seed": 1, "subsets": (0,)}), workers=0, progress=False)
    (synth2 / "annotations.csv").write_text((synth2 / "annotations.csv").read_text() + "\n")
    (synth2 / "annotations.csv").write_text((synth2 / "annotations.csv").read_text().rstrip("\n") + "0\n")
    with pytest.raises(BuildError, match="changed: the same settings, but other inputs"):
        run_build(cfg, workers=0, progress=False)


def test_a_default_card_name_never_replaces_another_stores_card(synth2, tmp_path):
    manifests = tmp_path / "manifests"
    first, second = tmp_path / "a" / "patches.zarr", tmp_path / "b" / "patches.zarr"
    assert run_build(config(synth2, first), workers=0, progress=False, manifests_dir=manifests).ok
    with pytest.raises(BuildError, match=r"patches\.json: already the card of another store \(.*a/patches\.zarr\); "
                                         r"give this store's card another name with --name"):
        run_build(config(synth2, second), workers=0, progress=False, manifests_dir=manifests)
    assert not second.exists()  # refused before building
    assert run_build(config(synth2, second), workers=0, progress=False, manifests_dir=manifests,
                     card_name="patches-b").ok
    assert run_build(config(synth2, first), workers=0, progress=False, manifests_dir=manifests).ok  # its own card


def test_a_build_that_locks_a_lock_file_just_deleted_takes_the_new_one(tmp_path, monkeypatch):
    """The holder deletes ``<out>.lock`` as it ends; a build that had opened the file just before would lock a
    file no longer there, beside a third build locking the new one. It notices, and locks the file at the path."""
    import fcntl
    import os

    out = tmp_path / "p.zarr"
    lock = tmp_path / "p.zarr.lock"
    real_flock, calls = fcntl.flock, []

    def flock(f, op):
        calls.append(os.fstat(f.fileno()).st_ino)
        if len(calls) == 1:
            lock.unlink()  # the previous holder ends just as we lock
        real_flock(f, op)

    monkeypatch.setattr(fcntl, "flock", flock)
    with build_lock(out):
        assert len(calls) == 2 and os.stat(lock).st_ino == calls[1]
    assert not lock.exists()


def test_a_store_that_cannot_be_written_stops_the_build_naming_the_file(synth2, tmp_path, monkeypatch):
    """A full disk while writing shards failed each scan in turn, naming its input .mhd, and the build went on
    to write a manifest and a card; now it stops at the first, naming the store's file, and resumes."""
    import luna_prep.format.writer as writer_module

    out = tmp_path / "p.zarr"
    real = writer_module.write_bytes_atomic
    full = [True]

    def disk_full(path, parts):
        if full[0]:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, parts)

    monkeypatch.setattr(writer_module, "write_bytes_atomic", disk_full)
    with pytest.raises(BuildError) as err:
        run_build(config(synth2, out), workers=0, progress=False, manifests_dir=tmp_path / "manifests")
    assert str(err.value).startswith(f"{out}: the build stopped (No space left on device (writing scan ")
    assert str(err.value).endswith(f"): {out.resolve()}). Finished scans are kept: fix the cause (disk space, "
                                   "permissions) and run the same command again to resume")
    assert not (out / "manifest.parquet").exists() and not (tmp_path / "manifests").exists()
    full[0] = False
    report = run_build(config(synth2, out), workers=0, progress=False)
    assert report.ok and report.scans_ok == 2 and report.skipped == 0


def test_a_real_write_error_in_a_dask_worker_stops_the_build(synth2, tmp_path):
    """The same through the command line and a local cluster, with a real OS error: a file size limit
    (inherited by the workers; Python ignores SIGXFSZ, so a write past it fails with EFBIG)."""
    import resource
    import subprocess
    import sys

    out = tmp_path / "p.zarr"
    args = [sys.executable, "-m", "luna_prep.cli", "build", "--data-root", str(synth2), "--out", str(out),
            "--subsets", "0,1", "--scales", "24,32", "--jitter-copies", "1", "--workers", "1", "--quiet", "--no-card"]
    limit = lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (16384, 16384))  # noqa: E731
    res = subprocess.run(args, capture_output=True, text=True, preexec_fn=limit, timeout=300)
    assert res.returncode == 1, res.stdout + res.stderr
    assert f"Error: {out}: the build stopped (File too large (writing scan " in res.stderr, res.stderr
    assert "FAILED" not in res.stdout + res.stderr and not (out / "manifest.parquet").exists()
    res = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert PatchStore(out).manifest["seriesuid"].nunique() == 2


def test_junk_next_to_the_scans_and_no_candidates_build_with_warnings(synth2, tmp_path):
    """A macOS copy's ._<uid>.mhd was built as a scan and failed (exit 1 every run); without a candidates file
    every negative was random, silently."""
    mhd = next((synth2 / "subset0").glob("*.mhd"))
    junk = mhd.with_name(f"._{mhd.name}")
    junk.write_bytes(b"\x00\x05\x16\x07AppleDouble junk")
    (synth2 / "candidates.csv").rename(tmp_path / "candidates.csv")
    (synth2 / "candidates_V2.zip").write_bytes(b"")
    report = run_build(config(synth2, tmp_path / "p.zarr"), workers=0, progress=False)
    assert report.ok and report.scans_ok == 2
    assert report.warnings == [
        f"1 hidden .mhd files skipped (names starting with '.', such as macOS's ._<uid>.mhd; first: {junk})",
        f"no candidates file under {synth2}: negatives are random only (no hard negatives); candidates_V2.zip is "
        "not extracted: unzip it there"]
    assert set(PatchStore(tmp_path / "p.zarr").manifest["kind"]) == {"nodule", "random"}
    assert "WARNING no candidates file under" in build_summary(report)


def test_subsets_without_scans_are_named(synth2, tmp_path):
    """An empty subset folder was left out without a word; with only such subsets the error says where to look."""
    nested = synth2 / "subset1" / "subset1"
    nested.mkdir()
    for f in list((synth2 / "subset1").glob("*.*")):
        f.rename(nested / f.name)
    with pytest.raises(BuildError) as err:
        run_build(replace(config(synth2, tmp_path / "q.zarr"), subsets=(1,)), workers=0, progress=False)
    assert str(err.value) == (f"{synth2}: no .mhd scans in subsets [1]; {synth2 / 'subset1'}: no .mhd scans; "
                              "they are in subset1/subset1: move them up one folder")
    report = run_build(config(synth2, tmp_path / "p.zarr"), workers=0, progress=False)
    assert report.ok and report.scans_ok == 1
    assert report.warnings == [f"{synth2 / 'subset1'}: no .mhd scans; they are in subset1/subset1: move them up "
                               "one folder"]


def test_a_scan_too_small_for_its_negatives_keeps_its_other_patches(tmp_path):
    """At 1.5 mm a tiny scan is smaller than a 96-voxel patch: no random negative clear of its nodules fits. The
    scan failed whole; now its nodule and candidate patches are kept, the shortfall is a WARNING, and the store
    (the shortfall's rows left empty) verifies."""
    from luna_prep.sharing.verify import verify

    root = synthesize(tmp_path / "luna16", n_scans=1, seed=0, size="tiny", difficulty="easy").root
    cfg = BuildConfig(data_root=str(root), out=str(tmp_path / "p.zarr"), subsets=(0,), spacing_mm=1.5,
                      sampling=SamplingConfig(scales=(48, 96), jitter_copies=1))
    report = run_build(cfg, workers=0, progress=False)
    assert report.ok and report.scans_ok == 1
    store = PatchStore(tmp_path / "p.zarr")
    row = store.scans.iloc[0]
    shape = "x".join(map(str, row["resampled_shape_zyx"]))
    tables = read_annotations(root / "annotations.csv"), read_candidates(root / "candidates.csv")
    (plan,), _ = plan_build(find_scans(root, [0]), *tables, cfg.sampling, cfg.storage.shard_patches)
    planned = plan.n_samples - row["n_nodule"] - row["n_candidate"]  # candidates outside the scan become randoms
    placed = int(row["n_random"])
    assert placed < planned and row["n_nodule"] > 0
    assert report.warnings == [f"{row['source_path']}: placed only {placed} of {planned} random negatives (no other "
                               f"place in the {shape}-voxel scan keeps a 96-voxel patch clear of nodules); its other "
                               "patches are kept"]
    kinds = store.manifest[store.manifest["scale"] == 48]["kind"].value_counts().to_dict()
    assert kinds.get("random", 0) == placed and kinds["nodule"] == row["n_nodule"]
    assert verify(str(tmp_path / "p.zarr"), deep=True).ok
