"""Read AFM instrument files into frames with one convention, correcting known reader faults.

Readers: AFMReader (Bruker Nanoscope, Asylum .ibw, JPK .jpk/.h5-jpk, Gwyddion .gwy, RIBM .asd
movies, WSxM .stp) and SurfaceTopography where AFMReader has no reader (Park .tiff, Nanosurf .nid,
NT-MDT .mdt).

Conventions (every reader is made to agree):

* array index ``[row, col] = [y, x]``; row 0 is the first line in the file's row order
  (AFMReader's orientation; SurfaceTopography's arrays are transposed back);
* pixel size = scan size / N (AFMReader's convention; SurfaceTopography reports scan / (N - 1)
  for some formats and N * delta for others, so ecafm derives it from the reported scan size);
* heights in nm as float32.

Known reader faults corrected here (each has a test in ``tests/test_readers_real.py``):

* AFMReader's generic loader dispatches on the extension and rejects Nanoscope numbered
  extensions (``.002``) and ``.di``: ecafm sniffs the header and calls the Nanoscope loader;
* AFMReader's .ibw loader leaves characters in channel names (``PhaseRetracerace``) and multiplies
  every channel by 1e9, phase included: names are repaired, non-length channels divided back;
* AFMReader's generic loader can return the error as the image instead of raising: ecafm calls the
  format loaders directly and checks that what comes back is a numeric array.
"""

from __future__ import annotations

import datetime as _dt
import importlib
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ecafm.errors import InputFileError

log = logging.getLogger(__name__)

#: Format names ecafm knows, with the reader that handles them.
FORMATS = {
    "nanoscope": "AFMReader.spm",
    "ibw": "AFMReader.ibw",
    "jpk": "AFMReader.jpk",
    "h5-jpk": "AFMReader.h5_jpk",
    "gwy": "AFMReader.gwy",
    "asd": "AFMReader.asd",
    "stp": "AFMReader.stp",
    "park-tiff": "SurfaceTopography",
    "nid": "SurfaceTopography",
    "mdt": "SurfaceTopography",
}

#: Height channel names, in order of preference (case-insensitive).
HEIGHT_CHANNELS = (
    "height",
    "heightretrace",
    "heighttrace",
    "height_trace",
    "height_retrace",
    "topography",
    "tp",
    "zsensor",
    "zsensorretrace",
    "height sensor",
    "scan forward (z-axis)",
    "z",
)

_NANOSCOPE_DATE = re.compile(r"\\Date: (\d\d:\d\d:\d\d [AP]M \w{3} \w{3} \d\d \d{4})")


@dataclass(frozen=True)
class RawFrame:
    """One image of one file, in ecafm's conventions."""

    path: str
    index: int
    format: str
    height: np.ndarray  # (y, x) float32, nm
    pixel_size_nm: tuple[float, float]  # (y, x)
    height_channel: str
    channels: dict[str, tuple[np.ndarray, str]] = field(default_factory=dict)  # name -> (array, unit)
    timestamp: _dt.datetime | None = None  # acquisition start, naive local time
    line_time_s: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        return self.height.shape  # type: ignore[return-value]

    @property
    def scan_size_nm(self) -> tuple[float, float]:
        return (self.shape[0] * self.pixel_size_nm[0], self.shape[1] * self.pixel_size_nm[1])


# --------------------------------------------------------------------------- sniffing
def sniff_format(path: str | Path) -> str:
    """Identify the format from the file's bytes (not only its extension)."""
    path = Path(path)
    if not path.exists():
        raise InputFileError(path, "file not found", hint="check the raw location in the sheet")
    if path.is_dir():
        raise InputFileError(path, "is a folder, not a file")
    with open(path, "rb") as fh:
        head = fh.read(64)
    if len(head) < 8:
        raise InputFileError(path, f"file is too short ({len(head)} bytes) to be AFM data (truncated?)")
    if head.startswith(b"GWYP"):
        return "gwy"
    if head.startswith(b"GWYO"):
        raise InputFileError(
            path,
            "legacy Gwyddion 1.x container (magic GWYO) is not supported by any kept reader",
            hint="open it in Gwyddion 2 and save it again as .gwy",
        )
    if head.startswith(b"\\*File list") or head.startswith(b"\\*Force file list"):
        return "nanoscope"
    if head.startswith(b"WSxM file copyright"):
        return "stp"
    if head.startswith(b"[DataSet]"):
        return "nid"
    if head.startswith(b"\x89HDF"):
        return "h5-jpk"
    if head[:2] in (b"\x01\xb0",) and path.suffix.lower() == ".mdt":
        return "mdt"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return _sniff_tiff(path)
    suffix = path.suffix.lower()
    if suffix == ".ibw" and head[:2] in (b"\x05\x00", b"\x00\x05"):
        return "ibw"
    if suffix == ".asd" and int.from_bytes(head[:4], "little") in (0, 1, 2):
        return "asd"
    raise InputFileError(
        path,
        "not a supported AFM format (header not recognised)",
        hint=f"supported: {', '.join(FORMATS)}",
    )


