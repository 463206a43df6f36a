"""Stop a run cleanly when asked to: SIGTERM (SLURM preemption, ``scancel``, ``docker stop``, torchrun passing
on its own SIGTERM), SIGUSR1 (SLURM's ``--signal=USR1@SECONDS`` warning) or a first Ctrl-C (SIGINT).

The handler only records the request; the epoch loop finishes the optimizer step in flight, writes last.pt
and raises :class:`~luna_train.training.loop.Interrupted`, so ``--resume`` continues the run exactly. A second
Ctrl-C stops at once, as Ctrl-C always does. DataLoader workers ignore all three
(:func:`handle_signals_in_worker`), which reach the whole process group (Ctrl-C, SLURM, ``kill -- -PGID``): the
loader keeps working until the main process stops it, and its workers end with that process. So does the fork
server they come from (:func:`start_fork_server`). ``Process.terminate`` (SIGTERM) does not end a worker: a
loader whose shutdown times out moves on without it, and :func:`end_workers_at_exit` kills those left at exit.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import multiprocessing
import multiprocessing.forkserver
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass

log = logging.getLogger("luna_train")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


@dataclass
class StopRequest:
    """The first stop signal this process received, if any."""

    signum: int | None = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""

    @property
    def exit_status(self) -> int:
        """128 + the signal's number, as a shell reports a process the signal ended (143 for SIGTERM)."""
        return 128 + int(self.signum or 0)


@contextlib.contextmanager
def stop_on_signals(signals: tuple[int, ...] = STOP_SIGNALS) -> Iterator[StopRequest]:
    """Record the first of ``signals`` in the yielded :class:`StopRequest` instead of dying; handlers restored
    on exit. Outside the main thread (where Python cannot install handlers) the request is never set."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handler(signum, _frame):
        if request.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        if request.requested:
            return
        request.signum = signum
        log.warning("received %s: finishing this step, writing last.pt, then stopping (resume with --resume)%s",
                    request.name, "; Ctrl-C again stops at once" if signum == signal.SIGINT else "")

    previous = {sig: signal.signal(sig, handler) for sig in signals}
    try:
        yield request
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def handle_signals_in_worker() -> None:
    """In a DataLoader worker: leave SIGTERM, SIGINT and SIGUSR1 to the main process, which stops the loader when
    it stops; the worker ends with it even after a kill -9 (``luna_train.data.loader``), so a signal to the whole
    process group lets the run finish its step, or its validation, and stop cleanly."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def end_workers_at_exit() -> None:
    """At this process's exit, kill the loader workers still alive (once registered): multiprocessing's own exit
    handler would SIGTERM them, which they ignore, and wait for them for good. Workers of a loader
    whose iterator ended normally are gone by then; this is for an iterator an error left behind."""
    global _EXIT_HOOK
    if not _EXIT_HOOK:
        atexit.register(_kill_daemonic_children)  # runs before multiprocessing's (registered at its import)
        _EXIT_HOOK = True


_EXIT_HOOK = False


def _kill_daemonic_children() -> None:
    for child in multiprocessing.active_children():
        if child.daemon:
            child.kill()


def start_fork_server() -> None:
    """Start multiprocessing's fork server now (if it is not running) with SIGTERM and SIGUSR1 ignored, which
    its exec keeps: a signal to the whole process group would end it, and every loader worker it forked
    leaves when its parent does. It still ends with this process (it reads EOF from it)."""
    if threading.current_thread() is not threading.main_thread():
        multiprocessing.forkserver.ensure_running()
        return
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGTERM, signal.SIGUSR1)}
    try:
        multiprocessing.forkserver.ensure_running()
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
