"""Clean-room reader of BioLogic EC-Lab binary data files (.mpr).

Written from the layout facts below, checked byte by byte against public .mpr/.mpt pairs; no
code from GPL readers (galvani, yadg) was used.

File layout (all integers little endian)
----------------------------------------
* ``b"BIO-LOGIC MODULAR FILE\\x1a"`` padded with spaces and zero bytes, then modules back to
  back until the end of the file.
* Module header: ``b"MODULE"``, short name (10 bytes, space padded, e.g. ``VMP Set``,
  ``VMP data``, ``VMP LOG``, ``VMP loop``), long name (25 bytes), then either

  - old layout (EC-Lab < 11.50): payload length ``uint32``, version ``uint32``, date (8 ASCII
    bytes, ``MM/DD/YY``) -- 57 bytes in all;
  - new layout (EC-Lab >= 11.50): ``0xFFFFFFFF``, payload length ``uint32``, ``uint32`` (0),
    version ``uint32``, date (8 bytes) -- 65 bytes in all.

* ``VMP data`` payload: number of points ``uint32``; number of columns (``uint8`` for module
  versions < 10, ``uint16`` from version 10); column IDs (``uint16`` each); zero padding; then the
  packed records (no alignment) from a fixed offset: 405 (version 2), 406 (version 3), 1007
  (version 11). The offset is also checked as payload length minus points times record size.
* Column IDs 1, 2, 3, 21, 31, 65 are bits of ONE shared flag byte (stored where the first of
  them is listed): mode = bits 0-1, ox/red = 0x04, error = 0x08, control changes = 0x10,
  Ns changes = 0x20, counter inc. = 0x80.
* ``VMP LOG`` payload: the acquisition start as an OLE automation date (``float64`` days since
  1899-12-30, naive local time) at byte 585.
"""

from __future__ import annotations

import datetime
import logging
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ecafm.errors import InputFileError

__all__ = ["MprModule", "MprFile", "COLUMN_TABLE", "FLAG_BITS", "read_mpr", "read_modules"]

logger = logging.getLogger(__name__)

MAGIC = b"BIO-LOGIC MODULAR FILE"
MODULE_TAG = b"MODULE"

#: Flag columns: ID -> (name, bit mask in the shared flag byte).
FLAG_BITS: dict[int, tuple[str, int]] = {
    1: ("mode", 0x03),
    2: ("ox/red", 0x04),
    3: ("error", 0x08),
    21: ("control changes", 0x10),
    31: ("Ns changes", 0x20),
    65: ("counter inc.", 0x80),
}

#: Ordinary columns: ID -> (EC-Lab .mpt name, numpy dtype). IDs marked "checked" were verified
#: against .mpt exports of the same runs; the others follow EC-Lab's column list and are
#: guarded by the record-size check (a wrong size makes the offset check fail loudly).
COLUMN_TABLE: dict[int, tuple[str, str]] = {
    4: ("time/s", "<f8"),  # checked
    5: ("control/V/mA", "<f4"),  # checked
    6: ("Ewe/V", "<f4"),  # checked
    7: ("dq/mA.h", "<f8"),  # checked
    8: ("I/mA", "<f4"),  # checked
    9: ("Ece/V", "<f4"),  # checked
    11: ("<I>/mA", "<f8"),  # checked
    13: ("(Q-Qo)/mA.h", "<f8"),  # checked
    16: ("Analog IN 1/V", "<f4"),
    19: ("control/V", "<f4"),  # checked
    20: ("control/mA", "<f4"),  # checked
    23: ("dQ/mA.h", "<f8"),
    24: ("cycle number", "<f8"),  # checked
    26: ("Rapp/Ohm", "<f4"),
    32: ("freq/Hz", "<f4"),
    33: ("|Ewe|/V", "<f4"),
    34: ("|I|/A", "<f4"),
    35: ("Phase(Z)/deg", "<f4"),
    36: ("|Z|/Ohm", "<f4"),
    37: ("Re(Z)/Ohm", "<f4"),
    38: ("-Im(Z)/Ohm", "<f4"),
    39: ("I Range", "<u2"),  # checked
    69: ("R/Ohm", "<f4"),
    70: ("P/W", "<f4"),  # checked
    74: ("|Energy|/W.h", "<f8"),  # checked
    75: ("Analog OUT/V", "<f4"),
    76: ("<I>/mA", "<f4"),
    77: ("<Ewe>/V", "<f4"),
    123: ("Energy charge/W.h", "<f8"),  # checked
    124: ("Energy discharge/W.h", "<f8"),  # checked
    125: ("Capacitance charge/µF", "<f8"),  # checked
    126: ("Capacitance discharge/µF", "<f8"),  # checked
    131: ("Ns", "<u2"),  # checked
    169: ("Cs/µF", "<f4"),
    172: ("Cp/µF", "<f4"),
    174: ("<Ewe>/V", "<f4"),
    211: ("Q charge/discharge/mA.h", "<f8"),
    212: ("half cycle", "<u4"),
    434: ("(Q-Qo)/C", "<f4"),  # checked
    438: ("step time/s", "<f8"),
    467: ("Q charge/discharge/mA.h", "<f8"),  # checked
    468: ("half cycle", "<u4"),  # checked
}

