"""Reading a scan with SimpleITK, with errors that name the file and the problem."""

from __future__ import annotations

import os
import re
import zlib
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from luna_prep.errors import LunaError

_BYTES_PER_ELEMENT = {
    "MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4,
    "MET_UINT": 4, "MET_FLOAT": 4, "MET_DOUBLE": 8, "MET_LONG": 4, "MET_ULONG": 4,  # MetaIO's LONG is 32-bit
    "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8,
}


MAX_VOXELS = 2**31  # 2048 x 2048 x 512; LUNA16's largest scan has 512 x 512 x 764 = 2e8


class ScanReadError(LunaError, RuntimeError):
    """A scan that cannot be read; the message names the file and the problem."""


def read_mhd_header(path: Path) -> dict[str, str]:
    """The ``key = value`` lines of a MetaImage header."""
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        raise ScanReadError(f"{path}: cannot read header ({exc.strerror})") from exc
    header = {}
    for line in text.splitlines():
        if "=" in line:
            key, value = line.split("=", 1)
            header[key.strip()] = value.strip()
    return header


def _numbers(path: Path, header: dict[str, str], key: str, count: int, default: str | None = None) -> list[float]:
    """``count`` finite numbers from a header line, or a ScanReadError naming the key."""
    raw = header.get(key, default)
    if raw is None:
        raise ScanReadError(f"{path}: bad header, no {key} line")
    try:
        values = [float(v) for v in raw.split()]
    except ValueError:
        values = []
    if len(values) != count or not np.all(np.isfinite(values)):
        raise ScanReadError(f"{path}: bad header, {key} = {raw!r} (expected {count} numbers)")
    return values


def _check_geometry(path: Path, header: dict[str, str]) -> list[int]:
    """DimSize, spacing, origin and direction of a 3D header, checked before ITK sees them."""
    if header["NDims"].strip() != "3":
        raise ScanReadError(f"{path}: bad header, NDims = {header['NDims']!r}; a CT scan is 3D")
    dims = _numbers(path, header, "DimSize", 3)
    if any(d < 1 or d != int(d) for d in dims):
        raise ScanReadError(f"{path}: bad header, DimSize = {header['DimSize']!r} (expected 3 positive integers)")
    spacing = _numbers(path, header, "ElementSpacing", 3, header.get("ElementSize", "1 1 1"))
    if min(spacing) <= 0:
        raise ScanReadError(f"{path}: bad header, ElementSpacing = {header.get('ElementSpacing')!r}: "
                            "zero or negative spacing")
    for key in ("Offset", "Origin", "Position"):
        if key in header:
            _numbers(path, header, key, 3)
    for key in ("TransformMatrix", "Orientation", "Rotation"):
        if key in header:
            matrix = np.reshape(_numbers(path, header, key, 9), (3, 3))
            if abs(np.linalg.det(matrix)) < 1e-6:
                raise ScanReadError(f"{path}: bad header, {key} = {header[key]!r}: bad direction, determinant is 0")
    return [int(d) for d in dims]


def _inflated_size(data: Path, stop_after: int, offset: int = 0, gzip: bool = False) -> int:
    """Bytes a zlib- (or ``gzip``-) compressed data file, from byte ``offset`` on, inflates to, counted in bounded
    memory (stops past ``stop_after``); a stream cut short counts what it holds. gzip members one after another
    (bgzip's blocks) count together."""
    wbits = 47 if gzip else 15  # 47: a gzip or zlib header
    inflater, total = zlib.decompressobj(wbits=wbits), 0
    try:
        with open(data, "rb") as f:
            f.seek(offset)
            while chunk := f.read(1 << 20):
                while chunk:
                    total += len(inflater.decompress(chunk, 1 << 24))
                    chunk = inflater.unconsumed_tail
                    if gzip and inflater.eof and inflater.unused_data:  # the next member
                        chunk, inflater = inflater.unused_data, zlib.decompressobj(wbits=wbits)
                    if total > stop_after:
                        return total
        return total + len(inflater.flush())
    except zlib.error as exc:
        raise ScanReadError(f"{data}: compressed data is corrupt ({exc})") from exc


