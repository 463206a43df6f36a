"""Inference helpers: test-time augmentation and post-processing of probability maps."""
