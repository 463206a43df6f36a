"""Ablation of the training remedies: each one changed alone against a config, same store, seeds and budget.

    python benchmarks/ablation.py --store STORE --annotations CSV --out DIR
        [--config configs/demo.yaml] [--variants baseline,focal,...] [--seeds 0,1] [--no-detect]
    python benchmarks/ablation.py --out DIR --report [--markdown table.md]

Each run is :func:`quality.measure` with ``--calibrate`` of the config plus one variant's ``--set``
overrides and ``train.seed``; its JSON lands in ``DIR/<variant>/seed<S>.json``. Runs whose JSON exists
are skipped, so an interrupted ablation resumes, and several processes may share ``DIR`` with
disjoint ``--variants``; each JSON records the config file's SHA-256, and a ``DIR`` holding runs of
another version of the config is refused (edit the config, and the table would mix two recipes).
``--report`` prints one table row per variant (mean over the seeds run, the spread in brackets) with
the change against the baseline's mean.

Figures are raw (no TTA or post-processing), at each variant's own threshold: the one of the sweep
(0.3-0.95) with the highest validation Dice, so a loss that moves the boundary is not judged at the
baseline's threshold; the signed surface distance at it (on data with confounders it mostly measures
false-positive blobs inside nodule patches, not the boundary), and the CPM of detection on the test scans.
The variants are one-change overrides of ``configs/demo.yaml`` (its 3-level UNet).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import quality  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Variant:
    """One remedy of the seed plan as ``--set`` overrides of the ablated config."""

    remedy: str
    overrides: tuple[str, ...] = ()


VARIANTS: dict[str, Variant] = {
    "baseline": Variant("the config as shipped"),
    "fg25": Variant("sampler foreground share 0.25 (3 negatives : 1 positive)", ("sampler.fg_fraction=0.25",)),
    "fg10": Variant("sampler foreground share 0.10", ("sampler.fg_fraction=0.1",)),
    "hard_negatives": Variant("hard-negative mining every 5 epochs (top 10% boosted 4x)",
                              ("sampler.hard_mining_every=5",)),
    "dicefocal": Variant("DiceFocal (gamma 2) instead of DiceCE", ("loss.name=dicefocal",)),
    "tversky": Variant("Tversky (alpha 0.3, beta 0.7) instead of DiceCE", ("loss.name=tversky",)),
    "combo": Variant("Dice + focal + 0.1 boundary loss instead of DiceCE", ("loss.name=combo",)),
    "ce_weight50": Variant("cross-entropy with nodule voxels weighted 50x", ("loss.ce_pos_weight=50",)),
    "batch_dice": Variant("Dice over the batch instead of per patch", ("loss.dice_batch=true",)),
    "no_prior": Variant("no prior initialisation of the output bias", ("model.init_fg_probability=null",)),
    "deeper": Variant("deeper UNet 16-32-64-128 (3 strides)",
                      ("model.channels=[16, 32, 64, 128]", "model.strides=[2, 2, 2]")),
    "wider": Variant("wider UNet 32-64-128", ("model.channels=[32, 64, 128]",)),
    "attention": Variant("AttentionUnet, same channels", ("model.name=attention_unet",)),
    "dynunet": Variant("DynUNet, same filters, no deep supervision",
                       ("model.name=dynunet", "model.deep_supervision=false")),
    "dynunet_ds": Variant("DynUNet, same filters, deep supervision (1 extra head)",
                          ("model.name=dynunet", "model.deep_supervision=true", "model.deep_supr_num=1")),
    "dynunet_narrow": Variant("DynUNet 8-16-32, no deep supervision (half the filters: a third of dynunet's CPU time)",
                              ("model.name=dynunet", "model.channels=[8, 16, 32]", "model.deep_supervision=false")),
    "dynunet_narrow_ds": Variant("DynUNet 8-16-32, deep supervision (1 extra head)",
                                 ("model.name=dynunet", "model.channels=[8, 16, 32]", "model.deep_supervision=true",
                                  "model.deep_supr_num=1")),
    "no_warmup": Variant("no warm-up epoch", ("optim.warmup_epochs=0",)),
    "sgdr": Variant("cosine with warm restarts every 10 epochs (SGDR)", ("optim.restart_epochs=10",)),
    "multiscale": Variant("48/64/96 patches, each resized to the training size",
                          ("sampler.scale_weights={48: 1, 64: 1, 96: 1}",)),
}


def config_digest(path: Path) -> str:
    """SHA-256 of the ablated config file's text: runs of one table must share it."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def check_same_config(out: Path, digest: str) -> None:
    """SystemExit if ``out`` already holds runs of another version of the config (their figures would not compare)."""
    for done in sorted(out.glob("*/seed*.json")):
        other = json.loads(done.read_text()).get("config_sha256")
        if other is not None and other != digest:
            raise SystemExit(f"{done} was trained from another version of the config ({other[:12]} vs "
                             f"{digest[:12]}): pass another --out, or --config the file those runs used")


