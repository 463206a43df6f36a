"""LUNA16 FROC and CPM, computed as the challenge's evaluation script (noduleCADEvaluationLUNA16.py).

Rules reproduced from the official script:

* only scans of the ``seriesuids`` list are evaluated; candidates and annotations of other scans are
  ignored, and the FP rate is divided by the length of that list (scans without candidates count);
* per scan, if there are more than 100 candidates, only those with probability strictly above the
  101st highest probability are kept (so ties at the cut drop every tied candidate);
* a candidate hits a finding when its squared world distance to the finding's centre is strictly
  below the squared radius (diameter / 2; a negative diameter, the -1 of annotations_excluded.csv,
  means 10 mm);
* a nodule hit by several candidates is one detection with the highest probability; the other
  candidates are neither detections nor false positives; a candidate within two nodules detects both;
* candidates on findings of annotations_excluded.csv (and not on a nodule) are ignored;
* every other candidate is a false positive; a missed nodule stays in the sensitivity denominator;
* the ROC points are those of ``sklearn.metrics.roc_curve`` (ties grouped, collinear points
  dropped, a leading (0, 0) point), scaled to FPs per scan and to sensitivity over all nodules;
  a system without any false positive gets FP rate 0 everywhere;
* sensitivities at 1/8 ... 8 FPs per scan are ``np.interp`` on that curve (flat beyond its ends:
  a curve ending at 2 FPs/scan scores its final sensitivity at 4 and 8), CPM is their mean;
* the bootstrap resamples scans with replacement and takes the official order statistics
  ``sorted[floor(0.025 n)]`` and ``sorted[floor(0.975 n)]`` as the 95% band.

Degenerate cases the official script leaves as NaN are defined here: no detected nodule gives
sensitivity 0; a bootstrap sample that draws no nodule is left out of the band.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from luna_prep.errors import InputError

OPERATING_POINTS: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
MAX_MARKS_PER_SCAN = 100
UNKNOWN_DIAMETER_MM = 10.0  # used for findings with a negative diameter
CONFIDENCE = 0.95
BAND_FPS = 2.0 ** np.linspace(-3.0, 3.0, 121)  # FP rates at which the bootstrap band is sampled
_MISSED_PROB = -1e9  # the official script's probability for a missed nodule (then dropped)
_XYZ = ["coordX", "coordY", "coordZ"]


@dataclass
class FrocResult:
    """FROC curve, sensitivities at the operating points, CPM, bootstrap band and counts."""

    fps: np.ndarray  # FROC curve: FPs per scan at each ROC point
    sensitivity: np.ndarray  # FROC curve: sensitivity at each ROC point
    thresholds: np.ndarray  # probability threshold of each ROC point (first is +inf)
    operating_points: tuple[float, ...]
    sensitivities: np.ndarray  # (7,) sensitivity at each operating point
    cpm: float
    bootstrap_fps: np.ndarray  # FP rates of the band (log-spaced 1/8 .. 8)
    bootstrap_lower: np.ndarray  # band over the curve, at bootstrap_fps
    bootstrap_upper: np.ndarray
    sensitivities_lower: np.ndarray  # (7,) band at the operating points
    sensitivities_upper: np.ndarray
    cpm_ci: tuple[float, float]
    n_bootstrap: int
    n_scans: int
    n_nodules: int
    n_hits: int  # nodules detected by at least one candidate
    n_false_positives: int
    n_candidates: int  # candidates scored (listed scans, after the 100-per-scan cap)
    n_ignored_excluded: int  # candidates on annotations_excluded findings only
    n_ignored_double: int  # extra candidates on an already detected nodule
    n_dropped_cap: int  # candidates dropped by the 100-per-scan cap
    n_unlisted: int  # candidates of scans not in the seriesuids list
    unlisted_example: str | None = None  # the first such scan's seriesuid

    def to_json_dict(self) -> dict[str, Any]:
        """JSON-ready summary (NaN becomes null); the curve itself is not included."""

        def num(v: float) -> float | None:
            return None if math.isnan(v) else float(v)

        return {
            "operating_points": list(self.operating_points),
            "sensitivities": [num(v) for v in self.sensitivities],
            "cpm": num(self.cpm),
            "sensitivities_lower": [num(v) for v in self.sensitivities_lower],
            "sensitivities_upper": [num(v) for v in self.sensitivities_upper],
            "cpm_ci": [num(v) for v in self.cpm_ci],
            "confidence": CONFIDENCE,
            "n_bootstrap": self.n_bootstrap,
            **{k: int(getattr(self, k)) for k in (
                "n_scans", "n_nodules", "n_hits", "n_false_positives", "n_candidates",
                "n_ignored_excluded", "n_ignored_double", "n_dropped_cap", "n_unlisted")},
            "unlisted_example": self.unlisted_example,
        }


def load_luna_csv(path: str | Path) -> pd.DataFrame:
    """Read a LUNA16 CSV (annotations, excluded findings or a submission); CRLF, spaces and a BOM tolerated."""
    df = pd.read_csv(path, dtype={"seriesuid": str}, skipinitialspace=True, encoding="utf-8-sig")  # Excel's BOM
    df.columns = [str(c).strip() for c in df.columns]
    if "seriesuid" in df.columns:
        df["seriesuid"] = df["seriesuid"].str.strip()
    return df


def load_seriesuids(path: str | Path) -> list[str]:
    """Read seriesuids.csv: one uid per line (first field), no header; a first line ``seriesuid`` (a header) is
    skipped, not counted as a scan; a BOM (Excel writes one) is dropped. A uid listed twice is an error naming
    both lines."""
    uids: list[str] = []
    line_of: dict[str, int] = {}
    for number, line in enumerate(Path(path).read_text(encoding="utf-8-sig").splitlines(), start=1):
        uid = line.split(",")[0].strip()
        if not uid or (not line_of and uid.lower() == "seriesuid"):
            continue
        if uid in line_of:
            raise InputError(f"{path}: seriesuid {uid} is listed twice, on lines {line_of[uid]} and {number}")
        line_of[uid] = number
        uids.append(uid)
    return uids


def _require(df: pd.DataFrame, cols: list[str], what: str) -> None:
    """``df`` has ``cols``, and a finite number in each of them but seriesuid (a blank or NaN probability
    would otherwise sort above every real one, where the official script stops with an error)."""
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise InputError(f"{what} lacks columns {missing}; has {list(df.columns)}")
    numeric = [c for c in cols if c != "seriesuid"]
    values = df[numeric].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    bad = np.flatnonzero(~np.isfinite(values).all(axis=1))
    if len(bad):
        first = df.iloc[bad[0]]
        raise InputError(f"{what}: {len(bad)} row(s) without a finite number in {numeric}, the first is data row "
                         f"{bad[0] + 1}: " + ", ".join(f"{c}={_plain(first[c])}" for c in ["seriesuid", *numeric]))


def _plain(value: Any) -> str:
    """A cell as the file holds it: text quoted (a blank shows as ''), numbers plain (-128.69, nan)."""
    return repr(value) if isinstance(value, str) else str(value)


def _group(df: pd.DataFrame | None, value: str) -> dict[str, np.ndarray]:
    """Rows per seriesuid, file order kept, as (n, 4) float arrays of x, y, z, value."""
    if df is None or len(df) == 0:
        return {}
    arr = df[_XYZ + [value]].to_numpy(dtype=float)
    return {uid: arr[idx] for uid, idx in df.groupby("seriesuid", sort=False).indices.items()}


def _hits(cands: np.ndarray, findings: np.ndarray) -> np.ndarray:
    """(n_cands, n_findings) bool: squared distance strictly below the squared radius."""
    if len(cands) == 0 or len(findings) == 0:
        return np.zeros((len(cands), len(findings)), dtype=bool)
    diam = np.where(findings[:, 3] < 0.0, UNKNOWN_DIAMETER_MM, findings[:, 3])
    diff = findings[None, :, :3] - cands[:, None, :3]
    dist2 = diff[..., 0] ** 2 + diff[..., 1] ** 2 + diff[..., 2] ** 2
    return dist2 < ((diam / 2.0) ** 2)[None, :]


def _score_scan(cands: np.ndarray, nodules: np.ndarray, excluded: np.ndarray) -> tuple[
        np.ndarray, np.ndarray, np.ndarray, dict[str, int]]:
    """FROC entries of one scan: (is_nodule, probability, missed) and counters."""
    hit = _hits(cands, nodules)
    on_nodule = hit.any(axis=1)
    on_excluded = _hits(cands, excluded).any(axis=1)
    probs = cands[:, 3]
    found = hit.any(axis=0)
    best = np.where(hit, probs[:, None], -np.inf).max(axis=0, initial=-np.inf)
    best = np.where(found, best, _MISSED_PROB)
    fp = ~on_nodule & ~on_excluded
    gt = np.r_[np.ones(len(nodules)), np.zeros(int(fp.sum()))]
    prob = np.r_[best, probs[fp]]
    missed = np.r_[~found, np.zeros(int(fp.sum()), dtype=bool)]
    counts = {"n_hits": int(found.sum()), "n_false_positives": int(fp.sum()),
              "n_ignored_excluded": int((~on_nodule & on_excluded).sum()),
              "n_ignored_double": int(np.clip(hit.sum(axis=0) - 1, 0, None).sum())}
    return gt, prob, missed, counts


def _descending(score: np.ndarray) -> np.ndarray:
    """The order of ``_roc_curve``: stable ascending sort, reversed. Any subset of entries keeps this order."""
    return np.argsort(score, kind="mergesort")[::-1]


def _roc_curve(y: np.ndarray, score: np.ndarray, w: np.ndarray, presorted: bool = False) -> tuple[
        np.ndarray, np.ndarray, np.ndarray]:
    """``sklearn.metrics.roc_curve(y, score, sample_weight=w)`` with drop_intermediate=True
    (``presorted``: the entries are already in ``_descending`` order)."""
    if not presorted:
        order = _descending(score)
        y, score, w = y[order], score[order], w[order]
    idx = np.r_[np.where(np.diff(score))[0], y.size - 1]
    tps = np.cumsum(y * w)[idx]
    fps = np.cumsum((1.0 - y) * w)[idx]
    thr = score[idx]
    if len(fps) > 2:
        keep = np.where(np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True])[0]
        fps, tps, thr = fps[keep], tps[keep], thr[keep]
    tps, fps, thr = np.r_[0.0, tps], np.r_[0.0, fps], np.r_[np.inf, thr]
    fpr = fps / fps[-1] if fps[-1] > 0 else np.full(fps.shape, np.nan)
    tpr = tps / tps[-1] if tps[-1] > 0 else np.full(tps.shape, np.nan)
    return fpr, tpr, thr


def _froc_curve(gt: np.ndarray, prob: np.ndarray, missed: np.ndarray, n_scans: int,
                w: np.ndarray, presorted: bool = False,
                sums: tuple[float, float] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The official computeFROC on weighted entries (weight = times the scan was drawn). For the bootstrap:
    ``presorted``, the entries are in ``_descending`` order of ``prob``; ``sums``, the weighted number of
    nodules and of entries when missed nodules are left out of the arrays (weights are whole numbers, so
    every sum is exact in any order)."""
    total, weight_sum = sums if sums is not None else (float(np.sum(gt * w)), float(np.sum(w)))
    keep = ~missed & (w > 0)
    g, p, ww = gt[keep], prob[keep], w[keep]
    n_detected = float(np.sum(g * ww))
    if n_detected < 1:
        return np.zeros(1), np.zeros(1), np.full(1, np.inf)
    fpr, tpr, thr = _roc_curve(g, p, ww, presorted)
    if total == weight_sum:  # no false positive at all: sklearn's fpr is NaN
        fps = np.zeros(len(fpr))
    else:
        fps = fpr * (float(np.sum(ww)) - n_detected) / n_scans
    sens = (tpr * n_detected) / total
    return fps, sens, thr


