"""Reading a luna-patches store: :class:`PatchStore` (attributes, tables, patches) and whole-scan volumes."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from luna_prep.format.location import StoreLocation
from luna_prep.format.pins import PinnedLocation, StorePins
from luna_prep.format.shards import ShardedPatchArray, read_many
from luna_prep.format.spec import (
    IMAGE_ARRAY,
    MANIFEST_COLUMNS,
    MANIFEST_FILE,
    MASK_ARRAY,
    ROOT_METADATA,
    SCANS_COLUMNS,
    SCANS_FILE,
    VOLUME_IMAGE,
    VOLUME_LUNGS,
    FormatError,
    VolumeAttributes,
    array_path,
    conform,
    consolidated_arrays,
    decode_image,
    root_attributes,
    volume_path,
)
from luna_prep.format.volumes import open_volume


@dataclass(frozen=True)
class ScanVolume:
    """A scan's resampled volume as stored with ``--volumes``; world = origin + (x, y, z) * spacing."""

    seriesuid: str
    image: np.ndarray  # float32 in [0, 1], (z, y, x)
    lungs: np.ndarray  # bool, (z, y, x)
    origin_xyz: tuple[float, float, float]
    spacing_mm: float
    original: dict  # the source scan's geometry: origin, spacing, direction, size (ITK x, y, z)

    def world_to_zyx(self, world_xyz) -> np.ndarray:
        return ((np.asarray(world_xyz, dtype=np.float64) - np.asarray(self.origin_xyz)) / self.spacing_mm)[..., ::-1]

    def zyx_to_world(self, zyx) -> np.ndarray:
        return np.asarray(self.origin_xyz) + np.asarray(zyx, dtype=np.float64)[..., ::-1] * self.spacing_mm



