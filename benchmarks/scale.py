"""Rehearsal of the full LUNA16 scale (issue 13): 888 tiny synthetic scans through every command, timed.

    python benchmarks/scale.py [--scans 888] [--workdir DIR] [--json OUT] [--workers 2]

The scale is in the counts, not the voxels: `luna-prep synth --size tiny` writes 888 scans of 64x64 in-plane
over subset0..9 with LUNA16's counts (~1,186 nodules, ~750,000 candidate rows). Then, each command timed:

  baseline  the same scans built 30 at a time (``--baseline-batches`` stores of 30 scans, their own tables)
  build     `luna-prep build --subsets 0-9 --volumes` of all scans, killed (SIGKILL, whole process group)
            once ``--kill-fraction`` of the scans are done, then run again: it must redo only the missing scans
  info, verify (the card), pack
  run       `luna-train run` of a small model stopped after 2 steps: launch -> first checkpoint
  detect    `luna-train detect --checkpoint last` over the test subset, then `luna-train froc` of it
  froc      `luna-train froc` over all scans, of a submission made from candidates.csv (120 rows per scan)

Patches are 16/24/32 voxels (``--scales``): a 96-voxel patch spans a whole tiny scan, so random negatives clear
of its nodules do not exist there. The JSON holds every figure and each issue-13 target with its limit.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd

BIN = Path(sys.executable).parent
# what a run writes into its workdir (besides data/, kept with --reuse-data): removed before a run, nothing else is
OWN_OUTPUTS = ("batch*", "full.zarr*", ".full.zarr*", "full.zip", "manifests", "run", "submission*.csv",
               "seriesuids_all.csv")
DEMO_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
TRAIN_SETTINGS = [  # a small model and 2 steps: start-up is what is measured
    "data.train_size=16", "data.eval_scale=32", "data.batch_size=8", "data.num_workers=0",
    "data.device_augment=true", "sampler.scale_weights={16: 1.0, 24: 1.0, 32: 0.0}", "sampler.samples_per_epoch=64",
    "augment.crop_size=null",  # demo.yaml crops its 48^3 patches to 32^3; these are 16^3
    "model.channels=[8,16]", "model.strides=[2]", "model.num_res_units=0", "train.epochs=1",
    "train.stop_after_steps=2", "logging.plots=false", "logging.progress=false", "logging.tensorboard=false",
    "split.train_subsets=[0,1,2,3,4,5,6,7]", "split.val_subsets=[8]", "split.test_subsets=[9]",
]


def run(cmd: list[str], ok=(0,), **kw) -> tuple[float, str]:
    """Run a command; (seconds, stdout). Raises with its output when its exit status is not in ``ok``."""
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if p.returncode not in ok:
        raise RuntimeError(f"{' '.join(cmd)}: exit {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return time.perf_counter() - t, p.stdout


class PeakMemory(threading.Thread):
    """Polls a process's VmHWM (its own peak resident memory, children excluded) until it exits."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.peak_mb = pid, 0.0

    def run(self) -> None:
        while True:
            try:
                status = Path(f"/proc/{self.pid}/status").read_text()
            except OSError:
                return
            m = re.search(r"VmHWM:\s+(\d+) kB", status)
            if m is None:  # a zombie: exited, not yet reaped
                return
            self.peak_mb = max(self.peak_mb, int(m.group(1)) / 1024)
            time.sleep(0.2)


def build_cmd(data: Path, out: Path, args, card_dir: Path | None) -> list[str]:
    cmd = [str(BIN / "luna-prep"), "build", "--data-root", str(data), "--subsets", "0-9", "--out", str(out),
           "--volumes", "--scales", args.scales, "--workers", str(args.workers), "--quiet"]
    return cmd + (["--manifests-dir", str(card_dir)] if card_dir else ["--no-card"])


def phases(stdout: str) -> dict[str, float]:
    """The build summary's phase times: 'time: 12.3 s (planning 1.0 s, scans 10.0 s, ...)'."""
    m = re.search(r"time: ([\d.]+) s \(([^)]*)\)", stdout)
    if m is None:
        raise RuntimeError(f"no phase times in the build's output:\n{stdout}")
    out = {k: float(v) for k, v in re.findall(r"(\w+) ([\d.]+) s", m.group(2))}
    return out | {"total": float(m.group(1))}


def task_seconds(store: Path) -> pd.Series:
    """Each scan's task time (seconds, inside its Dask task) from the store's scans table, by seriesuid."""
    scans = pd.read_parquet(store / "scans.parquet")
    return scans.set_index("seriesuid")["seconds"]


