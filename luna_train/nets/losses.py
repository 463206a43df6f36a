"""Loss factory: MONAI DiceFocal / Dice / Tversky, a combo loss with a boundary term, deep supervision.

Every loss takes one-channel logits (B, 1, D, H, W) and a 0/1 target of the same shape; the
:class:`DeepSupervisionLoss` wrapper returned by :func:`build_loss` also takes a DynUNet
deep-supervision stack and weighs its levels 1, d, d^2, ... (normalized).
"""

from __future__ import annotations

import typing

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from luna_train.config import LossConfig, LossName
from luna_train.nets.models import split_outputs

LOSSES = typing.get_args(LossName)


def signed_distance_map(target: torch.Tensor) -> torch.Tensor:
    """Signed Euclidean distance to the target boundary per item, < 0 inside, > 0 outside, in units of the patch edge.

    Computed on the CPU with ``scipy.ndimage.distance_transform_edt``; items without foreground
    get zeros (the boundary term is then silent, as in Kervadec et al. 2019).
    """
    from scipy.ndimage import distance_transform_edt

    t = target.detach().to("cpu", torch.float32).numpy() > 0.5
    out = np.zeros(t.shape, dtype=np.float32)
    for idx in np.ndindex(*t.shape[:-3]):
        pos = t[idx]
        if pos.any() and not pos.all():
            neg = ~pos
            out[idx] = distance_transform_edt(neg) * neg - (distance_transform_edt(pos) - 1.0) * pos
    return torch.from_numpy(out / float(max(t.shape[-3:]))).to(target.device)


class BoundaryLoss(nn.Module):
    """Kervadec boundary loss: mean of sigmoid(logits) times the target's signed distance map."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        phi = signed_distance_map(target)
        return (torch.sigmoid(logits.float()) * phi).mean()


class ComboLoss(nn.Module):
    """Weighted sum of Dice, Focal, Tversky and boundary terms (a zero weight drops the term)."""

    def __init__(self, cfg: LossConfig):
        super().__init__()
        from monai.losses import DiceLoss, FocalLoss, TverskyLoss

        self.terms = nn.ModuleDict()
        self.weights: dict[str, float] = {}
        candidates = {
            "dice": (cfg.combo_dice, lambda: DiceLoss(sigmoid=True, batch=cfg.dice_batch)),
            "focal": (cfg.combo_focal, lambda: FocalLoss(gamma=cfg.gamma, alpha=cfg.focal_alpha, use_softmax=False)),
            "tversky": (cfg.combo_tversky, lambda: TverskyLoss(sigmoid=True, alpha=cfg.tversky_alpha,
                                                               beta=cfg.tversky_beta, batch=cfg.dice_batch)),
            "boundary": (cfg.combo_boundary, BoundaryLoss),
        }
        for name, (weight, make) in candidates.items():
            if weight:
                self.terms[name] = make()
                self.weights[name] = float(weight)
        if not self.terms:
            raise ValueError("loss combo: every term weight is zero")

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return sum(self.weights[n] * term(logits, target) for n, term in self.terms.items())


class DeepSupervisionLoss(nn.Module):
    """Applies ``base`` to each output level with weights decay**i (normalized); targets resized (nearest) to each."""

    def __init__(self, base: nn.Module, decay: float = 0.5):
        super().__init__()
        self.base, self.decay = base, float(decay)

    def forward(self, output: torch.Tensor | list, target: torch.Tensor) -> torch.Tensor:
        outs = split_outputs(output)
        weights = [self.decay ** i for i in range(len(outs))]
        total = 0.0
        for w, out in zip(weights, outs):
            tgt = (target if out.shape[2:] == target.shape[2:]
                   else F.interpolate(target, size=out.shape[2:], mode="nearest"))
            total = total + w * self.base(out.float(), tgt)
        return total / sum(weights)


def build_base_loss(cfg: LossConfig) -> nn.Module:
    """The single-output loss of ``cfg``."""
    from monai.losses import DiceCELoss, DiceFocalLoss, DiceLoss, TverskyLoss

    name = cfg.name.lower().replace("-", "_").replace("_", "")
    if name == "dicece":
        pos_weight = None if cfg.ce_pos_weight is None else torch.tensor([float(cfg.ce_pos_weight)])
        return DiceCELoss(sigmoid=True, batch=cfg.dice_batch, weight=pos_weight, lambda_dice=cfg.lambda_dice,
                          lambda_ce=cfg.lambda_ce)
    if name == "dicefocal":
        return DiceFocalLoss(sigmoid=True, batch=cfg.dice_batch, gamma=cfg.gamma, alpha=cfg.focal_alpha,
                             lambda_dice=cfg.lambda_dice, lambda_focal=cfg.lambda_focal)
    if name == "dice":
        return DiceLoss(sigmoid=True, batch=cfg.dice_batch)
    if name == "tversky":
        return TverskyLoss(sigmoid=True, alpha=cfg.tversky_alpha, beta=cfg.tversky_beta, batch=cfg.dice_batch)
    if name == "combo":
        return ComboLoss(cfg)
    raise ValueError(f"unknown loss {cfg.name!r}; expected one of {LOSSES}")


def build_loss(cfg: LossConfig) -> DeepSupervisionLoss:
    """The loss of ``cfg``, wrapped to accept deep-supervision outputs."""
    return DeepSupervisionLoss(build_base_loss(cfg), cfg.deep_supervision_decay)


@torch.no_grad()
def per_sample_soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """(B,) soft Dice loss per item (smoothed; a hardness score for hard-example mining)."""
    p = torch.sigmoid(logits.float()).flatten(1)
    t = target.float().flatten(1)
    return 1.0 - (2 * (p * t).sum(1) + eps) / (p.sum(1) + t.sum(1) + eps)
