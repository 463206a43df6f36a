"""luna-prep build on a real Dask cluster: a `dask scheduler` and two `dask worker` processes on localhost.

The output must be byte-identical to an in-process build, also when a worker is killed (SIGKILL,
nanny and worker together, like a node going down) in the middle of a build.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from luna_prep.build import BuildConfig, run_build
from luna_prep.cluster import WORKER_MALLOC_ENV
from luna_prep.format.reader import PatchStore
from luna_prep.format.spec import BUILD_DIR
from luna_prep.pipeline.sampling import SamplingConfig
from luna_prep.synthetic.scans import synthesize

SCALES = (32, 48)
N_SCANS = 4
START_TIMEOUT = 45  # s, scheduler and workers


def _spawn(args: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    """A `python -m dask ...` process in its own process group (so nanny + worker die together)."""
    environ = {**os.environ, **{k: str(v) for k, v in (env or {}).items()}}
    with open(log, "wb") as f:
        return subprocess.Popen([sys.executable, "-m", "dask", *args], stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True, env=environ)


def _stop(proc: subprocess.Popen, sig=signal.SIGTERM, wait: float = 10) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=wait)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=wait)


@contextmanager
def local_cluster_processes(tmp: Path, n_workers: int = 2):
    """Yield (scheduler_file, {nanny pid: Popen}, client, scheduler Popen) of a scheduler and ``n_workers``
    workers."""
    from distributed import Client

    scheduler_file = tmp / "scheduler.json"
    procs: list[subprocess.Popen] = []
    client = None
    try:
        procs.append(_spawn(["scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                             "--scheduler-file", str(scheduler_file)], tmp / "scheduler.log"))
        deadline = time.time() + START_TIMEOUT
        while not scheduler_file.exists() or scheduler_file.stat().st_size == 0:
            assert procs[0].poll() is None, (tmp / "scheduler.log").read_text()
            assert time.time() < deadline, "scheduler did not start"
            time.sleep(0.1)
        workers = {}
        for i in range(n_workers):
            p = _spawn(["worker", "--scheduler-file", str(scheduler_file), "--nworkers", "1", "--nthreads", "1",
                        "--host", "127.0.0.1", "--no-dashboard", "--death-timeout", "60", "--name", f"w{i}"],
                       tmp / f"worker{i}.log", env=WORKER_MALLOC_ENV)  # as docs/cluster.md has `dask worker` run
            procs.append(p)
            workers[p.pid] = p
        client = Client(scheduler_file=str(scheduler_file), timeout=START_TIMEOUT)
        client.wait_for_workers(n_workers, timeout=START_TIMEOUT)
        yield scheduler_file, workers, client, procs[0]
    finally:
        if client is not None:
            client.close(timeout=10)
        for p in reversed(procs):
            _stop(p)


@contextmanager
def building(cmd: list[str]):
    """A build running in its own process (stdout and stderr together), killed if the caller leaves it running."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def synth4(tmp_path_factory):
    return synthesize(tmp_path_factory.mktemp("synth") / "luna16", n_scans=N_SCANS, seed=21)


