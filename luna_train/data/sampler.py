"""WeightedPatchSampler: class-balanced, scale/kind-weighted draws with replacement, resumable and distributed-aware."""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Annotated, Literal

import numpy as np
import pandas as pd
import torch

from luna_prep.format.spec import KINDS
from luna_train.config_fields import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, Probability, Range

Kind = Literal[KINDS]  # the store's sample kinds: nodule, random, candidate
_AUG_STREAM = 0xA06  # separates the aug-seed stream from the position stream of an epoch


@dataclass(frozen=True)
class SamplerConfig:
    """How patches are drawn. Scales or kinds missing from the weight dicts weigh 1.0; weight 0 drops them."""

    fg_fraction: Probability = 0.5
    kind_weights: dict[Kind, NonNegativeFloat] = field(
        default_factory=lambda: {"nodule": 1.0, "random": 1.0, "candidate": 1.0})
    scale_weights: dict[PositiveInt, NonNegativeFloat] = field(default_factory=lambda: {48: 1.0, 64: 1.0, 96: 1.0})
    samples_per_epoch: PositiveInt | None = None
    hard_mining_every: NonNegativeInt = 0  # epochs between hard-negative mining passes; 0 = never
    hard_mining_top: Annotated[float, Range(gt=0, le=1)] = 0.1  # share of the scored negatives boosted
    hard_mining_boost: PositiveFloat = 4.0  # their weight multiplier


def _dist_default(num_replicas: int | None, rank: int | None) -> tuple[int, int]:
    ready = torch.distributed.is_available() and torch.distributed.is_initialized()
    if num_replicas is None:
        num_replicas = torch.distributed.get_world_size() if ready else 1
    if rank is None:
        rank = torch.distributed.get_rank() if ready else 0
    if not 0 <= rank < num_replicas:
        raise ValueError(f"rank {rank} not in [0, {num_replicas})")
    return int(num_replicas), int(rank)