def run_one(name: str, seed: int, args: argparse.Namespace) -> Path:
    """Train and score one (variant, seed) unless its JSON exists; the JSON's path."""
    out = args.out / name / f"seed{seed}.json"
    if out.exists():
        return out
    work = args.out / name / f"seed{seed}"
    if (work / "run").exists():  # an interrupted run: start it again from scratch
        shutil.rmtree(work / "run")
    work.mkdir(parents=True, exist_ok=True)
    overrides = [*VARIANTS[name].overrides, f"train.seed={seed}", f"data.dataset={args.store}",
                 "logging.progress=false", "logging.tensorboard=false"]
    cfg = quality.load_config(args.config, overrides)
    result = {"variant": name, "remedy": VARIANTS[name].remedy, "config": str(args.config),
              "config_sha256": config_digest(args.config), "overrides": overrides, "store": args.store,
              **quality.measure(cfg, work / "run", args.annotations, detect=not args.no_detect, calibrate=True)}
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{name} seed {seed}: {quality.headline(result)}", file=sys.stderr, flush=True)
    return out


# ----------------------------------------------------------------------------------------------
# report


def at_best_val_threshold(sweeps: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The validation and test rows of the swept threshold with the highest validation Dice."""
    best = max((r for r in sweeps["val_sweep"] if r["dice"] is not None), key=lambda r: r["dice"])
    return best, next(r for r in sweeps["test_sweep"] if r["threshold"] == best["threshold"])


def figures(r: dict[str, Any]) -> dict[str, float | None]:
    """The figures a table row shows, of one run's JSON."""
    val, test = at_best_val_threshold(r["calibrated"])
    det = r.get("detection", {})
    return {"val_dice": val["dice"], "test_dice": test["dice"],
            "test_precision": test["precision"], "test_recall": test["recall"],
            "val_sd": val["signed_sd"], "test_sd": test["signed_sd"],
            "threshold": val["threshold"], "cpm": det.get("cpm"),
            "fp_per_scan": (det["n_false_positives"] / det["n_scans"]) if det else None,
            "train_s": r["train_seconds"]}


def summarize(out: Path) -> dict[str, dict[str, Any]]:
    """Per variant: the seeds run and each figure's mean and spread (max - min) over them."""
    table: dict[str, dict[str, Any]] = {}
    for name in VARIANTS:
        runs = sorted((out / name).glob("seed*.json"))
        if not runs:
            continue
        rows = [figures(json.loads(p.read_text())) for p in runs]
        stats = {}
        for key in rows[0]:
            vals = [r[key] for r in rows if r[key] is not None]
            stats[key] = (float(np.mean(vals)), float(np.ptp(vals))) if vals else (None, None)
        table[name] = {"seeds": [int(p.stem[4:]) for p in runs], "stats": stats}
    return table


def markdown(table: dict[str, dict[str, Any]]) -> str:
    """The ablation table: one row per variant, deltas against the baseline's means."""
    base = table.get("baseline", {}).get("stats", {})

    def cell(stats: dict, key: str, delta: bool = True, digits: int = 3) -> str:
        mean, spread = stats.get(key, (None, None))
        if mean is None:
            return "-"
        text = f"{mean:.{digits}f}"
        if spread:
            text += f" (±{spread / 2:.{digits}f})"
        ref = base.get(key, (None, None))[0]
        if delta and ref is not None and stats is not base:
            text += f" [{mean - ref:+.{digits}f}]"
        return text

    head = ("| variant | change | seeds | threshold (val) | val Dice | test Dice | test precision / recall "
            "| signed SD val / test (vox) | CPM | FP / scan | train s |")
    lines = [head, "|" + "---|" * 11]
    for name, row in table.items():
        s = row["stats"]
        lines.append(
            f"| {name} | {VARIANTS[name].remedy} | {','.join(map(str, row['seeds']))} "
            f"| {cell(s, 'threshold', False, 2)} | {cell(s, 'val_dice')} | {cell(s, 'test_dice')} "
            f"| {cell(s, 'test_precision', False, 2)} / {cell(s, 'test_recall', False, 2)} "
            f"| {cell(s, 'val_sd', False, 2)} / {cell(s, 'test_sd', False, 2)} | {cell(s, 'cpm')} "
            f"| {cell(s, 'fp_per_scan', False, 1)} | {cell(s, 'train_s', False, 0)} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="folder of the runs and their JSON")
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "demo.yaml")
    ap.add_argument("--store")
    ap.add_argument("--annotations", help="annotations.csv of the store's scans (for the CPM)")
    ap.add_argument("--variants", default="all", help=f"comma-separated, or all: {', '.join(VARIANTS)}")
    ap.add_argument("--seeds", default="0", help="comma-separated training seeds")
    ap.add_argument("--no-detect", action="store_true", help="skip the scan-level detection and CPM")
    ap.add_argument("--report", action="store_true", help="print the table of the runs in --out; train nothing")
    ap.add_argument("--markdown", type=Path, help="with --report: also write the table here")
    args = ap.parse_args(argv)
    if args.report:
        text = markdown(summarize(args.out))
        print(text)
        if args.markdown:
            args.markdown.write_text(text)
        return
    if not args.store:
        ap.error("--store is required to train (build one with `make demo` or benchmarks/quality.py)")
    names = list(VARIANTS) if args.variants == "all" else [v.strip() for v in args.variants.split(",")]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        ap.error(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    check_same_config(args.out, config_digest(args.config))
    for seed in (int(s) for s in args.seeds.split(",")):
        for name in names:
            run_one(name, seed, args)


if __name__ == "__main__":
    main()
