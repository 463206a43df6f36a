"""Synthetic LUNA16-shaped data: chest CT scans (.mhd/.raw) with known nodules and the two CSVs.

``synthesize(out_dir)`` writes, like the LUNA16 release::

    DIR/subset{k}/<seriesuid>.mhd + .raw   int16 HU (MET_SHORT); scan i in subset i % 10
    DIR/annotations.csv                    seriesuid,coordX,coordY,coordZ,diameter_mm
    DIR/candidates.csv                     seriesuid,coordX,coordY,coordZ,class

Coordinates are world mm (ITK physical x, y, z). Special scans: index 1 has direction
diag(-1, 1, -1) (origin = world position of voxel (0, 0, 0)), index 2 is stored compressed
(.zraw), index 4 has a circular field of view with -2048 outside it. With more than 10 scans,
every scan with index % 4 == 3 has no nodule. Same seed -> byte-identical files, whatever the number of
worker processes.

``size`` is ``small`` (192 x 192 in-plane, the default), ``full`` (512 x 512, ~300 slices; ``full_size=True``)
or ``tiny`` (easy only: 64 x 64 in-plane, ~90 mm cubed, for rehearsing the full LUNA16 scale cheaply: 888
scans give about 1,186 nodules and, with 700-990 class-0 candidates per scan, about 750,000 candidate rows).

``difficulty="easy"`` (the default) renders solid balls in a plain chest; ``difficulty="luna"`` renders
the digital chest phantom of ``phantom`` (vessel and airway trees, LUNA16-like nodules, spacings,
noise and upper abdomen) and also writes, per scan, the lesions' rendered masks and their kinds::

    DIR/masks/subset{k}/<seriesuid>.mhd    uint8, same grid as the scan; voxel = j + 1 inside the
                                           scan's j-th nodule (its order in annotations.csv), else 0
    DIR/nodules.csv                        annotations.csv's columns + kind, location, shape
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from luna_prep.luna16.geometry import ScanGeometry, read_header_geometry
from luna_prep.synthetic.anatomy import Ball, Chest, Ellipsoid, Tube, render
from luna_prep.synthetic.findings import candidates as luna_candidates
from luna_prep.synthetic.findings import place_lesions
from luna_prep.synthetic.phantom import sample_chest, sample_geometry
from luna_prep.synthetic.render_luna import render_luna

UID_PREFIX = "1.3.6.1.4.1.14519.5.2.1.9999."
ANNOTATION_COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ", "diameter_mm")
CANDIDATE_COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ", "class")
FLIPPED_INDEX = 1
FLIPPED_DIRECTION = (-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
COMPRESSED_INDEX = 2
FOV_CLIP_INDEX = 4
NODULE_DIAMETER_MM = (3.0, 30.0)
CLEARANCE_MM = 5.0  # lung wall, vessels and other nodules stay this far from a nodule's surface
DIFFICULTIES = ("easy", "luna")
SIZES = ("tiny", "small", "full")
_SIZE_CODE = {"small": 0, "full": 1, "tiny": 2}  # part of each scan's RNG seed (small and full as before)
TINY_NODULES = ((1, 2, 3), (0.45, 0.32, 0.23))  # per scan with nodules: LUNA16's 1,186 in 601 of 888 scans
TINY_CLASS0 = (700, 991)  # class-0 candidates per tiny scan: candidates_V2.csv's ~750,000 rows in 888 scans
IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
NODULE_COLUMNS = (*ANNOTATION_COLUMNS, "kind", "location", "shape")


@dataclass(frozen=True)
class SynthNodule:
    world_xyz: tuple[float, float, float]
    diameter_mm: float
    kind: str = "solid"  # solid | part-solid | ground-glass | calcified
    location: str = "isolated"  # isolated | juxta-pleural | juxta-vascular
    shape: str = "round"  # round | lobulated | spiculated


@dataclass(frozen=True)
class SynthScan:
    seriesuid: str
    subset: int
    path: Path  # the .mhd
    geometry: ScanGeometry
    nodules: tuple[SynthNodule, ...]
    mask_path: Path | None = None  # luna: the rendered nodules' label volume


@dataclass(frozen=True)
class SynthDataset:
    root: Path
    scans: tuple[SynthScan, ...]
    annotations_csv: Path
    candidates_csv: Path
    difficulty: str = "easy"


def seriesuid_for(seed: int, index: int) -> str:
    """A DICOM-UID-like series id, deterministic in (seed, index): prefix + 30 digits."""
    h = int.from_bytes(hashlib.sha256(f"luna-synth:{seed}:{index}".encode()).digest()[:16], "big")
    return UID_PREFIX + str(10**29 + h % (9 * 10**29))


def _sample_geometry(rng: np.random.Generator, index: int, size: str) -> ScanGeometry:
    if size == "full":
        n_xy, s_xy, s_z = 512, rng.uniform(0.65, 0.8), 2.5
        n_z = int(rng.integers(280, 321))
    elif size == "tiny":
        n_xy, s_xy, s_z = 64, rng.uniform(1.3, 1.6), round(rng.uniform(1.5, 2.5), 3)
        n_z = int(np.ceil(rng.uniform(80.0, 100.0) / s_z))
    else:
        n_xy, s_xy, s_z = 192, rng.uniform(0.6, 0.95), round(rng.uniform(0.7, 2.5), 3)
        n_z = int(np.ceil(rng.uniform(130.0, 170.0) / s_z))
    spacing = np.array([round(s_xy, 6), round(s_xy, 6), s_z])
    size = np.array([n_xy, n_xy, n_z])
    lo = np.round([rng.uniform(-250, -150), rng.uniform(-250, -150), rng.uniform(-400, -100)], 3)
    direction = FLIPPED_DIRECTION if index == FLIPPED_INDEX else (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    d = np.asarray(direction).reshape(3, 3)
    # Origin is voxel (0, 0, 0); put the world box's minimum corner at ``lo`` whatever the direction.
    origin = lo - np.minimum(d * (spacing * (size - 1))[None, :], 0.0).sum(axis=1)
    return ScanGeometry(tuple(float(v) for v in np.round(origin, 6)), tuple(float(v) for v in spacing),
                        tuple(float(v) for v in direction), tuple(int(v) for v in size))


def _sample_anatomy(rng: np.random.Generator, geom: ScanGeometry, size: str):
    """Body, bones, lungs and vessels in world mm (nodules come later)."""
    lo, hi = geom.world_bounds()
    ext, ctr = hi - lo, (lo + hi) / 2
    fov = min(ext[0], ext[1])
    a = fov * rng.uniform(0.40, 0.45)
    b = a * rng.uniform(0.70, 0.80)
    body_center = (ctr[0] + rng.uniform(-0.03, 0.03) * fov, ctr[1] + rng.uniform(-0.03, 0.03) * fov)
    bone_ring = (0.86, 0.92)
    lung_z = min(0.42 * ext[2], 140.0) * rng.uniform(0.95, 1.0)
    zc = ctr[2] + rng.uniform(-0.03, 0.03) * ext[2]
    lungs = []
    for side in (-1.0, 1.0):
        cx, cy = 0.44 * side * rng.uniform(0.97, 1.03), 0.02
        sa, sb = 0.33 * rng.uniform(0.95, 1.05), 0.62 * rng.uniform(0.95, 1.05)
        t = np.linspace(0, 2 * np.pi, 721)  # keep the lung's outline inside the rib ring
        shrink = min(1.0, (bone_ring[0] - 0.02) / np.hypot(cx + sa * np.cos(t), cy + sb * np.sin(t)).max())
        lungs.append(Ellipsoid((body_center[0] + cx * a, body_center[1] + cy * b, zc),
                               (shrink * sa * a, shrink * sb * b, lung_z)))
    vessels = []
    for lung in lungs:
        medial = 1.0 if lung.center[0] < body_center[0] else -1.0
        hilum = np.asarray(lung.center) + np.array([0.55 * medial * lung.semi[0], 0.0, 0.0])
        for _ in range(int(rng.integers(*{"full": (6, 11), "small": (3, 6), "tiny": (1, 3)}[size]))):
            p0 = hilum + rng.normal(0.0, 0.08, 3) * np.asarray(lung.semi)
            p1, p2 = lung.random_point(rng, 0.8), lung.random_point(rng, 0.8)
            r = rng.uniform(1.5, 3.0)
            vessels += [Tube(tuple(p0), tuple(p1), r), Tube(tuple(p1), tuple(p2), max(1.0, 0.6 * r))]
    chest = Chest(body_center, (a, b), rng.uniform(0.04, 0.07), bone_ring, rng.uniform(22.0, 30.0),
                  rng.uniform(0.0, 30.0), tuple(lungs), tuple(vessels), (), False)
    return chest


def _place_nodules(rng: np.random.Generator, geom: ScanGeometry, chest: Chest, n: int) -> list[Ball]:
    """Up to n non-overlapping balls fully inside a lung, off the vessels, inside the volume."""
    balls: list[Ball] = []
    lo, hi = geom.world_bounds()
    for _ in range(n):
        d = float(np.exp(rng.uniform(*np.log(NODULE_DIAMETER_MM))))
        for attempt in range(600):
            if attempt and attempt % 100 == 0:
                d = max(NODULE_DIAMETER_MM[0], 0.7 * d)
            r = d / 2
            lung = chest.lungs[int(rng.integers(len(chest.lungs)))]
            c = lung.random_point(rng)
            if (np.all(c - r - 2 > lo) and np.all(c + r + 2 < hi) and lung.contains_ball(c, r + CLEARANCE_MM)
                    and all(float(t.distance(*c)) > r + t.radius + CLEARANCE_MM for t in chest.vessels)
                    and all(np.linalg.norm(c - b.center) > r + b.radius + CLEARANCE_MM for b in balls)):
                balls.append(Ball(tuple(float(v) for v in c), r, float(rng.uniform(15.0, 45.0))))
                break
    return balls


def _candidates(rng: np.random.Generator, chest: Chest, class1: tuple[int, int] = (1, 4),
                class0: tuple[int, int] = (20, 41)) -> list[tuple[np.ndarray, int]]:
    """Class 1 points within 1 mm of each nodule centre (``class1``: numpy range per nodule); class 0
    points (``class0``: range per scan, 20-40 by default) on vessels and in lungs."""
    rows = []
    for b in chest.nodules:
        for _ in range(int(rng.integers(*class1))):
            u = rng.standard_normal(3)
            rows.append((np.asarray(b.center) + u / np.linalg.norm(u) * rng.uniform(0.0, 0.9), 1))

    def far_from_nodules(p):
        return all(np.linalg.norm(p - b.center) > b.radius + CLEARANCE_MM for b in chest.nodules)

    n0 = int(rng.integers(*class0))
    n_vessel = int(round(0.6 * n0)) if chest.vessels else 0
    weights = np.array([t.length for t in chest.vessels])
    n_have = 0
    for _ in range(100 * n0):
        if n_have == n0:
            break
        if n_have < n_vessel:
            p = chest.vessels[int(rng.choice(len(weights), p=weights / weights.sum()))].point(rng.random())
        else:
            p = chest.lungs[int(rng.integers(len(chest.lungs)))].random_point(rng, 0.9)
        if far_from_nodules(p):
            rows.append((p, 0))
            n_have += 1
    return [rows[i] for i in rng.permutation(len(rows))]


def _fmt(v) -> str:
    return repr(float(v))


def _write_scan(path: Path, volume: np.ndarray, geom: ScanGeometry, compressed: bool) -> ScanGeometry:
    image = sitk.GetImageFromArray(volume)
    image.SetOrigin(geom.origin)
    image.SetSpacing(geom.spacing)
    image.SetDirection(geom.direction)
    sitk.WriteImage(image, str(path), useCompression=compressed)
    written = read_header_geometry(path)
    if written != geom:  # MetaIO writes 17 significant digits: this holds exactly
        raise RuntimeError(f"{path}: header geometry {written} differs from the rendered {geom}")
    return written


def _easy_scan(seed: int, i: int, size: str, n_scans: int):
    code = _SIZE_CODE[size]
    rng = np.random.default_rng([seed, i, code])
    geom = _sample_geometry(rng, i, size)
    chest = _sample_anatomy(rng, geom, size)
    n_nod = int(rng.choice(TINY_NODULES[0], p=TINY_NODULES[1]) if size == "tiny" else rng.integers(1, 4))
    if n_scans > 10 and i % 4 == 3:
        n_nod = 0
    balls = _place_nodules(rng, geom, chest, n_nod)
    chest = replace(chest, nodules=tuple(balls), fov_clip=i == FOV_CLIP_INDEX)
    cands = _candidates(rng, chest, (1, 3), TINY_CLASS0) if size == "tiny" else _candidates(rng, chest)
    volume = render(geom, chest, np.random.default_rng([seed, i, code, 1]))
    return geom, volume, tuple(SynthNodule(b.center, 2.0 * b.radius) for b in balls), cands, None


def _luna_scan(seed: int, i: int, size: str, n_scans: int):
    full_size = size == "full"
    rng = np.random.default_rng([seed, i, int(full_size), 2])
    geom = sample_geometry(rng, full_size, FLIPPED_DIRECTION if i == FLIPPED_INDEX else IDENTITY)
    chest = sample_chest(rng, geom, fov_clip=i == FOV_CLIP_INDEX)
    n_nod = 0 if n_scans > 10 and i % 4 == 3 else int(rng.integers(1, 5))
    chest = replace(chest, lesions=tuple(place_lesions(rng, geom, chest, n_nod)))
    cands = luna_candidates(rng, chest, int(rng.integers(400, 1000) if full_size else rng.integers(80, 160)))
    volume, masks = render_luna(geom, chest, np.random.default_rng([seed, i, int(full_size), 3]))
    labels = np.zeros(volume.shape, dtype=np.uint8)
    for j, (lo, m) in enumerate(masks):
        sub = labels[lo[2]:lo[2] + m.shape[0], lo[1]:lo[1] + m.shape[1], lo[0]:lo[0] + m.shape[2]]
        sub[m & (sub == 0)] = j + 1
    nodules = tuple(SynthNodule(les.center, les.diameter_mm, les.kind, les.location, les.shape)
                    for les in chest.lesions)
    return geom, volume, nodules, cands, labels


def _make_and_write(root: Path, seed: int, i: int, size: str, difficulty: str, n_scans: int):
    """Render scan ``i``, write its files; return its description and its annotation, candidate, nodule lines."""
    make_scan = _easy_scan if difficulty == "easy" else _luna_scan
    uid, subset = seriesuid_for(seed, i), i % 10
    geom, volume, nodules, cands, labels = make_scan(seed, i, size, n_scans)
    folder = root / f"subset{subset}"
    folder.mkdir(exist_ok=True)
    path = folder / f"{uid}.mhd"
    geom = _write_scan(path, volume, geom, compressed=i == COMPRESSED_INDEX)
    mask_path, nod_lines = None, []
    if labels is not None:
        mask_path = root / "masks" / f"subset{subset}" / f"{uid}.mhd"
        mask_path.parent.mkdir(parents=True, exist_ok=True)
        _write_scan(mask_path, labels, geom, compressed=True)
        nod_lines = [",".join([uid, *map(_fmt, n.world_xyz), _fmt(n.diameter_mm), n.kind, n.location, n.shape])
                     for n in nodules]
    ann_lines = [",".join([uid, *map(_fmt, n.world_xyz), _fmt(n.diameter_mm)]) for n in nodules]
    cand_lines = [",".join([uid, *map(_fmt, p), str(cls)]) for p, cls in cands]
    return SynthScan(uid, subset, path, geom, nodules, mask_path), ann_lines, cand_lines, nod_lines


def synthesize(out_dir, n_scans: int = 10, seed: int = 0, full_size: bool = False,
               difficulty: str = "easy", size: str | None = None, workers: int = 1) -> SynthDataset:
    """Write a synthetic LUNA16-shaped dataset to ``out_dir`` and describe it.

    ``size`` is tiny, small or full (default: full when ``full_size``, else small). Scan i depends only
    on (seed, i, size, difficulty), except that with n_scans > 10 every scan with i % 4 == 3 is rendered
    without nodules. ``workers`` > 1 renders scans in that many processes (same bytes). Existing files of
    the same names are overwritten; nothing else in ``out_dir`` is touched, so use a fresh directory.
    """
    size = size or ("full" if full_size else "small")
    if n_scans < 0 or seed < 0 or workers < 1:
        raise ValueError("n_scans and seed must be non-negative and workers at least 1")
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"difficulty must be one of {', '.join(DIFFICULTIES)}, not {difficulty!r}")
    if size not in SIZES or (full_size and size != "full"):
        raise ValueError(f"size must be one of {', '.join(SIZES)} (full with full_size), not {size!r}")
    if size == "tiny" and difficulty != "easy":
        raise ValueError("size tiny exists for difficulty easy only")
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    args = [(root, seed, i, size, difficulty, n_scans) for i in range(n_scans)]
    if workers == 1:
        results = [_make_and_write(*a) for a in args]
    else:
        with ProcessPoolExecutor(workers) as pool:
            results = list(pool.map(_make_and_write, *zip(*args), chunksize=8))
    scans = tuple(r[0] for r in results)
    ann_lines = [",".join(ANNOTATION_COLUMNS), *(line for r in results for line in r[1])]
    cand_lines = [",".join(CANDIDATE_COLUMNS), *(line for r in results for line in r[2])]
    nod_lines = [",".join(NODULE_COLUMNS), *(line for r in results for line in r[3])]
    annotations_csv, candidates_csv = root / "annotations.csv", root / "candidates.csv"
    annotations_csv.write_text("\n".join(ann_lines) + "\n", newline="\n")
    candidates_csv.write_text("\n".join(cand_lines) + "\n", newline="\n")
    if difficulty == "luna":
        (root / "nodules.csv").write_text("\n".join(nod_lines) + "\n", newline="\n")
    return SynthDataset(root, scans, annotations_csv, candidates_csv, difficulty)
