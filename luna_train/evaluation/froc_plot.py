"""Plot of a LUNA16 FROC result: curve on a log2 FP axis, bootstrap band, operating points, CPM.

The plot reads only the result's fields (arrays and numbers), so it imports nothing of
:mod:`luna_train.evaluation.froc` at run time: froc's ``run_froc`` calls it, not the other way round.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

if TYPE_CHECKING:
    from luna_train.evaluation.froc import FrocResult


def plot_froc(result: FrocResult, out_png: str | Path, title: str | None = None) -> Path:
    """Write the FROC plot of ``result`` (:func:`froc_figure`) to ``out_png`` (PNG) and return its path."""
    fig = froc_figure(result, title)
    try:
        out = Path(out_png)
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out)
    finally:
        plt.close(fig)
    return out


def froc_figure(result: FrocResult, title: str | None = None):
    """The FROC curve up to the last FP rate the candidates reach (not beyond), its band and operating points.

    Operating points past the data keep the LUNA16 value (the last sensitivity, as the CPM counts
    them) but are drawn hollow, so a short candidate list does not look like a flat plateau.
    """
    ops = np.asarray(result.operating_points, dtype=float)
    end = float(np.max(result.fps)) if len(result.fps) else 0.0
    fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=150, layout="constrained")
    _draw_curve(ax, result, ops, end)
    inside = ops <= end
    sens = np.asarray(result.sensitivities, dtype=float)
    ax.plot(ops[inside], sens[inside], "o", color="tab:red", ms=5, zorder=3, label="operating points")
    if not inside.all():
        ax.plot(ops[~inside], sens[~inside], "o", mfc="none", mec="tab:red", ms=5, zorder=3,
                label="past the data (last sensitivity held)")
    for fp, s in zip(ops, sens):
        ax.annotate(f"{s:.3f}", (fp, s), textcoords="offset points", xytext=(0, 7 if s < 0.1 else -13),
                    ha="center", fontsize=7, color="tab:red")
    _style(ax, result, ops, title)
    return fig


def _draw_curve(ax, result: FrocResult, ops: np.ndarray, end: float) -> None:
    """Band and curve between the first operating point and ``end``, the data's last FP rate."""
    hi = min(ops[-1], end)
    band = (np.isfinite(result.bootstrap_lower) & np.isfinite(result.bootstrap_upper)
            & (np.asarray(result.bootstrap_fps) <= end))
    if band.any():
        ax.fill_between(result.bootstrap_fps[band], result.bootstrap_lower[band],
                        result.bootstrap_upper[band], color="tab:blue", alpha=0.2, lw=0,
                        label=f"95% bootstrap band (n={result.n_bootstrap})")
    if hi > ops[0]:
        x = 2.0 ** np.linspace(np.log2(ops[0]), np.log2(hi), 400)
        ax.plot(x, np.interp(x, result.fps, result.sensitivity), color="tab:blue", lw=2, label="FROC")
    if end < ops[-1]:
        ax.axvline(max(end, ops[0]), color="grey", ls=":", lw=1, label=f"candidates end: {end:.3g} FPs/scan")


def _style(ax, result: FrocResult, ops: np.ndarray, title: str | None) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xlim(ops[0] / 2 ** 0.15, ops[-1] * 2 ** 0.15)
    ax.set_xticks(ops, [f"{v:g}" if v >= 1 else f"1/{round(1 / v)}" for v in ops])
    ax.minorticks_off()
    ax.set_ylim(0.0, 1.02)
    ax.set_yticks(np.linspace(0.0, 1.0, 11))
    ax.grid(True, which="major", alpha=0.4)
    ax.set_xlabel("Average number of false positives per scan")
    ax.set_ylabel("Sensitivity")
    lo, hi = result.cpm_ci
    ci = "" if np.isnan(lo) or np.isnan(hi) else f" (95% CI {lo:.3f}-{hi:.3f})"
    head = f"{title}: " if title else "FROC: "
    ax.set_title(f"{head}CPM {result.cpm:.3f}{ci}\n"
                 f"{result.n_nodules} nodules, {result.n_scans} scans", fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
