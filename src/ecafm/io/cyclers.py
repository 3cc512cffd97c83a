"""Potentiostat logs other than EC-Lab's: Gamry ``.DTA`` and Battery Data Format CSV.

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
        v = pd.to_numeric(table[c], errors="coerce").to_numpy(float)
        if not np.isfinite(v).all():
            raise InputFileError(path, f"column {c!r} has a missing or non-numeric value at data row "
                                 f"{int(np.flatnonzero(~np.isfinite(v))[0])} (truncated?)")
        return v * units[unit]

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
