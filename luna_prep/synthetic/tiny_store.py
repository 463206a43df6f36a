"""A tiny luna-patches store of bright balls in noise, written straight through the storage API.

For unit tests of loaders, samplers and trainers, and for benchmarks that need a store in seconds
(``benchmarks/suite_stores.py``): no scans, no build, the format's own writer.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from luna_prep.format.spec import (
    MANIFEST_COLUMNS,
    MANIFEST_FILE,
    SCANS_FILE,
    StoreAttributes,
    conform,
    encode_image,
    scans_table,
)
from luna_prep.format.writer import StorageConfig, create_store, write_rows, write_table


def write_tiny_store(root, scales=(16, 24), n_scans=10, samples_per_scan=8, seed=0, image_dtype="uint8"):
    """A store of ``n_scans`` scans (subset = scan number % 10), half of each scan's samples nodules.

    Nodule patches hold a bright ball (radius 3-5 voxels) at the centre whose mask is the ball;
    negatives hold noise only. Small enough for unit tests of loaders, samplers and trainers.
    """
    rng = np.random.default_rng(seed)
    cfg = StorageConfig(image_dtype=image_dtype, shard_patches=8)
    per_scan = int(np.ceil(samples_per_scan / cfg.shard_patches)) * cfg.shard_patches
    capacity = n_scans * per_scan
    attrs = StoreAttributes(spacing_mm=1.0, hu_window=(-1000.0, 400.0), scales=tuple(scales), image_dtype=image_dtype,
                            shard_patches=cfg.shard_patches, capacity=capacity, config_hash="0" * 64,
                            software_version="test", build_config={"tiny": True})
    create_store(root, attrs, cfg)
    rows, scan_rows = [], []
    for k in range(n_scans):
        uid = f"1.2.3.{k}"
        first = k * per_scan
        kinds = ["nodule"] * (samples_per_scan // 2) + ["random", "candidate"] * (samples_per_scan // 4)
        kinds = kinds[:samples_per_scan]
        radii = rng.uniform(3, 5, size=samples_per_scan)
        for s in scales:
            grid = np.indices((s, s, s)) - s // 2
            dist = np.sqrt((grid ** 2).sum(axis=0))
            images, masks = [], []
            for j, kind in enumerate(kinds):
                img = rng.normal(0.15, 0.05, size=(s, s, s)).clip(0, 1)
                mask = np.zeros((s, s, s), np.uint8)
                if kind == "nodule":
                    mask = (dist <= radii[j]).astype(np.uint8)
                    img[mask > 0] = rng.normal(0.75, 0.05, size=int(mask.sum())).clip(0, 1)
                images.append(img)
                masks.append(mask)
            enc = encode_image(np.stack(images), image_dtype)
            stacked = np.stack(masks)
            for o in range(0, len(enc), cfg.shard_patches):  # write_rows takes one shard at a time
                write_rows(root, s, first + o, enc[o:o + cfg.shard_patches], stacked[o:o + cfg.shard_patches], cfg)
            for j, kind in enumerate(kinds):
                rows.append({
                    "sample_id": first + j, "seriesuid": uid, "subset": k % 10, "scale": s, "index": first + j,
                    "kind": kind, "center_x": float(j), "center_y": 0.0, "center_z": 0.0,
                    "fg_voxels": int(masks[j].sum()), "annotation_index": j if kind == "nodule" else -1,
                    "diameter_mm": 2 * radii[j] if kind == "nodule" else np.nan,
                    "mask_source": "sphere" if kind == "nodule" else "none",
                })
        scan_rows.append({"seriesuid": uid, "subset": k % 10, "status": "ok", "error": "", "first_index": first})
    write_table(conform(pd.DataFrame(rows), MANIFEST_COLUMNS, "tiny"), f"{root}/{MANIFEST_FILE}")
    write_table(scans_table(scan_rows), f"{root}/{SCANS_FILE}")
    return str(root)