def _sniff_tiff(path: Path) -> str:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            tags = {t.code for t in tif.pages[0].tags.values()}
    except Exception as exc:  # tifffile raises many types on broken files
        raise InputFileError(path, f"broken TIFF ({exc})") from exc
    if 50432 in tags:
        return "park-tiff"
    if 32816 in tags or any(32768 <= t < 33000 for t in tags):
        return "jpk"
    raise InputFileError(path, "TIFF without Park or JPK AFM tags: not an AFM file ecafm can read")


# --------------------------------------------------------------------------- helpers
#: the AFMReader module each format's reader uses (gwy is parsed by gwyfile, the rest by
#: SurfaceTopography)
_AFMREADER_MODULE = {"nanoscope": "spm", "ibw": "ibw", "jpk": "jpk", "h5-jpk": "h5_jpk", "asd": "asd",
                     "stp": "stp"}


def _quiet_afmreader(fmt: str) -> None:
    """Import the AFMReader module of ``fmt`` (if it has one) with its logging silenced.

    Every AFMReader module re-enables its loguru logging on import, so loguru is routed away
    (DEBUG of the standard logging module: the rule's log file) after the import. Only the
    module the format needs is imported: ``AFMReader.spm`` pulls in pySPM and scikit-learn
    (2.3 s), all seven modules 3.4 s of a bench-m ingest's 13 s, for .gwy files that use none.
    """
    name = _AFMREADER_MODULE.get(fmt)
    if name is None:
        return
    importlib.import_module(f"AFMReader.{name}")
    from loguru import logger

    logger.remove()
    logger.disable("AFMReader")


def _check_image(path: Path, image: Any, *, frame: int | None = None) -> np.ndarray:
    """AFMReader can hand back an exception or message where the image belongs."""
    if isinstance(image, BaseException) or isinstance(image, str) or image is None:
        raise InputFileError(path, f"reader returned an error instead of an image: {image}", frame=frame)
    arr = np.asarray(image)
    if arr.dtype.kind not in "fiu" or arr.ndim not in (2, 3):
        raise InputFileError(path, f"reader returned {arr.dtype} array of shape {arr.shape}, not an image",
                             frame=frame)
    return arr


def _pick_height(path: Path, names: list[str]) -> str:
    lower = {n.lower(): n for n in names}
    for cand in HEIGHT_CHANNELS:
        if cand in lower:
            return lower[cand]
    for n in names:
        if "height" in n.lower() or "topograph" in n.lower():
            return n
    raise InputFileError(
        path,
        f"no height channel (channels present: {', '.join(names) or 'none'})",
        hint="ecafm needs topography; pass --channel NAME if the height channel has another name",
    )


def repair_ibw_channel_name(name: str) -> str:
    """``PhaseRetracerace`` -> ``PhaseRetrace``; ``DeflectionRetracee`` -> ``DeflectionRetrace``."""
    m = re.match(r"^(.*?(?:Retrace|Trace))", name)
    return m.group(1) if m else name


def _ibw_unit(name: str) -> tuple[str, float]:
    """(unit, factor to apply to AFMReader's value) for an Asylum channel."""
    base = name.lower()
    if base.startswith("phase"):
        return "deg", 1e-9
    if base.startswith(("userin", "current", "potential", "bias")):
        return "V" if not base.startswith("current") else "A", 1e-9
    if base.startswith(("frequency", "freq")):
        return "Hz", 1e-9
    return "nm", 1.0


# --------------------------------------------------------------------------- per-format readers
def _read_nanoscope(path: Path, channel: str | None) -> list[RawFrame]:
    from AFMReader import spm

    text = path.read_bytes()[:200_000].decode("latin-1")
    names = re.findall(r"\\@2:Image Data: S \[([^\]]*)\]", text)
    names = list(dict.fromkeys(names))
    if not names:
        raise InputFileError(path, "Nanoscope header lists no image data (truncated or a force file?)")
    chan = channel or _pick_height(path, names)
    try:
        img, px = spm.load_spm(path, channel=chan)
    except Exception as exc:
        raise InputFileError(path, f"Nanoscope loader failed on channel {chan!r}: {exc}") from exc
    img = _check_image(path, img)
    ts = None
    m = _NANOSCOPE_DATE.search(text)
    if m:
        ts = _dt.datetime.strptime(m.group(1), "%I:%M:%S %p %a %b %d %Y")
    lt = re.search(r"\\Scan rate: ([0-9.eE+-]+)", text)
    line_time = 1.0 / float(lt.group(1)) if lt and float(lt.group(1)) > 0 else None
    return [RawFrame(str(path), 0, "nanoscope", img.astype(np.float32), (float(px), float(px)), chan,
                     timestamp=ts, line_time_s=line_time, meta={"channels": names})]


