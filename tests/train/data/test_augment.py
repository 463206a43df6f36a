import numpy as np
import torch

from luna_train.data.augment import AugmentConfig, augment_batch_on_device, batch_generator, build_train_transform

NO_INTENSITY = AugmentConfig(intensity_prob=0.0)


def _sample(seed=0, size=12):
    image = torch.from_numpy(np.random.default_rng(seed).random((1, size, size, size), dtype=np.float32))
    return {"image": image, "label": (image > 0.6).float()}


def test_transform_keeps_image_and_label_aligned():
    transform = build_train_transform(NO_INTENSITY)
    base = _sample()
    changed = 0
    for seed in range(12):
        transform.set_random_state(seed=seed)
        out = transform({k: v.clone() for k, v in base.items()})
        image, label = torch.as_tensor(out["image"]), torch.as_tensor(out["label"])
        assert image.shape == (1, 12, 12, 12)
        assert torch.equal(label, (image > 0.6).float())
        assert torch.equal(image.flatten().sort().values, base["image"].flatten().sort().values)  # a permutation
        changed += not torch.equal(image, base["image"])
    assert changed >= 8


def test_transform_options():
    assert build_train_transform(AugmentConfig(enabled=False)) is None
    transform = build_train_transform(AugmentConfig(affine_prob=1.0, intensity_prob=1.0))
    transform.set_random_state(seed=1)
    out = transform(_sample())
    assert out["image"].shape == (1, 12, 12, 12)
    assert set(torch.as_tensor(out["label"]).unique().tolist()) <= {0.0, 1.0}


def test_batch_augmentation_aligned_and_reproducible():
    samples = [_sample(seed) for seed in range(8)]
    batch = {"image": torch.stack([s["image"] for s in samples]), "label": torch.stack([s["label"] for s in samples]),
             "position": torch.arange(8)}
    out = augment_batch_on_device(batch, NO_INTENSITY, batch_generator(0, 1, 2))
    assert out["image"].shape == batch["image"].shape and torch.equal(out["position"], batch["position"])
    assert torch.equal(out["label"], (out["image"] > 0.6).float())
    changed = sum(not torch.equal(out["image"][b], batch["image"][b]) for b in range(8))
    assert changed >= 5
    again = augment_batch_on_device(batch, NO_INTENSITY, batch_generator(0, 1, 2))
    assert torch.equal(again["image"], out["image"])
    other = augment_batch_on_device(batch, NO_INTENSITY, batch_generator(0, 1, 3))
    assert not torch.equal(other["image"], out["image"])
    jitter = augment_batch_on_device(batch, AugmentConfig(intensity_prob=1.0), batch_generator(0, 1, 2))
    assert torch.equal(jitter["label"], out["label"])  # same geometry; intensity touches the image only
    assert (jitter["image"] - out["image"]).abs().max() <= 0.05 * 1.05 + 0.05 * 1.05 + 1e-6
    assert not torch.equal(jitter["image"], out["image"])
    assert augment_batch_on_device(batch, AugmentConfig(enabled=False), batch_generator(0, 1, 2)) is batch


