"""Figures, drawn from saved results only (never inside a stage's computation)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ecafm.store import Step, write_file


def _mpl():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_ingest(cube: str | Path, qc: str | Path, out: str | Path, *, step: Step) -> dict[str, Any]:
    """First/middle/last frame (nm, shared scale) and electrochemistry per frame, QC marked."""
    import numpy as np
    import pandas as pd

    from ecafm.store import open_cube

    plt = _mpl()
    ds = open_cube(cube)
    q = pd.read_csv(qc, sep="\t")
    n = ds.sizes["frame"]
    ok = ds["frame_ok"].values
    good = np.flatnonzero(ok) if ok.any() else np.arange(n)
    picks = sorted({int(good[0]), int(good[len(good) // 2]), int(good[-1])})
    imgs = [_display_plane(ds["height"].isel(frame=i).values) for i in picks]
    nm = ds["x"].values[-1] < 2000
    scale, unit = (1.0, "nm") if nm else (1e-3, "µm")
    x = ds["x"].values * scale
    y = ds["y"].values * scale
    ext = (x[0], x[-1], y[-1], y[0])

    fig = plt.figure(figsize=(12, 6.5), constrained_layout=True)
    gs = fig.add_gridspec(2, 3, height_ratios=[1.3, 1])
    for k, (i, img) in enumerate(zip(picks, imgs, strict=True)):
        ax = fig.add_subplot(gs[0, k])
        lo, hi = np.nanpercentile(img, [1, 99])
        im = ax.imshow(img, cmap="afmhot", vmin=lo, vmax=hi, extent=ext)
        ax.set_title(f"frame {i}, t = {float(ds['time'][i]):.0f} s, cycle {int(ds['cycle'][i])}",
                     fontsize=10)
        ax.set_xlabel(f"x ({unit})")
        ax.set_ylabel(f"y ({unit})")
        fig.colorbar(im, ax=ax, label="height - plane (nm)", shrink=0.8)

    t = ds["time"].values
    ax = fig.add_subplot(gs[1, :2])
    if np.isfinite(ds["potential"].values).any():
        ax.plot(t, ds["potential"].values, ".-", color="C0", label="potential")
        ax.set_ylabel("potential (V)", color="C0")
        ax2 = ax.twinx()
        ax2.plot(t, ds["charge"].values, ".-", color="C1")
        ax2.set_ylabel("cumulative charge (C)", color="C1")
    else:
        ax.plot(t, ds["cycle"].values, ".-")
        ax.set_ylabel("cycle")
    bad = ~ok
    if bad.any():
        for tb in t[bad]:
            ax.axvline(tb, color="red", alpha=0.4, lw=1)
    ax.set_xlabel("time (s)")
    what = "electrochemistry" if np.isfinite(ds["potential"].values).any() else "no log: cycle"
    ax.set_title(f"{what} at each frame ({int(bad.sum())} of {n} frames QC-flagged, red)")

    ax = fig.add_subplot(gs[1, 2])
    ax.plot(q["frame"], q["max_nm"] - q["min_nm"], ".-", label="height range")
    ax.set_xlabel("frame")
    ax.set_ylabel("height range per frame (nm)")
    if bad.any():
        ax.plot(q["frame"][bad], (q["max_nm"] - q["min_nm"])[bad], "rx", label="QC flagged")
    ax.legend(loc="best", fontsize=8)
    fig.suptitle(f"ingest: {ds.attrs.get('dataset', '')} ({ds.attrs.get('format', '')}, "
                 f"{n} frames, {ds.attrs['pixel_size_nm'][1]:.3g} nm/px)")

    def _save(tmp: Path) -> None:
        fig.savefig(tmp, dpi=90, format="png", metadata={"Software": None})

    rec = write_file(out, _save, step=step, kind="figure")
    plt.close(fig)
    return rec


def _display_plane(img):
    """Frame minus its least-squares plane, for display only (raw frames are tilted)."""
    import numpy as np

    ny, nx = img.shape
    yy, xx = np.mgrid[0:ny, 0:nx]
    ok = np.isfinite(img)
    a = np.c_[np.ones(ok.sum()), xx[ok], yy[ok]]
    coef, *_ = np.linalg.lstsq(a, img[ok].astype(float), rcond=None)
    return img - (coef[0] + coef[1] * xx + coef[2] * yy)
