"""Test-time augmentation for 3D segmentation models on (B, C, D, H, W) tensors.

The augmentations are flips over any subset of the three spatial axes and rotations by k * 90
degrees in the axial (H, W) plane. Each prediction is mapped back by the exact inverse of its
augmentation (flips and rot90 only permute voxels) and the probabilities are averaged.

Only distinct transforms are kept (two augmentations that permute voxels the same way count
once): with flips and all rotations that is 16 transforms (flip of D or not, times the 8
symmetries of the square in H-W); flips alone give 8, rotations alone 4 (with the identity).
Rule for non-square axial planes (H != W): 90 and 270 degree rotations would swap H and W, so they
are skipped; 180 degrees (a flip of both H and W) is kept.

Averaging is done in float64, so that N identical float32 predictions average back to exactly
themselves (an identity or equivariant model is returned bit for bit).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import combinations

import torch

Transform = Callable[[torch.Tensor], torch.Tensor]
SPATIAL_DIMS = (2, 3, 4)  # D, H, W of (B, C, D, H, W)
AXIAL_PLANE = (3, 4)  # H, W


def _make(flip_dims: tuple[int, ...], k: int) -> tuple[Transform, Transform]:
    """forward = flip then rotate by k * 90 degrees in H-W; inverse = rotate back then flip."""

    def forward(t: torch.Tensor) -> torch.Tensor:
        if flip_dims:
            t = torch.flip(t, flip_dims)
        return torch.rot90(t, k, dims=AXIAL_PLANE) if k else t

    def inverse(t: torch.Tensor) -> torch.Tensor:
        if k:
            t = torch.rot90(t, -k, dims=AXIAL_PLANE)
        return torch.flip(t, flip_dims) if flip_dims else t

    name = f"flip{list(flip_dims)}_rot{90 * k}"
    forward.__name__, inverse.__name__ = name, f"inverse_{name}"
    return forward, inverse


def tta_transforms(flips: bool = True, rotations: bool | Sequence[int] = True,
                   spatial_shape: Sequence[int] | None = None) -> list[tuple[Transform, Transform]]:
    """Distinct (forward, inverse) pairs, the identity first.

    ``rotations``: True for k = 1, 2, 3 (90, 180, 270 degrees in H-W), False for none, or a
    sequence of k values. ``spatial_shape`` (D, H, W): if given with H != W, odd k are skipped.
    """
    ks = (1, 2, 3) if rotations is True else () if rotations is False else tuple(rotations)
    if any(k not in (1, 2, 3) for k in ks):
        raise ValueError(f"rotations must be k values in 1..3 (multiples of 90 degrees), got {ks}")
    if spatial_shape is not None:
        if len(spatial_shape) != 3:
            raise ValueError(f"spatial_shape must be (D, H, W), got {tuple(spatial_shape)}")
        if spatial_shape[1] != spatial_shape[2]:
            ks = tuple(k for k in ks if k % 2 == 0)
    flip_sets = [c for n in range(4) for c in combinations(SPATIAL_DIMS, n)] if flips else [()]
    probe = torch.arange(2 * 3 * 3).reshape(1, 1, 2, 3, 3)  # tells voxel permutations apart
    seen: set[tuple[int, ...]] = set()
    out: list[tuple[Transform, Transform]] = []
    for flip_dims in flip_sets:
        for k in (0, *ks):
            fwd, inv = _make(flip_dims, k)
            key = tuple(fwd(probe).flatten().tolist())
            if key not in seen:
                seen.add(key)
                out.append((fwd, inv))
    return out


def tta_predict(predict_fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                flips: bool = True, rotations: bool | Sequence[int] = True) -> torch.Tensor:
    """Mean of ``inverse(predict_fn(forward(x)))`` over :func:`tta_transforms`.

    ``predict_fn`` maps (B, C, D, H, W) to (B, K, D, H, W) probabilities (average probabilities,
    not logits). Call it under ``torch.no_grad()``; the result has the prediction's dtype.
    """
    if x.ndim != 5:
        raise ValueError(f"expected (B, C, D, H, W), got shape {tuple(x.shape)}")
    transforms = tta_transforms(flips, rotations, spatial_shape=tuple(x.shape[2:]))
    total: torch.Tensor | None = None
    dtype = x.dtype
    for forward, inverse in transforms:
        y = inverse(predict_fn(forward(x)))
        if y.ndim != 5 or y.shape[0] != x.shape[0] or y.shape[2:] != x.shape[2:]:
            raise ValueError(f"predict_fn returned shape {tuple(y.shape)} for input "
                             f"{tuple(x.shape)}; expected (B, K, D, H, W) on the same grid")
        if not y.is_floating_point():
            raise TypeError(f"predict_fn must return probabilities (floating point), got {y.dtype}")
        dtype = y.dtype
        acc = y.to(torch.float64)
        if total is None:
            total = acc.clone() if acc is y else acc
        else:
            total += acc
    assert total is not None
    return (total / len(transforms)).to(dtype)
