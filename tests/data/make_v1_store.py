"""Write tests/data/store_v1.zarr: a tiny luna-patches v1 store that every later version must read.

Usage (from the repository root; run once, then never again for v1):

    python tests/data/make_v1_store.py

Builds two synthetic scans (subset 0 plain, subset 1 with a flipped direction matrix) at scales
16 and 24 with ``--volumes``, in a temporary folder with relative paths (so no machine's paths end
up in the store), then copies the store without ``_build/`` (resume bookkeeping, not data).
The regression test (tests/prep/format/test_frozen_store.py) holds the values read back from it.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

from luna_prep.build import BuildConfig, run_build
from luna_prep.format.spec import BUILD_DIR
from luna_prep.format.writer import StorageConfig
from luna_prep.pipeline.sampling import SamplingConfig
from luna_prep.synthetic.scans import synthesize

OUT = Path(__file__).resolve().parent / "store_v1.zarr"


def main() -> None:
    if OUT.exists():
        sys.exit(f"{OUT} exists: a frozen store is never rewritten")
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        synthesize("luna16", n_scans=2, seed=11)
        cfg = BuildConfig(data_root="luna16", out="store_v1.zarr", subsets=(0, 1), volumes=True, spacing_mm=3.0,
                          sampling=SamplingConfig(scales=(16, 24), jitter_copies=1, negative_ratio=1.0,
                                                  min_negatives=2),
                          storage=StorageConfig(image_dtype="uint8", shard_patches=8))
        report = run_build(cfg, workers=0, progress=False)
        if not report.ok:
            sys.exit(f"build failed: {report.failures}")
        shutil.copytree("store_v1.zarr", OUT, ignore=shutil.ignore_patterns(BUILD_DIR))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
