"""A batch has one dtype and one value range whatever mix of scales and stored/resized patches it holds."""

import numpy as np
import pytest
import torch

from luna_prep.format.reader import PatchStore
from luna_train.data.dataset import PatchDataset, collate_patches, decode_batch
from luna_train.data.loader import make_loader

from conftest import write_tiny_store


@pytest.fixture(scope="module", params=["uint8", "float16"])
def multi_scale(request, tmp_path_factory):
    """A store with the luna16 config's three scales 48/64/96: 2 scans of 4 samples (2 nodules) each."""
    root = write_tiny_store(tmp_path_factory.mktemp("ms") / "ms.zarr", scales=(48, 64, 96), n_scans=2,
                            samples_per_scan=4, image_dtype=request.param)
    return root, PatchStore(root).manifest.sort_values(["scale", "index"]).reset_index(drop=True)


def _expected(root, manifest, positions, size=64):
    """float32 images in [0, 1] and labels of ``positions``: 64^3 read natively, others resized to 64^3."""
    ds = PatchDataset(root, manifest, train_size=size, stored=False)
    items = [ds[p] for p in positions]
    return torch.stack([i["image"] for i in items]), torch.stack([i["label"] for i in items])


def _mixed_positions(manifest):
    """Positions of one batch: stored 64^3 first (so the old collate took uint8 from it), then 48 and 96."""
    by_scale = {s: manifest.index[manifest["scale"] == s].tolist() for s in (48, 64, 96)}
    return by_scale[64][:2] + by_scale[48][:2] + by_scale[96][:2]


@pytest.mark.parametrize("workers", [0, 1])
def test_mixed_scale_batch_is_float_in_unit_range(multi_scale, workers):
    root, manifest = multi_scale
    positions = _mixed_positions(manifest)
    ds = PatchDataset(root, manifest, train_size=64, stored=True)
    loader = make_loader(ds, sampler=positions, batch_size=len(positions), num_workers=workers,
                         persistent_workers=False)
    batch = next(iter(loader))
    assert batch["image"].dtype == torch.float32 and batch["label"].dtype == torch.float32
    assert batch["image"].shape == (6, 1, 64, 64, 64)
    assert 0.0 <= float(batch["image"].min()) and float(batch["image"].max()) <= 1.0
    assert set(batch["label"].unique().tolist()) == {0.0, 1.0}
    assert batch["scale"].tolist() == [64, 64, 48, 48, 96, 96]
    image, label = _expected(root, manifest, positions)
    np.testing.assert_allclose(batch["image"].numpy(), image.numpy(), atol=1e-6)
    assert torch.equal(batch["label"], label)
    decoded, _ = decode_batch(batch, "cpu")
    assert torch.equal(decoded, batch["image"])  # decoding a float batch changes nothing


def test_stored_only_batch_stays_stored_and_decodes_to_the_same_values(multi_scale):
    root, manifest = multi_scale
    positions = manifest.index[manifest["scale"] == 64].tolist()[:4]
    ds = PatchDataset(root, manifest, train_size=64, stored=True)
    batch = collate_patches(ds.__getitems__(positions))
    stored_dtype = torch.uint8 if PatchStore(root).attrs.image_dtype == "uint8" else torch.float16
    assert batch["image"].dtype == stored_dtype and batch["label"].dtype == torch.uint8
    image, label = decode_batch(batch, "cpu")
    expected_image, expected_label = _expected(root, manifest, positions)
    assert torch.equal(image, expected_image) and torch.equal(label, expected_label)


def test_collate_unifies_items_given_one_by_one(multi_scale):
    """collate_patches alone (items from __getitem__, stored 64^3 first) gives the same uniform batch."""
    root, manifest = multi_scale
    positions = _mixed_positions(manifest)
    ds = PatchDataset(root, manifest, train_size=64, stored=True)
    items = [ds[p] for p in positions]
    assert items[0]["image"].dtype != torch.float32 and items[2]["image"].dtype == torch.float32
    batch = collate_patches(items)
    image, label = _expected(root, manifest, positions)
    assert batch["image"].dtype == torch.float32
    np.testing.assert_allclose(batch["image"].numpy(), image.numpy(), atol=1e-6)
    assert torch.equal(batch["label"], label)


