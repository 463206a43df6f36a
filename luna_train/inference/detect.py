"""Scan-level nodule detection: sliding-window probabilities over a whole volume, then candidates.

The model sees what it was trained on: volumes at the store's spacing are zoomed so one model
voxel is ``eval_scale / train_size`` store voxels, run through MONAI's sliding-window inference
with Gaussian blending, and the probabilities zoomed back. Connected components of the
post-processed map inside the (dilated) lungs become candidates: world-mm centroid and the
component's peak probability, the rows of a LUNA16 submission.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from scipy import ndimage

from luna_prep.format.reader import ScanVolume
from luna_prep.format.spec import decode_image
from luna_prep.pipeline.resampling import AIR_HU, encode_hu
from luna_train.data.dataset import resize_linear
from luna_train.inference.postprocess import PostprocessConfig, postprocess
from luna_train.inference.trained_model import ProbabilityModel
from luna_train.inference.tta import tta_predict

SUBMISSION_COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ", "probability")


@dataclass
class DetectConfig:
    """Sliding window, post-processing and candidate settings."""

    overlap: float = 0.5
    sw_batch_size: int | None = None  # windows per forward pass; None: 32 on CUDA, 8 on the CPU
    tta: bool = False
    postprocess: PostprocessConfig = field(default_factory=lambda: PostprocessConfig(threshold=0.5, min_size=3))
    lung_margin_mm: float = 8.0  # lungs dilated by this much: juxtapleural nodules touch the wall
    max_candidates: int = 100  # per scan (the official evaluation scores at most 100)
    air: float = 0.0  # what a scan smaller than one window is padded with: air_value() of the store's window


def air_value(hu_window: tuple[float, float], image_dtype: str) -> float:
    """-1000 HU as the model sees it (encoded as the store encodes, decoded to [0, 1]): what the store pads
    scans with; 0 with the default window, 0.1098 with (-1200, 600) as uint8."""
    return float(decode_image(encode_hu(np.full(1, AIR_HU, np.float32), hu_window, image_dtype), image_dtype)[0])


@torch.no_grad()
def volume_probabilities(model: ProbabilityModel, image: np.ndarray, cfg: DetectConfig) -> np.ndarray:
    """Probabilities (z, y, x) float32 of a normalized [0, 1] volume at the store's spacing."""
    from monai.inferers import sliding_window_inference

    roi = model.input_size or model.config.data.eval_scale
    # the volume goes to the model's device first: zooms, windows and blending all run there
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None].to(model.device)
    shape = tuple(int(s) for s in x.shape[2:])
    # zoomed as training zooms its patches (resize_linear); a scan smaller than one window is not stretched:
    # sliding_window_inference pads it with air (cfg.air, as the store pads) and crops the result back
    zoomed = tuple(max(1, int(round(s / model.voxel_mm))) for s in shape)
    if zoomed != shape:
        x = resize_linear(x, zoomed)

    def predict(batch: torch.Tensor) -> torch.Tensor:
        if cfg.tta:
            return tta_predict(model.probabilities, batch.to(model.device)).float()
        return model.probabilities(batch)

    prob = sliding_window_inference(x, (roi,) * 3, window_batch(cfg, model.device), predict,
                                    overlap=cfg.overlap, mode="gaussian", cval=cfg.air).float()
    if zoomed != shape:
        prob = resize_linear(prob, shape)
    return prob[0, 0].clamp_(0, 1).cpu().numpy()


def window_batch(cfg: DetectConfig, device: torch.device) -> int:
    """Sliding windows per forward pass: ``cfg.sw_batch_size``, else 32 on CUDA (64^3 windows of the luna16
    UNet in bf16 take ~2 GB) and 8 on the CPU."""
    return cfg.sw_batch_size or (32 if device.type == "cuda" else 8)


