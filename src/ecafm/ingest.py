"""Ingest: raw instrument files + electrochemistry log (or frame sheet) -> one chunked zarr cube.

The Snakemake rule ``ingest_dataset`` and ``ecafm ingest`` both call :func:`ingest`.
"""

from __future__ import annotations

import datetime as _dt
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ecafm.blas import one_blas_thread
from ecafm.errors import InputFileError
from ecafm.io.afm import RawFrame, iter_sources, read_frames

log = logging.getLogger(__name__)

#: Integer codes of the ``phase`` coordinate (CF flag convention).
PHASE_CODES = {"unknown": -1, "rest": 0, "plate": 1, "strip": 2}
QC_FLAGS = ("all_zero", "mostly_zero", "constant", "has_nan", "saturated")


@dataclass(frozen=True)
class QCParams:
    """Thresholds of the per-frame QC (config key ``ingest.qc``)."""

    mostly_zero_fraction: float = 0.5
    saturated_fraction: float = 0.05
    nan_fraction: float = 0.0


# --------------------------------------------------------------------------- frame sheet
def read_frame_sheet(path: str | Path):
    """Read a frame sheet (TSV): file, time_s [, line_time_s, cycle, half_cycle, phase].

    ``file`` is relative to the sheet's folder (or absolute); ``time_s`` is the acquisition start
    of the frame in seconds on the electrochemistry log's clock (or any common clock without a
    log).
    """
    import pandas as pd

    path = Path(path)
    if not path.exists():
        raise InputFileError(path, "frame sheet not found")
    df = pd.read_csv(path, sep="\t", comment="#")
    missing = {"file", "time_s"} - set(df.columns)
    if missing:
        raise InputFileError(path, f"frame sheet lacks column(s) {sorted(missing)}",
                             hint="required: file, time_s; optional: line_time_s, cycle, half_cycle, phase")
    resolved = []
    for i, f in enumerate(df["file"]):
        p = Path(f)
        p = p if p.is_absolute() else path.parent / p
        if not p.exists():
            raise InputFileError(path, f"row {i + 1} points at {f!r}, which does not exist",
                                 hint="fix the path (relative to the sheet's folder) or drop the row")
        resolved.append(str(p.resolve()))
    df["path"] = resolved
    dup = df["path"].duplicated(keep=False)
    if dup.any():
        rows = (np.flatnonzero(dup) + 1).tolist()
        raise InputFileError(path, f"rows {rows} point at the same file {df['file'][dup].iloc[0]!r}",
                             hint="one row per file: a movie's frames follow its row by the file's frame time")
    _check_sheet_numbers(path, df)
    if "phase" in df.columns:
        df["phase"] = [_phase_name(v) for v in df["phase"]]
        bad = sorted(set(df["phase"]) - set(PHASE_CODES))
        if bad:
            raise InputFileError(path, f"unknown phase value(s) {bad}; use plate, strip or rest (or leave "
                                 "the cell empty for unknown)")
    return df


#: Words a lab may write in a frame sheet's phase column for ecafm's phase names (any case).
#: Not "charge" and "discharge": which of them plates the imaged electrode depends on the cell
#: (in a Li|Cu cell discharging plates the copper), so they are refused like any unknown word.
PHASE_WORDS = {"plating": "plate", "deposition": "plate", "stripping": "strip", "dissolution": "strip",
               "ocv": "rest", "ocp": "rest", "open circuit": "rest", "": "unknown", "nan": "unknown"}


def _phase_name(value: Any) -> str:
    text = "" if value is None or (isinstance(value, float) and np.isnan(value)) else str(value).strip().lower()
    return PHASE_WORDS.get(text, text)


