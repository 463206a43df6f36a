"""PatchDataset: manifest rows of a luna-patches store as training samples (image, label tensors)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from luna_prep.format.reader import PatchStore
from luna_prep.format.spec import UINT8_FULL_SCALE, decode_image
from luna_prep.sharing.cards import open_dataset
from luna_train.data.batch_memory import BatchMemory, shared_tensor


def _axis_coords(n_in: int, n_out: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Linear-interpolation taps (i0, i1, w1) mapping ``n_out`` samples onto ``n_in``.

    The field of view is kept (spacing scales by n_in / n_out) and the format's centre voxel
    ``n//2`` maps exactly onto the centre voxel, so the patch centre keeps its world position.
    """
    t = torch.arange(n_out, dtype=torch.float32, device=device)
    x = (n_in // 2) + (t - n_out // 2) * (n_in / n_out)
    x = x.clamp(0, n_in - 1)
    i0 = x.floor().long().clamp(max=n_in - 1)
    i1 = (i0 + 1).clamp(max=n_in - 1)
    return i0, i1, x - i0.float()


def resize_linear(volume: torch.Tensor, size: int | tuple[int, int, int]) -> torch.Tensor:
    """Separable trilinear resize of the last three axes of ``volume`` to ``size`` (one edge, or one per axis),
    centre-preserving. Shrinking by a whole factor samples voxels (64 -> 32 takes every second one) rather
    than averaging them: training patches and ``detect``'s whole volumes both go through here, so the model
    sees the same texture in both."""
    sizes = (size,) * 3 if isinstance(size, int) else tuple(int(v) for v in size)
    out = volume
    for axis, n_out in zip((-3, -2, -1), sizes):
        n_in = out.shape[axis]
        if n_in == n_out:
            continue
        i0, i1, w = _axis_coords(n_in, n_out, out.device)
        shape = [1] * out.dim()
        shape[axis] = n_out
        w = w.view(shape)
        out = out.index_select(axis, i0) * (1 - w) + out.index_select(axis, i1) * w
    return out.contiguous()


def resize_label(mask: torch.Tensor, size: int) -> torch.Tensor:
    """Resize a 0/1 mask: trilinear on the same grid as the image, threshold 0.5, never emptied.

    Thresholding the interpolated mask puts the boundary where the partial-volume value crosses
    one half, so volume and centroid are kept to sub-voxel accuracy and the label sits on
    exactly the image's sampling grid. Nearest neighbour at ratios like 48->64 or 96->64
    duplicates or drops whole slices irregularly, which moves a 3-voxel nodule's edge by a voxel.
    A nodule too small to reach 0.5 anywhere keeps its strongest voxels (a foreground patch
    stays foreground, so the sampler's class balance holds).
    """
    return resize_labels(mask[None], size)[0]


def resize_labels(masks: torch.Tensor, size: int) -> torch.Tensor:
    """:func:`resize_label` of each item of a batch ``(B, ...)`` at once, without a host round trip."""
    soft = resize_linear(masks, size)
    hard = soft >= 0.5
    view = (-1,) + (1,) * (soft.dim() - 1)
    lost = (~hard.flatten(1).any(1) & (masks.flatten(1) > 0).any(1)).view(view)
    peak = soft.flatten(1).amax(1).view(view)
    return torch.where(lost, soft >= peak * (1 - 1e-6), hard).to(torch.float32)


class PatchDataset(torch.utils.data.Dataset):
    """Patches of a store, one per manifest row, as ``{"image", "label", "position", "scale"}``.

    ``image`` is float32 (1, S, S, S) in [0, 1] (augmentation may shift it slightly outside), ``label``
    float32 (1, S, S, S) 0/1, with S = ``train_size`` (patches of other scales are resized) or the
    native scale when ``train_size`` is None (then all rows must share one scale).

    With ``stored=True``, a patch that needs neither resizing nor a per-item transform comes as
    stored (``image`` uint8 or float16, ``label`` uint8): a quarter of the bytes through workers,
    shared memory and the host-to-device copy. :func:`decode_batch` turns a batch into float32 on
    the device; it is a no-op on float batches, so the training loop always calls it. A batch that
    mixes stored patches with resized ones is decoded whole to float32 (:func:`uniform_items`).

    With ``resize_on_device=True`` as well (training on a GPU), patches of other scales also come as
    stored, at their native size, and :func:`collate_patches` groups a batch by scale: the resizing to
    ``train_size`` then happens in :func:`decode_batch`, on the device, instead of in the workers.

    Items are addressed by ``position`` (0..len-1, the row's place in ``rows``) or by
    ``(position, aug_seed)``: the transform's random state is then seeded from ``aug_seed``, so
    the same pair gives the same sample in any process. The store is opened lazily in the process
    that reads, and dropped on pickling (safe with spawn/forkserver workers).
    """

    def __init__(self, store: str | Path, rows: pd.DataFrame, train_size: int | None = 64,
                 transform: Callable[[dict], dict] | None = None, stored: bool = False,
                 resize_on_device: bool = False):
        self.store = str(store)
        self.stored = bool(stored)
        self.resize_on_device = bool(resize_on_device)
        self.scales = rows["scale"].to_numpy(dtype=np.int64).copy()
        self.indices = rows["index"].to_numpy(dtype=np.int64).copy()
        self.train_size = None if train_size is None else int(train_size)
        if self.train_size is None and len(np.unique(self.scales)) > 1:
            raise ValueError(f"rows mix scales {sorted(set(self.scales.tolist()))}; set train_size to resize them")
        self.transform = transform
        self._memory = BatchMemory()  # the arrays stored batches are decoded into
        self._reader: PatchStore | None = None
        self._pid: int | None = None

    def __len__(self) -> int:
        return len(self.indices)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.update(_reader=None, _pid=None)
        return state

    def _open(self) -> PatchStore:
        if self._reader is None or self._pid != os.getpid():
            self._reader, self._pid = open_dataset(self.store), os.getpid()  # a card: pinned in every process
        return self._reader

    def read(self, position: int) -> tuple[np.ndarray, np.ndarray]:
        """Native (image float32 in [0, 1], mask uint8) of one row; reads only that patch's chunk."""
        return self._open().read_patch(int(self.scales[position]), int(self.indices[position]))

    def __getitems__(self, items: list) -> list[dict[str, Any]]:
        """A whole batch: stored patches come from one batch of ranged reads (concurrent over
        HTTP or object storage), everything else item by item. The DataLoader calls this.

        Stored patches of one scale are decoded straight into the batch's arrays (:class:`BatchItems`,
        which :func:`collate_patches` passes through without stacking)."""
        positions = [int(it[0]) if isinstance(it, (tuple, list)) else int(it) for it in items]
        native = [self.train_size in (None, int(self.scales[p])) for p in positions]
        fast = self.stored and self.transform is None and (self.resize_on_device or all(native))
        if not fast:
            return uniform_items([self[it] for it in items])
        scales = {int(self.scales[p]) for p in positions}
        if all(native) and len(scales) == 1:
            return self._read_batch(positions, scales.pop())
        resize = {} if all(native) else {"size": self.train_size}  # collate_patches groups these by scale
        reader = self._open()
        out: list[dict[str, Any] | None] = [None] * len(positions)
        for scale in sorted({int(self.scales[p]) for p in positions}):
            ks = [k for k, p in enumerate(positions) if int(self.scales[p]) == scale]
            images, masks = reader.read_stored_many(scale, [int(self.indices[positions[k]]) for k in ks])
            for k, image, mask in zip(ks, images, masks):
                out[k] = {"image": torch.from_numpy(image)[None], "label": torch.from_numpy(mask)[None],
                          "position": positions[k], "scale": scale, **resize}
        return out

    def _read_batch(self, positions: list[int], scale: int) -> BatchItems:
        """Stored patches of one scale, decoded straight into the batch's arrays (in shared memory inside
        a DataLoader worker, so the batch crosses to the main process without a copy)."""
        reader = self._open()
        image, label = (self._memory.tensor((len(positions), 1, scale, scale, scale), dtype)
                        for dtype in reader.stored_dtypes(scale))
        reader.read_stored_many(scale, [int(self.indices[p]) for p in positions],
                                out=(image.numpy()[:, 0], label.numpy()[:, 0]))
        return BatchItems({"image": image, "label": label, "position": torch.as_tensor(positions),
                           "scale": torch.full((len(positions),), scale, dtype=torch.int64)})

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, Any]:
        if isinstance(item, (tuple, list)):
            position, aug_seed = int(item[0]), int(item[1])
        else:
            position, aug_seed = int(item), None
        if not 0 <= position < len(self):
            raise IndexError(f"position {position} out of range for {len(self)} rows")
        scale = int(self.scales[position])
        if self.stored and self.transform is None and self.train_size in (None, scale):
            image, mask = self._open().read_stored(scale, int(self.indices[position]))
            return {"image": torch.from_numpy(image)[None], "label": torch.from_numpy(mask)[None],
                    "position": position, "scale": scale}
        image, mask = self.read(position)
        img = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
        lbl = torch.from_numpy(mask.astype(np.float32))[None]
        if self.train_size is not None and img.shape[-1] != self.train_size:
            img = resize_linear(img, self.train_size)
            lbl = resize_label(lbl, self.train_size)
        sample: dict[str, Any] = {"image": img, "label": lbl}
        if self.transform is not None:
            if aug_seed is not None and hasattr(self.transform, "set_random_state"):
                self.transform.set_random_state(seed=aug_seed % (2**32))
            sample = self.transform(sample)
            sample = {k: _plain(v) for k, v in sample.items()}
        sample["position"] = position
        sample["scale"] = int(self.scales[position])
        return sample


