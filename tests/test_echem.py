"""Tests of ecafm.io.echem and ecafm.io.mpr: real EC-Lab files, round trips, frame timing."""

from __future__ import annotations

import datetime
import os
import shutil
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ecafm.errors import InputFileError
from ecafm.io.echem import EcLog, frame_electrochemistry, read_ec_log, sniff_format, write_mpt
from ecafm.io.mpr import read_mpr

REAL_EC = Path(__file__).parents[1].parent / "shared/data/real_ec"

PAIRS = [
    "yadg_gcpl.issue_149",
    "yadg_mb.issue_95",
    "yadg_cv",
    "yadg_ocv",
    "yadg_gcpl.pr_182.1",
]

MPR_ROWS = {
    "bdf_GCPL-0.mpr": 4,
    "chemotion_FK155_JLGU_GE_50-2_15_m1p233mg_Li_LP30_RT_rate_stability_20230906_02_GCPL_C07.mpr": 16154,
    "navani_jdb11-1_c3_gcpl_5cycles_2V-3p8V_C-24_data_C09.mpr": 46102,
    "yadg_cv.mpr": 5103,
    "yadg_gcpl.issue_149.mpr": 132,
    "yadg_gcpl.pr_182.1.mpr": 2533,
    "yadg_mb.issue_95.mpr": 33,
    "yadg_ocv.mpr": 602,
}

CHEMOTION = (
    "chemotion_FK155_JLGU_GE_50-2_15_m1p233mg_Li_LP30_RT_rate_stability_20230906_02_GCPL_C07"
)

F32 = 2.0**-23  # float32 relative precision


def real_ec(*parts: str) -> Path:
    """Path inside the real-file folder; skip (or fail on CI) when the folder is absent."""
    if not REAL_EC.is_dir():
        reason = f"real electrochemistry files not found at {REAL_EC}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return REAL_EC.joinpath(*parts)


def plain_mpt(path: Path) -> tuple[dict[str, np.ndarray], str | None]:
    """Read an .mpt with plain Python (independent of ecafm): columns and start-time text."""
    lines = path.read_bytes().decode("latin-1").splitlines()
    n_header = int(lines[1].split(":")[1])
    start = None
    for line in lines[:n_header]:
        if line.startswith("Acquisition started on"):
            start = line.split(" : ", 1)[1].strip()
    names = lines[n_header - 1].rstrip("\t").split("\t")
    rows = [
        [float(v.replace(",", ".")) for v in line.rstrip("\t").split("\t")]
        for line in lines[n_header:]
        if line.strip()
    ]
    table = np.array(rows)
    return {name: table[:, i] for i, name in enumerate(names)}, start


def mpt_charge_C(cols: dict[str, np.ndarray]) -> np.ndarray | None:
    if "(Q-Qo)/C" in cols:
        return cols["(Q-Qo)/C"]
    if "(Q-Qo)/mA.h" in cols:
        return cols["(Q-Qo)/mA.h"] * 3.6
    return None


def assert_close_f32(actual: np.ndarray, expected: np.ndarray, what: str) -> None:
    """Agreement within float32 precision (and the 8 significant digits of .mpt floats)."""
    tol = 2 * F32 * np.maximum(np.abs(expected), np.max(np.abs(expected)) * 1e-6) + 1e-12
    bad = np.abs(actual - expected) > tol
    assert not bad.any(), (
        f"{what}: {bad.sum()} values differ, max {np.max(np.abs(actual - expected))}"
    )


# ------------------------------------------------------------------------------------------
# real files


@pytest.mark.parametrize("stem", PAIRS)
def test_mpr_matches_mpt_export(stem: str) -> None:
    cols, start_text = plain_mpt(real_ec("biologic_mpt", f"{stem}.mpt"))
    log = read_ec_log(real_ec("biologic_mpr", f"{stem}.mpr"))
    d = log.data
    assert log.format == "biologic-mpr"
    assert len(d) == len(cols["time/s"])
    np.testing.assert_allclose(d["time_s"], cols["time/s"], rtol=1e-15, atol=1e-9)
    assert_close_f32(d["potential_V"].to_numpy(), cols["Ewe/V"], "Ewe/V")
    expected_q = mpt_charge_C(cols)
    if expected_q is not None:
        assert_close_f32(d["charge_C"].to_numpy(), expected_q, "charge")
    if "half cycle" in cols:
        np.testing.assert_array_equal(d["half_cycle"], cols["half cycle"].astype(np.int64))
    np.testing.assert_array_equal(d["rest"], cols["mode"] == 3)
    if start_text is None:
        assert log.start_time is None
    else:
        assert log.start_time == read_ec_log(real_ec("biologic_mpt", f"{stem}.mpt")).start_time
        assert log.start_time.strftime("%m/%d/%Y %H:%M:%S") == start_text[:19]


