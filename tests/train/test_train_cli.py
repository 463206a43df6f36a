"""luna-train's command line: missing checkpoints and bad config values are clear errors, --version,
a quick --help, and both entry points."""

from __future__ import annotations

import subprocess
import sys

import pytest
from click.testing import CliRunner

from luna_train.cli.main import main

from paths import REPO


@pytest.mark.parametrize("args", [["detect", "RUN"], ["predict", "RUN", "--scan", "scan.mhd", "--out", "x.mhd"],
                                  ["evaluate", "RUN"]])
def test_run_without_checkpoint_is_a_clear_error(args, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "RUN").mkdir()
    (tmp_path / "scan.mhd").write_text("")
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 1 and isinstance(res.exception, SystemExit)
    assert res.output.strip() == "Error: RUN/best.pt: no checkpoint (is RUN a luna-train run directory?)"


@pytest.mark.parametrize("override, needle", [
    ("loss.name=dicefocall", "one of dicefocal, dicece, dice, tversky, combo"),
    ("optim.lr=abc", "expected a finite number"),
    ("train.epochs=1.5", "expected an integer"), ("model.name=foo", "one of unet, attention_unet, dynunet"),
    ("train.amp=fp8", "one of bf16, fp16, none"), ("data.batch_size=-3", "an integer >= 1"),
    ("optim.learning_rate=0.1", "weight_decay"),
])
def test_bad_config_values_are_usage_errors(override, needle, tmp_path):
    res = CliRunner().invoke(main, ["run", "--set", override, "--out", str(tmp_path / "r"),
                                    "--dataset", str(tmp_path / "no-store.zarr")])
    assert res.exit_code == 2, res.output
    assert override.split("=")[0] in res.output and needle in res.output and "Traceback" not in res.output
    assert not (tmp_path / "r").exists()


def test_fold_on_a_test_subset_fails_before_training(tmp_path):
    res = CliRunner().invoke(main, ["run", "--fold", "9", "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and "fold 9 is a test subset" in res.output


def test_version_and_module_entry_point():
    from importlib.metadata import version

    res = CliRunner().invoke(main, ["--version"])
    assert res.output == f"luna-train {version('luna-patches')}\n"
    proc = subprocess.run([sys.executable, "-m", "luna_train.cli.main", "--help"], capture_output=True, text=True,
                          env={"PYTHONPATH": str(REPO)})
    assert proc.returncode == 0 and all(c in proc.stdout for c in ("run", "evaluate", "froc", "detect", "predict"))


def test_help_does_not_import_torch():
    code = "import sys; from luna_train.cli.main import main; print('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={"PYTHONPATH": str(REPO)})
    assert proc.stdout.strip() == "False", proc.stderr
