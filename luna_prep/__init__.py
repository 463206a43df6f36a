"""luna-prep: LUNA16 scans -> multi-scale Zarr patch datasets."""

__version__ = "0.1.0"
