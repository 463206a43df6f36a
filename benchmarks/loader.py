"""Benchmark of the training loader against the decompression floor and three baselines, as ratios.

    python benchmarks/loader.py [--store STORE] [--json OUT] [--batches 30] [--rounds 15] [--main-process-only]

Patches per second for batches of 32 patches at 64^3, no augmentation:
  ours        PatchDataset + WeightedPatchSampler through a DataLoader (0, 1 and 2 workers)
  floor       decompressing the same chunks with numcodecs in a loop (bytes already in memory), the
              faster of numcodecs' default (Blosc's threads) and one thread; alternated with ours
              in the main process round by round on the same patches, the ratio a median of rounds
  memory      slicing the same patches out of an in-memory numpy array
  zarr        zarr-python per-item reads of the same rows
  monai       MONAI on the fly: LoadImage the .mhd, Spacing, RandCropByPosNegLabeld (needs itk-io)
  http        ours over HTTP from a localhost server (Range requests), as a ratio to local: nginx where it
              is installed (as a store would be served), and the tests' Python server
With --integrity-only: ours on the store and on a v1 copy without chunk checksums, and ours on the
store opened plainly and through a dataset card (pinned), each pair interleaved in the same run.
Without --store, a store is built from 10 synthetic scans first.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numcodecs
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from luna_prep.format.reader import PatchStore  # noqa: E402
from luna_prep.format.spec import IMAGE_ARRAY, MASK_ARRAY
from luna_train.data.dataset import PatchDataset, decode_batch  # noqa: E402
from luna_train.data.loader import make_loader  # noqa: E402
from luna_train.data.sampler import SamplerConfig, WeightedPatchSampler  # noqa: E402

BATCH = 32
SCALE = 64


def rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("nan")


def ours(store: str, rows, batches: int, workers: int) -> float:
    ds = PatchDataset(store, rows, train_size=SCALE, stored=True)
    sampler = WeightedPatchSampler(rows, SamplerConfig(samples_per_epoch=BATCH * (batches + 3)), seed=0)
    loader = make_loader(ds, sampler, batch_size=BATCH, num_workers=workers, persistent_workers=False)
    it = iter(loader)
    for _ in range(3 if workers else 1):  # warm-up: worker start, first shard indexes
        next(it)
    t = time.perf_counter()
    n = 0
    for batch in it:  # stored dtypes: decode_batch converts them on the training device
        n += batch["image"].shape[0]
    return rate(n, time.perf_counter() - t)


def cpu_decode_ms(store: str, rows) -> float:
    """What decode_batch (uint8 -> float32 in [0, 1]) costs per batch when the device is the CPU."""
    ds = PatchDataset(store, rows, train_size=SCALE, stored=True)
    from luna_train.data.dataset import collate_patches

    batch = collate_patches(ds.__getitems__(list(range(BATCH))))
    t = time.perf_counter()
    for _ in range(5):
        decode_batch(batch, "cpu")
    return (time.perf_counter() - t) / 5 * 1000


def chunk_bytes(store: PatchStore, indices: np.ndarray) -> list[tuple[bytes | None, bytes | None]]:
    """The stored image and mask chunk of each row (None: not stored, e.g. an empty mask)."""
    arrays = [store.patches(SCALE, IMAGE_ARRAY), store.patches(SCALE, MASK_ARRAY)]
    requests = [a.requests([int(i) for i in indices]) for a in arrays]
    return [tuple(None if req is None else store.location.read_range(*req) for req in pair) for pair in zip(*requests)]


def floor(blobs: list[tuple[bytes | None, bytes | None]], threads: bool | None = None) -> float:
    """Decoding alone with numcodecs; ``threads``: numcodecs' ``blosc.use_threads`` (None: its default,
    Blosc's own threads from the main thread; False: one thread, the faster on this VM)."""
    codec, previous = numcodecs.Blosc(), numcodecs.blosc.use_threads
    numcodecs.blosc.use_threads = threads
    try:
        t = time.perf_counter()
        for pair in blobs:
            for blob in pair:
                if blob is not None:
                    codec.decode(blob)
        return rate(len(blobs), time.perf_counter() - t)
    finally:
        numcodecs.blosc.use_threads = previous


