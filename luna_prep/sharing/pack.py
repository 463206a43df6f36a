"""``luna-prep pack``: a store as one ``.zip`` to copy or serve.

Entries are STORED (not deflated: shards are already compressed, and stored entries can be read
by byte range, which is how patches are read), at store-relative paths from the zip's root, with
``_build/`` left out. Small metadata files come first, then the rest sorted; timestamps are fixed,
so packing the same store twice gives the same bytes. ``PatchStore("x.zip")``, ``luna-prep verify
x.zip`` and zarr's ``ZipStore`` read the result directly, locally or over HTTP.
"""

from __future__ import annotations

import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

from luna_prep.errors import InputError
from luna_prep.files import atomic_path
from luna_prep.format.spec import ROOT_METADATA, FormatError
from luna_prep.sharing.cards import SMALL_FILES, store_files

_EPOCH = (1980, 1, 1, 0, 0, 0)


@dataclass
class PackReport:
    zip_path: Path
    files: int
    bytes: int


def pack_store(store: str | Path, out_zip: str | Path) -> PackReport:
    """Write every file of the local store folder ``store`` (``_build/`` excluded) into ``out_zip``."""
    root = Path(store)
    if not (root / ROOT_METADATA).is_file():
        raise FormatError(f"{root}: no zarr.json, not a store folder")
    out = Path(out_zip)
    if out.suffix.lower() != ".zip":
        raise InputError(f"{out}: the packed store's name must end in .zip")
    if out.resolve().is_relative_to(root.resolve()):
        raise InputError(f"{out}: cannot write the zip inside the store it packs")
    rels = store_files(root)
    rels = [r for r in SMALL_FILES if r in rels] + [r for r in rels if r not in SMALL_FILES]
    total = 0
    with atomic_path(out) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            for rel in rels:
                src = root / rel
                size = src.stat().st_size
                info = zipfile.ZipInfo(rel, date_time=_EPOCH)
                info.compress_type = zipfile.ZIP_STORED
                info.external_attr = 0o644 << 16
                info.file_size = size
                with open(src, "rb") as fin, zf.open(info, "w", force_zip64=size >= 2**31) as fout:
                    shutil.copyfileobj(fin, fout, 1 << 22)
                total += size
    return PackReport(zip_path=out, files=len(rels), bytes=total)
