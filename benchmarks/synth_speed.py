"""Time full-size ``luna`` scans against full-size ``easy`` ones (docs/synthetic.md, Speed).

For each repetition and seed, easy then luna (luna then easy in odd repetitions):
``synthesize(dir, n_scans=1, seed, full_size=True)``
into a fresh directory (written files included), wall and CPU (process) time. Prints each scan and,
per seed, luna's median over the median of all easy scans.

    python benchmarks/synth_speed.py [--seeds 0 1 2 5 14 21 24] [--reps 2] [--json out.json]

``--steady``: instead, in one process and one directory, generate (``scans._easy_scan`` /
``scans._luna_scan``) and write (``scans._write_scan``: the volume, and luna's label volume) each seed's
scans interleaved, and print the medians of the repetitions after a first, warm-up one.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from luna_prep.synthetic.scans import synthesize


def time_one(seed: int, difficulty: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        w, c = time.perf_counter(), time.process_time()
        ds = synthesize(tmp, n_scans=1, seed=seed, full_size=True, difficulty=difficulty)
        wall, cpu = time.perf_counter() - w, time.process_time() - c
    g = ds.scans[0].geometry
    return {"seed": seed, "difficulty": difficulty, "slices": g.size[2], "slice_mm": g.spacing[2],
            "wall_s": round(wall, 2), "cpu_s": round(cpu, 2)}


def steady(seeds: list[int], reps: int) -> list[dict]:
    """Generate-and-write times (CPU s) in one process, medians of ``reps`` after a warm-up."""
    from luna_prep.synthetic import scans

    times: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(reps + 1):
            for seed in seeds:
                for name, make in (("easy", scans._easy_scan), ("luna", scans._luna_scan)):
                    c0 = time.process_time()
                    geom, volume, _, _, labels = make(seed, 0, "full", 1)
                    c1 = time.process_time()
                    scans._write_scan(Path(tmp) / "scan.mhd", volume, geom, False)
                    c2 = time.process_time()
                    if labels is not None:
                        scans._write_scan(Path(tmp) / "labels.mhd", labels, geom, True)
                    c3 = time.process_time()
                    del volume, labels
                    if rep:
                        times.setdefault((seed, name), []).append((c1 - c0, c2 - c1, c3 - c2))
    out = []
    for (seed, name), v in times.items():
        gen, write, labels = (round(float(x), 2) for x in np.median(np.array(v), axis=0))
        out.append({"seed": seed, "difficulty": name, "generate_cpu_s": gen, "write_cpu_s": write,
                    "labels_cpu_s": labels, "total_cpu_s": round(gen + write + labels, 2)})
        print(json.dumps(out[-1]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 5, 14, 21, 24])
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--json", default=None)
    ap.add_argument("--steady", action="store_true")
    args = ap.parse_args()
    if args.steady:
        out = steady(args.seeds, args.reps)
        if args.json:
            Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
        return
    runs = []
    print("load average at start", os.getloadavg())
    for rep in range(args.reps):
        for seed in args.seeds:  # alternate which goes first: each run profits from memory its predecessor freed
            for difficulty in ("easy", "luna") if rep % 2 == 0 else ("luna", "easy"):
                runs.append(time_one(seed, difficulty))
                print(json.dumps(runs[-1]), flush=True)
    print("load average at end", os.getloadavg())
    easy = [r for r in runs if r["difficulty"] == "easy"]
    base = {k: float(np.median([r[k] for r in easy])) for k in ("wall_s", "cpu_s")}
    print(f"easy median: wall {base['wall_s']:.2f} s, CPU {base['cpu_s']:.2f} s")
    summary = []
    for seed in args.seeds:
        mine = [r for r in runs if r["difficulty"] == "luna" and r["seed"] == seed]
        med = {k: float(np.median([r[k] for r in mine])) for k in ("wall_s", "cpu_s")}
        summary.append({"seed": seed, "slices": mine[0]["slices"], "slice_mm": mine[0]["slice_mm"], **med,
                        "ratio_wall": round(med["wall_s"] / base["wall_s"], 2),
                        "ratio_cpu": round(med["cpu_s"] / base["cpu_s"], 2)})
        print(json.dumps(summary[-1]))
    if args.json:
        Path(args.json).write_text(json.dumps({"runs": runs, "easy": base, "luna": summary}, indent=2) + "\n")


if __name__ == "__main__":
    main()
