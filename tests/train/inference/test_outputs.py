"""Prediction files for the usual viewers: candidate CSV names, Slicer markups and segmentations."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from luna_train.inference.outputs import candidates_path, markups, write_candidates, write_mask

CANDIDATES = pd.DataFrame({"seriesuid": ["1.2.3"] * 2, "coordX": [-10.5, 30.0], "coordY": [-150.25, -120.0],
                           "coordZ": [-80.0, -60.5], "probability": [0.93, 0.41]})


@pytest.mark.parametrize("out, csv", [("pred.nii.gz", "pred.csv"), ("a/pred.seg.nrrd", "a/pred.csv"),
                                      ("p.mhd", "p.csv"), ("x.y.nii", "x.y.csv")])
def test_candidates_sit_beside_the_mask_without_its_image_suffix(out, csv):
    assert str(candidates_path(out)) == csv


def test_markups_hold_the_candidates_in_lps_ranked(tmp_path):
    path = write_candidates(CANDIDATES, tmp_path / "c.mrk.json")
    doc = json.loads(path.read_text())
    assert doc["@schema"].endswith("markups-schema-v1.0.3.json#")
    (markup,) = doc["markups"]
    assert markup["type"] == "Fiducial" and markup["coordinateSystem"] == "LPS" and markup["coordinateUnits"] == "mm"
    points = markup["controlPoints"]
    assert [p["label"] for p in points] == ["1", "2"] and points[0]["description"] == "p=0.930"
    np.testing.assert_array_equal([p["position"] for p in points],
                                  CANDIDATES[["coordX", "coordY", "coordZ"]].to_numpy())
    assert markups(CANDIDATES.iloc[:0])["markups"][0]["controlPoints"] == []
    write_candidates(CANDIDATES, tmp_path / "c.csv")
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "c.csv", dtype={"seriesuid": str}), CANDIDATES)


@pytest.mark.parametrize("name", ["m.nii.gz", "m.seg.nrrd"])
def test_masks_keep_values_and_geometry_and_slicer_segment_keys(tmp_path, name):
    arr = np.zeros((6, 7, 8), np.uint8)
    arr[2:4, 3:5, 1:6] = 1
    mask = sitk.GetImageFromArray(arr)
    mask.SetOrigin((-10.0, -20.0, 30.0))
    mask.SetSpacing((0.75, 0.75, 2.5))
    mask.SetDirection((-1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    back = sitk.ReadImage(str(write_mask(mask, tmp_path / name)))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), arr)
    np.testing.assert_allclose(back.GetOrigin(), mask.GetOrigin(), atol=1e-5)
    np.testing.assert_allclose(back.GetSpacing(), mask.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(back.GetDirection(), mask.GetDirection(), atol=1e-6)
    if name.endswith(".seg.nrrd"):
        assert back.GetMetaData("Segment0_LabelValue") == "1" and back.GetMetaData("Segment0_Name") == "nodule"
        assert back.GetMetaData("Segment0_Extent") == "0 7 0 6 0 5"
        assert back.GetMetaData("Segmentation_MasterRepresentation") == "Binary labelmap"


def test_unknown_suffixes_are_refused(tmp_path):
    with pytest.raises(ValueError, match="must end with one of"):
        write_candidates(CANDIDATES, tmp_path / "c.txt")
    with pytest.raises(ValueError, match=r"\.seg\.nrrd"):
        write_mask(sitk.Image(2, 2, 2, sitk.sitkUInt8), tmp_path / "m.png")
