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
    """(B, 3) first voxels (z, y, x) of ``size``^3 windows of the (B, C, S, S, S) ``label`` batch, drawn from
    ``generator`` (whose device the draws use)."""
    n, edge = label.shape[0], label.shape[-1]
    dev = generator.device
    item, flat = (label > 0.5).flatten(1).to(dev).nonzero(as_tuple=True)  # foreground voxels, item by item
    count = torch.bincount(item, minlength=n)
    has = count > 0
    # one of each item's foreground voxels, uniformly: its rank among them, then its position in `flat`
    rank = torch.minimum((torch.rand(n, generator=generator, device=dev) * count).long(), (count - 1).clamp(min=0))
    if len(flat):
        pick = flat[(torch.cumsum(count, 0) - count + rank).clamp(max=len(flat) - 1)] % edge ** 3
    else:
        pick = torch.zeros(n, dtype=torch.long, device=dev)
    voxel = torch.stack([pick // edge ** 2, pick // edge % edge, pick % edge], dim=1)
    lo = torch.where(has[:, None], (voxel - size + 1).clamp(min=0), torch.zeros_like(voxel))
    hi = torch.where(has[:, None], voxel.clamp(max=edge - size), torch.full_like(voxel, edge - size))
    u = torch.rand((n, 3), generator=generator, device=dev)
    return lo + torch.minimum((u * (hi - lo + 1)).long(), hi - lo)


def crop_batch(image: torch.Tensor, label: torch.Tensor, size: int | None,
               generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The same ``size``^3 window (:func:`crop_starts`) of each item's image and label; no-op for None or >= S."""
    if not size or size >= image.shape[-1]:
        return image, label
    starts = crop_starts(label, size, generator).tolist()
    windows = [(Ellipsis, *(slice(a, a + size) for a in start)) for start in starts]
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
