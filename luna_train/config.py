"""Typed training configuration: frozen dataclass sections, YAML/TOML loading and ``--set a.b=c`` overrides.

A :class:`TrainConfig` nests one dataclass per section (``data``, ``split``, ``sampler``,
``augment``, ``model``, ``loss``, ``optim``, ``train``, ``logging``); the data-side sections are
the ones of :mod:`luna_train.data`. A config is checked once, when it is loaded (:func:`from_dict`):
unknown keys, types, ``Literal`` choices and ``Annotated`` ranges; every error is a
:class:`ConfigError` that names the key and what it allows. Sections are frozen: derive a changed
config with :func:`dataclasses.replace`.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml

from luna_prep.errors import UsageError
from luna_prep.format.spec import DEFAULT_STORE
from luna_prep.luna16.tables import LUNA16_SUBSETS
from luna_train.config_fields import (  # noqa: F401 (re-exported: the configs' field types)
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Probability,
    Range,
)
from luna_train.data.augment import AugmentConfig
from luna_train.data.sampler import SamplerConfig
from luna_train.data.splits import SplitConfig


class ConfigError(UsageError):
    """A configuration file or override that does not match :class:`TrainConfig` (a usage error, exit 2)."""


ModelName = Literal["unet", "attention_unet", "dynunet"]
LossName = Literal["dicefocal", "dicece", "dice", "tversky", "combo"]
Precision = Literal["bf16", "fp16", "none"]
Schedule = Literal["cosine", "constant"]
CompileMode = Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]


@dataclass(frozen=True)
class DataConfig:
    """Where the patches come from and how they are batched."""

    dataset: str = DEFAULT_STORE  # luna-patches store
    train_size: PositiveInt | None = 64  # edge every patch is resized to; None = native size (one scale only)
    eval_scale: PositiveInt = 64  # the single scale val/test patches are read at
    batch_size: PositiveInt = 8
    val_batch_size: PositiveInt | None = None  # None = batch_size
    num_workers: NonNegativeInt = 2
    # batch-level flips/rotations/intensity on the training device instead of MONAI transforms per item in
    # the workers: None = on CUDA only; true also on CPU (much cheaper than per-item transforms there)
    device_augment: bool | None = None


@dataclass(frozen=True)
class ModelConfig:
    """A MONAI 3D segmentation network with one output channel (logits)."""

    name: ModelName = "unet"
    channels: tuple[PositiveInt, ...] = (16, 32, 64, 128)  # DynUNet: filters per level
    strides: tuple[PositiveInt, ...] = (2, 2, 2)  # DynUNet: the first level's stride 1 is added
    num_res_units: NonNegativeInt = 2  # UNet only
    dropout: Annotated[float, Range(ge=0, lt=1)] = 0.0
    kernel_size: PositiveInt = 3
    deep_supervision: bool = True  # DynUNet only
    deep_supr_num: PositiveInt = 2  # DynUNet: auxiliary outputs at decoder levels
    res_block: bool = True  # DynUNet residual blocks
    # initial foreground probability: the output layer's bias starts at logit(p) (the prior initialisation of
    # RetinaNet), so training skips the phase of pushing every voxel from 0.5 towards background; None keeps
    # PyTorch's default (p ~ 0.5). With 0.01 the demo's unweighted DiceCE learns from the first steps
    # (docs/training.md)
    init_fg_probability: Annotated[float, Range(gt=0, lt=1)] | None = None


@dataclass(frozen=True)
class LossConfig:
    """Loss function; weights of the combo terms; deep-supervision weight decay."""

    name: LossName = "dicefocal"
    lambda_dice: NonNegativeFloat = 1.0
    lambda_focal: NonNegativeFloat = 1.0
    lambda_ce: NonNegativeFloat = 1.0
    # dicece: positive-class weight of the binary cross-entropy; nodule voxels are ~1% of a patch, and an
    # unweighted CE term drives small models to predict nothing (seen on the synthetic demo data)
    ce_pos_weight: PositiveFloat | None = None
    gamma: NonNegativeFloat = 2.0  # focal
    focal_alpha: Probability | None = None  # foreground weight of the focal term (0..1)
    # Dice/Tversky over the whole batch (stable with empty patches) vs per item; with it the logged val_loss
    # depends on how validation patches fall into batches and ranks (~4e-4 relative; the Dice metrics do not)
    dice_batch: bool = True
    tversky_alpha: NonNegativeFloat = 0.3  # false-positive weight
    tversky_beta: NonNegativeFloat = 0.7  # false-negative weight
    combo_dice: NonNegativeFloat = 1.0
    combo_focal: NonNegativeFloat = 1.0
    combo_tversky: NonNegativeFloat = 0.0
    combo_boundary: NonNegativeFloat = 0.1
    deep_supervision_decay: PositiveFloat = 0.5  # weight of output level i is decay**i, normalized


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with per-step linear warm-up then cosine annealing (optionally with warm restarts)."""

    lr: PositiveFloat = 1e-3
    min_lr: NonNegativeFloat = 1e-6
    weight_decay: NonNegativeFloat = 1e-4
    betas: tuple[Annotated[float, Range(ge=0, lt=1)], Annotated[float, Range(ge=0, lt=1)]] = (0.9, 0.999)
    warmup_epochs: NonNegativeFloat = 5.0
    schedule: Schedule = "cosine"
    restart_epochs: NonNegativeFloat = 0.0  # > 0: SGDR, first cosine period in epochs
    restart_mult: Annotated[float, Range(ge=1)] = 1.0  # period growth after each restart (< 1: the periods would end)
    grad_clip: NonNegativeFloat = 1.0  # max gradient norm; 0 = off