@pytest.mark.parametrize("stem", PAIRS)
def test_mpt_reader_matches_plain_parse(stem: str) -> None:
    path = real_ec("biologic_mpt", f"{stem}.mpt")
    cols, start_text = plain_mpt(path)
    log = read_ec_log(path)
    assert log.format == "biologic-mpt"
    np.testing.assert_array_equal(log.data["time_s"], cols["time/s"])
    np.testing.assert_array_equal(log.data["potential_V"], cols["Ewe/V"])
    if "cycle number" in cols:
        np.testing.assert_array_equal(log.data["cycle"], cols["cycle number"].astype(np.int64))
    if start_text is None:
        assert log.start_time is None
    else:
        fmt = "%m/%d/%Y %H:%M:%S.%f" if "." in start_text else "%m/%d/%Y %H:%M:%S"
        assert log.start_time == datetime.datetime.strptime(start_text, fmt)


@pytest.mark.parametrize("name", sorted(MPR_ROWS), ids=lambda n: n[:30])
def test_every_real_mpr_decodes(name: str) -> None:
    log = read_ec_log(real_ec("biologic_mpr", name))
    d = log.data
    assert len(d) == MPR_ROWS[name]
    assert list(d.columns) == [
        "time_s", "potential_V", "current_mA", "charge_C", "half_cycle", "cycle", "rest",
    ]  # fmt: skip
    assert d.dtypes["half_cycle"] == np.int64 and d.dtypes["cycle"] == np.int64
    assert d["rest"].dtype == np.dtype(bool)
    assert np.all(np.diff(d["time_s"]) >= 0)
    assert np.isfinite(d[["time_s", "potential_V", "current_mA", "charge_C"]].to_numpy()).all()


