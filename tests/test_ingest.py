"""Ingest of a multi-frame dataset with a log: cube contents, QC flags, and every bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ecafm.errors import InputFileError
from ecafm.ingest import PHASE_CODES, ingest
from ecafm.store import open_cube, read_record
from tests.helpers import make_dataset, write_gwy


def _ingest(d, out, **kw):
    return ingest([d["raw"]], out, ec_log=d["log"], frame_sheet=d["frames"], **kw)


def test_cube_from_frames_and_log(tmp_path):
    d = make_dataset(tmp_path / "ds", n_frames=8, n_cycles=2, half_s=100.0, zero_frames=(5,))
    rec = _ingest(d, tmp_path / "c.zarr", qc_table=tmp_path / "qc.tsv")
    ds = open_cube(tmp_path / "c.zarr")
    assert dict(ds.sizes) == {"frame": 8, "y": 32, "x": 32, "row": 32}
    assert ds["height"].dtype == np.float32 and ds["height"].attrs["units"] == "nm"
    assert ds["height"].encoding["chunks"] == (1, 32, 32)
    assert ds["x"].attrs["units"] == "nm" and ds["time"].attrs["units"] == "s"
    np.testing.assert_allclose(ds["x"].values, (np.arange(32) + 0.5) * 10.0)
    np.testing.assert_allclose(ds["height"].values, d["heights"], atol=1e-4)
    # Cycle assignment: the log plates for 100 s then strips for 100 s, 2 cycles; frames are
    # assigned at mid-frame (start + 32 lines * 0.1 s / 2).
    mid = d["times"] + 1.6
    np.testing.assert_allclose(ds["time"].values, d["times"])
    expect_half = (mid // 100).astype(int)
    np.testing.assert_array_equal(ds["half_cycle"].values, expect_half)
    np.testing.assert_array_equal(ds["cycle"].values, expect_half // 2)
    expect_phase = np.where(expect_half % 2 == 0, PHASE_CODES["plate"], PHASE_CODES["strip"])
    np.testing.assert_array_equal(ds["phase"].values, expect_phase)
    # Charge: +10 uA while plating, -10 uA while stripping (cumulative, C).
    q = np.where(expect_half % 2 == 0, (mid % 100) * 1e-5, (100 - mid % 100) * 1e-5)
    np.testing.assert_allclose(ds["charge"].values, q, atol=2e-7)
    # Charge of every scan line (its middle) and at the frame end, from the same log: the
    # lines of a frame are 0.1 s apart, so a plating frame gains 1e-6 C per line.
    def q_at(t):
        h = (t // 100).astype(int)
        return np.where(h % 2 == 0, (t % 100) * 1e-5, (100 - t % 100) * 1e-5)

    t_rows = d["times"][:, None] + 0.1 * (np.arange(32) + 0.5)[None, :]
    assert ds["row_charge"].dims == ("frame", "row") and ds["row_charge"].attrs["units"] == "C"
    np.testing.assert_allclose(ds["row_charge"].values, q_at(t_rows), atol=2e-7)
    np.testing.assert_allclose(ds["charge_end"].values, q_at(d["times"] + 3.2), atol=2e-7)
    # QC: the all-zero frame is flagged, not fatal.
    assert ds["frame_ok"].values.tolist() == [i != 5 for i in range(8)]
    qc = pd.read_csv(tmp_path / "qc.tsv", sep="\t")
    assert bool(qc.loc[5, "all_zero"]) and qc["ok"].sum() == 7
    # Provenance: inputs hashed, params recorded.
    assert rec["artifact"]["kind"] == "zarr"
    paths = [i["path"] for i in rec["inputs"]]
    assert str(d["log"]) in paths and len(paths) == 8 + 2
    assert read_record(tmp_path / "c.zarr")["step"]["params"]["metal"] == "Li"


def test_reading_in_two_processes_gives_the_same_cube(tmp_path):
    """threads=2 reads the files in two forked processes: the same cube, QC table and input hashes."""
    d = make_dataset(tmp_path / "ds", n_frames=9, n_cycles=2, half_s=100.0, zero_frames=(4,))
    one = _ingest(d, tmp_path / "c1.zarr", qc_table=tmp_path / "qc1.tsv", threads=1, dataset_id="ds")
    two = _ingest(d, tmp_path / "c2.zarr", qc_table=tmp_path / "qc2.tsv", threads=2, dataset_id="ds")
    assert one["artifact"]["logical_sha256"] == two["artifact"]["logical_sha256"]
    assert [i["sha256"] for i in one["inputs"]] == [i["sha256"] for i in two["inputs"]]
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "qc1.tsv", sep="\t"),
                                  pd.read_csv(tmp_path / "qc2.tsv", sep="\t"))
    assert two["run"]["threads"] == 2


def test_bad_file_read_in_a_worker_process_is_named(tmp_path):
    """A file that fails in a reader process raises the same InputFileError (file and cause) in
    the job, and no cube is left behind."""
    import pickle

    d = make_dataset(tmp_path / "ds", n_frames=6)
    bad = d["raw"] / "frame_003.gwy"
    bad.write_bytes(bad.read_bytes()[:40])  # truncated
    with pytest.raises(InputFileError) as serial:
        _ingest(d, tmp_path / "c1.zarr", threads=1)
    with pytest.raises(InputFileError) as pooled:
        _ingest(d, tmp_path / "c2.zarr", threads=2)
    assert "frame_003.gwy" in str(pooled.value) and str(pooled.value) == str(serial.value)
    assert not (tmp_path / "c2.zarr").exists()
    err = InputFileError("a.gwy", "truncated", frame=2, hint="re-export it")
    back = pickle.loads(pickle.dumps(err))
    assert (str(back), back.path, back.cause, back.frame, back.hint) == \
        (str(err), "a.gwy", "truncated", 2, "re-export it")


def test_negative_current_plates_swaps_phases(tmp_path):
    """The same log with the other sign convention: every plating frame is a stripping frame and
    the other way round, and half-cycles are counted from the (now second) half-cycle that plates,
    so plating half-cycles stay even and the first stripping is half-cycle -1, cycle -1."""
    d = make_dataset(tmp_path / "ds", n_frames=8)
    _ingest(d, tmp_path / "pos.zarr")
    _ingest(d, tmp_path / "neg.zarr", positive_current_plates=False)
    pos, neg = open_cube(tmp_path / "pos.zarr"), open_cube(tmp_path / "neg.zarr")
    swap = {PHASE_CODES["plate"]: PHASE_CODES["strip"], PHASE_CODES["strip"]: PHASE_CODES["plate"]}
    np.testing.assert_array_equal(neg["phase"].values, [swap[p] for p in pos["phase"].values])
    half = neg["half_cycle"].values
    np.testing.assert_array_equal(half, pos["half_cycle"].values - 1)
    np.testing.assert_array_equal(neg["cycle"].values, half // 2)
    assert np.all(neg["phase"].values == np.where(half % 2 == 0, PHASE_CODES["plate"], PHASE_CODES["strip"]))
    assert neg.attrs["first_plating_log_half_cycle"] == 1 and "first_plating_log_half_cycle" not in pos.attrs


def test_frames_of_different_size(tmp_path):
    d = make_dataset(tmp_path / "ds", n_frames=4)
    write_gwy(d["raw"] / "frame_002.gwy", np.zeros((16, 16)) + 1.0)
    with pytest.raises(InputFileError, match=r"frame_002\.gwy.*frame size 16x16 px differs"):
        _ingest(d, tmp_path / "c.zarr")
    assert not (tmp_path / "c.zarr").exists()


def test_frames_of_different_pixel_size(tmp_path):
    d = make_dataset(tmp_path / "ds", n_frames=4)
    write_gwy(d["raw"] / "frame_003.gwy", np.ones((32, 32)), pixel_nm=12.0)
    with pytest.raises(InputFileError, match=r"frame_003\.gwy.*pixel size"):
        _ingest(d, tmp_path / "c.zarr")


def test_log_does_not_cover_frames(tmp_path):
    d = make_dataset(tmp_path / "ds", n_frames=4)
    sheet = pd.read_csv(d["frames"], sep="\t")
    sheet.loc[3, "time_s"] = 5000.0
    sheet.to_csv(d["frames"], sep="\t", index=False)
    with pytest.raises(InputFileError, match=r"log\.mpt.*outside the log") as info:
        _ingest(d, tmp_path / "c.zarr")
    assert "frame 3" in str(info.value)
    assert not (tmp_path / "c.zarr").exists()


def test_sheet_row_pointing_at_nothing(tmp_path):
    d = make_dataset(tmp_path / "ds", n_frames=4)
    sheet = pd.read_csv(d["frames"], sep="\t")
    sheet.loc[1, "file"] = "raw/missing.gwy"
    sheet.to_csv(d["frames"], sep="\t", index=False)
    with pytest.raises(InputFileError, match=r"frames\.tsv.*row 2 points at 'raw/missing\.gwy'"):
        _ingest(d, tmp_path / "c.zarr")


def test_unsupported_file_in_folder(tmp_path):
    d = make_dataset(tmp_path / "ds", n_frames=3)
    (d["raw"] / "notes.txt").write_text("lab notes\n" * 5)
    with pytest.raises(InputFileError, match=r"notes\.txt: not a supported AFM format"):
        ingest([d["raw"]], tmp_path / "c.zarr")


def test_asd_movie_flags_near_empty_frames(real, tmp_path):
    """Frames 23-24 of the real .asd movie are almost all zeros: flagged, not fatal."""
    path = real("asd/asd_sample_0.asd")
    ingest([path], tmp_path / "m.zarr", qc_table=tmp_path / "qc.tsv")
    ds = open_cube(tmp_path / "m.zarr")
    assert ds.sizes["frame"] == 32
    ok = ds["frame_ok"].values
    assert not ok[23] and not ok[24]
    assert ok[:22].all()
    qc = pd.read_csv(tmp_path / "qc.tsv", sep="\t")
    assert qc.loc[23, "zero_fraction"] > 0.9 and qc.loc[24, "zero_fraction"] > 0.9
    np.testing.assert_allclose(np.diff(ds["time"].values), 1.0)  # 1000 ms per frame (header)
    # No potentiostat log: every phase unknown, so nothing plates and the workflow stops after
    # registration for this data set.
    from ecafm.level import cube_plates_first

    assert (ds["phase"].values == PHASE_CODES["unknown"]).all()
    assert cube_plates_first(tmp_path / "m.zarr") is False


def test_cube_cycles_read_once_per_written_cube(tmp_path, monkeypatch):
    """The workflow's input functions ask for a cube's cycles dozens of times per DAG: the store
    is opened once, and opened again when the cube is written anew."""
    import ecafm.store
    from ecafm.level import cube_cycles, cube_plates_first, cycle_segments

    opened = []
    real_open = ecafm.store.open_cube

    def counting_open(path, **kw):
        opened.append(kw)
        return real_open(path, **kw)

    monkeypatch.setattr(ecafm.store, "open_cube", counting_open)
    cube = tmp_path / "c.zarr"
    _ingest(make_dataset(tmp_path / "two", n_frames=8, n_cycles=2), cube)
    assert [cube_cycles(cube) for _ in range(5)] == [[0, 1]] * 5
    assert opened == [{"dask": False}]
    assert cube_cycles(cube) == cycle_segments(real_open(cube))
    assert cube_plates_first(cube) is True and len(opened) == 1  # from the same opening
    # Ingested again with three cycles: the new directory is read, not the cached answer.
    _ingest(make_dataset(tmp_path / "three", n_frames=9, n_cycles=3), cube)
    assert cube_cycles(cube) == [0, 1, 2] and len(opened) == 2
    with pytest.raises(FileNotFoundError, match="no zarr.json"):
        cube_cycles(tmp_path / "missing.zarr")


def test_ingest_figure_of_a_movie_without_log_shows_its_frame_clock(real, tmp_path, monkeypatch):
    """Without a log every frame's cycle is -1: the figure plotted that flat line. It now shows
    the time between frames (pauses stand out) and says that the phases are unknown."""
    import ecafm.figures
    from ecafm.store import Step

    ingest([real("asd/asd_sample_0.asd")], tmp_path / "m.zarr", qc_table=tmp_path / "qc.tsv")
    shown = {}
    monkeypatch.setattr(ecafm.figures, "_write_figure", lambda fig, out, step: shown.setdefault("fig", fig))
    ecafm.figures.plot_ingest(tmp_path / "m.zarr", tmp_path / "qc.tsv", tmp_path / "f.png", step=Step("plot_ingest"))
    axes = shown["fig"].axes
    titles = [a.get_title() for a in axes]
    assert sum("phase unknown" in t for t in titles) == 3
    clock = next(a for a in axes if a.get_title().startswith("no potentiostat log"))
    assert "6 of 32 frames QC-flagged" in clock.get_title()
    np.testing.assert_allclose(clock.lines[0].get_ydata(), 1.0)  # one frame per second (header)
    assert clock.get_ylabel() == "time since the previous frame (s)"


def test_sheet_with_phases_only_numbers_half_cycles_from_the_first_plating(tmp_path):
    """No log, a frame sheet with `phase` but no `half_cycle`: every frame was half-cycle -1, an
    odd number, so the segment stage took every frame after the first plating for a stripping.
    Half-cycles now come from the runs of phases, counted from the first plating."""
    d = make_dataset(tmp_path / "ds", n_frames=9)
    sheet = pd.read_csv(d["frames"], sep="\t")
    sheet["phase"] = ["rest", "strip", "strip", "plate", "plate", "rest", "strip", "plate", "strip"]
    sheet.to_csv(d["frames"], sep="\t", index=False)
    ingest([d["raw"]], tmp_path / "c.zarr", frame_sheet=d["frames"])
    ds = open_cube(tmp_path / "c.zarr")
    assert ds["half_cycle"].values.tolist() == [-1, -1, -1, 0, 0, 0, 1, 2, 3]
    assert ds["cycle"].values.tolist() == [-1, -1, -1, 0, 0, 0, 0, 1, 1]
    from ecafm.ingest import half_cycles_from_phases

    assert half_cycles_from_phases(np.array([0, 0, 2, 2])).tolist() == [-1] * 4  # nothing plates


def test_a_stripping_before_the_first_frame_leaves_every_frame_where_it_was(tmp_path):
    """The demo's log with a 200 s stripping put in front, numbered as EC-Lab numbers it (that
    stripping is half-cycle 0, the demo's platings become odd): every frame gets the cycle,
    half-cycle and phase it has with the demo's own log, and the balance the same charges per
    cycle. Read as numbered, the platings were odd half-cycles (the segment stage's strippings)."""
    from ecafm.io.echem import read_ec_log, write_mpt
    from ecafm.lifetime import ec_charge_per_cycle
    from ecafm.synth import synth

    synth("demo", 0, tmp_path / "d", overrides={"n_cycles": 2, "n_px": 64})
    d = tmp_path / "d"
    log = read_ec_log(d / "ec" / "log.mpt")
    orig = log.data
    i = float(orig["current_mA"].abs().max())
    pre = pd.DataFrame({"time_s": np.arange(200.0), "potential_V": 0.05, "current_mA": -i,
                        "charge_C": -i * 1e-3 * np.arange(200.0), "half_cycle": 0, "cycle": 0, "rest": False})
    shifted = orig.assign(time_s=orig["time_s"] + 200.0, charge_C=orig["charge_C"] + pre["charge_C"].iloc[-1],
                          half_cycle=orig["half_cycle"] + 1, cycle=(orig["half_cycle"] + 1) // 2)
    write_mpt(pd.concat([pre, shifted], ignore_index=True), tmp_path / "strip_first.mpt",
              start_time=log.start_time - pd.Timedelta(seconds=200).to_pytimedelta())
    sheet = pd.read_csv(d / "frames.tsv", sep="\t")
    sheet["file"] = [str((d / f).resolve()) for f in sheet["file"]]
    sheet.assign(time_s=sheet["time_s"] + 200.0).to_csv(tmp_path / "frames_shifted.tsv", sep="\t", index=False)
    ingest([d / "raw"], tmp_path / "a.zarr", ec_log=d / "ec" / "log.mpt", frame_sheet=d / "frames.tsv")
    ingest([d / "raw"], tmp_path / "b.zarr", ec_log=tmp_path / "strip_first.mpt",
           frame_sheet=tmp_path / "frames_shifted.tsv")
    a, b = open_cube(tmp_path / "a.zarr"), open_cube(tmp_path / "b.zarr")
    for c in ("cycle", "half_cycle", "phase"):
        np.testing.assert_array_equal(b[c].values, a[c].values, err_msg=c)
    assert b.attrs["first_plating_log_half_cycle"] == 1
    qa = ec_charge_per_cycle(orig, positive_current_plates=True)
    qb = ec_charge_per_cycle(read_ec_log(tmp_path / "strip_first.mpt").data, positive_current_plates=True)
    pd.testing.assert_frame_equal(qb, qa, rtol=1e-6)


def test_a_gamry_log_is_ingested_and_its_reader_recorded(tmp_path):
    """Frames against the real Gamry .DTA (chronoamperometry, 0-270 s): each frame gets the
    log's potential at its mid-time, and the cube names the library that parsed the log
    (gamry-parser is not among the key libraries every record lists)."""
    d = make_dataset(tmp_path / "ds", n_frames=4)
    sheet = pd.read_csv(d["frames"], sep="\t")
    sheet["time_s"] = [10.0, 100.0, 200.0, 250.0]
    sheet.to_csv(d["frames"], sep="\t", index=False)
    from tests.conftest import shared_file

    log = shared_file("real_ec/gamry_dta/gamryparser_chronoa_data.dta")
    ingest([d["raw"]], tmp_path / "c.zarr", ec_log=log, frame_sheet=d["frames"])
    ds = open_cube(tmp_path / "c.zarr")
    assert ds.attrs["ec_log_reader"].startswith("gamry-parser ")
    mid = sheet["time_s"].to_numpy() + 0.1 * 32 / 2  # 32 lines of 0.1 s
    np.testing.assert_allclose(ds["potential"].values, np.interp(mid, [0, 30, 60, 90, 120, 150, 180, 210, 240, 270],
                               [-5.4e-4, .499669, .499668, .499659, .499654, .499657, .499661, .499667, .49966, .4]),
                               atol=1e-6)


def test_sheet_half_cycles_counted_from_a_first_stripping_are_counted_from_the_first_plating(tmp_path):
    """A sheet copied from a potentiostat that numbers a Li|Li cell from its first stripping
    (0 strip, 1 plate, 2 strip, 3 plate): taken as given, every plating frame sat in an odd
    half-cycle, the segment stage's stripping. A sheet numbered from the first plating keeps its
    numbers, also when it starts at a later cycle."""
    d = make_dataset(tmp_path / "ds", n_frames=8)
    sheet = pd.read_csv(d["frames"], sep="\t")
    sheet["half_cycle"] = [0, 0, 1, 1, 2, 2, 3, 3]
    sheet["cycle"] = [0, 0, 0, 0, 1, 1, 1, 1]
    sheet["phase"] = ["rest", "strip", "plate", "plate", "strip", "rest", "plate", "plate"]
    sheet.to_csv(d["frames"], sep="\t", index=False)
    ingest([d["raw"]], tmp_path / "c.zarr", frame_sheet=d["frames"])
    ds = open_cube(tmp_path / "c.zarr")
    assert ds["half_cycle"].values.tolist() == [-1, -1, 0, 0, 1, 1, 2, 2]
    assert ds["cycle"].values.tolist() == [-1, -1, 0, 0, 0, 0, 1, 1]
    assert ds.attrs["first_plating_sheet_half_cycle"] == 1

    from ecafm.ingest import sheet_half_cycles

    p, s, r = PHASE_CODES["plate"], PHASE_CODES["strip"], PHASE_CODES["rest"]
    later = np.array([6, 6, 7, 7, 8])  # frames of cycles 3-4 only, numbered from a plating
    assert sheet_half_cycles(later, np.array([p, p, s, r, p])) is later
    # EC-Lab's skipped half-cycle 1: 0 strip, 2 plate, 3 strip, 4 plate
    assert sheet_half_cycles(np.array([0, 2, 3, 4]), np.array([s, p, s, p])).tolist() == [-1, 0, 1, 2]
    # a rest-only half-cycle joins the one before
    assert sheet_half_cycles(np.array([0, 1, 2, 3]), np.array([s, r, p, s])).tolist() == [-1, -1, 0, 1]


def test_sheet_with_half_cycles_only_gives_each_frame_the_phase_of_its_half_cycle(tmp_path):
    """No log, a sheet with `half_cycle` alone: every phase stayed unknown, no frame plated, and
    the data set stopped after registration with advice to give the half_cycle column it had.
    Even half-cycles plate and odd ones strip (ecafm's convention); cycle = half_cycle // 2."""
    d = make_dataset(tmp_path / "ds", n_frames=6)
    sheet = pd.read_csv(d["frames"], sep="\t")
    sheet = sheet.drop(columns=[c for c in ("cycle", "phase") if c in sheet])
    sheet["half_cycle"] = [-1, 0, 0, 1, 2, 3]
    sheet.to_csv(d["frames"], sep="\t", index=False)
    ingest([d["raw"]], tmp_path / "c.zarr", frame_sheet=d["frames"])
    ds = open_cube(tmp_path / "c.zarr")
    p, s, u = PHASE_CODES["plate"], PHASE_CODES["strip"], PHASE_CODES["unknown"]
    assert ds["phase"].values.tolist() == [u, p, p, s, p, s]
    assert ds["cycle"].values.tolist() == [-1, 0, 0, 0, 1, 1]
    from ecafm.level import cube_plates_first

    assert cube_plates_first(tmp_path / "c.zarr")


@pytest.mark.parametrize(("edit", "match"), [
    (lambda s: s.assign(time_s=s["time_s"].where(s.index != 2)), r"row 3 \(.*\): time_s is empty"),
    (lambda s: s.assign(time_s=s["time_s"].astype(object).where(s.index != 2, "9:00")), "time_s is '9:00'"),
    (lambda s: s.assign(half_cycle=s["half_cycle"].astype(object).where(s.index != 1, "two")),
     "row 2 .*half_cycle is 'two', not a whole number"),
    (lambda s: s.assign(cycle=s["cycle"] + 0.5), r"cycle is '0.5', not a whole number \(6 such rows\)"),
    (lambda s: s.assign(line_time_s=-1.0), "line_time_s is '-1.0', not a positive number"),
    (lambda s: pd.concat([s, s.iloc[[1]]]), r"rows \[2, 7\] point at the same file"),
], ids=["time-missing", "time-text", "half-cycle-text", "cycle-fraction", "line-time-negative", "duplicate-row"])
def test_bad_frame_sheet_cells_name_the_sheet_and_row(tmp_path, edit, match):
    """A missing or mistyped cell of a frame sheet used to end the ingest in a bare ValueError or
    TypeError without the sheet's name, or, for a missing time or a cycle of 0.5, to pass."""
    d = make_dataset(tmp_path / "ds", n_frames=6)
    sheet = pd.read_csv(d["frames"], sep="\t")
    sheet["cycle"], sheet["half_cycle"], sheet["line_time_s"] = 0, 0, 0.5
    edit(sheet).to_csv(d["frames"], sep="\t", index=False)
    with pytest.raises(InputFileError, match=match) as err:
        ingest([d["raw"]], tmp_path / "c.zarr", frame_sheet=d["frames"])
    assert err.value.path == str(d["frames"])
    assert not (tmp_path / "c.zarr").exists()


def test_sheet_phase_words_of_a_lab_are_read_and_ambiguous_ones_refused(tmp_path):
    """`Plating`, `STRIP`, `OCV` and an empty cell read as plate, strip, rest and unknown; before,
    any of them stopped the ingest ("unknown phase value(s)"), an empty cell as `[nan]`. `discharge`
    stays refused: whether it plates the imaged electrode depends on the cell."""
    d = make_dataset(tmp_path / "ds", n_frames=5)
    sheet = pd.read_csv(d["frames"], sep="\t").drop(columns=["half_cycle", "cycle"], errors="ignore")
    sheet["phase"] = ["OCV", "Plating", "plate ", "", "STRIP"]
    sheet.to_csv(d["frames"], sep="\t", index=False)
    ingest([d["raw"]], tmp_path / "c.zarr", frame_sheet=d["frames"])
    p = PHASE_CODES
    assert open_cube(tmp_path / "c.zarr")["phase"].values.tolist() == [p["rest"], p["plate"], p["plate"],
                                                                        p["unknown"], p["strip"]]
    sheet["phase"] = ["rest", "charge", "discharge", "plate", "strip"]
    sheet.to_csv(d["frames"], sep="\t", index=False)
    with pytest.raises(InputFileError, match=r"unknown phase value\(s\) \['charge', 'discharge'\]"):
        ingest([d["raw"]], tmp_path / "c2.zarr", frame_sheet=d["frames"])