def memory(store: PatchStore, indices: np.ndarray) -> float:
    uniq = np.unique(indices)
    data = {int(i): store.patches(SCALE, IMAGE_ARRAY).read(int(i)) for i in uniq}
    big = np.stack([data[int(i)] for i in uniq])
    pos = {int(i): k for k, i in enumerate(uniq)}
    t = time.perf_counter()
    for i in indices:
        torch.from_numpy(big[pos[int(i)]].astype(np.float32))
    return rate(len(indices), time.perf_counter() - t)


def zarr_items(store: PatchStore, indices: np.ndarray) -> float:
    img, msk = store.image_array(SCALE), store.mask_array(SCALE)
    t = time.perf_counter()
    for i in indices:
        img[int(i)]
        msk[int(i)]
    return rate(len(indices), time.perf_counter() - t)


def monai_baseline(data_root: Path, n: int) -> float:
    try:
        import itk  # noqa: F401
    except ImportError:
        return float("nan")
    from monai.transforms import (
        Compose,
        EnsureChannelFirstd,
        LoadImaged,
        RandCropByPosNegLabeld,
        ScaleIntensityRanged,
        Spacingd,
    )

    scans = sorted(data_root.glob("subset*/*.mhd"))
    xf = Compose([
        LoadImaged(keys=["image"], reader="ITKReader"), EnsureChannelFirstd(keys=["image"]),
        Spacingd(keys=["image"], pixdim=(1.0, 1.0, 1.0), mode="bilinear"),
        ScaleIntensityRanged(keys=["image"], a_min=-1000, a_max=400, b_min=0.0, b_max=1.0, clip=True),
    ])
    crop = RandCropByPosNegLabeld(keys=["image", "label"], label_key="label", spatial_size=(SCALE,) * 3,
                                  pos=1, neg=1, num_samples=4)
    done, t = 0, time.perf_counter()
    while done < n:
        d = xf({"image": str(scans[done // 4 % len(scans)])})
        d["label"] = (d["image"] > 0.7).float()
        done += len(crop(d))
    return rate(done, time.perf_counter() - t)


def strip_checksums(store: str, out: str) -> str:
    """A format v1 copy of a v2 store (the chunks' crc32c removed): the same patches without checksums."""
    import shutil

    from luna_prep.format.shard_layout import ShardIndex

    shutil.copytree(store, out, ignore=shutil.ignore_patterns("_build", "volumes"))
    root = json.loads(Path(out, "zarr.json").read_text())
    root["attributes"]["format_version"] = 1
    for path, meta in root["consolidated_metadata"]["metadata"].items():
        if meta.get("node_type") != "array":
            continue
        conf = meta["codecs"][0]["configuration"]
        conf["codecs"] = [c for c in conf["codecs"] if c["name"] != "crc32c"]
        Path(out, path, "zarr.json").write_text(json.dumps(meta))
        layout = ShardIndex(int(meta["chunk_grid"]["configuration"]["chunk_shape"][0]))
        for shard in Path(out, path).glob("c/*/0/0/0"):
            data = shard.read_bytes()
            index = layout.decode(data)
            chunks = [None] * layout.n_chunks
            for k, start, stop in layout.spans(index):
                chunks[k] = data[start:stop - 4]
            shard.write_bytes(b"".join(layout.pack(chunks)))
    Path(out, "zarr.json").write_text(json.dumps(root))
    return out


def checksum_cost(store: str, rows, batches: int, rounds: int = 3) -> dict:
    """Loader throughput (0 workers) of the v2 store and of its v1 copy without checksums, interleaved."""
    v1_rates, v2_rates = [], []
    with tempfile.TemporaryDirectory(prefix="luna-bench-v1-") as tmp:  # a whole copy of the store: removed after
        v1 = strip_checksums(store, tmp + "/v1.zarr")
        for _ in range(rounds):
            v1_rates.append(ours(v1, rows, batches, workers=0))
            v2_rates.append(ours(store, rows, batches, workers=0))
    best_v1, best_v2 = max(v1_rates), max(v2_rates)
    return {"v1_no_checksum_patches_per_s": best_v1, "v2_checksum_patches_per_s": best_v2,
            "checksum_cost": 1 - best_v2 / best_v1}


def pin_cost(store: str, rows, batches: int, rounds: int = 3) -> dict:
    """Loader throughput (0 workers) of the store opened plainly and pinned to a card, interleaved."""
    from luna_prep.sharing.cards import write_card

    plain, pinned = [], []
    with tempfile.TemporaryDirectory(prefix="luna-bench-card-") as tmp:
        card = str(write_card(store, "bench", tmp))
        for _ in range(rounds):
            plain.append(ours(store, rows, batches, workers=0))
            pinned.append(ours(card, rows, batches, workers=0))
    return {"plain_patches_per_s": max(plain), "pinned_patches_per_s": max(pinned),
            "pin_cost": 1 - max(pinned) / max(plain)}


def main_process_rounds(store: str, rows, rounds: int, batches_per_round: int = 8) -> dict:
    """The floor (both threadings) and ours in the main process on the same patches, alternated round by
    round: each round, the floor decodes the chunks of the batches ours reads next (bytes read beforehand,
    outside the clock), then ours reads those batches through the DataLoader. A shared machine's speed
    drifts within seconds, so the ratio is taken per round (~0.2 s each), then the median.
    Shard indexes are read before the clock (the steady state of an epoch: the floor has no indexes)."""
    store_obj = PatchStore(store)
    draws = list(WeightedPatchSampler(rows, SamplerConfig(samples_per_epoch=BATCH * (rounds * batches_per_round + 1)),
                                      seed=0))
    ds = PatchDataset(store, rows, train_size=SCALE, stored=True)
    it = iter(make_loader(ds, draws, batch_size=BATCH, num_workers=0))
    next(it)  # the first batch: the store opens
    reader = ds._open()
    for name in (IMAGE_ARRAY, MASK_ARRAY):
        reader.patches(SCALE, name).prefetch_indexes(rows["index"].tolist())
    each: dict[str, list[float]] = {"floor_default_threads": [], "floor_one_thread": [], "ours": []}
    for r in range(rounds):
        first = BATCH * (1 + r * batches_per_round)
        draws_now = draws[first:first + BATCH * batches_per_round]
        blobs = chunk_bytes(store_obj, rows["index"].to_numpy()[[p for p, _ in draws_now]])
        each["floor_default_threads"].append(floor(blobs, threads=None))
        each["floor_one_thread"].append(floor(blobs, threads=False))
        t, n = time.perf_counter(), 0
        for _ in range(batches_per_round):
            n += next(it)["image"].shape[0]
        each["ours"].append(rate(n, time.perf_counter() - t))
    floors = [max(a, b) for a, b in zip(each["floor_default_threads"], each["floor_one_thread"])]  # the faster
    ratios = [o / f for o, f in zip(each["ours"], floors)]
    out = {f"{k}_patches_per_s": statistics.median(v) for k, v in each.items()}
    return out | {"floor_patches_per_s": statistics.median(floors), "patches_per_s": out["ours_patches_per_s"],
                  "patches_per_s_0_workers": out["ours_patches_per_s"], "ratio_to_floor": statistics.median(ratios),
                  "ratio_to_floor_each_round": ratios, "floor_each_round": floors, "ours_each_round": each["ours"]}


def _serve(store: str, urls) -> None:
    from http_server import serve_directory

    with serve_directory(store) as (url, _):
        urls.put(url)
        time.sleep(24 * 3600)


NGINX_CONF = """daemon off; worker_processes 1; pid {d}/nginx.pid; error_log {d}/error.log;
events {{ worker_connections 1024; }}
http {{ access_log off; sendfile on; tcp_nopush on; tcp_nodelay on; keepalive_requests 1000000;
  client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d}; uwsgi_temp_path {d}; scgi_temp_path {d};
  server {{ listen 127.0.0.1:{port}; root {root}; location / {{ }} }} }}
"""


@contextlib.contextmanager
def nginx_server(store: str):
    """nginx serving ``store`` on a free localhost port (one worker, sendfile, keep-alive), as a production
    HTTP server would; yields its URL."""
    import socket
    import subprocess

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory(prefix="luna-bench-nginx-") as d:
        Path(d, "nginx.conf").write_text(NGINX_CONF.format(d=d, port=port, root=Path(store).resolve()))
        proc = subprocess.Popen(["nginx", "-c", f"{d}/nginx.conf", "-p", d], stderr=subprocess.DEVNULL)
        try:
            url = f"http://127.0.0.1:{port}"
            for _ in range(100):  # until it answers
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.1):
                        break
                except OSError:
                    time.sleep(0.05)
            yield url
        finally:
            proc.terminate()
            proc.wait(10)


@contextlib.contextmanager
def python_server(store: str):
    """The tests' Range server (Python threads) in a process of its own, as a real server would be: inside
    the reading process it took the reader's GIL (0.23-0.27x local against 0.27-0.39x from its own process)."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    urls = context.Queue()
    server = context.Process(target=_serve, args=(store, urls), daemon=True)
    server.start()
    try:
        yield urls.get(timeout=60)
    finally:
        server.terminate()


def http_servers() -> list[str]:
    """nginx where it is installed (a production server), and the tests' Python server."""
    return (["nginx"] if shutil.which("nginx") else []) + ["python"]


def http_rounds(store: str, rows, batches: int, rounds: int, server: str = "python") -> dict:
    """Ours over HTTP and ours on the local folder, alternated; median ratio, and the reading process's CPU
    per patch over HTTP. Both ends share this machine's cores."""
    local, http, cpu = [], [], []
    with (nginx_server if server == "nginx" else python_server)(store) as url:
        for _ in range(rounds):
            local.append(ours(store, rows, batches, workers=0))
            c0, n = time.process_time(), BATCH * (batches + 3)  # ours() reads batches + 3 (one of them warm-up)
            http.append(ours(url, rows, batches, workers=0))
            cpu.append(1e3 * (time.process_time() - c0) / n)
    ratios = [h / o for h, o in zip(http, local)]
    key = "http" if server == "python" else f"http_{server}"
    return {f"{key}_patches_per_s": statistics.median(http), f"{key}_ratio": statistics.median(ratios),
            f"{key}_ratio_each_round": ratios, f"{key}_client_cpu_ms_per_patch": statistics.median(cpu)}


def emit(result: dict, path: Path | None) -> None:
    """Print the result, and write it to ``path`` when given (``--json``)."""
    print(json.dumps(result, indent=2))
    if path:
        path.write_text(json.dumps(result, indent=2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", type=str)
    ap.add_argument("--batches", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=15, help="alternations of the floor and ours (8 batches each)")
    ap.add_argument("--http-rounds", type=int, default=5, help="alternations of local and HTTP reads")
    ap.add_argument("--main-process-only", action="store_true", help="only the floor and ours in the main process")
    ap.add_argument("--http-only", action="store_true", help="only local against HTTP (nginx if installed, Python)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--integrity-only", action="store_true",
                    help="only the cost of chunk checksums (v2 vs a v1 copy) and of card pins, same run")
    args = ap.parse_args()
    data_root = None
    if args.store is None:
        from luna_prep.build import BuildConfig, run_build
        from luna_prep.synthetic.scans import synthesize

        work = Path(tempfile.mkdtemp(prefix="luna-bench-loader-"))
        atexit.register(shutil.rmtree, work, True)  # 10 scans and their store: gone when the benchmark ends
        data_root = synthesize(work / "luna16", n_scans=10).root
        args.store = str(work / "patches.zarr")
        run_build(BuildConfig(data_root=str(data_root), out=args.store), workers=2, progress=False)
    store = PatchStore(args.store)
    rows = store.manifest[store.manifest["scale"] == SCALE].reset_index(drop=True)
    sampler = WeightedPatchSampler(rows, SamplerConfig(samples_per_epoch=BATCH * args.batches), seed=1)
    indices = rows["index"].to_numpy()[[p for p, _ in sampler]]
    result = {"machine": f"{platform.node()} {os.cpu_count()} cores", "date": time.strftime("%Y-%m-%d"),
              "store": args.store, "image_dtype": store.attrs.image_dtype, "batch": BATCH, "scale": SCALE}
    if args.integrity_only:
        result |= checksum_cost(args.store, rows, args.batches) | pin_cost(args.store, rows, args.batches)
        emit(result, args.json)
        return
    if args.http_only:
        for server in http_servers():
            result |= http_rounds(args.store, rows, args.batches, args.http_rounds, server)
        emit(result, args.json)
        return
    result |= main_process_rounds(args.store, rows, args.rounds)
    if args.main_process_only:
        emit(result, args.json)
        return
    result["memory_patches_per_s"] = memory(store, indices)
    result["zarr_patches_per_s"] = zarr_items(store, indices)
    for w in (1, 2):
        result[f"patches_per_s_{w}_workers"] = ours(args.store, rows, args.batches, w)
    result["scaling_2_workers"] = result["patches_per_s_2_workers"] / result["patches_per_s_1_workers"]
    result["cpu_decode_batch_ms"] = cpu_decode_ms(args.store, rows)
    for server in http_servers():
        result |= http_rounds(args.store, rows, args.batches, args.http_rounds, server)
    if data_root is not None:
        result["monai_patches_per_s"] = monai_baseline(data_root, 64)
    emit(result, args.json)


if __name__ == "__main__":
    main()
