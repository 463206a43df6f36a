"""luna-train: nodule segmentation training on luna-prep patch datasets."""
