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
from resumed_runs import assert_same_run

from luna_train.config import load_config
from luna_train.stop_signal import stop_on_signals
from luna_train.training import fit as fit_module
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
    assert_same_run(tmp_path / "full", tmp_path / "cut")


@pytest.mark.parametrize("resumed", [False, True])
def test_a_signal_while_the_run_is_assembled_stops_it_and_it_resumes_exactly(tiny_store, tmp_path, monkeypatch,
                                                                              resumed):
    """Opening the store, the loaders and the model takes tens of seconds on a real store; a SIGTERM then killed
    the run with no last.pt, so `--resume` (what a requeued job runs) failed. A resumed run stopped there keeps its
    checkpoint as it was (rewriting it stored the RNG before its checkpoint's was put back)."""
    from luna_train.training import run as run_module

    common = TINY + [f"data.dataset={tiny_store}"]
    run_training(load_config(None, common), tmp_path / "full")
    if resumed:
        with pytest.raises(Interrupted):
            run_training(load_config(None, common + ["train.stop_after_steps=2"]), tmp_path / "cut")
    real = run_module.assemble

    def signalled_assemble(cfg, info):
        os.kill(os.getpid(), signal.SIGTERM)
        return real(cfg, info)
    monkeypatch.setattr(run_module, "assemble", signalled_assemble)
    first = 3 if resumed else 1
    with pytest.raises(Interrupted, match=f"stopped by SIGTERM before step {first}"):
        run_training(load_config(None, common), tmp_path / "cut", resume=resumed)
    assert load_checkpoint(tmp_path / "cut" / "last.pt")["state"]["step"] == first - 1
    monkeypatch.setattr(run_module, "assemble", real)
    run_training(load_config(None, common), tmp_path / "cut", resume=True)
    assert_same_run(tmp_path / "full", tmp_path / "cut")


def _wait_for(path, proc, seconds=240):
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.2)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGUSR1, signal.SIGTERM])
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


class DyingLoader:
    """The training loader, whose workers end (as a SIGTERM to the process group would end them) once ``dead``."""

    def __init__(self, loader):
        self.loader, self.dead = loader, False

    def __iter__(self):
        for batch in self.loader:
            if self.dead:
                raise RuntimeError("DataLoader worker (pid(s) 4242) exited unexpectedly")
            yield batch


def _run_cut_and_resumed(tiny_store, tmp_path, monkeypatch, cut, match):
    """Run ``cut`` (which stops the run), check the Interrupted message, resume, and compare with an uninterrupted
    run: weights and metrics."""
    common = TINY + [f"data.dataset={tiny_store}"]
    run_training(load_config(None, common), tmp_path / "full")
    with monkeypatch.context() as patch:
        kwargs = cut(patch)
        with pytest.raises(Interrupted, match=match):
            run_training(load_config(None, common), tmp_path / "cut", **kwargs)
    run_training(load_config(None, common), tmp_path / "cut", resume=True)
    assert_same_run(tmp_path / "full", tmp_path / "cut")


def test_a_batch_lost_after_a_stop_signal_still_stops_cleanly(tiny_store, tmp_path, monkeypatch):
    """A SIGTERM that also ended the loader's workers while the trainer waited for a batch ended the run in
    'DataLoader worker exited unexpectedly' with nothing saved since the last checkpoint."""
    from luna_train.training import run as run_module

    def cut(patch):
        real, dying = run_module.assemble, []

        def assemble(cfg, info):
            parts = real(cfg, info)
            dying.append(DyingLoader(parts.loader))
            parts.loader = dying[0]
            return parts
        patch.setattr(run_module, "assemble", assemble)

        def on_step(state):
            if state.step == 5:
                dying[0].dead = True
                os.kill(os.getpid(), signal.SIGTERM)
        return {"on_step": on_step}
    _run_cut_and_resumed(tiny_store, tmp_path, monkeypatch, cut,
                         r"stopped by SIGTERM after step 5 \(the loader's workers ended too\)")


def test_a_signal_between_the_sync_decision_and_the_stop_decision_keeps_the_sums(tiny_store, tmp_path, monkeypatch):
    """The loop asked whether to flush its sums, then the stop check read the flag again: a signal between the two
    wrote last.pt with unflushed loss and hard-mining sums, and the resumed run differed."""
    def cut(patch):
        real = fit_module.Fit.sync_due

        def sync_due(self, step):
            due = real(self, step)
            if step == 2 and not due:
                os.kill(os.getpid(), signal.SIGTERM)
            return due
        patch.setattr(fit_module.Fit, "sync_due", sync_due)
        return {}
    _run_cut_and_resumed(tiny_store, tmp_path, monkeypatch, cut, "stopped by SIGTERM after step 3")


def test_a_signal_as_the_workers_stop_after_the_last_epoch_is_not_dropped(tiny_store, tmp_path, monkeypatch):
    """It was logged ('received SIGTERM ... then stopping') and then ignored: the run went on to evaluate."""
    from luna_train.training import run as run_module

    def cut(patch):
        patch.setattr(run_module, "stop_workers", lambda loader: os.kill(os.getpid(), signal.SIGTERM))
        return {}
    _run_cut_and_resumed(tiny_store, tmp_path, monkeypatch, cut, "after the last epoch, before its evaluation")
    assert (tmp_path / "cut" / "summary.json").is_file()


def test_loader_workers_leave_the_stop_signals_to_the_trainer():
    """A SIGTERM to the whole process group ended the workers: a validation longer than their grace then failed
    with 'DataLoader worker exited unexpectedly' and lost the epoch."""
    from luna_train.data.loader import make_loader

    loader = make_loader(SignalDispositions(), batch_size=1, num_workers=1, persistent_workers=False)
    loader.collate_fn = torch.utils.data.default_collate
    (seen,) = [batch for batch in loader]
    assert seen.tolist() == [[int(signal.SIG_IGN)] * 3]


class SignalDispositions(torch.utils.data.Dataset):
    def __len__(self):
        return 1

    def __getitem__(self, i):
        return torch.tensor([int(signal.getsignal(s)) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)])


@pytest.mark.slow
def test_a_process_whose_loader_iterator_outlives_it_exits_at_once():
    """Workers ignore SIGTERM, which is how multiprocessing ends daemonic children at exit before waiting for them:
    a loader iterator an error left alive would have made the exit wait for good."""
    script = textwrap.dedent("""
        import torch
        from luna_train.data.loader import make_loader
        loader = make_loader(list(range(64)), batch_size=2, num_workers=2, persistent_workers=True,
                             pin_memory=False)
        loader.collate_fn = torch.utils.data.default_collate
        it = iter(loader)
        next(it)
        print("iterating", flush=True)
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    t0 = time.monotonic()
    res = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "iterating" in res.stdout, res.stderr[-2000:]
    assert time.monotonic() - t0 < 60

