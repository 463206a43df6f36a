"""Training-step throughput: the model alone against the whole data path, and the optimized step against
the eager baseline, all in one run on one card.

    python benchmarks/gpu_step.py [--store STORE] [--steps 200] [--warmup 15] [--workers 8 [--workers 16]]
                                  [--batch 32] [--json OUT] [--set KEY=VALUE ...]

The model, loss, augmentation and step options of configs/luna16.yaml (``--set`` overrides any key,
e.g. ``train.compile=false``), batch 32 at 64^3. Four measurements, in this order:

- **baseline, model only**: eager, no channels-last, unfused AdamW (``train.compile``, ``channels_last``
  and ``fused_optimizer`` false), a random batch already on the device: the step as it was;
- **channels-last alone, model only**: the baseline with ``train.channels_last`` on (what evaluate, detect,
  predict and uncompiled runs get on CUDA; InstanceNorm3d may undo the layout at every norm);
- **optimized, model only**: the config's step options (null = on for CUDA), same model and batch;
- **end to end**, once per ``--workers``: the trainer's own epoch loop (``train_epoch``) on the same
  parts: store -> PatchDataset -> N loader workers -> pinned uint8 batches -> device decode and
  augmentation -> step, loss summed on the device and read back every ``logging.step_every`` steps.

Reports patches/s of each, end to end over model only (target >= 0.9), the share of the end-to-end
wall time spent waiting for the loader (target < 5%), optimized over baseline (target >= 2), peak
GPU memory and the card's name; ``--json`` writes it all. Without a GPU it runs on the CPU (use a
small ``--set model.channels=...`` and a few ``--steps``). Without ``--store`` it builds one from
10 synthetic scans (needs SimpleITK).
"""

from __future__ import annotations

import argparse
import atexit
import dataclasses
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from luna_prep.format.reader import PatchStore
from luna_train.config import TrainConfig, load_config
from luna_train.data.loader import make_loader
from luna_train.nets.models import count_parameters
from luna_train.training import distributed as D
from luna_train.training.assemble import assemble, training_module
from luna_train.training.loop import LoopState, TrainParts, train_epoch, train_step

ROOT = Path(__file__).resolve().parents[1]
BASELINE = ("train.compile=false", "train.channels_last=false", "train.fused_optimizer=false")


class TimedLoader:
    """A loader whose iterator adds the seconds spent waiting for each batch to ``wait``."""

    def __init__(self, loader):
        self.loader, self.wait = loader, 0.0

    def __iter__(self):
        it = iter(self.loader)
        while True:
            t0 = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                return
            self.wait += time.perf_counter() - t0
            yield batch


def bench_config(store: str, overrides: list[str], batch: int, steps: int, warmup: int) -> TrainConfig:
    """configs/luna16.yaml on ``store``: every subset trains, one epoch holds warmup + steps batches."""
    subsets = sorted(int(s) for s in PatchStore(store).manifest["subset"].unique())
    cfg = load_config(ROOT / "configs" / "luna16.yaml", [
        f"data.dataset={store}", f"data.batch_size={batch}", f"split.train_subsets={subsets}",
        "split.val_subsets=[]", "split.test_subsets=[]", "split.fold=null", "logging.progress=false",
        "data.num_workers=0",  # the loaders that run are built per measurement (end_to_end)
        f"sampler.samples_per_epoch={batch * (steps + warmup)}", *overrides])
    return cfg


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_gb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 1024 ** 3 if device.type == "cuda" else None


def step_parts(cfg: TrainConfig, info: D.DistInfo) -> TrainParts:
    """The trainer's parts of ``cfg`` (assemble + training_module), as Fit builds them."""
    parts = assemble(cfg, info)
    return TrainParts(
        model=training_module(parts.model, cfg, info), loss_fn=parts.loss_fn, optimizer=parts.optimizer,
        scheduler=parts.scheduler, scaler=parts.scaler, sampler=parts.sampler, loader=parts.loader,
        device=info.device, amp=cfg.train.amp, grad_clip=cfg.optim.grad_clip, batch_size=cfg.data.batch_size,
        augment_on_device=parts.augment_on_device, hard_mining=cfg.sampler.hard_mining_every > 0,
        options=parts.options, sync_at=lambda s: s % cfg.logging.step_every == 0)


def model_only(parts: TrainParts, size: int, steps: int, warmup: int) -> dict:
    """Steps on one random batch already on the device (the loss summed there, read once at the end)."""
    device, n = parts.device, parts.batch_size
    g = torch.Generator(device=device).manual_seed(0)
    image = torch.rand((n, 1, size, size, size), generator=g, device=device)
    label = (torch.rand((n, 1, size, size, size), generator=g, device=device) > 0.98).float()
    parts.model.train()
    total = torch.zeros((), dtype=torch.float64, device=device)
    for i in range(warmup + steps):
        if i == warmup:
            sync(device)
            reset_peak(device)
            t0 = time.perf_counter()
        total += train_step(parts, image, label)[0].detach().double()
    loss = float(total)  # one sync
    wall = time.perf_counter() - t0
    return {"patches_per_s": n * steps / wall, "step_ms": 1000 * wall / steps, "steps": steps,
            "peak_gpu_memory_gb": peak_gb(device), "mean_loss": loss / (warmup + steps)}


