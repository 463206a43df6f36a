"""The luna-patches dataset format, version 2 (version 1 still read): the contract between luna-prep and its readers.

Everything a reader or a writer needs to agree on lives here: names, paths, attributes, dtypes,
manifest and scans table columns, and how images are encoded. The reader is
:mod:`luna_prep.format.reader`, the writer :mod:`luna_prep.format.writer`; ``docs/format.md``
documents the same contract for users' own code.

Layout of a store (a Zarr v3 group)::

    STORE/zarr.json                 root attributes (see ROOT_ATTRIBUTES)
    STORE/patches/<s>/image         (N, s, s, s) float16 in [0, 1] or uint8 = round(255 * value)
    STORE/patches/<s>/mask          (N, s, s, s) uint8 0/1
    STORE/manifest.parquet          one row per stored patch (MANIFEST_COLUMNS)
    STORE/scans.parquet             one row per scan attempted (SCANS_COLUMNS)

Axes are (patch, z, y, x) with identity orientation: a voxel offset (dz, dy, dx) from a patch's
centre voxel [s//2, s//2, s//2] is (dz, dy, dx) * spacing_mm in world (z, y, x).
A sample (one centre) has one patch in every scale, at the same row ``index`` of every scale's
arrays; rows no sample points at (the tail of a scan's shard, or a failed scan's range) are holes
that no manifest row references.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from luna_prep.errors import LunaError

FORMAT_NAME = "luna-patches"
FORMAT_VERSION = 2  # v2: every stored chunk (patches and volumes) ends with a crc32c of its payload
READABLE_VERSIONS = (1, 2)  # v1: the same layout without the chunk checksums

ROOT_METADATA = "zarr.json"  # the root group's metadata: attributes and every array's consolidated metadata
PATCHES_GROUP = "patches"
IMAGE_ARRAY = "image"
MASK_ARRAY = "mask"
MANIFEST_FILE = "manifest.parquet"
SCANS_FILE = "scans.parquet"
BUILD_DIR = "_build"  # resume bookkeeping of luna-prep build; not part of the data

VOLUMES_GROUP = "volumes"  # optional (luna-prep build --volumes): whole resampled scans
VOLUME_IMAGE = "image"  # (Z, Y, X) in the store's image_dtype, identity orientation
VOLUME_LUNGS = "lungs"  # (Z, Y, X) uint8 0/1 lung mask
VOLUME_CHUNKS = (64, 64, 64)

KINDS = ("nodule", "random", "candidate")
IMAGE_DTYPES = ("float16", "uint8")
UINT8_FULL_SCALE = 255  # a uint8 image stores round(255 * intensity); float16 stores the intensity

# Root attributes every store carries.
ROOT_ATTRIBUTES = (
    "format",  # "luna-patches"
    "format_version",  # 2 (1: stores written before chunk checksums)
    "spacing_mm",  # isotropic voxel size of every patch
    "hu_window",  # [low, high]: HU clipped to this window, then scaled to [0, 1]
    "scales",  # patch edge lengths in voxels, e.g. [48, 64, 96]
    "image_dtype",  # "float16" or "uint8"
    "shard_patches",  # patches per shard along the patch axis
    "capacity",  # N, rows of every scale's arrays
    "build_config",  # the full build configuration
    "config_hash",  # sha256 of build_config (and the inputs' checksums)
    "software_version",  # luna-prep version that wrote the store
)

MANIFEST_COLUMNS: dict[str, str] = {
    "sample_id": "int64",  # one centre; shared by its patches at every scale
    "seriesuid": "string",
    "subset": "int16",  # LUNA16 subset folder number
    "scale": "int16",  # patch edge in voxels
    "index": "int64",  # row in patches/<scale>/image and mask
    "kind": "string",  # nodule | random | candidate
    "center_x": "float64",  # world mm of voxel [s//2, s//2, s//2]
    "center_y": "float64",
    "center_z": "float64",
    "fg_voxels": "int64",  # mask voxels of the patch
    "annotation_index": "int64",  # row of annotations.csv of the centred nodule, -1 otherwise
    "diameter_mm": "float32",  # of the centred nodule, NaN otherwise
    "mask_source": "string",  # what the mask was drawn from: sphere | lidc | label | mixed | none (no nodule)
}

MASK_SOURCES = ("sphere", "lidc", "label", "mixed", "none")

SCANS_COLUMNS: dict[str, str] = {
    "seriesuid": "string",
    "subset": "int16",
    "status": "string",  # ok | failed
    "error": "string",  # empty when ok
    "source_path": "string",
    "original_size_xyz": "object",  # list[int]
    "original_spacing_xyz": "object",  # list[float]
    "original_origin_xyz": "object",  # list[float]
    "original_direction": "object",  # list[float], 9 values row-major
    "resampled_shape_zyx": "object",  # list[int]
    "resampled_origin_xyz": "object",  # list[float]; resampled direction is the identity
    "n_nodule": "int64",  # samples (centres) of each kind
    "n_random": "int64",
    "n_candidate": "int64",
    "n_lidc_masks": "int64",  # nodules drawn from LIDC readers' contours (--masks lidc)
    "n_sphere_masks": "int64",  # nodules drawn as spheres of diameter_mm (the default, or no contours)
    "first_index": "int64",  # first row of the scan's range in the arrays
    "seconds": "float64",
}


class FormatError(LunaError, ValueError):
    """A store that does not follow the luna-patches format."""


def array_path(scale: int, name: str) -> str:
    """Path of an array inside the store, e.g. ``patches/64/image``."""
    return f"{PATCHES_GROUP}/{int(scale)}/{name}"


def volume_path(seriesuid: str, name: str) -> str:
    """Path of a whole-scan array, e.g. ``volumes/<seriesuid>/image``."""
    return f"{VOLUMES_GROUP}/{seriesuid}/{name}"


def _check_dtype(image_dtype: str) -> None:
    if image_dtype not in IMAGE_DTYPES:
        raise FormatError(f"unknown image_dtype {image_dtype!r}; expected one of {IMAGE_DTYPES}")


def full_scale(image_dtype: str) -> float:
    """The stored value of intensity 1.0: 255 for uint8, 1 for float16 (stored values lie in [0, this])."""
    _check_dtype(image_dtype)
    return float(UINT8_FULL_SCALE) if image_dtype == "uint8" else 1.0


def encode_image(intensity: np.ndarray, image_dtype: str) -> np.ndarray:
    """Intensities in [0, 1] as stored: uint8 round(255 * value) or float16 (values clipped to [0, 1])."""
    top = full_scale(image_dtype)
    scaled = np.clip(np.asarray(intensity, dtype=np.float64) * top, 0.0, top)
    return (np.rint(scaled) if image_dtype == "uint8" else scaled).astype(image_dtype)


def decode_image(stored: np.ndarray, image_dtype: str) -> np.ndarray:
    """Stored image values back to float32 intensities in [0, 1]."""
    if image_dtype == "float16" or stored.dtype == np.float16:
        return stored.astype(np.float32)
    _check_dtype(image_dtype)
    return stored.astype(np.float32) * np.float32(1.0 / UINT8_FULL_SCALE)


def empty_manifest() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in MANIFEST_COLUMNS.items()})


# What a scan record holds when the scan never reported one (its worker died): no geometry, no samples.
_SCAN_DEFAULTS = {c: 0 for c, t in SCANS_COLUMNS.items() if t == "int64"} | {"seconds": float("nan")}


def scans_table(records: list[dict[str, Any]]) -> pd.DataFrame:
    """The scans table of ``records`` (one dict per scan) in SCANS_COLUMNS order and dtypes."""
    rows = [_SCAN_DEFAULTS | r for r in records]
    df = pd.DataFrame(rows, columns=list(SCANS_COLUMNS)) if rows else pd.DataFrame(columns=list(SCANS_COLUMNS))
    return conform(df, SCANS_COLUMNS, SCANS_FILE)


def conform(df: pd.DataFrame, columns: dict[str, str], what: str) -> pd.DataFrame:
    """Return ``df`` with exactly ``columns`` in order and dtypes; raise if one is missing."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise FormatError(f"{what}: missing columns {missing}")
    out = df[list(columns)].copy()
    for col, dtype in columns.items():
        if dtype != "object":
            out[col] = out[col].astype(dtype)
    return out


