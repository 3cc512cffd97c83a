"""Every real file in ../shared/data/real: right shape, pixel size, heights, or the right error.

Expected values come from the file headers (parsed here with plain Python) or from an independent
reader (SurfaceTopography, gwyfile, igor2), never from ecafm's own output.
"""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest

from ecafm.errors import InputFileError
from ecafm.io.afm import read_frames, repair_ibw_channel_name, sniff_format


def _nanoscope_header(path):
    text = path.read_bytes()[:100_000].decode("latin-1")
    lines = int(re.search(r"\\Lines: (\d+)", text).group(1))
    samps = int(re.search(r"\\Samps/line: (\d+)", text).group(1))
    scan = re.search(r"\\Scan [Ss]ize: ([0-9.]+) (nm|~m)", text)
    return lines, samps, scan


@pytest.mark.parametrize(
    "rel, channel",
    [
        ("spm/Veeco_20160622.003", "Height"),
        ("spm/old_bruker.002", "Height"),
        ("spm/di-3.di", "Height"),
        ("jpk/sample_0.jpk", "Height"),
        ("ibw/AR_20211011.ibw", "HeightRetrace"),
    ],
    ids=["nanoscope-003", "nanoscope-002", "nanoscope-di", "jpk", "ibw"],
)
def test_heights_agree_with_surfacetopography(real, rel, channel):
    """Same heights (nm) as an independent reader, whose arrays are transposed vs ecafm's."""
    from SurfaceTopography import open_topography

    path = real(rel)
    ours = read_frames(path)[0]
    reader = open_topography(str(path))
    ch = next(c for c in reader.channels if c.name == channel)
    topo = reader.topography(channel_index=ch.index)
    scale = {"nm": 1.0, "µm": 1e3, "m": 1e9}[topo.unit]
    ref = np.asarray(topo.heights()).T * scale
    assert ours.height.shape == ref.shape
    assert ours.height.dtype == np.float32
    np.testing.assert_allclose(ours.height, ref, atol=1e-5 * np.ptp(ref) + 1e-3)


@pytest.mark.parametrize(
    "rel, shape, scan_nm",
    [
        ("spm/Veeco_20160622.003", (512, 512), 1769.08),
        ("spm/old_bruker.002", (256, 256), 15000.0),
    ],
    ids=["003", "002"],
)
def test_nanoscope_pixel_size_is_scan_over_n(real, rel, shape, scan_nm):
    path = real(rel)
    lines, samps, scan = _nanoscope_header(path)
    assert (lines, samps) == shape and float(scan.group(1)) == scan_nm
    f = read_frames(path)[0]
    assert f.shape == shape
    assert f.pixel_size_nm[1] == pytest.approx(scan_nm / samps, rel=1e-9)
    assert f.timestamp is not None


def test_numbered_and_di_extensions_are_sniffed(real):
    """AFMReader's generic loader rejects .002/.003/.di by extension; ecafm reads the header."""
    from AFMReader.general_loader import LoadFile

    for rel in ("spm/old_bruker.002", "spm/Veeco_20160622.003", "spm/di-3.di"):
        path = real(rel)
        assert sniff_format(path) == "nanoscope"
        img, px = LoadFile(path, channel="Height").load()
        assert px is None and isinstance(img, Exception)  # the fault ecafm works around
        assert read_frames(path)[0].height.ndim == 2


def test_ibw_names_and_units_repaired(real):
    from igor2 import binarywave

    path = real("ibw/IgorIBWReader_P0089OP0027.ibw")
    wave = binarywave.load(str(path))["wave"]
    note = wave["note"].decode("latin-1").replace("\r", "\n")
    scan_m = float(re.search(r"^ScanSize:\s*([0-9.eE+-]+)", note, re.M).group(1))
    f = read_frames(path)[0]
    assert f.height_channel == "HeightRetrace"
    assert set(f.channels) == {"AmplitudeRetrace", "DeflectionRetrace", "PhaseRetrace", "UserIn0Retrace"}
    assert f.pixel_size_nm[1] == pytest.approx(scan_m * 1e9 / f.shape[1])
    # Phase comes back in degrees, not degrees * 1e9; compare with the raw wave layer.
    labels = [lab.decode() for lab in wave["labels"][2] if lab]
    k = labels.index("PhaseRetracerace")
    raw_phase = np.asarray(wave["wData"][:, :, k], float)
    phase, unit = f.channels["PhaseRetrace"]
    assert unit == "deg"
    assert np.nanmax(np.abs(phase)) == pytest.approx(np.nanmax(np.abs(raw_phase)), rel=1e-5)
    assert np.nanmax(np.abs(phase)) < 360


@pytest.mark.parametrize(
    "raw, fixed",
    [("PhaseRetracerace", "PhaseRetrace"), ("DeflectionRetracee", "DeflectionRetrace"),
     ("UserIn0Retracetrace", "UserIn0Retrace"), ("HeightTrace", "HeightTrace"), ("Foo", "Foo")],
)
def test_repair_ibw_channel_name(raw, fixed):
    assert repair_ibw_channel_name(raw) == fixed


def test_gwy_against_gwyfile(real):
    import gwyfile

    path = real("gwy/PTO_110_Virgin0001.gwy")
    obj = gwyfile.load(str(path))
    field = obj["/0/data"]
    f = read_frames(path)[0]
    assert f.height_channel == obj["/0/data/title"]
    np.testing.assert_allclose(f.height, field.data * 1e9, rtol=1e-6, atol=1e-4)
    assert f.pixel_size_nm[1] == pytest.approx(field.xreal * 1e9 / field.data.shape[1])


