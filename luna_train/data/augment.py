"""Training augmentation: per-sample MONAI dictionary transforms (CPU workers) or whole batches on the device."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
import torch

from luna_train.config_fields import NonNegativeFloat, PositiveInt, Probability, Range

KEYS = ("image", "label")
PLANES = ((0, 1), (0, 2), (1, 2))  # spatial axis pairs of (z, y, x): patches are isotropic, so every plane is fair


@dataclass(frozen=True)
class AugmentConfig:
    """Augmentation settings. Probabilities are per spatial axis (flips) and per plane (rot90)."""

    enabled: bool = True
    flip_prob: Probability = 0.5
    rot90_prob: Probability = 0.5
    intensity_shift: NonNegativeFloat = 0.05
    intensity_scale: Annotated[float, Range(ge=0, lt=1)] = 0.05
    intensity_prob: Probability = 0.5
    affine_prob: Probability = 0.0
    # random crop of this edge from every training patch, at the patch's own resolution: trains on the evaluated
    # voxel size at the cost of a smaller patch; a patch with nodule voxels keeps some (data/crop.py); None = whole
    crop_size: PositiveInt | None = None


def build_train_transform(cfg: AugmentConfig):
    """A MONAI ``Compose`` on ``{"image", "label"}`` of (1, S, S, S) tensors, or None when disabled.

    Order: optional random crop to ``crop_size``, optional small affine (rotation +-10 degrees,
    scale +-10%; label nearest), flips on each axis, random 90-degree rotations in each of the three
    planes (patches are resampled to isotropic voxels and nodules have no preferred orientation, so
    the full cube symmetry group is valid), then intensity shift and scale on the image only. Flips
    and rotations are exact permutations of voxels, so image and label stay aligned voxel for voxel.
    """
    if not cfg.enabled and not cfg.crop_size:
        return None
    from monai.transforms import (
        Compose,
        RandAffined,
        RandFlipd,
        RandRotate90d,
        RandScaleIntensityd,
        RandShiftIntensityd,
    )

    keys = list(KEYS)
    ts: list[Any] = []
    if cfg.crop_size:
        from luna_train.data.crop import RandForegroundCropd

        ts.append(RandForegroundCropd(keys, int(cfg.crop_size)))
    if not cfg.enabled:  # no augmentation; the crop still applies: it is the training input's geometry
        return Compose(ts)
    if cfg.affine_prob > 0:
        ts.append(RandAffined(keys, prob=cfg.affine_prob, rotate_range=(math.pi / 18,) * 3, scale_range=(0.1,) * 3,
                              mode=("bilinear", "nearest"), padding_mode=("border", "zeros")))
    if cfg.flip_prob > 0:
        ts += [RandFlipd(keys, prob=cfg.flip_prob, spatial_axis=a) for a in range(3)]
    if cfg.rot90_prob > 0:
        ts += [RandRotate90d(keys, prob=cfg.rot90_prob, max_k=3, spatial_axes=p) for p in PLANES]
    if cfg.intensity_prob > 0 and cfg.intensity_shift > 0:
        ts.append(RandShiftIntensityd("image", offsets=cfg.intensity_shift, prob=cfg.intensity_prob))
    if cfg.intensity_prob > 0 and cfg.intensity_scale > 0:
        ts.append(RandScaleIntensityd("image", factors=cfg.intensity_scale, prob=cfg.intensity_prob))
    return Compose(ts)


def batch_generator(seed: int, epoch: int, step: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A generator seeded from (seed, epoch, step): reproducible, resumable batch augmentation."""
    state = np.random.SeedSequence([int(seed), int(epoch), int(step)]).generate_state(1, dtype=np.uint64)[0]
    g = torch.Generator(device=device)
    g.manual_seed(int(state) % (2**63))
    return g


def augment_batch_on_device(batch: dict, cfg: AugmentConfig, generator: torch.Generator) -> dict:
    """Flip / rot90 (and intensity-jitter) a whole batch ``(B, 1, S, S, S)`` where it lies.

    Same random choices as :func:`build_train_transform` without the affine (the crop, when
    ``crop_size`` is set, comes last and is drawn after the other choices), per sample from
    ``generator`` (on the batch's device or CPU; e.g. :func:`batch_generator`). The same voxel
    permutation is applied to image and label; intensity changes touch the image only.

    Prefer it on a GPU when data-loader CPU time is the bottleneck (few cores, large patches):
    build the dataset with ``transform=None``, move the batch to the GPU, then call this. Keep the
    per-sample MONAI transform on CPU-only runs or when ``affine_prob > 0``.
    """
    if not cfg.enabled and not cfg.crop_size:
        return batch
    img, lbl = batch["image"], batch["label"]
    if cfg.enabled:  # without augmentation the crop still applies: it is the training input's geometry
        img, lbl = _flip_rotate_shift(img, lbl, cfg, generator)
    if cfg.crop_size:
        from luna_train.data.crop import crop_batch

        img, lbl = crop_batch(img, lbl, cfg.crop_size, generator)
    out = dict(batch)
    out["image"], out["label"] = img, lbl
    return out


