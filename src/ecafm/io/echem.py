"""Potentiostat logs: read BioLogic EC-Lab (.mpt, .mpr) and ecafm CSV logs, write .mpt, time frames.

Every reader returns an :class:`EcLog` whose ``data`` table has the same columns, whatever the
source format:

=========== ======= =========================================================================
column      dtype   meaning
=========== ======= =========================================================================
time_s      float64 seconds since the start of the whole sequence (EC-Lab's ``time/s``)
potential_V float64 working-electrode potential (``Ewe/V``)
current_mA  float64 current; ``<I>/mA`` or ``I/mA``; else the set value ``control/V/mA`` in
                    galvanostatic rows; else derived from charge increments (dQ/dt)
charge_C    float64 cumulative signed charge, EC-Lab's ``(Q-Qo)`` converted to C
                    (1 mA.h = 3.6 C), counted from the start of the technique
half_cycle  int64   EC-Lab's ``half cycle`` (numbers may skip), else derived from sign changes
cycle       int64   EC-Lab's ``cycle number`` when present, else ``half_cycle // 2``
rest        bool    EC-Lab ``mode == 3`` when present, else ``|current| <= threshold`` (below)
=========== ======= =========================================================================

Sign convention: EC-Lab's (positive current = oxidation at the working electrode). Whether
positive current plates the metal on the observed electrode depends on the cell; see
:func:`frame_electrochemistry`.

ecafm CSV log format
--------------------
A comma-separated text file with one header row and one row per sample::

    # start_time = 2024-01-10T11:02:29.886      (optional comment lines, '#' first)
    time_s,potential_V,current_mA[,charge_C][,half_cycle][,cycle][,rest]
    0.0,3.4228,0.0
    1.0,3.4219,0.03
    ...

* ``time_s`` (s), ``potential_V`` (V) and ``current_mA`` (mA) are required; column order is free.
* ``charge_C`` (C), when missing, is the trapezoid integral of the current
  (mA * s / 1000 = C), starting at 0.
* ``rest`` (0/1 or true/false), when missing, is ``|current_mA| <= threshold`` where threshold is
  ``REST_CURRENT_FRACTION`` times the largest ``|current_mA|`` of the log (and at least
  ``REST_CURRENT_FLOOR_MA``).
* ``half_cycle``, when missing, starts at 0 and increases by one each time the sign of the
  current changes between two non-rest samples (rest samples keep the current number).
* ``cycle``, when missing, is ``half_cycle // 2``.
* An optional comment line ``# start_time = <ISO 8601, naive local time>`` gives the absolute
  start of the sequence.
"""

from __future__ import annotations

import datetime
import io
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ecafm.errors import InputFileError

__all__ = [
    "EcLog",
    "read_ec_log",
    "write_mpt",
    "frame_electrochemistry",
    "REST_CURRENT_FRACTION",
    "REST_CURRENT_FLOOR_MA",
    "FRAME_TIME_TOLERANCE_S",
]

logger = logging.getLogger(__name__)

#: Fraction of the largest |current| below which a sample counts as rest (no ``mode`` column).
REST_CURRENT_FRACTION = 1e-3
#: Absolute floor of the rest threshold, mA.
REST_CURRENT_FLOOR_MA = 1e-9
#: Frame times may lie this far outside the log's time range and still be accepted, s.
FRAME_TIME_TOLERANCE_S = 1e-3

MAH_TO_C = 3.6
COLUMNS = ("time_s", "potential_V", "current_mA", "charge_C", "half_cycle", "cycle", "rest")
FORMATS = ("biologic-mpt", "biologic-mpr", "csv", "gamry-dta", "bdf-csv", "neware-csv")

MPT_MAGIC = "EC-Lab ASCII FILE"
MPR_MAGIC = b"BIO-LOGIC MODULAR FILE"
_START_RE = re.compile(r"^Acquisition started on\s*:\s*(.+?)\s*$")
_NB_HEADER_RE = re.compile(r"^Nb header lines\s*:\s*(\d+)")
_MPT_DATE_FORMATS = ("%m/%d/%Y %H:%M:%S.%f", "%m/%d/%Y %H:%M:%S", "%m/%d/%y %H:%M:%S")


@dataclass(frozen=True)
class EcLog:
    """A potentiostat log in ecafm's common form.

    Attributes
    ----------
    data : pandas.DataFrame
        Columns ``time_s, potential_V, current_mA, charge_C, half_cycle, cycle, rest`` (see the
        module docstring), sorted by ``time_s``.
    start_time : datetime.datetime or None
        Absolute start of the sequence (the origin of ``time_s``), naive local time as the
        instrument wrote it; None if the file does not say.
    path : str
        The file read.
    format : str
        One of :data:`FORMATS`.
    reader : str
        The library that parsed the file when it is not ecafm's own code, with its version
        (``"gamry-parser 0.4.6"``); ingest records it in the cube's attrs. Empty otherwise.
    """

    data: pd.DataFrame
    start_time: datetime.datetime | None
    path: str
    format: str
    reader: str = ""