class BatchItems(list):
    """The items of a batch that was read straight into its arrays: ``batch`` is their collated form
    (which :func:`collate_patches` returns as it is); the items are views of it."""

    def __init__(self, batch: dict[str, torch.Tensor]):
        super().__init__({"image": image, "label": label, "position": position, "scale": scale} for image, label,
                         position, scale in zip(batch["image"], batch["label"], batch["position"].tolist(),
                                                batch["scale"].tolist()))
        self.batch = batch


def _decoded(item: dict[str, Any]) -> dict[str, Any]:
    """An item with its stored image (uint8/float16) decoded to float32 in [0, 1] and its label float32."""
    out = dict(item)
    image, label = item.get("image"), item.get("label")
    if isinstance(image, torch.Tensor) and image.dtype != torch.float32:
        out["image"] = torch.from_numpy(decode_image(image.numpy(), str(image.numpy().dtype)))
    if isinstance(label, torch.Tensor) and label.dtype != torch.float32:
        out["label"] = label.to(torch.float32)
    return out


def uniform_items(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Items that can form one batch: one dtype and one value range per key.

    Items as stored (uint8 0..255 or float16 images, uint8 labels) stay so when every item of the
    batch is stored the same way; as soon as one item is float32 (resized, transformed) or the
    stored dtypes differ, every item is decoded to float32 images in [0, 1] and float32 labels.
    """
    keys = [k for k, v in items[0].items() if isinstance(v, torch.Tensor)] if items else []
    if all(len({item[k].dtype for item in items}) == 1 for k in keys):
        return items
    return [_decoded(item) for item in items]


def collate_patches(items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack items into a batch with numpy (several times faster than torch.stack on small CPUs),
    straight into shared memory inside a DataLoader worker, so the batch crosses without a copy.

    Items of mixed representations (stored next to resized patches) are first made uniform by
    :func:`uniform_items`, so a batch has one dtype and value range whatever scales it holds."""
    if isinstance(items, BatchItems):
        return items.batch
    if items and "size" in items[0]:
        return grouped_batch(items)
    items = uniform_items(items)
    in_worker = torch.utils.data.get_worker_info() is not None
    batch: dict[str, torch.Tensor] = {}
    for key, first in items[0].items():
        if not isinstance(first, torch.Tensor):
            batch[key] = torch.as_tensor([item[key] for item in items])
            continue
        shape = (len(items), *first.shape)
        out = shared_tensor(shape, first.dtype) if in_worker else torch.empty(shape, dtype=first.dtype)
        np.stack([item[key].numpy() for item in items], out=out.numpy())
        batch[key] = out
    return batch


def grouped_batch(items: list[dict[str, Any]]) -> dict[str, Any]:
    """A batch of stored patches of several sizes, to be resized on the device (:func:`decode_batch`):
    ``groups`` (one ``{"image", "label"}`` batch per patch size), ``order`` (item i is row ``order[i]`` of
    the groups concatenated), ``size`` (the edge to resize to), and ``position`` / ``scale`` per item."""
    shapes = sorted({tuple(item["image"].shape) for item in items})
    groups, order = [], [0] * len(items)
    for shape in shapes:
        members = [i for i, item in enumerate(items) if tuple(item["image"].shape) == shape]
        for j, i in enumerate(members):
            order[i] = sum(len(g["image"]) for g in groups) + j
        groups.append(collate_patches([{k: items[i][k] for k in ("image", "label")} for i in members]))
    return {"groups": groups, "order": torch.as_tensor(order), "size": torch.as_tensor(int(items[0]["size"])),
            "position": torch.as_tensor([item["position"] for item in items]),
            "scale": torch.as_tensor([item["scale"] for item in items])}


def _decode(image: torch.Tensor, label: torch.Tensor, device) -> tuple[torch.Tensor, torch.Tensor]:
    image = image.to(device, non_blocking=True)
    label = label.to(device, non_blocking=True)
    if image.dtype == torch.uint8:
        image = image.float().mul_(1.0 / UINT8_FULL_SCALE)
    elif image.dtype != torch.float32:
        image = image.float()
    return image, label.float() if label.dtype != torch.float32 else label


def decode_batch(batch: dict, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """(image float32 in [0, 1], label float32) of a batch, moved to ``device`` first (stored dtypes
    cross the bus at their small size and are converted there; a :func:`grouped_batch` is resized
    there too, as :class:`PatchDataset` resizes items, and put back in the batch's order)."""
    if "groups" not in batch:
        return _decode(batch["image"], batch["label"], device)
    size = int(batch["size"])
    images, labels = [], []
    for group in batch["groups"]:
        image, label = _decode(group["image"], group["label"], device)
        if image.shape[-1] != size:
            image, label = resize_linear(image, size), resize_labels(label, size)
        images.append(image)
        labels.append(label)
    order = batch["order"].to(images[0].device, non_blocking=True)
    return torch.cat(images).index_select(0, order), torch.cat(labels).index_select(0, order)


def _plain(value: Any) -> Any:
    """A MONAI MetaTensor / numpy array as a plain contiguous float32 torch tensor."""
    if isinstance(value, torch.Tensor):
        value = value.as_tensor() if hasattr(value, "as_tensor") else value
        return value.to(torch.float32).contiguous()
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))
    return value
