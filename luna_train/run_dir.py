"""A run directory: the one place that knows its files, and the model's preprocessing spec.

A finished run directory is a model that travels: ``config.yaml`` (the resolved config, dataset as an
absolute path or URL), ``summary.json``, the checkpoints ``best.pt`` / ``last.pt``,
``preprocessing.json`` (how a raw scan becomes the model's input: :class:`PreprocessingSpec`) and,
once ``luna-train evaluate --postprocess`` has tuned it, ``postprocess.json`` (the frozen
post-processing). ``predict`` needs nothing else; ``detect`` also needs a store built with volumes.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from luna_prep.errors import InputError
from luna_prep.format.location import is_url
from luna_train.inference.postprocess import PostprocessConfig
from luna_train.training.checkpoint import BEST, LAST

CONFIG_FILE = "config.yaml"
SUMMARY_FILE = "summary.json"
PREPROCESSING_FILE = "preprocessing.json"
POSTPROCESS_FILE = "postprocess.json"
CHECKPOINT_FILES = (BEST, LAST)
# the detection defaults when a run has no tuned post-processing (voxels of the store's grid)
DEFAULT_POSTPROCESS = PostprocessConfig(threshold=0.5, min_size=3)


def absolute_location(location: str | Path) -> str:
    """A URL as is; a local path made absolute (so a run's records hold from any working directory)."""
    text = str(location)
    return text if is_url(text) else str(Path(text).expanduser().resolve())


@dataclass(frozen=True)
class PreprocessingSpec:
    """How a raw scan becomes the model's input (the store's build settings and the run's patch geometry).

    The scan is resampled to ``spacing_mm`` isotropic voxels, clipped to ``hu_window`` and scaled to
    [0, 1] (quantized as ``image_dtype`` in the store); the model sees windows of ``eval_scale``
    store voxels resized to ``input_size`` (None: not resized), i.e. voxels of
    ``spacing_mm * eval_scale / input_size`` mm.
    """

    spacing_mm: float
    hu_window: tuple[float, float]
    image_dtype: str
    scales: tuple[int, ...]
    eval_scale: int
    input_size: int | None

    @property
    def model_voxel(self) -> float:
        """Store voxels per model voxel."""
        return 1.0 if self.input_size is None else self.eval_scale / self.input_size

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {**d, "hu_window": list(self.hu_window), "scales": list(self.scales),
                "model_voxel_mm": self.spacing_mm * self.model_voxel}

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = PREPROCESSING_FILE) -> PreprocessingSpec:
        try:
            return cls(spacing_mm=float(d["spacing_mm"]),
                       hu_window=(float(d["hu_window"][0]), float(d["hu_window"][1])),
                       image_dtype=str(d["image_dtype"]), scales=tuple(int(s) for s in d["scales"]),
                       eval_scale=int(d["eval_scale"]),
                       input_size=None if d["input_size"] is None else int(d["input_size"]))
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise InputError(f"{where}: not a preprocessing spec ({type(exc).__name__}: {exc})") from None

    @classmethod
    def from_store(cls, attrs, eval_scale: int, input_size: int | None) -> PreprocessingSpec:
        """The spec of a model trained on a store with :class:`~luna_prep.format.spec.StoreAttributes` ``attrs``."""
        return cls(spacing_mm=attrs.spacing_mm, hu_window=tuple(attrs.hu_window), image_dtype=attrs.image_dtype,
                   scales=tuple(attrs.scales), eval_scale=int(eval_scale), input_size=input_size)


# what a store's build fixes of a model's input (the rest of a spec is the run's patch geometry)
BUILD_FIELDS = ("spacing_mm", "hu_window", "image_dtype")


def _plain(value: Any) -> str:
    """A spec value as written in a config: 1.5, [-1000.0, 400.0], uint8."""
    return str(list(value)) if isinstance(value, tuple) else str(value)


def preprocessing_changes(old: PreprocessingSpec, new: PreprocessingSpec) -> list[str]:
    """``hu_window [-1000.0, 400.0] -> [-1200.0, 600.0]`` for each build setting ``new`` changes."""
    return [f"{k} {_plain(getattr(old, k))} -> {_plain(getattr(new, k))}" for k in BUILD_FIELDS
            if getattr(old, k) != getattr(new, k)]


def refuse_other_preprocessing(model: PreprocessingSpec, model_from: str | Path, store: PreprocessingSpec,
                               store_from: str | Path) -> None:
    """An InputError naming both and each changed setting when ``store`` was built otherwise than ``model``
    was trained on: the model would see scans resampled, windowed or quantized other than it learned."""
    changes = preprocessing_changes(model, store)
    if changes:
        raise InputError(f"{store_from}: built with other preprocessing than the model's ({model_from}): "
                         f"{'; '.join(changes)}; use a store built with the model's settings")


def refuse_other_store_on_resume(run_dir: str | Path, trained_on: str, dataset: str) -> None:
    """``--resume`` with the store ``dataset``: refuse it when built otherwise than the run's model, as its
    ``preprocessing.json`` records or, without one, as the store ``trained_on`` (the checkpoint's
    ``data.dataset``) is built; nothing to compare with when that store no longer opens."""
    from luna_prep.sharing.cards import open_dataset

    run = RunDir(run_dir)
    if run.file(PREPROCESSING_FILE).is_file():
        run.preprocessing(dataset)  # refuses a store built otherwise
        return
    if trained_on == dataset:
        return
    try:
        old = open_dataset(trained_on).attrs
    except (OSError, ValueError):  # moved away: the new location is all there is
        return
    refuse_other_preprocessing(PreprocessingSpec.from_store(old, 1, None), trained_on,
                               spec_of_store(dataset, 1, None), dataset)


