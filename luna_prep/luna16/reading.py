"""Reading a scan with SimpleITK, with errors that name the file and the problem."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from luna_prep.errors import LunaError

_BYTES_PER_ELEMENT = {
    "MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4,
    "MET_UINT": 4, "MET_FLOAT": 4, "MET_DOUBLE": 8, "MET_LONG": 8, "MET_ULONG": 8,
}


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


def check_mhd_files(path: Path) -> None:
    """Check a .mhd's header and data file before SimpleITK sees them (its errors are vague)."""
    header = read_mhd_header(path)
    for key in ("NDims", "DimSize", "ElementType", "ElementDataFile"):
        if key not in header:
            raise ScanReadError(f"{path}: bad header, no {key} line")
    try:
        dims = [int(v) for v in header["DimSize"].split()]
    except ValueError as exc:
        raise ScanReadError(f"{path}: bad header, DimSize = {header['DimSize']!r}") from exc
    if len(dims) != 3 or min(dims) < 1:
        raise ScanReadError(f"{path}: bad header, expected a 3D image, DimSize = {header['DimSize']!r}")
    data = path.parent / header["ElementDataFile"]
    if not data.is_file():
        raise ScanReadError(f"{path}: data file {data.name} is missing")
    compressed = header.get("CompressedData", "False").lower() == "true"
    element = _BYTES_PER_ELEMENT.get(header["ElementType"])
    if element is None:
        raise ScanReadError(f"{path}: unsupported ElementType {header['ElementType']}")
    if not compressed:
        expected = int(np.prod(dims)) * element * int(header.get("ElementNumberOfChannels", "1"))
        actual = data.stat().st_size
        if actual != expected:
            raise ScanReadError(
                f"{path}: data file {data.name} is {actual:,} bytes, header says {expected:,} "
                f"({'x'.join(map(str, dims))} {header['ElementType']})"
            )


def read_scan(path: str | Path) -> sitk.Image:
    """Read a scan (.mhd with .raw or .zraw, or any format SimpleITK reads) as a 3D image."""
    path = Path(path)
    if not path.is_file():
        raise ScanReadError(f"{path}: file not found")
    if path.suffix.lower() == ".mhd":
        check_mhd_files(path)
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = next((ln for ln in first if "rror" in ln or "xception" in ln), first[0] if first else "")
        raise ScanReadError(f"{path}: SimpleITK cannot read it ({detail.strip()[:200]})") from exc
    if image.GetDimension() != 3:
        raise ScanReadError(f"{path}: expected a 3D image, got {image.GetDimension()}D")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ScanReadError(f"{path}: expected one channel, got {image.GetNumberOfComponentsPerPixel()}")
    return image