def _check_sheet_numbers(path: Path, df) -> None:
    """Every time a finite number (line times positive), every cycle and half-cycle a whole
    number: a missing or mistyped cell used to end the ingest in a bare ValueError, or (a missing
    time, a cycle of 0.5) to pass silently."""
    import pandas as pd

    for col, kind in (("time_s", "time"), ("line_time_s", "positive"), ("cycle", "int"), ("half_cycle", "int")):
        if col not in df.columns:
            continue
        v = pd.to_numeric(df[col], errors="coerce").to_numpy(float)
        bad = ~np.isfinite(v)
        if kind == "positive":
            bad |= ~(v > 0)
        elif kind == "int":
            bad |= np.isfinite(v) & (v != np.round(v))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            cell = df[col].iloc[i]
            shown = "empty" if pd.isna(cell) else f"{str(cell)!r}"
            want = {"time": "a number of seconds", "positive": "a positive number of seconds",
                    "int": "a whole number"}[kind]
            raise InputFileError(path, f"row {i + 1} ({df['file'].iloc[i]}): {col} is {shown}, not {want}"
                                 + (f" ({int(bad.sum())} such rows)" if bad.sum() > 1 else ""),
                                 hint=f"give {col} in every row" + ("" if col == "time_s" else ", or drop the column"))
        df[col] = v.astype(np.int64) if kind == "int" else v


def half_cycles_from_phases(phase: np.ndarray) -> np.ndarray:
    """Half-cycle of each frame (acquisition order) from phase codes alone, as a log's would be
    counted (:func:`ecafm.io.echem.number_from_first_plating`): runs of plating or stripping
    frames, rest frames in the run before them (leading rests in the first run), the first
    plating run 0, runs before it negative. -1 everywhere when no frame plates.

    A frame sheet with a ``phase`` column but no ``half_cycle`` left every frame at half-cycle
    -1, whose parity made every frame after the first plating a stripping frame.
    """
    from ecafm.io.echem import direction_runs

    ph = np.asarray(phase)
    run, first = direction_runs(np.where(ph == PHASE_CODES["plate"], 1.0,
                                         np.where(ph == PHASE_CODES["strip"], -1.0, 0.0)))
    if first is None:
        return np.full(ph.shape, -1, np.int32)
    return (run - first).astype(np.int32)


def sheet_half_cycles(half: np.ndarray, phase: np.ndarray) -> np.ndarray:
    """A frame sheet's own ``half_cycle`` numbers, counted from the first plating when its
    ``phase`` column says they are not (the input unchanged, the same object, when they are).

    ecafm's half-cycle 0 is the first plating, so platings are even and strippings odd. A sheet
    copied from a potentiostat that numbers from the technique's start (a Li|Li cell stripping
    first: 0 strip, 1 plate, ...) had every plating frame taken for a stripping by the segment
    stage. When a plating frame sits in an odd half-cycle or a stripping frame in an even one,
    the sheet's half-cycles are renumbered as a log's are (:func:`ecafm.io.echem.direction_runs`
    over the distinct half-cycle numbers in order; each one's direction is its frames' majority
    phase; rest-only half-cycles join the one before). Without a ``phase`` column nothing tells
    a plating from a stripping, so the numbers are taken as given.
    """
    from ecafm.io.echem import direction_runs

    half, ph = np.asarray(half), np.asarray(phase)
    plate, strip = ph == PHASE_CODES["plate"], ph == PHASE_CODES["strip"]
    if not (np.any(plate & (half % 2 == 1)) or np.any(strip & (half % 2 == 0))):
        return half
    values = np.unique(half)
    direction = [np.sign(np.count_nonzero(plate & (half == v)) - np.count_nonzero(strip & (half == v)))
                 for v in values]
    run, first = direction_runs(np.array(direction, float))
    if first is None:
        return half
    return (run - first).astype(np.int32)[np.searchsorted(values, half)]