def _read_ibw(path: Path, channel: str | None) -> list[RawFrame]:
    from AFMReader import ibw

    try:
        from igor2 import binarywave

        wave = binarywave.load(str(path))["wave"]
        raw_labels = [lab.decode("latin-1") for lab in wave["labels"][2] if lab]
        note = wave.get("note", b"").decode("latin-1", "replace").replace("\r", "\n")
    except Exception as exc:
        raise InputFileError(path, f"not a readable Igor binary wave ({exc})") from exc
    raw_labels = [lab for lab in raw_labels if lab]
    fixed = {repair_ibw_channel_name(lab): lab for lab in raw_labels}
    chan = channel or _pick_height(path, list(fixed))
    channels: dict[str, tuple[np.ndarray, str]] = {}
    height = None
    px = None
    for name, raw in fixed.items():
        try:
            img, px_ = ibw.load_ibw(path, channel=raw)
        except Exception as exc:
            raise InputFileError(path, f"Asylum loader failed on channel {raw!r}: {exc}") from exc
        img = _check_image(path, img)
        unit, factor = _ibw_unit(name)
        data = (img * factor).astype(np.float32)
        if name == chan:
            height, px = data, float(px_)
        else:
            channels[name] = (data, unit)
    assert height is not None and px is not None
    ts = None
    d = re.search(r"^Date:\s*(\d{4}-\d\d-\d\d)\s*$", note, re.M)
    t = re.search(r"^Time:\s*(\d{1,2}:\d\d:\d\d(?:\s*[AP]M)?)\s*$", note, re.M)
    if d and t:
        tstr = t.group(1).strip()
        fmt = "%I:%M:%S %p" if tstr.endswith("M") else "%H:%M:%S"
        try:
            ts = _dt.datetime.strptime(f"{d.group(1)} {tstr}", f"%Y-%m-%d {fmt}")
        except ValueError:
            ts = None
    sr = re.search(r"ScanRate:\s*([0-9.eE+-]+)", note)
    line_time = 1.0 / float(sr.group(1)) if sr and float(sr.group(1)) > 0 else None
    return [RawFrame(str(path), 0, "ibw", height, (px, px), chan, channels, ts, line_time,
                     {"raw_channel_names": raw_labels})]


def _read_gwy(path: Path, channel: str | None) -> list[RawFrame]:
    """A Gwyddion container, parsed once by ``gwyfile`` (numpy arrays).

    AFMReader's ``load_gwy`` gives bit-identical images and pixel sizes on the real test files
    (``tests/test_readers_real.py`` checks it) but reads the data one double at a time: 37 ms of
    a bench-s ingest's 45 ms per frame, on top of the ``gwyfile`` parse the unit checks below
    need anyway.
    """
    try:
        import gwyfile

        obj = gwyfile.load(str(path))
        titles = {k.split("/")[1]: v for k, v in obj.items() if re.fullmatch(r"/\d+/data/title", k)}
    except Exception as exc:
        raise InputFileError(path, f"Gwyddion container cannot be parsed ({exc}); truncated?") from exc
    names = list(titles.values())
    if not names:
        raise InputFileError(path, "Gwyddion file holds no image channels")
    chan = channel or _pick_height(path, names)
    key = next(k for k, v in titles.items() if v == chan)
    field_ = obj[f"/{key}/data"]
    unit_xy = field_.si_unit_xy.unitstr if field_.si_unit_xy is not None else ""
    unit_z = field_.si_unit_z.unitstr if field_.si_unit_z is not None else ""
    if unit_xy != "m" or unit_z != "m":
        raise InputFileError(
            path,
            f"channel {chan!r} has lateral unit {unit_xy!r} and height unit {unit_z!r}, not metres: "
            "no physical scale (synthetic or unitless container?)",
            hint="set the units in Gwyddion (Data Process > Basic > Dimensions and Units)",
        )
    try:
        img = np.asarray(field_.data, np.float64) * 1e9
        px = float(field_.xreal) * 1e9 / img.shape[1]
    except Exception as exc:
        raise InputFileError(path, f"Gwyddion data field of channel {chan!r} unreadable: {exc}") from exc
    img = _check_image(path, img)
    channels = {}
    for k, name in titles.items():
        if name == chan:
            continue
        f = obj[f"/{k}/data"]
        if f.data.shape == img.shape:
            uz = f.si_unit_z.unitstr if f.si_unit_z is not None else ""
            scale = 1e9 if uz == "m" else 1.0
            channels[name] = ((np.asarray(f.data) * scale).astype(np.float32), "nm" if uz == "m" else uz)
    ts = None
    meta = obj.get(f"/{key}/meta")
    if meta is not None and "Date" in meta:
        try:
            ts = _dt.datetime.fromisoformat(str(meta["Date"]))
        except ValueError:
            ts = None
    pxy = float(field_.yreal) * 1e9 / img.shape[0]
    return [RawFrame(str(path), 0, "gwy", img.astype(np.float32), (pxy, float(px)), chan, channels, ts)]