def batch_root(data: Path, uids: list[str], dest: Path) -> None:
    """A data root of ``uids`` only: links to their files and tables cut to their rows."""
    wanted = set(uids)
    for k in range(10):  # --subsets 0-9 wants every folder, empty or not
        (dest / f"subset{k}").mkdir(parents=True, exist_ok=True)
    for mhd in data.glob("subset*/*.mhd"):
        if mhd.stem in wanted:
            for f in mhd.parent.glob(f"{mhd.stem}.*"):
                (dest / mhd.parent.name / f.name).symlink_to(f)
    for table in ("annotations.csv", "candidates.csv"):
        df = pd.read_csv(data / table, dtype={"seriesuid": str})
        df[df["seriesuid"].isin(wanted)].to_csv(dest / table, index=False)


def baseline(data: Path, work: Path, order: list[str], args) -> dict:
    """The build of ``baseline_batches`` x 30 scans spread over the data, 30 at a time."""
    picks = np.linspace(0, len(order) - 1, 30 * args.baseline_batches).round().astype(int)
    seconds, walls = [], []
    for b in range(args.baseline_batches):
        root, store = work / f"batch{b}", work / f"batch{b}.zarr"
        batch_root(data, [order[i] for i in picks[30 * b:30 * (b + 1)]], root)
        _, out = run(build_cmd(root, store, args, None))
        walls.append(phases(out)["scans"] / 30)
        seconds.append(task_seconds(store))
    return {"task_seconds": pd.concat(seconds), "wall_per_scan": float(np.mean(walls))}


def killed_and_resumed(data: Path, work: Path, n: int, args) -> dict:
    """Build all scans; SIGKILL the build's process group part way; build again; check what was redone."""
    store, cards = work / "full.zarr", work / "manifests"
    done = store / "_build" / "done"
    p = subprocess.Popen(build_cmd(data, store, args, cards), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         start_new_session=True)
    mem1 = PeakMemory(p.pid)
    mem1.start()
    t0 = time.perf_counter()
    while p.poll() is None and len(list(done.glob("*.json")) if done.exists() else []) < args.kill_fraction * n:
        time.sleep(0.5)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    first_run_s = time.perf_counter() - t0
    time.sleep(1.0)  # the killed workers' files are closed
    before = {f.name: f.stat().st_mtime_ns for f in done.glob("*.json")}
    p = subprocess.Popen(build_cmd(data, store, args, cards), stdout=subprocess.PIPE, text=True)
    mem2 = PeakMemory(p.pid)
    mem2.start()
    out = p.communicate()[0]
    if p.returncode != 0:
        raise RuntimeError(f"resumed build: exit {p.returncode}\n{out}")
    after = {f.name: f.stat().st_mtime_ns for f in done.glob("*.json")}
    kept = sum(after.get(k) == v for k, v in before.items())
    return {"killed_after_s": first_run_s, "done_at_kill": len(before), "kept_after_resume": kept,
            "redone": len(after) - kept, "done_after_resume": len(after), "phases": phases(out),
            "peak_mb": max(mem1.peak_mb, mem2.peak_mb), "summary": out.strip().splitlines()}


def training_and_detection(work: Path, data: Path) -> dict:
    """A 2-step run (launch -> last.pt), detection over its test subset, and the FROC of that."""
    run_dir, store = work / "run", work / "full.zarr"
    sets = [a for s in TRAIN_SETTINGS for a in ("--set", s)]
    t0 = time.time()
    secs, _ = run([str(BIN / "luna-train"), "run", "--config", str(DEMO_CONFIG), "--dataset", str(store),
                   "--out", str(run_dir), *sets], ok=(3,))  # 3: stopped by train.stop_after_steps
    first_ckpt = (run_dir / "last.pt").stat().st_mtime - t0
    det_s, det_out = run([str(BIN / "luna-train"), "detect", str(run_dir), "--checkpoint", "last", "--out",
                          str(work / "submission.csv")])
    froc_s, _ = run([str(BIN / "luna-train"), "froc", str(work / "submission.csv"), "--annotations",
                     str(data / "annotations.csv"), "--seriesuids", str(work / "submission_seriesuids.csv")])
    n_det = len(pd.read_csv(work / "submission_seriesuids.csv", header=None))
    return {"run_exit_s": secs, "launch_to_first_checkpoint_s": first_ckpt, "detect_s": det_s,
            "detect_s_per_scan": det_s / max(n_det, 1), "detect_scans": n_det, "detect_output": det_out.strip(),
            "froc_test_subset_s": froc_s}


