"""benchmarks/gpu_step.py runs past one epoch of a small store (it once stopped at step 1) and reports the
baseline, model-only and end-to-end figures of one run, with the ratios the targets are stated in."""

import importlib.util
import json

import pytest

from conftest import write_tiny_store
from paths import REPO


def _gpu_step():
    spec = importlib.util.spec_from_file_location("gpu_step", REPO / "benchmarks" / "gpu_step.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_step_runs_more_steps_than_the_store_holds(tmp_path):
    store = write_tiny_store(tmp_path / "s.zarr", scales=(48, 64, 96), n_scans=2, samples_per_scan=4)  # 8 samples
    out = tmp_path / "step.json"
    result = _gpu_step().main(["--store", store, "--steps", "5", "--warmup", "1", "--workers", "1", "--workers", "0",
                               "--batch", "4", "--set", "model.channels=[4, 8]", "--set", "model.strides=[2]",
                               "--set", "model.num_res_units=1", "--set", "data.train_size=32",
                               "--set", "train.channels_last=true", "--json", str(out)])
    assert result["batch"] == 4 and result["device"] == "cpu"  # 6 draws of 4 from 8 samples, per measurement
    assert result["channels"] == [4, 8] and result["input"] == 32
    assert result["options"]["channels_last"] and not result["baseline_model_only"]["options"]["channels_last"]
    eager_cl = result["eager_channels_last_model_only"]["options"]
    assert eager_cl["channels_last"] and not eager_cl["compile"] and not eager_cl["fused_optimizer"]
    assert result["eager_channels_last_over_baseline"] == pytest.approx(
        result["eager_channels_last_model_only"]["patches_per_s"] / result["baseline_model_only"]["patches_per_s"])
    assert [e["workers"] for e in result["end_to_end"]] == [1, 0]
    for m in (result["baseline_model_only"], result["eager_channels_last_model_only"], result["model_only"],
              *result["end_to_end"]):
        assert m["steps"] == 5 and m["patches_per_s"] == pytest.approx(4 * 5 / (m["step_ms"] * 5 / 1000))
    for e in result["end_to_end"]:
        assert 0.0 <= e["data_wait_share"] <= 1.0
        assert result["end_to_end_over_model_only"][str(e["workers"])] == pytest.approx(
            e["patches_per_s"] / result["model_only"]["patches_per_s"])
    assert result["speedup_over_baseline"] == pytest.approx(
        result["model_only"]["patches_per_s"] / result["baseline_model_only"]["patches_per_s"])
    assert set(result["targets"]) == {"end_to_end_over_model_only_ge_0.9", "data_wait_lt_5pct", "speedup_ge_2"}
    assert json.loads(out.read_text()) == result


def test_the_gpu_suites_patch_store_holds_several_shards_a_scan(tmp_path):
    """benchmarks/gpu_suite.sh writes 32 samples a scan: more than a shard (8), which write_rows takes one at a
    time; the store must come out whole and valid (its first step ended the GPU run otherwise)."""
    import numpy as np

    from luna_prep.format.reader import PatchStore
    from luna_prep.sharing.verify import verify
    from luna_prep.synthetic.tiny_store import write_tiny_store

    root = write_tiny_store(tmp_path / "s.zarr", scales=(16,), n_scans=2, samples_per_scan=20)
    store = PatchStore(root)
    assert len(store.manifest) == 40 and verify(root, deep=True).ok
    for row in store.manifest.itertuples():  # every row written: nodules bright where their masks are
        image, mask = store.read_patch(16, row.index)
        assert int(mask.sum()) == row.fg_voxels
        assert (row.kind != "nodule") or image[mask > 0].mean() > 0.6 > np.median(image)