def _read_jpk(path: Path, channel: str | None) -> list[RawFrame]:
    from AFMReader import jpk

    chan = channel or "height_trace"
    try:
        img, px = jpk.load_jpk(path, channel=chan)
    except Exception as exc:
        raise InputFileError(path, f"JPK loader failed on channel {chan!r}: {exc}") from exc
    img = _check_image(path, img)
    return [RawFrame(str(path), 0, "jpk", img.astype(np.float32), (float(px), float(px)), chan)]


def _read_h5jpk(path: Path, channel: str | None) -> list[RawFrame]:
    from AFMReader import h5_jpk

    chan = channel or "height_trace"
    try:
        out = h5_jpk.load_h5jpk(path, channel=chan)
    except Exception as exc:
        raise InputFileError(path, f"JPK HDF5 loader failed on channel {chan!r}: {exc}") from exc
    stack = _check_image(path, out[0])
    px = float(out[1])
    stamps = out[2] if len(out) > 2 and isinstance(out[2], dict) else {}
    stack = stack if stack.ndim == 3 else stack[None]
    times = list(stamps.values()) if stamps else [None] * len(stack)
    return [RawFrame(str(path), i, "h5-jpk", stack[i].astype(np.float32), (px, px), chan,
                     meta={"frame_time_s": times[i] if i < len(times) else None})
            for i in range(len(stack))]


def _read_asd(path: Path, channel: str | None) -> list[RawFrame]:
    from AFMReader import asd

    chan = channel or "TP"
    try:
        frames, px, meta = asd.load_asd(path, channel=chan)
    except Exception as exc:
        raise InputFileError(path, f"ASD loader failed on channel {chan!r}: {exc}") from exc
    frames = _check_image(path, frames)
    ts = None
    try:
        ts = _dt.datetime(meta["year"], meta["month"], meta["day"], meta["hour"], meta["minute"],
                          meta["second"])
    except (KeyError, ValueError):
        ts = None
    frame_time = float(meta.get("frame_time", 0.0)) / 1000.0  # ms -> s
    ny = frames.shape[1]
    out = []
    for i in range(frames.shape[0]):
        stamp = ts + _dt.timedelta(seconds=i * frame_time) if ts is not None else None
        out.append(RawFrame(str(path), i, "asd", frames[i].astype(np.float32), (float(px), float(px)),
                            chan, timestamp=stamp,
                            line_time_s=frame_time / ny if frame_time else None,
                            meta={"frame_time_s": frame_time}))
    return out


def _read_stp(path: Path, channel: str | None) -> list[RawFrame]:
    from AFMReader import stp

    try:
        img, px = stp.load_stp(path)
    except Exception as exc:
        raise InputFileError(path, f"WSxM loader failed: {exc}") from exc
    img = _check_image(path, img)
    return [RawFrame(str(path), 0, "stp", img.astype(np.float32), (float(px), float(px)), "Topography")]


_LENGTH_UNITS_NM = {"m": 1e9, "mm": 1e6, "µm": 1e3, "um": 1e3, "nm": 1.0, "Å": 0.1, "pm": 1e-3}


