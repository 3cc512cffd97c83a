"""Potentiostat and cycler logs other than EC-Lab's: Gamry ``.DTA``, Battery Data Format CSV and
Neware's CSV export.

- Gamry Framework ``.DTA`` (EXPLAIN text): read with ``gamry-parser`` (MIT), which splits the
  header from the ``CURVE`` tables; here only its columns are mapped: ``T`` (s), ``Vf``
  (``Vm`` when there is no ``Vf``; V) and ``Im`` (A). Curves of one file follow each other; a
  curve whose ``T`` starts again from zero is put after the one before it. The start time comes
  from the header's ``DATE`` and ``TIME`` (month first unless the date has dashes, as
  gamry-parser reads it).
- Battery Data Format CSV (Battery Data Alliance; cellpy writes it): columns named
  ``Quantity / unit``. ``Test Time`` (s, min or h), ``Current`` (A or mA) and ``Voltage``
  (V or mV) are required; ``Step Type`` (``rest`` rows are rest) and ``Unix Time / s`` (the
  start time) are used when present. No kept library reads these files on their own (cellpy
  reads them into its own cell model, a large dependency for three columns), so the mapping of
  names and units is written here.

- Neware BTS "regular" CSV export: three nested levels in one file, each with its own header line
  (cycle rows; step rows behind one empty field; record rows behind two). Only the record rows are
  read: ``Total Time`` (``H:MM:SS``, hours past 24, an optional ``D-`` day prefix and fractional
  seconds), ``Current(A)`` or ``Current(mA)`` (signed: charge positive), ``Voltage(V)``; ``Date``
  gives the start time. Rest rows carry zero current. cellpy reads these exports into its own
  cell model (the same large dependency as above); the nesting is simple enough to read here.

Half-cycles and cycles are derived from the sign of the current (:func:`ecafm.io.echem._assemble`),
then counted from the first plating as for every log.
"""

from __future__ import annotations

import datetime
import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd

from ecafm.errors import InputFileError

logger = logging.getLogger(__name__)

GAMRY_MAGIC = b"EXPLAIN"
#: ``Test Time / h`` -> ("test time", "h")
_BDF_HEADER = re.compile(r"^\s*(?P<name>[^/]+?)\s*/\s*(?P<unit>\S+)\s*$")
_TIME_UNITS = {"s": 1.0, "min": 60.0, "h": 3600.0}
_CURRENT_UNITS = {"A": 1e3, "mA": 1.0, "uA": 1e-3, "µA": 1e-3}
_VOLTAGE_UNITS = {"V": 1.0, "mV": 1e-3}


def _finite_numbers(path: Path, table: pd.DataFrame, c: str, *, row: str = "data row", first: int = 0) -> np.ndarray:
    """Column ``c`` of a log as floats; a missing or non-numeric cell (a truncated export) names
    the column and the ``row`` it is in, numbered from ``first``."""
    v = pd.to_numeric(table[c], errors="coerce").to_numpy(float)
    if not np.isfinite(v).all():
        raise InputFileError(path, f"column {c!r} has a missing or non-numeric value at {row} "
                             f"{int(np.flatnonzero(~np.isfinite(v))[0]) + first} (truncated?)")
    return v


def is_bdf_header(first_line: str) -> bool:
    """Whether a CSV header names its columns the Battery Data Format way (``Test Time / h``)."""
    cols = [c.strip() for c in first_line.split(",")]
    names = {m["name"].lower() for c in cols if (m := _BDF_HEADER.match(c))}
    return {"test time", "current", "voltage"} <= names


