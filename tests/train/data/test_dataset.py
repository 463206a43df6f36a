import pickle

import numpy as np
import pytest
import torch

from luna_prep.format.reader import PatchStore
from luna_train.data.augment import AugmentConfig, build_train_transform
from luna_train.data.dataset import PatchDataset, resize_label
from luna_train.data.loader import make_loader
from luna_train.data.sampler import SamplerConfig, WeightedPatchSampler


@pytest.fixture
def store(tiny_store):
    return tiny_store, PatchStore(tiny_store).manifest.reset_index(drop=True)


def test_shapes_and_dtypes(store):
    root, manifest = store
    ds = PatchDataset(root, manifest, train_size=24)
    assert len(ds) == len(manifest)
    for pos in (0, len(ds) - 1):
        item = ds[pos]
        assert item["image"].shape == (1, 24, 24, 24) and item["image"].dtype == torch.float32
        assert item["label"].shape == (1, 24, 24, 24) and item["label"].dtype == torch.float32
        assert 0.0 <= float(item["image"].min()) and float(item["image"].max()) <= 1.0
        assert set(item["label"].unique().tolist()) <= {0.0, 1.0}
        assert item["position"] == pos and item["scale"] == int(manifest["scale"][pos])
    native = PatchDataset(root, manifest[manifest["scale"] == 16], train_size=None)
    assert native[0]["image"].shape == (1, 16, 16, 16)
    with pytest.raises(ValueError, match="mix scales"):
        PatchDataset(root, manifest, train_size=None)


def test_native_read_matches_store(store):
    root, manifest = store
    reader = PatchStore(root)
    ds = PatchDataset(root, manifest, train_size=24)  # scale-24 rows are read at native size
    for pos in np.flatnonzero(manifest["scale"].to_numpy() == 24)[:6]:
        image, mask = reader.read_patch(24, int(manifest["index"][pos]))
        item = ds[int(pos)]
        np.testing.assert_array_equal(item["label"][0].numpy(), mask.astype(np.float32))
        np.testing.assert_array_equal(item["image"][0].numpy(), image)


def test_resize_keeps_nodule_centred_and_binary(store):
    root, manifest = store
    rows = manifest[(manifest["scale"] == 16) & (manifest["kind"] == "nodule")].reset_index(drop=True)
    ds = PatchDataset(root, rows, train_size=24)
    for pos in range(4):
        label = ds[pos]["label"][0]
        assert set(label.unique().tolist()) == {0.0, 1.0}
        centroid = torch.nonzero(label).float().mean(0)
        assert torch.all((centroid - 12).abs() <= 1.0), centroid
        ratio = float(label.sum()) / int(rows["fg_voxels"][pos])
        assert 1.5**3 * 0.75 < ratio < 1.5**3 * 1.25  # volume scales with the voxel size
    tiny = torch.zeros(1, 24, 24, 24)
    tiny[0, 12, 12, 12] = 1  # a one-voxel nodule survives 24 -> 16 downsampling
    assert resize_label(tiny, 16).sum() >= 1


def test_aug_seed_reproducible(store):
    root, manifest = store
    ds = PatchDataset(root, manifest, train_size=24, transform=build_train_transform(AugmentConfig()))
    a, b = ds[(3, 1234)], ds[(3, 1234)]
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
    assert type(a["image"]) is torch.Tensor
    others = [ds[(3, s)]["image"] for s in range(1, 6)]
    assert any(not torch.equal(a["image"], o) for o in others)


def test_pickle_round_trip(store):
    root, manifest = store
    ds = PatchDataset(root, manifest, train_size=24, transform=build_train_transform(AugmentConfig()))
    first = ds[(5, 7)]  # opens the store
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._reader is None
    again = clone[(5, 7)]
    assert torch.equal(first["image"], again["image"]) and torch.equal(first["label"], again["label"])


def test_worker_processes_match_main_process(store):
    root, manifest = store
    ds = PatchDataset(root, manifest, train_size=24, transform=build_train_transform(AugmentConfig()))
    cfg = SamplerConfig(samples_per_epoch=12)

    def batches(workers):
        loader = make_loader(ds, WeightedPatchSampler(manifest, cfg, seed=3), batch_size=4, num_workers=workers)
        return list(loader)

    serial, parallel = batches(0), batches(2)
    assert len(serial) == len(parallel) == 3
    for a, b in zip(serial, parallel):
        assert torch.equal(a["position"], b["position"])
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