@dataclass(frozen=True)
class StoreAttributes:
    """Typed view of a store's root attributes."""

    spacing_mm: float
    hu_window: tuple[float, float]
    scales: tuple[int, ...]
    image_dtype: str
    shard_patches: int
    capacity: int
    config_hash: str
    software_version: str
    build_config: dict
    format_version: int = FORMAT_VERSION

    @property
    def chunk_checksums(self) -> bool:
        """Whether every stored chunk ends with a crc32c (format v2 on); readers require it then."""
        return self.format_version >= 2

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any], where: str = "store") -> StoreAttributes:
        if attrs.get("format") != FORMAT_NAME:
            raise FormatError(f"{where}: not a {FORMAT_NAME} store (format={attrs.get('format')!r})")
        version = attrs.get("format_version")
        if isinstance(version, bool) or version not in READABLE_VERSIONS:
            raise FormatError(
                f"{where}: format_version {version!r}, this software reads {', '.join(map(str, READABLE_VERSIONS))}"
            )
        missing = [k for k in ROOT_ATTRIBUTES if k not in attrs]
        if missing:
            raise FormatError(f"{where}: root attributes missing {missing}")
        if attrs["image_dtype"] not in IMAGE_DTYPES:
            raise FormatError(f"{where}: image_dtype {attrs['image_dtype']!r} not in {IMAGE_DTYPES}")
        return cls(
            spacing_mm=float(attrs["spacing_mm"]),
            hu_window=(float(attrs["hu_window"][0]), float(attrs["hu_window"][1])),
            scales=tuple(int(s) for s in attrs["scales"]),
            image_dtype=str(attrs["image_dtype"]),
            shard_patches=int(attrs["shard_patches"]),
            capacity=int(attrs["capacity"]),
            config_hash=str(attrs["config_hash"]),
            software_version=str(attrs["software_version"]),
            build_config=dict(attrs["build_config"]),
            format_version=int(version),
        )

    def to_attrs(self) -> dict[str, Any]:
        """The root attributes as a store holds them (JSON types, ROOT_ATTRIBUTES order); inverse of from_attrs."""
        values = {
            "format": FORMAT_NAME, "format_version": self.format_version, "spacing_mm": self.spacing_mm,
            "hu_window": list(self.hu_window), "scales": list(self.scales), "image_dtype": self.image_dtype,
            "shard_patches": self.shard_patches, "capacity": self.capacity, "build_config": self.build_config,
            "config_hash": self.config_hash, "software_version": self.software_version,
        }
        return {k: values[k] for k in ROOT_ATTRIBUTES}