def test_gcpl_mpr_cycle_from_half_cycle_and_current_from_control() -> None:
    """issue_149: no cycle number, no measured current in the .mpr; mpt has both."""
    cols, _ = plain_mpt(real_ec("biologic_mpt", "yadg_gcpl.issue_149.mpt"))
    mpr = read_mpr(real_ec("biologic_mpr", "yadg_gcpl.issue_149.mpr"))
    assert "cycle number" not in mpr.columns and "<I>/mA" not in mpr.columns
    d = read_ec_log(mpr.path).data
    np.testing.assert_array_equal(d["cycle"], cols["cycle number"].astype(np.int64))
    np.testing.assert_array_equal(d["cycle"], d["half_cycle"] // 2)
    active = ~d["rest"].to_numpy()
    np.testing.assert_allclose(np.abs(d["current_mA"][active]), 0.030, rtol=1e-6)
    assert (d["current_mA"][d["rest"]] == 0).all()
    # the set current agrees with the measured average current except at step edges
    assert np.median(np.abs(d["current_mA"] - cols["<I>/mA"])) < 1e-4


def test_gcpl_half_cycle_numbers_skip() -> None:
    d = read_ec_log(real_ec("biologic_mpr", "yadg_gcpl.pr_182.1.mpr")).data
    assert sorted(set(d["half_cycle"])) == [0, 2, 3, 4, 5, 6, 7, 8]
    assert sorted(set(d["cycle"])) == [0, 1, 2, 3, 4]
    # CV hold rows (mode 2): current from charge increments, not the control voltage
    mode = read_mpr(real_ec("biologic_mpr", "yadg_gcpl.pr_182.1.mpr")).columns["mode"]
    assert (mode == 2).any()
    assert np.abs(d["current_mA"][mode == 2]).max() < 0.3


def test_decimal_comma_files() -> None:
    log = read_ec_log(real_ec("biologic_mpt", "yadg_gcpl.issue_149.mpt"))
    assert log.data["time_s"].iloc[0] == pytest.approx(30.15299923827115, rel=1e-15)
    assert log.data["potential_V"].iloc[0] == pytest.approx(3.4228721, rel=1e-12)
    assert log.start_time == datetime.datetime(2024, 1, 10, 11, 2, 29, 886000)
    cv = read_ec_log(real_ec("biologic_mpt", "ixdat_Pt_poly_cv_CUT.mpt"))
    cols, _ = plain_mpt(real_ec("biologic_mpt", "ixdat_Pt_poly_cv_CUT.mpt"))
    assert len(cv.data) == 223
    np.testing.assert_array_equal(cv.data["potential_V"], cols["Ewe/V"])
    np.testing.assert_array_equal(cv.data["current_mA"], cols["<I>/mA"])
    assert cv.start_time == datetime.datetime(2020, 7, 29, 10, 31, 1)
    assert cv.data["cycle"].max() == 5


def test_crlf_copy_reads_the_same(tmp_path: Path) -> None:
    src = real_ec("biologic_mpt", "yadg_gcpl.issue_149.mpt")
    raw = src.read_bytes()
    assert b"\r\n" not in raw
    crlf = tmp_path / "crlf.mpt"
    crlf.write_bytes(raw.replace(b"\n", b"\r\n"))
    a, b = read_ec_log(src), read_ec_log(crlf)
    pd.testing.assert_frame_equal(a.data, b.data)
    assert a.start_time == b.start_time


def test_three_line_header_has_no_start_time() -> None:
    log = read_ec_log(real_ec("biologic_mpt", "yadg_gcpl.pr_182.1.mpt"))
    assert log.start_time is None
    assert len(log.data) == 2533


def test_mpl_sibling_gives_start_time(tmp_path: Path) -> None:
    log = read_ec_log(real_ec("biologic_mpr", f"{CHEMOTION}.mpr"))
    assert log.start_time == datetime.datetime(2023, 9, 6, 15, 18, 20, 995000)
    assert log.data["time_s"].iloc[0] > 17999  # 2nd technique of the sequence
    # the .mpl wins over the LOG module
    shutil.copy(real_ec("biologic_mpr", "yadg_ocv.mpr"), tmp_path / "run.mpr")
    (tmp_path / "run.mpl").write_bytes(
        b"EC-Lab LOG FILE\r\n\r\nAcquisition started on : 02/03/2021 04:05:06.789\r\n"
    )
    assert read_ec_log(tmp_path / "run.mpr").start_time == datetime.datetime(
        2021, 2, 3, 4, 5, 6, 789000
    )
    # without .mpl: the LOG module date
    assert read_ec_log(real_ec("biologic_mpr", "yadg_ocv.mpr")).start_time == datetime.datetime(
        2020, 1, 16, 14, 13, 34
    )


def test_format_is_sniffed_from_content(tmp_path: Path) -> None:
    mpt_as_txt = tmp_path / "export.txt"
    shutil.copy(real_ec("biologic_mpt", "yadg_ocv.mpt"), mpt_as_txt)
    mpr_as_bin = tmp_path / "data.bin"
    shutil.copy(real_ec("biologic_mpr", "yadg_ocv.mpr"), mpr_as_bin)
    assert sniff_format(mpt_as_txt) == "biologic-mpt"
    assert sniff_format(mpr_as_bin) == "biologic-mpr"
    assert read_ec_log(mpr_as_bin).format == "biologic-mpr"
    csv = tmp_path / "log.mpt"
    csv.write_text("time_s,potential_V,current_mA\n0,1,0\n1,1,0\n")
    assert read_ec_log(csv).format == "csv"
    assert read_ec_log(mpt_as_txt, fmt="biologic-mpt").format == "biologic-mpt"
    with pytest.raises(ValueError, match="fmt must be"):
        read_ec_log(csv, fmt="gamry")


# ------------------------------------------------------------------------------------------
# bad input


def test_truncated_mpr(tmp_path: Path) -> None:
    raw = real_ec("biologic_mpr", "yadg_gcpl.issue_149.mpr").read_bytes()
    cut = tmp_path / "cut.mpr"
    cut.write_bytes(raw[:10000])  # inside the VMP data module
    with pytest.raises(InputFileError, match=r"cut\.mpr.*'VMP data'.*truncated"):
        read_ec_log(cut)
    cut.write_bytes(raw[:40])
    with pytest.raises(InputFileError, match=r"cut\.mpr.*no MODULE"):
        read_ec_log(cut)


def test_unknown_mpr_column_id(tmp_path: Path) -> None:
    raw = bytearray(real_ec("biologic_mpr", "yadg_ocv.mpr").read_bytes())
    data_at = raw.find(b"MODULEVMP data")
    ids_at = data_at + 57 + 5  # old-layout header, uint32 points, uint8 column count
    assert struct.unpack_from("<4H", raw, ids_at) == (1, 3, 4, 6)
    struct.pack_into("<H", raw, ids_at + 6, 9999)
    bad = tmp_path / "bad.mpr"
    bad.write_bytes(bytes(raw))
    with pytest.raises(InputFileError, match=r"bad\.mpr.*unknown column id 9999"):
        read_ec_log(bad)


def test_truncated_mpt(tmp_path: Path) -> None:
    raw = real_ec("biologic_mpt", "yadg_ocv.mpt").read_bytes()
    cut = tmp_path / "cut.mpt"
    cut.write_bytes(raw[: len(raw) - 15])  # mid row
    with pytest.raises(InputFileError, match=r"cut\.mpt.*truncated"):
        read_ec_log(cut)
    cut.write_bytes(raw[:300])  # inside the header
    with pytest.raises(InputFileError, match=r"cut\.mpt.*header announces 53 lines"):
        read_ec_log(cut)


def test_mpt_without_data_rows(tmp_path: Path) -> None:
    lines = real_ec("biologic_mpt", "yadg_ocv.mpt").read_bytes().split(b"\n")
    empty = tmp_path / "empty.mpt"
    empty.write_bytes(b"\n".join(lines[:53]) + b"\n")
    with pytest.raises(InputFileError, match=r"empty\.mpt.*no data rows"):
        read_ec_log(empty)


def test_mpt_missing_required_column(tmp_path: Path) -> None:
    text = real_ec("biologic_mpt", "yadg_ocv.mpt").read_bytes().replace(b"Ewe/V", b"Ece/V")
    p = tmp_path / "noewe.mpt"
    p.write_bytes(text)
    with pytest.raises(InputFileError, match=r"noewe\.mpt.*missing required column 'Ewe/V'"):
        read_ec_log(p)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("time_s,potential_V\n0,1\n", r"missing required column\(s\) \['current_mA'\]"),
        ("time_s,potential_V,current_mA\n", "no data rows"),
        ("", "empty CSV"),
        ("time_s,potential_V,current_mA\n0,1,0\n1,1\n", "missing value"),
    ],
    ids=["no-current", "no-rows", "empty", "truncated-row"],
)
def test_bad_csv(tmp_path: Path, content: str, match: str) -> None:
    p = tmp_path / "log.csv"
    p.write_text(content)
    with pytest.raises(InputFileError, match=rf"log\.csv.*{match}"):
        read_ec_log(p)