# --------------------------------------------------------------------------------------------
# helpers shared by all formats


def parse_eclab_datetime(text: str) -> datetime.datetime | None:
    """Parse an EC-Lab date such as ``"01/10/2024 11:02:29.886"`` (month first, local time).

    Parameters
    ----------
    text : str
        Date and time as written after ``Acquisition started on :``.

    Returns
    -------
    datetime.datetime or None
        Naive local time, or None when the text matches no known layout.
    """
    text = text.strip()
    for fmt in _MPT_DATE_FORMATS:
        try:
            return datetime.datetime.strptime(text, fmt)
        except ValueError:
            continue
    return None


def rest_threshold_mA(current_mA: np.ndarray) -> float:
    """Threshold on |current| below which a sample counts as rest, mA."""
    peak = float(np.nanmax(np.abs(current_mA))) if len(current_mA) else 0.0
    return max(REST_CURRENT_FRACTION * peak, REST_CURRENT_FLOOR_MA)


def half_cycles_from_current(current_mA: np.ndarray, rest: np.ndarray) -> np.ndarray:
    """Number half cycles from the sign of the current.

    Parameters
    ----------
    current_mA : numpy.ndarray, shape (n,)
        Current per sample.
    rest : numpy.ndarray of bool, shape (n,)
        True where the sample is rest; rest samples keep the running number.

    Returns
    -------
    numpy.ndarray of int64, shape (n,)
        Starts at 0, +1 at each sign change between non-rest samples.
    """
    sign = np.where(rest, 0, np.sign(current_mA)).astype(np.int64)
    active = np.flatnonzero(sign != 0)
    out = np.zeros(len(sign), dtype=np.int64)
    if len(active) < 2:
        return out
    changes = np.zeros(len(sign), dtype=np.int64)
    s = sign[active]
    changes[active[1:][s[1:] != s[:-1]]] = 1
    return np.cumsum(changes)


def _runs(data: pd.DataFrame, positive_current_plates: bool) -> tuple[np.ndarray, np.ndarray, int | None]:
    """The log's half-cycle numbers in time order, the direction run each belongs to, and the
    index of the first plating run (None when nothing plates).

    A half-cycle's direction is the sign of its net charge (plating positive); one that moves
    less than 1% of the largest half-cycle's charge (a rest, a transient) joins the run before
    it. Consecutive half-cycles of one direction are one run, whatever their numbers.
    """
    sign = 1.0 if positive_current_plates else -1.0
    q = data["charge_C"].to_numpy(float)
    dq = np.diff(q, prepend=q[:1]) * sign
    hc = data["half_cycle"].to_numpy(np.int64)
    order = pd.unique(hc)  # in time order (rows are sorted by time)
    net = pd.Series(dq).groupby(hc).sum().reindex(order).to_numpy()
    big = np.abs(net) >= 0.01 * float(np.abs(net).max()) if len(net) and np.abs(net).max() > 0 \
        else np.zeros(len(net), bool)
    run, first = direction_runs(np.where(big, np.sign(net), 0.0))
    return order, run, first


def direction_runs(direction: np.ndarray) -> tuple[np.ndarray, int | None]:
    """Run index of every item of a sequence of directions (+1 plating, -1 stripping, 0 neither):
    a new run starts where the direction changes; 0 items join the run before them (leading
    ones the first run). Also the index of the first plating run (None when nothing plates).
    Shared by the logs' half-cycles (:func:`_runs`) and a frame sheet's phases
    (:func:`ecafm.ingest.half_cycles_from_phases`)."""
    run = np.zeros(len(direction), np.int64)
    k, cur, first = 0, 0.0, None
    for i, d in enumerate(np.asarray(direction, float)):
        if d != 0:
            if cur != 0 and d != cur:
                k += 1
            cur = d
            if d > 0 and first is None:
                first = k
        run[i] = k
    return run, first


def first_plating_half_cycle(data: pd.DataFrame, *, positive_current_plates: bool = True) -> int | None:
    """The potentiostat's number of the log's first plating half-cycle (None when nothing plates)."""
    order, run, first = _runs(data, positive_current_plates)
    return None if first is None else int(order[np.flatnonzero(run == first)[0]])


