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


def test_a_missing_data_file_names_the_path_looked_for(tmp_path):
    """The header's ElementDataFile may point elsewhere (../raws/x.raw): the message names where we looked."""
    path = _write(tmp_path)
    _edit(path, "ElementDataFile = scan.raw", "ElementDataFile = ../raws/nothere.raw")
    with pytest.raises(ScanReadError) as err:
        read_scan(path)
    assert str(err.value) == (f"{path}: data file ../raws/nothere.raw is missing "
                              f"(looked for {tmp_path.parent / 'raws' / 'nothere.raw'})")


@pytest.mark.parametrize("channels", ["1.0", "0", "two"])
def test_a_bad_channel_count_names_the_header_and_key(tmp_path, channels):
    path = _write(tmp_path)
    _edit(path, "ElementDataFile", f"ElementNumberOfChannels = {channels}\nElementDataFile")
    with pytest.raises(ScanReadError) as err:
        read_scan(path)
    assert str(err.value) == (f"{path}: bad header, ElementNumberOfChannels = {channels!r} "
                              "(expected a positive integer)")


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


def _written(tmp_path, name: str, compress: bool) -> tuple:
    from paths import DATA

    image = sitk.ReadImage(str(DATA / "example_ct.nii.gz"))
    path = tmp_path / name
    sitk.WriteImage(image, str(path), useCompression=compress)
    return image, path


@pytest.mark.parametrize("name, compress", [("ct.nii", False), ("ct.nii.gz", True), ("ct.mha", False),
                                            ("ct.mha", True), ("ct.nrrd", False), ("ct.nrrd", True)])
def test_a_one_file_scan_cut_short_is_refused_naming_it(tmp_path, name, compress):
    """SimpleITK read a truncated .nii/.nii.gz without a word, the missing voxels zero (predict then segmented a
    smaller scan), and called a short .mha 'No such file or directory'."""
    image, path = _written(tmp_path, name, compress)
    assert np.array_equal(sitk.GetArrayViewFromImage(read_scan(path)), sitk.GetArrayViewFromImage(image))
    whole = path.read_bytes()
    path.write_bytes(whole[:int(len(whole) * 0.7)])
    with pytest.raises(ScanReadError) as err:
        read_scan(path)
    size = "x".join(map(str, image.GetSize()))
    assert str(err.value).startswith(f"{path}: holds ")
    voxel_bytes = sitk.GetArrayViewFromImage(image).nbytes
    assert str(err.value).endswith(f"bytes of voxel data{' once inflated' if compress else ''}, its header says "
                                   f"{voxel_bytes:,} ({size} {image.GetPixelIDTypeAsString()}); a truncated file?")


def test_a_nifti_of_several_gzip_members_is_counted_whole(tmp_path):
    """bgzip writes a .nii.gz as many gzip members back to back; each counts."""
    import gzip

    image, path = _written(tmp_path, "ct.nii", False)
    raw = path.read_bytes()
    split = tmp_path / "blocks.nii.gz"
    split.write_bytes(b"".join(gzip.compress(raw[i:i + 65280]) for i in range(0, len(raw), 65280)))
    assert np.array_equal(sitk.GetArrayViewFromImage(read_scan(split)), sitk.GetArrayViewFromImage(image))