# --------------------------------------------------------------------------- QC
def frame_qc(height: np.ndarray, *, params: QCParams = QCParams()) -> dict[str, Any]:
    """Per-frame QC flags: all-zero, mostly zero, constant, NaN, saturated."""
    finite = np.isfinite(height)
    n = height.size
    vals = height[finite]
    zero_frac = float(np.mean(vals == 0)) if vals.size else 1.0
    nan_frac = 1.0 - float(finite.mean())
    if vals.size:
        lo, hi = float(vals.min()), float(vals.max())
        sat = float(max(np.mean(vals == lo), np.mean(vals == hi))) if hi > lo else 1.0
    else:
        lo = hi = float("nan")
        sat = 0.0
    flags = {
        "all_zero": bool(vals.size == 0 or (lo == 0 and hi == 0)),
        "mostly_zero": zero_frac > params.mostly_zero_fraction,
        "constant": bool(vals.size == 0 or hi == lo),
        "has_nan": nan_frac > params.nan_fraction,
        "saturated": sat > params.saturated_fraction,
    }
    return {
        **flags,
        "zero_fraction": zero_frac,
        "nan_fraction": nan_frac,
        "saturated_fraction": sat,
        "min_nm": lo,
        "max_nm": hi,
        "ok": not any(flags.values()),
        "n_pixels": n,
    }


# --------------------------------------------------------------------------- assembly
def _check_geometry(frames: list[RawFrame]) -> None:
    f0 = frames[0]
    for f in frames[1:]:
        if f.shape != f0.shape:
            raise InputFileError(
                f.path, f"frame size {f.shape[0]}x{f.shape[1]} px differs from {f0.shape[0]}x{f0.shape[1]} "
                f"px of {Path(f0.path).name}", frame=f.index,
                hint="one dataset is one field of view at one resolution: split it into datasets")
        if not np.allclose(f.pixel_size_nm, f0.pixel_size_nm, rtol=1e-6):
            raise InputFileError(
                f.path, f"pixel size {f.pixel_size_nm} nm differs from {f0.pixel_size_nm} nm of "
                f"{Path(f0.path).name}", frame=f.index,
                hint="one dataset is one field of view at one scan size: split it into datasets")


def _frame_times(frames: list[RawFrame], sheet, ec_start: _dt.datetime | None,
                 clock_offset_s: float) -> tuple[np.ndarray, str]:
    """Acquisition start of each frame in s on the log's clock (or since the first frame)."""
    if sheet is not None:
        by_path = {p: t for p, t in zip(sheet["path"], sheet["time_s"], strict=True)}
        times = []
        for f in frames:
            key = str(Path(f.path).resolve())
            if key not in by_path:
                raise InputFileError(f.path, "file is not listed in the frame sheet",
                                     hint="add a row for it or remove it from the raw folder")
            movie_dt = float(f.meta.get("frame_time_s") or 0.0) * f.index
            times.append(float(by_path[key]) + movie_dt + clock_offset_s)
        return np.asarray(times, float), "frame sheet"
    stamps = [f.timestamp for f in frames]
    if any(s is None for s in stamps):
        bad = next(f for f in frames if f.timestamp is None)
        if ec_start is not None or len({f.path for f in frames}) > 1:
            raise InputFileError(bad.path, "no acquisition timestamp in the file", frame=bad.index,
                                 hint="give a frame sheet with time_s per file (config/datasets.tsv column frames)")
        # One multi-frame or single-frame file without a clock: frame index spacing.
        dt = float(frames[0].meta.get("frame_time_s") or 1.0)
        return np.arange(len(frames), dtype=float) * dt, "frame index"
    origin = ec_start if ec_start is not None else min(stamps)  # type: ignore[type-var]
    secs = np.array([(s - origin).total_seconds() for s in stamps], float)  # type: ignore[operator]
    return secs + clock_offset_s, ("log start" if ec_start is not None else "first frame")


def row_charges(eclog, times: np.ndarray, line_time: np.ndarray, ny: int) -> tuple[np.ndarray, np.ndarray]:
    """Charge from the log at the middle of every scan line, and at the end of every frame.

    Material comes and goes while a frame is scanned, so each line shows the electrode at its
    own charge; the segmentation brings every frame to the charge at its end with these
    (they follow the log through cut-offs and rests, which no constant-current model does).
    Lines or frame ends outside the log, or frames without a line time, are NaN.
    """
    t_log = eclog.data["time_s"].to_numpy(np.float64)
    q_log = eclog.data["charge_C"].to_numpy(np.float64)
    lt = np.asarray(line_time, np.float64)[:, None]
    t_rows = np.asarray(times, np.float64)[:, None] + lt * (np.arange(ny) + 0.5)[None, :]
    t_end = np.asarray(times, np.float64) + lt[:, 0] * ny
    interp = lambda t: np.interp(t, t_log, q_log, left=np.nan, right=np.nan)  # noqa: E731
    return interp(t_rows), interp(t_end)


