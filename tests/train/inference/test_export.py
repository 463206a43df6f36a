"""`luna-train export`: TorchScript and ONNX files that give the run's probabilities, spec inside."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from luna_train.cli.main import main
from luna_train.inference.export import load_torchscript
from luna_train.inference.trained_model import load_trained_model
from luna_train.run_dir import POSTPROCESS_FILE, PREPROCESSING_FILE, RunDir

# 24^3 is the trained size plus one more multiple of the stride; batch of 2
INPUT = torch.rand(2, 1, 24, 16, 32, generator=torch.Generator().manual_seed(3))


def _reference(run_dir) -> np.ndarray:
    return load_trained_model(run_dir, device=torch.device("cpu")).probabilities(INPUT).numpy()


def _export(run_dir, fmt, out):
    res = CliRunner().invoke(main, ["export", str(run_dir), "--format", fmt, "--out", str(out)])
    assert res.exit_code == 0, res.output + repr(res.exception)


def test_torchscript_gives_the_runs_probabilities_and_carries_its_spec(tiny_run, tmp_path):
    run_dir, _ = tiny_run
    _export(run_dir, "torchscript", tmp_path / "model.pt")
    module, meta = load_torchscript(tmp_path / "model.pt")
    with torch.no_grad():
        got = module(INPUT).numpy()
    assert got.shape == INPUT.shape
    np.testing.assert_allclose(got, _reference(run_dir), atol=1e-4, rtol=0)
    assert json.loads(meta[PREPROCESSING_FILE]) == RunDir(run_dir).preprocessing().to_dict()
    assert POSTPROCESS_FILE not in meta  # the run was never tuned


def test_onnx_gives_the_runs_probabilities_and_carries_its_spec(tiny_run, tmp_path):
    ort = pytest.importorskip("onnxruntime", reason="the [export] extra (onnx, onnxruntime) is not installed")
    onnx = pytest.importorskip("onnx", reason="the [export] extra (onnx, onnxruntime) is not installed")
    run_dir, _ = tiny_run
    _export(run_dir, "onnx", tmp_path / "model.onnx")
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    (got,) = session.run(["probability"], {"image": INPUT.numpy()})
    np.testing.assert_allclose(got, _reference(run_dir), atol=1e-4, rtol=0)
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "model.onnx")).metadata_props}
    assert json.loads(meta[PREPROCESSING_FILE]) == RunDir(run_dir).preprocessing().to_dict()


def test_the_onnx_exporter_is_chosen_only_where_torch_has_the_choice(monkeypatch):
    """torch 2.3-2.4 (pyproject allows >= 2.3) have no `dynamo` keyword: passing it failed with a TypeError."""
    import torch

    from luna_train.inference import export

    assert export._torchscript_exporter() == {"dynamo": False}  # this torch has the keyword
    monkeypatch.setattr(torch.onnx, "export", lambda model, args, f, **kwargs: None)
    assert export._torchscript_exporter() == {}
