"""Tests of build planning (luna_prep.pipeline.plan): tables split per scan, rows shard-aligned."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from luna_prep.luna16.tables import ScanFile
from luna_prep.pipeline.plan import plan_build
from luna_prep.pipeline.sampling import SamplingConfig, planned_counts


def _tables():
    ann = pd.DataFrame({"seriesuid": ["b", "a", "b"], "coordX": [1.0, 2.0, 3.0], "coordY": [0.5, 0.25, 0.125],
                        "coordZ": [-1.0, -2.0, -3.0], "diameter_mm": [4.0, 5.0, 6.0]})
    ann["annotation_index"] = range(len(ann))
    cand = pd.DataFrame({"seriesuid": ["a", "b", "a", "a", "b"], "coordX": [10.0, 20.0, 11.0, 12.0, 21.0],
                         "coordY": [0.1, 0.2, 0.3, 0.4, 0.5], "coordZ": [7.0, 8.0, 9.0, 1e-9, 2.0],
                         "class": [0, 0, 1, 0, 0]})
    return ann, cand


def test_plans_split_the_tables_per_scan_in_file_order():
    ann, cand = _tables()
    scans = [ScanFile("a", 0, Path("s0/a.mhd")), ScanFile("b", 3, Path("s3/b.mhd")), ScanFile("c", 9, Path("c"))]
    cfg = SamplingConfig()
    plans, capacity = plan_build(scans, ann, cand, cfg, shard_patches=32)
    a, b, c = plans
    assert a.annotations == ((1, 2.0, 0.25, -2.0, 5.0),)
    assert b.annotations == ((0, 1.0, 0.5, -1.0, 4.0), (2, 3.0, 0.125, -3.0, 6.0))
    assert isinstance(b.annotations[0][0], int) and c.annotations == ()
    # class 1 left out; one float64 array per scan, rows in file order; none for a scan without candidates
    np.testing.assert_array_equal(a.class0_candidates, [[10.0, 0.1, 7.0], [12.0, 0.4, 1e-9]])
    np.testing.assert_array_equal(b.class0_candidates, [[20.0, 0.2, 8.0], [21.0, 0.5, 2.0]])
    assert a.class0_candidates.dtype == np.float64 and c.class0_candidates.shape == (0, 3)
    assert a.counts == planned_counts(1, 2, cfg) and c.counts == planned_counts(0, 0, cfg)
    firsts = [p.first_index for p in plans]
    assert firsts[0] == 0 and all(f % 32 == 0 for f in firsts)
    assert [firsts[i + 1] - firsts[i] for i in range(2)] == [-(-p.n_samples // 32) * 32 for p in plans[:2]]
    assert capacity == firsts[2] + -(-c.n_samples // 32) * 32


def test_plans_without_a_candidates_table():
    ann, _ = _tables()
    (plan,), capacity = plan_build([ScanFile("b", 1, Path("b.mhd"))], ann, None, SamplingConfig(), 8)
    assert plan.class0_candidates.shape == (0, 3) and len(plan.annotations) == 2
    assert capacity == -(-plan.n_samples // 8) * 8
