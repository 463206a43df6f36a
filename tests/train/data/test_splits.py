import logging
from types import SimpleNamespace

import pandas as pd
import pytest

from luna_prep.errors import InputError
from luna_prep.format.reader import PatchStore
from luna_prep.synthetic.tiny_store import write_tiny_store
from luna_train.data import splits
from luna_train.data.splits import SplitConfig, select_rows, split_manifest


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


def _store_without_nodules_in(tiny_store, monkeypatch, subsets):
    """select_rows sees the tiny store with the nodules of ``subsets`` taken out of its manifest."""
    store = PatchStore(tiny_store)
    manifest = store.manifest.copy()
    manifest.loc[manifest["subset"].isin(subsets), "fg_voxels"] = 0
    monkeypatch.setattr(splits, "open_dataset", lambda _: SimpleNamespace(manifest=manifest, attrs=store.attrs))


def test_validation_without_nodules_is_refused(tiny_store, monkeypatch):
    """A validation Dice over no nodules is 1.0 for a model that predicts nothing: the untrained model won."""
    _store_without_nodules_in(tiny_store, monkeypatch, [8])
    with pytest.raises(InputError) as err:
        select_rows("tiny.zarr", SplitConfig(), {}, 24, 16)
    assert str(err.value).startswith("tiny.zarr: validation subsets [8] hold no patch with nodule voxels at scale 24:")
    assert len(select_rows("tiny.zarr", SplitConfig(val_subsets=(7,), train_subsets=(0, 8)), {}, 24, 16).val) == 8


def test_training_or_testing_without_nodules_warns(tiny_store, monkeypatch, caplog):
    _store_without_nodules_in(tiny_store, monkeypatch, [0, 1, 9])
    with caplog.at_level(logging.WARNING, logger="luna_train"):
        select_rows("tiny.zarr", SplitConfig(train_subsets=(0, 1)), {}, 24, 16)
    assert [r.getMessage() for r in caplog.records] == [
        "tiny.zarr: the train set (subsets [0, 1]) holds no patch with nodule voxels",
        "tiny.zarr: the test set (subsets [9]) holds no patch with nodule voxels"]


def test_asked_subsets_the_store_lacks_are_named_per_set(tmp_path, caplog):
    store = write_tiny_store(tmp_path / "three.zarr", n_scans=3)
    with caplog.at_level(logging.WARNING, logger="luna_train"):
        rows = select_rows(str(store), SplitConfig(train_subsets=(0, 3, 4), val_subsets=(1, 8), test_subsets=(2,)),
                           {}, 24, 16)
    assert sorted(rows.train["subset"].unique()) == [0]
    assert [r.getMessage() for r in caplog.records] == [
        f"{store}: subsets [3, 4] of the train set are not in the store (it holds subsets [0, 1, 2]): train uses "
        "subsets [0]",
        f"{store}: subsets [8] of the val set are not in the store (it holds subsets [0, 1, 2]): val uses subsets [1]"]