@pytest.mark.parametrize("workers", [0, 1])
def test_mixed_scales_resized_on_the_device_equal_the_workers_resizing(multi_scale, workers):
    """With resize_on_device, a mixed batch crosses as stored patches grouped by scale; decode_batch resizes
    them where the batch lands and gives back the batch the workers would have made, in its order."""
    root, manifest = multi_scale
    positions = _mixed_positions(manifest)
    positions = positions[3:] + positions[:3]  # 48, 96, 96, 64, 64, 48: the groups interleave
    ds = PatchDataset(root, manifest, train_size=64, stored=True, resize_on_device=True)
    loader = make_loader(ds, sampler=positions, batch_size=len(positions), num_workers=workers,
                         persistent_workers=False)
    batch = next(iter(loader))
    stored_dtype = torch.uint8 if PatchStore(root).attrs.image_dtype == "uint8" else torch.float16
    assert [tuple(g["image"].shape[2:]) for g in batch["groups"]] == [(48,) * 3, (64,) * 3, (96,) * 3]
    assert all(g["image"].dtype == stored_dtype and g["label"].dtype == torch.uint8 for g in batch["groups"])
    assert batch["scale"].tolist() == [48, 96, 96, 64, 64, 48] and int(batch["size"]) == 64
    image, label = decode_batch(batch, "cpu")
    expected_image, expected_label = _expected(root, manifest, positions)
    np.testing.assert_allclose(image.numpy(), expected_image.numpy(), atol=1e-6)
    assert torch.equal(label, expected_label)
    one_scale = collate_patches(ds.__getitems__(positions[3:5]))  # all 64^3 = train_size: a plain stored batch
    assert "groups" not in one_scale and one_scale["image"].dtype == stored_dtype


def test_batched_label_resize_keeps_every_item_foreground():
    """resize_labels treats items one by one: a speck too small for 0.5 keeps its strongest voxels."""
    from luna_train.data.dataset import resize_labels, resize_linear

    def one_by_one(mask, size):  # the item-wise rule
        soft = resize_linear(mask, size)
        hard = soft >= 0.5
        if not bool(hard.any()) and bool(mask.any()):
            hard = soft >= soft.max() * (1 - 1e-6)
        return hard.float()

    masks = torch.zeros(3, 1, 24, 24, 24)
    masks[0, 0, 12, 12, 12] = 1  # one voxel: lost at 0.5 when shrunk
    masks[1, 0, 8:16, 8:16, 8:16] = 1
    out = resize_labels(masks, 10)
    for b in range(3):
        assert torch.equal(out[b], one_by_one(masks[b], 10))
    assert out[0].sum() >= 1 and out[1].sum() > 0 and out[2].sum() == 0


@pytest.mark.parametrize("workers", [0, 1])
def test_one_scale_stored_batch_is_read_straight_into_its_arrays(multi_scale, workers):
    """Stored patches of one scale are decoded into the batch's arrays (no stacking): the batch equals the
    patches read one by one, empty masks (not stored at all) included, in the main process and in a worker."""
    from luna_train.data.dataset import BatchItems

    root, manifest = multi_scale
    positions = manifest.index[manifest["scale"] == 48].tolist()[::-1]
    ds = PatchDataset(root, manifest, train_size=48, stored=True)
    singles = [ds[p] for p in positions]
    assert any(not item["label"].any() for item in singles) and any(item["label"].any() for item in singles)
    items = ds.__getitems__(positions)
    assert isinstance(items, BatchItems) and len(items) == len(positions)
    for got, single in zip(items, singles):  # the items are the batch's rows
        assert got["position"] == single["position"] and got["scale"] == 48
        assert torch.equal(got["image"], single["image"]) and torch.equal(got["label"], single["label"])
    loader = make_loader(ds, sampler=positions, batch_size=len(positions), num_workers=workers,
                         persistent_workers=False)
    batch = next(iter(loader))
    assert batch["image"].dtype == singles[0]["image"].dtype and batch["label"].dtype == torch.uint8
    assert torch.equal(batch["image"], torch.stack([s["image"] for s in singles]))
    assert torch.equal(batch["label"], torch.stack([s["label"] for s in singles]))
    assert batch["position"].tolist() == positions and batch["scale"].tolist() == [48] * len(positions)
