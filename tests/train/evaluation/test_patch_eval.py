"""``luna-train evaluate`` (patch metrics, TTA, ensembles, post-processing tuned on val) and ``luna-train froc``."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from luna_train.cli.main import main
from luna_train.config import load_config
from luna_train.evaluation.patch_eval import eval_rows, evaluate_run, patch_metrics
from luna_train.inference.postprocess import PostprocessConfig
from luna_train.training.run import run_training

from conftest import write_tiny_store
from paths import DATA

TINY = [
    "model.channels=[4, 8]", "model.strides=[2]", "model.num_res_units=1", "data.batch_size=4",
    "data.num_workers=0", "data.train_size=16", "data.eval_scale=16", "sampler.scale_weights={16: 1, 24: 1}",
    "sampler.samples_per_epoch=16", "train.epochs=2", "optim.warmup_epochs=0.5", "logging.progress=false",
    "logging.plots=false", "logging.tensorboard=false",
]
METRICS = ("n_patches", "n_foreground", "dice", "pooled_dice", "precision", "recall")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A tiny trained run (train 0-7, val 8, test 9) on a tiny store, shared by the tests of this module."""
    root = tmp_path_factory.mktemp("evaluate")
    store = write_tiny_store(root / "tiny.zarr")
    cfg = load_config(None, TINY + [f"data.dataset={store}"])
    summary = run_training(cfg, root / "run")
    return root / "run", summary


def test_patch_metrics_by_hand():
    t = np.zeros((4, 4, 4), bool)
    t[0, 0, :2] = True  # 2 voxels
    p = np.zeros((4, 4, 4), np.float32)
    p[0, 0, 0] = 0.9  # TP
    p[3, 3, 3] = 0.6  # FP
    empty_t, empty_p = np.zeros_like(t), np.zeros_like(p)
    empty_p[1, 1, 1] = 0.5  # at 0.5: foreground, the raw mask is prob >= threshold (binarize), as in training
    m = patch_metrics([p, empty_p], [t, empty_t], 0.5)
    assert m["n_patches"] == 2 and m["n_foreground"] == 1
    assert m["dice"] == pytest.approx(2 * 1 / (2 + 2))  # foreground patches only
    assert (m["tp"], m["fp"], m["fn"]) == (1, 2, 1)
    assert m["pooled_dice"] == pytest.approx(2 / 5) and m["precision"] == pytest.approx(1 / 3) and m["recall"] == 0.5
    below = empty_p.copy()
    below[1, 1, 1] = np.nextafter(np.float32(0.5), np.float32(0))  # just below the threshold: background
    assert patch_metrics([p, below], [t, empty_t], 0.5)["fp"] == 1
    # a PostprocessConfig thresholds with >= and drops small components
    pp = patch_metrics([p, empty_p], [t, empty_t], PostprocessConfig(threshold=0.5, min_size=2))
    assert (pp["tp"], pp["fp"], pp["fn"]) == (0, 0, 2) and pp["dice"] == 0.0 and pp["precision"] == 1.0


def test_eval_rows_are_the_runs_test_rows(tiny_run):
    run_dir, summary = tiny_run
    cfg = load_config(run_dir / "config.yaml")
    rows = eval_rows(cfg, [9])
    assert len(rows) == summary["n_test"] == 8
    assert set(rows["scale"]) == {16} and rows["sample_id"].is_unique and set(rows["subset"]) == {9}


def test_evaluate_matches_training_summary(tiny_run):
    run_dir, summary = tiny_run
    res = evaluate_run(run_dir)
    assert res["subsets"] == [9] and res["tta"] is False and res["ensemble"] == [str(run_dir)]
    assert res["n_patches"] == summary["n_test"] and res["n_foreground"] == summary["n_test_foreground"] == 4
    assert res["dice"] == pytest.approx(summary["test_dice"], rel=1e-12, abs=1e-12)
    assert res["pooled_dice"] == pytest.approx(summary["test_pooled_dice"], rel=1e-12, abs=1e-12)
    for k in ("precision", "recall"):
        assert 0.0 <= res[k] <= 1.0
    tp, fp, fn = res["tp"], res["fp"], res["fn"]
    assert res["precision"] == pytest.approx(tp / (tp + fp) if tp + fp else 1.0)
    assert res["recall"] == pytest.approx(tp / (tp + fn))
    # the validation subset gives the summary's val numbers the same way
    val = evaluate_run(run_dir, subsets=[8])
    assert val["dice"] == pytest.approx(summary["val_dice"], rel=1e-12, abs=1e-12)


