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
    """Write the FROC plot of ``result`` to ``out_png`` (PNG) and return its path."""
    ops = np.asarray(result.operating_points, dtype=float)
    x = 2.0 ** np.linspace(np.log2(ops[0]), np.log2(ops[-1]), 400)
    y = np.interp(x, result.fps, result.sensitivity)  # the same interpolation as the CPM
    fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=150)
    try:
        band = np.isfinite(result.bootstrap_lower) & np.isfinite(result.bootstrap_upper)
        if band.any():
            ax.fill_between(result.bootstrap_fps[band], result.bootstrap_lower[band],
                            result.bootstrap_upper[band], color="tab:blue", alpha=0.2, lw=0,
                            label=f"95% bootstrap band (n={result.n_bootstrap})")
        ax.plot(x, y, color="tab:blue", lw=2, label="FROC")
        ax.plot(ops, result.sensitivities, "o", color="tab:red", ms=5, zorder=3,
                label="operating points")
        for fp, s in zip(ops, result.sensitivities):
            ax.annotate(f"{s:.3f}", (fp, s), textcoords="offset points", xytext=(0, -13),
                        ha="center", fontsize=7, color="tab:red")
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
        fig.tight_layout()
        out = Path(out_png)
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out)
    finally:
        plt.close(fig)
    return out
