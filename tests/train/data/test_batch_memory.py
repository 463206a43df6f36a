"""Batch arrays: recycled in the reading process only once nothing refers to them; shared memory in workers."""

from __future__ import annotations

import pickle

import numpy as np
import torch

from luna_prep.format.reader import PatchStore
from luna_train.data.batch_memory import BatchMemory, shared_tensor
from luna_train.data.dataset import PatchDataset, collate_patches
from luna_train.data.loader import make_loader

from conftest import write_tiny_store

SHAPE = (4, 1, 8, 8, 8)


def test_an_array_comes_back_only_after_every_view_of_it_is_gone():
    memory = BatchMemory(keep=2)
    first = memory.tensor(SHAPE, np.uint8)
    view = first[1:, 0]  # a consumer keeping a slice still holds the memory
    address = first.data_ptr()
    del first
    second = memory.tensor(SHAPE, np.uint8)
    assert second.data_ptr() != address
    del view
    third = memory.tensor(SHAPE, np.uint8)
    assert third.data_ptr() == address  # recycled once free
    fourth = memory.tensor(SHAPE, np.uint8)  # both kept arrays in use: a fresh one, not kept
    assert len({t.data_ptr() for t in (second, third, fourth)}) == 3
    assert memory.tensor(SHAPE, np.float16).dtype == torch.float16 and len(memory._slots) == 2


def test_a_free_array_of_another_shape_makes_room():
    memory = BatchMemory(keep=1)
    small = memory.tensor(SHAPE, np.uint8)
    del small
    big = memory.tensor((2, 1, 16, 16, 16), np.uint8)
    assert big.shape == (2, 1, 16, 16, 16) and memory._slots[0][0].shape == big.shape


def test_a_pickled_memory_starts_empty():
    memory = BatchMemory(keep=3)
    kept = memory.tensor(SHAPE, np.uint8)
    copy = pickle.loads(pickle.dumps(memory))
    assert copy.keep == 3 and copy._slots == [] and kept.shape == SHAPE


def test_shared_tensor_is_allocated_in_shared_memory():
    t = shared_tensor(SHAPE, torch.float16)
    assert t.is_shared() and t.shape == SHAPE and t.dtype == torch.float16 and t.is_contiguous()


def test_batches_read_one_after_another_keep_their_values_while_held(tmp_path):
    """A training loop holding the previous batch while the next is read: neither is overwritten; once
    both are dropped their memory serves the following batches."""
    root = write_tiny_store(tmp_path / "s.zarr", n_scans=2, samples_per_scan=4)
    manifest = PatchStore(root).manifest
    rows = manifest[manifest["scale"] == 16].reset_index(drop=True)
    ds = PatchDataset(root, rows, train_size=16, stored=True)
    order = [list(range(0, 4)), list(range(4, 8)), list(range(0, 4))[::-1]]
    expected = [torch.stack([ds[p]["image"] for p in batch]) for batch in order]
    assert not torch.equal(expected[0], expected[1])
    held = []
    for batch_positions in order:
        held.append(collate_patches(ds.__getitems__(batch_positions)))
        for got, exp in zip(held, expected):
            assert torch.equal(got["image"], exp)
    pointers = {b["image"].data_ptr() for b in held}
    held.clear()
    again = [collate_patches(ds.__getitems__(p))["image"].data_ptr() for p in order[:1]]
    assert again[0] in pointers


def test_worker_batches_arrive_through_shared_memory(tmp_path):
    root = write_tiny_store(tmp_path / "s.zarr", n_scans=1, samples_per_scan=4)
    manifest = PatchStore(root).manifest
    rows = manifest[manifest["scale"] == 16].reset_index(drop=True)
    ds = PatchDataset(root, rows, train_size=16, stored=True)
    loader = make_loader(ds, sampler=list(range(4)), batch_size=4, num_workers=1, persistent_workers=False)
    batch = next(iter(loader))
    assert batch["image"].is_shared()
    assert torch.equal(batch["image"], torch.stack([ds[p]["image"] for p in range(4)]))
