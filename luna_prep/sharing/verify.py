"""``luna-prep verify``: is a store (or the store a card describes) intact and a valid luna-patches store?

Two kinds of checks:

- against a card (when given one): every file the card lists exists with its size and sha256;
  files the store holds that the card does not list are reported (not over plain HTTP, which
  cannot list a folder);
- the format's invariants, always: root attributes, each array's metadata as the fast reader
  accepts it (dtype and codec whitelist, shape ``(capacity, s, s, s)``, one patch per chunk),
  manifest columns and their types, manifest rows inside the arrays, unique ``(sample_id, scale)``,
  every sample with one patch per scale at the same row, and with ``deep`` each row's mask sum
  equal to ``fg_voxels`` (reads every shard once, checking every chunk's crc32c in v2 stores) and
  every whole-scan volume decoded after its metadata is checked (codecs, dtype, shape).

Works on a folder, a ``.zip`` and a URL. Nothing is unpickled: tables are read by pyarrow,
arrays by :class:`luna_prep.format.shards.ShardedPatchArray`.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field

import numpy as np

from luna_prep.files import sha256_bytes, sha256_stream
from luna_prep.format.location import RangeRequestIgnored, StoreLocation, is_url
from luna_prep.format.spec import (
    BUILD_DIR,
    FORMAT_NAME,
    FORMAT_VERSION,
    IMAGE_ARRAY,
    KINDS,
    MANIFEST_COLUMNS,
    MANIFEST_FILE,
    MASK_ARRAY,
    ROOT_METADATA,
    SCANS_FILE,
    VOLUME_IMAGE,
    VOLUME_LUNGS,
    FormatError,
    StoreAttributes,
    array_path,
    consolidated_arrays,
    root_attributes,
    volume_path,
)
from luna_prep.format.volumes import open_volume
from luna_prep.sharing.cards import CardError, card_store_location, is_card, load_card

# Parquet (arrow) types accepted for each manifest dtype.
_ARROW_TYPES = {
    "int64": ("int64",), "int16": ("int16",), "float64": ("double",), "float32": ("float",),
    "string": ("string", "large_string"),
}


@dataclass
class VerifyReport:
    target: str
    store: str = ""
    card: str | None = None
    files_checked: int = 0
    bytes_checked: int = 0
    missing: list[str] = field(default_factory=list)
    altered: list[str] = field(default_factory=list)  # "path: why"
    unexpected: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # format invariants and anything else
    notes: list[str] = field(default_factory=list)
    rows_checked: int = 0
    patches_read: int = 0
    volumes_read: int = 0
    format_version: int = FORMAT_VERSION

    @property
    def ok(self) -> bool:
        return not (self.missing or self.altered or self.unexpected or self.problems)

    def format(self) -> str:
        lines = [f"store: {self.store or self.target}"]
        if self.card:
            lines.append(f"card: {self.card}")
            lines.append(f"files: {self.files_checked} checked against the card ({self.bytes_checked:,} bytes); "
                         f"{len(self.missing)} missing, {len(self.altered)} altered, {len(self.unexpected)} unexpected")
        lines.append(f"manifest rows checked: {self.rows_checked}"
                     + (f"; patches decoded: {self.patches_read}" if self.patches_read else "")
                     + (f"; volume arrays decoded: {self.volumes_read}" if self.volumes_read else ""))
        lines += [f"note: {n}" for n in self.notes]
        lines += [f"MISSING {p}" for p in self.missing]
        lines += [f"ALTERED {p}" for p in self.altered]
        lines += [f"UNEXPECTED {p}" for p in self.unexpected]
        lines += [f"PROBLEM {p}" for p in self.problems]
        n_problems = len(self.missing) + len(self.altered) + len(self.unexpected) + len(self.problems)
        lines.append(f"OK: the store is intact and follows {FORMAT_NAME} v{self.format_version}" if self.ok
                     else f"FAILED: {n_problems} problem(s)")
        return "\n".join(lines)


def _is_http(location: StoreLocation) -> bool:
    protocols = location.fs.protocol if isinstance(location.fs.protocol, (tuple, list)) else (location.fs.protocol,)
    return any(str(p).startswith("http") for p in protocols)


def _hash_file(location: StoreLocation, rel: str) -> tuple[str, int]:
    with location.fs.open(location._path(rel), "rb") as f:
        return sha256_stream(f, block=1 << 22)


def check_against_card(location: StoreLocation, card: dict, report: VerifyReport) -> None:
    for entry in card["files"]:
        rel = entry["path"]
        try:
            if _is_http(location):
                data = location.read(rel)  # one GET; HTTP file objects would HEAD first
                digest, size = sha256_bytes(data), len(data)
            else:
                digest, size = _hash_file(location, rel)
        except FileNotFoundError:
            report.missing.append(rel)
            continue
        except Exception as exc:  # noqa: BLE001 - e.g. a zip entry whose CRC fails: a finding
            report.files_checked += 1
            report.altered.append(f"{rel}: unreadable ({type(exc).__name__}: {exc})")
            continue
        report.files_checked += 1
        report.bytes_checked += size
        if size != entry["size"]:
            report.altered.append(f"{rel}: {size} bytes, card says {entry['size']}")
        elif digest != entry["sha256"]:
            report.altered.append(f"{rel}: sha256 {digest[:12]}... != card {entry['sha256'][:12]}...")
    if _is_http(location):
        report.notes.append("a store over HTTP cannot be listed: unexpected files not checked")
        return
    listed = {f["path"] for f in card["files"]}
    try:
        present = location.list_files()
    except Exception as exc:  # noqa: BLE001 - a store we cannot list is a note, not a failure
        report.notes.append(f"the store cannot be listed ({type(exc).__name__}): unexpected files not checked")
        return
    report.unexpected += sorted(rel for rel in present if rel not in listed and rel.split("/", 1)[0] != BUILD_DIR)


def check_ranges(location: StoreLocation, report: VerifyReport) -> None:
    """One 1-byte ranged read: a server that ignores HTTP Range serves whole files, which plain reads (and so
    the other checks) accept, but a reader of patches cannot use."""
    try:
        location.read_range(ROOT_METADATA, 0, 1)
    except RangeRequestIgnored as exc:
        report.problems.append(str(exc))
    except OSError:  # no zarr.json: reported with the other checks
        pass


def _array_metadata(location: StoreLocation, meta: dict, path: str, report: VerifyReport) -> dict | None:
    consolidated = consolidated_arrays(meta)
    own = None
    try:
        own = json.loads(location.read(f"{path}/zarr.json"))
    except FileNotFoundError:
        report.problems.append(f"{path}/zarr.json is missing")
    except ValueError as exc:
        report.problems.append(f"{path}/zarr.json is not valid JSON ({exc})")
    cons = consolidated.get(path)
    if cons is None:
        report.problems.append(f"zarr.json: consolidated metadata lacks {path}")
    elif own is not None and cons != own:
        report.problems.append(f"zarr.json: consolidated metadata of {path} differs from {path}/zarr.json")
    return own if own is not None else cons


def check_arrays(location: StoreLocation, meta: dict, attrs: StoreAttributes, report: VerifyReport) -> dict:
    """Array metadata as ShardedPatchArray accepts it; returns {(scale, name): array}."""
    from luna_prep.format.shards import ShardedPatchArray

    arrays = {}
    consolidated = consolidated_arrays(meta)
    expected_paths = {array_path(s, n) for s in attrs.scales for n in (IMAGE_ARRAY, MASK_ARRAY)}
    for path, node in consolidated.items():  # any other array must still be safe for zarr users
        if isinstance(node, dict) and node.get("node_type") == "array" and path not in expected_paths:
            report.problems.append(f"{path}: an array that is not part of the format")
    for s in attrs.scales:
        for name, dtype in ((IMAGE_ARRAY, attrs.image_dtype), (MASK_ARRAY, "uint8")):
            path = array_path(s, name)
            array_meta = _array_metadata(location, meta, path, report)
            if array_meta is None:
                continue
            try:
                arr = ShardedPatchArray(location, path, array_meta, require_checksum=attrs.chunk_checksums)
            except FormatError as exc:
                report.problems.append(str(exc))
                continue
            except (KeyError, TypeError, ValueError) as exc:
                report.problems.append(f"{path}: malformed array metadata ({type(exc).__name__}: {exc})")
                continue
            if arr.shape != (attrs.capacity, s, s, s):
                report.problems.append(f"{path}: shape {arr.shape}, expected {(attrs.capacity, s, s, s)}")
            if array_meta.get("data_type") != dtype:
                report.problems.append(f"{path}: data type {array_meta.get('data_type')!r}, expected {dtype!r}")
            if arr.shard_len != attrs.shard_patches:
                report.problems.append(f"{path}: {arr.shard_len} patches per shard, "
                                       f"attributes say {attrs.shard_patches}")
            arrays[(s, name)] = arr
    return arrays


def _read_parquet(location: StoreLocation, rel: str, report: VerifyReport):
    import pyarrow.parquet as pq

    try:
        return pq.read_table(io.BytesIO(location.read(rel)), page_checksum_verification=True)
    except FileNotFoundError:
        report.problems.append(f"{rel} is missing")
    except Exception as exc:  # noqa: BLE001 - any unreadable table is a finding, not a crash
        report.problems.append(f"{rel}: not a readable Parquet file ({type(exc).__name__}: {exc})")
    return None


def check_manifest(location: StoreLocation, attrs: StoreAttributes, report: VerifyReport):
    """Columns and types, rows inside the arrays, uniqueness; returns the manifest (or None)."""
    table = _read_parquet(location, MANIFEST_FILE, report)
    if table is None:
        return None
    schema = {f.name: str(f.type) for f in table.schema}
    bad = False
    for col, dtype in MANIFEST_COLUMNS.items():
        if col not in schema:
            report.problems.append(f"{MANIFEST_FILE}: column {col!r} is missing")
            bad = True
        elif schema[col] not in _ARROW_TYPES[dtype]:
            report.problems.append(f"{MANIFEST_FILE}: column {col!r} is {schema[col]}, expected {dtype}")
            bad = True
    if bad:
        return None
    m = table.select(list(MANIFEST_COLUMNS)).to_pandas()
    report.rows_checked = len(m)
    where = MANIFEST_FILE
    for col in ("sample_id", "seriesuid", "subset", "scale", "index", "kind", "fg_voxels", "annotation_index"):
        n = int(m[col].isna().sum())
        if n:
            report.problems.append(f"{where}: {n} rows with no {col}")
    idx = m["index"].to_numpy()
    out = (idx < 0) | (idx >= attrs.capacity)
    if out.any():
        report.problems.append(f"{where}: {int(out.sum())} rows with index outside 0..{attrs.capacity - 1} "
                               f"(e.g. {int(idx[out][0])})")
    bad_scale = ~m["scale"].isin(attrs.scales)
    if bad_scale.any():
        report.problems.append(f"{where}: {int(bad_scale.sum())} rows with a scale not in {list(attrs.scales)} "
                               f"(e.g. {int(m.loc[bad_scale, 'scale'].iloc[0])})")
    bad_kind = ~m["kind"].isin(KINDS)
    if bad_kind.any():
        report.problems.append(f"{where}: {int(bad_kind.sum())} rows with a kind not in {list(KINDS)} "
                               f"(e.g. {m.loc[bad_kind, 'kind'].iloc[0]!r})")
    dup = m.duplicated(["sample_id", "scale"])
    if dup.any():
        report.problems.append(f"{where}: {int(dup.sum())} duplicate (sample_id, scale) rows "
                               f"(e.g. sample {int(m.loc[dup, 'sample_id'].iloc[0])})")
    if (m["fg_voxels"] < 0).any():
        report.problems.append(f"{where}: negative fg_voxels")
    if len(m) and not dup.any():
        per = m.groupby("sample_id").agg(n=("scale", "size"), rows=("index", "nunique"))
        if (per["rows"] != 1).any():
            report.problems.append(f"{where}: {int((per['rows'] != 1).sum())} samples whose patches are not all "
                                   "at the same row")
        if (per["n"] != len(attrs.scales)).any():
            report.problems.append(f"{where}: {int((per['n'] != len(attrs.scales)).sum())} samples without one "
                                   f"patch per scale {list(attrs.scales)}")
    return m


def check_scans(location: StoreLocation, manifest, report: VerifyReport):
    """Every manifest row's scan recorded as ok; returns the scans table (or None)."""
    table = _read_parquet(location, SCANS_FILE, report)
    if table is None:
        return None
    names = set(table.schema.names)
    if not {"seriesuid", "status"} <= names:
        report.problems.append(f"{SCANS_FILE}: needs columns seriesuid and status")
        return None
    scans = table.select([c for c in ("seriesuid", "status", "resampled_shape_zyx") if c in names]).to_pandas()
    if manifest is not None:
        ok = set(scans.loc[scans["status"] == "ok", "seriesuid"])
        orphans = sorted(set(manifest["seriesuid"].dropna()) - ok)
        if orphans:
            report.problems.append(f"{MANIFEST_FILE}: rows of {len(orphans)} scans not recorded as ok in "
                                   f"{SCANS_FILE} (e.g. {orphans[0]})")
    return scans


