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


# --------------------------------------------------------------------------- segmentation
#: truth class_map codes of the generator (flag_meanings of truth.zarr class_map)
T_SUBSTRATE, T_ACTIVE, T_DORMANT, T_DEAD, T_SEI, T_VOID = range(6)


class TruthGrid:
    """Truth maps (first frame's field of view) sampled on the registered grid.

    The registered grid is the reference frame's observed grid cropped to the common field:
    observed pixel (r, c) of the reference frame shows true position (r + dy(r), c + dx(r))
    (the generator's per-line drift, creep included), so truth maps are sampled there
    (nearest neighbour for labels and classes, linear for heights).
    """

    def __init__(self, truth: xr.Dataset, rect, ref_frame: int):
        from scipy import ndimage as ndi

        self._ndi = ndi
        y0, y1, x0, x1 = (int(v) for v in rect)
        dy = truth["drift_dy_px"].values[ref_frame][y0:y1]
        dx = truth["drift_dx_px"].values[ref_frame][y0:y1]
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float64)
        self.coords = np.stack([yy + dy[:, None], xx + dx[:, None]])

    def __call__(self, a: np.ndarray, *, order: int = 0) -> np.ndarray:
        return self._ndi.map_coordinates(np.asarray(a), self.coords, order=order, mode="nearest")


def _f1(tp: float, fp: float, fn: float) -> float:
    return float(2 * tp / (2 * tp + fp + fn)) if (tp + fp + fn) else float("nan")


def change_scores(segs: list[xr.Dataset], truth: xr.Dataset, grid: TruthGrid, *,
                  truth_change_nm: float = 0.5) -> dict[str, Any]:
    """Pixel F1 of GROW / SHRINK against the true height change between consecutive frames.

    Truth: ``dh = height_true[f] - height_true[f - 1]`` GROW above ``truth_change_nm``, SHRINK
    below minus it (the generator's ``class_min_nm``). A pixel counts as a true positive when
    the predicted and true signs agree; UNCERTAIN pixels and frames without a predecessor are
    left out. Returned: pooled F1 of GROW and SHRINK together and of each.
    """
    ht = truth["height_true"]
    tp = {1: 0, -1: 0}
    fp = {1: 0, -1: 0}
    fn = {1: 0, -1: 0}
    for seg in segs:
        frames = seg["frame"].values
        for j, f in enumerate(frames):
            f = int(f)
            if f == 0 or not bool(seg["usable"].values[j]):
                continue
            dh = grid(ht[f].values - ht[f - 1].values, order=1)
            true = np.where(dh > truth_change_nm, 1, np.where(dh < -truth_change_nm, -1, 0))
            pred = seg["change"].values[j]
            ok = seg["state"].values[j] != 0
            for s in (1, -1):
                tp[s] += int(((pred == s) & (true == s) & ok).sum())
                fp[s] += int(((pred == s) & (true != s) & ok).sum())
                fn[s] += int(((pred != s) & (true == s) & ok).sum())
    return {"change_f1": _f1(tp[1] + tp[-1], fp[1] + fp[-1], fn[1] + fn[-1]),
            "grow_f1": _f1(tp[1], fp[1], fn[1]), "shrink_f1": _f1(tp[-1], fp[-1], fn[-1])}


def class_scores(segs: list[xr.Dataset], truth: xr.Dataset, grid: TruthGrid) -> dict[str, Any]:
    """IoU of deposit, void and inactive residue against the generator's class map.

    deposit = ACTIVE_DEPOSIT | DORMANT_DEPOSIT vs true active | dormant deposit; void = VOID vs
    true void; inactive residue = INACTIVE_RESIDUE vs true dead Li only (SEI residue is NOT dead
    Li: SEI-covered truth pixels count as substrate). Pooled over the frames whose residue rule
    was decidable (``residue_decided``), UNCERTAIN pixels left out.
    """
    from ecafm.kernels import change as kc

    cm = truth["class_map"]
    inter = {"deposit": 0, "void": 0, "residue": 0}
    union = dict(inter)
    for seg in segs:
        for j, f in enumerate(seg["frame"].values):
            if not (bool(seg["residue_decided"].values[j]) and bool(seg["usable"].values[j])):
                continue
            t = grid(cm[int(f)].values)
            p = seg["state"].values[j]
            ok = p != kc.UNCERTAIN
            pairs = {"deposit": (np.isin(p, (kc.ACTIVE_DEPOSIT, kc.DORMANT_DEPOSIT)),
                                 np.isin(t, (T_ACTIVE, T_DORMANT))),
                     "void": (p == kc.VOID, t == T_VOID),
                     "residue": (p == kc.INACTIVE_RESIDUE, t == T_DEAD)}
            for k, (a, b) in pairs.items():
                inter[k] += int((a & b & ok).sum())
                union[k] += int(((a | b) & ok).sum())
    return {f"iou_{k}": (inter[k] / union[k] if union[k] else float("nan")) for k in inter}
