"""A run directory's life when things go wrong: kills mid-write, failed writes, two runs at once, leftovers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner
from resumed_runs import assert_same_run

from luna_prep.errors import InputError
from luna_train.cli.main import main
from luna_train.config import load_config
from luna_train.training import fit as fit_module
from luna_train.training.checkpoint import CheckpointWriteError, load_checkpoint, save_checkpoint
from luna_train.training.run import run_lock, run_training

from paths import REPO

TINY = [
    "model.channels=[4, 8]", "model.strides=[2]", "model.num_res_units=1", "data.batch_size=4",
    "data.num_workers=0", "data.train_size=16", "data.eval_scale=16", "sampler.scale_weights={16: 1, 24: 1}",
    "sampler.samples_per_epoch=16", "train.epochs=2", "optim.warmup_epochs=0.5", "logging.progress=false",
    "logging.plots=false", "logging.tensorboard=false",
]


class Killed(BaseException):
    """Stands for a kill -9: nothing after it runs."""


def test_best_pt_is_written_before_last_pt(tiny_store, tmp_path, monkeypatch):
    """last.pt is what --resume trusts: written first, a kill before best.pt left a last.pt naming an epoch as best
    whose weights best.pt did not hold, and the resumed run's summary and exports came from another epoch."""
    written = []
    real = fit_module.save_checkpoint
    monkeypatch.setattr(fit_module, "save_checkpoint",
                        lambda path, payload: (written.append((payload["state"]["epoch"], path.name)),
                                               real(path, payload)))
    run_training(load_config(None, TINY + [f"data.dataset={tiny_store}"]), tmp_path / "run")
    by_epoch = {}
    for epoch, name in written:
        by_epoch.setdefault(epoch, []).append(name)
    assert by_epoch[1] == ["best.pt", "last.pt"]  # the first validated epoch is always the best so far
    assert all(names[-1] == "last.pt" for names in by_epoch.values())


def test_a_failed_checkpoint_write_names_the_file_and_keeps_the_previous_one(tmp_path):
    """A file size limit (or a full disk) used to end the run with torch's 'basic_ios::clear: iostream error'."""
    path = tmp_path / "last.pt"
    payload = {k: {} for k in ("model", "optimizer", "scheduler", "scaler", "sampler", "state", "config")}
    payload.update(per_rank=[], world_size=1)
    save_checkpoint(path, payload)
    before = path.read_bytes()
    script = (f"from luna_train.training.checkpoint import save_checkpoint; import torch; "
              f"p = {payload!r}; p['model'] = {{'w': torch.zeros(1 << 20)}}; save_checkpoint({str(path)!r}, p)")
    res = subprocess.run(["bash", "-c", f"ulimit -f 64; {sys.executable} -c \"{script}\""],
                         env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=120)
    assert res.returncode == 1
    assert f"CheckpointWriteError: {path}: could not write the checkpoint" in res.stderr
    assert "GB free in" in res.stderr and "is intact" in res.stderr
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]
    (tmp_path / "blocker").write_text("")  # a file where the run's folder should be
    with pytest.raises(CheckpointWriteError, match=r"blocker/last.pt: could not write the checkpoint \(FileExists"):
        save_checkpoint(tmp_path / "blocker" / "last.pt", payload)


def test_a_second_run_into_the_same_folder_is_refused_while_the_first_runs(tiny_store, tmp_path):
    """Two runs started into one --out both ran, interleaving metrics.csv and each other's checkpoints."""
    with run_lock(tmp_path / "run"), pytest.raises(InputError, match=r"another luna-train run is writing this run "
                                                                     rf"directory \(pid {os.getpid()}\)"):
        run_training(load_config(None, TINY + [f"data.dataset={tiny_store}"]), tmp_path / "run")
    assert not (tmp_path / "run" / ".lock").exists() and not (tmp_path / "run" / "config.yaml").exists()


def test_a_new_run_refuses_a_folder_that_holds_records_without_checkpoints(tiny_store, tmp_path):
    """A folder whose last.pt is gone got a new run's rows appended to the old metrics.csv."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.csv").write_text("epoch,step\n1,4\n")
    res = CliRunner().invoke(main, ["run", "--dataset", tiny_store, "--out", str(run)])
    assert res.exit_code == 2
    assert "already holds a run (metrics.csv); it has no last.pt or best.pt to resume from: delete it" in res.output


def test_a_start_that_failed_before_any_record_can_be_run_again(tiny_store, tmp_path):
    """The TensorBoard logger opens its events file before the first step: a start that failed there (a damaged
    store, no memory) left a folder that neither a new run nor --resume accepted."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from luna_train.training.run_log import RunLogger

    run = tmp_path / "run"
    RunLogger(run, {}, tensorboard=True).log_scalars({"train_loss": 9.0}, 3, "step/")  # the failed start's
    _next_second()
    args = ["run", "--dataset", tiny_store, "--out", str(run)] + [a for o in TINY + ["logging.tensorboard=true",
                                                                                     "logging.step_every=1"]
                                                                  for a in ("--set", o)]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    losses = events.Scalars("step/train_loss")
    assert [e.step for e in losses] == list(range(1, 9)) and 9.0 not in [e.value for e in losses]