def _read_surface_topography(path: Path, channel: str | None, fmt: str) -> list[RawFrame]:
    from SurfaceTopography import open_topography

    try:
        reader = open_topography(str(path))
    except Exception as exc:
        msg = str(exc)
        if "no scanned" in msg.lower() or "no topograph" in msg.lower():
            raise InputFileError(path, "no height channel (the file holds no topography scan)",
                                 hint="ecafm needs a height/topography channel") from exc
        raise InputFileError(path, f"SurfaceTopography cannot read it: {msg.splitlines()[0][:200]}") from exc
    chans = reader.channels
    names = [c.name for c in chans]
    height_like = [c for c in chans if (c.unit if isinstance(c.unit, str) else None) in _LENGTH_UNITS_NM]
    if channel:
        pick = [c for c in chans if c.name == channel]
    else:
        pick = [c for c in height_like
                if any(k in c.name.lower() for k in ("topograph", "height", "z-axis", "zsensor"))]
        pick = pick or height_like
    if not pick:
        raise InputFileError(path, f"no height channel (channels present: {', '.join(names) or 'none'})")
    ch = pick[0]
    topo = reader.topography(channel_index=ch.index)
    unit = topo.unit
    scale = _LENGTH_UNITS_NM[unit]
    # SurfaceTopography arrays are (x, y): transpose to ecafm's (y, x).
    h = (np.asarray(topo.heights()) * scale).T.astype(np.float32)
    ny, nx = h.shape
    sx, sy = (float(s) * scale for s in topo.physical_sizes)
    px = (sy / ny, sx / nx)
    ts = topo.info.get("acquisition_time")
    if isinstance(ts, _dt.datetime) and ts.tzinfo is not None:
        ts = ts.replace(tzinfo=None)
    return [RawFrame(str(path), 0, fmt, h, px, ch.name, timestamp=ts if isinstance(ts, _dt.datetime) else None,
                     meta={"channels": names})]


_READERS = {
    "nanoscope": _read_nanoscope,
    "ibw": _read_ibw,
    "gwy": _read_gwy,
    "jpk": _read_jpk,
    "h5-jpk": _read_h5jpk,
    "asd": _read_asd,
    "stp": _read_stp,
}


def read_frames(path: str | Path, *, fmt: str = "auto", channel: str | None = None) -> list[RawFrame]:
    """Read every frame of one instrument file, in acquisition order.

    Raises
    ------
    InputFileError
        Naming the file, the cause and (where known) what to do.
    """
    path = Path(path)
    found = sniff_format(path)
    if fmt not in ("auto", found):
        raise InputFileError(path, f"sheet says format {fmt!r} but the file is {found!r}")
    _quiet_afmreader(found)
    if found in _READERS:
        try:
            frames = _READERS[found](path, channel)
        except InputFileError:
            raise
        except (OSError, ValueError, KeyError, IndexError, EOFError) as exc:
            raise InputFileError(path, f"{found} reader failed: {type(exc).__name__}: {exc}",
                                 hint="the file may be truncated or damaged") from exc
    else:
        frames = _read_surface_topography(path, channel, found)
    for f in frames:
        if not np.all(np.isfinite(f.pixel_size_nm)) or min(f.pixel_size_nm) <= 0:
            raise InputFileError(path, f"invalid pixel size {f.pixel_size_nm}", frame=f.index)
    return frames


def iter_sources(sources: list[str | Path]) -> Iterator[Path]:
    """Expand folders and globs into files, sorted by name (acquisition order is fixed later)."""
    for src in sources:
        p = Path(src)
        if any(c in str(src) for c in "*?["):
            matches = sorted(Path(p.anchor or ".").glob(str(p.relative_to(p.anchor)) if p.is_absolute()
                                                          else str(p)))
            if not matches:
                raise InputFileError(src, "glob matches no file")
            yield from matches
        elif p.is_dir():
            files = sorted(q for q in p.iterdir() if q.is_file() and not q.name.startswith("."))
            if not files:
                raise InputFileError(p, "folder holds no files")
            yield from files
        elif p.exists():
            yield p
        else:
            raise InputFileError(p, "does not exist", hint="check the raw location in config/datasets.tsv")


def describe(path: str | Path) -> dict[str, Any]:
    """What ``ecafm inspect`` shows about one file."""
    frames = read_frames(path)
    f0 = frames[0]
    chans = [f0.height_channel, *f0.channels]
    return {
        "path": str(path),
        "format": f0.format,
        "channels": chans,
        "height_channel": f0.height_channel,
        "frames": len(frames),
        "shape_px": list(f0.shape),
        "scan_size_nm": [round(v, 6) for v in f0.scan_size_nm],
        "pixel_size_nm": [round(v, 6) for v in f0.pixel_size_nm],
        "units": {"height": "nm", **{k: u for k, (_, u) in f0.channels.items()}},
        "height_range_nm": [float(np.nanmin(f0.height)), float(np.nanmax(f0.height))],
        "timestamps": [f.timestamp.isoformat() if f.timestamp else None for f in frames],
    }