def read_gamry_dta(path: str | Path):
    """Read a Gamry ``.DTA`` file (see the module docstring) into an :class:`ecafm.io.echem.EcLog`."""
    from importlib.metadata import version

    import gamry_parser

    from ecafm.io.echem import EcLog, _assemble

    path = Path(path)
    parser = gamry_parser.GamryParser()
    try:
        parser.load(filename=str(path))
    except Exception as exc:  # the parser asserts and indexes without its own error type
        raise InputFileError(path, f"gamry-parser cannot read this .DTA file ({type(exc).__name__}: {exc})",
                             hint="check that the file is a complete Gamry Framework data file") from exc
    curves = [c for c in parser.get_curves() if len(c)]
    if not curves:
        raise InputFileError(path, "the .DTA file has no data rows (no CURVE table)")
    parts, t_end = [], 0.0
    for k, curve in enumerate(curves):
        missing = [c for c in ("T", "Im") if c not in curve.columns]
        vcol = "Vf" if "Vf" in curve.columns else ("Vm" if "Vm" in curve.columns else None)
        if missing or vcol is None:
            raise InputFileError(path, f"curve {k + 1} lacks column(s) {missing + ([] if vcol else ['Vf'])} "
                                 f"(columns {list(curve.columns)})")
        t = pd.to_numeric(curve["T"], errors="coerce").to_numpy(float)
        if parts and t[0] < t_end:
            t = t + t_end  # this curve's clock starts again
        parts.append(pd.DataFrame({"time_s": t,
                                   "potential_V": pd.to_numeric(curve[vcol], errors="coerce").to_numpy(float),
                                   "current_mA": pd.to_numeric(curve["Im"], errors="coerce").to_numpy(float) * 1e3}))
        t_end = float(t[-1])
    table = pd.concat(parts, ignore_index=True)
    bad = ~np.isfinite(table.to_numpy()).all(axis=1)
    if bad.any():
        raise InputFileError(path, f"non-numeric or missing value in data row {int(np.flatnonzero(bad)[0])}")
    header = parser.get_header()
    start = None
    if header.get("DATE") and header.get("TIME"):
        date = str(header["DATE"])
        try:
            start = pd.to_datetime(f"{date} {header['TIME']}", dayfirst="-" in date).to_pydatetime()
        except (ValueError, TypeError):
            logger.warning("%s: cannot read the start time from DATE %r TIME %r", path, date, header["TIME"])
    data = _assemble(str(path), time_s=table["time_s"].to_numpy(), potential_V=table["potential_V"].to_numpy(),
                     current_mA=table["current_mA"].to_numpy(), charge_C=None, half_cycle=None, cycle=None,
                     rest=None)
    logger.info("%s: read %d rows in %d curve(s) (Gamry .DTA, %s)", path, len(data), len(curves),
                header.get("TAG", "experiment type unknown"))
    return EcLog(data=data, start_time=start, path=str(path), format="gamry-dta",
                 reader=f"gamry-parser {version('gamry-parser')}")


def read_bdf_csv(path: str | Path):
    """Read a Battery Data Format CSV (see the module docstring) into an :class:`ecafm.io.echem.EcLog`."""
    from ecafm.io.echem import EcLog, _assemble

    path = Path(path)
    try:
        table = pd.read_csv(path, low_memory=False)
    except (ValueError, pd.errors.ParserError) as exc:
        raise InputFileError(path, f"cannot parse CSV: {exc}") from exc
    if not len(table):
        raise InputFileError(path, "the log has no data rows")
    cols = {}
    for c in table.columns:
        m = _BDF_HEADER.match(str(c))
        if m:
            cols[m["name"].lower()] = (c, m["unit"])

    def column(name: str, units: dict[str, float]) -> np.ndarray:
        c, unit = cols[name]
        if unit not in units:
            raise InputFileError(path, f"column {c!r}: unit {unit!r} not understood (expected one of {sorted(units)})")
        return _finite_numbers(path, table, c) * units[unit]

    missing = [n for n in ("test time", "current", "voltage") if n not in cols]
    if missing:
        raise InputFileError(path, f"Battery Data Format columns missing: {missing} (header is {list(table.columns)})")
    time_s = column("test time", _TIME_UNITS)
    current = column("current", _CURRENT_UNITS)
    rest = None
    if "step type" in cols:
        rest = table[cols["step type"][0]].astype(str).str.strip().str.lower().eq("rest").to_numpy()
    start = None
    if "unix time" in cols and cols["unix time"][1] == "s":
        t0 = pd.to_numeric(table[cols["unix time"][0]], errors="coerce").iloc[0]
        if np.isfinite(t0):
            start = datetime.datetime.fromtimestamp(float(t0) - time_s[0], tz=datetime.UTC).replace(tzinfo=None)
    data = _assemble(str(path), time_s=time_s, potential_V=column("voltage", _VOLTAGE_UNITS), current_mA=current,
                     charge_C=None, half_cycle=None, cycle=None, rest=rest)
    logger.info("%s: read %d rows (Battery Data Format CSV)", path, len(data))
    return EcLog(data=data, start_time=start, path=str(path), format="bdf-csv")


