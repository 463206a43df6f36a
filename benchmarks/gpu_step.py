"""Training-step throughput of the full configuration, and the share of step time spent waiting for data.

    python benchmarks/gpu_step.py [--store STORE] [--steps 200] [--workers 8] [--json OUT] [--set KEY=VALUE ...]

Batch 32 at 64^3, bf16 autocast on CUDA, the model and loss of configs/luna16.yaml, patches
streamed through PatchDataset + WeightedPatchSampler + DataLoader as in training. Reports
patches/s, step time, data-wait share and peak GPU memory, with the card's name. Without a GPU it
runs on the CPU (use a few --steps: it is slow). Without --store it builds one from synthetic scans.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import torch

from luna_prep.format.reader import PatchStore
from luna_train.config import TrainConfig, load_config
from luna_train.data.augment import augment_batch_on_device, batch_generator
from luna_train.data.dataset import PatchDataset, decode_batch
from luna_train.data.loader import make_loader
from luna_train.data.sampler import WeightedPatchSampler
from luna_train.nets.losses import build_loss
from luna_train.nets.models import build_model, count_parameters
from luna_train.training.loop import amp_context

ROOT = Path(__file__).resolve().parents[1]


def measure(store: str, cfg: TrainConfig, steps: int, warmup: int, workers: int) -> dict:
    """Time ``warmup + steps`` training steps of ``cfg`` on ``store``; the figures of the last ``steps``."""
    batch_size = cfg.data.batch_size
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cudnn.benchmark = True
    rows = PatchStore(store).manifest.reset_index(drop=True)
    dataset = PatchDataset(store, rows, train_size=cfg.data.train_size, stored=True)
    # one epoch holds every draw, so a small store never ends the loader early
    sampler_cfg = dataclasses.replace(cfg.sampler, samples_per_epoch=batch_size * (steps + warmup))
    sampler = WeightedPatchSampler(rows, sampler_cfg, seed=0)
    loader = make_loader(dataset, sampler, batch_size=batch_size, num_workers=workers,
                         pin_memory=device.type == "cuda")
    model = build_model(cfg.model).to(device)
    loss_fn = build_loss(cfg.loss)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr)
    amp = cfg.train.amp if device.type == "cuda" else "none"
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    wait = compute = 0.0
    it = iter(loader)
    for step in range(warmup + steps):
        t0 = time.perf_counter()
        batch = next(it)
        image, label = decode_batch(batch, device)
        sync()
        t1 = time.perf_counter()
        aug = augment_batch_on_device({"image": image, "label": label}, cfg.augment,
                                      batch_generator(0, 0, step, device))
        with amp_context(device, amp):
            loss = loss_fn(model(aug["image"]), aug["label"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync()
        t2 = time.perf_counter()
        if step == warmup - 1 and device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        if step >= warmup:
            wait += t1 - t0
            compute += t2 - t1
    total = wait + compute
    return {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "date": time.strftime("%Y-%m-%d"), "batch": batch_size, "input": cfg.data.train_size, "amp": amp,
        "model": cfg.model.name, "channels": list(cfg.model.channels), "parameters": count_parameters(model),
        "workers": workers, "steps": steps,
        "patches_per_s": batch_size * steps / total, "steps_per_s": steps / total,
        "data_wait_share": wait / total,
        "peak_gpu_memory_gb": torch.cuda.max_memory_allocated() / 1024 ** 3 if device.type == "cuda" else None,
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a key of configs/luna16.yaml (e.g. model.channels=[8,16])")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    if args.store is None:
        from luna_prep.build import BuildConfig, run_build
        from luna_prep.synthetic.scans import synthesize

        work = Path(tempfile.mkdtemp(prefix="luna-bench-gpu-"))
        data = synthesize(work / "luna16", n_scans=10).root
        args.store = str(work / "patches.zarr")
        run_build(BuildConfig(data_root=str(data), out=args.store), workers=2, progress=False)
    cfg = load_config(ROOT / "configs" / "luna16.yaml", [f"data.batch_size={args.batch}", *args.overrides])
    result = measure(args.store, cfg, args.steps, args.warmup, args.workers)
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