class WeightedPatchSampler(torch.utils.data.Sampler):
    """Yields ``(position, aug_seed)`` tuples for :class:`PatchDataset`, drawn with replacement.

    Probability of row i: ``scale_w * kind_w * hardness`` normalised within foreground
    (fg_voxels > 0) and within background, then scaled by ``fg_fraction`` / ``1 - fg_fraction``, so
    the expected foreground share is exactly ``fg_fraction``. An epoch's draw list (positions and
    aug seeds, ``len(self) * num_replicas`` draws) is a pure function of (seed, epoch, hardness at
    the epoch's start); rank r takes draw numbers r, r + R, r + 2R, ...

    Resume: ``state_dict()`` holds epoch, items consumed in it, and the hard-mining state;
    the iterator counts items as it yields them. With DataLoader workers the loader pulls indices
    ahead of training, so pass the trainer's own count: ``state_dict(consumed=steps * batch_size)``.
    After ``load_state_dict`` (or ``set_epoch(e); skip(n)``) the next iteration yields exactly the
    rest of that epoch; a ``set_epoch`` of the same epoch before it keeps the position.
    """

    def __init__(self, rows: pd.DataFrame, cfg: SamplerConfig, seed: int = 0, num_replicas: int | None = None,
                 rank: int | None = None):
        if not 0.0 <= cfg.fg_fraction <= 1.0:
            raise ValueError(f"fg_fraction must be in [0, 1], not {cfg.fg_fraction}")
        self.cfg, self.seed = cfg, int(seed)
        self.num_replicas, self.rank = _dist_default(num_replicas, rank)
        self.fg = rows["fg_voxels"].to_numpy() > 0
        scale_w = rows["scale"].map(lambda s: float(cfg.scale_weights.get(int(s), 1.0))).to_numpy(dtype=np.float64)
        kind_w = rows["kind"].map(lambda k: float(cfg.kind_weights.get(str(k), 1.0))).to_numpy(dtype=np.float64)
        self.base = scale_w * kind_w
        if (self.base < 0).any() or not (self.base > 0).any():
            raise ValueError("sampler weights must be >= 0 with at least one row above 0")
        if cfg.samples_per_epoch is not None:
            total = int(cfg.samples_per_epoch)
        elif "sample_id" in rows:
            total = int(rows.loc[self.base > 0, "sample_id"].nunique())
        else:
            total = int((self.base > 0).sum())
        self.per_rank = math.ceil(total / self.num_replicas)
        self.epoch = 0
        self.consumed = 0
        self._resume_pending = False
        self.boosted = np.zeros(0, dtype=np.int64)  # hard negatives for epochs started from now on
        self.epoch_boosted = self.boosted  # hard negatives of the current epoch's draw list
        self._cache: tuple | None = None

    # -- probabilities -------------------------------------------------------------------------
    def probabilities(self, boosted: np.ndarray | None = None) -> np.ndarray:
        """Draw probability of every row given a set of boosted (hard negative) positions."""
        w = self.base.copy()
        boosted = self.epoch_boosted if boosted is None else boosted
        if len(boosted):
            w[boosted] *= self.cfg.hard_mining_boost
        f = self.cfg.fg_fraction
        w_fg, w_bg = w[self.fg].sum(), w[~self.fg].sum()
        if (w_fg == 0 and f > 0) or (w_bg == 0 and f < 1):
            warnings.warn(f"fg_fraction {f} unreachable: foreground weight {w_fg}, background weight {w_bg}",
                          stacklevel=2)
            return w / w.sum()
        p = np.zeros_like(w)
        if w_fg > 0:
            p[self.fg] = f * w[self.fg] / w_fg
        if w_bg > 0:
            p[~self.fg] = (1 - f) * w[~self.fg] / w_bg
        return p / p.sum()

    def expected_fg_fraction(self) -> float:
        """Expected share of foreground draws under the current epoch's weights."""
        return float(self.probabilities()[self.fg].sum())

    # -- epoch draw list -----------------------------------------------------------------------
    def epoch_draws(self) -> tuple[np.ndarray, np.ndarray]:
        """(positions, aug_seeds) of every draw of the current epoch, all ranks (draw number = index)."""
        key = (self.epoch, self.epoch_boosted.tobytes())
        if self._cache is None or self._cache[0] != key:
            n = self.per_rank * self.num_replicas
            positions = np.random.default_rng([self.seed, self.epoch]).choice(len(self.base), size=n,
                                                                              p=self.probabilities())
            seeds = np.random.default_rng([self.seed, self.epoch, _AUG_STREAM]).integers(0, 2**31 - 1, size=n)
            self._cache = (key, positions, seeds)
        return self._cache[1], self._cache[2]

    def rank_draws(self) -> tuple[np.ndarray, np.ndarray]:
        """This rank's share of the epoch's draws, in order."""
        positions, seeds = self.epoch_draws()
        return positions[self.rank::self.num_replicas], seeds[self.rank::self.num_replicas]

    def __len__(self) -> int:
        return self.per_rank

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.consumed >= self.per_rank and not self._resume_pending:
            self.set_epoch(self.epoch + 1)  # previous epoch finished and no set_epoch since: move on
        self._resume_pending = False
        positions, seeds = self.rank_draws()
        start = self.consumed
        for i in range(start, self.per_rank):
            self.consumed = i + 1
            yield int(positions[i]), int(seeds[i])

    def set_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch`` (reseeds; applies pending hard-mining weights). Keeps a resumed position."""
        if self._resume_pending and int(epoch) == self.epoch:
            return
        self.epoch, self.consumed, self._resume_pending = int(epoch), 0, False
        self.epoch_boosted = self.boosted.copy()

    def skip(self, n_items: int) -> None:
        """Mark ``n_items`` more items of the current epoch as consumed (on resume, after set_epoch)."""
        self.consumed = min(self.per_rank, self.consumed + int(n_items))
        self._resume_pending = True

    # -- state -----------------------------------------------------------------------------------
    def state_dict(self, consumed: int | None = None) -> dict:
        """Epoch, items consumed in it (``consumed`` overrides the iterator's count), hard-mining state."""
        return {
            "epoch": self.epoch,
            "consumed": self.consumed if consumed is None else int(consumed),
            "seed": self.seed,
            "num_replicas": self.num_replicas,
            "boosted": self.boosted.tolist(),
            "epoch_boosted": self.epoch_boosted.tolist(),
        }

    def load_state_dict(self, d: dict) -> None:
        if int(d.get("num_replicas", self.num_replicas)) != self.num_replicas:
            warnings.warn(f"resuming a {d['num_replicas']}-replica sampler state on {self.num_replicas} replicas",
                          stacklevel=2)
        self.epoch = int(d["epoch"])
        self.consumed = min(self.per_rank, int(d["consumed"]))
        self.boosted = np.asarray(d.get("boosted", []), dtype=np.int64)
        self.epoch_boosted = np.asarray(d.get("epoch_boosted", []), dtype=np.int64)
        self._resume_pending = True
        self._cache = None

    # -- hard negative mining -------------------------------------------------------------------
    def hard_mining_due(self, epoch: int) -> bool:
        """Whether the trainer should score negatives after ``epoch`` (0-based) and call update_hardness."""
        every = self.cfg.hard_mining_every
        return every > 0 and (int(epoch) + 1) % every == 0

    def update_hardness(self, positions: np.ndarray, scores: np.ndarray) -> None:
        """Boost the top ``hard_mining_top`` share of scored negatives (highest score) from the next epoch.

        Replaces the previous boost set; duplicate positions count by their highest score. Positives
        and the fg share are untouched (the boost redistributes within negatives). No-op when
        ``hard_mining_every == 0``.
        """
        if self.cfg.hard_mining_every <= 0:
            return
        positions = np.asarray(positions, dtype=np.int64).ravel()
        scores = np.asarray(scores, dtype=np.float64).ravel()
        if positions.shape != scores.shape:
            raise ValueError("positions and scores must have the same length")
        neg = ~self.fg[positions]
        best = pd.Series(scores[neg]).groupby(positions[neg]).max()
        k = math.ceil(self.cfg.hard_mining_top * len(best))
        top = best.sort_values(ascending=False, kind="stable").index[:k]
        self.boosted = np.sort(np.asarray(top, dtype=np.int64))
