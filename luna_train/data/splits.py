"""Train / validation / test splits of a manifest by LUNA16 subset (never by patch: a scan stays in one set)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import pandas as pd

from luna_prep.errors import InputError
from luna_prep.format.spec import StoreAttributes
from luna_prep.sharing.cards import open_dataset

SETS = ("train", "val", "test")

log = logging.getLogger("luna_train")


@dataclass(frozen=True)
class SplitConfig:
    """Which LUNA16 subsets go where.

    ``fold=K`` is K-fold cross-validation over the non-test subsets: subset K is validation, the test
    subsets stay test, and train is every other subset of ``train_subsets + val_subsets``.
    """

    train_subsets: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 6, 7)
    val_subsets: tuple[int, ...] = (8,)
    test_subsets: tuple[int, ...] = (9,)
    fold: int | None = None

    def resolved(self) -> dict[str, tuple[int, ...]]:
        """The subsets of each set after applying ``fold``."""
        test = tuple(sorted(set(int(s) for s in self.test_subsets)))
        if self.fold is None:
            return {"train": tuple(int(s) for s in self.train_subsets), "val": tuple(int(s) for s in self.val_subsets),
                    "test": test}
        k = int(self.fold)
        if k in test:
            raise InputError(f"fold {k} is a test subset {test}; pick a fold among the non-test subsets")
        pool = sorted(set(int(s) for s in (*self.train_subsets, *self.val_subsets)) - set(test) - {k})
        return {"train": tuple(pool), "val": (k,), "test": test}


def split_manifest(manifest: pd.DataFrame, cfg: SplitConfig) -> dict[str, pd.DataFrame]:
    """Rows of ``manifest`` per set: ``{"train", "val", "test"}`` (original index kept).

    Raises ValueError when the sets share a subset, a seriesuid would land in two sets, or a set
    for which subsets were asked holds no rows (the message names the subsets present).
    """
    subsets = cfg.resolved()
    for i, a in enumerate(SETS):
        for b in SETS[i + 1:]:
            shared = sorted(set(subsets[a]) & set(subsets[b]))
            if shared:
                raise InputError(f"split sets {a} and {b} share subsets {shared} ({subsets})")
    present = sorted(int(s) for s in pd.unique(manifest["subset"]))
    out = {name: manifest[manifest["subset"].isin(subsets[name])] for name in SETS}
    for name in SETS:
        if subsets[name] and out[name].empty:
            raise InputError(
                f"split set {name!r} is empty: subsets {list(subsets[name])} asked, the store holds subsets {present}"
            )
    owner: dict[str, str] = {}
    for name in SETS:
        for uid in pd.unique(out[name]["seriesuid"]):
            if uid in owner and owner[uid] != name:
                raise InputError(f"seriesuid {uid} would be in both {owner[uid]!r} and {name!r} "
                                 "(listed under two subsets)")
            owner[uid] = name
    return out


@dataclass
class RunData:
    """Rows of each set as PatchDataset inputs (index reset: position = row number)."""

    train: pd.DataFrame
    val: pd.DataFrame
    test: pd.DataFrame
    attrs: StoreAttributes | None = None  # the store's (spacing, HU window, dtype...): read once, here


def select_rows(dataset: str, split: SplitConfig, scale_weights: Mapping, eval_scale: int,
                train_size: int | None) -> RunData:
    """Split the store's manifest; train keeps every scale with sampler weight > 0, val/test only ``eval_scale``.

    ``scale_weights`` is ``sampler.scale_weights`` (a scale it omits weighs 1), ``train_size`` is
    ``data.train_size`` (None trains at native size, so only one scale may train).
    """
    store = open_dataset(dataset)
    sets = split_manifest(store.manifest, split)
    scales = set(store.attrs.scales)
    weights = {int(k): float(v) for k, v in scale_weights.items()}
    train_scales = sorted(s for s in scales if weights.get(s, 1.0) > 0)
    if not train_scales:
        raise InputError(f"sampler.scale_weights {weights} leave no scale of the store {sorted(scales)}")
    if train_size is None and len(train_scales) > 1:
        raise InputError(f"data.train_size null trains at native size and needs one scale; scales {train_scales} "
                         f"have weight > 0 (set sampler.scale_weights to weight 0 all but one)")
    if eval_scale not in scales:
        raise InputError(f"data.eval_scale {eval_scale} is not a scale of the store {sorted(scales)}")
    train = sets["train"][sets["train"]["scale"].isin(train_scales)]
    val = sets["val"][sets["val"]["scale"] == eval_scale]
    test = sets["test"][sets["test"]["scale"] == eval_scale]
    rows = {"train": train, "val": val, "test": test}
    _warn_absent_subsets(dataset, split.resolved(), store.manifest)
    _check_positives(dataset, split.resolved(), rows, eval_scale)
    return RunData(*(df.sort_values(["scale", "index"]).reset_index(drop=True) for df in (train, val, test)),
                   attrs=store.attrs)


def _warn_absent_subsets(dataset: str, subsets: dict[str, tuple[int, ...]], manifest: pd.DataFrame) -> None:
    """A WARNING per set for the asked subsets the store does not hold (a set holding none is refused earlier)."""
    present = {int(s) for s in pd.unique(manifest["subset"])}
    for name in SETS:
        absent = sorted(set(subsets[name]) - present)
        if absent:
            used = sorted(set(subsets[name]) & present)
            log.warning("%s: subsets %s of the %s set are not in the store (it holds subsets %s): %s uses subsets %s",
                        dataset, absent, name, sorted(present), name, used)


def _check_positives(dataset: str, subsets: dict[str, tuple[int, ...]], rows: dict[str, pd.DataFrame],
                     eval_scale: int) -> None:
    """Refuse validation rows without nodule voxels (the best model would be chosen on nothing: a model that
    predicts nothing scores Dice 1.0 there); a WARNING for a train or test set without them."""
    def has_nodules(name: str) -> bool:
        return rows[name].empty or bool((rows[name]["fg_voxels"] > 0).any())

    if not has_nodules("val"):
        raise InputError(f"{dataset}: validation subsets {list(subsets['val'])} hold no patch with nodule voxels at "
                         f"scale {eval_scale}: the best model would be chosen on nothing (one that predicts nothing "
                         f"scores Dice 1.0); validate on subsets with nodules")
    for name in ("train", "test"):
        if not has_nodules(name):
            log.warning("%s: the %s set (subsets %s) holds no patch with nodule voxels", dataset, name,
                        list(subsets[name]))