def number_from_first_plating(data: pd.DataFrame, *, positive_current_plates: bool = True) -> pd.DataFrame:
    """The log with ``half_cycle`` and ``cycle`` counted from its first plating.

    ecafm's cycle is a plating and the stripping after it: half-cycle 0 is the first plating
    and ``cycle = half_cycle // 2``. Potentiostats number half-cycles from the technique's
    start, whatever the first direction. A Li|Li cell or a Li-foil electrode often starts by
    stripping the imaged electrode, and EC-Lab's GCPL logs put a first half-cycle of one
    direction alone in cycle 0 and skip half-cycle 1 (the real logs of the test fixtures do).
    Taken as numbered, such a log paired each plating with the stripping before it, or left
    the data set's first cycle without a plating. So half-cycles are numbered by direction
    runs (:func:`_runs`), the first plating run is 0, what comes before it is negative (cycle
    -1, before cycling, like a rest before the first plating). A log numbered that way already
    is returned as it is (the same object).
    """
    if not len(data):
        return data
    order, run, first = _runs(data, positive_current_plates)
    if first is None:
        return data
    new_half = pd.Series(run - first, index=order).reindex(data["half_cycle"].to_numpy()).to_numpy(np.int64)
    new_cycle = new_half // 2
    if np.array_equal(new_half, data["half_cycle"].to_numpy()) and np.array_equal(new_cycle, data["cycle"].to_numpy()):
        return data
    out = data.copy()
    out["half_cycle"] = new_half
    out["cycle"] = new_cycle
    return out


def integrate_charge_C(time_s: np.ndarray, current_mA: np.ndarray) -> np.ndarray:
    """Cumulative trapezoid integral of the current, C (mA * s / 1000), starting at 0."""
    if len(time_s) == 0:
        return np.zeros(0)
    steps = 0.5 * (current_mA[1:] + current_mA[:-1]) * np.diff(time_s) / 1000.0
    return np.concatenate([[0.0], np.cumsum(steps)])


def current_from_charge_mA(time_s: np.ndarray, charge_C: np.ndarray) -> np.ndarray:
    """Current from charge increments, mA: (Q_i - Q_{i-1}) / (t_i - t_{i-1}); first row uses the next."""
    n = len(time_s)
    out = np.zeros(n)
    if n < 2:
        return out
    dt = np.diff(time_s)
    dq = np.diff(charge_C)
    with np.errstate(divide="ignore", invalid="ignore"):
        rate = np.where(dt > 0, dq / np.where(dt > 0, dt, 1.0), 0.0) * 1000.0
    out[1:] = rate
    out[0] = rate[0]
    return out


def _assemble(
    path: str,
    *,
    time_s: np.ndarray,
    potential_V: np.ndarray,
    current_mA: np.ndarray | None,
    charge_C: np.ndarray | None,
    half_cycle: np.ndarray | None,
    cycle: np.ndarray | None,
    rest: np.ndarray | None,
) -> pd.DataFrame:
    """Fill the derived columns and build the sorted common table."""
    time_s = np.asarray(time_s, dtype=np.float64)
    n = len(time_s)
    if n == 0:
        raise InputFileError(path, "the log has no data rows")
    if not np.all(np.isfinite(time_s)):
        raise InputFileError(path, "time column has missing or non-numeric values (truncated row?)")
    order = np.argsort(time_s, kind="stable")
    if not np.array_equal(order, np.arange(n)):
        logger.info("%s: rows not in time order; sorting %d rows by time", path, n)

    if current_mA is None and charge_C is None:
        if rest is not None and bool(np.all(rest)):
            current_mA = np.zeros(n)
        else:
            raise InputFileError(
                path,
                "no current column (<I>/mA, I/mA, control/V/mA, current_mA) and no charge column",
            )
    if current_mA is None:
        assert charge_C is not None
        current_mA = current_from_charge_mA(time_s[order], np.asarray(charge_C, float)[order])[
            np.argsort(order)
        ]
    current_mA = np.asarray(current_mA, dtype=np.float64)
    if charge_C is None:
        inv = np.argsort(order)
        charge_C = integrate_charge_C(time_s[order], current_mA[order])[inv]
    charge_C = np.asarray(charge_C, dtype=np.float64)
    if rest is None:
        rest = np.abs(current_mA) <= rest_threshold_mA(current_mA)
    rest = np.asarray(rest, dtype=bool)
    if half_cycle is None:
        inv = np.argsort(order)
        half_cycle = half_cycles_from_current(current_mA[order], rest[order])[inv]
    half_cycle = np.asarray(half_cycle, dtype=np.int64)
    cycle = half_cycle // 2 if cycle is None else np.asarray(cycle, dtype=np.int64)

    df = pd.DataFrame(
        {
            "time_s": time_s,
            "potential_V": np.asarray(potential_V, dtype=np.float64),
            "current_mA": current_mA,
            "charge_C": charge_C,
            "half_cycle": half_cycle,
            "cycle": cycle,
            "rest": rest,
        }
    )
    return df.iloc[order].reset_index(drop=True)


def _as_int(path: str, name: str, values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(values)):
        raise InputFileError(path, f"column {name!r} has missing or non-numeric values")
    return np.rint(values).astype(np.int64)


