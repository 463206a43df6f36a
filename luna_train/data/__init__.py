"""Data side of luna-train: splits, patch dataset, weighted sampler, augmentation and loaders."""

from luna_train.data.augment import AugmentConfig, augment_batch_on_device, batch_generator, build_train_transform
from luna_train.data.dataset import PatchDataset
from luna_train.data.loader import make_loader
from luna_train.data.sampler import SamplerConfig, WeightedPatchSampler
from luna_train.data.splits import SplitConfig, split_manifest

__all__ = [
    "AugmentConfig", "PatchDataset", "SamplerConfig", "SplitConfig", "WeightedPatchSampler", "augment_batch_on_device",
    "batch_generator", "build_train_transform", "make_loader", "split_manifest",
]