def end_to_end(parts: TrainParts, workers: int, epoch: int, steps: int, warmup: int) -> dict:
    """The trainer's epoch loop (epoch ``epoch`` of the sampler) over a loader with ``workers`` workers, for
    warmup + steps batches; the figures of the last ``steps``."""
    device = parts.device
    loader = make_loader(parts.loader.dataset, sampler=parts.sampler, batch_size=parts.batch_size,
                         num_workers=workers, persistent_workers=False)
    loader.generator = torch.Generator().manual_seed(epoch)
    timed = TimedLoader(loader)
    mark: dict = {}

    def on_step(st: LoopState) -> None:
        if st.step_in_epoch == warmup:
            sync(device)
            reset_peak(device)
            mark.update(t0=time.perf_counter(), wait0=timed.wait)

    state = LoopState(epoch=epoch)
    train_epoch(dataclasses.replace(parts, loader=timed), state, on_step=on_step, hard={"positions": [], "scores": []})
    sync(device)
    wall = time.perf_counter() - mark["t0"]
    wait = timed.wait - mark["wait0"]
    n = parts.batch_size
    return {"workers": workers, "patches_per_s": n * steps / wall, "step_ms": 1000 * wall / steps, "steps": steps,
            "data_wait_share": wait / wall, "peak_gpu_memory_gb": peak_gb(device),
            "mean_loss": state.loss_sum / max(state.step_in_epoch, 1)}


def measure(store: str, overrides: list[str], batch: int, steps: int, warmup: int, workers: list[int],
            baseline: bool = True, partial: Callable[[dict], None] = lambda r: None) -> dict:
    """Baseline and optimized model-only steps, then end to end with each worker count (see the module doc);
    ``partial`` gets the result so far after each measurement."""
    info = D.DistInfo(device=D.pick_device())
    device = info.device
    torch.backends.cudnn.benchmark = True
    result: dict = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                    "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M"), "batch": batch,
                    "cpu_cores": os.cpu_count(), "load_average": [round(v, 2) for v in os.getloadavg()],
                    "overrides": overrides}
    if baseline:
        cfg = bench_config(store, [*overrides, *BASELINE], batch, steps, warmup)
        parts = step_parts(cfg, info)
        result["baseline_model_only"] = {"options": parts.options.to_dict(),
                                         **model_only(parts, input_size(cfg), steps, warmup)}
        del parts
        partial(result)
        # channels-last alone, eager: what evaluate / detect / predict and an uncompiled run get. MONAI's UNet
        # normalizes with InstanceNorm3d, which makes its input contiguous: each may undo the layout
        cfg = bench_config(store, [*overrides, *BASELINE, "train.channels_last=true"], batch, steps, warmup)
        parts = step_parts(cfg, info)
        result["eager_channels_last_model_only"] = {"options": parts.options.to_dict(),
                                                    **model_only(parts, input_size(cfg), steps, warmup)}
        del parts
        partial(result)
    cfg = bench_config(store, overrides, batch, steps, warmup)
    parts = step_parts(cfg, info)
    try:
        optimized = model_only(parts, input_size(cfg), steps, warmup)
    except Exception as exc:  # a compiler failure must not cost the rest of a lent GPU's time
        if not parts.options.compile:
            raise
        result["compile_error"] = f"{type(exc).__name__}: {exc}"[:2000]
        cfg = bench_config(store, [*overrides, "train.compile=false"], batch, steps, warmup)
        parts = step_parts(cfg, info)
        optimized = model_only(parts, input_size(cfg), steps, warmup)
    result.update(input=input_size(cfg), amp=cfg.train.amp if device.type == "cuda" else "none",
                  model=cfg.model.name, channels=list(cfg.model.channels), step_every=cfg.logging.step_every,
                  parameters=count_parameters(parts.model), options=parts.options.to_dict(), model_only=optimized)
    result["end_to_end"] = []
    for epoch, n_workers in enumerate(workers):
        partial(result)
        result["end_to_end"].append(end_to_end(parts, n_workers, epoch, steps, warmup))
    result.update(summary(result))
    return result


