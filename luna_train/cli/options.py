"""Option types and option groups shared by the ``luna-train`` commands."""

from __future__ import annotations

from pathlib import Path

import click

from luna_prep.cli_common import SubsetsType

SUBSETS = SubsetsType()
PROBABILITY = click.FloatRange(0, 1)


def subsets_option(*decls: str, help: str):
    """``--subsets 0-7``-style option: a tuple of LUNA16 subset numbers, or None when not given."""
    return click.option(*decls, type=SUBSETS, default=None, help=help)


def resolve_store(dataset: str, store_url: str | None, verify: bool) -> str:
    """The store behind ``dataset``: a store path or URL as is, or the store a dataset card points at."""
    from luna_prep.format.location import is_url
    from luna_prep.sharing.cards import resolve_dataset

    store = resolve_dataset(str(dataset), store_url, verify, pinned=True)  # a card: the checked bytes are pinned
    if not is_url(store) and not Path(store).exists():
        raise click.UsageError(f"dataset {store} not found; build one with `luna-prep build` or pass --dataset")
    return store


_MODEL_OPTIONS = [
    click.option("--tta", is_flag=True, help="Average over flips and 90-degree rotations (each inverted exactly)."),
    click.option("--ensemble", multiple=True, type=click.Path(exists=True, file_okay=False),
                 help="Another run directory whose model is averaged with RUN_DIR's. Repeatable."),
    click.option("--checkpoint", type=click.Choice(["best", "last"]), default="best", show_default=True),
]

_POSTPROCESS_OPTIONS = [
    click.option("--threshold", type=PROBABILITY, default=None,
                 help="Probability threshold of the segmentation "
                      "[default: the run's tuned postprocess.json, else 0.5]."),
    click.option("--min-size", type=click.IntRange(min=0), default=None,
                 help="Components smaller than this are dropped, in voxels of the store's grid (spacing_mm of "
                      "preprocessing.json, 1 mm by default), not of the written mask [default: the run's tuned "
                      "postprocess.json, else 3]."),
    click.option("--overlap", type=click.FloatRange(0, 1, max_open=True), default=0.5, show_default=True,
                 help="Overlap of neighbouring sliding windows, as a fraction of the window: 0.25 runs about a "
                      "third of 0.5's windows (docs/benchmarks.md has what it costs in FROC)."),
]


def model_options(fn):
    """--tta, --ensemble, --checkpoint: which model predicts, and how."""
    for option in reversed(_MODEL_OPTIONS):
        fn = option(fn)
    return fn


def postprocess_options(fn):
    """--threshold, --min-size, --overlap of the scan-level commands."""
    for option in reversed(_POSTPROCESS_OPTIONS):
        fn = option(fn)
    return fn