def _channels(path: Path, header: dict[str, str]) -> int:
    """The header's ElementNumberOfChannels (1 when absent), a positive integer, or a ScanReadError naming it."""
    raw = header.get("ElementNumberOfChannels", "1")
    if not re.fullmatch(r"[1-9][0-9]*", raw):
        raise ScanReadError(f"{path}: bad header, ElementNumberOfChannels = {raw!r} (expected a positive integer)")
    return int(raw)


def check_mhd_files(path: Path) -> None:
    """Check a .mhd's header and data file before SimpleITK sees them (its errors are vague).

    The header's geometry must parse (3D, positive spacing, an invertible direction), its size
    must be plausible (at most MAX_VOXELS) and the data file must hold exactly the bytes the header
    promises: counted on disk for .raw, after inflating (in bounded memory) for .zraw, so a lying
    header can neither make us read garbage nor allocate gigabytes.
    """
    header = read_mhd_header(path)
    for key in ("NDims", "DimSize", "ElementType", "ElementDataFile"):
        if key not in header:
            raise ScanReadError(f"{path}: bad header, no {key} line")
    dims = _check_geometry(path, header)
    element = _BYTES_PER_ELEMENT.get(header["ElementType"])
    if element is None:
        raise ScanReadError(f"{path}: unsupported ElementType {header['ElementType']}")
    voxels = int(np.prod(dims, dtype=np.int64))
    shape = f"{'x'.join(map(str, dims))} {header['ElementType']}"
    if voxels > MAX_VOXELS:
        raise ScanReadError(f"{path}: bad header, DimSize {shape} is {voxels:,} voxels, "
                            f"more than the {MAX_VOXELS:,} a CT scan plausibly has")
    data = path.parent / header["ElementDataFile"]
    if not data.is_file():
        raise ScanReadError(f"{path}: data file {header['ElementDataFile']} is missing "
                            f"(looked for {os.path.normpath(data)})")
    expected = voxels * element * _channels(path, header)
    if header.get("CompressedData", "False").lower() == "true":
        actual, what = _inflated_size(data, expected), "inflates to"
    else:
        actual, what = data.stat().st_size, "is"
    if actual != expected:
        more = " at least" if what == "inflates to" and actual > expected else ""
        raise ScanReadError(f"{path}: data file {data.name} {what}{more} {actual:,} bytes, "
                            f"header says {expected:,} bytes ({shape})")


NIFTI_HEADER_BYTES = 348  # the smallest NIfTI header; the voxels follow it (NIfTI-1 at 352, NIfTI-2 at 544)


