"""The Dask side of a build: a client on the user's scheduler or on a local cluster started here, and its dashboard.

A local cluster's workers keep the memory a scan task frees (``WORKER_MALLOC_ENV``) instead of handing it back to
the kernel and faulting it in again, zeroed, for the next scan; docs/benchmarks.md ("Preparation") has the figures.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager

from luna_prep.errors import LunaError

DASHBOARD_NEEDS = "bokeh>=3.1"

# glibc's malloc in each worker of a local cluster. A scan task allocates ~1 GB of short-lived buffers (the decoded
# scan, resampled slabs, patches), each above glibc's mmap threshold or freed at the heap's top, so by default
# (and with Dask's own MALLOC_TRIM_THRESHOLD_=65536) every one is a fresh mapping: ~275,000 page faults a full-size
# scan and a quarter of its time in the kernel zeroing pages. One arena (worker processes run one task thread),
# large blocks from the heap, and no trimming: after its first scans a worker reuses its memory with no faults,
# and holds about its peak (0.7 GB for a 400-slice scan; measured over 20 scans of mixed sizes: no growth).
# They are the build's own: they replace what this process's environment holds (where Dask's nanny has written
# its MALLOC_TRIM_THRESHOLD_=65536 once any cluster was started here). For other settings, start a cluster of
# your own and pass --scheduler.
WORKER_MALLOC_ENV = {
    "MALLOC_ARENA_MAX": 1,
    "MALLOC_MMAP_THRESHOLD_": 1 << 30,
    "MALLOC_TRIM_THRESHOLD_": 1 << 32,
}

# Dask's background work in a local cluster, which shares the build's cores: every process's event loop measures
# its own responsiveness every 20 ms, and each worker samples its task thread's stack every 10 ms for the
# dashboard's profile page. Idle, a 2-worker cluster used 0.15 cores with Dask's defaults; 0.05 with a 200 ms tick
# and no profiling (profiling stays on when the dashboard is served).
LOCAL_CLUSTER_CONFIG = {"distributed.admin.tick.interval": "200ms", "distributed.worker.profile.enabled": False}


def dashboard_problem() -> str | None:
    """Why this machine cannot serve the Dask dashboard (bokeh missing or too old), or None."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        major_minor = tuple(int(p) for p in version("bokeh").split(".")[:2])
    except PackageNotFoundError:
        major_minor = None
    if major_minor is not None and major_minor >= (3, 1):
        return None
    return (f"no Dask dashboard: it needs {DASHBOARD_NEEDS} (pip install 'luna-patches[dashboard]'); "
            "building without it")


def dashboard_note(client, local: bool) -> str:
    """The line that tells where the Dask dashboard of ``client``'s scheduler is, or why there is none.

    A ``local`` cluster (started here) serves one only when bokeh is installed here, whatever link it reports.
    """
    problem = dashboard_problem() if local else None
    if problem:
        return problem
    try:
        link = client.dashboard_link
    except (KeyError, AttributeError):  # a remote scheduler started without a dashboard
        link = None
    if link:
        return f"Dask dashboard: {link}"
    return "no Dask dashboard: the scheduler serves none"


class SchedulerUnreachable(LunaError, RuntimeError):
    """The Dask scheduler given with --scheduler / --scheduler-file does not answer."""


@contextmanager
def local_cluster(workers: int, dashboard_address: str | None = None):
    """A LocalCluster of ``workers`` single-threaded worker processes with ``WORKER_MALLOC_ENV`` and
    ``LOCAL_CLUSTER_CONFIG`` (profiling kept when ``dashboard_address`` serves the dashboard).

    Dask's nanny takes a pre-spawn variable from this process's environment before its config, and writes the
    variables into this environment before each spawn; ours are put there for the cluster's life, and the
    environment is then left as it was."""
    import dask
    from distributed import LocalCluster

    environ = {**dask.config.get("distributed.nanny.pre-spawn-environ"), **WORKER_MALLOC_ENV}
    config = {**LOCAL_CLUSTER_CONFIG, "distributed.nanny.pre-spawn-environ": environ}
    if dashboard_address is not None:
        config.pop("distributed.worker.profile.enabled")
    before = {name: os.environ.get(name) for name in environ}
    os.environ.update({name: str(value) for name, value in WORKER_MALLOC_ENV.items()})
    try:
        # silence_logs: our workers' own logs (a worker's failure reaches us through its future, named by scan);
        # without it, a worker heartbeat racing the shutdown prints CommClosedError tracebacks after a good build
        with dask.config.set(config), quiet_shutdown(), \
                LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                             dashboard_address=dashboard_address, silence_logs=logging.CRITICAL,
                             # no dashboard: the scheduler's HTTP server (health, metrics) still starts, on 8787 by
                             # default, warning when another process holds it; on any free port instead
                             scheduler_kwargs=None if dashboard_address else {"dashboard_address": ":0"}) as cluster:
            yield cluster
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextmanager
def dask_client(workers: int, scheduler: str | None, scheduler_file: str | None = None, dashboard: bool = False):
    """A client on ``scheduler`` (an address or a scheduler file) or ``scheduler_file``, else on a new local cluster
    (serving the dashboard on port 8787, or on a free port Dask picks when that one is taken, when ``dashboard`` and
    bokeh is installed)."""
    from distributed import Client

    if scheduler_file or scheduler:
        kwargs = ({"scheduler_file": str(scheduler_file)} if scheduler_file else
                  {"scheduler_file": scheduler} if scheduler.endswith(".json") else {"address": scheduler})
        try:
            client = Client(**kwargs)
        except OSError as exc:  # distributed's connect timeout is an OSError: not the disk's
            where = scheduler_file or scheduler
            raise SchedulerUnreachable(f"cannot reach the Dask scheduler {where}: {exc}") from None
        with client:
            yield client
        return
    address = ":8787" if dashboard and dashboard_problem() is None else None
    with local_cluster(workers, address) as cluster, Client(cluster) as client:
        yield client


@contextmanager
def quiet_shutdown():
    """distributed's loggers in this process quiet while a local cluster runs and closes (levels restored)."""
    loggers = [logging.getLogger(name) for name in ("distributed", "tornado")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
