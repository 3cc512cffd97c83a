"""Small builders for tests: Gwyddion frames and EC logs with known content."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd


def blas_threads() -> tuple[int, ...]:
    """Thread count of every BLAS library loaded in this process (threadpoolctl)."""
    from threadpoolctl import threadpool_info

    return tuple(i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas")


def write_gwy(path: Path, height_nm: np.ndarray, *, pixel_nm: float = 10.0) -> Path:
    """A real Gwyddion 2 .gwy file (written with gwyfile), heights in metres as Gwyddion keeps them."""
    from gwyfile.objects import GwyContainer, GwyDataField, GwySIUnit

    ny, nx = height_nm.shape
    field = GwyDataField(np.asarray(height_nm, float) * 1e-9, xreal=nx * pixel_nm * 1e-9,
                         yreal=ny * pixel_nm * 1e-9, si_unit_xy=GwySIUnit(unitstr="m"),
                         si_unit_z=GwySIUnit(unitstr="m"))
    c = GwyContainer()
    c["/0/data"] = field
    c["/0/data/title"] = "Height"
    c.tofile(str(path))
    return path


def make_log(n_cycles: int = 2, half_s: float = 100.0, current_mA: float = 0.01) -> pd.DataFrame:
    """Galvanostatic log: plate (+I) then strip (-I), half_s seconds each, 1 s sampling."""
    rows = []
    q = 0.0
    t = 0.0
    for hc in range(2 * n_cycles):
        sign = 1.0 if hc % 2 == 0 else -1.0
        for _ in range(int(half_s)):
            rows.append((t, -0.05 * sign, sign * current_mA, q, hc, hc // 2, False))
            t += 1.0
            q += sign * current_mA * 1e-3
    return pd.DataFrame(rows, columns=["time_s", "potential_V", "current_mA", "charge_C",
                                       "half_cycle", "cycle", "rest"])


START = dt.datetime(2026, 1, 1, 9, 0, 0)


def make_dataset(root: Path, *, n_frames: int = 8, shape=(32, 32), n_cycles: int = 2,
                 half_s: float = 100.0, zero_frames=(), seed: int = 0) -> dict[str, Path]:
    """Gwy frames + .mpt log + frame sheet: frames evenly spread over the cycling."""
    from scipy import ndimage as ndi

    from ecafm.io.echem import write_mpt

    rng = np.random.default_rng(seed)
    texture = ndi.gaussian_filter(rng.normal(0, 1, (shape[0] + 16, shape[1] + 16)), 2.0)
    texture *= 3.0 / texture.std()
    raw = root / "raw"
    raw.mkdir(parents=True)
    total = 2 * n_cycles * half_s
    times = np.linspace(1.0, total - 20.0, n_frames)
    rows = []
    heights = []
    for i, t in enumerate(times):
        o = i % 3  # small known drift, whole pixels
        h = texture[o:o + shape[0], o:o + shape[1]] + rng.normal(0, 0.2, shape) + i
        if i in zero_frames:
            h[:] = 0.0
        heights.append(h)
        name = f"frame_{i:03d}.gwy"
        write_gwy(raw / name, h)
        rows.append({"file": f"raw/{name}", "time_s": float(t), "line_time_s": 0.1})
    (root / "ec").mkdir()
    write_mpt(make_log(n_cycles, half_s), root / "ec" / "log.mpt", start_time=START)
    pd.DataFrame(rows).to_csv(root / "frames.tsv", sep="\t", index=False)
    return {"raw": raw, "log": root / "ec" / "log.mpt", "frames": root / "frames.tsv",
            "times": times, "heights": np.stack(heights)}