#: Offset of the first record in the ``VMP data`` payload, by module version.
DATA_OFFSET_BY_VERSION = {2: 0x195, 3: 0x196, 11: 0x3EF}
#: Offset of the OLE acquisition date in the ``VMP LOG`` payload.
LOG_DATE_OFFSET = 585
_OLE_EPOCH = datetime.datetime(1899, 12, 30)


@dataclass(frozen=True)
class MprModule:
    """One module of an .mpr file."""

    short_name: str
    long_name: str
    version: int
    date: str
    offset: int
    payload: bytes = field(repr=False)


@dataclass(frozen=True)
class MprFile:
    """Decoded .mpr file.

    Attributes
    ----------
    path : str
        File read.
    columns : dict of str to numpy.ndarray
        Data columns by their EC-Lab .mpt names, each shape (n_points,).
    column_ids : tuple of int
        Column IDs as stored.
    start_time : datetime.datetime or None
        Acquisition start from the ``VMP LOG`` module (naive local time), None without one.
    data_version : int
        Version of the ``VMP data`` module.
    modules : tuple of MprModule
        All modules, in file order.
    """

    path: str
    columns: dict[str, np.ndarray]
    column_ids: tuple[int, ...]
    start_time: datetime.datetime | None
    data_version: int
    modules: tuple[MprModule, ...] = field(repr=False)


def read_modules(path: str | Path, raw: bytes) -> list[MprModule]:
    """Split the bytes of an .mpr file into modules.

    Parameters
    ----------
    path : str or pathlib.Path
        File name, for error messages.
    raw : bytes
        Whole file content.

    Returns
    -------
    list of MprModule

    Raises
    ------
    InputFileError
        When the magic is missing or a module is cut short.
    """
    if not raw.startswith(MAGIC):
        raise InputFileError(path, f"not an EC-Lab .mpr file (does not start with {MAGIC!r})")
    pos = raw.find(MODULE_TAG, len(MAGIC))
    if pos < 0:
        raise InputFileError(path, "no MODULE found after the file header (truncated file?)")
    modules: list[MprModule] = []
    while pos < len(raw):
        if raw[pos : pos + 6] != MODULE_TAG:
            raise InputFileError(
                path, f"expected b'MODULE' at byte {pos}, found {raw[pos : pos + 6]!r}"
            )
        if pos + 57 > len(raw):
            raise InputFileError(path, f"module header at byte {pos} is cut short (truncated file)")
        short = raw[pos + 6 : pos + 16].decode("latin-1").strip()
        long_ = raw[pos + 16 : pos + 41].decode("latin-1").strip()
        (first,) = struct.unpack_from("<I", raw, pos + 41)
        if first == 0xFFFFFFFF:
            if pos + 65 > len(raw):
                raise InputFileError(
                    path, f"module header at byte {pos} is cut short (truncated file)"
                )
            length, _, version = struct.unpack_from("<III", raw, pos + 45)
            head = 65
        else:
            length = first
            (version,) = struct.unpack_from("<I", raw, pos + 45)
            head = 57
        date = raw[pos + head - 8 : pos + head].decode("latin-1")
        start, end = pos + head, pos + head + length
        if end > len(raw):
            raise InputFileError(
                path,
                f"module {short!r} at byte {pos} declares {length} bytes but only "
                f"{len(raw) - start} remain: the file is truncated",
            )
        modules.append(MprModule(short, long_, version, date, pos, raw[start:end]))
        pos = end
    return modules


