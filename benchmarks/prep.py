"""Benchmark of luna-prep build against the resampling floor and two baselines, as ratios.

    python benchmarks/prep.py [--scans 4] [--json OUT] [--workdir DIR]

On full-size synthetic scans (512x512 in-plane, ~300 slices at 2.5 mm), one core per job:
  floor     SimpleITK read + isotropic resample to a numpy array (GetArrayFromImage's copy included)
  strict    SimpleITK read + isotropic resample alone (the image stays in SimpleITK: no copy)
  ours      luna-prep's whole per-scan task (read, resample, encode, lungs, sample, patches, write)
  naive     a serial loop: read, resample, normalize with numpy, crop, np.save per patch (float32)
  monai     the same job with MONAI transforms: LoadImage(ITKReader), Spacing, ScaleIntensityRange, SpatialCrop
Also the speed-up of 2 Dask workers over 1 on the same scans (5 alternations, median; and the ideal
for these scans' task times), and the peak RSS of one worker
process building a 512x512x400 scan. Needs `pip install itk-io` for the MONAI baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "1")
import SimpleITK as sitk  # noqa: E402

from luna_prep.build import BuildConfig, run_build  # noqa: E402
from luna_prep.luna16.reading import read_scan  # noqa: E402
from luna_prep.luna16.tables import find_scans, read_annotations, read_candidates  # noqa: E402
from luna_prep.pipeline.plan import plan_build  # noqa: E402
from luna_prep.pipeline.resampling import resample_image, resample_isotropic  # noqa: E402
from luna_prep.pipeline.scan_task import ScanJob, process_scan  # noqa: E402
from luna_prep.synthetic.scans import synthesize  # noqa: E402

WINDOW = (-1000.0, 400.0)


def timed(fn, *args) -> float:
    t = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t


def floor_task(path: str) -> None:
    """Read + resample to a numpy array (SimpleITK's copy included), as a plain pipeline does."""
    resample_isotropic(read_scan(path), 1.0)


def strict_floor_task(path: str) -> None:
    """Read + resample alone: the resampled image is not copied out of SimpleITK."""
    resample_image(read_scan(path), 1.0)


def naive_task(path: str, centres: list, out: Path) -> None:
    vol = resample_isotropic(read_scan(path), 1.0).array
    vol = (np.clip(vol, *WINDOW) - WINDOW[0]) / (WINDOW[1] - WINDOW[0])
    for k, c in enumerate(centres):
        for s in (48, 64, 96):
            lo = np.maximum(np.asarray(c) - s // 2, 0)
            np.save(out / f"{k}_{s}.npy", vol[lo[0]:lo[0] + s, lo[1]:lo[1] + s, lo[2]:lo[2] + s].astype(np.float32))


def monai_task(path: str, centres_world: list, out: Path) -> None:
    from monai.transforms import Compose, LoadImage, ScaleIntensityRange, Spacing, SpatialCrop

    load = Compose([LoadImage(reader="ITKReader", image_only=True, ensure_channel_first=True),
                    Spacing(pixdim=(1.0, 1.0, 1.0), mode="bilinear"),
                    ScaleIntensityRange(WINDOW[0], WINDOW[1], 0.0, 1.0, clip=True)])
    img = load(path)
    inv = np.linalg.inv(img.affine.numpy())
    for k, w in enumerate(centres_world):
        ras = np.array([-w[0], -w[1], w[2], 1.0])  # MONAI works in RAS
        centre = np.rint((inv @ ras)[:3]).astype(int)
        for s in (48, 64, 96):
            patch = SpatialCrop(roi_center=centre.tolist(), roi_size=(s, s, s))(img)
            np.save(out / f"{k}_{s}.npy", patch.numpy().astype(np.float32))


def peak_rss_gb(data_root: Path, store: Path, worker_malloc: bool = True) -> float:
    """Peak RSS of a fresh process building the first scan of ``data_root``, with the malloc settings of a local
    cluster's workers (``worker_malloc``) or glibc's own.

    Read from VmHWM: ru_maxrss would include the parent's RSS at fork time.
    """
    from luna_prep.cluster import WORKER_MALLOC_ENV

    env = {k: v for k, v in os.environ.items() if k not in WORKER_MALLOC_ENV}
    if worker_malloc:
        env.update({k: str(v) for k, v in WORKER_MALLOC_ENV.items()})
    code = (
        "from luna_prep.build import BuildConfig, run_build;"
        f"run_build(BuildConfig(data_root={str(data_root)!r}, out={str(store)!r}, subsets=(0,)), workers=0,"
        " overwrite=True, progress=False);"
        "print([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    return int(out.stdout.strip().splitlines()[-1]) / 1024 ** 2


def make_400_slice_scan(src: Path, dst_root: Path) -> None:
    """A 512x512x400 copy of a full-size synthetic scan (slices repeated), with its annotations."""
    image = sitk.ReadImage(str(src))
    arr = sitk.GetArrayFromImage(image)
    reps = int(np.ceil(400 / arr.shape[0]))
    big = sitk.GetImageFromArray(np.concatenate([arr] * reps)[:400])
    big.SetOrigin(image.GetOrigin())
    big.SetSpacing(image.GetSpacing())
    big.SetDirection(image.GetDirection())
    (dst_root / "subset0").mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(big, str(dst_root / "subset0" / src.name))
    shutil.copy(src.parent.parent / "annotations.csv", dst_root / "annotations.csv")
    shutil.copy(src.parent.parent / "candidates.csv", dst_root / "candidates.csv")


def list_schedule_seconds(tasks: list[float], workers: int) -> float:
    """When the last of ``tasks`` (seconds, in submission order) ends if each goes to the first free worker."""
    free = [0.0] * workers
    for t in tasks:
        k = free.index(min(free))
        free[k] += t
    return max(free)


def scaling(data_root: Path, work: Path, subsets: tuple[int, ...], order: list[str], rounds: int = 5) -> dict:
    """2 Dask workers against 1 on the same scans, alternated ``rounds`` times (median ratio), and the ideal
    ratio for these scans: their 1-worker task times scheduled on 2 workers in submission order (4 scans of
    unequal size cannot split evenly).

    Both clusters are the build's own (``local_cluster``) and stay up for every round. Each first builds the
    scans once untimed (``cold_*`` in the result): a worker's first scans fault in the memory it then reuses,
    which a real build (tens of scans per worker) pays once and a 4-scan build would pay in every round.
    A third cluster, 1 worker with all of Dask's defaults (``dask_defaults``), is the same-run baseline for
    what ``WORKER_MALLOC_ENV`` and ``LOCAL_CLUSTER_CONFIG`` save."""
    from distributed import LocalCluster

    from luna_prep.cluster import local_cluster
    from luna_prep.format.reader import PatchStore

    times: dict = {1: [], 2: [], "dask_defaults": []}
    scan_phase: dict = {1: [], 2: [], "dask_defaults": []}  # the scans phase alone
    cold: dict = {}
    # Dask's own first: a cluster started while ours run would take ours from this process's environment
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as plain, \
            local_cluster(1) as one, local_cluster(2) as two:
        clusters = {1: one, 2: two, "dask_defaults": plain}
        for r in range(rounds + 1):
            for n in (1, 2, "dask_defaults"):
                cfg = BuildConfig(data_root=str(data_root), out=str(work / f"scale{n}.zarr"), subsets=subsets)
                t = time.perf_counter()
                report = run_build(cfg, scheduler=clusters[n].scheduler_address, overwrite=True, progress=False)
                seconds = time.perf_counter() - t
                assert report.ok, report.failures
                if r == 0:
                    cold[n] = seconds
                    continue
                times[n].append(seconds)
                scan_phase[n].append(report.phases["scans"])
    task_seconds = PatchStore(work / "scale1.zarr").scans.set_index("seriesuid")["seconds"]  # the last 1-worker build
    tasks = [float(task_seconds[uid]) for uid in order]
    ratios = [a / b for a, b in zip(times[1], times[2])]
    phase_ratios = [a / b for a, b in zip(scan_phase[1], scan_phase[2])]
    ideal = sum(tasks) / list_schedule_seconds(tasks, 2)
    return {"seconds_1_worker": statistics.median(times[1]), "seconds_2_workers": statistics.median(times[2]),
            "seconds_1_worker_each_round": times[1], "seconds_2_workers_each_round": times[2],
            "cold_seconds_1_worker": cold[1], "cold_seconds_2_workers": cold[2],
            "seconds_1_worker_dask_defaults": statistics.median(times["dask_defaults"]),
            "seconds_1_worker_dask_defaults_each_round": times["dask_defaults"],
            "dask_defaults_over_ours_1_worker": statistics.median(
                [a / b for a, b in zip(times["dask_defaults"], times[1])]),
            "speedup_2_workers": statistics.median(ratios), "speedup_2_workers_each_round": ratios,
            "ideal_speedup_2_workers": ideal, "speedup_2_workers_of_ideal": statistics.median(ratios) / ideal,
            "scans_phase_speedup_2_workers": statistics.median(phase_ratios),
            "scans_phase_speedup_2_workers_each_round": phase_ratios}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scans", type=int, default=4)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--scaling-only", action="store_true", help="only 2 workers against 1 (needs --workdir's scans)")
    ap.add_argument("--rounds", type=int, default=5, help="alternations of the 1- and 2-worker builds (median)")
    args = ap.parse_args()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="luna-bench-prep-"))
    data = work / "luna16"
    if not (data / "annotations.csv").exists():
        synthesize(data, n_scans=args.scans, seed=0, full_size=True)
    subsets = tuple(range(min(args.scans, 10)))
    scans = find_scans(data, list(subsets))
    if args.scaling_only:
        result = {"date": time.strftime("%Y-%m-%d"), "scans": len(scans),
                  **scaling(data, work, subsets, [sc.seriesuid for sc in scans], args.rounds)}
        print(json.dumps(result, indent=2))
        if args.json:
            args.json.write_text(json.dumps(result, indent=2))
        return
    cfg = BuildConfig(data_root=str(data), out=str(work / "ours.zarr"), subsets=subsets)
    plans, capacity = plan_build(scans, read_annotations(data / "annotations.csv"),
                                 read_candidates(data / "candidates.csv"), cfg.sampling, cfg.storage.shard_patches)
    run_build(cfg, workers=0, overwrite=True, progress=False)  # creates the store; the timed runs redo each scan
    job = ScanJob(str(cfg.out), cfg.spacing_mm, cfg.hu_window, cfg.seed, cfg.sampling, cfg.storage)
    rows = {"floor": [], "strict_floor": [], "ours": [], "naive": [], "monai": []}
    for plan in plans:
        world = [a[1:4] for a in plan.annotations] + [c for c in plan.class0_candidates[: plan.n_samples]]
        world = world[: plan.n_samples]
        vol_geo = resample_isotropic(read_scan(plan.path), 1.0)
        centres = [tuple(np.rint(vol_geo.world_to_zyx(w)).astype(int)) for w in world]
        rows["floor"].append(timed(floor_task, plan.path))
        rows["strict_floor"].append(timed(strict_floor_task, plan.path))
        rows["ours"].append(process_scan(plan, job)["seconds"])
        out = work / "naive"
        out.mkdir(exist_ok=True)
        rows["naive"].append(timed(naive_task, plan.path, centres, out))
        try:
            monai_task(plan.path, world[:1], work)  # warm the ITK import outside the clock
            rows["monai"].append(timed(monai_task, plan.path, world, work / "naive"))
        except ImportError:
            rows["monai"].append(float("nan"))
    per_scan = {k: float(np.mean(v)) for k, v in rows.items()}
    big = work / "big"
    if not (big / "subset0").exists():
        make_400_slice_scan(scans[0].path, big)
    result = {
        "machine": f"{platform.node()} {os.cpu_count()} cores, {platform.processor() or platform.machine()}",
        "date": time.strftime("%Y-%m-%d"), "scans": len(plans), "per_scan_seconds": per_scan,
        "samples_per_scan": float(np.mean([p.n_samples for p in plans])),
        "ratio_to_floor": per_scan["ours"] / per_scan["floor"],
        "ratio_to_strict_floor": per_scan["ours"] / per_scan["strict_floor"],
        "naive_ratio_to_floor": per_scan["naive"] / per_scan["floor"],
        "monai_ratio_to_floor": per_scan["monai"] / per_scan["floor"],
        "peak_rss_gb": peak_rss_gb(big, work / "big.zarr"),
        "peak_rss_gb_glibc_malloc": peak_rss_gb(big, work / "big.zarr", worker_malloc=False),
        **scaling(data, work, subsets, [sc.seriesuid for sc in scans], rounds=args.rounds),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
