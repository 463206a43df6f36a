"""LUNA16 tables: the real ones read as they ship; wrong values are refused with the file and line named."""

from __future__ import annotations

import pytest

from luna_prep.luna16.tables import TableError, read_annotations, read_candidates

from paths import DATA

UID = "1.3.6.1.4.1.14519.5.2.1.6279.6001.905371958588660410240398317235"


def test_real_annotations_read_with_crlf():
    df = read_annotations(DATA / "annotations.csv")
    assert len(df) == 1186 and df["diameter_mm"].between(3.2, 32.3).all()
    assert list(df["annotation_index"][:3]) == [0, 1, 2]


@pytest.mark.parametrize("diameter,accepted", [("-5", False), ("0", False), ("500", False), ("3.25", True),
                                               ("32.27", True)])
def test_annotation_diameter_must_be_a_nodule_size(tmp_path, diameter, accepted):
    path = tmp_path / "annotations.csv"
    path.write_text(f"seriesuid,coordX,coordY,coordZ,diameter_mm\n{UID},1,2,3,6\n{UID},1,2,3,{diameter}\n")
    if accepted:
        assert read_annotations(path)["diameter_mm"].iloc[1] == float(diameter)
    else:
        with pytest.raises(TableError, match=r"annotations\.csv: annotations line 3 has diameter_mm outside"):
            read_annotations(path)


@pytest.mark.parametrize("value", ["inf", "-inf", "", "abc"])
def test_annotation_coordinates_must_be_finite_numbers(tmp_path, value):
    path = tmp_path / "annotations.csv"
    path.write_text(f"seriesuid,coordX,coordY,coordZ,diameter_mm\n{UID},1,{value},3,6\n")
    with pytest.raises(TableError, match=r"annotations line 2 has (a non-numeric or empty|an infinite) value"):
        read_annotations(path)


def _annotations(tmp_path, *rows: str, eol: str = "\n"):
    """annotations.csv with the header and ``rows`` (``""``: a blank line)."""
    path = tmp_path / "annotations.csv"
    path.write_text(eol.join(["seriesuid,coordX,coordY,coordZ,diameter_mm", *rows]) + eol)
    return path


def test_lines_are_named_as_the_file_numbers_them_blank_lines_included(tmp_path):
    path = _annotations(tmp_path, f"{UID},1,2,3,6", "", "", f"{UID},1,x,3,6", eol="\r\n")
    with pytest.raises(TableError, match=r"annotations line 5 has a non-numeric or empty value"):
        read_annotations(path)
    path = _annotations(tmp_path, f"{UID},1,2,3,6", "", f"{UID},4,5,6,7")
    df = read_annotations(path)  # blank lines are skipped; the nodules are numbered 0, 1
    assert list(df["annotation_index"]) == [0, 1] and list(df.index) == [0, 1]


@pytest.mark.parametrize("uid", ["", "  "])
def test_an_empty_seriesuid_is_refused(tmp_path, uid):
    for name, header, last in (("annotations.csv", "diameter_mm", "6"), ("candidates.csv", "class", "0")):
        path = tmp_path / name
        path.write_text(f"seriesuid,coordX,coordY,coordZ,{header}\n{UID},1,2,3,{last}\n{uid},1,2,3,{last}\n")
        with pytest.raises(TableError, match=rf"{name}: \w+ line 3 has an empty seriesuid"):
            (read_annotations if name == "annotations.csv" else read_candidates)(path)


def test_a_nodule_listed_twice_is_refused_naming_both_lines(tmp_path):
    """It would get twice its samples; LUNA16's annotations.csv lists each nodule once."""
    path = _annotations(tmp_path, f"{UID},1,2,3,6", f"{UID},4,5,6,7", f"{UID},1,2,3,6")
    with pytest.raises(TableError, match=r"annotations lines 2 and 4 are the same nodule"):
        read_annotations(path)
    path = _annotations(tmp_path, f"{UID},1,2,3,6", f"{UID},1,2,3,6.5")
    assert len(read_annotations(path)) == 2  # two readings of one place are two rows: not a copy