def test_tta_and_self_ensemble(tiny_run):
    run_dir, _ = tiny_run
    single = evaluate_run(run_dir)
    tta = evaluate_run(run_dir, tta=True)
    assert tta["tta"] is True and tta["tta_transforms"] == 16 and tta["n_patches"] == single["n_patches"]
    for k in ("dice", "pooled_dice", "precision", "recall"):
        assert 0.0 <= tta[k] <= 1.0
    pair = evaluate_run(run_dir, ensemble=[run_dir])
    assert pair["ensemble"] == [str(run_dir), str(run_dir)]
    for k in (*METRICS, "tp", "fp", "fn"):
        assert pair[k] == single[k], k  # the mean of two identical models is the model, exactly


def test_postprocess_tuned_on_val_and_frozen(tiny_run):
    run_dir, _ = tiny_run
    grid = {"threshold": [0.4, 0.5, 0.6], "min_size": [0, 10]}
    res = evaluate_run(run_dir, postprocess_tune=True, grid=grid)
    pp = res["postprocess"]
    assert pp["val_subsets"] == [8] and pp["n_val_patches"] == 8
    assert pp["threshold"] in grid["threshold"] and pp["min_size"] in grid["min_size"]
    assert pp["closing_radius"] == 0 and pp["hysteresis_high"] is None
    # frozen config applied to the test patches: the same as scoring them with it directly
    from luna_train.evaluation.patch_eval import eval_dataset, predict_patches
    from luna_train.inference.trained_model import load_model_like

    model = load_model_like(run_dir)
    probs, labels = predict_patches(model, eval_dataset(model.config, [9]))
    cfg = PostprocessConfig(**{k: pp[k] for k in ("threshold", "min_size", "closing_radius", "hysteresis_high")})
    direct = patch_metrics(probs, labels, cfg)
    for k in (*METRICS, "tp", "fp", "fn"):
        assert res["postprocessed"][k] == direct[k], k
    assert res["dice"] == patch_metrics(probs, labels, 0.5)["dice"]  # raw metrics reported too
    with pytest.raises(ValueError, match="validation"):
        evaluate_run(run_dir, subsets=[8, 9], postprocess_tune=True, grid=grid)