def eclab_columns_to_log(path: str, cols: dict[str, np.ndarray]) -> pd.DataFrame:
    """Map EC-Lab column names (as in an .mpt header) to the common table.

    Parameters
    ----------
    path : str
        File name, for error messages.
    cols : dict of str to numpy.ndarray
        EC-Lab columns by their .mpt names (``time/s``, ``Ewe/V``, ``<I>/mA``, ...).

    Returns
    -------
    pandas.DataFrame
        The common table (see module docstring).

    Raises
    ------
    InputFileError
        When ``time/s`` or ``Ewe/V`` is missing or no current source exists.
    """
    if "time/s" not in cols:
        raise InputFileError(path, f"missing required column 'time/s' (columns: {sorted(cols)})")
    ewe_name = next((c for c in ("Ewe/V", "<Ewe>/V", "<Ewe/V>") if c in cols), None)
    if ewe_name is None:
        raise InputFileError(path, f"missing required column 'Ewe/V' (columns: {sorted(cols)})")
    time_s = np.asarray(cols["time/s"], dtype=np.float64)

    mode = _as_int(path, "mode", cols["mode"]) if "mode" in cols else None
    rest = (mode == 3) if mode is not None else None

    charge_C = None
    if "(Q-Qo)/C" in cols:
        charge_C = np.asarray(cols["(Q-Qo)/C"], dtype=np.float64)
    elif "(Q-Qo)/mA.h" in cols:
        charge_C = np.asarray(cols["(Q-Qo)/mA.h"], dtype=np.float64) * MAH_TO_C

    current = None
    for name in ("<I>/mA", "I/mA"):
        if name in cols:
            current = np.asarray(cols[name], dtype=np.float64)
            break
    if current is None and "control/V/mA" in cols:
        current = np.asarray(cols["control/V/mA"], dtype=np.float64).copy()
        if mode is not None:
            # control/V/mA is a potential in potentiostatic rows (mode 2); zero current at rest
            current[mode == 3] = 0.0
            pot = mode == 2
            if np.any(pot):
                if charge_C is None:
                    raise InputFileError(
                        path,
                        "potentiostatic rows (mode 2) without a measured current or charge column",
                    )
                order = np.argsort(time_s, kind="stable")
                derived = np.empty_like(current)
                derived[order] = current_from_charge_mA(time_s[order], charge_C[order])
                current[pot] = derived[pot]
    elif current is None and "control/mA" in cols and mode is not None and not np.any(mode == 2):
        current = np.asarray(cols["control/mA"], dtype=np.float64).copy()
        current[mode == 3] = 0.0

    half_cycle = _as_int(path, "half cycle", cols["half cycle"]) if "half cycle" in cols else None
    cycle = _as_int(path, "cycle number", cols["cycle number"]) if "cycle number" in cols else None
    return _assemble(
        path,
        time_s=time_s,
        potential_V=cols[ewe_name],
        current_mA=current,
        charge_C=charge_C,
        half_cycle=half_cycle,
        cycle=cycle,
        rest=rest,
    )


# --------------------------------------------------------------------------------------------
# .mpt


def _read_mpt(path: Path) -> EcLog:
    raw = path.read_bytes()
    text = raw.decode("latin-1")  # EC-Lab writes cp1252/latin-1; latin-1 never fails
    lines = text.splitlines()
    if not lines or not lines[0].startswith(MPT_MAGIC):
        raise InputFileError(path, f"not an EC-Lab text export (first line is not {MPT_MAGIC!r})")
    m = _NB_HEADER_RE.match(lines[1]) if len(lines) > 1 else None
    if m is None:
        raise InputFileError(path, "second line is not 'Nb header lines : N' (truncated header?)")
    n_header = int(m.group(1))
    if len(lines) < n_header:
        raise InputFileError(
            path, f"file ends after {len(lines)} lines but the header announces {n_header} lines"
        )
    start_time = None
    for line in lines[: n_header - 1]:
        sm = _START_RE.match(line)
        if sm:
            start_time = parse_eclab_datetime(sm.group(1))
            if start_time is None:
                logger.warning("%s: cannot parse acquisition start %r", path, sm.group(1))
            break
    names = lines[n_header - 1].rstrip("\r\n").rstrip("\t").split("\t")
    body = [ln for ln in lines[n_header:] if ln.strip()]
    if not body:
        raise InputFileError(path, "no data rows after the header")
    # decimal comma locale: commas never appear otherwise in the tab-separated table
    decimal = "," if any("," in ln for ln in body[:5]) else "."
    try:
        table = pd.read_csv(
            io.StringIO("\n".join(body)),
            sep="\t",
            header=None,
            names=names,
            usecols=range(len(names)),
            index_col=False,
            decimal=decimal,
            dtype=np.float64,
            engine="c",
            float_precision="round_trip",
        )
    except (ValueError, pd.errors.ParserError) as exc:
        raise InputFileError(path, f"cannot parse the data table: {exc}") from exc
    if table.iloc[-1].isna().any():
        raise InputFileError(
            path,
            f"last data row (line {n_header + len(body)}) is incomplete: the file is truncated",
        )
    cols = {name: table[name].to_numpy() for name in names}
    data = eclab_columns_to_log(str(path), cols)
    logger.info("%s: read %d rows (EC-Lab .mpt, decimal %r)", path, len(data), decimal)
    return EcLog(data=data, start_time=start_time, path=str(path), format="biologic-mpt")


