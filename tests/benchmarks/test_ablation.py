"""benchmarks/ablation.py: every variant is a valid one-change config, runs resume, the table compares means."""

import importlib
import json
import sys

import pytest
import torch

from paths import REPO


def _ablation():
    if str(REPO / "benchmarks") not in sys.path:
        sys.path.insert(0, str(REPO / "benchmarks"))
    return importlib.import_module("ablation")


def test_every_variant_is_one_change_of_the_demo_config_and_trains():
    from luna_train.config import load_config
    from luna_train.nets.losses import build_loss
    from luna_train.nets.models import build_model

    a = _ablation()
    base = load_config(a.ROOT / "configs" / "demo.yaml")
    for name, variant in a.VARIANTS.items():
        cfg = load_config(a.ROOT / "configs" / "demo.yaml", list(variant.overrides))
        changed = [s for s in ("data", "sampler", "model", "loss", "optim") if getattr(cfg, s) != getattr(base, s)]
        assert len(changed) == (0 if name == "baseline" else 1), (name, changed)  # one remedy at a time
        model, loss = build_model(cfg.model), build_loss(cfg.loss)
        x = torch.randn(2, 1, 16, 16, 16)
        y = (torch.rand(2, 1, 16, 16, 16) > 0.9).float()
        value = loss(model(x), y)
        value.backward()
        assert torch.isfinite(value), name


def _fake_run(seed, val_dice, test_dice, cpm=1.0):
    """A run whose best validation threshold is 0.8 (0.5 has lower val Dice, but higher test Dice)."""
    row = lambda t, d: {"threshold": t, "dice": d, "precision": 0.9, "recall": 0.8, "signed_sd": 0.1}  # noqa: E731
    return {"train_seconds": 100.0 + seed,
            "calibrated": {"val_sweep": [row(0.5, val_dice - 0.1), row(0.8, val_dice), row(0.9, None)],
                           "test_sweep": [row(0.5, 0.99), row(0.8, test_dice), row(0.9, None)]},
            "detection": {"cpm": cpm, "n_false_positives": 30, "n_scans": 15}}


def test_report_means_spreads_and_deltas_against_the_baseline(tmp_path, capsys):
    a = _ablation()
    runs = {("baseline", 0): _fake_run(0, 0.80, 0.70), ("baseline", 1): _fake_run(1, 0.84, 0.74),
            ("dicefocal", 0): _fake_run(0, 0.70, 0.60, cpm=0.5)}
    for (name, seed), r in runs.items():
        (tmp_path / name).mkdir(exist_ok=True)
        (tmp_path / name / f"seed{seed}.json").write_text(json.dumps(r))
    table = a.summarize(tmp_path)
    assert list(table) == ["baseline", "dicefocal"] and table["baseline"]["seeds"] == [0, 1]
    assert table["baseline"]["stats"]["val_dice"] == pytest.approx((0.82, 0.04))
    assert table["baseline"]["stats"]["fp_per_scan"][0] == pytest.approx(2.0)
    assert table["baseline"]["stats"]["threshold"] == (0.8, 0.0)  # chosen on validation, never on test
    a.main(["--out", str(tmp_path), "--report", "--markdown", str(tmp_path / "t.md")])
    text = (tmp_path / "t.md").read_text()
    focal = next(line for line in text.splitlines() if line.startswith("| dicefocal"))
    assert "0.700 [-0.120]" in focal and "0.600 [-0.120]" in focal and "0.500 [-0.500]" in focal
    base = next(line for line in text.splitlines() if line.startswith("| baseline"))
    assert "0.820 (±0.020)" in base and "[" not in base


def test_existing_runs_are_skipped_and_unknown_variants_refused(tmp_path):
    a = _ablation()
    (tmp_path / "baseline").mkdir()
    done = tmp_path / "baseline" / "seed0.json"
    done.write_text(json.dumps(_fake_run(0, 0.8, 0.7)))
    a.main(["--out", str(tmp_path), "--store", "no-such-store", "--variants", "baseline"])  # resumes: trains nothing
    assert json.loads(done.read_text())["calibrated"]["val_sweep"][1]["dice"] == 0.8
    with pytest.raises(SystemExit):
        a.main(["--out", str(tmp_path), "--store", "s", "--variants", "baseline,bogus"])


def test_runs_of_another_config_version_are_refused(tmp_path):
    a = _ablation()
    config = tmp_path / "recipe.yaml"
    config.write_text((a.ROOT / "configs" / "demo.yaml").read_text())
    (tmp_path / "runs" / "baseline").mkdir(parents=True)
    done = {**_fake_run(0, 0.8, 0.7), "config_sha256": a.config_digest(config)}
    (tmp_path / "runs" / "baseline" / "seed0.json").write_text(json.dumps(done))
    args = ["--out", str(tmp_path / "runs"), "--store", "s", "--config", str(config), "--variants", "baseline"]
    a.main(args)  # same file: the finished run is kept, nothing trains
    config.write_text(config.read_text().replace("threshold: 0.9", "threshold: 0.5"))
    with pytest.raises(SystemExit, match="another version of the config"):
        a.main(args)