def _band(samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Official compute_mean_ci order statistics over the valid (non-NaN) bootstrap rows."""
    valid = samples[~np.isnan(samples).any(axis=tuple(range(1, samples.ndim)))]
    n = len(valid)
    if n == 0:
        nan = np.full(samples.shape[1:], np.nan)
        return nan, nan
    v = np.sort(valid, axis=0)
    pz = (1.0 - CONFIDENCE) / 2.0
    return v[min(int(math.floor(pz * n)), n - 1)], v[min(int(math.floor((1.0 - pz) * n)), n - 1)]


def _bootstrap(gt: np.ndarray, prob: np.ndarray, missed: np.ndarray, scan_idx: np.ndarray, n_scans: int,
               n_bootstrap: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """FROC band curves (at BAND_FPS) and operating points of ``n_bootstrap`` scan resamples (NaN rows: no nodule).

    The entries are sorted and the missed nodules set aside once, so each sample costs a few passes over
    the detected entries, not a sort of them all (888 scans x 100 candidates: a second, not ten)."""
    nodules_per_scan = np.bincount(scan_idx, weights=gt, minlength=n_scans)
    entries_per_scan = np.bincount(scan_idx, minlength=n_scans).astype(float)
    order = _descending(prob)
    order = order[~missed[order]]
    gt, prob, scan_idx = gt[order], prob[order], scan_idx[order]
    not_missed = np.zeros(len(gt), dtype=bool)
    rng = np.random.default_rng(seed)
    curves = np.full((n_bootstrap, len(BAND_FPS)), np.nan)
    boot_points = np.full((n_bootstrap, len(OPERATING_POINTS)), np.nan)
    for b in range(n_bootstrap):
        drawn = np.bincount(rng.integers(n_scans, size=n_scans), minlength=n_scans).astype(float)
        total = float(nodules_per_scan @ drawn)
        if total == 0:
            continue  # this draw holds no nodule: its FROC is undefined
        bf, bs, _ = _froc_curve(gt, prob, not_missed, n_scans, drawn[scan_idx], presorted=True,
                                sums=(total, float(entries_per_scan @ drawn)))
        curves[b], boot_points[b] = np.interp(BAND_FPS, bf, bs), np.interp(OPERATING_POINTS, bf, bs)
    return curves, boot_points


def compute_froc(submission: pd.DataFrame, annotations: pd.DataFrame,
                 excluded: pd.DataFrame | None, seriesuids: Sequence[str],
                 n_bootstrap: int = 1000, seed: int = 0,
                 names: tuple[str, str, str] = ("submission", "annotations", "excluded annotations")) -> FrocResult:
    """Score a submission (seriesuid, coordX, coordY, coordZ, probability) as LUNA16 does; ``names`` (the files)
    are what errors call the three tables."""
    _require(submission, ["seriesuid", *_XYZ, "probability"], names[0])
    _require(annotations, ["seriesuid", *_XYZ, "diameter_mm"], names[1])
    if excluded is not None:
        _require(excluded, ["seriesuid", *_XYZ, "diameter_mm"], names[2])
    uids = [str(u).strip() for u in seriesuids]
    if len(set(uids)) != len(uids):
        twice = next(u for i, u in enumerate(uids) if u in uids[:i])
        raise InputError(f"seriesuids list has duplicates: {twice} is listed twice")
    if not uids:
        raise InputError("seriesuids list is empty")
    cands, nods, excl = (_group(submission, "probability"), _group(annotations, "diameter_mm"),
                         _group(excluded, "diameter_mm"))
    listed = set(uids)
    counts = dict.fromkeys(("n_hits", "n_false_positives", "n_ignored_excluded",
                            "n_ignored_double", "n_candidates", "n_dropped_cap"), 0)
    unlisted = [k for k in cands if k not in listed]
    counts["n_unlisted"] = sum(len(cands[k]) for k in unlisted)
    entries: list[tuple[np.ndarray, ...]] = []
    empty = np.zeros((0, 4))
    for i, uid in enumerate(uids):
        c = cands.get(uid, empty)
        if len(c) > MAX_MARKS_PER_SCAN:
            cut = np.sort(c[:, 3])[::-1][MAX_MARKS_PER_SCAN]
            counts["n_dropped_cap"] += int((c[:, 3] <= cut).sum())
            c = c[c[:, 3] > cut]
        counts["n_candidates"] += len(c)
        gt, prob, missed, scan_counts = _score_scan(c, nods.get(uid, empty), excl.get(uid, empty))
        for k, v in scan_counts.items():
            counts[k] += v
        entries.append((gt, prob, missed, np.full(len(gt), i)))
    gt, prob, missed, scan_idx = (np.concatenate(x) for x in zip(*entries))
    n_nodules = int(gt.sum())
    if n_nodules == 0:
        raise InputError("no annotated nodule in the listed scans")
    n_scans = len(uids)
    fps, sens, thr = _froc_curve(gt, prob, missed, n_scans, np.ones(len(gt)))
    points = np.interp(OPERATING_POINTS, fps, sens)

    curves, boot_points = _bootstrap(gt, prob, missed, scan_idx, n_scans, n_bootstrap, seed)
    lower, upper = _band(curves)
    p_lower, p_upper = _band(boot_points)
    c_lower, c_upper = _band(boot_points.mean(axis=1))
    return FrocResult(
        fps=fps, sensitivity=sens, thresholds=thr, operating_points=OPERATING_POINTS,
        sensitivities=points, cpm=float(points.mean()), bootstrap_fps=BAND_FPS.copy(),
        bootstrap_lower=lower, bootstrap_upper=upper, sensitivities_lower=p_lower,
        sensitivities_upper=p_upper, cpm_ci=(float(c_lower), float(c_upper)),
        n_bootstrap=n_bootstrap, n_scans=n_scans, n_nodules=n_nodules, unlisted_example=next(iter(unlisted), None),
        **counts)


def run_froc(submission_csv: str | Path, annotations_csv: str | Path,
             excluded_csv: str | Path | None, seriesuids_csv: str | Path,
             json_out: str | Path | None = None, plot_out: str | Path | None = None,
             n_bootstrap: int = 1000, seed: int = 0) -> FrocResult:
    """Load the LUNA16 files, compute the FROC, optionally write a JSON summary and a plot."""
    result = compute_froc(
        load_luna_csv(submission_csv), load_luna_csv(annotations_csv),
        None if excluded_csv is None else load_luna_csv(excluded_csv),
        load_seriesuids(seriesuids_csv), n_bootstrap=n_bootstrap, seed=seed,
        names=(f"{submission_csv} (submission)", f"{annotations_csv} (annotations)", f"{excluded_csv} (excluded)"))
    if json_out is not None:
        Path(json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(json_out).write_text(json.dumps(result.to_json_dict(), indent=2) + "\n")
    if plot_out is not None:
        from luna_train.evaluation.froc_plot import plot_froc

        plot_froc(result, plot_out)
    return result