def spec_of_store(dataset: str, eval_scale: int, input_size: int | None) -> PreprocessingSpec:
    """The spec of a model trained on the store at ``dataset`` (opens the store)."""
    from luna_prep.sharing.cards import open_dataset

    return PreprocessingSpec.from_store(open_dataset(dataset).attrs, eval_scale, input_size)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


@dataclass(frozen=True)
class RunDir:
    """The files of one run directory."""

    path: Path

    def __init__(self, path: str | Path):
        object.__setattr__(self, "path", Path(path))

    def file(self, name: str) -> Path:
        return self.path / name

    def config_dict(self) -> dict[str, Any]:
        """``config.yaml`` as a plain dict (empty when the run has none)."""
        f = self.file(CONFIG_FILE)
        return yaml.safe_load(f.read_text()) or {} if f.is_file() else {}

    def dataset(self, recorded: str | None = None) -> str:
        """The run's store as a usable location: ``recorded`` (default: config.yaml's ``data.dataset``).

        Runs written before datasets were recorded absolutely hold a path relative to where training
        ran; it is tried from the working directory, then from each folder above the run directory.
        """
        text = recorded if recorded is not None else str(self.config_dict().get("data", {}).get("dataset", ""))
        if not text:
            raise InputError(f"{self.file(CONFIG_FILE)}: no data.dataset recorded; pass --dataset")
        if is_url(text) or Path(text).is_absolute() or Path(text).exists():
            return text
        for base in self.path.resolve().parents:
            if (base / text).exists():
                return str(base / text)
        return text

    def write_preprocessing(self, spec: PreprocessingSpec) -> None:
        _write_json(self.file(PREPROCESSING_FILE), spec.to_dict())

    def preprocessing(self, dataset: str | None = None, eval_scale: int | None = None,
                      input_size: int | None = None) -> PreprocessingSpec:
        """``preprocessing.json``; for older runs without it, the spec of the store (``dataset`` or the run's).
        A ``dataset`` built otherwise than ``preprocessing.json`` records is refused (``predict --dataset``
        took its spec silently).

        ``eval_scale`` / ``input_size`` are the model's (needed only for that fallback).
        """
        f = self.file(PREPROCESSING_FILE)
        if f.is_file():
            try:
                spec = PreprocessingSpec.from_dict(json.loads(f.read_text()), str(f))
            except json.JSONDecodeError as exc:
                raise InputError(f"{f}: not JSON ({exc})") from None
            if dataset is not None:
                refuse_other_preprocessing(spec, f, spec_of_store(dataset, spec.eval_scale, spec.input_size), dataset)
            return spec
        store = dataset or self.dataset()
        data = self.config_dict().get("data", {})
        scale = eval_scale if eval_scale is not None else data.get("eval_scale")
        size = input_size if input_size is not None or eval_scale is not None else data.get("train_size")
        try:
            return spec_of_store(store, int(scale), size)
        except (OSError, ValueError, TypeError) as exc:
            raise InputError(f"{self.path}: no {PREPROCESSING_FILE} (the run predates it), and its store {store} "
                             f"cannot be opened to learn the spacing, HU window and image dtype ({exc}); pass "
                             f"--dataset STORE the model was trained on") from None

    def refuse_other_store(self, store: str, attrs) -> None:
        """Refuse the store at ``store`` (its :class:`~luna_prep.format.spec.StoreAttributes` ``attrs``) when it was
        built otherwise than ``preprocessing.json`` records; runs older than that file are not checked."""
        f = self.file(PREPROCESSING_FILE)
        if f.is_file():
            spec = self.preprocessing()
            refuse_other_preprocessing(spec, f, PreprocessingSpec.from_store(attrs, spec.eval_scale, spec.input_size),
                                       store)

    def write_postprocess(self, cfg: PostprocessConfig, provenance: dict[str, Any]) -> Path:
        """Freeze ``cfg`` (tuned at the model's voxel size) into ``postprocess.json``, with where it came from."""
        f = self.file(POSTPROCESS_FILE)
        _write_json(f, {**asdict(cfg), **provenance})
        return f

    def postprocess_tuned_for(self) -> dict[str, Any]:
        """What ``postprocess.json`` was tuned for: ``checkpoint`` (``best.pt``/``last.pt``) and ``tta``, where
        recorded ({} without the file or the record)."""
        f = self.file(POSTPROCESS_FILE)
        try:
            d = json.loads(f.read_text()) if f.is_file() else {}
        except json.JSONDecodeError:
            return {}
        return {k: d[k] for k in ("checkpoint", "tta") if k in d} if isinstance(d, dict) else {}

    def postprocess(self) -> PostprocessConfig | None:
        """The frozen post-processing of ``postprocess.json`` (in model voxels), or None when not tuned."""
        f = self.file(POSTPROCESS_FILE)
        if not f.is_file():
            return None
        try:
            d = json.loads(f.read_text())
            high = d["hysteresis_high"]
            return PostprocessConfig(threshold=float(d["threshold"]), min_size=int(d["min_size"]),
                                     closing_radius=int(d["closing_radius"]),
                                     hysteresis_high=None if high is None else float(high))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise InputError(f"{f}: not a post-processing config ({type(exc).__name__}: {exc})") from None
