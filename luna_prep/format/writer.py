"""Writing a luna-patches store: arrays, shards, codecs and tables (the format is in format.py)."""

from __future__ import annotations

import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import numcodecs
import numpy as np
import pandas as pd
import zarr
from zarr.codecs import BloscCodec

from luna_prep.format.spec import (IMAGE_ARRAY, IMAGE_DTYPES, MASK_ARRAY, VOLUME_CHUNKS, VOLUME_IMAGE, VOLUME_LUNGS, array_path,
                     volume_path)


@dataclass(frozen=True)
class StorageConfig:
    """How patches are encoded on disk (defaults chosen by benchmarks/storage measurements)."""

    image_dtype: str = "uint8"
    codec: str = "lz4"  # a Blosc compressor name: lz4, zstd, lz4hc, zlib, blosclz
    clevel: int = 5
    shard_patches: int = 32  # patches per shard file along the patch axis

    def __post_init__(self):
        if self.image_dtype not in IMAGE_DTYPES:
            raise ValueError(f"image_dtype must be one of {IMAGE_DTYPES}, not {self.image_dtype!r}")
        if self.shard_patches < 1:
            raise ValueError("shard_patches must be >= 1")


def _compressor(cfg: StorageConfig, dtype: str) -> BloscCodec:
    shuffle = "bitshuffle" if np.dtype(dtype).itemsize == 1 else "shuffle"
    return BloscCodec(cname=cfg.codec, clevel=cfg.clevel, shuffle=shuffle)


def create_store(root: str | Path, attrs: dict, capacity: int, scales: tuple[int, ...], cfg: StorageConfig) -> zarr.Group:
    """A new store at ``root`` with empty image and mask arrays of ``capacity`` rows per scale."""
    group = zarr.open_group(str(root), mode="w", attributes=attrs)
    for s in scales:
        for name, dtype in ((IMAGE_ARRAY, cfg.image_dtype), (MASK_ARRAY, "uint8")):
            zarr.create_array(
                group.store,
                name=array_path(s, name),
                shape=(capacity, s, s, s),
                chunks=(1, s, s, s),
                shards=(cfg.shard_patches, s, s, s),
                dtype=dtype,
                compressors=_compressor(cfg, dtype),
                fill_value=0,
                dimension_names=("patch", "z", "y", "x"),
            )
    # every array's metadata in the root zarr.json: opening a remote store is one request
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
        return zarr.consolidate_metadata(group.store)


def write_rows(root: str | Path, scale: int, start: int, images: np.ndarray, masks: np.ndarray,
               cfg: StorageConfig) -> None:
    """Write patches into rows [start, start + n) of one scale: exactly one shard of each array,
    owned by the caller (``start`` on a shard boundary, n <= shard_patches)."""
    write_shard(root, array_path(scale, IMAGE_ARRAY), start, images, cfg)
    write_shard(root, array_path(scale, MASK_ARRAY), start, masks, cfg)


def write_shard(root: str | Path, path: str, start: int, patches: np.ndarray, cfg: StorageConfig) -> None:
    """Encode one shard file of a luna-patches array directly, as zarr's sharding codec lays it out.

    Chunks (one patch each) are Blosc-compressed back to back, then the index of (offset, nbytes)
    uint64 pairs and its crc32c; all-zero chunks are not stored (index entry 2^64-1), and an
    all-empty shard is no file at all, as zarr does by default. Going through zarr-python cost
    ~1 ms per chunk on top of the compression (0.8 s of a full-size scan's 6 s). The file is
    written to a temporary name and renamed, so a killed build never leaves a truncated shard.
    """
    n_slots = cfg.shard_patches
    if start % n_slots or len(patches) > n_slots:
        raise ValueError(f"{path}: rows {start}..{start + len(patches)} are not within one shard of {n_slots}")
    codec = numcodecs.Blosc(cname=cfg.codec, clevel=cfg.clevel, blocksize=0,
                            shuffle=numcodecs.Blosc.BITSHUFFLE if patches.dtype.itemsize == 1 else numcodecs.Blosc.SHUFFLE)
    index = np.full((n_slots, 2), np.iinfo(np.uint64).max, dtype="<u8")
    parts, offset = [], 0
    for k, patch in enumerate(patches):
        if not patch.any():
            continue
        blob = codec.encode(np.ascontiguousarray(patch, dtype=patch.dtype.newbyteorder("<")))
        index[k] = (offset, len(blob))
        parts.append(blob)
        offset += len(blob)
    target = Path(root) / path / "c" / str(start // n_slots) / "0" / "0" / "0"
    if not parts:
        target.unlink(missing_ok=True)
        return
    parts.append(bytes(numcodecs.CRC32C().encode(index.tobytes())))
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.writelines(parts)
    os.replace(tmp, target)


def write_volume(group: zarr.Group, seriesuid: str, image: np.ndarray, lungs: np.ndarray, attrs: dict,
                 cfg: StorageConfig) -> None:
    """Write a scan's whole resampled image and lung mask (replacing any earlier ones)."""
    for name, data in ((VOLUME_IMAGE, image), (VOLUME_LUNGS, lungs.astype(np.uint8))):
        arr = zarr.create_array(
            group.store, name=volume_path(seriesuid, name), shape=data.shape, dtype=data.dtype,
            chunks=tuple(min(c, n) for c, n in zip(VOLUME_CHUNKS, data.shape)),
            compressors=_compressor(cfg, str(data.dtype)), fill_value=0, overwrite=True,
            dimension_names=("z", "y", "x"), attributes=attrs if name == VOLUME_IMAGE else {},
        )
        arr[...] = data


def clear_rows(root: str | Path, scales: tuple[int, ...], first: int, count: int, shard_patches: int) -> None:
    """Delete the shard files of rows [first, first + count) so a redone scan starts clean.

    A build killed mid-write can leave a truncated shard; zarr would read it back when the scan
    is redone. Rows of one scan own whole shards, so removing them touches no other scan.
    """
    if count <= 0:
        return
    shards = range(first // shard_patches, (first + count - 1) // shard_patches + 1)
    for s in scales:
        for name in (IMAGE_ARRAY, MASK_ARRAY):
            base = Path(root) / array_path(s, name) / "c"
            for k in shards:
                shard = base / str(k)
                if shard.exists():
                    shutil.rmtree(shard)


def write_table(df: pd.DataFrame, path: str | Path) -> None:
    """Write a parquet table atomically (a temporary file, then a rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    df.to_parquet(tmp, index=False)
    os.replace(tmp, path)
