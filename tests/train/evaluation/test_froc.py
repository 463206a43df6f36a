"""LUNA16 FROC/CPM: hand-worked cases, then the real LUNA16 annotation files of tests/data."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from luna_prep.errors import InputError
from luna_train.evaluation.froc import OPERATING_POINTS, compute_froc, load_luna_csv, load_seriesuids, run_froc

from paths import DATA

COLS = ["seriesuid", "coordX", "coordY", "coordZ"]


def nodules(*rows: tuple) -> pd.DataFrame:
    """(uid, x, y, z, diameter_mm) rows."""
    return pd.DataFrame(rows, columns=COLS + ["diameter_mm"])


def cands(*rows: tuple) -> pd.DataFrame:
    """(uid, x, y, z, probability) rows."""
    return pd.DataFrame(rows, columns=COLS + ["probability"])


def froc(sub, ann, excl=None, uids=("s1",), **kw):
    return compute_froc(sub, ann, excl, list(uids), n_bootstrap=kw.pop("n_bootstrap", 0), **kw)


def test_perfect_detector_cpm_one():
    # 3 nodules in 2 scans, each with a candidate on its centre, no other candidate:
    # no FP at all -> the official script sets every FP rate to 0, the curve ends at sensitivity
    # 3/3 and np.interp beyond its end gives 1.0 at every operating point.
    ann = nodules(("s1", 0, 0, 0, 10), ("s1", 50, 0, 0, 6), ("s2", 0, 0, 0, 4))
    sub = cands(("s1", 0, 0, 0, 0.9), ("s1", 50, 0, 0, 0.8), ("s2", 0, 0, 0, 0.7))
    r = froc(sub, ann, uids=("s1", "s2"))
    assert r.cpm == 1.0
    np.testing.assert_array_equal(r.sensitivities, np.ones(7))
    assert (r.n_nodules, r.n_hits, r.n_false_positives) == (3, 3, 0)


def test_candidate_on_excluded_finding_is_not_a_false_positive():
    # Nodule A at the origin (d=10). Excluded finding at (50,0,0) with diameter -1 -> 10 mm,
    # radius 5. Candidate at distance 4.9 from it, p=0.9, above A's candidate p=0.5.
    ann = nodules(("s1", 0, 0, 0, 10))
    excl = nodules(("s1", 50, 0, 0, -1))
    sub = cands(("s1", 0, 0, 0, 0.5), ("s1", 54.9, 0, 0, 0.9))
    r = froc(sub, ann, excl)
    # ignored: only A's candidate is scored, no FP -> sensitivity 1 everywhere.
    assert (r.n_false_positives, r.n_ignored_excluded, r.cpm) == (0, 1, 1.0)
    # Without the excluded list it is an FP above the nodule: ROC points (FPs/scan, sens)
    # (0,0), (1,0), (1,1): 0 at 1/8, 1/4, 1/2; at 1 np.interp takes the top of the
    # vertical step -> 1; beyond -> 1. CPM = 4/7.
    r = froc(sub, ann, None)
    assert r.n_false_positives == 1
    np.testing.assert_array_equal(r.sensitivities, [0, 0, 0, 1, 1, 1, 1])
    assert r.cpm == pytest.approx(4 / 7)
    # At distance 5.1 (> 5 mm) the candidate is an FP even with the excluded list.
    r = froc(cands(("s1", 0, 0, 0, 0.5), ("s1", 55.1, 0, 0, 0.9)), ann, excl)
    assert (r.n_false_positives, r.n_ignored_excluded) == (1, 0)


def test_nodule_hit_twice_counts_once_with_highest_probability():
    # Nodule at origin d=10; hits at p=0.8 and p=0.6; a far FP at p=0.7; 1 scan.
    # Scored entries: nodule (0.8), FP (0.7); the 0.6 hit is neither. ROC points:
    # (0,0), (0,1) [nodule], (1,1) [FP] -> sensitivity 1 at every operating point.
    # (Had the nodule taken 0.6, the FP would come first and 1/8..1/2 would score 0;
    # had the 0.6 hit been an FP, the curve would reach 2 FPs/scan.)
    ann = nodules(("s1", 0, 0, 0, 10))
    sub = cands(("s1", 1, 0, 0, 0.8), ("s1", -1, 0, 0, 0.6), ("s1", 100, 0, 0, 0.7))
    r = froc(sub, ann)
    assert (r.n_hits, r.n_false_positives, r.n_ignored_double) == (1, 1, 1)
    assert r.fps.max() == 1.0
    assert r.cpm == 1.0


def test_candidate_near_two_nodules_detects_both():
    # A at (0,0,0) and B at (6,0,0), both d=10 (radius 5); C at (100,0,0) is missed.
    # One candidate at (3,0,0): distance 3 to both A and B -> both detected (as the official
    # script does), no FP. Sensitivity 2/3 at every operating point.
    ann = nodules(("s1", 0, 0, 0, 10), ("s1", 6, 0, 0, 10), ("s1", 100, 0, 0, 10))
    r = froc(cands(("s1", 3, 0, 0, 0.9)), ann)
    assert (r.n_nodules, r.n_hits, r.n_false_positives) == (3, 2, 0)
    assert r.cpm == pytest.approx(2 / 3)


def test_more_than_100_candidates_keeps_the_100_most_probable():
    # 100 far FPs with p in (0.5, 1) and one candidate on the nodule with the lowest p=0.1:
    # 101 candidates -> cut at the 101st probability (0.1), keep p > 0.1 -> the hit is dropped.
    ann = nodules(("s1", 0, 0, 0, 10))
    fps = [("s1", 200 + 10 * i, 0, 0, 0.5 + i / 200) for i in range(100)]
    r = froc(cands(*fps, ("s1", 0, 0, 0, 0.1)), ann)
    assert (r.n_hits, r.n_candidates, r.n_dropped_cap, r.n_false_positives) == (0, 100, 1, 100)
    assert r.cpm == 0.0
    # with 100 candidates in all (one FP fewer) nothing is dropped and the hit counts.
    r = froc(cands(*fps[1:], ("s1", 0, 0, 0, 0.1)), ann)
    assert (r.n_hits, r.n_dropped_cap) == (1, 0)
    # official tie rule: 99 FPs, then the 100th and 101st share p=0.1 -> cut 0.1, keep p > 0.1:
    # both tied candidates are dropped (the hit among them), 99 are scored.
    r = froc(cands(*fps[1:], ("s1", 300, 50, 0, 0.1), ("s1", 0, 0, 0, 0.1)), ann)
    assert (r.n_candidates, r.n_dropped_cap, r.n_hits) == (99, 2, 0)


def test_missed_nodule_lowers_sensitivity():
    # 2 nodules, one candidate on the first, no FP -> sensitivity 1/2 everywhere.
    ann = nodules(("s1", 0, 0, 0, 10), ("s1", 50, 0, 0, 10))
    r = froc(cands(("s1", 0, 0, 0, 0.9)), ann)
    assert (r.n_nodules, r.n_hits) == (2, 1)
    np.testing.assert_array_equal(r.sensitivities, np.full(7, 0.5))


def test_fp_rate_divides_by_the_seriesuids_count():
    # 4 scans listed, candidates only in s1: FP p=0.9 above the nodule's hit p=0.8.
    # ROC (FPs/scan, sens): (0,0), (1/4,0), (1/4,1) -> 0 at 1/8, 1 from 1/4 on: CPM 6/7.
    # (Dividing by the 1 scan with candidates would give (1,0),(1,1) and CPM 4/7.)
    # A candidate of an unlisted scan is ignored.
    ann = nodules(("s1", 0, 0, 0, 10), ("zz", 0, 0, 0, 10))
    sub = cands(("s1", 0, 0, 0, 0.8), ("s1", 100, 0, 0, 0.9), ("zz", 100, 0, 0, 0.99))
    r = froc(sub, ann, uids=("s1", "s2", "s3", "s4"))
    assert (r.n_scans, r.n_nodules, r.n_unlisted, r.n_false_positives) == (4, 1, 1, 1)
    assert r.fps.max() == 0.25
    np.testing.assert_array_equal(r.sensitivities, [0, 1, 1, 1, 1, 1, 1])
    assert r.cpm == pytest.approx(6 / 7)


def test_distance_equal_to_radius_is_a_miss():
    # d=10 -> radius^2 = 25; (3,4,0) has squared distance 9+16 = 25, not < 25: a miss
    # (and an FP); (4.999,0,0) is a hit.
    ann = nodules(("s1", 0, 0, 0, 10))
    r = froc(cands(("s1", 3, 4, 0, 0.9)), ann)
    assert (r.n_hits, r.n_false_positives, r.cpm) == (0, 1, 0.0)
    r = froc(cands(("s1", 4.999, 0, 0, 0.9)), ann)
    assert (r.n_hits, r.n_false_positives, r.cpm) == (1, 0, 1.0)


# --- the real LUNA16 files -------------------------------------------------------------------

@pytest.fixture(scope="module")
def luna():
    ann = load_luna_csv(DATA / "annotations.csv")
    return ann, load_luna_csv(DATA / "annotations_excluded.csv"), load_seriesuids(DATA / "seriesuids.csv")


def as_submission(ann: pd.DataFrame, prob) -> pd.DataFrame:
    return ann.drop(columns="diameter_mm").assign(probability=prob)


def test_real_files_load(luna):
    ann, excl, uids = luna
    assert list(ann.columns) == COLS + ["diameter_mm"]  # CRLF: no '\r' left in names or values
    assert (len(ann), len(excl), len(uids), len(set(uids))) == (1186, 35192, 888, 888)
    assert not ann.seriesuid.str.contains("\r").any() and ann.diameter_mm.dtype == float


def test_real_annotations_as_candidates_score_one(luna):
    ann, excl, uids = luna
    r = compute_froc(as_submission(ann, 1.0), ann, excl, uids, n_bootstrap=0)
    np.testing.assert_array_equal(r.sensitivities, np.ones(7))
    assert (r.n_nodules, r.n_hits, r.n_false_positives, r.n_scans) == (1186, 1186, 0, 888)


def test_real_annotations_plus_one_lower_fp_per_scan_still_cpm_one(luna):
    # all nodules at p=1 come before every FP (p=0.5): sensitivity is 1 already at 0 FPs/scan.
    ann, excl, uids = luna
    rng = np.random.default_rng(0)
    fps = pd.DataFrame({"seriesuid": uids, "coordX": rng.uniform(-150, 150, 888),
                        "coordY": rng.uniform(-150, 150, 888),
                        "coordZ": rng.uniform(-300, 0, 888), "probability": 0.5})
    r = compute_froc(pd.concat([as_submission(ann, 1.0), fps]), ann, excl, uids, n_bootstrap=0)
    assert r.cpm == 1.0
    assert r.n_false_positives + r.n_ignored_excluded + r.n_ignored_double == 888


def test_real_half_of_the_nodules_gives_cpm_near_half_and_band_contains_it(luna):
    ann, excl, uids = luna
    rng = np.random.default_rng(1)
    half = as_submission(ann.iloc[::2], rng.uniform(0.3, 1.0, len(ann.iloc[::2])))
    r = compute_froc(half, ann, excl, uids, n_bootstrap=0)
    assert r.cpm == pytest.approx(0.5, abs=0.01)  # 593/1186, plus any overlapping neighbour
    # with 3 random FPs per scan at random probabilities, bootstrap over scans (seeded)
    n = 3 * len(uids)
    fps = pd.DataFrame({"seriesuid": np.repeat(uids, 3), "coordX": rng.uniform(-150, 150, n),
                        "coordY": rng.uniform(-150, 150, n),
                        "coordZ": rng.uniform(-300, 0, n), "probability": rng.uniform(0, 0.9, n)})
    r = compute_froc(pd.concat([half, fps]), ann, excl, uids, n_bootstrap=200, seed=0)
    assert 0.2 < r.cpm < 0.5
    assert r.cpm_ci[0] < r.cpm < r.cpm_ci[1]
    assert np.all(r.sensitivities_lower <= r.sensitivities)
    assert np.all(r.sensitivities <= r.sensitivities_upper)
    assert np.all(r.bootstrap_lower <= r.bootstrap_upper)
    again = compute_froc(pd.concat([half, fps]), ann, excl, uids, n_bootstrap=200, seed=0)
    assert again.cpm_ci == r.cpm_ci  # seeded


def test_run_froc_writes_json_and_plot(luna, tmp_path):
    ann, _, uids = luna
    sub = tmp_path / "submission.csv"
    as_submission(ann.iloc[::2], 0.9).to_csv(sub, index=False, lineterminator="\r\n")
    r = run_froc(sub, DATA / "annotations.csv", DATA / "annotations_excluded.csv",
                 DATA / "seriesuids.csv", json_out=tmp_path / "froc.json",
                 plot_out=tmp_path / "froc.png", n_bootstrap=20)
    d = json.loads((tmp_path / "froc.json").read_text())
    assert d["operating_points"] == list(OPERATING_POINTS)
    assert d["sensitivities"] == pytest.approx(list(r.sensitivities)) and len(d["sensitivities"]) == 7
    assert d["cpm"] == pytest.approx(r.cpm) and len(d["cpm_ci"]) == 2
    assert d["n_nodules"] == 1186 and d["n_scans"] == len(uids)
    assert (tmp_path / "froc.png").stat().st_size > 10_000


def test_froc_curve_stops_where_the_candidates_stop():
    from luna_train.evaluation.froc_plot import froc_figure

    # one FP above the nodule in one scan: the data end at 1 FP/scan (see the excluded-finding case)
    r = froc(cands(("s1", 0, 0, 0, 0.5), ("s1", 54.9, 0, 0, 0.9)), nodules(("s1", 0, 0, 0, 10)))
    fig = froc_figure(r)
    try:
        ax = fig.axes[0]
        (curve,) = [ln for ln in ax.lines if ln.get_label() == "FROC"]
        assert curve.get_xdata()[-1] == pytest.approx(float(np.max(r.fps))) == pytest.approx(1.0)
        assert curve.get_xdata()[0] == pytest.approx(1 / 8)
        (past,) = [ln for ln in ax.lines if ln.get_label().startswith("past the data")]
        np.testing.assert_array_equal(past.get_xdata(), [2, 4, 8])  # drawn hollow, values as scored
        assert past.get_markerfacecolor() == "none"
        (measured,) = [ln for ln in ax.lines if ln.get_label() == "operating points"]
        np.testing.assert_array_equal(measured.get_xdata(), [1 / 8, 1 / 4, 1 / 2, 1])
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)


def test_bootstrap_sorted_once_equals_a_sort_per_sample():
    """The bootstrap's entries are sorted once and missed nodules set aside; the band must equal the one of
    the official way (all entries, sorted again for every sample), ties and missed nodules included."""
    from luna_train.evaluation.froc import BAND_FPS, _bootstrap, _froc_curve

    rng = np.random.default_rng(3)
    n_scans, n = 40, 900
    scan_idx = np.sort(rng.integers(n_scans, size=n))
    gt = (rng.random(n) < 0.1).astype(float)
    prob = np.round(rng.random(n), 2)  # many ties
    missed = (gt == 1) & (rng.random(n) < 0.3)
    prob[missed] = -1e9
    curves, points = _bootstrap(gt, prob, missed, scan_idx, n_scans, 60, seed=7)
    draws = np.random.default_rng(7)
    for b in range(60):
        w = np.bincount(draws.integers(n_scans, size=n_scans), minlength=n_scans)[scan_idx]
        if not np.any(gt * w):
            assert np.isnan(curves[b]).all() and np.isnan(points[b]).all()
            continue
        fps, sens, _ = _froc_curve(gt, prob, missed, n_scans, w.astype(float))
        np.testing.assert_array_equal(curves[b], np.interp(BAND_FPS, fps, sens))
        np.testing.assert_array_equal(points[b], np.interp(OPERATING_POINTS, fps, sens))
    assert not np.isnan(curves).all()


@pytest.mark.parametrize("value", ["", "nan", "high"])
def test_a_probability_that_is_not_a_number_is_an_error_naming_the_file_and_row(tmp_path, value):
    """A blank or NaN probability would sort above every real one: the official script refuses it, so do we."""
    sub = tmp_path / "sub.csv"
    sub.write_text("seriesuid,coordX,coordY,coordZ,probability\r\na,0,0,0,0.9\r\na,50,50,50," + value + "\r\n")
    ann = tmp_path / "ann.csv"
    ann.write_text("seriesuid,coordX,coordY,coordZ,diameter_mm\r\na,0,0,0,10\r\n")
    uids = tmp_path / "uids.csv"
    uids.write_text("a\r\n")
    with pytest.raises(InputError) as err:
        run_froc(sub, ann, None, uids, n_bootstrap=0)
    assert f"{sub} (submission): 1 row(s) without a finite number" in str(err.value)
    assert "data row 2" in str(err.value) and "seriesuid='a'" in str(err.value)
    ann.write_text("seriesuid,coordX,coordY,coordZ,diameter_mm\r\na,0,0,0,\r\n")
    sub.write_text("seriesuid,coordX,coordY,coordZ,probability\r\na,0,0,0,0.9\r\n")
    with pytest.raises(InputError, match=r"ann\.csv \(annotations\): 1 row\(s\)"):
        run_froc(sub, ann, None, uids, n_bootstrap=0)


def test_a_seriesuids_file_with_a_header_or_a_uid_twice(tmp_path):
    """A header line was counted as a scan (every false-positive rate off by one scan); a duplicate said only
    'seriesuids list has duplicates'."""
    path = tmp_path / "uids.csv"
    path.write_text("seriesuid\r\n1.2.3\r\n\r\n1.2.4,extra\r\n")
    assert load_seriesuids(path) == ["1.2.3", "1.2.4"]
    path.write_text("1.2.3\n1.2.4\n\n1.2.3\n")
    with pytest.raises(ValueError) as err:
        load_seriesuids(path)
    assert str(err.value) == f"{path}: seriesuid 1.2.3 is listed twice, on lines 1 and 4"
    with pytest.raises(ValueError, match="seriesuids list has duplicates: 1.2.4 is listed twice"):
        compute_froc(pd.DataFrame(columns=["seriesuid", "coordX", "coordY", "coordZ", "probability"]),
                     pd.DataFrame(columns=["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"]), None,
                     ["1.2.4", "1.2.5", "1.2.4"])


def test_a_seriesuids_file_or_submission_from_excel_with_a_bom(tmp_path):
    """Excel starts a CSV with a BOM: the first uid matched nothing and, before a header, the header was a scan."""
    path = tmp_path / "uids.csv"
    path.write_text("\ufeffseriesuid\r\n1.2.3\r\n1.2.4\r\n", encoding="utf-8")
    assert load_seriesuids(path) == ["1.2.3", "1.2.4"]
    path.write_text("\ufeff1.2.3\n1.2.4\n", encoding="utf-8")
    assert load_seriesuids(path) == ["1.2.3", "1.2.4"]
    sub = tmp_path / "sub.csv"
    sub.write_text('\ufeff"seriesuid","coordX","coordY","coordZ","probability"\r\n"1.2.3",1,2,3,0.5\r\n',
                   encoding="utf-8")
    df = load_luna_csv(sub)
    assert list(df.columns) == [*COLS, "probability"] and df["seriesuid"].tolist() == ["1.2.3"]


def _froc_cli(tmp_path, sub_uids):
    from click.testing import CliRunner

    from luna_train.cli.main import main

    (tmp_path / "sub.csv").write_text("seriesuid,coordX,coordY,coordZ,probability\n" +
                                      "".join(f"{u},0,0,0,0.9\n" for u in sub_uids))
    (tmp_path / "ann.csv").write_text("seriesuid,coordX,coordY,coordZ,diameter_mm\na,0,0,0,10\nb,0,0,0,10\n")
    (tmp_path / "uids.csv").write_text("a\nb\n")
    return CliRunner().invoke(main, ["froc", str(tmp_path / "sub.csv"), "--annotations", str(tmp_path / "ann.csv"),
                                     "--seriesuids", str(tmp_path / "uids.csv"), "--bootstrap", "1"])


def test_froc_says_when_submission_rows_are_of_unlisted_scans(tmp_path):
    """Seriesuids ending in .mhd scored CPM 0 without a word: n_unlisted was only in --json."""
    res = _froc_cli(tmp_path, ["a.mhd", "b.mhd"])
    assert res.exit_code == 0, res.output
    assert "0 candidates, 0 false positives (0 on excluded findings, 0 double hits ignored, 2 of scans not in the " \
           "seriesuids list)" in res.output
    assert ("WARNING: no submission row is of a listed scan (e.g. a.mhd): every nodule counts as missed; do the "
            "submission's seriesuids name the scans as the seriesuids list does (no .mhd suffix, no path)?") \
        in res.output
    res = _froc_cli(tmp_path, ["a", "b.mhd", "c"])
    assert "WARNING: 2 submission rows are of scans not in the seriesuids list (e.g. b.mhd): not scored" in res.output
    res = _froc_cli(tmp_path, ["a", "b"])
    assert "WARNING" not in res.output and "0 of scans not in the seriesuids list" in res.output


def test_a_bad_row_is_shown_with_plain_numbers(tmp_path):
    sub = tmp_path / "sub.csv"
    sub.write_text("seriesuid,coordX,coordY,coordZ,probability\na,-128.6994211,0,0,high\n")
    (tmp_path / "ann.csv").write_text("seriesuid,coordX,coordY,coordZ,diameter_mm\na,0,0,0,10\n")
    (tmp_path / "uids.csv").write_text("a\n")
    with pytest.raises(InputError) as err:
        run_froc(sub, tmp_path / "ann.csv", None, tmp_path / "uids.csv", n_bootstrap=0)
    assert str(err.value).endswith("the first is data row 1: seriesuid='a', coordX=-128.6994211, coordY=0, coordZ=0, "
                                   "probability='high'")
