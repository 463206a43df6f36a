"""``luna-train froc``: LUNA16 FROC and CPM of a submission."""

from __future__ import annotations

import click


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def format_froc(d: dict) -> str:
    """The text report of a FROC result's JSON dict: counts, the operating points with their band, CPM."""
    lines = [f"{d['n_scans']} scans, {d['n_nodules']} nodules, {d['n_hits']} detected, "
             f"{d['n_candidates']} candidates, {d['n_false_positives']} false positives "
             f"({d['n_ignored_excluded']} on excluded findings, {d['n_ignored_double']} double hits ignored, "
             f"{d['n_unlisted']} of scans not in the seriesuids list)",
             *unlisted_warning(d),
             f"{'FPs/scan':>10}  {'sensitivity':>11}  95% band"]
    for fp, s, lo, hi in zip(d["operating_points"], d["sensitivities"], d["sensitivities_lower"],
                             d["sensitivities_upper"]):
        lines.append(f"{fp:>10g}  {_fmt(s):>11}  {_fmt(lo)}-{_fmt(hi)}")
    lo, hi = d["cpm_ci"]
    lines.append(f"CPM {_fmt(d['cpm'])} (95% CI {_fmt(lo)}-{_fmt(hi)}, {d['n_bootstrap']} bootstrap samples)")
    return "\n".join(lines)


def unlisted_warning(d: dict) -> list[str]:
    """A WARNING line when submission rows are of scans the seriesuids list lacks (they are not scored)."""
    if not d["n_unlisted"]:
        return []
    example = f"e.g. {d['unlisted_example']}"
    if d["n_candidates"] + d["n_dropped_cap"] == 0:
        return [f"WARNING: no submission row is of a listed scan ({example}): every nodule counts as missed; do the "
                "submission's seriesuids name the scans as the seriesuids list does (no .mhd suffix, no path)?"]
    return [f"WARNING: {d['n_unlisted']} submission rows are of scans not in the seriesuids list ({example}): "
            "not scored"]


@click.command("froc")
@click.argument("submission", type=click.Path(exists=True, dir_okay=False))
@click.option("--annotations", required=True, type=click.Path(exists=True, dir_okay=False),
              help="LUNA16 annotations.csv.")
@click.option("--excluded", type=click.Path(exists=True, dir_okay=False), default=None,
              help="LUNA16 annotations_excluded.csv (findings whose candidates are ignored).")
@click.option("--seriesuids", required=True, type=click.Path(exists=True, dir_okay=False),
              help="seriesuids.csv: the scans evaluated (the FP rate is per scan of this list).")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None,
              help="Write the summary as JSON here.")
@click.option("--plot", "plot_out", type=click.Path(dir_okay=False), default=None,
              help="Write the FROC plot (PNG) here.")
@click.option("--bootstrap", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Bootstrap samples (scans resampled) of the 95% band.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the bootstrap.")
def froc(submission, annotations, excluded, seriesuids, json_out, plot_out, bootstrap, seed):
    """LUNA16 FROC and CPM of a submission CSV (seriesuid, coordX, coordY, coordZ, probability)."""
    from luna_train.evaluation.froc import run_froc

    res = run_froc(submission, annotations, excluded, seriesuids, json_out=json_out, plot_out=plot_out,
                   n_bootstrap=bootstrap, seed=seed)
    click.echo(format_froc(res.to_json_dict()))
    for path in (json_out, plot_out):
        if path is not None:
            click.echo(f"wrote {path}")