@dataclass(frozen=True)
class TrainLoopConfig:
    """Epochs, precision, early stopping, checkpoints, seeding."""

    epochs: PositiveInt = 100
    patience: NonNegativeInt = 20  # epochs without a better val Dice (from the first validation) to stop; 0 = never
    amp: Precision = "bf16"  # mixed precision applies on CUDA only
    seed: int = 0
    val_every: PositiveInt = 1  # validate every N epochs (and at the last one)
    checkpoint_every_steps: NonNegativeInt = 0  # also write last.pt every N steps (0: only at epoch end)
    # simulate an interruption: save last.pt and exit after N steps in all (not kept in the run's config.yaml)
    stop_after_steps: PositiveInt | None = None
    threshold: Probability = 0.5  # probability above which a voxel is predicted foreground
    # step speed (docs/benchmarks.md, GPU training step); None = on for CUDA, off on the CPU
    compile: bool | None = None  # torch.compile the training module (checkpoints keep the plain module's keys)
    compile_mode: CompileMode = "default"  # torch.compile mode; "reduce-overhead" adds CUDA graphs
    channels_last: bool | None = None  # channels_last_3d memory format for the model and its input batches
    fused_optimizer: bool | None = None  # AdamW's fused kernel (None: on CUDA; off: torch's default AdamW)


@dataclass(frozen=True)
class LoggingConfig:
    """What a run writes besides checkpoints."""

    tensorboard: bool = True
    wandb: bool = False  # a wandb run (extra [wandb]; mode from WANDB_MODE, e.g. offline)
    wandb_project: str = "luna-train"
    mlflow: bool = False  # an MLflow run (extra [mlflow]; MLFLOW_TRACKING_URI, else RUN_DIR/mlruns)
    mlflow_experiment: str = "luna-train"
    step_every: PositiveInt = 10  # mean train loss since the last log to the trackers (and a GPU sync) every N steps
    progress: bool = True  # tqdm bar (the per-epoch log line is written either way)
    plots: bool = True  # curves.png, val_panel.png
    panel_patches: NonNegativeInt = 8


@dataclass(frozen=True)
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
# dict <-> dataclass, checked


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls, include_extras=True)