@pytest.mark.parametrize("cls", ["2", "-1", "9", "0.5"])
def test_candidate_class_must_be_0_or_1(tmp_path, cls):
    path = tmp_path / "candidates.csv"
    path.write_text(f"seriesuid,coordX,coordY,coordZ,class\r\n{UID},1,2,3,0\r\n{UID},1,2,3,1\r\n{UID},1,2,3,{cls}\r\n")
    with pytest.raises(TableError, match=r"candidates\.csv: candidates line 4 has class outside \(0, 1\)"):
        read_candidates(path)


def test_candidates_read(tmp_path):
    path = tmp_path / "candidates.csv"
    path.write_text(f"seriesuid,coordX,coordY,coordZ,class\n{UID},1,2,3,0\n{UID},1.5,2,3,1.0\n")
    df = read_candidates(path)
    assert list(df["class"]) == [0, 1] and df["class"].dtype.kind == "i"


def test_the_same_scan_in_two_subsets_is_refused(tmp_path):
    from luna_prep.luna16.tables import find_scans

    for k in (0, 3):
        (tmp_path / f"subset{k}").mkdir()
        (tmp_path / f"subset{k}" / f"{UID}.mhd").write_text("")
    (tmp_path / "subset0" / "1.2.3.mhd").write_text("")
    assert [s.seriesuid for s in find_scans(tmp_path, [0])] == ["1.2.3", UID]
    with pytest.raises(TableError, match=rf"subset3/{UID}\.mhd: seriesuid {UID} is also .*subset0/{UID}\.mhd"):
        find_scans(tmp_path, [0, 3])


def test_hidden_mhd_files_are_not_scans_and_are_counted(tmp_path):
    """macOS copies leave ._<uid>.mhd resource forks next to each scan: each was built as a scan and failed."""
    from luna_prep.luna16.tables import find_scans, subset_notes

    (tmp_path / "subset0").mkdir()
    for name in (f"{UID}.mhd", f"._{UID}.mhd", "._1.2.3.mhd"):
        (tmp_path / "subset0" / name).write_text("")
    assert [s.seriesuid for s in find_scans(tmp_path, [0])] == [UID]
    assert subset_notes(tmp_path, [0]) == [
        "2 hidden .mhd files skipped (names starting with '.', such as macOS's ._<uid>.mhd; "
        f"first: {tmp_path / 'subset0' / '._1.2.3.mhd'})"]


def test_subset_folders_without_scans_are_named(tmp_path):
    """An empty subset, one unzipped a folder too deep (subset1/subset1/*.mhd) and one of .MHD files each get a
    note naming the folder; a subset holding scans gets none."""
    from luna_prep.luna16.tables import find_scans, subset_notes

    for k in range(4):
        (tmp_path / f"subset{k}").mkdir()
    (tmp_path / "subset1" / "subset1").mkdir()
    (tmp_path / "subset1" / "subset1" / f"{UID}.mhd").write_text("")
    (tmp_path / "subset2" / "1.2.3.MHD").write_text("")
    (tmp_path / "subset2" / "1.2.4.MHD").write_text("")
    (tmp_path / "subset3" / f"{UID}.mhd").write_text("")
    assert [s.seriesuid for s in find_scans(tmp_path, [0, 1, 2, 3])] == [UID]
    assert subset_notes(tmp_path, [0, 1, 2, 3]) == [
        f"{tmp_path / 'subset0'}: no .mhd scans",
        f"{tmp_path / 'subset1'}: no .mhd scans; they are in subset1/subset1: move them up one folder",
        f"{tmp_path / 'subset2'}: 2 scans ending in .MHD skipped (first: 1.2.3.MHD); only .mhd is read: rename them",
    ]


def test_missing_candidates_note_names_an_unextracted_zip(tmp_path):
    from luna_prep.luna16.tables import missing_candidates_note

    note = f"no candidates file under {tmp_path}: negatives are random only (no hard negatives)"
    assert missing_candidates_note(tmp_path) == note
    (tmp_path / "candidates_V2.zip").write_bytes(b"")
    assert missing_candidates_note(tmp_path) == f"{note}; candidates_V2.zip is not extracted: unzip it there"
