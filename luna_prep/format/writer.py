"""Writing a luna-patches store: arrays, shards, codecs and tables (the contract: :mod:`luna_prep.format.spec`)."""

from __future__ import annotations

import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import numcodecs
import numpy as np
import pandas as pd
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec

from luna_prep.files import atomic_path, write_bytes_atomic
from luna_prep.format.codecs import blosc_on_this_thread
from luna_prep.format.shard_layout import ShardIndex, shard_key, shard_prefix
from luna_prep.format.spec import (
    IMAGE_ARRAY,
    IMAGE_DTYPES,
    MASK_ARRAY,
    VOLUME_CHUNKS,
    VOLUME_IMAGE,
    VOLUME_LUNGS,
    StoreAttributes,
    array_path,
    volume_path,
)


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


_CRC = numcodecs.CRC32C()


def _compressor(cfg: StorageConfig, dtype: str) -> tuple[BloscCodec, Crc32cCodec]:
    """The chunk codecs after ``bytes``: Blosc, then the crc32c every v2 chunk ends with."""
    shuffle = "bitshuffle" if np.dtype(dtype).itemsize == 1 else "shuffle"
    return BloscCodec(cname=cfg.codec, clevel=cfg.clevel, shuffle=shuffle), Crc32cCodec()


def create_store(root: str | Path, attrs: StoreAttributes, cfg: StorageConfig) -> zarr.Group:
    """A new store at ``root`` with root attributes ``attrs`` and empty image and mask arrays of
    ``attrs.capacity`` rows at each of ``attrs.scales``, encoded as ``cfg`` says."""
    if (attrs.image_dtype, attrs.shard_patches) != (cfg.image_dtype, cfg.shard_patches):
        raise ValueError(f"attributes say {attrs.image_dtype} in shards of {attrs.shard_patches}, "
                         f"storage says {cfg.image_dtype} in shards of {cfg.shard_patches}")
    group = zarr.open_group(str(root), mode="w", attributes=attrs.to_attrs())
    for s in attrs.scales:
        for name, dtype in ((IMAGE_ARRAY, cfg.image_dtype), (MASK_ARRAY, "uint8")):
            zarr.create_array(
                group.store,
                name=array_path(s, name),
                shape=(attrs.capacity, s, s, s),
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
    """Encode one shard file of a luna-patches array directly, in :mod:`~luna_prep.format.shard_layout`.

    Chunks (one patch each) are Blosc-compressed and end with the crc32c of the compressed bytes
    (zarr's ``crc32c`` codec: the same bytes zarr-python writes for the array's metadata); all-zero
    chunks are not stored, and an all-empty shard is no file at all, as zarr does by default. Going
    through zarr-python cost ~1 ms per chunk on top of the compression (0.8 s of a full-size scan's
    6 s). The file is written to a temporary name and renamed, so a killed build never leaves a
    truncated shard.
    """
    layout = ShardIndex(cfg.shard_patches)
    if start % layout.n_chunks or len(patches) > layout.n_chunks:
        raise ValueError(f"{path}: rows {start}..{start + len(patches)} are not within one shard of {layout.n_chunks}")
    codec = numcodecs.Blosc(cname=cfg.codec, clevel=cfg.clevel, blocksize=0,
                            shuffle=(numcodecs.Blosc.BITSHUFFLE if patches.dtype.itemsize == 1
                                     else numcodecs.Blosc.SHUFFLE))
    with blosc_on_this_thread():
        chunks = [bytes(_CRC.encode(codec.encode(np.ascontiguousarray(p, dtype=p.dtype.newbyteorder("<")))))
                  if p.any() else None for p in patches]
    parts = layout.pack(chunks)
    target = Path(root) / shard_key(path, start // layout.n_chunks)
    if not parts:
        target.unlink(missing_ok=True)
        return
    write_bytes_atomic(target, parts)


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
            for k in shards:
                folder = Path(root) / shard_prefix(array_path(s, name), k)  # the shard and any temporary file
                if folder.exists():
                    shutil.rmtree(folder)


def write_table(df: pd.DataFrame, path: str | Path) -> None:
    """Write a parquet table atomically (a temporary file, then a rename), with a crc32 on every page
    (readers verify them: a changed byte in the data is an error, not a changed value)."""
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False, write_page_checksum=True)
