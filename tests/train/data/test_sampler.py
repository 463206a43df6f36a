import numpy as np
import pandas as pd
import pytest

from luna_train.data.sampler import SamplerConfig, WeightedPatchSampler


def make_rows(n_samples=300, scales=(48, 64, 96), seed=0):
    """Manifest-like rows: every sample at every scale; nodules fg, a few random patches touch a nodule."""
    rng = np.random.default_rng(seed)
    kinds = rng.choice(["nodule", "random", "candidate"], p=[0.2, 0.5, 0.3], size=n_samples)
    fg = np.where(kinds == "nodule", rng.integers(10, 500, n_samples), 0)
    fg[(kinds == "random") & (rng.random(n_samples) < 0.1)] = 7
    rows = [{"sample_id": i, "scale": s, "kind": kinds[i], "fg_voxels": int(fg[i])}
            for s in scales for i in range(n_samples)]
    return pd.DataFrame(rows)


def drawn(sampler):
    return np.array([p for p, _ in sampler], dtype=np.int64)


@pytest.mark.parametrize("target,kinds,scales", [
    (0.2, {"nodule": 1.0, "random": 3.0, "candidate": 0.5}, {48: 1.0, 64: 2.0, 96: 0.5}),
    (0.5, {"nodule": 1.0, "random": 1.0, "candidate": 1.0}, {48: 1.0, 64: 1.0, 96: 1.0}),
    (0.8, {"nodule": 2.0, "random": 0.2, "candidate": 1.0}, {48: 0.3, 64: 1.0, 96: 3.0}),
])
def test_fg_fraction_on_target(target, kinds, scales):
    rows = make_rows()
    cfg = SamplerConfig(fg_fraction=target, kind_weights=kinds, scale_weights=scales, samples_per_epoch=4000)
    sampler = WeightedPatchSampler(rows, cfg, seed=1)
    assert sampler.expected_fg_fraction() == pytest.approx(target, abs=1e-12)
    pos = drawn(sampler)
    assert len(pos) == len(sampler) == 4000
    share = float((rows["fg_voxels"].to_numpy()[pos] > 0).mean())
    assert abs(share - target) < 0.03
    # kind weights act within a class: random vs candidate negatives drawn in ratio of their weights
    neg = rows.iloc[pos][rows["fg_voxels"].to_numpy()[pos] == 0]
    per_row = neg["kind"].value_counts() / rows[rows["fg_voxels"] == 0]["kind"].value_counts()
    assert per_row["random"] / per_row["candidate"] == pytest.approx(kinds["random"] / kinds["candidate"], rel=0.25)


def test_default_epoch_length_and_zero_scale_weight():
    rows = make_rows()
    assert len(WeightedPatchSampler(rows, SamplerConfig())) == 300  # distinct samples
    sampler = WeightedPatchSampler(rows, SamplerConfig(scale_weights={48: 1.0, 64: 0.0, 96: 2.0},
                                                       samples_per_epoch=3000))
    scales = set(rows["scale"].to_numpy()[drawn(sampler)].tolist())
    assert scales == {48, 96}


def test_ranks_split_the_epoch():
    rows = make_rows()
    cfg = SamplerConfig(samples_per_epoch=101)
    r0, r1 = (WeightedPatchSampler(rows, cfg, seed=5, num_replicas=2, rank=r) for r in (0, 1))
    for s in (r0, r1):
        s.set_epoch(2)
    a, b = list(r0), list(r1)
    assert len(a) == len(b) == len(r0) == 51
    positions, seeds = r0.epoch_draws()
    assert len(positions) == 102
    interleaved = [x for pair in zip(a, b) for x in pair]
    assert interleaved == list(zip(positions.tolist(), seeds.tolist()))  # disjoint draw numbers, covering all
    assert len(set(seeds.tolist())) == 102  # aug seeds are distinct per draw


def test_set_epoch_reseeds_deterministically():
    rows = make_rows()
    cfg = SamplerConfig(samples_per_epoch=200)
    s1, s2 = WeightedPatchSampler(rows, cfg, seed=9), WeightedPatchSampler(rows, cfg, seed=9)
    s1.set_epoch(0)
    e0 = list(s1)
    s1.set_epoch(1)
    e1 = list(s1)
    assert e0 != e1
    s2.set_epoch(1)
    assert list(s2) == e1
    assert list(WeightedPatchSampler(rows, cfg, seed=10)) != e0
    s3 = WeightedPatchSampler(rows, cfg, seed=9)
    list(s3)
    assert list(s3) == e1  # iterating again without set_epoch moves on to the next epoch