def _format_eclab_float(values: np.ndarray, decimal: str) -> list[str]:
    """Format floats as EC-Lab does: 16 significant digits, 3-digit exponent."""
    out = []
    for v in np.asarray(values, dtype=np.float64):
        mant, exp = f"{v:.15E}".split("E")
        s = f"{mant}E{int(exp):+04d}"
        out.append(s.replace(".", decimal) if decimal != "." else s)
    return out


def write_mpt(
    data: pd.DataFrame,
    path: str | Path,
    *,
    start_time: datetime.datetime,
    decimal: str = ".",
    newline: str = "\r\n",
) -> None:
    """Write a log as a BioLogic EC-Lab text export (.mpt), as EC-Lab's "Export as text" does.

    Parameters
    ----------
    data : pandas.DataFrame
        Columns ``time_s``, ``potential_V``, ``current_mA`` (required) and optionally
        ``charge_C``, ``half_cycle``, ``cycle``, ``rest`` (derived as in the CSV format when
        missing). Not modified.
    path : str or pathlib.Path
        Output file.
    start_time : datetime.datetime
        Absolute start of the sequence (naive local time), written as
        ``Acquisition started on : MM/DD/YYYY HH:MM:SS.fff``.
    decimal : str
        Decimal separator, ``"."`` or ``","`` (EC-Lab follows the Windows locale).
    newline : str
        Line ending; EC-Lab writes ``"\\r\\n"``.

    Raises
    ------
    ValueError
        On missing required columns, an unknown decimal separator, or an empty table.

    Notes
    -----
    Columns written: ``mode`` (3 at rest, 1 galvanostatic), ``ox/red`` (1 for positive current),
    ``error``, ``time/s``, ``control/V/mA`` (the current), ``Ewe/V``, ``<I>/mA``, ``dq/mA.h``,
    ``(Q-Qo)/mA.h``, ``half cycle``, ``cycle number``. Floats use 16 significant digits, so
    :func:`read_ec_log` returns the values to within about 1e-15 relative.
    """
    if decimal not in (".", ","):
        raise ValueError(f"decimal must be '.' or ',', got {decimal!r}")
    if newline not in ("\r\n", "\n"):
        raise ValueError(f"newline must be '\\r\\n' or '\\n', got {newline!r}")
    missing = [c for c in ("time_s", "potential_V", "current_mA") if c not in data.columns]
    if missing:
        raise ValueError(f"data lacks required column(s) {missing}; has {list(data.columns)}")
    if len(data) == 0:
        raise ValueError("data has no rows")
    log = _assemble(
        str(path),
        time_s=data["time_s"].to_numpy(),
        potential_V=data["potential_V"].to_numpy(),
        current_mA=data["current_mA"].to_numpy(),
        charge_C=data["charge_C"].to_numpy() if "charge_C" in data else None,
        half_cycle=data["half_cycle"].to_numpy() if "half_cycle" in data else None,
        cycle=data["cycle"].to_numpy() if "cycle" in data else None,
        rest=data["rest"].to_numpy() if "rest" in data else None,
    )
    current = log["current_mA"].to_numpy()
    charge_mah = log["charge_C"].to_numpy() / MAH_TO_C
    dq_mah = np.concatenate([[0.0], np.diff(charge_mah)])
    mode = np.where(log["rest"].to_numpy(), 3, 1)
    columns: dict[str, list[str]] = {
        "mode": [str(v) for v in mode],
        "ox/red": [str(v) for v in (current > 0).astype(int)],
        "error": ["0"] * len(log),
        "time/s": _format_eclab_float(log["time_s"].to_numpy(), decimal),
        "control/V/mA": _format_eclab_float(current, decimal),
        "Ewe/V": _format_eclab_float(log["potential_V"].to_numpy(), decimal),
        "<I>/mA": _format_eclab_float(current, decimal),
        "dq/mA.h": _format_eclab_float(dq_mah, decimal),
        "(Q-Qo)/mA.h": _format_eclab_float(charge_mah, decimal),
        "half cycle": [str(v) for v in log["half_cycle"].to_numpy()],
        "cycle number": _format_eclab_float(log["cycle"].to_numpy().astype(float), decimal),
    }
    started = start_time.strftime("%m/%d/%Y %H:%M:%S.") + f"{start_time.microsecond // 1000:03d}"
    header = [
        MPT_MAGIC,
        "",  # Nb header lines, filled below
        "",
        "Galvanostatic Cycling with Potential Limitation",
        "",
        "Run on channel : 1 (SN 0)",
        "User : ",
        "Electrode connection : standard",
        "Potential control : Ewe",
        f"Acquisition started on : {started}",
        "Loaded Setting File :  NONE",
        "Saved on :",
        f"\tFile : {Path(path).with_suffix('.mpr').name}",
        "\tDirectory : .\\",
        "\tHost : 127.0.0.1",
        "Device : ecafm synthetic (SN 0)",
        "EC-Lab for windows v11.50 (software)",
        "Comments : written by ecafm.io.echem.write_mpt",
        "Cycle Definition : Charge/Discharge alternance",
        "",
        "\t".join(columns) + "\t",
    ]
    header[1] = f"Nb header lines : {len(header):<3d}".ljust(46)
    rows = ["\t".join(vals) + "\t" for vals in zip(*columns.values(), strict=True)]
    text = newline.join(header + rows) + newline
    Path(path).write_bytes(text.encode("cp1252"))
    logger.info("wrote %d rows to %s (EC-Lab .mpt, decimal %r)", len(log), path, decimal)


