"""benchmarks/gpu_step.py runs past one epoch of a small store (it once stopped at step 1)."""

import importlib.util
import json

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
    result = _gpu_step().main(["--store", store, "--steps", "5", "--warmup", "1", "--workers", "1", "--batch", "4",
                               "--set", "model.channels=[4, 8]", "--set", "model.strides=[2]",
                               "--set", "model.num_res_units=1", "--json", str(out)])
    assert result["steps"] == 5 and result["batch"] == 4 and result["workers"] == 1  # 24 draws from 8 samples
    assert result["channels"] == [4, 8] and result["input"] == 64
    assert result["patches_per_s"] > 0 and 0.0 <= result["data_wait_share"] <= 1.0
    assert json.loads(out.read_text()) == result
