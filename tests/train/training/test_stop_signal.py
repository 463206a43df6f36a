"""Stopping a run on SIGTERM / SIGUSR1 / Ctrl-C: the step in flight finishes, last.pt is written, --resume is exact."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pandas as pd
import pytest
import torch

from luna_train.config import load_config
from luna_train.stop_signal import stop_on_signals
from luna_train.training.checkpoint import load_checkpoint
from luna_train.training.loop import Interrupted
from luna_train.training.run import run_training

from paths import REPO

TINY = [
    "model.channels=[4, 8]", "model.strides=[2]", "model.num_res_units=1", "data.batch_size=4",
    "data.num_workers=0", "data.train_size=16", "data.eval_scale=16", "sampler.scale_weights={16: 1, 24: 1}",
    "sampler.samples_per_epoch=16", "train.epochs=2", "optim.warmup_epochs=0.5", "logging.progress=false",
    "logging.plots=false", "logging.tensorboard=false", "model.dropout=0.2", "sampler.hard_mining_every=1",
]


def test_the_first_signal_is_recorded_a_second_ctrl_c_interrupts_and_handlers_come_back():
    before = signal.getsignal(signal.SIGTERM)
    with stop_on_signals() as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGUSR1)
        os.kill(os.getpid(), signal.SIGTERM)  # a later signal does not replace the first
        assert stop.requested and stop.name == "SIGUSR1" and stop.exit_status == 128 + signal.SIGUSR1
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGTERM) is before


def _signal_at(step: int, signum: int = signal.SIGTERM):
    def on_step(state):
        if state.step == step:
            os.kill(os.getpid(), signum)
    return on_step


@pytest.mark.parametrize(("signal_step", "stopped_step", "where"),
                         [(5, 6, "after step 6"),  # mid-epoch 2: the next step finishes, then the run stops
                          (4, 4, "at the end of epoch 1")])  # the epoch's last step: its validation runs first
def test_a_signalled_run_writes_last_pt_and_resumes_to_the_uninterrupted_result(tiny_store, tmp_path, signal_step,
                                                                               stopped_step, where):
    common = TINY + [f"data.dataset={tiny_store}"]
    run_training(load_config(None, common), tmp_path / "full")
    with pytest.raises(Interrupted, match=f"stopped by SIGTERM {where}; resume with --resume") as stopped:
        run_training(load_config(None, common), tmp_path / "cut", on_step=_signal_at(signal_step))
    assert stopped.value.exit_status == 143
    cut = load_checkpoint(tmp_path / "cut" / "last.pt")
    assert cut["state"]["step"] == stopped_step
    assert len(pd.read_csv(tmp_path / "cut" / "metrics.csv")) == stopped_step // 4
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the run gave its handlers back
    run_training(load_config(None, common), tmp_path / "cut", resume=True)
    full = load_checkpoint(tmp_path / "full" / "last.pt")["model"]
    resumed = load_checkpoint(tmp_path / "cut" / "last.pt")["model"]
    assert all(torch.equal(full[k], resumed[k]) for k in full)
    a, b = (pd.read_csv(tmp_path / d / "metrics.csv") for d in ("full", "cut"))
    assert a[["epoch", "step", "train_loss", "val_dice"]].equals(b[["epoch", "step", "train_loss", "val_dice"]])


def _wait_for(path, proc, seconds=240):
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.2)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGUSR1])
def test_a_signal_to_the_process_group_with_loader_workers_stops_cleanly(tiny_store, tmp_path, signum):
    """Ctrl-C and SLURM's --signal reach the loader's workers and their fork server too: they leave it to the main
    process (SIGUSR1 ended the fork server, its workers left with it, and the run hung waiting for batches), which
    finishes its step, writes last.pt and exits 128 + the signal. The persistent workers end cleanly: no "leaked
    semaphore" warning (numcodecs' Blosc lock in each worker) at exit, which every run with workers printed."""
    out = tmp_path / "run"
    settings = [s for s in TINY if not s.startswith(("data.num_workers", "sampler.samples_per_epoch"))]
    args = [a for s in settings + ["data.num_workers=2", "sampler.samples_per_epoch=2000",
                                   "train.checkpoint_every_steps=2"] for a in ("--set", s)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "luna_train.cli.main", "run", "--dataset", tiny_store, "--out", str(out), *args]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        _wait_for(out / "last.pt", proc)
        os.killpg(proc.pid, signum)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 128 + signum, err[-3000:]
    name = signal.Signals(signum).name
    assert f"stopped by {name} after step" in err and "leaked semaphore" not in err, err[-3000:]
    step = load_checkpoint(out / "last.pt")["state"]["step"]
    assert 2 <= step < 500  # mid-epoch 1 of 500 steps


@pytest.mark.slow
def test_a_signal_to_one_rank_stops_both_ranks_at_the_same_step(tiny_store, tmp_path):
    """Ranks agree at the steps they all sync after (logging.step_every): rank 1 alone gets SIGTERM after step
    2, and both stop after step 3, rank 0 naming the other rank, with one last.pt for the pair."""
    driver = tmp_path / "driver.py"
    driver.write_text(textwrap.dedent(f"""
        import os, signal, sys
        from luna_train.config import load_config
        from luna_train.training.loop import Interrupted
        from luna_train.training.run import run_training
        rank = int(os.environ["RANK"])
        def on_step(state):
            if rank == 1 and state.step == 2:
                os.kill(os.getpid(), signal.SIGTERM)
        cfg = load_config(None, {TINY + [f"data.dataset={tiny_store}", "logging.step_every=3",
                                         "sampler.samples_per_epoch=64"]!r})
        try:
            run_training(cfg, {str(tmp_path / "ddp")!r}, on_step=on_step)
        except Interrupted as exc:
            print(f"rank {{rank}}: {{exc}}", flush=True)
            sys.exit(exc.exit_status)
    """))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone",
                           str(driver)], env=env, capture_output=True, text=True, timeout=300)
    output = proc.stdout + proc.stderr
    assert "rank 1: stopped by SIGTERM after step 3" in output, output[-3000:]
    assert "rank 0: stopped by a stop signal to another rank after step 3" in output, output[-3000:]
    assert load_checkpoint(tmp_path / "ddp" / "last.pt")["state"]["step"] == 3
