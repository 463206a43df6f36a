"""Model factory: MONAI 3D UNet, AttentionUnet and DynUNet (with deep supervision), 1 input and 1 output channel."""

from __future__ import annotations

import math
import typing

import torch
from torch import nn

from luna_train.config import ModelConfig, ModelName

MODELS = typing.get_args(ModelName)


def build_model(cfg: ModelConfig) -> nn.Module:
    """The network of ``cfg``; its output is one channel of logits (apply a sigmoid for probabilities).

    ``channels`` has one entry per resolution level and ``strides`` one per downsampling
    (``len(strides) == len(channels) - 1``). A DynUNet with ``deep_supervision`` returns, in
    training mode, a (B, 1 + deep_supr_num, 1, D, H, W) stack (full-resolution output first,
    then decoder levels upsampled to the input size), and a plain (B, 1, D, H, W) in eval mode.
    """
    from monai.networks.nets import AttentionUnet, DynUNet, UNet

    name = cfg.name.lower().replace("-", "_")
    channels, strides = tuple(int(c) for c in cfg.channels), tuple(int(s) for s in cfg.strides)
    if len(strides) != len(channels) - 1:
        raise ValueError(f"model: {len(channels)} channels need {len(channels) - 1} strides, got {list(strides)}")
    if name == "unet":
        net = UNet(spatial_dims=3, in_channels=1, out_channels=1, channels=channels, strides=strides,
                    kernel_size=cfg.kernel_size, num_res_units=cfg.num_res_units, dropout=cfg.dropout)
    elif name == "attention_unet":
        net = AttentionUnet(spatial_dims=3, in_channels=1, out_channels=1, channels=channels, strides=strides,
                             kernel_size=cfg.kernel_size, dropout=cfg.dropout)
    elif name == "dynunet":
        n_up = len(strides)
        supr = int(cfg.deep_supr_num) if cfg.deep_supervision else 1
        if cfg.deep_supervision and not 1 <= supr < n_up:
            raise ValueError(f"model: deep_supr_num must be 1..{n_up - 1} for {n_up} upsampling levels, got {supr}")
        net = DynUNet(spatial_dims=3, in_channels=1, out_channels=1,
                       kernel_size=[cfg.kernel_size] * len(channels), strides=[1, *strides],
                       upsample_kernel_size=list(strides), filters=list(channels),
                       dropout=cfg.dropout or None, deep_supervision=bool(cfg.deep_supervision),
                       deep_supr_num=supr, res_block=bool(cfg.res_block))
    else:
        raise ValueError(f"unknown model {cfg.name!r}; expected one of {MODELS}")
    if cfg.init_fg_probability is not None:
        init_output_prior(net, float(cfg.init_fg_probability))
    return net


def _one_channel_convs(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d)) and m.out_channels == 1 and m.bias is not None]


def init_output_prior(model: nn.Module, probability: float) -> None:
    """Set the output layers' bias to logit(``probability``), so the network starts near "background everywhere".

    The output layers are a DynUNet's output block and deep-supervision heads, else the last
    one-channel convolution (a UNet's or AttentionUnet's final layer). An AttentionUnet's one-channel
    attention gates are left alone. The initial probability is ``probability`` only roughly: the
    logits also carry the last layer's weights over its input, and a UNet with residual units adds
    that input (a normalized PReLU activation, mean ~0.3) to them. ``configs/demo.yaml``'s UNet at
    0.01 starts at a mean of 0.016, ``configs/luna16.yaml``'s at 0.025 (median 0.012).
    """
    logit = math.log(probability / (1.0 - probability))
    convs = _one_channel_convs(model)
    if any(n.startswith("output_block") for n, _ in convs):  # DynUNet
        outputs = [m for n, m in convs if n.startswith(("output_block", "deep_supervision_heads"))]
    else:
        outputs = [convs[-1][1]]
    with torch.no_grad():
        for m in outputs:
            m.bias.fill_(logit)


def split_outputs(out: torch.Tensor | list | tuple) -> list[torch.Tensor]:
    """A model's output as a list of (B, 1, D, H, W) logits, the full-resolution one first."""
    if isinstance(out, (list, tuple)):
        return [o for o in out]
    if out.dim() == 6:  # DynUNet deep-supervision stack (B, L, C, D, H, W)
        return list(torch.unbind(out, dim=1))
    return [out]


def main_output(out: torch.Tensor | list | tuple) -> torch.Tensor:
    """The full-resolution logits of a model output (drops deep-supervision levels)."""
    return split_outputs(out)[0]


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
