"""A build under faults: a second build of the same store, write errors, odd scans and stray annotations."""

from __future__ import annotations

import errno
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

import luna_prep.build as build_module
from luna_prep.build import BuildConfig, BuildError, build_lock, run_build
from luna_prep.format.reader import PatchStore
from luna_prep.luna16.reading import intensity_warnings
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