@pytest.mark.parametrize(
    ("parts", "match"),
    [
        (("biologic_mpr", f"{CHEMOTION[:-12]}.mps"), "settings file"),
        (("biologic_mpr", f"{CHEMOTION}.mpl"), "LOG file"),
        (("neware", "newarenda_TestFile.nda"), "Neware"),
    ],
    ids=["mps", "mpl", "nda"],
)
def test_unsupported_real_files_give_clear_errors(parts: tuple[str, str], match: str) -> None:
    path = real_ec(*parts)
    with pytest.raises(InputFileError, match=match) as err:
        read_ec_log(path)
    assert err.value.path == str(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match="file not found"):
        read_ec_log(tmp_path / "nope.mpr")


# ------------------------------------------------------------------------------------------
# CSV, write_mpt


def make_cycling_log(rng: np.random.Generator | None = None) -> pd.DataFrame:
    """Rest 0-100 s, plate +0.1 mA 100-1100 s, rest to 1200 s, strip -0.1 mA to 2200 s,
    plate again to 3200 s; 1 s steps."""
    t = np.arange(0.0, 3201.0)
    current = np.zeros_like(t)
    current[(t > 100) & (t <= 1100)] = 0.1
    current[(t > 1200) & (t <= 2200)] = -0.1
    current[(t > 2200) & (t <= 3200)] = 0.1
    noise = 0.0 if rng is None else rng.normal(0, 1e-4, t.size)
    potential = np.where(current > 0, -0.02, np.where(current < 0, 0.03, 0.1)) + noise
    return pd.DataFrame({"time_s": t, "potential_V": potential, "current_mA": current})


def test_csv_minimal_derives_charge_half_cycle_rest(tmp_path: Path) -> None:
    df = make_cycling_log()
    p = tmp_path / "log.csv"
    p.write_text("# start_time = 2024-05-06T07:08:09.250\n" + df.to_csv(index=False))
    log = read_ec_log(p)
    d = log.data
    assert log.format == "csv"
    assert log.start_time == datetime.datetime(2024, 5, 6, 7, 8, 9, 250000)
    at = d.set_index("time_s")
    # trapezoid integral: 0.1 mA over 1000 s = 0.1 C (plus half-steps at the edges)
    assert at.loc[1100.0, "charge_C"] == pytest.approx(0.1 * 1000 / 1000, abs=1e-4)
    assert at.loc[2200.0, "charge_C"] == pytest.approx(0.0, abs=1e-4)
    assert at.loc[50.0, "rest"] and not at.loc[500.0, "rest"]
    half = [at.loc[t, "half_cycle"] for t in (50.0, 500.0, 1150.0, 1500.0, 2500.0)]
    assert half == [0, 0, 0, 1, 2]
    assert [at.loc[t, "cycle"] for t in (500.0, 1500.0, 2500.0)] == [0, 0, 1]


def test_csv_full_columns_kept(tmp_path: Path) -> None:
    df = pd.DataFrame(
        {
            "time_s": [0.0, 1.0, 2.0],
            "potential_V": [0.1, 0.0, -0.01],
            "current_mA": [0.0, 1.0, 1.0],
            "charge_C": [5.0, 5.001, 5.002],
            "half_cycle": [4, 4, 5],
            "cycle": [7, 7, 7],
        }
    )
    p = tmp_path / "full.csv"
    df.to_csv(p, index=False)
    d = read_ec_log(p).data
    np.testing.assert_array_equal(d["charge_C"], df["charge_C"])
    np.testing.assert_array_equal(d["half_cycle"], [4, 4, 5])
    np.testing.assert_array_equal(d["cycle"], [7, 7, 7])


