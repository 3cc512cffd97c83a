"""Robust helpers shared by the kernels (pure numpy/scipy)."""

from __future__ import annotations

import numpy as np


def median_inplace(a: np.ndarray) -> float:
    """Median of a 1-D float array without NaN, by one selection; reorders ``a``.

    Same value as ``np.median``, which partitions at two positions (three with its NaN check)
    and is several times slower on the 10^5-10^6 values of a frame.
    """
    n = a.size
    k = n // 2
    a.partition(k)
    hi = a[k]
    return float(hi) if n % 2 else float((a[:k].max() + hi) / 2.0)


def trend_outliers(x: np.ndarray, values: list[np.ndarray] | tuple[np.ndarray, ...], ok: np.ndarray, *,
                   min_dev: float = 0.75, k: float = 5.0) -> np.ndarray:
    """Points that leave a robust straight-line trend, in any of several series sampled at ``x``.

    For each series, a Theil-Sen line (breakdown point 29%) is fitted through the ``ok`` points;
    a point is an outlier when its residual exceeds ``max(min_dev, k * 1.4826 * MAD)`` of the
    residuals. Made for strip-wise registration: drift within a frame is smooth (linear plus
    creep at the start), while a strip whose correlation peak snapped to the border's zero-shift
    peak lands a whole inter-frame shift away from its neighbours, with a strong peak and no
    flag. Fewer than 4 ``ok`` points: nothing is rejected.

    Returns
    -------
    ndarray of bool, shape like ``ok``: True for the outliers (always False where ``ok`` is False).
    """
    from scipy.stats import theilslopes

    x = np.asarray(x, np.float64)
    ok = np.asarray(ok, bool) & np.isfinite(x)
    out = np.zeros(ok.shape, bool)
    if ok.sum() < 4:
        return out
    for v in values:
        v = np.asarray(v, np.float64)
        use = ok & np.isfinite(v)
        if use.sum() < 4:
            continue
        slope, icpt, *_ = theilslopes(v[use], x[use])
        r = v - (icpt + slope * x)
        scale = 1.4826 * float(np.median(np.abs(r[use] - np.median(r[use]))))
        out |= use & (np.abs(r) > max(min_dev, k * scale))
    return out
