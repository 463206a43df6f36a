"""Typed training configuration: dataclass sections, YAML/TOML loading and ``--set a.b=c`` overrides.

A :class:`TrainConfig` nests one dataclass per section (``data``, ``split``, ``sampler``,
``augment``, ``model``, ``loss``, ``optim``, ``train``, ``logging``); the data-side sections are
the ones of :mod:`luna_train.data`. Files and overrides are checked against the dataclasses: an
unknown key is an error that names it and lists the valid keys.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from luna_prep.format.spec import DEFAULT_STORE
from luna_train.data.augment import AugmentConfig
from luna_train.data.sampler import SamplerConfig
from luna_train.data.splits import SplitConfig


class ConfigError(ValueError):
    """A configuration file or override that does not match :class:`TrainConfig`."""


@dataclass
class DataConfig:
    """Where the patches come from and how they are batched."""

    dataset: str = DEFAULT_STORE  # luna-patches store
    train_size: int | None = 64  # edge every patch is resized to; None = native size (one scale only)
    eval_scale: int = 64  # the single scale val/test patches are read at
    batch_size: int = 8
    val_batch_size: int | None = None  # None = batch_size
    num_workers: int = 2
    # batch-level flips/rotations/intensity on the training device instead of MONAI transforms per item in
    # the workers: None = on CUDA only; true also on CPU (much cheaper than per-item transforms there)
    device_augment: bool | None = None


@dataclass
class ModelConfig:
    """A MONAI 3D segmentation network with one output channel (logits)."""

    name: str = "unet"  # unet | attention_unet | dynunet
    channels: tuple[int, ...] = (16, 32, 64, 128)  # DynUNet: filters per level
    strides: tuple[int, ...] = (2, 2, 2)  # DynUNet: the first level's stride 1 is added
    num_res_units: int = 2  # UNet only
    dropout: float = 0.0
    kernel_size: int = 3
    deep_supervision: bool = True  # DynUNet only
    deep_supr_num: int = 2  # DynUNet: auxiliary outputs at decoder levels
    res_block: bool = True  # DynUNet residual blocks


@dataclass
class LossConfig:
    """Loss function; weights of the combo terms; deep-supervision weight decay."""

    name: str = "dicefocal"  # dicefocal | dicece | dice | tversky | combo
    lambda_dice: float = 1.0
    lambda_focal: float = 1.0
    lambda_ce: float = 1.0
    # dicece: positive-class weight of the binary cross-entropy; nodule voxels are ~1% of a patch, and an
    # unweighted CE term drives small models to predict nothing (seen on the synthetic demo data)
    ce_pos_weight: float | None = None
    gamma: float = 2.0  # focal
    focal_alpha: float | None = None  # foreground weight of the focal term (0..1)
    dice_batch: bool = True  # Dice/Tversky over the whole batch (stable with empty patches) vs per item
    tversky_alpha: float = 0.3  # false-positive weight
    tversky_beta: float = 0.7  # false-negative weight
    combo_dice: float = 1.0
    combo_focal: float = 1.0
    combo_tversky: float = 0.0
    combo_boundary: float = 0.1
    deep_supervision_decay: float = 0.5  # weight of output level i is decay**i, normalized


@dataclass
class OptimConfig:
    """AdamW with per-step linear warm-up then cosine annealing (optionally with warm restarts)."""

    lr: float = 1e-3
    min_lr: float = 1e-6
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_epochs: float = 5.0
    schedule: str = "cosine"  # cosine | constant
    restart_epochs: float = 0.0  # > 0: SGDR, first cosine period in epochs
    restart_mult: float = 1.0  # period growth factor after each restart
    grad_clip: float = 1.0  # max gradient norm; 0 = off


@dataclass
class TrainLoopConfig:
    """Epochs, precision, early stopping, checkpoints, seeding."""

    epochs: int = 100
    patience: int = 20  # epochs without val Dice improvement before stopping; 0 = never
    amp: str = "bf16"  # bf16 | fp16 | none; mixed precision applies on CUDA only
    seed: int = 0
    val_every: int = 1  # validate every N epochs (and at the last one)
    checkpoint_every_steps: int = 0  # also write last.pt every N steps (0: only at epoch end)
    stop_after_steps: int | None = None  # simulate an interruption: save last.pt and exit after N steps
    threshold: float = 0.5  # probability above which a voxel is predicted foreground
    compile: bool = False  # torch.compile the model (CUDA)


@dataclass
class LoggingConfig:
    """What a run writes besides checkpoints."""

    tensorboard: bool = True
    wandb: bool = False  # offline wandb run, only when wandb is importable
    wandb_project: str = "luna-train"
    progress: bool = True  # tqdm bar
    plots: bool = True  # curves.png, val_panel.png
    panel_patches: int = 8


@dataclass
class TrainConfig:
    """A whole training run."""

    data: DataConfig = field(default_factory=DataConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainLoopConfig = field(default_factory=TrainLoopConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)


# ---------------------------------------------------------------------------------------------
# dict <-> dataclass


def _hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # unresolvable annotations: fall back to the defaults' types
        return {}


def _coerce(value: Any, hint: Any, default: Any, where: str) -> Any:
    """``value`` converted to the field's type where that is unambiguous (lists -> tuples, str keys -> int)."""
    if value is None:
        return None
    origin = typing.get_origin(hint)
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)) and len(args) == 1:
        hint, origin, args = args[0], typing.get_origin(args[0]), list(typing.get_args(args[0]))
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return from_dict(hint, value, where)
    if origin is tuple or isinstance(default, tuple):
        if not isinstance(value, (list, tuple)):
            value = [value]
        elem = args[0] if args else None
        return tuple(_scalar(v, elem) for v in value)
    if origin is dict or isinstance(default, dict):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        key_t = args[0] if len(args) == 2 else (type(next(iter(default))) if default else None)
        val_t = args[1] if len(args) == 2 else None
        return {_scalar(k, key_t): _scalar(v, val_t) for k, v in value.items()}
    return _scalar(value, hint if isinstance(hint, type) else (type(default) if default is not None else None))


