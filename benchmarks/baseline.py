"""The straightforward sequential baseline that ecafm is compared against (issue 9).

Per frame: least-squares plane fit on all pixels, per-row median alignment, then scikit-image
``phase_cross_correlation(upsample_factor=100)`` against the previous frame; the shifts are
chained (cumulative sum). This is what a user would write without ecafm. Used by
``benchmarks/run.py``; also runnable on its own::

    python benchmarks/baseline.py CUBE.zarr [--truth TRUTH.zarr]
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np


def level_plane_rows(h: np.ndarray) -> np.ndarray:
    """Plane fit (offset and tilt, all pixels) then subtraction of each row's median."""
    z = h.astype(np.float64)
    ny, nx = z.shape
    yy, xx = np.mgrid[0:ny, 0:nx]
    a = np.column_stack([np.ones(z.size), xx.ravel(), yy.ravel()])
    coef, *_ = np.linalg.lstsq(a, z.ravel(), rcond=None)
    z = z - (a @ coef).reshape(ny, nx)
    return z - np.median(z, axis=1, keepdims=True)


def run_baseline(frames, *, upsample_factor: int = 100) -> dict:
    """Level and chain-register ``frames`` (an iterable of (y, x) arrays), one after the other.

    Returns per-frame level and register times (s), the chained displacement of every frame
    relative to the first in ecafm's sign convention (content displacement, ``(n, 2)``), and
    the peak RSS (MiB) of this process after every frame.
    """
    from skimage.registration import phase_cross_correlation

    t_level, t_reg, rss = [], [], []
    disp = [np.zeros(2)]
    prev = None
    for h in frames:
        t0 = time.perf_counter()
        z = level_plane_rows(np.asarray(h))
        t1 = time.perf_counter()
        if prev is not None:
            shift, _, _ = phase_cross_correlation(prev, z, upsample_factor=upsample_factor)
            # skimage returns the shift that registers z onto prev: the negative of the content
            # displacement of z relative to prev.
            disp.append(disp[-1] - np.asarray(shift, float))
        t2 = time.perf_counter()
        prev = z
        t_level.append(t1 - t0)
        t_reg.append(t2 - t1)
        rss.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return {"level_s": t_level, "register_s": t_reg[1:], "disp": np.asarray(disp), "rss_mib": rss}


def drift_error(disp: np.ndarray, truth, frames: np.ndarray) -> dict:
    """Error (px) of the chained row-mean displacement against the generator's drift per line."""
    ty = truth["drift_dy_px"].values[frames].mean(axis=1)
    tx = truth["drift_dx_px"].values[frames].mean(axis=1)
    true = -np.column_stack([ty - ty[0], tx - tx[0]])
    err = np.hypot(*(disp - true).T)
    d_est = np.diff(disp, axis=0)
    d_true = np.diff(true, axis=0)
    pair = np.hypot(*(d_est - d_true).T)
    return {"last_frame_error_px": float(err[-1]), "interframe_rms_px": float(np.sqrt(np.mean(pair**2)))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cube", help="ingested cube (results/cubes/<dataset>.zarr)")
    ap.add_argument("--truth", help="synthetic truth.zarr, for the drift error")
    ap.add_argument("--json", help="write the summary here")
    args = ap.parse_args()
    from ecafm.store import open_cube

    cube = open_cube(args.cube)
    ok = np.flatnonzero(cube["frame_ok"].values)
    res = run_baseline(cube["height"][int(i)].values for i in ok)
    out = {
        "frames": int(ok.size),
        "level_ms_median": 1e3 * float(np.median(res["level_s"])),
        "register_ms_median": 1e3 * float(np.median(res["register_s"])),
        "per_frame_ms": 1e3 * (sum(res["level_s"]) + sum(res["register_s"])) / ok.size,
        "rss_first_mib": res["rss_mib"][0],
        "rss_last_mib": res["rss_mib"][-1],
    }
    if args.truth:
        out.update(drift_error(res["disp"], open_cube(args.truth), cube["frame"].values[ok]))
    text = json.dumps(out, indent=1)
    if args.json:
        with open(args.json, "w") as fh:
            fh.write(text)
    print(text)


if __name__ == "__main__":
    main()
