"""`luna-train detect` reports where a scan's time goes: reading, the sliding window, candidate extraction."""

import importlib.util
import json

import pytest
from click.testing import CliRunner

from luna_train.cli.main import main
from luna_train.inference.from_run import STAGES

from paths import REPO


def _volume_store(path, n_scans, shape):
    spec = importlib.util.spec_from_file_location("suite_stores", REPO / "benchmarks" / "suite_stores.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.volume_store(str(path), n_scans=n_scans, shape_zyx=shape)


def test_detect_reports_the_time_split_per_scan(tiny_run, tmp_path):
    run_dir, _ = tiny_run
    store = _volume_store(tmp_path / "volumes.zarr", 2, (40, 56, 48))
    out = tmp_path / "detect.json"
    res = CliRunner().invoke(main, ["detect", str(run_dir), "--dataset", store, "--subsets", "0-1", "--out",
                                    str(tmp_path / "sub.csv"), "--sw-batch-size", "3", "--overlap", "0.25",
                                    "--json", str(out)])
    assert res.exit_code == 0, res.output + repr(res.exception)
    data = json.loads(out.read_text())
    assert data["n_scans"] == 2 and data["sw_batch_size"] == 3 and data["overlap"] == 0.25 and data["device"] == "cpu"
    assert [t["shape"] for t in data["timings"]] == [[40, 56, 48]] * 2
    for t in data["timings"]:
        assert all(t[f"{k}_s"] > 0 for k in ("read", "sliding_window", "candidates"))
        assert t["plot_s"] < 0.01  # no --plots
        stages = sum(t[f"{k}_s"] for k in STAGES)
        assert stages <= t["total_s"] and stages == pytest.approx(t["total_s"], rel=0.05, abs=0.02)
        assert f"{t['seriesuid']}: read {t['read_s']:.2f} s, sliding window" in res.output  # the log line
    mean = data["mean_timings"]
    assert mean["total_s"] == pytest.approx(sum(t["total_s"] for t in data["timings"]) / 2)
    assert f"time per scan (mean of 2, cpu): read {mean['read_s']:.2f} s" in res.output