def _scalar(value: Any, typ: Any) -> Any:
    if typ is float and isinstance(value, (int, str)) and not isinstance(value, bool):
        return float(value)
    if typ is int and isinstance(value, str) and value.lstrip("-").isdigit():
        return int(value)
    if typ is int and isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def from_dict(cls: type, data: dict[str, Any] | None, where: str = "config") -> Any:
    """Instance of dataclass ``cls`` from a (partial) nested dict; unknown keys raise ConfigError."""
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {data!r}")
    data = dict(data or {})
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        raise ConfigError(f"unknown config key {where + '.' if where != 'config' else ''}{unknown[0]}; "
                          f"valid keys{' of ' + where if where != 'config' else ''}: {', '.join(names)}")
    hints, base = _hints(cls), cls()
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            sub = f"{where}.{f.name}" if where != "config" else f.name
            kwargs[f.name] = _coerce(data[f.name], hints.get(f.name), getattr(base, f.name), sub)
    return cls(**kwargs)


def to_dict(cfg: Any) -> Any:
    """Plain nested dict/list/scalars of a dataclass (tuples become lists)."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    return cfg


# ---------------------------------------------------------------------------------------------
# files and overrides


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The raw nested dict of a ``.yaml``/``.yml`` or ``.toml`` file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: config file not found")
    if p.suffix.lower() == ".toml":
        import tomllib

        with open(p, "rb") as fh:
            data = tomllib.load(fh)
    else:
        data = yaml.safe_load(p.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: top level must be a mapping of sections")
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b=c`` -> (["a", "b"], value parsed as a YAML scalar/list/mapping)."""
    if "=" not in text:
        raise ConfigError(f"bad override {text!r}: expected key.path=value")
    key, raw = text.split("=", 1)
    keys = [k for k in key.strip().split(".") if k]
    if not keys:
        raise ConfigError(f"bad override {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"bad override {text!r}: value is not valid YAML ({exc})") from exc
    return keys, value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Copy of raw config ``data`` with each ``a.b=c`` set; keys are checked against TrainConfig."""
    out = to_dict(data)
    for text in overrides:
        keys, value = parse_override(text)
        cls: Any = TrainConfig
        node = out
        for depth, k in enumerate(keys):
            names = [f.name for f in dataclasses.fields(cls)]
            if k not in names:
                where = ".".join(keys[:depth]) or "config"
                raise ConfigError(f"unknown config key {'.'.join(keys[:depth + 1])!r} in --set {text!r}; "
                                  f"valid keys of {where}: {', '.join(names)}")
            if depth == len(keys) - 1:
                node[k] = value
                break
            sub = _hints(cls).get(k)
            if not (dataclasses.is_dataclass(sub) and isinstance(sub, type)):
                raise ConfigError(f"--set {text!r}: {'.'.join(keys[:depth + 1])} is not a section")
            if not isinstance(node.get(k), dict):
                node[k] = {}
            node, cls = node[k], sub
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """TrainConfig from an optional file plus ``--set`` overrides (defaults elsewhere)."""
    data = read_config_file(path) if path is not None else {}
    return from_dict(TrainConfig, apply_overrides(data, list(overrides or [])))


def save_config(cfg: TrainConfig, path: str | Path) -> None:
    """Write the resolved config as YAML."""
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