@dataclass(frozen=True)
class VolumeAttributes:
    """Attributes of a whole-scan ``volumes/<seriesuid>/image`` array: world = origin + (x, y, z) * spacing."""

    origin_xyz: tuple[float, float, float]
    spacing_mm: float
    subset: int
    original: dict  # the source scan's geometry (origin, spacing, direction, size; ITK x, y, z)

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any]) -> VolumeAttributes:
        return cls(origin_xyz=tuple(float(v) for v in attrs["origin_xyz"]), spacing_mm=float(attrs["spacing_mm"]),
                   subset=int(attrs["subset"]), original=dict(attrs["original"]))

    def to_attrs(self) -> dict[str, Any]:
        return {"origin_xyz": list(self.origin_xyz), "spacing_mm": self.spacing_mm, "subset": self.subset,
                "original": self.original}


def root_attributes(meta: dict[str, Any], where: str) -> StoreAttributes:
    """The attributes of a store whose root ``zarr.json`` holds ``meta``; FormatError if it is not one."""
    if meta.get("zarr_format") != 3 or meta.get("node_type") != "group":
        raise FormatError(f"{where}: {ROOT_METADATA} is not a Zarr v3 group")
    return StoreAttributes.from_attrs(meta.get("attributes", {}), where=where)


def consolidated_arrays(meta: dict[str, Any]) -> dict[str, dict]:
    """{path: metadata} of the nodes consolidated into a root ``zarr.json``."""
    return (meta.get("consolidated_metadata") or {}).get("metadata") or {}


DEFAULT_STORE = "data/patches.zarr"  # where `luna-prep build` writes and `luna-train run` reads by default
