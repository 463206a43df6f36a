"""Dataset cards: a small JSON file per built store, for sharing it and for finding it again.

``luna-prep build`` writes ``manifests/<name>.json`` when a build finishes. A card says what the
store holds (format version, build configuration and its hash, software version, patch counts by
subset x kind x scale), where it was written, and the sha256 and size of every file of the store
(``_build/`` excluded). The store itself lives elsewhere (a shared filesystem, a web server, a
bucket or a ``.zip``); the card is what people commit or send around.

Readers call :func:`resolve_dataset`: given a card it returns the store's location after checking
the store's small files (``zarr.json``, ``manifest.parquet``, ``scans.parquet``) against the card,
so a model is never trained on a different store than the card describes. ``pinned=True`` (or
:func:`open_dataset`) goes further: the reader holds the checked bytes
and checks every other file against the card when it first reads it, so the store cannot change
under a run either (:mod:`luna_prep.format.pins`). ``luna-prep verify``
checks every file (:mod:`luna_prep.sharing.verify`).
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pandas as pd

from luna_prep import __version__
from luna_prep.errors import LunaError
from luna_prep.files import is_temporary, sha256_bytes, sha256_file, write_text_atomic
from luna_prep.format.location import (
    StoreLocation,
    UnsafePathError,
    is_url,
    safe_relpath,
)
from luna_prep.format.pins import StorePins
from luna_prep.format.reader import PatchStore
from luna_prep.format.spec import (
    BUILD_DIR,
    FORMAT_NAME,
    MANIFEST_FILE,
    READABLE_VERSIONS,
    ROOT_METADATA,
    SCANS_FILE,
)

CARD_FORMAT = "luna-patches-card"
CARD_VERSION = 1
DEFAULT_MANIFESTS_DIR = "manifests"
# Files checked against the card each time a reader resolves a card (cheap: a few requests).
SMALL_FILES = (ROOT_METADATA, MANIFEST_FILE, SCANS_FILE)
# Root attributes a card repeats (the build configuration and hash have their own entries).
_CARD_ATTRIBUTES = ("spacing_mm", "hu_window", "scales", "image_dtype", "shard_patches", "capacity")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class CardError(LunaError, ValueError):
    """A card that is not valid, or a store that does not match its card."""


class ChecksumMismatch(CardError):
    """A store file whose bytes differ from what the card recorded."""


def default_name(store_path: str | Path) -> str:
    """Card name from the store's path: ``data/patches.zarr`` -> ``patches``."""
    s = str(store_path).rstrip("/")
    base = s.rsplit("/", 1)[-1] if is_url(s) else Path(s).name
    for suffix in (".zip", ".zarr"):
        if base.lower().endswith(suffix):
            base = base[: -len(suffix)]
    return base or "dataset"


def card_path(name: str, manifests_dir: str | Path = DEFAULT_MANIFESTS_DIR) -> Path:
    if not _NAME.match(name):
        raise CardError(f"card name {name!r}: use letters, digits, '.', '_' and '-' (no '/')")
    return Path(manifests_dir) / f"{name}.json"


def card_slot(name: str | None, store_path: str | Path, manifests_dir: str | Path = DEFAULT_MANIFESTS_DIR) -> Path:
    """Where the card of the local store ``store_path`` goes: ``manifests_dir/<name>.json``. With the default name
    (``name`` None), a card there that describes another store is refused, not replaced: two stores both called
    ``patches.zarr`` would otherwise share one card, the last build's."""
    out = card_path(name or default_name(store_path), manifests_dir)
    if name is None and out.is_file():
        try:
            other = json.loads(out.read_text()).get("store", {}).get("absolute")
        except (OSError, ValueError, AttributeError):
            other = None  # not a readable card: replaced as before
        if other and Path(other) != Path(store_path).resolve():
            raise CardError(f"{out}: already the card of another store ({other}); give this store's card another "
                            "name with --name, or remove that card")
    return out


def store_files(root: str | Path) -> list[str]:
    """Relative paths of every file of a local store folder, sorted; ``_build/`` and temporaries a killed
    write left behind are not part of the data."""
    return sorted(_walk_files(str(root)))


