"""Step-speed options of ``train``: torch.compile, channels-last 3D memory format, the fused AdamW.

Each option of :class:`~luna_train.config.TrainLoopConfig` is ``true``, ``false`` or ``null``
(on for CUDA, off on the CPU) and is resolved here, once, for the device a run trains on. None
of them changes what is computed, only how: a step gives the same loss and parameters to
floating-point tolerance with any of them on or off (tests/train/training/test_speed.py; with dropout, a
compiled model draws other dropout masks than an eager one, as another seed would). The
trainer and ``benchmarks/gpu_step.py`` build their parts through these functions, so the
benchmark measures exactly what training runs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from luna_train.config import OptimConfig, TrainLoopConfig

COMPILED_PREFIX = "_orig_mod."  # what torch.compile's wrapper puts before every state-dict key


def resolve(flag: bool | None, device: torch.device) -> bool:
    """A ``true / false / null`` option for ``device``: null means on for CUDA, off elsewhere."""
    return device.type == "cuda" if flag is None else bool(flag)


@dataclass(frozen=True)
class StepOptions:
    """The resolved step-speed options of one run on one device."""

    compile: bool = False
    compile_mode: str = "default"
    channels_last: bool = False
    fused_optimizer: bool = False

    @classmethod
    def of(cls, tc: TrainLoopConfig, device: torch.device) -> StepOptions:
        return cls(compile=resolve(tc.compile, device), compile_mode=tc.compile_mode,
                   channels_last=resolve(tc.channels_last, device),
                   fused_optimizer=resolve(tc.fused_optimizer, device))

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last_3d if self.channels_last else torch.contiguous_format

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def format_model(model: nn.Module, opts: StepOptions) -> nn.Module:
    """``model`` in the options' memory format (in place; parameters stay the same objects)."""
    return model.to(memory_format=opts.memory_format) if opts.channels_last else model


def format_batch(x: torch.Tensor, opts: StepOptions) -> torch.Tensor:
    """A (B, C, D, H, W) batch in the options' memory format (a no-op when channels-last is off)."""
    return x.contiguous(memory_format=opts.memory_format) if opts.channels_last and x.dim() == 5 else x


def build_optimizer(params: Iterable[nn.Parameter], oc: OptimConfig, opts: StepOptions) -> torch.optim.AdamW:
    """AdamW of ``oc``: the fused kernel when asked, else torch's default (multi-tensor on CUDA, a loop on the CPU)."""
    return torch.optim.AdamW(params, lr=oc.lr, betas=tuple(oc.betas), weight_decay=oc.weight_decay,
                             fused=True if opts.fused_optimizer else None)


def compile_module(module: nn.Module, opts: StepOptions, backend: str = "inductor") -> nn.Module:
    """``torch.compile(module)`` when the options say so (static shapes), ``module`` otherwise.

    The compiled wrapper shares the module's parameters; checkpoints are written from the plain
    module, so their keys never carry the wrapper's ``_orig_mod.`` prefix.
    """
    if not opts.compile:
        return module
    return torch.compile(module, backend=backend, mode=opts.compile_mode, dynamic=False)


def plain_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A model state dict without torch.compile / DDP wrapper prefixes (``_orig_mod.``, ``module.``)."""
    out = {}
    for key, value in state.items():
        key = key.replace(COMPILED_PREFIX, "")
        out[key.removeprefix("module.")] = value
    return out