def check_volumes(location: StoreLocation, attrs: StoreAttributes, scans, report: VerifyReport) -> None:
    """Each ok scan's whole-scan volumes (stores built with --volumes): metadata as the reader accepts it
    (dtype, codecs, shape against the scans table), then every chunk decoded (and its crc32c checked)."""
    if not attrs.build_config.get("volumes") or scans is None:
        return
    shapes = scans.get("resampled_shape_zyx")
    for i, uid in enumerate(scans["seriesuid"]):
        if scans["status"].iloc[i] != "ok":
            continue
        shape = None if shapes is None else shapes.iloc[i]
        for name, dtype in ((VOLUME_IMAGE, attrs.image_dtype), (VOLUME_LUNGS, "uint8")):
            path = volume_path(uid, name)
            try:
                open_volume(location, path, dtype, shape, attrs.chunk_checksums).read(location)
                report.volumes_read += 1
            except FileNotFoundError:
                report.problems.append(f"{path} is missing (the store was built with --volumes)")
            except FormatError as exc:
                report.problems.append(str(exc))
            except Exception as exc:  # noqa: BLE001 - e.g. a zip entry's bad CRC or an HTTP 500: a finding
                report.problems.append(f"{path}: unreadable ({type(exc).__name__}: {exc})")


def _rows(indices) -> str:
    rows = sorted(int(i) for i in indices)
    return ", ".join(map(str, rows)) if len(rows) <= 4 else f"{rows[0]}..{rows[-1]} ({len(rows)} rows)"