def dilated_lungs(lungs: np.ndarray, spacing_mm: float, margin_mm: float) -> np.ndarray:
    """The lung mask grown by ``margin_mm`` (computed on a 4 mm lattice, then upsampled)."""
    if margin_mm <= 0:
        return lungs
    step = max(1, int(round(4.0 / spacing_mm)))
    coarse = lungs[::step, ::step, ::step]
    grown = ndimage.binary_dilation(coarse, iterations=max(1, int(np.ceil(margin_mm / (step * spacing_mm)))))
    idx = [np.minimum(np.arange(n) // step, m - 1) for n, m in zip(lungs.shape, grown.shape)]
    return grown[np.ix_(*idx)] | lungs


def candidate_mask(prob: np.ndarray, volume: ScanVolume, cfg: DetectConfig) -> np.ndarray:
    """The post-processed map inside the dilated lungs: the voxels candidates are made of (and predict's mask)."""
    within = dilated_lungs(volume.lungs, volume.spacing_mm, cfg.lung_margin_mm)
    return postprocess(prob, cfg.postprocess, within=within)


def component_centroids_and_peaks(prob: np.ndarray, labels: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Probability-weighted centroid (n, 3) in voxel (z, y, x) and peak probability (n,) of components 1..n.

    What ``ndimage.center_of_mass`` and ``ndimage.maximum`` give, from the labelled voxels alone: those
    sort or scan the whole volume per call (3.6 s of a 2.1 s-per-scan candidate step on the demo's
    scans); a scan's candidates cover a few thousand voxels. A component whose probabilities are all 0
    gets its plain centroid.
    """
    where = np.nonzero(labels)
    lab = labels[where]
    weight = prob[where].astype(np.float64)
    mass = np.bincount(lab, weights=weight, minlength=n + 1)[1:]
    count = np.bincount(lab, minlength=n + 1)[1:]
    weighted = mass > 0
    centroids = np.empty((n, len(where)))
    for axis, coords in enumerate(where):
        coords = coords.astype(np.float64)
        sums = np.bincount(lab, weights=weight * coords, minlength=n + 1)[1:]
        plain = np.bincount(lab, weights=coords, minlength=n + 1)[1:]
        centroids[:, axis] = np.where(weighted, sums / np.where(weighted, mass, 1), plain / np.maximum(count, 1))
    peaks = np.full(n + 1, -np.inf)
    np.maximum.at(peaks, lab, weight)
    return centroids, peaks[1:]


def candidates_from_probabilities(prob: np.ndarray, volume: ScanVolume, cfg: DetectConfig) -> pd.DataFrame:
    """Connected components of the post-processed map (:func:`candidate_mask`) -> (world centroid, peak
    probability) rows."""
    # 26-connected, as post-processing's components: an object it keeps whole is one candidate
    labels, n = ndimage.label(candidate_mask(prob, volume, cfg), structure=np.ones((3, 3, 3), bool))
    rows = []
    if n:
        centroids, peaks = component_centroids_and_peaks(prob, labels, n)
        world = volume.zyx_to_world(centroids)
        for (x, y, z), p in zip(world, peaks):
            rows.append((volume.seriesuid, float(x), float(y), float(z), float(p)))
    df = pd.DataFrame(rows, columns=list(SUBMISSION_COLUMNS))
    return df.sort_values("probability", ascending=False, kind="stable").head(cfg.max_candidates).reset_index(drop=True)


def detect_volume(model: ProbabilityModel, volume: ScanVolume, cfg: DetectConfig,
                  timer: StageTimer | None = None) -> tuple[pd.DataFrame, np.ndarray]:
    """Candidates of one scan (LUNA16 submission rows) and its probability map; ``timer`` records the
    seconds of the sliding window and of the candidate extraction."""
    timer = timer or StageTimer()
    with timer.stage("sliding_window"):
        prob = volume_probabilities(model, volume.image, cfg)  # ends on the host: the GPU's work is done
    with timer.stage("candidates"):
        candidates = candidates_from_probabilities(prob, volume, cfg)
    return candidates, prob


class StageTimer:
    """Wall seconds per named stage of one scan (``with timer.stage("read"): ...``), summed per name."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0