def test_gwy_same_as_afmreader(real):
    """The gwyfile path gives AFMReader's ``load_gwy`` image and pixel size (a second parser)."""
    from AFMReader import gwy

    path = real("gwy/PTO_110_Virgin0001.gwy")
    img, px = gwy.load_gwy(path, channel="HeightRetrace")
    f = read_frames(path, channel="HeightRetrace")[0]
    np.testing.assert_allclose(f.height, img, rtol=1e-6, atol=1e-3)  # float32 in the frame
    assert f.pixel_size_nm[1] == pytest.approx(px, rel=1e-12)


def test_asd_movie(real):
    path = real("asd/asd_sample_0.asd")
    raw = path.read_bytes()
    n_frames = int.from_bytes(raw[8:12], "little")  # header v1: frame count at byte 8
    frames = read_frames(path)
    assert len(frames) == n_frames == 32
    assert frames[0].shape == (200, 200)
    assert frames[0].pixel_size_nm == (0.5, 0.5)  # 100 nm / 200 px in the header
    ts = [f.timestamp for f in frames]
    assert all(b > a for a, b in zip(ts, ts[1:], strict=False))


def test_stp_header(real):
    path = real("wsxm/sample_0.stp")
    head = path.read_bytes()[:4000].decode("latin-1")
    rows = int(re.search(r"Number of rows: (\d+)", head).group(1))
    amp = float(re.search(r"X Amplitude: ([0-9.]+) nm", head).group(1))
    f = read_frames(path)[0]
    assert f.shape == (rows, rows)
    assert f.pixel_size_nm[1] == pytest.approx(amp / rows)


@pytest.mark.parametrize(
    "rel, shape, scan_nm",
    [("tiff/Park_20210916_034.tiff", (256, 256), 2500.0), ("nid/NanoSurf_20160301.nid", (128, 128), 10000.0)],
    ids=["park", "nanosurf"],
)
def test_surfacetopography_formats_use_scan_over_n(real, rel, shape, scan_nm):
    f = read_frames(real(rel))[0]
    assert f.shape == shape
    assert f.pixel_size_nm[1] == pytest.approx(scan_nm / shape[1])
    assert np.isfinite(f.height).all() and np.ptp(f.height) > 0


def test_nid_header_scan_size(real):
    text = real("nid/NanoSurf_20160301.nid").read_bytes()[:20000].decode("latin-1")
    rng = re.findall(r"Dim0Range=([0-9.eE+-]+)", text)
    assert rng and float(rng[0]) == pytest.approx(1e-5)


@pytest.mark.parametrize(
    "rel, match",
    [
        ("gwy/GwiddionReader_chip.gwy", "legacy Gwyddion 1.x"),
        ("mdt/GaAs_map.mdt", "no height channel"),
        ("gwy/test.gwy", "no height channel"),
    ],
    ids=["legacy-gwy", "mdt-current-only", "unitless-gwy"],
)
def test_clear_errors(real, rel, match):
    path = real(rel)
    with pytest.raises(InputFileError, match=match) as info:
        read_frames(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("rel", ["spm/old_bruker.002", "ibw/AR_20211011.ibw", "gwy/PTO_110_Virgin0001.gwy",
                                 "asd/asd_sample_0.asd", "wsxm/sample_0.stp"])
def test_truncated_file_fails_clearly(real, tmp_path, rel):
    src = real(rel)
    cut = tmp_path / src.name
    cut.write_bytes(src.read_bytes()[: src.stat().st_size // 3])
    with pytest.raises(InputFileError) as info:
        read_frames(cut)
    assert str(cut) in str(info.value)


def test_unsupported_file(tmp_path):
    p = tmp_path / "notes.spm"
    p.write_text("this is not an AFM file at all\n" * 10)
    with pytest.raises(InputFileError, match="not a supported AFM format"):
        read_frames(p)


def test_explicit_format_mismatch(real, tmp_path):
    src = real("spm/old_bruker.002")
    dst = tmp_path / "x.002"
    shutil.copy(src, dst)
    with pytest.raises(InputFileError, match="sheet says format 'gwy'"):
        read_frames(dst, fmt="gwy")


def test_each_format_imports_only_its_reader_and_stays_quiet(real):
    """A .gwy file loads no AFMReader module (AFMReader.spm alone pulls in pySPM and
    scikit-learn, 2.3 s of every ingest); a Nanoscope file loads AFMReader.spm and its loguru
    messages reach neither stdout nor stderr."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from ecafm.io.afm import read_frames\n"
        "read_frames(sys.argv[1])\n"
        "readers = {'AFMReader.' + m for m in ('asd', 'gwy', 'h5_jpk', 'ibw', 'jpk', 'spm', 'stp')}\n"
        "print(sorted(readers & set(sys.modules)))\n"
    )
    out = {}
    for rel in ("gwy/PTO_110_Virgin0001.gwy", "spm/Veeco_20160622.003", "ibw/AR_20211011.ibw"):
        r = subprocess.run([sys.executable, "-c", code, str(real(rel))], capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 0, r.stderr
        assert r.stderr == "", r.stderr  # AFMReader's loguru output silenced
        out[rel] = r.stdout.strip().splitlines()
    assert out["gwy/PTO_110_Virgin0001.gwy"] == ["[]"]
    assert out["spm/Veeco_20160622.003"] == ["['AFMReader.spm']"]
    assert out["ibw/AR_20211011.ibw"] == ["['AFMReader.ibw']"]