class PatchStore:
    """Read access to a luna-patches store: attributes, manifest, scans table and patches.

    ``root`` is a folder, a ``.zip`` or a URL (``file://``, ``http(s)://``, ``s3://``, ``gs://``;
    see :mod:`luna_prep.format.location`). Opening reads one file (the root ``zarr.json``, which holds the
    consolidated metadata of every array); tables and arrays load on first use. Patches are read
    through :class:`luna_prep.format.shards.ShardedPatchArray` (one ranged read per patch). Picklable:
    DataLoader workers reopen the store in their own process.

    ``pins`` (what a dataset card pinned; see :func:`luna_prep.sharing.cards.open_dataset`) make the
    store read through :class:`~luna_prep.format.pins.PinnedLocation`, so it cannot change under the
    reader (the pins travel with the pickle).
    """

    def __init__(self, root: str | Path, pins: StorePins | None = None):
        if str(root).lower().endswith(".json"):
            raise FormatError(f"{root}: a dataset card, not a store; open it with "
                              "luna_prep.sharing.cards.open_dataset, which checks it and pins the store")
        self.root = str(root)
        self.pins = pins
        location = StoreLocation.open(self.root)
        self.location = location if pins is None else PinnedLocation(location, pins)
        try:
            meta = json.loads(self.location.read(ROOT_METADATA))
        except FileNotFoundError as exc:
            raise FormatError(f"{self.root}: no {ROOT_METADATA}, not a Zarr v3 store") from exc
        except ValueError as exc:
            raise FormatError(f"{self.root}/{ROOT_METADATA}: not valid JSON ({exc})") from exc
        try:
            self.attrs = root_attributes(meta, f"{self.root}/{ROOT_METADATA}")
            self._array_meta = consolidated_arrays(meta)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
            if isinstance(exc, FormatError):
                raise
            raise FormatError(f"{self.root}/{ROOT_METADATA}: malformed ({type(exc).__name__}: {exc})") from exc
        self._arrays: dict[str, object] = {}

    def __getstate__(self):
        return {"root": self.root, "pins": self.pins}

    def __setstate__(self, state):
        self.__init__(state["root"], state.get("pins"))

    def _read_table(self, name: str) -> pd.DataFrame:
        """A table of the store; its page checksums verified (tables written by v2 carry them)."""
        import pyarrow.parquet as pq

        data = self.location.read(name)
        try:
            return pq.read_table(io.BytesIO(data), page_checksum_verification=True).to_pandas()
        except Exception as exc:
            raise FormatError(f"{self.root}/{name}: not a readable Parquet table "
                              f"({type(exc).__name__}: {exc})") from exc

    def _conformed(self, name: str, columns: dict[str, str]) -> pd.DataFrame:
        where = f"{self.root}/{name}"
        try:
            return conform(self._read_table(name), columns, where)
        except (TypeError, ValueError, OverflowError) as exc:
            if isinstance(exc, FormatError):
                raise
            raise FormatError(f"{where}: columns of the wrong type ({type(exc).__name__}: {exc})") from exc

    @cached_property
    def manifest(self) -> pd.DataFrame:
        return self._conformed(MANIFEST_FILE, MANIFEST_COLUMNS)

    @cached_property
    def scans(self) -> pd.DataFrame:
        return self._conformed(SCANS_FILE, SCANS_COLUMNS)

    def patches(self, scale: int, name: str):
        """The :class:`~luna_prep.format.shards.ShardedPatchArray` of ``image`` or ``mask`` at a scale."""
        path = array_path(scale, name)
        if path not in self._arrays:
            try:
                self._arrays[path] = ShardedPatchArray(self.location, path, self._array_meta.get(path),
                                                       require_checksum=self.attrs.chunk_checksums)
            except FormatError as exc:  # the array's metadata is the copy consolidated in the root zarr.json
                raise FormatError(f"{exc} (metadata read from {self.root}/{ROOT_METADATA})") from exc
            except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
                raise FormatError(f"{self.root}/{ROOT_METADATA}: malformed metadata of {path} "
                                  f"({type(exc).__name__}: {exc})") from exc
        return self._arrays[path]

    def _check_images(self, scale: int, rows) -> None:
        """FormatError when the image shard file of a row is missing while the row's mask is stored: a lost file
        (the writer leaves out only a shard of all-0 images), which would read as blank images under masks."""
        image, mask = self.patches(scale, IMAGE_ARRAY), self.patches(scale, MASK_ARRAY)
        for row in rows:
            if mask.is_stored(row) and not image.has_file(row):
                raise FormatError(f"{self.root}/{image.shard_key(int(row) // image.shard_len)}: missing, but the "
                                  f"mask of row {int(row)} is stored: the store is incomplete (fetch it again, or "
                                  "check it with luna-prep verify)")

    def read_stored(self, scale: int, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(image as stored (uint8 or float16), mask uint8) of one patch; decode with decode_image."""
        image, mask = self.patches(scale, IMAGE_ARRAY).read(index), self.patches(scale, MASK_ARRAY).read(index)
        self._check_images(scale, [index])
        return image, mask

    def read_stored_many(self, scale: int, indices: list[int],
                         out: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Stored images and masks of many patches of one scale, in one batch of ranged reads; with ``out``
        (image and mask batches, ``(len(indices), s, s, s)`` in the stored dtypes) decoded straight into them."""
        arrays = [self.patches(scale, IMAGE_ARRAY), self.patches(scale, MASK_ARRAY)]
        images, masks = read_many(arrays, list(indices), None if out is None else list(out))
        self._check_images(scale, indices)
        return images, masks

    def stored_dtypes(self, scale: int) -> tuple[np.dtype, np.dtype]:
        """Native-endian dtypes of the stored image and mask patches of ``scale``."""
        return tuple(self.patches(scale, name).dtype.newbyteorder("=") for name in (IMAGE_ARRAY, MASK_ARRAY))

    def read_patch(self, scale: int, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(image float32 in [0, 1], mask uint8) of one patch, each (s, s, s) in (z, y, x)."""
        stored, mask = self.read_stored(scale, index)
        return decode_image(stored, self.attrs.image_dtype), mask

    def has_volumes(self) -> bool:
        return bool(self.attrs.build_config.get("volumes"))

    def recorded_shape(self, seriesuid: str):
        """The scan's ``resampled_shape_zyx`` from the scans table, None when the scan is not there."""
        rows = self.scans[self.scans["seriesuid"] == seriesuid]
        return None if rows.empty else rows["resampled_shape_zyx"].iloc[0]

    def read_volume(self, seriesuid: str) -> ScanVolume:
        """The whole resampled scan, its lung mask and geometry (stores built with ``--volumes``).

        Each array's metadata is checked first (dtype, codecs, and its shape against the scans
        table: :mod:`luna_prep.format.volumes`); a bad one is a FormatError naming it, before any read.
        """
        shape = self.recorded_shape(seriesuid)
        arrays = []
        for name, dtype in ((VOLUME_IMAGE, self.attrs.image_dtype), (VOLUME_LUNGS, "uint8")):
            try:
                arrays.append(open_volume(self.location, volume_path(seriesuid, name), dtype, shape,
                                          self.attrs.chunk_checksums))
            except FileNotFoundError as exc:
                hint = "" if self.has_volumes() else " (the store was built without --volumes)"
                raise FormatError(f"{self.root}: no volume for {seriesuid}{hint}") from exc
        image, lungs = arrays
        try:
            attrs = VolumeAttributes.from_attrs(image.attributes)
        except (KeyError, TypeError, ValueError) as exc:
            raise FormatError(f"{self.root}/{image.path}: bad volume attributes ({type(exc).__name__}: {exc})") from exc
        return ScanVolume(
            seriesuid=seriesuid, image=decode_image(image.read(self.location), self.attrs.image_dtype),
            lungs=lungs.read(self.location) > 0, origin_xyz=attrs.origin_xyz, spacing_mm=attrs.spacing_mm,
            original=attrs.original,
        )

    def zarr_group(self):
        """The store as a read-only zarr group, for code that wants zarr arrays."""
        import zarr

        return zarr.open_group(self.location.zarr_store(), mode="r")

    def image_array(self, scale: int):
        """zarr array ``patches/<scale>/image`` (stored values, not decoded)."""
        return self.zarr_group()[array_path(scale, IMAGE_ARRAY)]

    def mask_array(self, scale: int):
        return self.zarr_group()[array_path(scale, MASK_ARRAY)]


