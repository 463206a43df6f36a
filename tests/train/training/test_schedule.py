"""Warm-up + cosine schedule, with and without warm restarts."""

from __future__ import annotations

import math

import pytest
import torch

from luna_train.training.schedule import ScheduleSpec, WarmupCosine, lr_at


def test_warmup_then_cosine_to_min():
    spec = ScheduleSpec(base_lr=1e-3, min_lr=1e-5, warmup_steps=10, total_steps=110)
    lrs = [lr_at(s, spec) for s in range(111)]
    warm = lrs[:11]
    assert all(b > a for a, b in zip(warm, warm[1:]))  # rises during warm-up
    assert [b - a for a, b in zip(warm, warm[1:])] == pytest.approx([1e-3 / 11] * 10)  # linearly
    assert lrs[10] == pytest.approx(1e-3)  # reaches the base LR
    assert lrs[60] == pytest.approx(1e-5 + 0.5 * (1e-3 - 1e-5))  # cosine midpoint
    assert all(b <= a for a, b in zip(lrs[10:], lrs[11:]))  # then decreases
    assert lrs[110] == pytest.approx(1e-5)  # ends at min


def test_restarts_reset_to_base():
    spec = ScheduleSpec(base_lr=1.0, min_lr=0.0, warmup_steps=0, total_steps=1000, restart_steps=10, restart_mult=2.0)
    assert lr_at(0, spec) == pytest.approx(1.0)
    assert lr_at(9, spec) < 0.05
    assert lr_at(10, spec) == pytest.approx(1.0)  # first restart
    assert lr_at(20, spec) == pytest.approx(0.5)  # half-way through the doubled period
    assert lr_at(30, spec) == pytest.approx(1.0)  # second restart after 10 + 20 steps


def test_shrinking_restart_periods_are_refused_rather_than_looping_forever():
    spec = ScheduleSpec(base_lr=1.0, min_lr=0.0, warmup_steps=0, total_steps=1000, restart_steps=10, restart_mult=0.5)
    with pytest.raises(ValueError, match="restart_mult must be >= 1"):
        lr_at(25, spec)  # past 10 + 5 + 2.5 + ... = 20 steps


def test_scheduler_sets_optimizer_lr_and_round_trips():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=123.0)
    spec = ScheduleSpec(base_lr=0.1, min_lr=0.0, warmup_steps=4, total_steps=20)
    sched = WarmupCosine(opt, spec)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 / 5)
    for _ in range(7):
        sched.step()
    state = sched.state_dict()
    other = WarmupCosine(torch.optim.AdamW([p], lr=1.0), spec)
    other.load_state_dict(state)
    assert other.get_last_lr() == pytest.approx(sched.get_last_lr())
    assert sched.get_last_lr()[0] == pytest.approx(0.05 * (1 + math.cos(math.pi * 3 / 16)))