@pytest.mark.parametrize("decimal", [".", ","], ids=["dot", "comma"])
@pytest.mark.parametrize("newline", ["\r\n", "\n"], ids=["crlf", "lf"])
def test_write_mpt_round_trip(tmp_path: Path, decimal: str, newline: str) -> None:
    rng = np.random.default_rng(42)
    df = make_cycling_log(rng)
    df["charge_C"] = np.cumsum(df["current_mA"]) / 1000 + 1e-3
    df["half_cycle"] = np.where(df["time_s"] > 1200, 3, 0) + (df["time_s"] > 2200)
    df["cycle"] = df["half_cycle"] // 2
    df["rest"] = df["current_mA"] == 0
    start = datetime.datetime(2024, 1, 10, 11, 2, 29, 886000)
    p = tmp_path / "synthetic.mpt"
    write_mpt(df, p, start_time=start, decimal=decimal, newline=newline)
    raw = p.read_bytes()
    assert raw.startswith(b"EC-Lab ASCII FILE" + newline.encode())
    assert b"Acquisition started on : 01/10/2024 11:02:29.886" in raw
    assert (b"," in raw.split(newline.encode())[-2]) == (decimal == ",")
    log = read_ec_log(p)
    assert log.format == "biologic-mpt" and log.start_time == start
    for col in ("time_s", "potential_V", "current_mA", "charge_C"):
        np.testing.assert_allclose(log.data[col], df[col], rtol=1e-15, atol=1e-18, err_msg=col)
    for col in ("half_cycle", "cycle", "rest"):
        np.testing.assert_array_equal(log.data[col], df[col], err_msg=col)
    # the plain .mpt parser of the tests reads it too (EC-Lab layout)
    cols, start_text = plain_mpt(p)
    assert start_text == "01/10/2024 11:02:29.886"
    np.testing.assert_array_equal(cols["mode"], np.where(df["rest"], 3, 1))


def test_write_mpt_minimal_columns_and_errors(tmp_path: Path) -> None:
    df = make_cycling_log()
    p = tmp_path / "min.mpt"
    write_mpt(df, p, start_time=datetime.datetime(2020, 1, 1))
    d = read_ec_log(p).data
    assert d["half_cycle"].max() == 2
    with pytest.raises(ValueError, match=r"lacks required column\(s\) \['current_mA'\]"):
        write_mpt(df.drop(columns="current_mA"), p, start_time=datetime.datetime(2020, 1, 1))
    with pytest.raises(ValueError, match="decimal must be"):
        write_mpt(df, p, start_time=datetime.datetime(2020, 1, 1), decimal=";")


# ------------------------------------------------------------------------------------------
# frames


@pytest.fixture
def cycling_log(tmp_path: Path) -> EcLog:
    p = tmp_path / "cycling.csv"
    make_cycling_log().to_csv(p, index=False)
    return read_ec_log(p)


def test_frame_electrochemistry_known_segments(cycling_log: EcLog) -> None:
    times = [0.0, 50.0, 600.5, 1150.0, 1700.0, 2700.0, 3200.0]
    out = frame_electrochemistry(cycling_log, times)
    assert list(out.columns) == [
        "cycle", "half_cycle", "phase", "charge_C", "potential_V", "current_mA",
    ]  # fmt: skip
    assert list(out["phase"]) == ["rest", "rest", "plate", "rest", "strip", "plate", "plate"]
    assert list(out["half_cycle"]) == [0, 0, 0, 0, 1, 2, 2]
    assert list(out["cycle"]) == [0, 0, 0, 0, 0, 1, 1]
    # charge (trapezoid of 0.1 mA from 100 s): 0.1 mA * (t - 100 s) minus the half first step
    expected = np.array([0.0, 0.0, 0.1e-3 * 500.0, 0.1, 0.1 - 0.1e-3 * 500.0, 0.05, 0.1])
    np.testing.assert_allclose(out["charge_C"], expected, atol=1e-4)
    assert out["charge_C"].iloc[2] == pytest.approx(
        np.interp(600.5, cycling_log.data["time_s"], cycling_log.data["charge_C"])
    )
    np.testing.assert_allclose(out["current_mA"], [0, 0, 0.1, 0, -0.1, 0.1, 0.1])
    assert out.dtypes["cycle"] == np.int64 and out.index.name == "frame"

    flipped = frame_electrochemistry(cycling_log, times, positive_current_plates=False)
    assert list(flipped["phase"]) == ["rest", "rest", "strip", "rest", "plate", "strip", "strip"]


def test_frame_outside_log_raises(cycling_log: EcLog) -> None:
    with pytest.raises(
        InputFileError,
        match=r"frame 2 at t=3300\.000 s lies outside the log \(covers 0\.000\.\.3200\.000 s\).*clock offset",
    ) as err:
        frame_electrochemistry(cycling_log, [10.0, 20.0, 3300.0])
    assert err.value.frame == 2
    with pytest.raises(InputFileError, match=r"frame 0 at t=-5\.000 s lies outside"):
        frame_electrochemistry(cycling_log, [-5.0])
    # within the tolerance
    out = frame_electrochemistry(cycling_log, [-1e-4, 3200.0 + 1e-4])
    assert list(out["phase"]) == ["rest", "plate"]


def test_frame_in_log_gap_raises(tmp_path: Path) -> None:
    df = make_cycling_log()
    df = df[(df["time_s"] < 500) | (df["time_s"] > 800)]
    p = tmp_path / "gappy.csv"
    df.to_csv(p, index=False)
    log = read_ec_log(p)
    with pytest.raises(
        InputFileError, match=r"frame 1 at t=600\.000 s lies in a gap of 302\.000 s"
    ):
        frame_electrochemistry(log, [100.0, 600.0], max_gap_s=10.0)
    assert len(frame_electrochemistry(log, [100.0, 600.0])) == 2


