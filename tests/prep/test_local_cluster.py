"""The local cluster a build starts: its workers reuse the memory a scan frees, and this process's environment
is left as it was."""

from __future__ import annotations

import ctypes
import os
import platform
import resource

import pytest

from luna_prep.cluster import WORKER_MALLOC_ENV, local_cluster

glibc_only = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="the malloc settings are glibc's")

BLOCK = 64 << 20  # above glibc's largest dynamic mmap threshold (32 MiB): a fresh mapping each time by default


def _faults_of_repeated_blocks(times: int = 6) -> int:
    """Minor page faults while a scan-like task allocates, fills and frees a 64 MiB block with malloc ``times``
    times (after once uncounted, as a worker's first scan faults its memory in). malloc as SimpleITK's buffers
    use it: NumPy's own large arrays ask the kernel for huge pages, which would hide the faults."""
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]

    def fill_and_free():
        block = libc.malloc(BLOCK)
        ctypes.memset(block, 1, BLOCK)
        libc.free(block)

    fill_and_free()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(times):
        fill_and_free()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def _background_config() -> tuple:
    import dask

    return dask.config.get("distributed.worker.profile.enabled"), dask.config.get("distributed.admin.tick.interval")


def _environ() -> dict[str, str | None]:
    return {name: os.environ.get(name) for name in WORKER_MALLOC_ENV}


@glibc_only
@pytest.mark.timeout(120)
def test_workers_reuse_freed_memory_where_dask_defaults_fault_it_in_again():
    from distributed import Client, LocalCluster

    pages = BLOCK // resource.getpagesize()
    with local_cluster(1) as cluster, Client(cluster) as client:
        ours = client.submit(_faults_of_repeated_blocks, pure=False).result()
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        dask_default = client.submit(_faults_of_repeated_blocks, pure=False).result()
    assert ours < pages // 4, ours  # six 64 MiB blocks, and not one of them faulted in again
    assert dask_default > 5 * pages, dask_default  # what the settings save: every block a fresh mapping


@pytest.mark.timeout(120)
def test_workers_get_the_settings_and_this_process_is_left_as_it_was(monkeypatch):
    from distributed import Client

    # what Dask's nanny leaves in this process once any cluster was started here: it must not win
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "65536")
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    with local_cluster(2) as cluster, Client(cluster) as client:
        seen = client.run(_environ)
        assert len(seen) == 2
        for environ in seen.values():
            assert environ == {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_THRESHOLD_": str(1 << 30),
                               "MALLOC_TRIM_THRESHOLD_": str(1 << 32)}
        # Dask's background work quieted in every worker: no stack sampling, a 200 ms event-loop tick
        assert set(client.run(_background_config).values()) == {(False, "200ms")}
        cluster.scale(3)  # a worker spawned later (as a nanny restarting a dead one) gets them too
        client.wait_for_workers(3, timeout=60)
        assert all(environ["MALLOC_ARENA_MAX"] == "1" for environ in client.run(_environ).values())
    assert _environ() == {"MALLOC_ARENA_MAX": None, "MALLOC_MMAP_THRESHOLD_": None, "MALLOC_TRIM_THRESHOLD_": "65536"}


@pytest.mark.timeout(120)
def test_a_served_dashboard_keeps_its_profile_page():
    from distributed import Client

    with local_cluster(1, dashboard_address="127.0.0.1:0") as cluster, Client(cluster) as client:
        assert set(client.run(_background_config).values()) == {(True, "200ms")}


@pytest.mark.timeout(120)
def test_no_dashboard_asked_no_warning_when_port_8787_is_taken():
    """Without --dashboard the scheduler's HTTP server still started on 8787, warning 'Port 8787 is already in use'
    whenever another process (a notebook's cluster, another build) held it."""
    import socket
    import warnings

    holder = socket.socket()
    try:
        holder.bind(("", 8787))
        holder.listen()
    except OSError:
        pass  # something else holds it already: the same situation
    try:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            with local_cluster(1) as cluster:
                assert cluster.scheduler.http_server is not None
        assert not [w for w in seen if "8787" in str(w.message)], [str(w.message) for w in seen]
    finally:
        holder.close()