def _walk_files(root: str) -> list[str]:
    """Files under ``root`` as relative posix paths: one scandir per folder, no stat per file, symlinked folders
    not entered (as ``Path.rglob``); ``_build`` at the top and temporaries left out."""
    out, folders = [], [(root, "")]
    while folders:
        folder, prefix = folders.pop()
        with os.scandir(folder) as entries:
            for entry in entries:
                if not prefix and entry.name == BUILD_DIR:
                    continue
                if entry.is_dir(follow_symlinks=False):
                    folders.append((entry.path, f"{prefix}{entry.name}/"))
                elif entry.is_file() and not is_temporary(entry.name):
                    out.append(prefix + entry.name)
    return out


def file_checksums(root: str | Path, threads: int = 4, files_per_task: int = 256,
                   known: Mapping[str, Sequence] | None = None) -> list[dict]:
    """``[{path, size, sha256}]`` for every file of a local store (hashing in a few threads, a batch of files
    per task: a store has ~25 small files per scan). ``known``: ``{path: (sha256, size)}`` hashed by whoever
    wrote the file (a build's scan tasks); taken where the file still has that size, the rest is read."""
    root = Path(root)
    rels = store_files(root)
    known = known or {}
    digests = {rel: (str(known[rel][0]), int(known[rel][1])) for rel in rels
               if rel in known and os.stat(root / rel).st_size == int(known[rel][1])}
    todo = [rel for rel in rels if rel not in digests]
    batches = [todo[i:i + files_per_task] for i in range(0, len(todo), files_per_task)]
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        for batch, found in zip(batches, pool.map(lambda b: [sha256_file(root / rel) for rel in b], batches)):
            digests.update(zip(batch, found))
    return [{"path": rel, "size": digests[rel][1], "sha256": digests[rel][0]} for rel in rels]


def count_records(manifest: pd.DataFrame) -> list[dict]:
    """Patches by subset x kind x scale, as sorted records."""
    if manifest.empty:
        return []
    g = manifest.groupby(["subset", "kind", "scale"]).size().reset_index(name="patches")
    return [{"subset": int(r.subset), "kind": str(r.kind), "scale": int(r.scale), "patches": int(r.patches)}
            for r in g.sort_values(["subset", "kind", "scale"]).itertuples()]


def write_card(store_path: str | Path, name: str | None = None,
               manifests_dir: str | Path = DEFAULT_MANIFESTS_DIR, known: Mapping[str, Sequence] | None = None) -> Path:
    """Write ``manifests_dir/<name>.json`` describing the local store ``store_path``; return its path.

    Call it once the build has finished (failed scans included: the card records what exists). ``known``:
    digests the build's scan tasks took of the files they wrote (see :func:`file_checksums`).
    """
    root = Path(store_path)
    out = card_slot(name, store_path, manifests_dir)
    name = name or default_name(store_path)
    store = PatchStore(root)
    attrs, manifest, scans = store.attrs, store.manifest, store.scans
    status = scans["status"]
    files = file_checksums(root, known=known)
    card: dict[str, Any] = {
        "card_format": CARD_FORMAT,
        "card_version": CARD_VERSION,
        "name": name,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "format": FORMAT_NAME,
        "format_version": attrs.format_version,
        "software_version": attrs.software_version,
        "card_written_by": __version__,
        "config_hash": attrs.config_hash,
        "build_config": attrs.build_config,
        "attributes": {k: v for k, v in attrs.to_attrs().items() if k in _CARD_ATTRIBUTES},
        "store": {
            "location": str(store_path),
            "absolute": None if is_url(str(store_path)) else str(root.resolve()),
        },
        "totals": {
            "scans_ok": int((status == "ok").sum()),
            "scans_failed": int((status != "ok").sum()),
            "samples": int(manifest["sample_id"].nunique()),
            "patches": len(manifest),
            "files": len(files),
            "bytes": int(sum(f["size"] for f in files)),
        },
        "counts": count_records(manifest),
        "failed_scans": [str(u) for u in scans.loc[status != "ok", "seriesuid"]] if len(scans) else [],
        "files": files,
    }
    write_text_atomic(out, _dump_card(card))
    return out


