"""PNG plots of a run: loss and Dice curves, and a panel of validation patches with contours."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from luna_prep.report.figure import ImageScale, add_scale_bar

CURVES_FILE = "curves.png"
PANEL_FILE = "val_panel.png"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _col(history: list[dict], key: str) -> np.ndarray:
    return np.asarray([float("nan") if r.get(key) is None else float(r[key]) for r in history], dtype=float)


def curves_figure(history: list[dict], best_epoch: int | None = None):
    """Train/val loss, val Dice / pooled Dice and the learning rate per epoch (constrained layout)."""
    plt = _pyplot()
    epochs = _col(history, "epoch")
    fig, (ax_l, ax_d, ax_r) = plt.subplots(1, 3, figsize=(13, 4), layout="constrained")
    ax_l.plot(epochs, _col(history, "train_loss"), "o-", ms=3, label="train")
    ax_l.plot(epochs, _col(history, "val_loss"), "s-", ms=3, label="validation")
    ax_l.set(xlabel="epoch", ylabel="loss", title="Loss")
    ax_l.legend()
    ax_d.plot(epochs, _col(history, "val_dice"), "o-", ms=3, label="per-patch Dice (nodule patches)")
    ax_d.plot(epochs, _col(history, "val_pooled_dice"), "s-", ms=3, label="pooled Dice (all patches)")
    if best_epoch is not None and best_epoch >= 0:
        ax_d.axvline(best_epoch + 1, color="grey", ls="--", lw=1, label=f"best (epoch {best_epoch + 1})")
    ax_d.set(xlabel="epoch", ylabel="Dice", title="Validation Dice", ylim=(0, 1))
    ax_d.legend(loc="lower right", fontsize=8)
    lr = _col(history, "lr")
    ax_r.plot(epochs, lr, "o-", ms=3, color="tab:purple", label="learning rate")
    if np.all(lr[np.isfinite(lr)] > 0) and np.isfinite(lr).any():
        ax_r.set_yscale("log")
    ax_r.set(xlabel="epoch", ylabel="learning rate", title="Learning rate (end of epoch)")
    for ax in (ax_l, ax_d, ax_r):
        ax.grid(alpha=0.3)
    return fig


def plot_curves(history: list[dict], path: str | Path, best_epoch: int | None = None) -> Path:
    """Write :func:`curves_figure` to ``path``."""
    return _save(curves_figure(history, best_epoch), path)


def panel_figure(items: list[dict], title: str = "", scale: ImageScale | None = None):
    """Validation patches (slice with most ground truth): ground truth in green, prediction in red.

    ``scale`` (the store's HU window and spacing) adds the window to the title and a mm bar to each image.
    """
    plt = _pyplot()
    n = max(len(items), 1)
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3.2 * rows + 0.5), squeeze=False, layout="constrained")
    for ax in axes.ravel():
        ax.axis("off")
    for ax, item in zip(axes.ravel(), items):
        ax.imshow(item["image"], cmap="gray", vmin=0, vmax=1)
        if item["label"].any():
            ax.contour(item["label"].astype(float), levels=[0.5], colors="lime", linewidths=1.2)
        if item["pred"].any():
            ax.contour(item["pred"].astype(float), levels=[0.5], colors="red", linewidths=1.2)
        if scale is not None:
            add_scale_bar(ax, item["image"].shape[1], scale.spacing_mm)
        ax.set_title(f"#{item['position']} z={item['slice']} Dice {item['dice']:.2f}", fontsize=8)
    if not items:
        axes[0, 0].text(0.5, 0.5, "no validation patch with a nodule", ha="center", va="center")
    head = title or "validation: ground truth (green), prediction (red)"
    fig.suptitle(head + (f"\n{scale.window_text()}" if scale is not None else ""), fontsize=10)
    return fig


def plot_panel(items: list[dict], path: str | Path, title: str = "", scale: ImageScale | None = None) -> Path:
    """Write :func:`panel_figure` to ``path``."""
    return _save(panel_figure(items, title, scale), path)


def _save(fig, path: str | Path) -> Path:
    plt = _pyplot()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
