"""Train / validation / test splits of a manifest by LUNA16 subset (never by patch: a scan stays in one set)."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

SETS = ("train", "val", "test")


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
            raise ValueError(f"fold {k} is a test subset {test}; pick a fold among the non-test subsets")
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
                raise ValueError(f"split sets {a} and {b} share subsets {shared} ({subsets})")
    present = sorted(int(s) for s in pd.unique(manifest["subset"]))
    out = {name: manifest[manifest["subset"].isin(subsets[name])] for name in SETS}
    for name in SETS:
        if subsets[name] and out[name].empty:
            raise ValueError(
                f"split set {name!r} is empty: subsets {list(subsets[name])} asked, the store holds subsets {present}"
            )
    owner: dict[str, str] = {}
    for name in SETS:
        for uid in pd.unique(out[name]["seriesuid"]):
            if uid in owner and owner[uid] != name:
                raise ValueError(f"seriesuid {uid} would be in both {owner[uid]!r} and {name!r} (listed under two subsets)")
            owner[uid] = name
    return out
