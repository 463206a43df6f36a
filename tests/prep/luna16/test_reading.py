"""Scans whose headers lie or whose data do not match: each is refused with the file and the cause named."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import SimpleITK as sitk

from luna_prep.luna16.reading import MAX_VOXELS, ScanReadError, read_scan


def _write(tmp_path, name="scan", compressed=False, shape=(6, 5, 4)):
    img = sitk.GetImageFromArray(np.arange(np.prod(shape), dtype=np.int16).reshape(shape) - 1000)
    img.SetSpacing((0.5, 0.5, 2.5))
    path = tmp_path / f"{name}.mhd"
    sitk.WriteImage(img, str(path), useCompression=compressed)
    return path


def _edit(path, old, new):
    text = path.read_text()
    assert old in text, text
    path.write_text(text.replace(old, new))


def test_a_good_scan_reads(tmp_path):
    for compressed in (False, True):
        image = read_scan(_write(tmp_path, f"ok{compressed}", compressed))
        assert image.GetSize() == (4, 5, 6) and image.GetSpacing() == (0.5, 0.5, 2.5)


@pytest.mark.parametrize(("element", "dtype"), [("MET_LONG", np.int32), ("MET_ULONG", np.uint32),
                                              ("MET_LONG_LONG", np.int64), ("MET_ULONG_LONG", np.uint64)])
def test_every_metaio_integer_type_is_sized_as_metaio_sizes_it(tmp_path, element, dtype):
    """MetaIO's LONG is 32-bit (LONG_LONG is 64): a valid MET_LONG scan is read, not refused for its size."""
    values = (np.arange(120) + 1000).astype(dtype).reshape(6, 5, 4)
    (tmp_path / "scan.raw").write_bytes(values.tobytes())
    (tmp_path / "scan.mhd").write_text(
        "ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\nCompressedData = False\n"
        "TransformMatrix = 1 0 0 0 1 0 0 0 1\nOffset = 0 0 0\nElementSpacing = 1 1 1\nDimSize = 4 5 6\n"
        f"ElementType = {element}\nElementDataFile = scan.raw\n")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read_scan(tmp_path / "scan.mhd")), values)


def test_compressed_data_smaller_than_header_is_refused(tmp_path):
    path = _write(tmp_path, compressed=True)
    _edit(path, "DimSize = 4 5 6", "DimSize = 1000 1000 1000")
    with pytest.raises(ScanReadError, match=r"scan\.mhd: data file scan\.zraw inflates to 240 bytes, header says "
                                            r"2,000,000,000 bytes"):
        read_scan(path)


def test_compressed_data_larger_than_header_is_refused_without_inflating_it_all(tmp_path):
    path = _write(tmp_path, compressed=True)
    (tmp_path / "scan.zraw").write_bytes(zlib.compress(bytes(50_000_000)))  # 50 MB of zeros
    with pytest.raises(ScanReadError, match="inflates to at least .* header says 240 bytes"):
        read_scan(path)


def test_corrupt_compressed_data_is_named(tmp_path):
    path = _write(tmp_path, compressed=True)
    (tmp_path / "scan.zraw").write_bytes(b"not zlib at all")
    with pytest.raises(ScanReadError, match=r"scan\.zraw: compressed data is corrupt"):
        read_scan(path)


def test_absurd_size_is_refused_before_allocating(tmp_path):
    path = _write(tmp_path, compressed=True)
    _edit(path, "DimSize = 4 5 6", "DimSize = 100000 100000 100000")
    with pytest.raises(ScanReadError, match=f"more than the {MAX_VOXELS:,}"):
        read_scan(path)


@pytest.mark.parametrize("old,new,cause", [
    ("NDims = 3", "NDims = 2", r"NDims = '2'; a CT scan is 3D"),
    ("ElementSpacing = 0.5 0.5 2.5", "ElementSpacing = abc", r"ElementSpacing = 'abc' \(expected 3 numbers\)"),
    ("ElementSpacing = 0.5 0.5 2.5", "ElementSpacing = 0 0.5 2.5", "zero or negative spacing"),
    ("TransformMatrix = 1 0 0 0 1 0 0 0 1", "TransformMatrix = 1 0 0 1 0 0 0 0 1", "determinant is 0"),
    ("Offset = 0 0 0", "Offset = 0 nan 0", r"Offset = '0 nan 0'"),
    ("DimSize = 4 5 6", "DimSize = 4 5", r"DimSize = '4 5' \(expected 3 numbers\)"),
])
def test_bad_header_geometry_names_the_cause(tmp_path, old, new, cause):
    path = _write(tmp_path)
    _edit(path, old, new)
    with pytest.raises(ScanReadError, match=rf"scan\.mhd: bad header, .*{cause}"):
        read_scan(path)


def test_itk_errors_report_their_cause_not_a_source_line(tmp_path):
    """A header our checks pass but ITK refuses: the message keeps ITK's cause line."""
    path = _write(tmp_path)
    _edit(path, "ElementSpacing = 0.5 0.5 2.5", "ElementSpacing = 0.5 0.5 2.5\nElementSize = 0 0 0")
    text = path.read_text().replace("ElementSpacing = 0.5 0.5 2.5\n", "")
    path.write_text(text)
    with pytest.raises(ScanReadError) as info:
        read_scan(path)
    message = str(info.value)
    assert "scan.mhd" in message and ".hxx" not in message