def test_cli_evaluate_writes_json(tiny_run, tmp_path):
    run_dir, summary = tiny_run
    out = tmp_path / "eval.json"
    res = CliRunner().invoke(main, ["evaluate", str(run_dir), "--subsets", "9", "--postprocess", "--json", str(out),
                                    "--batch-size", "3"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert "post-processed" in res.output and "pooled_dice" in res.output
    data = json.loads(out.read_text())
    assert {"subsets", "n_patches", "n_foreground", "dice", "pooled_dice", "precision", "recall", "tta", "ensemble",
            "postprocess", "postprocessed"} <= set(data)
    assert set(METRICS) <= set(data["postprocessed"])
    assert {"threshold", "min_size", "closing_radius", "hysteresis_high"} <= set(data["postprocess"])
    assert data["subsets"] == [9] and data["n_patches"] == 8
    assert data["dice"] == pytest.approx(summary["test_dice"], rel=1e-9)  # batch size does not change results
    bad = CliRunner().invoke(main, ["evaluate", str(tmp_path)])
    assert bad.exit_code != 0 and "checkpoint" in bad.output


def test_cli_froc_perfect_submission(tmp_path):
    ann = pd.read_csv(DATA / "annotations.csv")
    listed = set((DATA / "seriesuids.csv").read_text().split())
    sub = ann[["seriesuid", "coordX", "coordY", "coordZ"]].assign(probability=1.0)
    sub.to_csv(tmp_path / "sub.csv", index=False)
    out, png = tmp_path / "froc.json", tmp_path / "froc.png"
    res = CliRunner().invoke(main, ["froc", str(tmp_path / "sub.csv"), "--annotations", str(DATA / "annotations.csv"),
                                    "--excluded", str(DATA / "annotations_excluded.csv"),
                                    "--seriesuids", str(DATA / "seriesuids.csv"), "--json", str(out),
                                    "--plot", str(png), "--bootstrap", "50"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    data = json.loads(out.read_text())
    assert data["sensitivities"] == [1.0] * 7 and data["cpm"] == 1.0
    assert data["cpm_ci"] == [1.0, 1.0] and data["n_false_positives"] == 0
    assert data["n_nodules"] == int(ann["seriesuid"].isin(listed).sum())
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "CPM 1.0000" in res.output and res.output.count("1.0000") >= 8


def test_cli_froc_half_missed(tmp_path):
    # a candidate on every other nodule and one false positive per scan, all at one probability:
    # the FROC is a single point (FPs/scan 1, sensitivity 1/2), flat at 1/2 from 1 FP/scan on
    ann = pd.read_csv(DATA / "annotations.csv")
    uids = (DATA / "seriesuids.csv").read_text().split()
    ann = ann[ann["seriesuid"].isin(uids)].reset_index(drop=True)
    if len(ann) % 2:
        ann = ann.iloc[:-1]
    hits = ann.iloc[::2][["seriesuid", "coordX", "coordY", "coordZ"]]
    fps = pd.DataFrame({"seriesuid": uids, "coordX": 1e4, "coordY": 1e4, "coordZ": 1e4})
    sub = pd.concat([hits, fps]).assign(probability=0.5)
    sub.to_csv(tmp_path / "sub.csv", index=False)
    # only the listed nodules (even count kept) count: write them as the annotations
    ann.to_csv(tmp_path / "ann.csv", index=False)
    res = CliRunner().invoke(main, ["froc", str(tmp_path / "sub.csv"), "--annotations", str(tmp_path / "ann.csv"),
                                    "--seriesuids", str(DATA / "seriesuids.csv"), "--json", str(tmp_path / "f.json"),
                                    "--bootstrap", "10"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    data = json.loads((tmp_path / "f.json").read_text())
    n = len(ann) // 2 + len(ann) % 2
    assert data["n_hits"] == n and data["n_false_positives"] == len(uids)
    s = n / len(ann)
    expected = [s * min(fp, 1.0) for fp in (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)]
    assert data["sensitivities"] == pytest.approx(expected)
    assert data["cpm"] == pytest.approx(np.mean(expected))


def test_every_asked_subset_must_be_in_the_store(tiny_run, tmp_path):
    """Subsets without patches used to be skipped silently while the report listed them; and tuning on missing
    validation subsets was reported as an empty 'test' set."""
    run_dir, _ = tiny_run
    partial = write_tiny_store(tmp_path / "eight.zarr", n_scans=8)  # subsets 0-7
    with pytest.raises(ValueError) as err:
        evaluate_run(run_dir, dataset=str(partial), subsets=[7, 9])
    assert str(err.value) == f"{partial}: evaluated subsets [7, 9]: no patches of subsets [9] at scale 16 in this store"
    with pytest.raises(ValueError, match=r"eight\.zarr: evaluated subsets \[9\]: .*subsets \[9\] asked"):
        evaluate_run(run_dir, dataset=str(partial), subsets=[9])
    with pytest.raises(ValueError, match=r"eight\.zarr: validation subsets \(post-processing is tuned on them\) \[8\]"):
        evaluate_run(run_dir, dataset=str(partial), subsets=[7], postprocess_tune=True)
    assert evaluate_run(run_dir, dataset=str(partial), subsets=[7])["n_patches"] == 8


def test_models_trained_on_the_evaluated_or_tuning_subsets_are_named(tiny_run, tmp_path):
    """An ensemble of cross-validation folds: the other fold trained on RUN_DIR's validation subset."""
    run_dir, _ = tiny_run
    cfg = load_config(run_dir / "config.yaml")
    other = tmp_path / "fold"
    run_training(load_config(None, TINY + [f"data.dataset={cfg.data.dataset}", "split.train_subsets=[0, 1, 8]",
                                           "split.val_subsets=[7]", "split.test_subsets=[9]", "train.epochs=1"]), other)
    assert evaluate_run(run_dir)["warnings"] == []
    res = evaluate_run(run_dir, ensemble=[other], postprocess_tune=True, grid={"threshold": [0.5]})
    assert res["warnings"] == [f"{other} trained on subsets [8], which are the validation subsets post-processing "
                               "is tuned on: its figures there are optimistic"]
    res = evaluate_run(run_dir, subsets=[0, 9])
    assert res["warnings"] == [f"{run_dir} trained on subsets [0], which are evaluated: its figures there are "
                               "optimistic"]