def _dump_card(card: dict) -> str:
    """JSON with one line per file / count record, so cards diff well under version control."""
    parts = []
    for key, value in card.items():
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            body = ",\n".join(f"  {json.dumps(v)}" for v in value)
            parts.append(f" {json.dumps(key)}: [\n{body}\n ]")
        else:
            parts.append(f" {json.dumps(key)}: {json.dumps(value)}")
    return "{\n" + ",\n".join(parts) + "\n}\n"


def _read_text(path: str | Path) -> str:
    if is_url(str(path)):
        import fsspec

        with fsspec.open(str(path), "rt") as f:
            return f.read()
    return Path(path).read_text()


def validate_card(card: Any, where: str = "card") -> dict:
    """Check a parsed card's structure; return it. Paths escaping the store are refused."""
    if not isinstance(card, dict):
        raise CardError(f"{where}: not a JSON object")
    if card.get("card_format") != CARD_FORMAT:
        raise CardError(f"{where}: not a {CARD_FORMAT} (card_format={card.get('card_format')!r})")
    if card.get("card_version") != CARD_VERSION:
        raise CardError(f"{where}: card_version {card.get('card_version')!r}, this software reads {CARD_VERSION}")
    version = card.get("format_version")
    if card.get("format") != FORMAT_NAME or isinstance(version, bool) or version not in READABLE_VERSIONS:
        raise CardError(f"{where}: describes a {card.get('format')!r} v{version!r} store, "
                        f"this software reads {FORMAT_NAME} v{', v'.join(map(str, READABLE_VERSIONS))}")
    store = card.get("store")
    if not isinstance(store, dict) or not isinstance(store.get("location"), str):
        raise CardError(f"{where}: no store location")
    files = card.get("files")
    if not isinstance(files, list) or not files:
        raise CardError(f"{where}: no file list")
    seen = set()
    for i, f in enumerate(files):
        if not isinstance(f, dict):
            raise CardError(f"{where}: files[{i}] is not an object")
        try:
            rel = safe_relpath(f.get("path"), where)
        except UnsafePathError as exc:
            raise CardError(str(exc)) from exc
        if rel != f["path"]:
            raise CardError(f"{where}: path {f['path']!r} is not normalized")
        if rel.split("/", 1)[0] == BUILD_DIR:
            raise CardError(f"{where}: {rel} is build bookkeeping, not part of a store")
        if rel in seen:
            raise CardError(f"{where}: {rel} listed twice")
        seen.add(rel)
        if not isinstance(f.get("sha256"), str) or not _SHA256.match(f["sha256"]):
            raise CardError(f"{where}: {rel}: sha256 must be 64 lowercase hex digits")
        if not isinstance(f.get("size"), int) or isinstance(f["size"], bool) or f["size"] < 0:
            raise CardError(f"{where}: {rel}: size must be a non-negative integer")
    missing = [s for s in SMALL_FILES if s not in seen]
    if missing:
        raise CardError(f"{where}: file list lacks {missing}")
    return card


def load_card(path: str | Path) -> dict:
    """Read and validate a card (a local path or a URL)."""
    try:
        card = json.loads(_read_text(path))
    except json.JSONDecodeError as exc:
        raise CardError(f"{path}: not valid JSON ({exc})") from exc
    return validate_card(card, where=str(path))


def is_card(dataset: str | Path) -> bool:
    return str(dataset).lower().endswith(".json")


def card_store_location(card: dict, store_url: str | None = None, card_file: str | Path | None = None) -> str:
    """Where the card's store is: ``store_url`` if given, else the recorded location.

    A local store is looked for at its recorded absolute path, then at the location as given
    (relative to the current directory). Raises FileNotFoundError naming both when neither exists.
    """
    if store_url:
        return str(store_url)
    loc = card["store"]["location"]
    if is_url(loc):
        return loc
    absolute = card["store"].get("absolute")
    for candidate in (absolute, loc):
        if candidate and Path(candidate).exists():
            return str(candidate)
    where = f"{card_file}: " if card_file else ""
    raise FileNotFoundError(
        f"{where}store not found at {absolute or loc!r}" + (f" nor {loc!r}" if absolute and absolute != loc else "")
        + "; pass --store-url with where the store (folder, .zip or URL) is now"
    )