def _describe(hint: Any) -> str:
    """What a field allows, in words: ``an integer >= 1``, ``one of unet, dynunet``, ``a list of numbers``."""
    if typing.get_origin(hint) is Annotated:
        base, *meta = typing.get_args(hint)
        bounds = " and ".join(str(m) for m in meta if isinstance(m, Range))
        return f"{_describe(base)} {bounds}".strip()
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return "one of " + ", ".join(map(str, args))
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _describe(a) for a in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_describe(args[0]).removeprefix('an ').removeprefix('a ')}s"
        return f"a list of {len(args)} values ({', '.join(_describe(a) for a in args)})"
    if origin is dict:
        return f"a mapping of {_describe(args[0])} to {_describe(args[1])}"
    return {bool: "true or false", int: "an integer", float: "a finite number", str: "a string (quote a number)"}.get(
        hint, str(hint))


def _fail(where: str, value: Any, hint: Any) -> ConfigError:
    return ConfigError(f"{where}: {value!r} is not valid; expected {_describe(hint)}")


def _scalar(value: Any, typ: Any, where: str) -> Any:
    """``value`` as ``typ`` (bool, int, float or str), converting only where that is lossless."""
    if typ is bool and isinstance(value, bool):
        return value
    if typ is int and not isinstance(value, bool):
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
            return int(value)
    if typ is float and not isinstance(value, bool):
        number = None
        if isinstance(value, (int, float)):
            number = float(value)
        elif isinstance(value, str):  # YAML 1.1 reads 3e-4 as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is not None and math.isfinite(number):
            return number
    if typ is str and isinstance(value, str):  # a number is not taken for a string: 1.10 would become '1.1'
        return value
    raise _fail(where, value, typ)