@one_blas_thread
def ingest(
    sources: Sequence[str | Path],
    out: str | Path,
    *,
    fmt: str = "auto",
    channel: str | None = None,
    ec_log: str | Path | None = None,
    frame_sheet: str | Path | None = None,
    metal: str = "Li",
    positive_current_plates: bool = True,
    clock_offset_s: float = 0.0,
    frame_chunk: int = 1,
    qc: QCParams = QCParams(),
    dataset_id: str | None = None,
    qc_table: str | Path | None = None,
    rule: str = "ingest_dataset",
    wildcards: dict[str, str] | None = None,
    threads: int = 1,
) -> dict[str, Any]:
    """Convert one dataset's raw files (and log or frame sheet) into a zarr cube.

    Returns the provenance record of the cube.
    """
    import xarray as xr

    from ecafm.store import Step, write_cube, write_table

    files = list(iter_sources(list(sources)))
    sheet = read_frame_sheet(frame_sheet) if frame_sheet else None
    if sheet is not None:
        listed = set(sheet["path"])
        files = [f for f in files if str(Path(f).resolve()) in listed] or files
    log.info("reading %d file(s)", len(files))
    # Pass 1: read each file once for its metadata and the per-frame QC, then keep only
    # zero-memory placeholders; pass 2 (at write time) re-reads the files chunk by chunk through
    # dask, so no job holds the whole cube in memory.
    frames: list[RawFrame] = []
    qc_of: dict[tuple[str, int], dict[str, Any]] = {}
    for i, scanned in enumerate(_scan_files(files, fmt, channel, qc, threads)):
        for fr, q in scanned:
            qc_of[(fr.path, fr.index)] = q
            frames.append(fr)
        if (i + 1) % 10 == 0 or i + 1 == len(files):
            log.info("read %d/%d files (%d frames)", i + 1, len(files), len(frames))
    if not frames:
        raise InputFileError(sources[0] if sources else "?", "no frames found")
    _check_geometry(frames)

    eclog = None
    if ec_log:
        from ecafm.io.echem import read_ec_log

        eclog = read_ec_log(ec_log)
    times, time_ref = _frame_times(frames, sheet, eclog.start_time if eclog else None, clock_offset_s)
    order = np.lexsort((np.array([f.index for f in frames]), np.array([f.path for f in frames]), times))
    frames = [frames[i] for i in order]
    times = times[order]
    ny, nx = frames[0].shape
    line_time = np.array([f.line_time_s if f.line_time_s else np.nan for f in frames], float)
    if sheet is not None and "line_time_s" in sheet.columns:
        lt = dict(zip(sheet["path"], sheet["line_time_s"], strict=True))
        line_time = np.array([lt.get(str(Path(f.path).resolve()), np.nan) for f in frames], float)
    mid = times + np.nan_to_num(line_time, nan=0.0) * ny / 2.0

    n = len(frames)
    cycle = np.full(n, -1, np.int32)
    half = np.full(n, -1, np.int32)
    phase = np.full(n, PHASE_CODES["unknown"], np.int8)
    charge = np.full(n, np.nan)
    potential = np.full(n, np.nan)
    row_charge = np.full((n, ny), np.nan)
    charge_end = np.full(n, np.nan)
    renumbered, first_plating = False, None  # cycles counted from the log's first plating
    if eclog is not None:
        from ecafm.io.echem import (
            first_plating_half_cycle,
            frame_electrochemistry,
            number_from_first_plating,
        )

        try:
            ec = frame_electrochemistry(eclog, mid, positive_current_plates=positive_current_plates)
        except InputFileError as exc:
            if exc.frame is None or not 0 <= exc.frame < len(frames):
                raise
            f = frames[exc.frame]
            raise InputFileError(
                eclog.path, f"{exc.cause} (that is {Path(f.path).name}, frame {f.index} of its file)",
                frame=exc.frame,
                hint="check the frame times (frame sheet or file timestamps) and clock_offset_s "
                "in config/datasets.tsv") from exc
        cycle[:] = ec["cycle"].to_numpy()
        half[:] = ec["half_cycle"].to_numpy()
        if number_from_first_plating(eclog.data, positive_current_plates=positive_current_plates) is not eclog.data:
            renumbered = True
            first_plating = first_plating_half_cycle(eclog.data, positive_current_plates=positive_current_plates)
            log.warning("%s: cycles are counted from the log's first plating, its half-cycle %s (with "
                        "positive_current_plates=%s); what comes before it is cycle -1. If the cell started "
                        "by plating the imaged electrode, positive_current_plates is wrong.", eclog.path,
                        first_plating, positive_current_plates)
        phase[:] = [PHASE_CODES[p] for p in ec["phase"]]
        charge[:] = ec["charge_C"].to_numpy()
        potential[:] = ec["potential_V"].to_numpy()
        row_charge, charge_end = row_charges(eclog, times, line_time, ny)
    elif sheet is not None:
        by = sheet.set_index("path")
        for i, f in enumerate(frames):
            row = by.loc[str(Path(f.path).resolve())]
            if "cycle" in by.columns:
                cycle[i] = int(row["cycle"])
            if "half_cycle" in by.columns:
                half[i] = int(row["half_cycle"])
            if "phase" in by.columns:
                phase[i] = PHASE_CODES[str(row["phase"])]
        if "phase" in by.columns and "half_cycle" not in by.columns:
            half[:] = half_cycles_from_phases(phase)
            log.info("%s: half-cycles from the sheet's phases, counted from the first plating: %s",
                     frame_sheet, sorted(set(half.tolist())))
        elif "half_cycle" in by.columns and "phase" not in by.columns:
            # ecafm's convention says what a half-cycle does: even ones plate, odd ones strip. Left
            # unknown, no frame plated, and the data set stopped after registration with advice
            # to give the half_cycle column it had.
            phase[:] = np.where(half < 0, PHASE_CODES["unknown"],
                                np.where(half % 2 == 0, PHASE_CODES["plate"], PHASE_CODES["strip"]))
            log.info("%s: no phase column; phases from half_cycle (even: plate, odd: strip)", frame_sheet)
        elif "phase" in by.columns:
            given = half.copy()
            if (counted := sheet_half_cycles(given, phase)) is not given:
                half[:] = counted
                cycle[:] = half // 2
                renumbered = True
                first_plating = int(given[np.flatnonzero(counted == 0)[0]])
                log.warning("%s: its half_cycle column puts plating frames in odd half-cycles or stripping "
                            "frames in even ones; counted from the first plating (the sheet's half-cycle %d) "
                            "as ecafm counts them: %s%s", frame_sheet, first_plating,
                            ", ".join(f"{a}->{b}" for a, b in sorted(set(zip(given.tolist(), half.tolist(), strict=True)))),
                            "; the sheet's cycle column is replaced by half_cycle // 2"
                            if "cycle" in by.columns else "")
        if "cycle" not in by.columns and {"phase", "half_cycle"} & set(by.columns):
            cycle[:] = half // 2

    stack = _lazy_stack(frames, "height", fmt=fmt, channel=channel)
    qcs = [qc_of[(f.path, f.index)] for f in frames]
    for i, (f, q) in enumerate(zip(frames, qcs, strict=True)):
        if not q["ok"]:
            flags = [k for k in QC_FLAGS if q[k]]
            log.warning("%s frame %d (cube frame %d): QC flags %s; excluded downstream",
                        f.path, f.index, i, ",".join(flags))

    py, px = frames[0].pixel_size_nm
    common = [c for c in frames[0].channels if all(c in f.channels for f in frames)]
    data_vars = {
        "height": (("frame", "y", "x"), stack,
                   {"units": "nm", "long_name": "height", "channel": frames[0].height_channel}),
    }
    for c in common:
        arr = _lazy_stack(frames, c, fmt=fmt, channel=channel)
        data_vars[_var_name(c)] = (("frame", "y", "x"), arr,
                                   {"units": frames[0].channels[c][1], "long_name": c})
    coords = {
        "frame": ("frame", np.arange(n, dtype=np.int32), {"long_name": "frame index in acquisition order"}),
        "y": ("y", ((np.arange(ny) + 0.5) * py).astype(np.float64), {"units": "nm", "long_name": "slow scan axis"}),
        "x": ("x", ((np.arange(nx) + 0.5) * px).astype(np.float64), {"units": "nm", "long_name": "fast scan axis"}),
        "time": ("frame", times, {"units": "s", "long_name": "acquisition start of the frame",
                                  "reference": time_ref}),
        "line_time": ("frame", line_time, {"units": "s", "long_name": "time per scan line"}),
        "cycle": ("frame", cycle, {"long_name": "cycle (plate + strip); -1 before the first or unknown"}),
        "half_cycle": ("frame", half, {"long_name": "half cycle as numbered by the potentiostat; -1 unknown"}),
        "phase": ("frame", phase, {"long_name": "electrochemical phase at mid-frame",
                                   "flag_values": list(PHASE_CODES.values()),
                                   "flag_meanings": " ".join(PHASE_CODES)}),
        "charge": ("frame", charge, {"units": "C", "long_name": "cumulative charge passed at mid-frame"}),
        "potential": ("frame", potential, {"units": "V", "long_name": "potential at mid-frame"}),
        "charge_end": ("frame", charge_end, {"units": "C", "long_name": "cumulative charge passed at "
                                             "the end of the frame (from the log; NaN without one)"}),
        "row_charge": (("frame", "row"), row_charge,
                       {"units": "C", "long_name": "cumulative charge passed when each scan line of the "
                        "raw frame was at its middle (from the log; NaN without one)"}),
        "frame_ok": ("frame", np.array([q["ok"] for q in qcs]), {"long_name": "passed ingest QC"}),
        "source_index": ("frame", np.array([f.index for f in frames], np.int32),
                         {"long_name": "frame index within its source file"}),
    }
    attrs = {
        "dataset": dataset_id or Path(out).stem,
        "metal": metal,
        "format": frames[0].format,
        "pixel_size_nm": [py, px],
        "pixel_size_convention": "scan size / N (AFMReader); arrays [y, x], row 0 first in file",
        "source_files": [str(Path(f.path).name) for f in frames],
        "positive_current_plates": bool(positive_current_plates),
        "clock_offset_s": float(clock_offset_s),
        "time_origin": (eclog.start_time.isoformat() if eclog is not None and eclog.start_time
                        else (min(f.timestamp for f in frames).isoformat()
                              if all(f.timestamp for f in frames) else "")),
        "ec_log": Path(ec_log).name if ec_log else "",
        "ecafm_kind": "cube",
    }
    if eclog is not None and eclog.reader:  # a library outside KEY_LIBRARIES parsed the log
        attrs["ec_log_reader"] = eclog.reader
    if renumbered:  # only then, so that the cubes of logs numbered from a plating keep their hashes
        source = "log" if eclog is not None else "sheet"
        attrs[f"first_plating_{source}_half_cycle"] = int(first_plating)
        attrs["half_cycle_numbering"] = (f"counted from the {source}'s first plating (half_cycle 0, cycle 0), not as "
                                         f"the {source} numbers them; earlier half-cycles are negative")
    ds = xr.Dataset(data_vars, coords=coords, attrs=attrs)
    inputs = [*map(str, files)] + ([str(ec_log)] if ec_log else []) + ([str(frame_sheet)] if frame_sheet else [])
    params = {"format": fmt, "channel": channel, "metal": metal, "positive_current_plates": positive_current_plates,
              "clock_offset_s": clock_offset_s, "frame_chunk": frame_chunk, "qc": qc.__dict__}
    step = Step(rule=rule, params=params, wildcards=wildcards or {}, inputs=tuple(inputs), threads=threads)
    if qc_table is not None:
        import pandas as pd

        qdf = pd.DataFrame([{"frame": i, "file": Path(f.path).name, "source_index": f.index,
                             "time_s": float(times[i]), "cycle": int(cycle[i]), **q}
                            for i, (f, q) in enumerate(zip(frames, qcs, strict=True))])
        write_table(qdf, qc_table, step=step)
    record = write_cube(ds, out, step=step, frame_chunk=frame_chunk)
    log.info("cube %s: %d frames of %dx%d px, %.4g nm/px; %d frame(s) flagged",
             out, n, ny, nx, px, sum(not q["ok"] for q in qcs))
    return record