# --------------------------------------------------------------------------------------------
# CSV


#: Leading bytes of files that are not logs ecafm reads, with what to do instead.
_UNSUPPORTED_MAGIC: dict[bytes, str] = {
    b"EC-LAB SETTING FILE": "an EC-Lab settings file (.mps) holds no data; give the .mpr or .mpt",
    b"EC-Lab LOG FILE": "an EC-Lab LOG file (.mpl) holds no data; give the .mpr or .mpt",
    b"NEWARE": ("a Neware .nda file is not supported; export it from BTS as CSV with the record level "
                "(Total Time, Current, Voltage), which is read"),
}


def _read_csv(path: Path) -> EcLog:
    raw = path.read_bytes()
    for magic, cause in _UNSUPPORTED_MAGIC.items():
        if raw.startswith(magic):
            raise InputFileError(path, cause)
    text = raw.decode("utf-8", errors="replace")
    start_time = None
    lines = text.splitlines()
    body_start = 0
    for i, line in enumerate(lines):
        if not line.startswith("#"):
            body_start = i
            break
        key, _, value = line.lstrip("#").partition("=")
        if key.strip() == "start_time" and value.strip():
            try:
                start_time = datetime.datetime.fromisoformat(value.strip())
            except ValueError as exc:
                raise InputFileError(path, f"cannot parse start_time {value.strip()!r}") from exc
    else:
        body_start = len(lines)
    body = "\n".join(lines[body_start:])
    if not body.strip():
        raise InputFileError(path, "empty CSV log (no header row)")
    try:
        table = pd.read_csv(io.StringIO(body), skipinitialspace=True, float_precision="round_trip")
    except (ValueError, pd.errors.ParserError) as exc:
        raise InputFileError(path, f"cannot parse CSV: {exc}") from exc
    table.columns = [str(c).strip() for c in table.columns]
    missing = [c for c in ("time_s", "potential_V", "current_mA") if c not in table.columns]
    if missing:
        raise InputFileError(
            path,
            f"missing required column(s) {missing} (header is {list(table.columns)}; "
            "expected time_s,potential_V,current_mA[,charge_C][,half_cycle][,cycle][,rest])",
        )
    if len(table) == 0:
        raise InputFileError(path, "the log has no data rows")
    try:
        num = {
            c: pd.to_numeric(table[c], errors="raise").to_numpy(dtype=np.float64)
            for c in ("time_s", "potential_V", "current_mA", "charge_C")
            if c in table
        }
    except (ValueError, TypeError) as exc:
        raise InputFileError(path, f"non-numeric value in a numeric column: {exc}") from exc
    for c, v in num.items():
        if not np.all(np.isfinite(v)):
            bad = int(np.flatnonzero(~np.isfinite(v))[0])
            raise InputFileError(
                path, f"column {c!r} has a missing value at data row {bad} (truncated?)"
            )
    rest = None
    if "rest" in table:
        r = table["rest"].astype(str).str.strip().str.lower()
        if not r.isin(["0", "1", "true", "false"]).all():
            raise InputFileError(path, "column 'rest' must hold 0/1 or true/false")
        rest = r.isin(["1", "true"]).to_numpy()
    data = _assemble(
        str(path),
        time_s=num["time_s"],
        potential_V=num["potential_V"],
        current_mA=num["current_mA"],
        charge_C=num.get("charge_C"),
        half_cycle=_as_int(str(path), "half_cycle", table["half_cycle"])
        if "half_cycle" in table
        else None,
        cycle=_as_int(str(path), "cycle", table["cycle"]) if "cycle" in table else None,
        rest=rest,
    )
    logger.info("%s: read %d rows (ecafm CSV log)", path, len(data))
    return EcLog(data=data, start_time=start_time, path=str(path), format="csv")


# --------------------------------------------------------------------------------------------
# .mpr


def _read_mpr(path: Path) -> EcLog:
    from ecafm.io.mpr import read_mpr

    mpr = read_mpr(path)
    data = eclab_columns_to_log(str(path), mpr.columns)
    start_time = _mpl_start_time(path)
    if start_time is None:
        start_time = mpr.start_time
    logger.info("%s: read %d rows (EC-Lab .mpr)", path, len(data))
    return EcLog(data=data, start_time=start_time, path=str(path), format="biologic-mpr")


