"""A trained model from a run directory, ready for inference (one or several runs: an ensemble).

Everything downstream (patch evaluation, TTA, detection, predict) takes a :class:`ProbabilityModel`
and gets one from :func:`load_model_like`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from luna_prep.errors import InputError
from luna_train.config import TrainConfig, from_dict
from luna_train.nets.models import build_model, main_output
from luna_train.run_dir import PREPROCESSING_FILE, RunDir
from luna_train.training.checkpoint import BEST, checkpoint_file, load_checkpoint
from luna_train.training.loop import amp_context
from luna_train.training.speed import StepOptions, format_batch, format_model, plain_state_dict


class ProbabilityModel(Protocol):
    """What inference needs of a trained model: sigmoid probabilities and the geometry of its inputs."""

    @property
    def config(self) -> TrainConfig: ...  # the (first) run's training config

    @property
    def input_size(self) -> int | None: ...  # patch edge the model was trained on (None: native size)

    @property
    def voxel_mm(self) -> float: ...  # store voxels per model voxel

    @property
    def device(self) -> torch.device: ...

    @property
    def run_dirs(self) -> list[Path]: ...  # the run directories the model comes from

    def probabilities(self, x: torch.Tensor) -> torch.Tensor: ...  # (B, 1, D, H, W) -> same shape in [0, 1]


@dataclass
class TrainedModel:
    """A network in eval mode with the config it was trained with.

    On CUDA it predicts as it trained: under the run's mixed precision (``train.amp``) and, when
    ``train.channels_last`` resolves to on, with channels-last 3D weights and inputs; probabilities
    are float32 either way.
    """

    model: nn.Module
    config: TrainConfig
    run_dir: Path
    device: torch.device
    options: StepOptions = field(default_factory=StepOptions)

    @property
    def input_size(self) -> int | None:
        """Edge of the patches the model was trained on (None: native patch size)."""
        return self.config.data.train_size

    @property
    def voxel_mm(self) -> float:
        """Voxel size (in store voxels) of the model's inputs: eval_scale patches resized to train_size."""
        size = self.config.data.train_size
        return 1.0 if size is None else self.config.data.eval_scale / size

    @property
    def run_dirs(self) -> list[Path]:
        return [self.run_dir]

    @torch.no_grad()
    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """Sigmoid probabilities (B, 1, D, H, W) of a (B, 1, D, H, W) batch."""
        x = format_batch(x.to(self.device, non_blocking=True), self.options)
        with amp_context(self.device, self.config.train.amp):
            logits = main_output(self.model(x))
        return torch.sigmoid(logits.float())


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_trained_model(run_dir: str | Path, checkpoint: str = BEST, device: torch.device | None = None) -> TrainedModel:
    """The model of ``run_dir/best.pt`` (or ``last.pt``), loaded with ``weights_only=True``."""
    run_dir = Path(run_dir)
    path = run_dir / checkpoint
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint (is {run_dir} a luna-train run directory?)")
    ckpt = load_checkpoint(path)
    cfg = from_dict(TrainConfig, ckpt["config"], where=str(path))
    device = device or default_device()
    model = build_model(cfg.model)
    model.load_state_dict(plain_state_dict(ckpt["model"]))
    options = inference_options(cfg, device)
    return TrainedModel(format_model(model.to(device), options).eval(), cfg, run_dir, device, options)


def inference_options(cfg: TrainConfig, device: torch.device) -> StepOptions:
    """The run's memory format for ``device`` (no compile: a one-off compile costs more than a scan takes)."""
    return StepOptions(channels_last=StepOptions.of(cfg.train, device).channels_last)


class Ensemble:
    """The mean probability of several trained models (checkpoints or cross-validation folds).

    All members must share the input size and voxel size (the same patches feed each).
    """

    def __init__(self, members: list[TrainedModel]):
        if not members:
            raise InputError("an ensemble needs at least one model")
        sizes = {(m.input_size, m.voxel_mm) for m in members}
        if len(sizes) > 1:
            each = ", ".join(f"{m.run_dir} {(m.input_size, m.voxel_mm)}" for m in members)
            raise InputError(f"ensemble members disagree on (input size, voxel size): {each}")
        # one preparation feeds every member: each must have been trained on scans prepared alike
        prepared = {m.run_dir: _scan_preparation(m.run_dir) for m in members}
        known = [(run, how) for run, how in prepared.items() if how is not None]
        for run, how in known[1:]:
            if how != known[0][1]:
                raise InputError(f"ensemble members prepare scans differently: {known[0][0]} at (spacing mm, HU "
                                 f"window, image dtype) {known[0][1]}, {run} at {how}; ensemble runs trained on "
                                 "stores built with the same settings")
        self.members = members

    @property
    def config(self) -> TrainConfig:
        return self.members[0].config

    @property
    def input_size(self) -> int | None:
        return self.members[0].input_size

    @property
    def voxel_mm(self) -> float:
        return self.members[0].voxel_mm

    @property
    def device(self) -> torch.device:
        return self.members[0].device

    @property
    def run_dirs(self) -> list[Path]:
        return [m.run_dir for m in self.members]

    @torch.no_grad()
    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m.probabilities(x) for m in self.members]).mean(0)


def _scan_preparation(run_dir: Path | None) -> tuple | None:
    """(spacing mm, HU window, image dtype) of a run's ``preprocessing.json``; None where it has none."""
    if run_dir is None or not (Path(run_dir) / PREPROCESSING_FILE).is_file():
        return None
    spec = RunDir(run_dir).preprocessing()
    return spec.spacing_mm, tuple(spec.hu_window), spec.image_dtype


def load_ensemble(run_dirs: list[str | Path], checkpoint: str = BEST, device: torch.device | None = None) -> Ensemble:
    device = device or default_device()
    return Ensemble([load_trained_model(r, checkpoint, device) for r in run_dirs])


def load_model_like(run_dir: str | Path, ensemble: Sequence[str | Path] = (), checkpoint: str = "best",
                    device: torch.device | None = None) -> ProbabilityModel:
    """The run's model (``checkpoint``: best, last, or a file name), or the ensemble of it and the ``ensemble`` runs."""
    name = checkpoint_file(checkpoint)
    if ensemble:
        return load_ensemble([run_dir, *ensemble], name, device)
    return load_trained_model(run_dir, name, device)
