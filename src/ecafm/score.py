"""Accuracy of a run against a synthetic generator's truth (``ecafm score``)."""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr


def registration_errors(transforms: xr.Dataset, truth: xr.Dataset) -> dict[str, Any]:
    """Registration accuracy against the generator's drift per line.

    The generator records where each scan line was taken (``drift_dy_px``, ``drift_dx_px``:
    (frame, y)); ecafm's displacement of frame i relative to the reference frame r is then
    ``D_i(y) = -(t_i(y) - t_r(y))``. Reported (px): RMS of the inter-frame (rigid, row-mean)
    shift error between consecutive usable frames (``interframe_rms_px``), RMS of the per-row
    displacement error between consecutive usable frames (``row_rms_px``, the intra-frame drift
    target), the same per-row error accumulated relative to the reference frame
    (``accumulated_row_rms_px``), the error of the last frame (accumulated drift), the failure
    rate, and the number of frames with an error above 1 px that QC did not flag.
    """
    ok = transforms["ok"].values.astype(bool)
    frames = transforms["frame"].values
    ty = truth["drift_dy_px"].values[frames]
    tx = truth["drift_dx_px"].values[frames]
    ref = int(np.flatnonzero(ok)[0])
    true_y = -(ty - ty[ref])
    true_x = -(tx - tx[ref])
    ey = transforms["shift_y"].values - true_y
    ex = transforms["shift_x"].values - true_x
    row_err = np.hypot(ey, ex)
    mean_err = np.hypot(ey.mean(axis=1), ex.mean(axis=1))
    good = np.flatnonzero(ok)
    pair, pair_rows = [], []
    for a, b in zip(good[:-1], good[1:], strict=True):
        d = np.array([ey[b].mean() - ey[a].mean(), ex[b].mean() - ex[a].mean()])
        pair.append(np.hypot(*d))
        pair_rows.append(np.hypot(ey[b] - ey[a], ex[b] - ex[a]))
    pair = np.asarray(pair)
    pair_rows = np.concatenate(pair_rows) if pair_rows else np.array([np.nan])
    unflagged = int(np.sum(ok & (mean_err > 1.0)))
    return {
        "frames": int(ok.size),
        "usable": int(ok.sum()),
        "failure_rate": float(1 - ok.mean()),
        "interframe_rms_px": float(np.sqrt(np.mean(pair**2))) if pair.size else float("nan"),
        "row_rms_px": float(np.sqrt(np.mean(pair_rows**2))),
        "accumulated_row_rms_px": float(np.sqrt(np.mean(row_err[ok] ** 2))),
        "last_frame_error_px": float(mean_err[good[-1]]),
        "max_frame_error_px": float(mean_err[ok].max()),
        "unflagged_failures": unflagged,
    }