def _decode_data(
    path: str | Path, module: MprModule
) -> tuple[tuple[int, ...], dict[str, np.ndarray]]:
    pay = module.payload
    if len(pay) < 6:
        raise InputFileError(path, "VMP data module is too short to hold its header")
    (n_points,) = struct.unpack_from("<I", pay, 0)
    if module.version >= 10:
        (n_cols,) = struct.unpack_from("<H", pay, 4)
        ids_at = 6
    else:
        n_cols = pay[4]
        ids_at = 5
    if ids_at + 2 * n_cols > len(pay):
        raise InputFileError(path, "VMP data module is cut short inside its column list")
    ids = struct.unpack_from(f"<{n_cols}H", pay, ids_at)

    fields: list[tuple[str, str]] = []
    flag_ids: list[int] = []
    for cid in ids:
        if cid in FLAG_BITS:
            if not flag_ids:
                fields.append(("__flags__", "u1"))
            flag_ids.append(cid)
        elif cid in COLUMN_TABLE:
            name, dtype = COLUMN_TABLE[cid]
            if any(name == f[0] for f in fields):
                name = f"{name} (id {cid})"
            fields.append((name, dtype))
        else:
            raise InputFileError(
                path,
                f"unknown column id {cid} in the VMP data module (version {module.version}; "
                f"column ids {list(ids)})",
                hint="ecafm's .mpr column table lacks this id; export the run as .mpt from EC-Lab "
                "and read that instead",
            )
    dtype = np.dtype(fields)
    need = n_points * dtype.itemsize
    computed = len(pay) - need
    expected = DATA_OFFSET_BY_VERSION.get(module.version)
    if n_points == 0:
        raise InputFileError(path, "the VMP data module holds no data points")
    if computed < ids_at + 2 * n_cols:
        raise InputFileError(
            path,
            f"VMP data module holds {len(pay)} bytes, too few for {n_points} records of "
            f"{dtype.itemsize} bytes (truncated file?)",
        )
    if expected is None:
        logger.warning(
            "%s: VMP data module version %d not seen before; records taken from byte %d",
            path,
            module.version,
            computed,
        )
        offset = computed
    elif computed != expected:
        raise InputFileError(
            path,
            f"VMP data module (version {module.version}) has {len(pay)} bytes; {n_points} records "
            f"of {dtype.itemsize} bytes should start at byte {expected} but would start at "
            f"{computed} (column ids {list(ids)}: a column size is wrong or the file is damaged)",
        )
    else:
        offset = expected
    rec = np.frombuffer(pay, dtype=dtype, count=n_points, offset=offset)
    cols: dict[str, np.ndarray] = {}
    for name in dtype.names or ():
        if name == "__flags__":
            flags = rec[name]
            for cid in flag_ids:
                fname, mask = FLAG_BITS[cid]
                shift = (mask & -mask).bit_length() - 1
                cols[fname] = ((flags & mask) >> shift).astype(np.uint8)
        else:
            cols[name] = rec[name].astype(rec[name].dtype.newbyteorder("="))
    return ids, cols


def _log_start_time(path: str | Path, module: MprModule) -> datetime.datetime | None:
    if len(module.payload) < LOG_DATE_OFFSET + 8:
        logger.warning("%s: VMP LOG module too short for an acquisition date", path)
        return None
    (days,) = struct.unpack_from("<d", module.payload, LOG_DATE_OFFSET)
    if not (np.isfinite(days) and 25000.0 < days < 80000.0):  # 1968 .. 2118
        logger.warning("%s: VMP LOG module holds no plausible acquisition date (%r)", path, days)
        return None
    start = _OLE_EPOCH + datetime.timedelta(days=days)
    # EC-Lab keeps milliseconds; drop the float rounding below them
    return start.replace(microsecond=0) + datetime.timedelta(
        milliseconds=round(start.microsecond / 1000)
    )


def read_mpr(path: str | Path) -> MprFile:
    """Read an EC-Lab binary data file.

    Parameters
    ----------
    path : str or pathlib.Path
        The .mpr file.

    Returns
    -------
    MprFile
        Columns by their .mpt names, acquisition start from the LOG module if any.

    Raises
    ------
    InputFileError
        When the file is truncated, has no ``VMP data`` module or no data points, or holds a
        column ID missing from :data:`COLUMN_TABLE`.
    """
    raw = Path(path).read_bytes()
    modules = read_modules(path, raw)
    data = [m for m in modules if m.short_name == "VMP data"]
    if not data:
        raise InputFileError(
            path, f"no 'VMP data' module (modules: {[m.short_name for m in modules]})"
        )
    ids, cols = _decode_data(path, data[0])
    logs = [m for m in modules if m.short_name == "VMP LOG"]
    start = _log_start_time(path, logs[0]) if logs else None
    logger.info(
        "%s: %d points, %d columns, data module version %d, start %s",
        path,
        len(next(iter(cols.values()))),
        len(cols),
        data[0].version,
        start,
    )
    return MprFile(
        path=str(path),
        columns=cols,
        column_ids=tuple(ids),
        start_time=start,
        data_version=data[0].version,
        modules=tuple(modules),
    )
