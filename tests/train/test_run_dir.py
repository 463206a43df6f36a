"""A run directory is a model: absolute dataset records, the preprocessing spec, frozen post-processing,
and `predict` / `detect` from any working directory."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import yaml
from click.testing import CliRunner

from luna_prep.errors import InputError
from luna_prep.format.reader import PatchStore
from luna_prep.luna16.geometry import ScanGeometry
from luna_prep.synthetic.scans import synthesize
from luna_prep.synthetic.tiny_store import write_tiny_store
from luna_train.cli.main import main
from luna_train.inference.from_run import scan_postprocess
from luna_train.inference.postprocess import PostprocessConfig
from luna_train.run_dir import (
    PREPROCESSING_FILE,
    PreprocessingSpec,
    RunDir,
    preprocessing_changes,
    refuse_other_preprocessing,
    refuse_other_store_on_resume,
)


@pytest.fixture(scope="module")
def scan(tmp_path_factory):
    """A small raw scan (.mhd) with a flipped direction matrix: a 72 x 72 x 34 crop of a synthetic scan."""
    data = synthesize(tmp_path_factory.mktemp("raw") / "luna16", n_scans=2, seed=5)
    crop = sitk.RegionOfInterest(sitk.ReadImage(str(data.scans[1].path)), (72, 72, 34), (40, 60, 30))
    path = tmp_path_factory.mktemp("crop") / "crop.mhd"
    sitk.WriteImage(crop, str(path))
    return path


def test_the_run_records_its_dataset_absolutely_and_its_preprocessing(tiny_run):
    run_dir, store = tiny_run
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    summary = json.loads((run_dir / "summary.json").read_text())
    assert cfg["data"]["dataset"] == summary["dataset"] == str(Path(store).resolve())
    assert summary["run_dir"] == str(run_dir.resolve())
    spec = RunDir(run_dir).preprocessing()
    attrs = PatchStore(store).attrs
    assert spec == PreprocessingSpec(attrs.spacing_mm, attrs.hu_window, attrs.image_dtype, attrs.scales, 24, 16)
    assert spec.model_voxel == 1.5
    assert PreprocessingSpec.from_dict(json.loads(spec_text := json.dumps(spec.to_dict()))) == spec, spec_text


def test_an_older_run_without_its_spec_falls_back_to_its_store(tiny_run, tmp_path):
    run_dir, store = tiny_run
    old = tmp_path / "old"
    shutil.copytree(run_dir, old)
    (old / PREPROCESSING_FILE).unlink()
    assert RunDir(old).preprocessing() == RunDir(run_dir).preprocessing()
    cfg = yaml.safe_load((old / "config.yaml").read_text())
    cfg["data"]["dataset"] = str(tmp_path / "gone.zarr")
    (old / "config.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(InputError, match=rf"no {PREPROCESSING_FILE} .*gone.zarr.*--dataset"):
        RunDir(old).preprocessing()


def test_an_older_run_whose_store_moved_exports_with_dataset(tiny_run, tmp_path):
    run_dir, store = tiny_run
    old = tmp_path / "old"
    shutil.copytree(run_dir, old)
    (old / PREPROCESSING_FILE).unlink()
    cfg = yaml.safe_load((old / "config.yaml").read_text())
    cfg["data"]["dataset"] = str(tmp_path / "gone.zarr")
    (old / "config.yaml").write_text(yaml.safe_dump(cfg))
    res = CliRunner().invoke(main, ["export", str(old), "--format", "torchscript", "--out", str(tmp_path / "m.pt"),
                                    "--dataset", str(store)])
    assert res.exit_code == 0, res.output
    from luna_train.inference.export import load_torchscript

    spec = json.loads(load_torchscript(tmp_path / "m.pt")[1][PREPROCESSING_FILE])
    assert PreprocessingSpec.from_dict(spec) == RunDir(run_dir).preprocessing()


def test_an_ensemble_of_runs_trained_on_differently_prepared_scans_is_refused(tiny_run, tmp_path):
    """One preparation (the first run's) feeds every member: a member trained at another HU window would see
    wrongly scaled input."""
    from luna_train.inference.trained_model import load_ensemble

    run_dir, _ = tiny_run
    other = tmp_path / "other"
    shutil.copytree(run_dir, other)
    spec = json.loads((other / PREPROCESSING_FILE).read_text())
    assert len(load_ensemble([run_dir, other]).members) == 2
    spec["hu_window"] = [-1200.0, 600.0]
    (other / PREPROCESSING_FILE).write_text(json.dumps(spec))
    with pytest.raises(InputError, match=r"ensemble members prepare scans differently: .* at \(spacing mm, HU window, "
                                         r"image dtype\) \(1\.0, \(-1000\.0, 400\.0\), 'uint8'\), .*other at "
                                         r"\(1\.0, \(-1200\.0, 600\.0\)"):
        load_ensemble([run_dir, other])


def test_a_relative_dataset_of_an_older_run_is_found_above_the_run(tmp_path, monkeypatch):
    (tmp_path / "demo" / "patches.zarr").mkdir(parents=True)
    (tmp_path / "demo" / "run").mkdir()
    monkeypatch.chdir(tmp_path / "demo" / "run")
    assert RunDir(tmp_path / "demo" / "run").dataset("demo/patches.zarr") == str(tmp_path / "demo" / "patches.zarr")
    assert RunDir("x").dataset("s3://bucket/patches.zarr") == "s3://bucket/patches.zarr"


def test_tuned_postprocessing_is_rescaled_to_the_store_grid_and_overridable(tmp_path):
    run = RunDir(tmp_path)
    assert scan_postprocess(tmp_path, 1.5) == (PostprocessConfig(0.5, 3), "defaults")
    run.write_postprocess(PostprocessConfig(0.7, 10, 1, 0.8), {"model_voxel": 1.5})
    assert run.postprocess() == PostprocessConfig(0.7, 10, 1, 0.8)
    cfg, source = scan_postprocess(tmp_path, 1.5)
    assert cfg == PostprocessConfig(0.7, 34, 2, 0.8) and source.startswith("tuned")  # 10 * 1.5^3, 1 * 1.5
    cfg, source = scan_postprocess(tmp_path, 1.5, threshold=0.4, min_size=0)
    assert cfg == PostprocessConfig(0.4, 0, 2, 0.8) and "threshold=0.4" in source
    assert "WARNING" not in scan_postprocess(tmp_path, 1.5, checkpoint="last", tta=True)[1]  # nothing recorded


def test_postprocessing_tuned_for_another_model_is_used_with_a_warning(tmp_path):
    """evaluate --checkpoint last --postprocess replaced best.pt's tuning, and detect used it silently."""
    RunDir(tmp_path).write_postprocess(PostprocessConfig(0.7, 10), {"model_voxel": 1.0, "checkpoint": "best",
                                                                    "tta": False})
    assert scan_postprocess(tmp_path, 1.0, checkpoint="best") == (PostprocessConfig(0.7, 10),
                                                                  f"tuned ({tmp_path / 'postprocess.json'})")
    cfg, source = scan_postprocess(tmp_path, 1.0, checkpoint="last", tta=True)
    assert cfg == PostprocessConfig(0.7, 10)
    assert source.endswith("; WARNING: it was tuned for best.pt, this is last.pt; it was tuned without TTA, this runs "
                           f"with (tune for this model with `luna-train evaluate {tmp_path} --checkpoint last --tta "
                           "--postprocess`, or pass --threshold and --min-size)")
    _, source = scan_postprocess(tmp_path, 1.0, members=3)
    assert "WARNING: it was tuned for the run alone, this is an ensemble of 3 (pass --threshold and" in source


def test_evaluate_postprocess_freezes_it_into_the_run(tiny_run, tmp_path):
    run_dir, _ = tiny_run
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    res = CliRunner().invoke(main, ["evaluate", str(run), "--postprocess", "--json", str(tmp_path / "e.json")])
    assert res.exit_code == 0, res.output
    tuned = json.loads((tmp_path / "e.json").read_text())["postprocess"]
    frozen = json.loads((run / "postprocess.json").read_text())
    assert {k: frozen[k] for k in ("threshold", "min_size", "closing_radius", "hysteresis_high")} == \
        {k: tuned[k] for k in ("threshold", "min_size", "closing_radius", "hysteresis_high")}
    assert frozen["model_voxel"] == 1.5 and frozen["val_subsets"] == [8]
    # detect and predict now post-process with it (the tiny store has no volumes: detect stops there)
    res = CliRunner().invoke(main, ["detect", str(run), "--out", str(tmp_path / "s.csv")])
    assert f"post-processing: tuned ({run / 'postprocess.json'})" in res.output and res.exit_code == 2
    res = CliRunner().invoke(main, ["detect", str(run), "--min-size", "7", "--out", str(tmp_path / "s.csv")])
    assert "post-processing: tuned" in res.output and "overridden: min_size=7" in res.output


def test_predict_and_detect_from_another_directory_without_the_store(tiny_run, scan, tmp_path, monkeypatch):
    run_dir, store = tiny_run
    run = tmp_path / "moved" / "run"
    shutil.copytree(run_dir, run)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    res = CliRunner().invoke(main, ["predict", str(run), "--scan", str(scan), "--out", "pred.nii.gz",
                                    "--probabilities", "prob.nrrd", "--threshold", "0"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert "post-processing: defaults, overridden: threshold=0" in res.output
    assert Path("pred.csv").is_file() and not Path("pred.nii.csv").exists()
    mask, prob = sitk.ReadImage("pred.nii.gz"), sitk.ReadImage("prob.nrrd")
    raw = ScanGeometry.from_image(sitk.ReadImage(str(scan)))
    for img in (mask, prob):  # NIfTI keeps float32 geometry
        got = ScanGeometry.from_image(img)
        assert got.size == raw.size
        for field in ("origin", "spacing", "direction"):
            np.testing.assert_allclose(getattr(got, field), getattr(raw, field), atol=1e-4)
    # threshold 0 takes every voxel of the map, but the crop holds no lung: the mask is filtered as candidates are
    assert (sitk.GetArrayViewFromImage(prob) > 0).mean() > 0.5 and sitk.GetArrayViewFromImage(mask).max() == 0
    # detect needs the store of volumes: the run's absolute record finds it (none here: a clear error)
    res = CliRunner().invoke(main, ["detect", str(run), "--out", "sub.csv"])
    assert res.exit_code == 2 and "built without --volumes" in res.output and str(Path(store).resolve()) in res.output


def test_predict_refuses_file_names_it_cannot_write_before_predicting(tiny_run, scan, tmp_path):
    run_dir, _ = tiny_run
    for args, needle in ((["--out", str(tmp_path / "p.png")], "a mask file must end with one of .seg.nrrd, .nii.gz"),
                         (["--out", str(tmp_path / "p.nii.gz"), "--candidates", str(tmp_path / "c.txt")],
                          "a candidates file must end with one of .csv, .mrk.json"),
                         # it used to fail after predicting, with the mask written, in a SimpleITK traceback
                         (["--out", str(tmp_path / "p.nii.gz"), "--probabilities", str(tmp_path / "p.xyz")],
                          "a probability map must end with one of .nii.gz, .nii, .nrrd, .mhd, .mha")):
        res = CliRunner().invoke(main, ["predict", str(run_dir), "--scan", str(scan), *args])
        assert res.exit_code == 2 and needle in res.output and "Traceback" not in res.output, res.output
    assert not list(tmp_path.iterdir())


def test_an_ensemble_of_differently_sized_inputs_names_each_run():
    from types import SimpleNamespace

    from luna_train.inference.trained_model import Ensemble

    members = [SimpleNamespace(run_dir=Path("runs/a"), input_size=48, voxel_mm=1.0),
               SimpleNamespace(run_dir=Path("runs/b"), input_size=32, voxel_mm=1.5)]
    with pytest.raises(InputError) as err:
        Ensemble(members)
    assert str(err.value) == ("ensemble members disagree on (input size, voxel size): runs/a (48, 1.0), "
                              "runs/b (32, 1.5)")


def test_a_store_built_otherwise_than_the_model_is_named_field_by_field():
    model = PreprocessingSpec(1.0, (-1000.0, 400.0), "uint8", (32, 64), 64, 48)
    store = PreprocessingSpec(1.5, (-1200.0, 600.0), "uint8", (64,), 64, 48)
    refuse_other_preprocessing(model, "run/preprocessing.json", replace(model, scales=(64,)), "same.zarr")
    with pytest.raises(InputError) as err:
        refuse_other_preprocessing(model, "run/preprocessing.json", store, "other.zarr")
    assert str(err.value) == ("other.zarr: built with other preprocessing than the model's (run/preprocessing.json): "
                              "spacing_mm 1.0 -> 1.5; hu_window [-1000.0, 400.0] -> [-1200.0, 600.0]; use a store "
                              "built with the model's settings")
    assert preprocessing_changes(model, replace(model, image_dtype="float16")) == ["image_dtype uint8 -> float16"]


def test_evaluate_and_detect_refuse_a_store_built_otherwise(tiny_run, tmp_path):
    """A model fed scans at another spacing, window or dtype than it learned finds fewer nodules, silently."""
    run_dir, _ = tiny_run
    other = write_tiny_store(tmp_path / "f16.zarr", image_dtype="float16")
    for command in (["evaluate", str(run_dir)], ["detect", str(run_dir), "--out", str(tmp_path / "s.csv")]):
        res = CliRunner().invoke(main, [*command, "--dataset", str(other)])
        assert res.exit_code == 1 and "Traceback" not in res.output, res.output
        assert (f"{other}: built with other preprocessing than the model's ({run_dir / PREPROCESSING_FILE}): "
                "image_dtype uint8 -> float16;") in res.output
    assert not (tmp_path / "s.csv").exists()


def test_resuming_with_a_store_built_otherwise_is_refused(tiny_run, tmp_path):
    """What `luna-train run --resume --dataset OTHER` checks: the run's preprocessing.json, or (a run stopped
    before writing it) the store the checkpoint trained on; a moved store cannot be compared."""
    run_dir, store = tiny_run
    same = write_tiny_store(tmp_path / "same.zarr")
    other = write_tiny_store(tmp_path / "f16.zarr", image_dtype="float16")
    refuse_other_store_on_resume(run_dir, str(store), str(same))
    with pytest.raises(InputError, match=rf"f16.zarr: .* \({run_dir / PREPROCESSING_FILE}\): image_dtype uint8 -> "):
        refuse_other_store_on_resume(run_dir, str(store), str(other))
    stopped = tmp_path / "stopped"
    stopped.mkdir()
    with pytest.raises(InputError, match=rf"f16.zarr: .* \({same}\): image_dtype uint8 -> float16; "):
        refuse_other_store_on_resume(stopped, str(same), str(other))
    refuse_other_store_on_resume(stopped, str(tmp_path / "moved.zarr"), str(other))


def test_predict_and_export_refuse_a_dataset_built_otherwise(tiny_run, tmp_path):
    """`predict --dataset` replaced the run's preprocessing.json by the store's spec without comparing them."""
    run_dir, store = tiny_run
    other = write_tiny_store(tmp_path / "f16.zarr", image_dtype="float16")
    assert RunDir(run_dir).preprocessing(str(store)) == RunDir(run_dir).preprocessing()
    with pytest.raises(InputError, match=r"f16.zarr: built with other preprocessing .*image_dtype uint8 -> float16"):
        RunDir(run_dir).preprocessing(str(other))