def test_random_crop_is_one_window_of_image_and_label():
    size, crop = 12, 8
    grid = torch.arange(size ** 3, dtype=torch.float32).reshape(1, 1, size, size, size)  # voxel value = its index
    batch = {"image": grid.repeat(6, 1, 1, 1, 1), "label": grid.repeat(6, 1, 1, 1, 1) + 0.5}
    cfg = AugmentConfig(flip_prob=0.0, rot90_prob=0.0, intensity_prob=0.0, crop_size=crop)
    out = augment_batch_on_device(batch, cfg, batch_generator(0, 0, 0))
    assert out["image"].shape == out["label"].shape == (6, 1, crop, crop, crop)
    assert torch.equal(out["label"], out["image"] + 0.5)  # the same window of both
    corners = set()
    for b in range(6):
        first = int(out["image"][b, 0, 0, 0, 0])
        z, y, x = first // size ** 2, first // size % size, first % size
        assert max(z, y, x) <= size - crop
        assert torch.equal(out["image"][b, 0], grid[0, 0, z:z + crop, y:y + crop, x:x + crop])
        corners.add((z, y, x))
    assert len(corners) >= 3  # windows differ between items
    again = augment_batch_on_device(batch, cfg, batch_generator(0, 0, 0))
    assert torch.equal(again["image"], out["image"])
    # without a crop the other draws are unchanged: the crop's offsets are drawn last
    plain = augment_batch_on_device(batch, AugmentConfig(), batch_generator(0, 1, 2))
    full = augment_batch_on_device(batch, AugmentConfig(crop_size=size), batch_generator(0, 1, 2))
    assert torch.equal(plain["image"], full["image"])


def test_transform_crop():
    transform = build_train_transform(AugmentConfig(crop_size=8, intensity_prob=0.0))
    transform.set_random_state(seed=2)
    out = transform(_sample())
    image, label = torch.as_tensor(out["image"]), torch.as_tensor(out["label"])
    assert image.shape == label.shape == (1, 8, 8, 8)
    assert torch.equal(label, (image > 0.6).float())


def test_whole_batch_permutation_equals_item_by_item():
    """The GPU path (whole-batch flips / quarter turns kept per item) moves every voxel as the per-item path."""
    from luna_train.data.augment import permute_batch, permute_items

    size = 6
    grid = torch.arange(size ** 3, dtype=torch.float32).reshape(1, 1, size, size, size)
    image = grid.repeat(16, 1, 1, 1, 1) + torch.arange(16).view(16, 1, 1, 1, 1) * 1000.0
    label = image + 0.5
    g = batch_generator(3, 0, 0)
    flips, rots = torch.rand((16, 3), generator=g) < 0.5, torch.rand((16, 3), generator=g) < 0.5
    ks = torch.randint(1, 4, (16, 3), generator=g)
    want_x, want_y = permute_items(image, label, flips, rots, ks)
    got_x, got_y = permute_batch(image, label, flips, rots, ks)
    assert torch.equal(got_x, want_x) and torch.equal(got_y, want_y)
    assert sum(not torch.equal(want_x[b], image[b]) for b in range(16)) >= 10  # the draws did permute


def _corner_blob_batch(n=64, size=12):
    """Items with one foreground voxel near a corner (even items) and items without foreground (odd ones)."""
    image = torch.rand((n, 1, size, size, size), generator=torch.Generator().manual_seed(0))
    label = torch.zeros_like(image)
    label[0::2, 0, 1, 10, 2] = 1.0
    return {"image": image, "label": label}


def test_a_crop_of_a_foreground_patch_holds_its_foreground_anywhere_in_the_window():
    """The sampler's fg_fraction survives the crop: every foreground item keeps its nodule voxel, at a place
    in the window drawn uniformly (all the windows that hold it occur); background items crop uniformly."""
    from luna_train.data.crop import crop_starts

    batch = _corner_blob_batch()
    cfg = AugmentConfig(flip_prob=0.0, rot90_prob=0.0, intensity_prob=0.0, crop_size=8)
    starts_fg, starts_bg = set(), set()
    for step in range(8):
        out = augment_batch_on_device(batch, cfg, batch_generator(0, 0, step))
        assert torch.equal(out["label"][0::2].flatten(1).sum(1), torch.ones(32))  # every fg item keeps its voxel
        starts = crop_starts(batch["label"], 8, batch_generator(0, 0, step)).tolist()
        starts_fg |= {tuple(s) for s in starts[0::2]}
        starts_bg |= {tuple(s) for s in starts[1::2]}
    # the voxel (1, 10, 2) is held by windows starting at z in 0..1, y in 3..4, x in 0..2: 2 * 2 * 3 of them
    assert starts_fg == {(z, y, x) for z in (0, 1) for y in (3, 4) for x in (0, 1, 2)}
    assert len(starts_bg) > 60 and all(max(s) <= 4 for s in starts_bg)  # 5^3 = 125 windows, uniformly