def _mpl_start_time(mpr_path: Path) -> datetime.datetime | None:
    """Acquisition start from a sibling .mpl (EC-Lab LOG text) with the same stem, if any."""
    for suffix in (".mpl", ".MPL"):
        mpl = mpr_path.with_suffix(suffix)
        if mpl.is_file():
            for line in mpl.read_bytes().decode("latin-1").splitlines():
                sm = _START_RE.match(line)
                if sm:
                    start = parse_eclab_datetime(sm.group(1))
                    if start is not None:
                        logger.info("%s: start time %s from %s", mpr_path, start, mpl.name)
                        return start
    return None


# --------------------------------------------------------------------------------------------
# entry point


def sniff_format(path: str | Path) -> str:
    """Detect the log format from the file content (not the extension).

    Returns
    -------
    str
        ``"biologic-mpr"`` (starts with ``BIO-LOGIC MODULAR FILE``), ``"biologic-mpt"``
        (starts with ``EC-Lab ASCII FILE``), ``"gamry-dta"`` (starts with ``EXPLAIN``),
        ``"bdf-csv"`` (a CSV header of Battery Data Format names, ``Test Time / h``),
        ``"neware-csv"`` (the three nested header lines of a Neware BTS export) or ``"csv"``.
    """
    from ecafm.io.cyclers import GAMRY_MAGIC, is_bdf_header, is_neware_csv

    with open(path, "rb") as fh:
        head = fh.read(4096)
    if head.startswith(MPR_MAGIC):
        return "biologic-mpr"
    text = head.lstrip(b"\xef\xbb\xbf")
    if text.startswith(MPT_MAGIC.encode()):
        return "biologic-mpt"
    if text.startswith(GAMRY_MAGIC):
        return "gamry-dta"
    if is_bdf_header(text.split(b"\n", 1)[0].decode("utf-8", errors="replace")):
        return "bdf-csv"
    if is_neware_csv(text.decode("utf-8", errors="replace")):
        return "neware-csv"
    return "csv"


def read_ec_log(path: str | Path, *, fmt: str = "auto") -> EcLog:
    """Read a potentiostat log into ecafm's common form.

    Parameters
    ----------
    path : str or pathlib.Path
        EC-Lab binary (.mpr), EC-Lab text export (.mpt), Gamry .DTA, Battery Data Format CSV,
        Neware CSV export or ecafm CSV log.
    fmt : str
        ``"auto"`` (sniff the content) or one of :data:`FORMATS`.

    Returns
    -------
    EcLog
        Table sorted by time, absolute start time when known.

    Raises
    ------
    InputFileError
        When the file is missing, truncated, has no data rows or lacks a required column.
    ValueError
        On an unknown ``fmt``.
    """
    path = Path(path)
    if fmt not in ("auto", *FORMATS):
        raise ValueError(f"fmt must be 'auto' or one of {FORMATS}, got {fmt!r}")
    if not path.is_file():
        raise InputFileError(path, "file not found")
    if fmt == "auto":
        fmt = sniff_format(path)
        logger.debug("%s: detected format %s", path, fmt)
    if fmt == "biologic-mpr":
        return _read_mpr(path)
    if fmt == "biologic-mpt":
        return _read_mpt(path)
    if fmt in ("gamry-dta", "bdf-csv", "neware-csv"):
        from ecafm.io import cyclers

        return {"gamry-dta": cyclers.read_gamry_dta, "bdf-csv": cyclers.read_bdf_csv,
                "neware-csv": cyclers.read_neware_csv}[fmt](path)
    return _read_csv(path)


def charge_per_cycle(data: pd.DataFrame, *, positive_current_plates: bool = True) -> pd.DataFrame:
    """Plated and stripped charge (C) of every cycle counted from the first plating
    (:func:`number_from_first_plating`; cycle -1 before it): columns ``cycle, plate_C, strip_C``."""
    sign = 1.0 if positive_current_plates else -1.0
    numbered = number_from_first_plating(data, positive_current_plates=positive_current_plates)
    dq = np.diff(data["charge_C"].to_numpy(float), prepend=data["charge_C"].iloc[0]) * sign
    return (pd.DataFrame({"cycle": numbered["cycle"].to_numpy(int), "plate_C": np.clip(dq, 0, None),
                          "strip_C": np.clip(-dq, 0, None)})
            .groupby("cycle")[["plate_C", "strip_C"]].sum().reset_index())


