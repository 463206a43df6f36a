"""LUNA16 tables and folders: annotations, candidates, subsets and the scans in them."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from luna_prep.errors import LunaError

ANNOTATION_COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ", "diameter_mm")
CANDIDATE_COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ", "class")
MAX_DIAMETER_MM = 100.0  # LUNA16's largest nodule is 32.3 mm; anything past this is a typo, not a nodule
CANDIDATE_CLASSES = (0, 1)
LUNA16_SUBSETS = tuple(range(10))  # subset0 .. subset9


class TableError(LunaError, ValueError):
    """An annotations or candidates table that cannot be used."""


@dataclass(frozen=True)
class ScanFile:
    """One scan of the data root: its seriesuid, LUNA16 subset and .mhd path."""

    seriesuid: str
    subset: int
    path: Path


def parse_subsets(spec: str) -> list[int]:
    """Parse ``0-9``, ``3``, ``0,2,5`` or ``0-3,7`` into a sorted list of LUNA16 subset numbers (0-9)."""
    out: set[int] = set()
    for part in str(spec).replace(" ", "").split(","):
        if not part:
            continue
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise ValueError(f"bad subset spec {spec!r}: expected e.g. 0-9, 3, 0,2,5 or 0-3,7")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        if hi < lo:
            raise ValueError(f"bad subset range {part!r} in {spec!r}: end before start")
        out.update(range(lo, hi + 1))
    if not out:
        raise ValueError(f"bad subset spec {spec!r}: no subsets")
    missing = sorted(out - set(LUNA16_SUBSETS))
    if missing:
        raise ValueError(f"bad subset spec {spec!r}: LUNA16 has subsets {LUNA16_SUBSETS[0]}-{LUNA16_SUBSETS[-1]}, "
                         f"not {', '.join(map(str, missing))}")
    return sorted(out)


def _read_table(path: Path, columns: tuple[str, ...], what: str) -> pd.DataFrame:
    """The table's ``columns``, checked; its index is each row's file line - 2 (blank lines skipped, not
    renumbered), which :func:`_refuse` names."""
    try:  # CRLF is fine; floats parse exactly (pandas >= 3)
        df = pd.read_csv(path, dtype={"seriesuid": str}, skip_blank_lines=False)
    except Exception as exc:
        raise TableError(f"{path}: cannot read {what} ({exc})") from exc
    df.columns = [c.strip() for c in df.columns]
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise TableError(f"{path}: {what} lacks columns {missing}; expected {','.join(columns)}")
    df = df.loc[~df.isna().all(axis=1), list(columns)].copy()
    df["seriesuid"] = df["seriesuid"].str.strip()
    _refuse(path, what, df["seriesuid"].isna() | (df["seriesuid"] == ""), "has an empty seriesuid")
    for col in columns[1:]:
        df[col] = pd.to_numeric(df[col], errors="coerce")
    _refuse(path, what, df[list(columns[1:])].isna().any(axis=1), "has a non-numeric or empty value")
    _refuse(path, what, ~np.isfinite(df[list(columns[1:])]).all(axis=1), "has an infinite value")
    return df


def _refuse(path: Path, what: str, bad: pd.Series, problem: str) -> None:
    """Raise a TableError naming the first file line (1-based, counting the header) where ``bad`` holds."""
    if bad.any():
        raise TableError(f"{path}: {what} line {_line(bad.index[bad.to_numpy()][0])} {problem}")


def _line(index) -> int:
    return int(index) + 2


def read_annotations(path: str | Path) -> pd.DataFrame:
    """annotations.csv (``seriesuid,coordX,coordY,coordZ,diameter_mm``) with its row numbers kept
    (``annotation_index``: 0, 1, ... over the nodules, blank lines not counted)."""
    df = _read_table(Path(path), ANNOTATION_COLUMNS, "annotations")
    d = df["diameter_mm"]
    _refuse(Path(path), "annotations", (d <= 0) | (d > MAX_DIAMETER_MM),
            f"has diameter_mm outside (0, {MAX_DIAMETER_MM:g}] mm")
    copies = df.duplicated(list(ANNOTATION_COLUMNS), keep="first")
    if copies.any():  # one nodule listed twice would get twice its samples
        again = copies.index[copies.to_numpy()][0]
        first = df.index[(df == df.loc[again]).all(axis=1).to_numpy()][0]
        raise TableError(f"{path}: annotations lines {_line(first)} and {_line(again)} are the same nodule "
                         "(every value equal); remove one copy")
    df = df.reset_index(drop=True)
    df["annotation_index"] = range(len(df))
    return df


def read_candidates(path: str | Path) -> pd.DataFrame:
    """candidates.csv / candidates_V2.csv (``seriesuid,coordX,coordY,coordZ,class``)."""
    df = _read_table(Path(path), CANDIDATE_COLUMNS, "candidates")
    _refuse(Path(path), "candidates", ~df["class"].isin(CANDIDATE_CLASSES),
            f"has class outside {CANDIDATE_CLASSES} (0: not a nodule, 1: nodule)")
    df = df.reset_index(drop=True)
    df["class"] = df["class"].astype(int)
    return df


def default_annotations(data_root: str | Path) -> Path:
    return Path(data_root) / "annotations.csv"


def default_candidates(data_root: str | Path) -> Path | None:
    """candidates_V2.csv, candidates_V2/candidates_V2.csv or candidates.csv, first that exists."""
    root = Path(data_root)
    for p in (root / "candidates_V2.csv", root / "candidates_V2" / "candidates_V2.csv", root / "candidates.csv"):
        if p.is_file():
            return p
    return None


def missing_candidates_note(data_root: str | Path) -> str:
    """What a build without a candidates file says: its negatives are all random, none at class-0 candidates."""
    root = Path(data_root)
    packed = [p.name for p in (root / "candidates_V2.zip", root / "candidates.zip") if p.is_file()]
    return (f"no candidates file under {root}: negatives are random only (no hard negatives)"
            + (f"; {packed[0]} is not extracted: unzip it there" if packed else ""))


def is_hidden(path: Path) -> bool:
    """A name starting with '.': not a scan (macOS writes ._<uid>.mhd resource forks next to copied files)."""
    return path.name.startswith(".")


def _subset_mhds(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.mhd") if not is_hidden(p))


def subset_notes(data_root: str | Path, subsets: list[int]) -> list[str]:
    """Warnings about the chosen subset folders: one holding no .mhd scan (and where its scans are when they sit
    one folder too deep, subsetK/subsetK), scans ending .MHD (not read) and hidden .mhd files (skipped)."""
    root, notes, hidden = Path(data_root), [], []
    for k in subsets:
        folder = root / f"subset{k}"
        if not folder.is_dir():
            continue
        hidden += [p for p in folder.glob("*.mhd") if is_hidden(p)]
        upper = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".mhd" and p.suffix != ".mhd"
                       and not is_hidden(p))
        if upper:
            notes.append(f"{folder}: {len(upper)} scans ending in {upper[0].suffix} skipped (first: {upper[0].name}); "
                         "only .mhd is read: rename them")
        elif not _subset_mhds(folder):
            nested = [d for d in sorted(folder.iterdir()) if d.is_dir() and _subset_mhds(d)]
            notes.append(f"{folder}: no .mhd scans" + (f"; they are in {folder.name}/{nested[0].name}: move them up "
                                                       "one folder" if nested else ""))
    if hidden:
        notes.append(f"{len(hidden)} hidden .mhd files skipped (names starting with '.', such as macOS's ._<uid>.mhd; "
                     f"first: {sorted(hidden)[0]})")
    return notes


def find_scans(data_root: str | Path, subsets: list[int]) -> list[ScanFile]:
    """Every ``subset<k>/<seriesuid>.mhd`` of the chosen subsets, sorted by (subset, seriesuid); hidden files
    (``._<uid>.mhd``) are not scans (:func:`subset_notes` counts them).

    A seriesuid found twice is refused before anything is built: both copies would claim the same
    rows and resume record, and LUNA16 holds each scan once."""
    root = Path(data_root)
    scans: list[ScanFile] = []
    for k in subsets:
        folder = root / f"subset{k}"
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: subset folder not found under data root {root}")
        for mhd in _subset_mhds(folder):
            scans.append(ScanFile(seriesuid=mhd.stem, subset=k, path=mhd))
    seen: dict[str, Path] = {}
    for scan in scans:
        if scan.seriesuid in seen:
            raise TableError(f"{scan.path}: seriesuid {scan.seriesuid} is also {seen[scan.seriesuid]}; "
                             "each scan may be in one subset only (remove one copy)")
        seen[scan.seriesuid] = scan.path
    return scans