def _flip_rotate_shift(image: torch.Tensor, label: torch.Tensor, cfg: AugmentConfig,
                       generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The flips, quarter turns and intensity jitter of :func:`augment_batch_on_device`, drawn per item."""
    n = image.shape[0]
    dev = generator.device
    flips = torch.rand((n, 3), generator=generator, device=dev) < cfg.flip_prob
    rots = torch.rand((n, 3), generator=generator, device=dev) < cfg.rot90_prob
    ks = torch.randint(1, 4, (n, 3), generator=generator, device=dev)
    use_shift = torch.rand(n, generator=generator, device=dev) < cfg.intensity_prob
    use_scale = torch.rand(n, generator=generator, device=dev) < cfg.intensity_prob
    shift = (torch.rand(n, generator=generator, device=dev) * 2 - 1) * cfg.intensity_shift * use_shift
    scale = 1 + (torch.rand(n, generator=generator, device=dev) * 2 - 1) * cfg.intensity_scale * use_scale
    whole_batch = image.is_cuda and len(set(image.shape[2:])) == 1
    permute = permute_batch if whole_batch else permute_items
    img, lbl = permute(image, label, flips.cpu(), rots.cpu(), ks.cpu())
    view = (n,) + (1,) * (image.dim() - 1)
    if cfg.intensity_prob > 0 and (cfg.intensity_shift > 0 or cfg.intensity_scale > 0):
        img = (img + _to(shift, img).view(view)) * _to(scale, img).view(view)
    return img, lbl


def _to(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A few per-item numbers onto ``like``'s device and dtype without waiting for its queue."""
    return values.to(like.device, like.dtype, non_blocking=True)


def permute_items(image: torch.Tensor, label: torch.Tensor, flips: torch.Tensor, rots: torch.Tensor,
                  ks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip then rot90 each item of (B, C, D, H, W) ``image`` and ``label`` as drawn (``flips`` and ``rots``
    (B, 3) bool per axis / plane, ``ks`` (B, 3) quarter turns), item by item."""
    flips, rots, ks = flips.tolist(), rots.tolist(), ks.tolist()
    images, labels = [], []
    for b in range(image.shape[0]):
        x, y = image[b], label[b]
        dims = [1 + a for a in range(3) if flips[b][a]]
        if dims:
            x, y = torch.flip(x, dims), torch.flip(y, dims)
        for p, (a0, a1) in enumerate(PLANES):
            if rots[b][p]:
                x, y = torch.rot90(x, ks[b][p], (1 + a0, 1 + a1)), torch.rot90(y, ks[b][p], (1 + a0, 1 + a1))
        images.append(x)
        labels.append(y)
    return torch.stack(images), torch.stack(labels)


def permute_batch(image: torch.Tensor, label: torch.Tensor, flips: torch.Tensor, rots: torch.Tensor,
                  ks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """What :func:`permute_items` gives, as a few whole-batch operations on cubic patches: each flip or
    quarter turn is applied to the batch and kept (``torch.where``) for the items that drew it.

    A GPU runs these as ~20 large kernels instead of ~10 small ones per item, with no host round trip.
    """
    n = image.shape[0]

    def choose(mask: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.where(mask.to(a.device, non_blocking=True).view((n,) + (1,) * (a.dim() - 1)), a, b)

    x, y = image, label
    for a in range(3):
        if bool(flips[:, a].any()):
            x, y = choose(flips[:, a], x.flip(2 + a), x), choose(flips[:, a], y.flip(2 + a), y)
    for p, (a0, a1) in enumerate(PLANES):
        for k in (1, 2, 3):
            picked = rots[:, p] & (ks[:, p] == k)
            if bool(picked.any()):
                dims = (2 + a0, 2 + a1)
                x, y = choose(picked, torch.rot90(x, k, dims), x), choose(picked, torch.rot90(y, k, dims), y)
    return x.contiguous(), y.contiguous()