def check_files(location: StoreLocation, card: dict, rels: tuple[str, ...] | list[str] = SMALL_FILES,
                card_file: str | Path = "card") -> dict[str, bytes]:
    """Compare some of the store's files with the card; raise :class:`ChecksumMismatch` naming the file.
    Returns the checked files' bytes, to hold (a reader pinned to the card never re-reads them)."""
    expected = {f["path"]: f for f in card["files"]}
    checked = {}
    for rel in rels:
        want = expected.get(rel)
        if want is None:
            raise CardError(f"{card_file}: {rel} is not in the card's file list")
        try:
            data = location.read(rel)
        except FileNotFoundError as exc:
            raise ChecksumMismatch(f"{location.display}: {rel} is missing (the card {card_file} lists it)") from exc
        got = sha256_bytes(data)
        if got != want["sha256"] or len(data) != want["size"]:
            raise ChecksumMismatch(
                f"{location.display}: {rel} does not match the card {card_file} "
                f"(sha256 {got[:12]}..., {len(data)} bytes; card: {want['sha256'][:12]}..., {want['size']} bytes). "
                "The store changed since the card was written: rebuild the card, or pass --no-verify"
            )
        checked[rel] = data
    return checked


# Where a card's store was said to be (--store-url), for processes that reopen the card by its path
# (DataLoader workers, spawned or forked): {absolute card path: store location}.
_STORE_URLS_ENV = "LUNA_PREP_CARD_STORES"


def _store_urls() -> dict[str, str]:
    try:
        return json.loads(os.environ.get(_STORE_URLS_ENV) or "{}")
    except json.JSONDecodeError:
        return {}


def card_pins(card_file: str, store_url: str | None = None) -> tuple[str, StorePins]:
    """(store location, pins) of a card: the small files are checked now and their bytes held; every
    other file is checked against the card when first read (:class:`~luna_prep.format.pins.PinnedLocation`)."""
    card = load_card(card_file)
    key = card_file if is_url(card_file) else str(Path(card_file).resolve())
    location = card_store_location(card, store_url or _store_urls().get(key), card_file)
    held = check_files(StoreLocation.open(location), card, SMALL_FILES, card_file)
    files = {f["path"]: (int(f["size"]), str(f["sha256"])) for f in card["files"]}
    return location, StorePins(source=str(card_file), files=files, held=held)


def open_dataset(dataset: str, store_url: str | None = None, verify: bool = True) -> PatchStore:
    """A :class:`PatchStore` of ``dataset``: a store as is, or a card's store pinned to the card
    (``verify``; without it, the card's store unchecked)."""
    if is_card(dataset) and verify:
        return PatchStore(*card_pins(str(dataset), store_url))
    return PatchStore(resolve_dataset(dataset, store_url, verify))


def resolve_dataset(dataset: str, store_url: str | None = None, verify: bool = True, pinned: bool = False) -> str:
    """The store to read for ``dataset``: a store path/URL is returned unchanged; a card (``.json``)
    gives its store's location (or ``store_url``), after checking the store's small files against
    the card when ``verify`` (a mismatch raises :class:`ChecksumMismatch` naming the file).

    With ``pinned`` (and ``verify``) the card itself is returned instead, after the same check:
    ``open_dataset(card)``, in this process or any it starts, reads the store pinned to the card (the
    small files' checked bytes held, every other file checked against the card on first read), so
    the store cannot change under the run. ``store_url`` is remembered for those processes.
    """
    dataset = str(dataset)
    if not is_card(dataset):
        return dataset
    card = load_card(dataset)
    try:
        location = card_store_location(card, store_url, dataset)
    except FileNotFoundError:
        if not verify:
            return card["store"]["location"]
        raise
    if verify:
        check_files(StoreLocation.open(location), card, SMALL_FILES, dataset)
        if pinned:
            if store_url:
                key = dataset if is_url(dataset) else str(Path(dataset).resolve())
                os.environ[_STORE_URLS_ENV] = json.dumps(_store_urls() | {key: str(store_url)})
            return dataset
    return location
