"""The stores benchmarks/gpu_suite.sh measures on, written straight through the storage API (no SimpleITK, so
they can be made on a machine that has only torch, zarr and MONAI):

    python benchmarks/suite_stores.py patches OUT.zarr [--scans 10] [--samples 32]
    python benchmarks/suite_stores.py volumes OUT.zarr [--scans 3] [--shape 300,360,360]

``patches``: scales 48/64/96, ``--scans`` scans (subset = scan % 10) of ``--samples`` patches each, half with
a bright ball and its mask, in noise (the tiny store of the tests, at the training scales).
``volumes``: full-size scans (1 mm voxels, default 300 x 360 x 360, what a 512 x 512 x ~300 LUNA16 scan
becomes) with ``--volumes`` arrays: a soft-tissue body, two dark lungs, a few bright nodules, noise.
"""

from __future__ import annotations

import argparse

import numpy as np

from luna_prep.format.spec import (
    MANIFEST_FILE,
    SCANS_FILE,
    StoreAttributes,
    VolumeAttributes,
    empty_manifest,
    encode_image,
    scans_table,
)
from luna_prep.format.writer import StorageConfig, create_store, write_table, write_volume

TISSUE, LUNG, NODULE = 0.74, 0.11, 0.72  # [0, 1] intensities of HU 40, -850, 0 in the window (-1000, 400)


def patch_store(out: str, n_scans: int = 10, samples: int = 32) -> str:
    """A patch store at scales 48/64/96 (see the module doc)."""
    from luna_prep.synthetic.tiny_store import write_tiny_store

    return write_tiny_store(out, scales=(48, 64, 96), n_scans=n_scans, samples_per_scan=samples)


def phantom(shape_zyx: tuple[int, int, int], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(image in [0, 1], lung mask) of a chest-like volume with 3-5 nodules in the lungs."""
    z, y, x = np.ogrid[tuple(slice(0, n) for n in shape_zyx)]
    nz, ny, nx = shape_zyx
    body = ((y - ny / 2) / (0.42 * ny)) ** 2 + ((x - nx / 2) / (0.47 * nx)) ** 2 <= 1
    lungs = np.zeros(shape_zyx, bool)
    for cx in (0.3 * nx, 0.7 * nx):
        lungs |= (((z - nz / 2) / (0.45 * nz)) ** 2 + ((y - ny / 2) / (0.3 * ny)) ** 2
                  + ((x - cx) / (0.15 * nx)) ** 2) <= 1
    image = np.where(lungs, LUNG, np.where(body, TISSUE, 0.0)).astype(np.float32)
    inside = np.argwhere(lungs[::8, ::8, ::8]) * 8
    for c in inside[rng.choice(len(inside), size=int(rng.integers(3, 6)), replace=False)]:
        r = rng.uniform(2, 8)
        ball = (z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2 <= r * r
        image[ball] = NODULE
    image += rng.normal(0, 0.02, size=shape_zyx).astype(np.float32)
    return image.clip(0, 1), lungs


def volume_store(out: str, n_scans: int = 3, shape_zyx: tuple[int, int, int] = (300, 360, 360)) -> str:
    """A store of ``n_scans`` full-size scans with whole-scan volumes (see the module doc)."""
    cfg = StorageConfig(image_dtype="uint8", shard_patches=8)
    attrs = StoreAttributes(spacing_mm=1.0, hu_window=(-1000.0, 400.0), scales=(48, 64, 96), image_dtype="uint8",
                            shard_patches=cfg.shard_patches, capacity=cfg.shard_patches, config_hash="0" * 64,
                            software_version="suite", build_config={"volumes": True, "synthetic": "suite_stores"})
    group = create_store(out, attrs, cfg)
    rng = np.random.default_rng(0)
    records = []
    for k in range(n_scans):
        uid = f"1.3.6.1.4.1.9999.{k}"
        image, lungs = phantom(shape_zyx, rng)
        origin = (-0.5 * shape_zyx[2], -0.5 * shape_zyx[1], -0.5 * shape_zyx[0])
        original = {"origin": list(origin), "spacing": [1.0, 1.0, 1.0], "direction": [1, 0, 0, 0, 1, 0, 0, 0, 1],
                    "size": [shape_zyx[2], shape_zyx[1], shape_zyx[0]]}
        write_volume(group, uid, encode_image(image, "uint8"), lungs,
                     VolumeAttributes(origin, 1.0, k % 10, original).to_attrs(), cfg)
        records.append({"seriesuid": uid, "subset": k % 10, "status": "ok", "error": "", "source_path": "",
                        "original_size_xyz": original["size"], "original_spacing_xyz": original["spacing"],
                        "original_origin_xyz": list(origin), "original_direction": original["direction"],
                        "resampled_shape_zyx": list(shape_zyx), "resampled_origin_xyz": list(origin)})
    write_table(empty_manifest(), f"{out}/{MANIFEST_FILE}")
    write_table(scans_table(records), f"{out}/{SCANS_FILE}")
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("kind", choices=["patches", "volumes"])
    ap.add_argument("out")
    ap.add_argument("--scans", type=int)
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--shape", default="300,360,360", help="z,y,x voxels of each volume")
    args = ap.parse_args(argv)
    if args.kind == "patches":
        patch_store(args.out, args.scans or 10, args.samples)
    else:
        volume_store(args.out, args.scans or 3, tuple(int(v) for v in args.shape.split(",")))
    print(args.out)


if __name__ == "__main__":
    main()
