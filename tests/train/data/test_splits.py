import pandas as pd
import pytest

from luna_prep.format.reader import PatchStore
from luna_train.data.splits import SplitConfig, split_manifest


@pytest.fixture
def manifest(tiny_store):
    return PatchStore(tiny_store).manifest


def _subsets(df):
    return sorted(int(s) for s in df["subset"].unique())


def test_default_split(manifest):
    sets = split_manifest(manifest, SplitConfig())
    assert _subsets(sets["train"]) == list(range(8))
    assert _subsets(sets["val"]) == [8]
    assert _subsets(sets["test"]) == [9]
    assert sum(len(s) for s in sets.values()) == len(manifest)


def test_fold_moves_subset_to_val(manifest):
    sets = split_manifest(manifest, SplitConfig(fold=3))
    assert _subsets(sets["val"]) == [3]
    assert _subsets(sets["train"]) == [0, 1, 2, 4, 5, 6, 7, 8]
    assert _subsets(sets["test"]) == [9]


def test_no_seriesuid_in_two_sets(manifest):
    sets = split_manifest(manifest, SplitConfig(fold=5))
    uids = [set(s["seriesuid"]) for s in sets.values()]
    assert not (uids[0] & uids[1]) and not (uids[0] & uids[2]) and not (uids[1] & uids[2])


def test_bad_splits_raise(manifest):
    with pytest.raises(ValueError, match="share subsets"):
        split_manifest(manifest, SplitConfig(train_subsets=(0, 1, 8), val_subsets=(8,)))
    with pytest.raises(ValueError, match=r"holds subsets \[0, 1, 2"):
        split_manifest(manifest, SplitConfig(val_subsets=(12,)))
    with pytest.raises(ValueError, match="test subset"):
        split_manifest(manifest, SplitConfig(fold=9))
    moved = manifest.copy()
    first = moved.index[moved["seriesuid"] == "1.2.3.0"][0]
    moved.loc[first, "subset"] = 9  # one patch of scan 0 filed under the test subset
    with pytest.raises(ValueError, match="1.2.3.0"):
        split_manifest(moved, SplitConfig())
    # an empty set is fine where no subsets were asked for
    sets = split_manifest(manifest, SplitConfig(test_subsets=()))
    assert sets["test"].empty and isinstance(sets["test"], pd.DataFrame)
