"""Planning a build: which scans, how many samples each, and which rows of the arrays they own.

Everything here is computed from the tables and the folder listing alone, before any scan is
read, so the same inputs give the same rows whatever the number of workers or the order in
which scans finish. Each scan's rows start on a shard boundary, so no two scans ever write to
the same shard (zarr does not lock).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pandas as pd

from luna_prep.luna16.tables import ScanFile
from luna_prep.pipeline.sampling import SamplingConfig, planned_counts


@dataclass(frozen=True)
class ScanPlan:
    """One scan's share of the build."""

    seriesuid: str
    subset: int
    path: str
    first_index: int  # first row of the scan's range, a multiple of shard_patches
    counts: dict[str, int]  # planned samples per kind
    annotations: tuple[tuple[int, float, float, float, float], ...]  # (row, x, y, z, diameter_mm)
    class0_candidates: tuple[tuple[float, float, float], ...]  # world (x, y, z)

    @property
    def n_samples(self) -> int:
        return sum(self.counts.values())


def seed_for(seed: int, seriesuid: str) -> list[int]:
    """A per-scan RNG seed that depends only on the build seed and the seriesuid."""
    digest = hashlib.sha256(seriesuid.encode()).digest()
    return [int(seed), int.from_bytes(digest[:8], "little")]


def plan_build(
    scans: list[ScanFile],
    annotations: pd.DataFrame,
    candidates: pd.DataFrame | None,
    sampling: SamplingConfig,
    shard_patches: int,
) -> tuple[list[ScanPlan], int]:
    """Plans for ``scans`` (in the given order) and the total number of rows (the capacity)."""
    ann_by_uid = {uid: g for uid, g in annotations.groupby("seriesuid", sort=False)}
    neg_by_uid = {}
    if candidates is not None:
        neg = candidates[candidates["class"] == 0]
        neg_by_uid = {uid: g for uid, g in neg.groupby("seriesuid", sort=False)}
    plans: list[ScanPlan] = []
    next_row = 0
    for scan in scans:
        ann = ann_by_uid.get(scan.seriesuid)
        ann_rows = () if ann is None else tuple(
            (int(r.annotation_index), float(r.coordX), float(r.coordY), float(r.coordZ), float(r.diameter_mm))
            for r in ann.itertuples(index=False)
        )
        neg = neg_by_uid.get(scan.seriesuid)
        neg_rows = () if neg is None else tuple(
            (float(x), float(y), float(z)) for x, y, z in neg[["coordX", "coordY", "coordZ"]].to_numpy()
        )
        counts = planned_counts(len(ann_rows), len(neg_rows), sampling)
        plan = ScanPlan(scan.seriesuid, scan.subset, str(scan.path), next_row, counts, ann_rows, neg_rows)
        plans.append(plan)
        next_row += int(np.ceil(plan.n_samples / shard_patches)) * shard_patches
    return plans, next_row