def test_resume_continues_from_best_pt_when_a_kill_came_before_the_first_last_pt(tiny_store, tmp_path,
                                                                                 monkeypatch):
    """best.pt is written first: a kill between the two writes of epoch 1 left best.pt alone, which --resume
    refused ('last.pt not found') and a new run refused too."""
    common = TINY + [f"data.dataset={tiny_store}"]
    run_training(load_config(None, common), tmp_path / "full")
    real = fit_module.save_checkpoint

    def killed_before_last(path, payload):
        if path.name == "last.pt":
            raise Killed
        real(path, payload)
    monkeypatch.setattr(fit_module, "save_checkpoint", killed_before_last)
    with pytest.raises(Killed):
        run_training(load_config(None, common), tmp_path / "cut")
    monkeypatch.setattr(fit_module, "save_checkpoint", real)
    assert sorted(p.name for p in (tmp_path / "cut").glob("*.pt")) == ["best.pt"]
    res = CliRunner().invoke(main, ["run", "--out", str(tmp_path / "cut"), "--resume"])
    assert res.exit_code == 0, res.output
    assert_same_run(tmp_path / "full", tmp_path / "cut")


def test_resume_removes_a_checkpoint_write_a_kill_cut_short_and_hides_the_steps_trained_again(tiny_store, tmp_path,
                                                                                            monkeypatch):
    """A kill during a write left `.last.pt.tmp<pid>` (up to a checkpoint's size) for good; TensorBoard showed the
    steps logged after the checkpoint twice after the resume."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    common = TINY + [f"data.dataset={tiny_store}", "logging.tensorboard=true", "logging.step_every=1",
                     "train.checkpoint_every_steps=2"]

    def kill_at_5(state):
        if state.step == 5:
            raise Killed
    with pytest.raises(Killed):
        run_training(load_config(None, common), tmp_path / "run", on_step=kill_at_5)
    assert load_checkpoint(tmp_path / "run" / "last.pt")["state"]["step"] == 4
    leftover = tmp_path / "run" / ".last.pt.tmp4242"
    leftover.write_bytes(b"half a checkpoint")
    _next_second()
    run_training(load_config(None, common), tmp_path / "run", resume=True)
    assert not leftover.exists()
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    steps = [e.step for e in events.Scalars("step/train_loss")]
    assert steps == list(range(1, 9))  # step 5 was logged before the kill and again after the resume


@pytest.mark.slow
def test_kill_9_of_the_trainer_takes_its_loader_workers_and_fork_server_with_it(tiny_store, tmp_path):
    """After a kill -9 of `luna-train run` with loader workers, the fork server and the workers (re-parented to
    init, ~1.2 GB) stayed alive indefinitely: each worker holds the fork server's pipe, and torch's watchdog
    watches the fork server, not the trainer."""
    out = tmp_path / "run"
    settings = [s for s in TINY if not s.startswith(("data.num_workers", "sampler.samples_per_epoch"))]
    args = [a for s in settings + ["data.num_workers=2", "sampler.samples_per_epoch=2000",
                                   "train.checkpoint_every_steps=2"] for a in ("--set", s)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "luna_train.cli.main", "run", "--dataset", tiny_store,
                             "--out", str(out), *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not (out / "last.pt").exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        assert len(_session(proc.pid)) >= 4  # trainer, fork server, 2 workers (and the resource tracker)
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 30
        while _session(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _session(proc.pid) == []
    finally:
        for pid in _session(proc.pid):
            os.kill(pid, signal.SIGKILL)


def _session(sid: int) -> list[int]:
    """The live processes of session ``sid``."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == sid and fields[0] != "Z":
                pids.append(int(entry))
    return pids


def test_resuming_a_finished_run_keeps_its_summary_and_logs_nothing_twice(tiny_store, tmp_path):
    """--resume of a finished run evaluated it again: TensorBoard got the final figures twice and summary.json lost
    the first run's rank_draws."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = load_config(None, TINY + [f"data.dataset={tiny_store}", "logging.tensorboard=true"])
    first = run_training(cfg, tmp_path / "run")
    assert first["rank_draws"] is not None
    again = run_training(cfg, tmp_path / "run", resume=True)
    assert again == first
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    assert len(events.Scalars("final/test_pooled_dice")) == 1
    longer = run_training(load_config(None, TINY + [f"data.dataset={tiny_store}", "train.epochs=3"]),
                          tmp_path / "run", resume=True)
    assert longer["epochs_run"] == 3  # more epochs still train on



def test_resume_on_another_number_of_ranks_is_refused_mid_epoch(tiny_store, tmp_path, caplog):
    """Each rank's share of the epoch's draws is where it stopped (draw k goes to rank k % R): a 2-rank run resumed
    on 1 trained 52 draws of a 40-draw epoch, 12 of them twice, with only a sampler UserWarning."""
    from luna_train.config import ConfigError
    from luna_train.training.loop import Interrupted

    common = TINY + [f"data.dataset={tiny_store}"]
    with pytest.raises(Interrupted):
        run_training(load_config(None, common + ["train.stop_after_steps=2"]), tmp_path / "run")
    last = tmp_path / "run" / "last.pt"
    ckpt = load_checkpoint(last)
    save_checkpoint(last, {**ckpt, "world_size": 2})
    with pytest.raises(ConfigError, match=r"last.pt: stopped in the middle of epoch 1 on 2 rank\(s\); resume it on 2"):
        run_training(load_config(None, common), tmp_path / "run", resume=True)
    state = {**ckpt["state"], "epoch": 1, "step_in_epoch": 0}  # between epochs it goes on, with a WARNING
    save_checkpoint(last, {**ckpt, "world_size": 2, "state": state})
    run_training(load_config(None, common), tmp_path / "run", resume=True)
    assert "trained on 2 rank(s), resumed on 1" in caplog.text


def _next_second() -> None:
    """TensorBoard reads a folder's event files in name order, and a name starts with the second the file was
    opened, then a per-process counter: in one test process two files of one second can sort the wrong way round
    ('...123.10' before '...123.9'), which a resumed run, a later process, never meets."""
    time.sleep(1.0 - time.time() % 1.0 + 0.01)

