"""Random training crops (``augment.crop_size``) that keep a foreground patch foreground.

A window drawn uniformly from a 48^3 patch often misses a nodule that sits off-centre (a candidate patch
touching one): in the demo's draws only 56% of such crops still held nodule voxels, and the share of
foreground crops fell to 0.41 where the sampler drew 0.49. Here an item with foreground gets a window drawn
uniformly among those that hold one of its foreground voxels, itself drawn at random (the nodule lands
anywhere in the crop, not at its centre as with MONAI's ``RandCropByPosNegLabeld``); an item without
foreground gets a uniform window. The sampler's ``fg_fraction`` therefore holds after the crop.
"""

from __future__ import annotations

import torch
from monai.transforms import MapTransform, Randomizable


def crop_starts(label: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """(B, 3) first voxels (z, y, x) of ``size``^3 windows of the (B, C, S, S, S) ``label`` batch, on the label's
    device, from random numbers drawn on ``generator``'s. On a GPU nothing waits for the device: the foreground
    voxel is found by a running count, not by ``nonzero`` (which the CPU does 4x faster; the same voxel)."""
    n, edge = label.shape[0], label.shape[-1]
    dev = label.device
    r = torch.rand(n, generator=generator, device=generator.device).to(dev, non_blocking=True)
    u = torch.rand((n, 3), generator=generator, device=generator.device).to(dev, non_blocking=True)
    has, pick = foreground_pick((label > 0.5).flatten(1), r, running_count=label.is_cuda)
    pick = pick % edge ** 3
    voxel = torch.stack([pick // edge ** 2, pick // edge % edge, pick % edge], dim=1)
    lo = torch.where(has[:, None], (voxel - size + 1).clamp(min=0), torch.zeros_like(voxel))
    hi = torch.where(has[:, None], voxel.clamp(max=edge - size), torch.full_like(voxel, edge - size))
    return lo + torch.minimum((u * (hi - lo + 1)).long(), hi - lo)


def foreground_pick(fg: torch.Tensor, r: torch.Tensor, running_count: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Whether each row of ``fg`` (B, N) holds a foreground voxel, and the flat index of one of them: the one whose
    rank among the row's is ``floor(r * count)``. ``running_count``: found where the row's running count reaches it
    (no host sync), else through ``nonzero`` (faster on the CPU); the same voxel either way."""
    if running_count:
        count = fg.sum(dim=1)
    else:
        item, flat = fg.nonzero(as_tuple=True)  # item by item, in order
        count = torch.bincount(item, minlength=fg.shape[0])
    rank = torch.minimum((r * count).long(), (count - 1).clamp(min=0))
    if running_count:
        pick = torch.searchsorted(fg.cumsum(dim=1), (rank + 1)[:, None]).squeeze(1)
    elif len(flat):
        pick = flat[(torch.cumsum(count, 0) - count + rank).clamp(max=len(flat) - 1)]
    else:
        pick = torch.zeros_like(rank)
    return count > 0, pick


def gather_windows(x: torch.Tensor, starts: torch.Tensor, size: int) -> torch.Tensor:
    """The ``size``^3 window at ``starts[b]`` of each item of ``x`` (B, C, S, S, S), by indexing on its device
    (no starts read back to the host)."""
    steps = torch.arange(size, device=x.device)
    z, y, w = (starts[:, a:a + 1] + steps for a in range(3))
    items = torch.arange(x.shape[0], device=x.device)[:, None, None, None]
    out = x.permute(0, 2, 3, 4, 1)[items, z[:, :, None, None], y[:, None, :, None], w[:, None, None, :]]
    return out.permute(0, 4, 1, 2, 3).contiguous()


def crop_batch(image: torch.Tensor, label: torch.Tensor, size: int | None,
               generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The same ``size``^3 window (:func:`crop_starts`) of each item's image and label; no-op for None or >= S.
    On a GPU the windows are gathered there; on the CPU sliced (cheaper there, the same voxels)."""
    if not size or size >= image.shape[-1]:
        return image, label
    starts = crop_starts(label, size, generator)
    if image.is_cuda:
        return gather_windows(image, starts, size), gather_windows(label, starts, size)
    windows = [(Ellipsis, *(slice(a, a + size) for a in start)) for start in starts.tolist()]
    crop = lambda x: torch.stack([x[b][w] for b, w in enumerate(windows)])  # noqa: E731
    return crop(image), crop(label)


class RandForegroundCropd(Randomizable, MapTransform):
    """MONAI dictionary transform: the same ``size``^3 window of every key of one (C, S, S, S) sample, drawn as
    :func:`crop_starts` draws from this transform's random state (``Compose.set_random_state`` seeds it)."""

    def __init__(self, keys, size: int, label_key: str = "label"):
        MapTransform.__init__(self, keys)
        self.size, self.label_key = int(size), label_key

    def __call__(self, data):
        d = dict(data)
        label = d[self.label_key]
        label = label.as_tensor() if hasattr(label, "as_tensor") else torch.as_tensor(label)  # MONAI's MetaTensor
        if self.size >= label.shape[-1]:
            return d
        generator = torch.Generator().manual_seed(int(self.R.randint(0, 2 ** 31 - 1)))
        start = crop_starts(label[None], self.size, generator)[0].tolist()
        window = (Ellipsis, *(slice(a, a + self.size) for a in start))
        for key in self.key_iterator(d):
            d[key] = d[key][window]
        return d