def loader_only(store: str, overrides: list[str], batch: int, batches: int, workers: list[int],
                resize_on_device: bool, partial=None) -> dict:
    """Patches/s the training loader delivers alone (no model, batches left on the host), per worker count:
    what N workers can feed. ``resize_on_device``: workers only read (as on a GPU) or also resize (as on
    the CPU)."""
    from luna_train.data.dataset import PatchDataset
    from luna_train.data.sampler import WeightedPatchSampler
    from luna_train.training.assemble import run_rows

    warmup = 3
    cfg = bench_config(store, overrides, batch, batches, warmup)
    rows = run_rows(cfg).train
    out = {"device": "host", "cpu_cores": os.cpu_count(), "load_average": [round(v, 2) for v in os.getloadavg()],
           "batch": batch, "batches": batches, "resize_on_device": resize_on_device, "overrides": overrides,
           "loader": []}
    for epoch, n_workers in enumerate(workers):
        ds = PatchDataset(store, rows, train_size=cfg.data.train_size, stored=True, resize_on_device=resize_on_device)
        sampler = WeightedPatchSampler(rows, cfg.sampler, seed=0)
        sampler.set_epoch(epoch)
        loader = make_loader(ds, sampler=sampler, batch_size=batch, num_workers=n_workers, persistent_workers=False)
        it = iter(loader)
        for _ in range(warmup):
            next(it)
        t0 = time.perf_counter()
        for _ in range(batches):
            next(it)
        wall = time.perf_counter() - t0
        del it
        out["loader"].append({"workers": n_workers, "patches_per_s": batch * batches / wall,
                              "patches_per_s_per_worker": batch * batches / wall / max(n_workers, 1)})
        if partial is not None:  # a step cut short by its time limit keeps what it measured
            partial(out)
    return out


def input_size(cfg: TrainConfig) -> int:
    """The edge of the patches the model trains on."""
    return cfg.augment.crop_size or cfg.data.train_size or cfg.data.eval_scale


def summary(result: dict) -> dict:
    """The ratios the targets are stated in (docs/benchmarks.md)."""
    mo = result["model_only"]["patches_per_s"]
    out: dict = {"end_to_end_over_model_only": {str(r["workers"]): r["patches_per_s"] / mo
                                                for r in result["end_to_end"]}}
    if "baseline_model_only" in result:
        out["speedup_over_baseline"] = mo / result["baseline_model_only"]["patches_per_s"]
    if "eager_channels_last_model_only" in result:
        out["eager_channels_last_over_baseline"] = (result["eager_channels_last_model_only"]["patches_per_s"]
                                                    / result["baseline_model_only"]["patches_per_s"])
    best = max(result["end_to_end"], key=lambda r: r["patches_per_s"])
    # the data-wait target holds with the workers the docs recommend: min(8, cores - 2)
    recommended = min(8, max((result.get("cpu_cores") or os.cpu_count() or 3) - 2, 1))
    judged = next((r for r in result["end_to_end"] if r["workers"] == recommended), best)
    out["recommended_workers"], out["data_wait_judged_with_workers"] = recommended, judged["workers"]
    out["targets"] = {"end_to_end_over_model_only_ge_0.9": best["patches_per_s"] / mo >= 0.9,
                      "data_wait_lt_5pct": judged["data_wait_share"] < 0.05}
    if "speedup_over_baseline" in out:
        out["targets"]["speedup_ge_2"] = out["speedup_over_baseline"] >= 2.0
    return out


def synthetic_store() -> str:
    from luna_prep.build import BuildConfig, run_build
    from luna_prep.synthetic.scans import synthesize

    work = Path(tempfile.mkdtemp(prefix="luna-bench-gpu-"))
    atexit.register(shutil.rmtree, work, True)  # 10 scans and their store: gone when the benchmark ends
    data = synthesize(work / "luna16", n_scans=10).root
    run_build(BuildConfig(data_root=str(data), out=str(work / "patches.zarr")), workers=2, progress=False)
    return str(work / "patches.zarr")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=15, help="untimed steps first (compile, cuDNN autotuning)")
    ap.add_argument("--workers", type=int, action="append", help="loader workers; repeat for several [8]")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--no-baseline", action="store_true", help="skip the eager baseline")
    ap.add_argument("--loader-only", choices=["device-resize", "worker-resize"],
                    help="measure only what the loader delivers per --workers (--steps batches): workers that "
                         "only read (GPU training) or that also resize (CPU training)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a key of configs/luna16.yaml (e.g. model.channels=[8,16])")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    store = args.store or synthetic_store()

    def write(result: dict) -> None:
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(result, indent=2))

    if args.loader_only:
        result = loader_only(store, args.overrides, args.batch, args.steps, args.workers or [8],
                             args.loader_only == "device-resize", partial=write)
    else:
        result = measure(store, args.overrides, args.batch, args.steps, args.warmup, args.workers or [8],
                         baseline=not args.no_baseline, partial=write)
    print(json.dumps(result, indent=2))
    write(result)
    return result


if __name__ == "__main__":
    main()