def check_patches(arrays: dict, manifest, attrs: StoreAttributes, report: VerifyReport) -> None:
    """Read every shard any manifest row uses; each row's mask sum must equal fg_voxels, and its image must be
    stored: an image shard file missing under manifest rows, or an image not stored under a mask with
    foreground, reads as a blank patch (the writer leaves out only all-0 images, and a shard of nothing else)."""
    bad, unreadable, blank = [], [], []
    for s in attrs.scales:
        mask_arr, image_arr = arrays.get((s, MASK_ARRAY)), arrays.get((s, IMAGE_ARRAY))
        if mask_arr is None or image_arr is None:
            continue
        rows = manifest[manifest["scale"] == s]
        rows = rows[(rows["index"] >= 0) & (rows["index"] < attrs.capacity)]
        for shard, group in rows.groupby(rows["index"] // attrs.shard_patches):
            try:
                masks = mask_arr.read_shard(int(shard)) or {}
                images = image_arr.read_shard(int(shard))
            except Exception as exc:  # noqa: BLE001 - a corrupt shard is a finding
                unreadable.append(f"{array_path(s, '*')} shard {int(shard)}: {type(exc).__name__}: {exc}")
                continue
            if images is None:
                unreadable.append(f"{image_arr.shard_key(int(shard))} is missing, yet manifest rows "
                                  f"{_rows(group['index'])} use it: they would read as blank images")
            for r in group.itertuples():
                mask = masks.get(int(r.index))
                total = 0 if mask is None else int(np.count_nonzero(mask))
                if mask is not None and mask.max(initial=0) > 1:
                    bad.append(f"scale {s} row {r.index}: mask values above 1")
                if total != int(r.fg_voxels):
                    bad.append(f"scale {s} row {r.index} (sample {r.sample_id}): mask has {total} voxels, "
                               f"fg_voxels says {r.fg_voxels}")
                if images is not None and total and int(r.index) not in images:
                    blank.append(f"scale {s} row {r.index} (sample {r.sample_id}) in "
                                 f"{image_arr.shard_key(int(shard))}")
                report.patches_read += 1
    report.problems += unreadable
    if bad:
        report.problems.append(f"{len(bad)} patches whose mask disagrees with the manifest; first: {bad[0]}")
    if blank:
        report.problems.append(f"{len(blank)} patches whose image is not stored (a blank patch) under a mask with "
                               f"foreground; first: {blank[0]}")


def verify(target: str, store_url: str | None = None, deep: bool = False) -> VerifyReport:
    """Verify a store (folder, .zip or URL), or a card and the store it describes."""
    target = str(target)
    report = VerifyReport(target=target)
    card = None
    if is_card(target):
        try:
            card = load_card(target)
            report.card = target
            report.store = card_store_location(card, store_url, target)
        except (CardError, FileNotFoundError, OSError) as exc:
            report.problems.append(str(exc))
            return report
    else:
        report.store = store_url or target
    try:
        location = StoreLocation.open(report.store)
    except (FileNotFoundError, OSError, ValueError) as exc:
        report.problems.append(f"cannot open {report.store}: {exc}")
        return report
    try:  # first, so that a location that cannot be reached is one problem, not one per card file
        root = location.read(ROOT_METADATA)
    except FileNotFoundError:
        root = None
    except OSError as exc:  # a location that cannot be reached, or a damaged entry of a .zip
        report.problems.append(f"cannot read {ROOT_METADATA}: {exc}")
        if card is not None and not is_url(report.store):  # a local .zip: its other files can still be checked
            check_against_card(location, card, report)
        return report
    if location.is_http:
        check_ranges(location, report)
    if card is not None:
        check_against_card(location, card, report)
    if root is None:
        report.problems.append(f"{ROOT_METADATA} is missing: not a Zarr v3 store")
        return report
    try:
        meta = json.loads(root)
    except ValueError as exc:
        report.problems.append(f"{ROOT_METADATA} is not valid JSON ({exc})")
        return report
    try:
        attrs = root_attributes(meta, where=ROOT_METADATA)
    except (FormatError, KeyError, TypeError, ValueError, IndexError) as exc:
        report.problems.append(str(exc) if isinstance(exc, FormatError) else f"{ROOT_METADATA}: bad attributes ({exc})")
        return report
    report.format_version = attrs.format_version
    if card is not None and card.get("config_hash") != attrs.config_hash:
        report.problems.append(f"zarr.json: config hash {attrs.config_hash[:12]} "
                               f"!= card {str(card.get('config_hash'))[:12]}")
    if not attrs.scales or attrs.capacity < 0 or attrs.shard_patches < 1:
        report.problems.append(f"zarr.json: bad scales/capacity/shard_patches "
                               f"({list(attrs.scales)}, {attrs.capacity}, {attrs.shard_patches})")
        return report
    arrays = check_arrays(location, meta, attrs, report)
    manifest = check_manifest(location, attrs, report)
    scans = check_scans(location, manifest, report)
    if deep and manifest is not None:
        check_patches(arrays, manifest, attrs, report)
    if deep:
        check_volumes(location, attrs, scans, report)
    return report