def _scan_file(path: str, fmt: str | None, channel: str | None, qc: QCParams) -> tuple[list, tuple]:
    """Every frame of one file as (metadata without arrays, QC), and the file's provenance hash."""
    import dataclasses

    from ecafm.store import hash_input_file

    frames = [(dataclasses.replace(fr, height=np.shape(fr.height),
                                   channels={k: (np.shape(v), u) for k, (v, u) in fr.channels.items()}),
               frame_qc(fr.height, params=qc))
              for fr in read_frames(path, fmt=fmt, channel=channel)]
    return frames, hash_input_file(path)


def _scan_files(files: list[str], fmt: str | None, channel: str | None, qc: QCParams, threads: int):
    """:func:`_scan_file` of each file in order, with zero-memory placeholders for the arrays.

    With ``threads`` > 1 the files are read in that many forked processes: the readers parse in
    Python under the GIL, so threads would not help (bench-m's 321 .gwy files: 12 s in one).
    """
    import dataclasses
    import sys

    from ecafm.store import remember_input_hash

    def ghost(shape):
        return np.broadcast_to(np.float32(0), shape)

    def placeholders(path, scanned):
        frames, (key, digest) = scanned
        remember_input_hash(path, key, digest)  # hashed while the file was read: not again at the write
        return [(dataclasses.replace(fr, height=ghost(fr.height),
                                     channels={k: (ghost(s), u) for k, (s, u) in fr.channels.items()}), q)
                for fr, q in frames]

    if threads <= 1 or len(files) < 2 * threads or sys.platform != "linux":
        for f in files:
            yield placeholders(f, _scan_file(f, fmt, channel, qc))
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from functools import partial

    read_frames(files[0], fmt=fmt, channel=channel)  # import the reader once, before the fork
    with ProcessPoolExecutor(threads, mp_context=multiprocessing.get_context("fork")) as pool:
        scans = pool.map(partial(_scan_file, fmt=fmt, channel=channel, qc=qc), files, chunksize=4)
        for f, scanned in zip(files, scans, strict=True):
            yield placeholders(f, scanned)


def _read_var(path: str, var: str, fmt: str, channel: str | None) -> np.ndarray:
    """All frames of one file, one variable ('height' or a channel name), as float32."""
    frs = read_frames(path, fmt=fmt, channel=channel)
    return np.stack([f.height if var == "height" else f.channels[var][0] for f in frs]).astype(np.float32)


def _lazy_stack(frames: list[RawFrame], var: str, *, fmt: str, channel: str | None):
    """A (frame, y, x) dask array that reads each source file when its chunks are computed."""
    import dask
    import dask.array as da

    per_file: dict[str, Any] = {}
    parts = []
    shape = frames[0].shape
    for f in frames:
        if f.path not in per_file:
            per_file[f.path] = dask.delayed(_read_var, pure=True)(f.path, var, fmt, channel)
        parts.append(da.from_delayed(per_file[f.path][f.index], shape=shape, dtype=np.float32))
    return da.stack(parts)


def _var_name(channel: str) -> str:
    import re

    name = re.sub(r"[^0-9a-zA-Z]+", "_", channel).strip("_").lower()
    return name if name != "height" else "height_2"