def test_the_monai_crop_keeps_foreground_too_and_follows_the_random_state():
    batch = _corner_blob_batch(n=2)
    transform = build_train_transform(AugmentConfig(crop_size=8, intensity_prob=0.0))
    kept = []
    for seed in range(40):
        transform.set_random_state(seed=seed)
        out = transform({"image": batch["image"][0].clone(), "label": batch["label"][0].clone()})
        assert tuple(out["image"].shape) == tuple(out["label"].shape) == (1, 8, 8, 8)
        kept.append(float(torch.as_tensor(out["label"]).sum()))
    assert kept == [1.0] * 40
    transform.set_random_state(seed=3)
    a = transform({"image": batch["image"][1].clone(), "label": batch["label"][1].clone()})
    transform.set_random_state(seed=3)
    b = transform({"image": batch["image"][1].clone(), "label": batch["label"][1].clone()})
    assert torch.equal(torch.as_tensor(a["image"]), torch.as_tensor(b["image"]))


def test_the_gpu_crops_gather_the_same_windows_as_the_cpu_slices():
    from luna_train.data.crop import crop_starts, gather_windows

    batch = _corner_blob_batch(n=6)
    batch["image"] = torch.cat([batch["image"], batch["image"] * 2], dim=1)  # two channels
    starts = crop_starts(batch["label"], 8, batch_generator(0, 0, 1))
    gathered = gather_windows(batch["image"], starts, 8)
    for b, (z, y, x) in enumerate(starts.tolist()):
        assert torch.equal(gathered[b], batch["image"][b, :, z:z + 8, y:y + 8, x:x + 8])


def test_the_gpus_running_count_picks_the_same_foreground_voxel_as_nonzero():
    from luna_train.data.crop import foreground_pick

    g = torch.Generator().manual_seed(0)
    fg = torch.rand((12, 5000), generator=g) > 0.995
    fg[3] = False  # a row without foreground
    r = torch.rand(12, generator=g)
    has_a, pick_a = foreground_pick(fg, r, running_count=True)
    has_b, pick_b = foreground_pick(fg, r, running_count=False)
    assert torch.equal(has_a, has_b) and not has_a[3] and has_a.sum() == 11
    assert torch.equal(pick_a[has_a], pick_b[has_b]) and bool(fg[has_a.nonzero()[:, 0], pick_a[has_a]].all())


def test_a_crop_applies_with_augmentation_off():
    """augment.enabled: false dropped augment.crop_size too: a 'no augmentation' run trained on whole patches."""
    size, crop = 12, 8
    grid = torch.arange(size ** 3, dtype=torch.float32).reshape(1, 1, size, size, size)
    batch = {"image": grid.repeat(4, 1, 1, 1, 1), "label": grid.repeat(4, 1, 1, 1, 1) + 0.5}
    cfg = AugmentConfig(enabled=False, crop_size=crop)
    out = augment_batch_on_device(batch, cfg, batch_generator(0, 0, 0))
    assert out["image"].shape == (4, 1, crop, crop, crop) and torch.equal(out["label"], out["image"] + 0.5)
    item = build_train_transform(cfg)({"image": grid[0], "label": grid[0] + 0.5})
    assert tuple(item["image"].shape) == (1, crop, crop, crop) and torch.equal(item["label"], item["image"] + 0.5)
    first = int(item["image"][0, 0, 0, 0])  # a window, untouched otherwise: no flip, rotation or intensity change
    z, y, x = first // size ** 2, first // size % size, first % size
    assert torch.equal(torch.as_tensor(item["image"][0]), grid[0, 0, z:z + crop, y:y + crop, x:x + crop])
