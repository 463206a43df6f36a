"""Choosing sample centres in a resampled scan: nodules, random lung negatives, hard candidates."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from luna_prep.pipeline.lungmask import CoarseMask


@dataclass(frozen=True)
class SamplingConfig:
    """How many samples of each kind a scan gets, and where."""

    scales: tuple[int, ...] = (48, 64, 96)
    jitter_copies: int = 4  # jittered copies per nodule, besides the centred sample
    max_jitter_mm: float = 8.0  # per axis; also bounded so the nodule stays inside the smallest patch
    jitter_margin_vox: int = 4  # voxels kept between the nodule's edge and the smallest patch's face
    negative_ratio: float = 3.0  # negatives : positives
    hard_fraction: float = 0.5  # share of negatives taken at class-0 candidates (hard negatives)
    min_negatives: int = 6  # per scan, so nodule-free scans still contribute negatives


@dataclass(frozen=True)
class Nodule:
    """An annotated nodule in a resampled volume's (z, y, x) voxel coordinates.

    Its mask is the sphere of ``radius_vox`` around ``centre_zyx``, unless ``mask`` is given (a
    bool (z, y, x) array whose voxel [0, 0, 0] is ``mask_lo_zyx``, e.g. a readers' consensus); then
    ``radius_vox`` bounds the mask's voxels around ``centre_zyx`` (used to keep negatives clear).
    """

    annotation_index: int
    centre_zyx: np.ndarray
    radius_vox: float
    diameter_mm: float
    mask: np.ndarray | None = None
    mask_lo_zyx: np.ndarray | None = None

    mask_kind: str = "lidc"  # what ``mask`` came from: lidc (readers' consensus) or label (a label volume)

    @property
    def source(self) -> str:
        return "sphere" if self.mask is None else self.mask_kind


@dataclass(frozen=True)
class SampleCentre:
    kind: str  # nodule | random | candidate
    centre_zyx: tuple[int, int, int]
    annotation_index: int = -1
    diameter_mm: float = float("nan")


def planned_counts(n_nodules: int, n_class0: int, cfg: SamplingConfig) -> dict[str, int]:
    """Samples of each kind for a scan, known from the tables alone (so rows can be planned)."""
    n_pos = n_nodules * (1 + cfg.jitter_copies)
    n_neg = max(int(round(cfg.negative_ratio * n_pos)), cfg.min_negatives)
    n_cand = min(int(round(cfg.hard_fraction * n_neg)), n_class0)
    return {"nodule": n_pos, "candidate": n_cand, "random": n_neg - n_cand}


def nodule_centres(nodules: list[Nodule], cfg: SamplingConfig, spacing_mm: float,
                   rng: np.random.Generator) -> list[SampleCentre]:
    """Per nodule: the centred sample, then ``jitter_copies`` jittered ones (non-zero offsets)."""
    half_min = min(cfg.scales) // 2
    out: list[SampleCentre] = []
    for nod in nodules:
        centre = np.rint(nod.centre_zyx).astype(int)
        # the sphere's last voxels either side of the (rounded) centre; an even patch spans [c - half, c + half - 1]:
        # any offset up to `room` keeps jitter_margin_vox empty voxels to every face of the smallest patch
        above = np.floor(nod.centre_zyx + nod.radius_vox) - centre
        below = centre - np.ceil(nod.centre_zyx - nod.radius_vox)
        room = int(min(np.min(half_min - 1 - above), np.min(half_min - below))) - cfg.jitter_margin_vox
        limit = max(0, min(int(cfg.max_jitter_mm / spacing_mm), room))
        offsets = [np.zeros(3, int)]
        for _ in range(cfg.jitter_copies):
            off = rng.integers(-limit, limit + 1, size=3)
            while limit > 0 and not off.any():
                off = rng.integers(-limit, limit + 1, size=3)
            offsets.append(off)
        for off in offsets:
            out.append(SampleCentre("nodule", tuple(int(v) for v in centre + off), nod.annotation_index,
                                    nod.diameter_mm))
    return out


def touches_nodule(centres_zyx: np.ndarray, nodules: list[Nodule], size: int) -> np.ndarray:
    """Whether the ``size``-voxel patch around each centre (m, 3) reaches into any nodule sphere."""
    centres = np.asarray(centres_zyx, dtype=np.float64).reshape(-1, 3)
    hit = np.zeros(len(centres), bool)
    lo = centres - size // 2
    hi = lo + size - 1
    for nod in nodules:
        nearest = np.clip(nod.centre_zyx, lo, hi)
        hit |= np.linalg.norm(nearest - nod.centre_zyx, axis=1) <= nod.radius_vox + 1.0
    return hit


def inside(centres_zyx: np.ndarray, shape_zyx: tuple[int, ...]) -> np.ndarray:
    c = np.asarray(centres_zyx)
    return np.all((c >= 0) & (c < np.asarray(shape_zyx)), axis=-1)


def candidate_centres(candidates_zyx: np.ndarray, n: int, shape_zyx: tuple[int, ...],
                      rng: np.random.Generator) -> list[SampleCentre]:
    """A seeded random subset of ``n`` class-0 candidate locations that lie inside the volume."""
    cands = np.rint(np.asarray(candidates_zyx, dtype=np.float64).reshape(-1, 3)).astype(int)
    cands = cands[inside(cands, shape_zyx)]
    chosen = rng.permutation(len(cands))[: min(n, len(cands))]
    return [SampleCentre("candidate", tuple(int(v) for v in cands[i])) for i in sorted(chosen)]


def random_centres(
    n: int,
    lungs: CoarseMask,
    shape_zyx: tuple[int, ...],
    nodules: list[Nodule],
    largest: int,
    rng: np.random.Generator,
    tries: int = 50,
) -> list[SampleCentre]:
    """``n`` random centres inside the lungs whose largest patch touches no nodule.

    Falls back to anywhere in the volume when the lungs offer too few such places; when even that
    finds fewer (a scan little larger than the largest patch), returns those it found.
    """
    found: list[np.ndarray] = []
    pools = [lungs.voxels(), None]
    for pool in pools:
        for _ in range(tries):
            if len(found) >= n:
                break
            want = 4 * (n - len(found)) + 8
            if pool is None:
                picks = rng.integers(0, np.asarray(shape_zyx), size=(want, 3))
            elif len(pool) == 0:
                break
            else:
                picks = pool[rng.integers(0, len(pool), size=want)] + lungs.cell_offsets(rng, want)
            picks = picks[inside(picks, shape_zyx)]
            picks = picks[~touches_nodule(picks, nodules, largest)]
            found.extend(picks[: n - len(found)])
        if len(found) >= n:
            break
    return [SampleCentre("random", tuple(int(v) for v in c)) for c in found]
