"""Data side of luna-train: splits, patch dataset, weighted sampler, augmentation and loaders."""

from .augment import AugmentConfig, augment_batch_on_device, batch_generator, build_train_transform
from .dataset import PatchDataset
from .loader import make_loader
from .sampler import SamplerConfig, WeightedPatchSampler
from .splits import SplitConfig, split_manifest

__all__ = [
    "AugmentConfig", "PatchDataset", "SamplerConfig", "SplitConfig", "WeightedPatchSampler", "augment_batch_on_device",
    "batch_generator", "build_train_transform", "make_loader", "split_manifest",
]