def describe_log(path: str | Path, *, positive_current_plates: bool = True, max_cycles: int = 12) -> dict:
    """What ``ecafm inspect`` shows of a potentiostat log: format, rows, time span, start time,
    the first plating (the potentiostat's half-cycle number) and, per cycle counted from it,
    the plated and stripped charge and their ratio (up to ``max_cycles`` cycles). Lets a user
    check the sign convention before a run: with ``positive_current_plates`` the wrong way
    round the first "plating" is usually the first stripping, and the ratio is above 1."""
    log = read_ec_log(path)
    d = log.data
    first = first_plating_half_cycle(d, positive_current_plates=positive_current_plates)
    numbered = number_from_first_plating(d, positive_current_plates=positive_current_plates)
    per = charge_per_cycle(d, positive_current_plates=positive_current_plates).set_index("cycle")
    cycles = [{"cycle": int(c), "plated_C": float(r.plate_C), "stripped_C": float(r.strip_C),
               "ce": float(r.strip_C / r.plate_C) if r.plate_C > 0 and r.strip_C > 0 else None}
              for c, r in per.iterrows() if c >= 0][:max_cycles]
    return {"path": str(path), "format": log.format, "rows": int(len(d)),
            "time_s": [float(d["time_s"].iloc[0]), float(d["time_s"].iloc[-1])],
            "start_time": log.start_time.isoformat() if log.start_time else None,
            "positive_current_plates": bool(positive_current_plates),
            "first_plating_log_half_cycle": first, "renumbered": numbered is not d,
            "n_cycles": int((per.index >= 0).sum()),
            "before_cycling_s": float(d["time_s"][numbered["cycle"].to_numpy() >= 0].iloc[0] - d["time_s"].iloc[0]),
            "cycles": cycles}


# --------------------------------------------------------------------------------------------
# frames


def frame_electrochemistry(
    log: EcLog,
    times_s: Sequence[float] | np.ndarray,
    *,
    positive_current_plates: bool = True,
    max_gap_s: float | None = None,
) -> pd.DataFrame:
    """Electrochemical state of the cell at each frame time.

    Parameters
    ----------
    log : EcLog
        The potentiostat log.
    times_s : array_like, shape (n_frames,)
        Frame acquisition times, s, on the log's clock (same origin as ``log.data.time_s``).
    positive_current_plates : bool
        True when positive current plates metal on the imaged electrode.
    max_gap_s : float or None
        If given, a frame that falls in a gap between log rows longer than this is an error.

    Returns
    -------
    pandas.DataFrame
        One row per frame (index ``frame``): ``cycle`` (int64), ``half_cycle`` (int64),
        ``phase`` (``"plate"``, ``"strip"`` or ``"rest"``), ``charge_C`` and ``potential_V``
        (linear interpolation in time), ``current_mA``. Cycle, half cycle, phase and current
        come from the first log row at or after the frame time (EC-Lab's values are averages
        over the interval ending at the row).

    Raises
    ------
    InputFileError
        When a frame lies outside the log (beyond ``FRAME_TIME_TOLERANCE_S``) or in a gap
        longer than ``max_gap_s``.
    ValueError
        When ``times_s`` is not one-dimensional or not finite.
    """
    t = np.atleast_1d(np.asarray(times_s, dtype=np.float64))
    if t.ndim != 1:
        raise ValueError(f"times_s must be one-dimensional, got shape {t.shape}")
    if not np.all(np.isfinite(t)):
        raise ValueError("times_s must be finite")
    d = number_from_first_plating(log.data, positive_current_plates=positive_current_plates)
    lt = d["time_s"].to_numpy()
    if len(lt) == 0:
        raise InputFileError(log.path, "the log has no data rows")
    t0, t1 = float(lt[0]), float(lt[-1])
    for k, tk in enumerate(t):
        if tk < t0 - FRAME_TIME_TOLERANCE_S or tk > t1 + FRAME_TIME_TOLERANCE_S:
            raise InputFileError(
                log.path,
                f"frame {k} at t={tk:.3f} s lies outside the log (covers {t0:.3f}..{t1:.3f} s)",
                frame=k,
                hint="check the clock offset setting between the AFM and the potentiostat "
                "and that the right log was given",
            )
    tc = np.clip(t, t0, t1)
    idx = np.clip(np.searchsorted(lt, tc, side="left"), 0, len(lt) - 1)
    if max_gap_s is not None:
        prev = np.clip(idx - 1, 0, len(lt) - 1)
        gap = lt[idx] - lt[prev]
        for k in np.flatnonzero((gap > max_gap_s) & (tc < lt[idx])):
            raise InputFileError(
                log.path,
                f"frame {k} at t={t[k]:.3f} s lies in a gap of {gap[k]:.3f} s in the log "
                f"({lt[prev[k]]:.3f}..{lt[idx[k]]:.3f} s) longer than max_gap_s={max_gap_s}",
                frame=int(k),
                hint="the potentiostat log has missing data here; check the log or raise max_gap_s",
            )
    current = d["current_mA"].to_numpy()[idx]
    rest = d["rest"].to_numpy()[idx] | (current == 0)
    plating = (current > 0) == positive_current_plates
    phase = np.where(rest, "rest", np.where(plating, "plate", "strip"))
    out = pd.DataFrame(
        {
            "cycle": d["cycle"].to_numpy()[idx].astype(np.int64),
            "half_cycle": d["half_cycle"].to_numpy()[idx].astype(np.int64),
            "phase": phase.astype(object),
            "charge_C": np.interp(tc, lt, d["charge_C"].to_numpy()),
            "potential_V": np.interp(tc, lt, d["potential_V"].to_numpy()),
            "current_mA": current,
        }
    )
    out.index.name = "frame"
    return out