def _voxel_bytes(path: Path) -> tuple[int, str]:
    """The bytes of voxel data ``path``'s header promises, and its size in words, from SimpleITK's reading of
    the header alone."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise ScanReadError(f"{path}: SimpleITK cannot read its header ({_itk_cause(exc)})") from exc
    one = sitk.Image([1] * reader.GetDimension(), reader.GetPixelID(), reader.GetNumberOfComponents())
    element = sitk.GetArrayViewFromImage(one).itemsize * reader.GetNumberOfComponents()
    size = reader.GetSize()
    return int(np.prod(size, dtype=np.int64)) * element, f"{'x'.join(map(str, size))} {one.GetPixelIDTypeAsString()}"


def _text_header(path: Path, ends: re.Pattern) -> tuple[str, int] | None:
    """The text header of a one-file .mha/.nrrd and the offset of the data after it (None: not found)."""
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    m = ends.search(head)
    return (head[:m.end()].decode("latin-1"), m.end()) if m else None


def check_single_file(path: Path) -> None:
    """Check that a one-file scan (.nii, .nii.gz, .mha, .nrrd) holds the voxel bytes its header promises.

    SimpleITK reads a NIfTI cut short without a word and fills what is missing with zeros (a truncated
    download then segments as a smaller or empty scan); a short .mha is reported as "No such file". Counted
    on disk, or after inflating (in bounded memory) for gzip and zlib data. Other formats are left to ITK.
    """
    name = path.name.lower()
    if name.endswith(".nii"):
        offset, compressed = NIFTI_HEADER_BYTES, None
    elif name.endswith(".nii.gz"):  # the header is inside the compressed stream
        offset, compressed = NIFTI_HEADER_BYTES, "gzip"
    elif name.endswith(".mha"):
        found = _text_header(path, re.compile(rb"ElementDataFile\s*=\s*LOCAL[^\n]*\n"))
        if found is None:
            return  # data in another file: ITK names it
        text, offset = found
        compressed = "zlib" if re.search(r"CompressedData\s*=\s*True", text, flags=re.I) else None
    elif name.endswith(".nrrd"):
        found = _text_header(path, re.compile(rb"\r?\n\r?\n"))
        if found is None or re.search(r"^data ?file:", found[0], flags=re.M | re.I):
            return  # detached data: ITK names the file
        text, offset = found
        encoding = (re.search(r"^encoding:\s*(\S+)", text, flags=re.M | re.I) or [None, "raw"])[1].lower()
        if encoding not in ("raw", "gzip", "gz"):
            return
        compressed = "gzip" if encoding in ("gzip", "gz") else None
    else:
        return
    expected, shape = _voxel_bytes(path)
    if name.endswith(".nii.gz"):
        actual = _inflated_size(path, expected + offset, gzip=True) - offset
    elif compressed:
        actual = _inflated_size(path, expected, offset=offset, gzip=compressed == "gzip")
    else:
        actual = path.stat().st_size - offset
    if actual < expected:
        held = f"{max(actual, 0):,} bytes of voxel data{' once inflated' if compressed else ''}"
        raise ScanReadError(f"{path}: holds {held}, its header says {expected:,} ({shape}); a truncated file?")


def _itk_cause(exc: RuntimeError) -> str:
    """The cause in an ITK exception ("ITK ERROR: Bad direction, ..."), not its source-file line."""
    text = str(exc).strip()
    m = re.search(r"ITK ERROR:\s*(?:\w+\(0x[0-9a-fA-F]+\):\s*)?(.*)", text, flags=re.S)
    if m:
        return "ITK ERROR: " + " ".join(m.group(1).split())[:200]
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return (lines[-1] if lines else "unknown error")[:200]


def read_scan(path: str | Path) -> sitk.Image:
    """Read a scan (.mhd with .raw or .zraw, or any format SimpleITK reads) as a 3D image."""
    path = Path(path)
    if not path.is_file():
        raise ScanReadError(f"{path}: file not found")
    if path.suffix.lower() == ".mhd":
        check_mhd_files(path)
    else:
        check_single_file(path)
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise ScanReadError(f"{path}: SimpleITK cannot read it ({_itk_cause(exc)})") from exc
    if image.GetDimension() != 3:
        raise ScanReadError(f"{path}: expected a 3D image, got {image.GetDimension()}D")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ScanReadError(f"{path}: expected one channel, got {image.GetNumberOfComponentsPerPixel()}")
    return image


AIR_HU = -900.0  # every CT holds air (around the body, in the lungs) below this
MIN_AIR_SHARE = 0.01
MAX_CLIPPED_SHARE = 0.3  # bone above a 400 HU window top is a few per cent of a chest CT


def intensity_warnings(image: sitk.Image, path: str | Path, hu_window: tuple[float, float]) -> list[str]:
    """Warnings for a scan whose values do not look like HU (e.g. a header whose ElementType is
    unsigned on signed data): no air at all, or most voxels clipped at the window's top. Looks at
    every 2nd slice and every 4th row and column (cheap, and plenty for shares)."""
    view = sitk.GetArrayViewFromImage(image)[::2, ::4, ::4]
    n = max(view.size, 1)
    air = np.count_nonzero(view <= AIR_HU) / n
    top = np.count_nonzero(view >= hu_window[1]) / n
    out = []
    if air < MIN_AIR_SHARE:
        out.append(f"{path}: only {air:.1%} of voxels are air (<= {AIR_HU:g} HU); are the values HU? "
                   f"(check ElementType and any rescale in the header)")
    if top > MAX_CLIPPED_SHARE:
        out.append(f"{path}: {top:.0%} of voxels are at or above {hu_window[1]:g} HU and will be clipped; "
                   f"is ElementType right (unsigned data read as signed, or the reverse)?")
    return out