def test_resume_mid_epoch_reproduces_remaining_items():
    rows = make_rows()
    cfg = SamplerConfig(samples_per_epoch=120, hard_mining_every=1)
    rng = np.random.default_rng(0)
    scores = rng.random(len(rows))

    ref = WeightedPatchSampler(rows, cfg, seed=4)
    ref.set_epoch(0)
    ref_e0 = list(ref)
    ref.update_hardness(np.arange(len(rows)), scores)
    ref.set_epoch(1)
    ref_e1 = list(ref)
    ref.set_epoch(2)
    ref_e2 = list(ref)

    run = WeightedPatchSampler(rows, cfg, seed=4)
    run.set_epoch(0)
    list(run)
    run.update_hardness(np.arange(len(rows)), scores)
    run.set_epoch(1)
    it = iter(run)
    head = [next(it) for _ in range(37)]
    assert head == ref_e1[:37]
    state = run.state_dict()
    assert state["epoch"] == 1 and state["consumed"] == 37

    resumed = WeightedPatchSampler(rows, cfg, seed=4)
    resumed.load_state_dict(state)
    resumed.set_epoch(1)  # a training loop re-announcing the interrupted epoch keeps the position
    assert list(resumed) == ref_e1[37:]
    resumed.set_epoch(2)
    assert list(resumed) == ref_e2

    # the trainer's own count overrides the iterator's (workers prefetch ahead); skip() does the same
    again = WeightedPatchSampler(rows, cfg, seed=4)
    again.load_state_dict(run.state_dict(consumed=30))
    assert list(again) == ref_e1[30:]
    fresh = WeightedPatchSampler(rows, cfg, seed=4)
    fresh.set_epoch(0)
    fresh.skip(100)
    assert list(fresh) == ref_e0[100:]


def test_hard_mining_boosts_negatives_and_keeps_fg_fraction():
    rows = make_rows()
    cfg = SamplerConfig(fg_fraction=0.4, samples_per_epoch=6000, hard_mining_every=2, hard_mining_top=0.1,
                        hard_mining_boost=4.0)
    sampler = WeightedPatchSampler(rows, cfg, seed=2)
    assert not sampler.hard_mining_due(0) and sampler.hard_mining_due(1)
    neg = np.flatnonzero(rows["fg_voxels"].to_numpy() == 0)
    scores = np.random.default_rng(1).random(len(neg))
    top = set(neg[np.argsort(-scores)[: int(np.ceil(0.1 * len(neg)))]].tolist())

    def shares(s):
        pos = drawn(s)
        return np.isin(pos, list(top)).mean(), (rows["fg_voxels"].to_numpy()[pos] > 0).mean()

    before, fg_before = shares(sampler)
    sampler.update_hardness(np.concatenate([neg, neg[:5]]), np.concatenate([scores, np.zeros(5)]))
    assert set(sampler.boosted.tolist()) == top
    sampler.set_epoch(1)
    after, fg_after = shares(sampler)
    assert sampler.expected_fg_fraction() == pytest.approx(0.4, abs=1e-12)
    assert abs(fg_before - 0.4) < 0.03 and abs(fg_after - 0.4) < 0.03
    # share of the boosted 10 %: 0.6 * 0.1 = 0.06 before; 0.6 * 0.4 / (0.4 + 0.9) ~= 0.185 after
    assert before == pytest.approx(0.06, abs=0.02) and after == pytest.approx(0.185, abs=0.03)


def test_loader_without_workers_counts_consumed_exactly():
    import torch

    from luna_train.data.loader import make_loader

    class Echo(torch.utils.data.Dataset):
        def __getitem__(self, item):
            return {"position": item[0], "aug_seed": item[1]}

    rows = make_rows()
    sampler = WeightedPatchSampler(rows, SamplerConfig(samples_per_epoch=50), seed=0)
    it = iter(make_loader(Echo(), sampler, batch_size=8))
    first = [next(it) for _ in range(2)]
    assert sampler.state_dict()["consumed"] == 16
    assert first[1]["position"].tolist() == sampler.rank_draws()[0][8:16].tolist()
