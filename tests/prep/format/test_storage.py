"""Shards written directly by luna-prep read back through zarr-python and through our reader."""

import numpy as np
import pytest
import zarr

from luna_prep.format.reader import PatchStore
from luna_prep.format.spec import IMAGE_ARRAY, MASK_ARRAY, StoreAttributes, array_path
from luna_prep.format.writer import StorageConfig, create_store, write_rows, write_shard


def _store(tmp_path, image_dtype="uint8"):
    cfg = StorageConfig(image_dtype=image_dtype, shard_patches=4)
    attrs = StoreAttributes(spacing_mm=1.0, hu_window=(-1000.0, 400.0), scales=(8,), image_dtype=image_dtype,
                            shard_patches=4, capacity=12, config_hash="x", software_version="t", build_config={})
    create_store(tmp_path / "s.zarr", attrs, cfg)
    return tmp_path / "s.zarr", cfg


@pytest.mark.parametrize("image_dtype", ["uint8", "float16"])
def test_direct_shards_match_what_zarr_reads(tmp_path, image_dtype):
    root, cfg = _store(tmp_path, image_dtype)
    rng = np.random.default_rng(0)
    images = rng.random((7, 8, 8, 8))
    images = (images * 255).astype(np.uint8) if image_dtype == "uint8" else images.astype(np.float16)
    masks = np.zeros((7, 8, 8, 8), np.uint8)
    masks[1, 2:4, 2:4, 2:4] = 1  # every other mask is empty: not stored
    write_rows(root, 8, 0, images[:4], masks[:4], cfg)
    write_rows(root, 8, 4, images[4:], masks[4:], cfg)  # a partial last shard (3 of 4 rows)
    z_img = zarr.open_group(str(root), mode="r")[array_path(8, IMAGE_ARRAY)]
    z_msk = zarr.open_group(str(root), mode="r")[array_path(8, MASK_ARRAY)]
    np.testing.assert_array_equal(z_img[:7], images)
    np.testing.assert_array_equal(z_msk[:7], masks)
    assert not z_img[7:].any()  # holes read as the fill value
    store = PatchStore(root)
    for i in range(7):
        img, msk = store.read_stored(8, i)
        np.testing.assert_array_equal(img, images[i])
        np.testing.assert_array_equal(msk, masks[i])
    # an all-empty shard is no file at all, as zarr writes it
    assert not (root / array_path(8, MASK_ARRAY) / "c" / "1").exists()


def test_a_write_must_stay_within_one_shard(tmp_path):
    root, cfg = _store(tmp_path)
    with pytest.raises(ValueError, match="not within one shard"):
        write_shard(root, array_path(8, IMAGE_ARRAY), 2, np.ones((2, 8, 8, 8), np.uint8), cfg)
    with pytest.raises(ValueError, match="not within one shard"):
        write_shard(root, array_path(8, IMAGE_ARRAY), 0, np.ones((5, 8, 8, 8), np.uint8), cfg)