_NEWARE_TIME = re.compile(r"^\s*(?:(?P<d>\d+)-)?(?P<h>\d+):(?P<m>\d{1,2}):(?P<s>\d{1,2}(?:\.\d*)?)\s*$")


def is_neware_csv(head: str) -> bool:
    """Whether the first lines of a file are the three header lines of a Neware BTS CSV export."""
    lines = head.splitlines()
    return (len(lines) >= 3 and lines[0].startswith("Cycle Index,") and lines[1].startswith(",Step")
            and lines[2].startswith(",,"))


def _neware_seconds(path: Path, text: pd.Series, column: str) -> np.ndarray:
    out = np.empty(len(text))
    for i, v in enumerate(text.astype(str)):
        m = _NEWARE_TIME.match(v)
        if m is None:
            raise InputFileError(path, f"column {column!r}: {v!r} at record {i + 1} is not a time like 27:55:35")
        out[i] = (int(m["d"] or 0) * 86400 + int(m["h"]) * 3600 + int(m["m"]) * 60 + float(m["s"]))
    return out


def read_neware_csv(path: str | Path):
    """Read a Neware BTS CSV export (see the module docstring) into an :class:`ecafm.io.echem.EcLog`."""
    import csv
    import io

    from ecafm.io.echem import EcLog, _assemble

    path = Path(path)
    with open(path, encoding="utf-8", errors="replace", newline="") as fh:
        lines = fh.read().splitlines()
    if not is_neware_csv("\n".join(lines[:3])):
        raise InputFileError(path, "not a Neware CSV export (no cycle, step and record header lines)")
    header = next(csv.reader([lines[2]]))
    records = [ln for ln in lines[3:] if ln.startswith(",,")]
    if not records:
        raise InputFileError(path, "the export has no record rows (lines starting with two empty fields)")
    table = pd.read_csv(io.StringIO("\n".join([lines[2], *records])), header=0, dtype=str)
    cols = {str(c).strip().lower(): c for c in table.columns}
    time_col = cols.get("total time")
    cur_col = next((cols[k] for k in ("current(a)", "current(ma)") if k in cols), None)
    volt_col = cols.get("voltage(v)")
    missing = [n for n, c in (("Total Time", time_col), ("Current(A)", cur_col), ("Voltage(V)", volt_col))
               if c is None]
    if missing:
        raise InputFileError(path, f"record columns missing: {missing} (record header is {header})",
                             hint="export the record level with total time, current and voltage")
    time_s = _neware_seconds(path, table[time_col], time_col)

    def record_numbers(c: str) -> np.ndarray:
        return _finite_numbers(path, table, c, row="record", first=1)

    current_mA = record_numbers(cur_col) * (1e3 if cur_col.strip().lower() == "current(a)" else 1.0)
    start = None
    if "date" in cols:
        first = pd.to_datetime(table[cols["date"]].iloc[0], errors="coerce")
        if not pd.isna(first):
            start = (first - pd.Timedelta(seconds=float(time_s[0]))).to_pydatetime()
    data = _assemble(str(path), time_s=time_s, potential_V=record_numbers(volt_col), current_mA=current_mA,
                     charge_C=None, half_cycle=None, cycle=None, rest=None)
    logger.info("%s: read %d records (Neware CSV export)", path, len(data))
    return EcLog(data=data, start_time=start, path=str(path), format="neware-csv")