def froc_all(work: Path, data: Path) -> float:
    """`luna-train froc` over every scan, of a submission made from candidates.csv (120 rows per scan)."""
    cand = pd.read_csv(data / "candidates.csv", dtype={"seriesuid": str})
    rng = np.random.default_rng(0)
    sub = cand.groupby("seriesuid", sort=False).head(120).copy()
    sub["probability"] = np.where(sub["class"] == 1, rng.uniform(0.3, 1.0, len(sub)), rng.uniform(0, 0.9, len(sub)))
    sub.drop(columns="class").to_csv(work / "submission_all.csv", index=False)
    pd.Series(cand["seriesuid"].unique()).to_csv(work / "seriesuids_all.csv", index=False, header=False)
    secs, _ = run([str(BIN / "luna-train"), "froc", str(work / "submission_all.csv"), "--annotations",
                   str(data / "annotations.csv"), "--seriesuids", str(work / "seriesuids_all.csv")])
    return secs


def targets(r: dict) -> dict:
    """Each issue-13 target: measured value, limit, met."""
    b = r["build"]
    rows = {
        "task_time_ratio_888_vs_30": (r["task_time_ratio"], 1.2),
        "candidates_read_and_planning_s": (b["phases"]["planning"], 10.0),
        "manifest_and_card_s": (b["phases"]["manifest"] + b["phases"]["card"], 10.0),
        "scheduler_process_peak_mb": (b["peak_mb"], 1024.0),
        "launch_to_first_step_s": (r["train"]["launch_to_first_checkpoint_s"], 20.0),
        "froc_888_scans_s": (r["froc_all_s"], 10.0),
    }
    out = {k: {"measured": round(v, 3), "limit": lim, "met": bool(v <= lim)} for k, (v, lim) in rows.items()}
    resumed = b["redone"] == r["n_scans"] - b["done_at_kill"] and b["kept_after_resume"] == b["done_at_kill"]
    out["resume_redoes_only_missing"] = {"measured": f"{b['redone']} redone, {b['kept_after_resume']} kept",
                                        "limit": "only missing", "met": bool(resumed)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scans", type=int, default=888)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--scales", default="16,24,32")
    ap.add_argument("--baseline-batches", type=int, default=3)
    ap.add_argument("--kill-fraction", type=float, default=0.1)
    ap.add_argument("--workdir", default=None, help="Keep everything here (default: a temporary folder, removed); "
                    "this script's outputs of an earlier run there are replaced, nothing else is touched.")
    ap.add_argument("--json", default=None)
    ap.add_argument("--reuse-data", action="store_true", help="Keep WORKDIR/data if it is there (synth not timed).")
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="luna-scale-")).resolve()  # links need absolute targets
    work.mkdir(parents=True, exist_ok=True)
    for old in work.iterdir():  # this script's earlier results in a kept workdir; nothing else is touched
        if any(fnmatch.fnmatch(old.name, pattern) for pattern in OWN_OUTPUTS):
            shutil.rmtree(old) if old.is_dir() and not old.is_symlink() else old.unlink()
    data = work / "data"
    r: dict = {"n_scans": args.scans, "workers": args.workers, "scales": args.scales, "cpus": os.cpu_count(),
               "machine": platform.platform(), "load_before": os.getloadavg()}
    try:
        if not (args.reuse_data and (data / "candidates.csv").exists()):
            r["synth_s"], out = run([str(BIN / "luna-prep"), "synth", "--out", str(data), "--scans",
                                     str(args.scans), "--size", "tiny", "--workers", str(args.workers)])
            r["synth"] = out.strip()
        r["candidate_rows"] = sum(1 for _ in open(data / "candidates.csv")) - 1
        r["build"] = killed_and_resumed(data, work, args.scans, args)
        full = task_seconds(work / "full.zarr")
        base = baseline(data, work, list(full.index), args)
        same = full[base["task_seconds"].index]
        r["baseline"] = {"scans": len(same), "task_median_s": float(base["task_seconds"].median()),
                         "wall_per_scan_s": base["wall_per_scan"]}
        r["task_median_888_s"] = float(same.median())
        r["task_time_ratio"] = float(same.median() / base["task_seconds"].median())
        built = args.scans - r["build"]["done_at_kill"]
        r["wall_per_scan_888_s"] = r["build"]["phases"]["scans"] / max(built, 1)
        r["wall_ratio"] = r["wall_per_scan_888_s"] / base["wall_per_scan"]
        for name, cmd in (("info", ["info", str(work / "full.zarr")]),
                          ("verify", ["verify", str(work / "manifests" / "full.json")]),
                          ("pack", ["pack", str(work / "full.zarr"), str(work / "full.zip")])):
            r[f"{name}_s"], _ = run([str(BIN / "luna-prep"), *cmd])
        r["train"] = training_and_detection(work, data)
        r["froc_all_s"] = froc_all(work, data)
        r["load_after"] = os.getloadavg()
        r["targets"] = targets(r)
    finally:
        text = json.dumps(r, indent=2, default=float)
        print(text)
        if args.json:
            Path(args.json).write_text(text + "\n")
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