@pytest.fixture(scope="module")
def reference(synth4, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "local.zarr"
    cfg = BuildConfig(data_root=str(synth4.root), out=str(out), subsets=tuple(range(N_SCANS)),
                      sampling=SamplingConfig(scales=SCALES, jitter_copies=1))
    report = run_build(cfg, workers=0, progress=False)
    assert report.ok and report.scans_ok == N_SCANS
    return PatchStore(out)


def build_cmd(synth4, out: Path, scheduler_file: Path) -> list[str]:
    return [sys.executable, "-m", "luna_prep.cli", "build", "--data-root", str(synth4.root),
            "--subsets", f"0-{N_SCANS - 1}", "--out", str(out), "--scales", ",".join(map(str, SCALES)),
            "--jitter-copies", "1", "--scheduler-file", str(scheduler_file), "--quiet", "--no-card"]


def assert_identical(store: PatchStore, reference: PatchStore) -> None:
    a = store.manifest.sort_values(["sample_id", "scale"], ignore_index=True)
    b = reference.manifest.sort_values(["sample_id", "scale"], ignore_index=True)
    pd.testing.assert_frame_equal(a, b)
    assert (store.scans["status"] == "ok").sum() == N_SCANS
    for s in SCALES:
        assert np.array_equal(store.image_array(s)[:], reference.image_array(s)[:])
        assert np.array_equal(store.mask_array(s)[:], reference.mask_array(s)[:])


@pytest.mark.timeout(300)
def test_build_on_a_dask_cluster_matches_local_survives_a_killed_worker_and_stops_without_its_scheduler(
        synth4, reference, tmp_path):
    with local_cluster_processes(tmp_path) as (scheduler_file, workers, client, scheduler):
        # 1. a plain build through the two workers
        out = tmp_path / "cluster.zarr"
        result = subprocess.run(build_cmd(synth4, out, scheduler_file), capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"scans: {N_SCANS} ok, 0 failed" in result.stdout
        ran_on = {w["name"] for w in client.scheduler_info()["workers"].values()}
        assert ran_on == {"w0", "w1"}
        # the malloc settings given to `dask worker` reach the worker processes its nanny spawned
        seen = client.run(lambda: {k: os.environ.get(k) for k in WORKER_MALLOC_ENV})
        assert list(seen.values()) == [{k: str(v) for k, v in WORKER_MALLOC_ENV.items()}] * 2
        assert_identical(PatchStore(out), reference)

        # 2. SIGKILL a busy worker (nanny and worker process) once the first scan has finished
        out = tmp_path / "killed.zarr"
        nanny_of = client.run(os.getppid)  # worker address -> pid of its nanny, our Popen
        with building(build_cmd(synth4, out, scheduler_file)) as proc:
            done = out / BUILD_DIR / "done"
            deadline = time.time() + 90
            victim = None
            while victim is None and time.time() < deadline and proc.poll() is None:
                if done.exists() and any(done.glob("*.json")):
                    busy = [addr for addr, keys in client.processing().items() if keys]
                    if busy:
                        victim = workers[nanny_of[busy[0]]]
                        n_done = len(list(done.glob("*.json")))
                        _stop(victim, signal.SIGKILL)
                        break
                time.sleep(0.02)
            assert victim is not None, "no busy worker to kill: the build finished too early"
            assert 1 <= n_done < N_SCANS
            stdout, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, stdout
        assert f"scans: {N_SCANS} ok, 0 failed" in stdout
        assert victim.poll() is not None
        assert len(client.scheduler_info()["workers"]) == 1  # the other worker took over
        assert_identical(PatchStore(out), reference)

        # 3. a relative --data-root from another folder than the workers': the scans' paths reach them whole
        out = tmp_path / "relative.zarr"
        cmd = build_cmd(synth4, out, scheduler_file)
        cmd[cmd.index("--data-root") + 1] = synth4.root.name
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=synth4.root.parent)
        assert result.returncode == 0 and f"scans: {N_SCANS} ok, 0 failed" in result.stdout, \
            result.stdout + result.stderr  # each scan failed, "file not found" on the workers
        assert_identical(PatchStore(out), reference)

        # 4. the scheduler lost mid-build: the build stops and no scan is blamed (none is recorded as failed)
        out = tmp_path / "lost.zarr"
        with building(build_cmd(synth4, out, scheduler_file)) as proc:
            done = out / BUILD_DIR / "done"
            deadline = time.time() + 90
            while not (done.exists() and any(done.glob("*.json"))) and time.time() < deadline:
                time.sleep(0.02)
            _stop(scheduler, signal.SIGKILL)
            stdout, _ = proc.communicate(timeout=120)
        assert proc.returncode == 1, stdout
        assert f"Error: {out.resolve()}: the build stopped: the Dask scheduler {scheduler_file} was lost" in stdout, \
            stdout
        assert "FAILED" not in stdout and not (out / "scans.parquet").exists()


def test_a_missing_scheduler_file_or_an_unreachable_scheduler_is_named_at_once(synth4, tmp_path):
    """Dask waited for a missing scheduler file without end or a word (after creating the store); a scheduler
    that did not answer was reported with the disk-space hint."""
    import dask

    from luna_prep.build import BuildError
    from luna_prep.cluster import SchedulerUnreachable

    cfg = BuildConfig(data_root=str(synth4.root), out=str(tmp_path / "p.zarr"), subsets=(0,),
                      sampling=SamplingConfig(scales=SCALES, jitter_copies=1))
    for kwargs in ({"scheduler_file": str(tmp_path / "nope.json")}, {"scheduler": str(tmp_path / "nope.json")}):
        with pytest.raises(BuildError, match=r"nope\.json: scheduler file not found"):
            run_build(cfg, progress=False, **kwargs)
        assert not (tmp_path / "p.zarr").exists()
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        with pytest.raises(SchedulerUnreachable, match=r"^cannot reach the Dask scheduler tcp://127\.0\.0\.1:1: "):
            run_build(cfg, progress=False, scheduler="tcp://127.0.0.1:1")