def _convert(value: Any, hint: Any, where: str) -> Any:
    """``value`` checked against (and converted to) the type ``hint``; ConfigError naming ``where`` otherwise."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Annotated and value is not None:  # a bounded scalar: the message names its bounds too
        try:
            out = _convert(value, args[0], where)
        except ConfigError:
            raise _fail(where, value, hint) from None
        for bound in (m for m in args[1:] if isinstance(m, Range)):
            if not bound.admits(out):
                raise _fail(where, value, hint)
        return out
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:
            return _convert(value, options[0], where)
    if value is None:
        raise ConfigError(f"{where}: null is not allowed; expected {_describe(hint)}")
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return from_dict(hint, value, where)
    if origin is Literal:
        if value in args:
            return value
        raise _fail(where, value, hint)
    if origin is tuple:
        items = list(value) if isinstance(value, (list, tuple)) else [value]
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], f"{where}[{i}]") for i, v in enumerate(items))
        if len(items) != len(args):
            raise _fail(where, value, hint)
        return tuple(_convert(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(items, args)))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return {_convert(k, args[0], f"{where} key {k!r}"): _convert(v, args[1], f"{where}.{k}")
                for k, v in value.items()}
    return _scalar(value, hint, where)


def from_dict(cls: type, data: dict[str, Any] | None, where: str = "config") -> Any:
    """Checked instance of dataclass ``cls`` from a (partial) nested dict; any mismatch raises ConfigError."""
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {data!r}")
    data = dict(data or {})
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        raise ConfigError(f"unknown config key {where + '.' if where != 'config' else ''}{unknown[0]}; "
                          f"valid keys{' of ' + where if where != 'config' else ''}: {', '.join(names)}")
    hints = _hints(cls)
    prefix = "" if where == "config" else f"{where}."
    kwargs = {k: _convert(v, hints[k], prefix + k) for k, v in data.items()}
    try:
        out = cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from exc
    return out


def check_config(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` when its sections agree with each other; ConfigError naming the keys otherwise."""
    m = cfg.model
    if len(m.strides) != len(m.channels) - 1:
        raise ConfigError(f"model.strides: {len(m.channels)} model.channels need {len(m.channels) - 1} strides, "
                          f"got {list(m.strides)}")
    if m.kernel_size % 2 == 0:
        raise ConfigError(f"model.kernel_size: {m.kernel_size} is not valid; expected an odd integer (same padding)")
    if m.name == "dynunet" and m.deep_supervision and not 1 <= m.deep_supr_num < len(m.strides):
        levels = len(m.strides) - 1
        allowed = f"expected 1..{levels} or" if levels else "expected"
        raise ConfigError(f"model.deep_supr_num: {m.deep_supr_num} is not valid; a DynUNet with {len(m.strides)} "
                          f"model.strides has {levels} decoder level(s) for auxiliary outputs: {allowed} "
                          f"model.deep_supervision=false")
    if cfg.loss.ce_pos_weight is not None and cfg.loss.name != "dicece":
        raise ConfigError(f"loss.ce_pos_weight: only the dicece loss has a cross-entropy term to weight, "
                          f"not {cfg.loss.name}")
    if cfg.optim.restart_epochs > 0 and cfg.optim.schedule != "cosine":
        raise ConfigError(f"optim.restart_epochs: warm restarts restart a cosine; optim.schedule is "
                          f"{cfg.optim.schedule!r} (set it to cosine, or restart_epochs to 0)")
    crop, size = cfg.augment.crop_size, cfg.data.train_size
    if crop is not None and size is not None and crop > size:
        raise ConfigError(f"augment.crop_size: {crop} is larger than the {size}^3 training patches (data.train_size)")
    s = cfg.split
    for key in ("train_subsets", "val_subsets", "test_subsets"):
        outside = sorted(set(getattr(s, key)) - set(LUNA16_SUBSETS))
        if outside:
            raise ConfigError(f"split.{key}: LUNA16 has subsets 0-9, not {', '.join(map(str, outside))}")
    if s.fold is not None and s.fold not in LUNA16_SUBSETS:
        raise ConfigError(f"split.fold: {s.fold!r} is not valid; expected one of 0-9")
    try:
        s.resolved()
    except ValueError as exc:
        raise ConfigError(f"split: {exc}") from exc
    return cfg


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


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (the later one would silently win)."""

    def construct_mapping(self, node, deep=False):
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} is given twice",
                                                        key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The raw nested dict of a ``.yaml``/``.yml`` or ``.toml`` file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: config file not found")
    try:
        if p.suffix.lower() == ".toml":
            import tomllib

            with open(p, "rb") as fh:
                data = tomllib.load(fh)
        else:
            data = yaml.load(p.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader) or {}
    except (yaml.YAMLError, ValueError) as exc:  # tomllib.TOMLDecodeError and UnicodeDecodeError are ValueErrors
        raise ConfigError(f"{p}: not a valid {'TOML' if p.suffix.lower() == '.toml' else 'YAML'} file: {exc}") from exc
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
    if isinstance(value, dict) and None in value.values() and re.search(r"[\w.]:[\w.]", raw):
        # YAML reads {48:1} as one key 2881 (base 60) with no value
        raise ConfigError(f"bad override {text!r}: write a mapping with a space after each colon, as "
                          f"{{48: 1, 64: 0}}")
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
                if _hints(cls)[k] is str and isinstance(value, (int, float)) and not isinstance(value, bool):
                    value = text.split("=", 1)[1].strip()  # a name as typed: 1.10 stays 1.10, 0755 stays 0755
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
    """Checked TrainConfig from an optional file plus ``--set`` overrides (defaults elsewhere)."""
    data = read_config_file(path) if path is not None else {}
    try:
        return check_config(from_dict(TrainConfig, apply_overrides(data, list(overrides or []))))
    except ConfigError as exc:
        if path is not None and _file_error(data) == str(exc):  # the file's own mistake: name the file
            raise ConfigError(f"{path}: {exc}") from exc
        raise


def _file_error(data: dict[str, Any]) -> str | None:
    """The error a config file's contents give without overrides, if any."""
    try:
        check_config(from_dict(TrainConfig, data))
    except ConfigError as exc:
        return str(exc)
    return None


def save_config(cfg: TrainConfig, path: str | Path) -> None:
    """Write the resolved config as YAML."""
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