def test_frames_on_real_mpr_log() -> None:
    log = read_ec_log(real_ec("biologic_mpr", "yadg_gcpl.issue_149.mpr"))
    d = log.data
    t = d["time_s"].to_numpy()
    mid = 0.5 * (t[:-1] + t[1:])
    out = frame_electrochemistry(log, mid)
    np.testing.assert_array_equal(out["half_cycle"], d["half_cycle"].to_numpy()[1:])
    assert set(out["phase"]) == {"rest", "plate", "strip"}


def _log_starting_by_stripping() -> pd.DataFrame:
    """Galvanostatic log numbered as EC-Lab does, from the technique's start: strip 50 s, then
    (plate 100 s, strip 80 s) and (plate 100 s, strip 90 s), 0.01 mA, 1 s sampling."""
    rows, q, t = [], 0.0, 0.0
    for hc, (sign, dur) in enumerate([(-1, 50), (1, 100), (-1, 80), (1, 100), (-1, 90)]):
        for _ in range(dur):
            rows.append((t, -0.05 * sign, sign * 0.01, q, hc, hc // 2, False))
            t += 1.0
            q += sign * 0.01e-3
    return pd.DataFrame(rows, columns=["time_s", "potential_V", "current_mA", "charge_C", "half_cycle", "cycle",
                                       "rest"])


def test_a_log_that_starts_by_stripping_is_counted_from_its_first_plating(tmp_path):
    """A Li|Li cell or a Li-foil electrode often starts by stripping the imaged electrode, and
    EC-Lab numbers that stripping half-cycle 0. Taken as numbered, each plating was paired with
    the stripping BEFORE it (cycle 0: CE 50/100) and the segment stage took the first stripping
    for a plating. Counted from the first plating: the first stripping is half-cycle -1, cycle
    -1 (before cycling), and cycle 0 is plate 100 s + strip 80 s."""
    from ecafm.io.echem import first_plating_half_cycle, number_from_first_plating
    from ecafm.lifetime import ec_charge_per_cycle

    write_mpt(_log_starting_by_stripping(), tmp_path / "li_li.mpt", start_time=datetime.datetime(2026, 1, 1))
    log = read_ec_log(tmp_path / "li_li.mpt")
    assert first_plating_half_cycle(log.data) == 1
    assert first_plating_half_cycle(log.data, positive_current_plates=False) == 0
    d = number_from_first_plating(log.data)
    np.testing.assert_array_equal(np.unique(d["half_cycle"]), [-1, 0, 1, 2, 3])
    np.testing.assert_array_equal(d["cycle"].to_numpy(), np.repeat([-1, 0, 1], [50, 180, 190]))
    fe = frame_electrochemistry(log, [20.0, 100.0, 200.0, 300.0, 400.0])
    assert fe["half_cycle"].tolist() == [-1, 0, 1, 2, 3] and fe["cycle"].tolist() == [-1, 0, 0, 1, 1]
    assert fe["phase"].tolist() == ["strip", "plate", "strip", "plate", "strip"]
    ce = ec_charge_per_cycle(log.data, positive_current_plates=True)
    assert ce["cycle"].tolist() == [0, 1]
    np.testing.assert_allclose(ce["ce_electrochemical"], [0.8, 0.9], rtol=0.02)
    # a log that starts by plating is left as it is
    start_plating = _log_starting_by_stripping().iloc[50:].reset_index(drop=True)
    start_plating["half_cycle"] -= 1
    start_plating["cycle"] = start_plating["half_cycle"] // 2
    assert number_from_first_plating(start_plating) is start_plating


def test_real_eclab_log_whose_first_half_cycle_sits_alone_is_counted_from_its_first_plating():
    """EC-Lab's GCPL logs of the fixtures put a first half-cycle alone in cycle 0 and skip
    half-cycle 1 (yadg pr_182.1: half-cycles 0, 2, 3, ...; the first one strips 11.7 C with
    positive current plating). The data set's first cycle had no plating, so nothing could be
    segmented. Counted from the first plating (the log's half-cycle 2): that stripping is
    cycle -1, and every cycle is a plating followed by its stripping."""
    from ecafm.io.echem import first_plating_half_cycle, number_from_first_plating

    log = read_ec_log(real_ec("biologic_mpt", "yadg_gcpl.pr_182.1.mpt"))
    raw = log.data
    assert sorted(set(raw["half_cycle"]))[:3] == [0, 2, 3]
    assert first_plating_half_cycle(raw) == 2
    d = number_from_first_plating(raw)
    assert set(d.loc[raw["half_cycle"] == 0, "cycle"]) == {-1}
    for hc, part in d.groupby("half_cycle"):
        net = np.diff(part["charge_C"].to_numpy()).sum()
        assert (net > 0) == (hc % 2 == 0), hc  # even: plating, odd (-1 too): stripping
    assert (d["cycle"] == d["half_cycle"] // 2).all()
    fe = frame_electrochemistry(log, raw["time_s"].to_numpy()[::50])
    assert set(fe.loc[fe["phase"] == "plate", "half_cycle"] % 2) == {0}
    assert set(fe.loc[fe["phase"] == "strip", "half_cycle"] % 2) == {1}


def test_gamry_dta_matches_its_curve_table():
    """Gamry .DTA (chronoamperometry, 10 rows, the fixture of gamry-parser): read through
    gamry-parser; compared with the CURVE table parsed here line by line (T s, Vf V, Im A)."""
    path = real_ec("gamry_dta", "gamryparser_chronoa_data.dta")
    assert sniff_format(path) == "gamry-dta"
    lines = path.read_text(encoding="latin-1").splitlines()
    i = next(k for k, ln in enumerate(lines) if ln.startswith("CURVE\tTABLE"))
    head = lines[i + 1].split("\t")
    rows = [ln.split("\t") for ln in lines[i + 3:] if ln.strip()]
    col = {n: np.array([float(r[head.index(n)]) for r in rows]) for n in ("T", "Vf", "Im")}
    log = read_ec_log(path)
    assert log.format == "gamry-dta" and len(log.data) == len(rows) == 10
    assert log.reader.startswith("gamry-parser 0.")  # recorded in the cube's attrs by ingest
    np.testing.assert_allclose(log.data["time_s"], col["T"])
    np.testing.assert_allclose(log.data["potential_V"], col["Vf"])
    np.testing.assert_allclose(log.data["current_mA"], col["Im"] * 1e3)
    assert log.start_time == datetime.datetime(2019, 3, 10, 12, 0, 0)  # DATE 3/10/2019, TIME 12:00:00
    # charge: the trapezoid of the current (C = mA s / 1000)
    q = np.r_[0.0, np.cumsum(0.5 * (col["Im"][1:] + col["Im"][:-1]) * np.diff(col["T"]))]
    np.testing.assert_allclose(log.data["charge_C"], q, atol=1e-15)


def test_battery_data_format_csv_half_cycles_follow_its_step_types():
    """Battery Data Format CSV (cellpy's batmo fixture: 21206 rows, Cycle Count 1-109): units
    from the header (Test Time / h, Current / A), rest from Step Type, and the half-cycles
    derived from the current agree with the file's own charge/discharge steps: 219 runs."""
    path = real_ec("generic_csv", "cellpy_batmo_bdf.csv")
    assert sniff_format(path) == "bdf-csv"
    raw = pd.read_csv(path)
    steps = raw["Step Type / 1"].astype(str).str.strip()
    active = steps[steps != "rest"].to_numpy()
    n_runs = 1 + int((active[1:] != active[:-1]).sum())
    log = read_ec_log(path)
    d = log.data
    assert log.format == "bdf-csv" and len(d) == len(raw) == 21206
    np.testing.assert_allclose(d["time_s"], raw["Test Time / h"] * 3600.0)
    np.testing.assert_allclose(d["current_mA"], raw["Current / A"] * 1e3)
    np.testing.assert_array_equal(d["rest"], steps.eq("rest"))
    assert d["half_cycle"].nunique() == n_runs == 219
    assert raw["Cycle Count / 1"].max() == 109
    # every derived half-cycle holds one step type only
    assert (pd.Series(steps.to_numpy()[~d["rest"].to_numpy()]).groupby(
        d["half_cycle"].to_numpy()[~d["rest"].to_numpy()]).nunique() == 1).all()


def test_bdf_csv_with_an_unknown_unit_names_the_column(tmp_path):
    p = tmp_path / "cell.csv"
    p.write_text("Test Time / fortnight,Current / A,Voltage / V\n1,0.1,3.0\n2,0.1,3.1\n")
    with pytest.raises(InputFileError, match=r"cell\.csv: column 'Test Time / fortnight': unit 'fortnight'"):
        read_ec_log(p)


def test_inspect_a_log_shows_its_cycles_from_the_first_plating(tmp_path, capsys):
    """`ecafm inspect LOG`: the first plating, what comes before it, and per cycle the plated and
    stripped charge, so that a user sees the sign convention before a run. The log starts by
    stripping 50 s; plate 100 s / strip 80 s, plate 100 s / strip 90 s at 0.01 mA = 1 mC per
    plating. The other sign convention reads the strippings as platings: CE above 100 %."""
    from ecafm.cli import main

    path = tmp_path / "li_li.mpt"
    write_mpt(_log_starting_by_stripping(), path, start_time=datetime.datetime(2026, 1, 1, 9))
    assert main(["-q", "inspect", str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1].startswith("  format biologic-mpt, 420 rows") and "start 2026-01-01T09:00:00" in out[1]
    assert "first plating = the log's half-cycle 1 (50 s before it are cycle -1); 2 cycle(s)" in out[2]
    assert out[3] == "  cycle   0: plated 0.001 C, stripped 0.0008 C, CE 80.0 %"
    assert out[4] == "  cycle   1: plated 0.001 C, stripped 0.0009 C, CE 90.0 %"
    assert main(["-q", "inspect", "--negative-current-plates", str(path)]) == 0
    flipped = capsys.readouterr().out
    assert "first plating = the log's half-cycle 0; 3 cycle(s)" in flipped
    assert "CE above 100 %" in flipped and "inspect without --negative-current-plates" in flipped
    assert main(["-q", "inspect", "--json", str(path)]) == 0
    import json

    d = json.loads(capsys.readouterr().out)[0]
    assert d["format"] == "biologic-mpt" and d["renumbered"] and d["n_cycles"] == 2


def test_gamry_dta_curves_whose_clock_restarts_follow_each_other(tmp_path):
    """A .DTA with two CURVE tables (the fixture's, then the same table again, its T from 0):
    the second curve is put after the first (T + 270 s), so that the log has one clock."""
    src = real_ec("gamry_dta", "gamryparser_chronoa_data.dta").read_text(encoding="latin-1")
    lines = src.splitlines()
    i = next(k for k, ln in enumerate(lines) if ln.startswith("CURVE\tTABLE"))
    table = [ln for ln in lines[i + 1:] if ln.strip()]
    two = tmp_path / "two_curves.DTA"
    two.write_text("\n".join(lines + ["CURVE2\tTABLE\t10"] + table) + "\n", encoding="latin-1")
    log = read_ec_log(two)
    t = log.data["time_s"].to_numpy()
    assert len(t) == 20 and np.all(np.diff(t) >= 0)  # (its first row at the first curve's last time)
    np.testing.assert_allclose(t[10:], t[:10] + 270.0)


NEWARE_CSV = ("neware", "cellpy_nw_regular_export_ife_example.csv")


def test_neware_csv_export_charges_match_its_own_cycle_rows():
    """The Neware BTS export nests cycle, step and record rows. Read from its records (current
    integrated over Total Time), every cycle's charge and discharge agree with the capacities of
    the file's own cycle rows (parsed here line by line) within 0.5 % (measured: 0.31 % at most,
    the first cycle's 81 C charge; 0.04 % median)."""
    import csv

    from ecafm.io.echem import charge_per_cycle

    path = real_ec(*NEWARE_CSV)
    assert sniff_format(path) == "neware-csv"
    log = read_ec_log(path)
    rows = list(csv.reader(path.read_text(encoding="latin-1").splitlines()))[3:]
    own = np.array([[float(r[1]) * 3600, float(r[2]) * 3600] for r in rows if r and r[0] != ""])
    records = [r for r in rows if r[:2] == ["", ""]]
    assert len(log.data) == len(records) == 9295
    assert log.start_time == datetime.datetime(2026, 3, 6, 12, 37, 25)
    assert log.data["time_s"].iloc[-1] == 27 * 3600 + 55 * 60 + 43  # Total Time of the last record
    ours = charge_per_cycle(log.data)  # the cell starts by charging: positive current plates
    assert ours["cycle"].tolist() == list(range(len(own))) and len(own) == 20
    np.testing.assert_allclose(ours[["plate_C", "strip_C"]].to_numpy(), own, rtol=0.005)


def test_inspect_does_not_doubt_the_sign_for_one_first_cycle_above_100_percent(capsys):
    """The Neware export's first cycle charges 81 C and discharges 1191 C (the file's own
    efficiency: 1465 %); the other 19 cycles are 98-101 %. One such first cycle is a formation or
    partial-charge step, not a sign the wrong way round: inspect used to ask about the sign for
    any cycle above 105 %, now for a median above 100 % (metal plated on the imaged electrode
    never all comes back). Read the other way round, this near-reversible cell is at 99.2-100.3 %,
    which the old rule let pass."""
    from ecafm.cli import main

    assert main(["-q", "inspect", str(real_ec(*NEWARE_CSV))]) == 0
    out = capsys.readouterr().out
    assert "cycle   0: plated 81.47 C, stripped 1191 C, CE 1461.3 %" in out
    assert "sign convention" not in out
    assert main(["-q", "inspect", "--negative-current-plates", str(real_ec(*NEWARE_CSV))]) == 0
    assert "CE above 100 % in 10 of 12 cycles (median 100.2 %)" in capsys.readouterr().out


@pytest.mark.parametrize(("edit", "match"), [
    (lambda lines: lines[:3] + [ln for ln in lines[3:] if not ln.startswith(",,")], "no record rows"),
    (lambda lines: lines[:4] + [lines[4].replace(",00:00:00,0.00000,4.3185,", ",00:00:00,,4.3185,", 1)],
     "Current"),
    (lambda lines: lines[:2] + [lines[2].replace("Total Time", "Elapsed")] + lines[3:9], "Total Time"),
    (lambda lines: lines[:3] + [lines[4].replace("00:00:00,00:00:00", "00:00:00,0:0:x")], "not a time"),
], ids=["no-records", "truncated-record", "no-time-column", "bad-time"])
def test_bad_neware_csv_names_file_and_cause(tmp_path, edit, match):
    lines = real_ec(*NEWARE_CSV).read_text(encoding="latin-1").splitlines()
    p = tmp_path / "export.csv"
    p.write_text("\n".join(edit(lines)) + "\n")
    with pytest.raises(InputFileError, match=rf"export\.csv.*{match}"):
        read_ec_log(p)
