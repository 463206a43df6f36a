"""The format contract's own helpers: attributes both ways, intensity encoding, the scans table."""

import numpy as np
import pandas as pd
import pytest

from luna_prep.format.spec import (
    ROOT_ATTRIBUTES,
    SCANS_COLUMNS,
    UINT8_FULL_SCALE,
    FormatError,
    StoreAttributes,
    decode_image,
    encode_image,
    full_scale,
    scans_table,
)

ATTRS = StoreAttributes(spacing_mm=0.75, hu_window=(-1000.0, 400.0), scales=(16, 24), image_dtype="uint8",
                        shard_patches=8, capacity=64, config_hash="a" * 64, software_version="9.9",
                        build_config={"seed": 3, "subsets": [0, 1]})


def test_attributes_round_trip_through_the_stored_dict():
    attrs = ATTRS.to_attrs()
    assert list(attrs) == list(ROOT_ATTRIBUTES)
    assert (attrs["format"], attrs["format_version"]) == ("luna-patches", 2)
    assert attrs["hu_window"] == [-1000.0, 400.0] and attrs["scales"] == [16, 24]
    assert StoreAttributes.from_attrs(attrs) == ATTRS


def test_attributes_of_another_version_are_refused():
    with pytest.raises(FormatError, match="format_version 3"):
        StoreAttributes.from_attrs(ATTRS.to_attrs() | {"format_version": 3})
    with pytest.raises(FormatError, match="format_version True"):
        StoreAttributes.from_attrs(ATTRS.to_attrs() | {"format_version": True})


def test_version_1_is_still_read_without_chunk_checksums():
    v1 = StoreAttributes.from_attrs(ATTRS.to_attrs() | {"format_version": 1})
    assert v1.format_version == 1 and not v1.chunk_checksums and ATTRS.chunk_checksums
    assert v1.to_attrs()["format_version"] == 1


def test_uint8_holds_round_255_times_the_intensity():
    values = np.array([0.0, 0.5, 1.0, 1.7, -0.2, 1 / 255, 0.998], np.float32)
    stored = encode_image(values, "uint8")
    assert stored.dtype == np.uint8
    assert stored.tolist() == [0, 128, 255, 255, 0, 1, 254]
    assert full_scale("uint8") == UINT8_FULL_SCALE == 255 and full_scale("float16") == 1.0
    np.testing.assert_allclose(decode_image(stored, "uint8"), np.clip(np.rint(values * 255), 0, 255) / 255, atol=1e-7)
    half = encode_image(values, "float16")
    assert half.dtype == np.float16 and half.max() == 1.0 and half.min() == 0.0
    with pytest.raises(FormatError, match="image_dtype"):
        full_scale("int16")


def test_scans_table_has_every_column_even_for_a_scan_whose_worker_died():
    records = [
        {"seriesuid": "1.2", "subset": 3, "status": "ok", "error": "", "source_path": "a.mhd",
         "original_size_xyz": [4, 5, 6], "n_nodule": 2, "first_index": 0, "seconds": 1.5},
        {"seriesuid": "1.3", "subset": 4, "status": "failed", "error": "b.mhd: worker failed", "source_path": "b.mhd",
         "first_index": 32},
    ]
    df = scans_table(records)
    assert list(df.columns) == list(SCANS_COLUMNS)
    assert df["subset"].dtype == "int16" and df["n_random"].tolist() == [0, 0]
    assert df["original_size_xyz"].iloc[0] == [4, 5, 6] and pd.isna(df["original_size_xyz"].iloc[1])
    assert np.isnan(df["seconds"].iloc[1]) and df["first_index"].tolist() == [0, 32]
    empty = scans_table([])
    assert list(empty.columns) == list(SCANS_COLUMNS) and len(empty) == 0
