"""Human-readable summaries of a build and of a store."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from luna_prep.format.reader import PatchStore
from luna_prep.format.spec import BUILD_DIR, FORMAT_NAME, PATCHES_GROUP


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TB"


def counts_table(manifest: pd.DataFrame) -> str:
    if manifest.empty:
        return "  (no patches)"
    table = manifest.groupby(["scale", "kind"]).size().unstack(fill_value=0)
    table["total"] = table.sum(axis=1)
    return "\n".join("  " + line for line in table.to_string().splitlines())


def build_summary(report) -> str:
    lines = [
        f"store: {report.store}",
        f"scans: {report.scans_ok} ok, {report.scans_failed} failed"
        + (f" ({report.skipped} kept from an earlier run)" if report.skipped else ""),
    ]
    if report.patches is not None and not report.patches.empty:
        table = report.patches.copy()
        table["total"] = table.sum(axis=1)
        lines.append("patches by scale and kind:")
        lines += ["  " + ln for ln in table.to_string().splitlines()]
    if report.masks == "lidc":
        n = report.nodule_masks
        lines.append(f"nodule masks: {n.get('lidc', 0)} from LIDC readers' contours, "
                     f"{n.get('sphere', 0)} spheres (no contours found)")
    if report.masks == "labels":
        n = report.nodule_masks
        lines.append(f"nodule masks: {n.get('label', 0)} from label volumes, {n.get('sphere', 0)} spheres (no label "
                     "volume, or no region near the annotation)")
    phases = ", ".join(f"{k} {v:.1f} s" for k, v in report.phases.items())
    lines.append(f"bytes written: {human_bytes(report.bytes_written)}; time: {report.seconds:.1f} s"
                 + (f" ({phases})" if phases else ""))
    if report.unmatched_annotations:
        uids = report.unmatched_annotations
        lines.append(f"annotations of {len(uids)} seriesuids with no scan under the data root, not built "
                     f"(first: {uids[0]})")
    for warning in report.warnings:
        lines.append(f"WARNING {warning}")
    for _path, error in report.failures:
        lines.append(f"FAILED {error}")
    return "\n".join(lines)


def folder_bytes(root: Path) -> int:
    """Bytes of every file under ``root``, the build's bookkeeping (_build/) excluded."""
    total = 0
    with os.scandir(root) as entries:  # one scandir per folder and one stat per file (a store has ~25 per scan)
        for entry in entries:
            if entry.name == BUILD_DIR:
                continue
            if entry.is_dir(follow_symlinks=False):
                total += folder_bytes(Path(entry.path))
            elif entry.is_file():
                total += entry.stat().st_size
    return total


def store_bytes_by_scale(store: PatchStore) -> dict[int, int] | None:
    """Bytes of each scale's patch files wherever the store lives; None where the files cannot be
    listed (a plain HTTP server without directory listings)."""
    try:
        files = store.location.list_files()
    except (OSError, NotImplementedError, ValueError):
        return None
    patch_sizes = [n for rel, n in files.items() if rel.startswith(f"{PATCHES_GROUP}/")]
    if not patch_sizes or min(patch_sizes) <= 0:  # listed without sizes (an HTTP index page): no stored file is empty
        return None
    out = {}
    for s in store.attrs.scales:
        prefix = f"{PATCHES_GROUP}/{s}/"
        out[s] = sum(n for rel, n in files.items() if rel.startswith(prefix))
    return out


def store_summary(store: PatchStore) -> str:
    a = store.attrs
    m = store.manifest
    scans = store.scans
    ok = int((scans["status"] == "ok").sum())
    lines = [
        f"store: {store.root}",
        f"format: {FORMAT_NAME} v{a.format_version}, written by luna-prep {a.software_version}; "
        f"config hash {a.config_hash[:12]}",
        f"spacing: {a.spacing_mm} mm; HU window: {list(a.hu_window)}; scales: {list(a.scales)}; "
        f"image dtype: {a.image_dtype}; {a.shard_patches} patches per shard",
        f"scans: {ok} ok, {len(scans) - ok} failed; subsets: {sorted(scans['subset'].unique().tolist())}",
        f"samples: {m['sample_id'].nunique()}; patches: {len(m)}; with foreground: {int((m['fg_voxels'] > 0).sum())}",
        "patches by scale and kind:",
        counts_table(m),
    ]
    by_scale = store_bytes_by_scale(store)
    if by_scale is None:
        lines.append("  sizes: unknown (the server does not list files; a dataset card lists every file's size)")
    for s, n in (by_scale or {}).items():
        count = int((m["scale"] == s).sum())
        per = n / count if count else 0
        lines.append(f"  {s}^3: {human_bytes(n)} stored, {human_bytes(per)} per patch (image + mask)")
    for r in scans[scans["status"] != "ok"].itertuples():
        lines.append(f"FAILED {r.error}")
    return "\n".join(lines)
