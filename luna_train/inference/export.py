"""A run's model as one file other tools load: TorchScript or ONNX, preprocessing spec inside.

The exported network maps a (B, 1, D, H, W) float32 image in [0, 1], prepared as the spec says
(resampled to ``spacing_mm``, HU clipped to ``hu_window`` and scaled to [0, 1], windows of
``eval_scale`` voxels resized to ``input_size``), to sigmoid probabilities of the same shape; the
spatial size may vary (multiples of the network's total stride). The spec, and the frozen
post-processing when the run has one, travel inside the file: TorchScript ``extra_files``
(``preprocessing.json``, ``postprocess.json``), ONNX ``metadata_props`` (same keys).
"""

from __future__ import annotations

import inspect
import json
import warnings
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from luna_prep.errors import InputError, UsageError
from luna_train.inference.trained_model import load_trained_model
from luna_train.nets.models import main_output
from luna_train.run_dir import POSTPROCESS_FILE, PREPROCESSING_FILE, RunDir
from luna_train.training.checkpoint import checkpoint_file

ExportFormat = Literal["torchscript", "onnx"]
FORMATS: tuple[str, ...] = ("torchscript", "onnx")
ONNX_OPSET = 17


class ProbabilityNet(nn.Module):
    """A segmentation network ending in its sigmoid: image -> probabilities (deep-supervision levels dropped)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(main_output(self.model(x)).float())


def run_metadata(run_dir: str | Path, eval_scale: int, input_size: int | None,
                 dataset: str | None = None) -> dict[str, str]:
    """The JSON texts that travel with the exported model: preprocessing spec and frozen post-processing.
    ``dataset``: the store the run trained on, for a run older than ``preprocessing.json`` whose store moved."""
    run = RunDir(run_dir)
    spec = run.preprocessing(dataset, eval_scale, input_size)
    if (spec.eval_scale, spec.input_size) != (eval_scale, input_size):
        raise InputError(f"{run.file(PREPROCESSING_FILE)}: eval scale {spec.eval_scale} resized to {spec.input_size}, "
                         f"but the checkpoint was trained at {eval_scale} resized to {input_size}")
    meta = {PREPROCESSING_FILE: json.dumps(spec.to_dict())}
    if run.file(POSTPROCESS_FILE).is_file():
        meta[POSTPROCESS_FILE] = run.file(POSTPROCESS_FILE).read_text()
    return meta


def _export_torchscript(net: nn.Module, example: torch.Tensor, out: Path, meta: dict[str, str]) -> None:
    with warnings.catch_warnings():  # tracer warnings, and torch >= 2.10's deprecation notice of torch.jit
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(net, example)
        torch.jit.save(traced, str(out), _extra_files=meta)


def _export_onnx(net: nn.Module, example: torch.Tensor, out: Path, meta: dict[str, str]) -> None:
    try:
        import onnx
    except ImportError:
        raise UsageError("--format onnx needs the onnx package: pip install 'luna-patches[export]'") from None
    axes = {0: "batch", 2: "depth", 3: "height", 4: "width"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (example,), str(out), input_names=["image"], output_names=["probability"],
                          dynamic_axes={"image": axes, "probability": axes}, opset_version=ONNX_OPSET,
                          **_torchscript_exporter())
    model = onnx.load(str(out))
    onnx.helper.set_model_props(model, meta)
    onnx.save(model, str(out))


def export_run(run_dir: str | Path, fmt: ExportFormat, out: str | Path, checkpoint: str = "best",
               dataset: str | None = None) -> Path:
    """Write the run's model (``checkpoint``) as ``fmt`` to ``out``, with the run's preprocessing spec inside
    (``dataset``: see :func:`run_metadata`)."""
    if fmt not in FORMATS:
        raise UsageError(f"export format {fmt!r}: expected one of {', '.join(FORMATS)}")
    trained = load_trained_model(run_dir, checkpoint_file(checkpoint), torch.device("cpu"))
    data = trained.config.data
    size = trained.input_size or data.eval_scale
    net = ProbabilityNet(trained.model).eval()
    example = torch.rand(1, 1, size, size, size, generator=torch.Generator().manual_seed(0))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = run_metadata(run_dir, data.eval_scale, data.train_size, dataset)
    (_export_torchscript if fmt == "torchscript" else _export_onnx)(net, example, out, meta)
    return out


def load_torchscript(path: str | Path) -> tuple[torch.jit.ScriptModule, dict[str, str]]:
    """An exported TorchScript model and its metadata texts."""
    extra = {PREPROCESSING_FILE: "", POSTPROCESS_FILE: ""}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    return module, {k: v.decode() if isinstance(v, bytes) else v for k, v in extra.items() if v}


def _torchscript_exporter() -> dict:
    """``dynamo=False`` where torch.onnx.export has the keyword (torch 2.5 added it; newer versions default to True),
    nothing before, where the TorchScript exporter is the only one."""
    return {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}

