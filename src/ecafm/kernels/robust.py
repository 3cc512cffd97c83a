"""Robust helpers shared by the kernels (pure numpy/scipy)."""

from __future__ import annotations

import math

import numpy as np


def median_inplace(a: np.ndarray) -> float:
    """Median of a 1-D float array without NaN; may reorder ``a``.

    Same value as ``np.median``, to the last bit. For 2^15 values or more it brackets the median
    between two order statistics of a strided sample of 4096-16384 values (Floyd-Rivest style), counts
    the values below the bracket and selects the median among the few inside; when the bracket
    misses (a periodic array whose stride hits one phase, heavy ties) it falls back to one
    ``np.partition`` of the whole array. Written here because ``np.median`` partitions at two
    positions (three with its NaN check): on a 512^2 frame 3-5 ms against ~1 ms this way.
    """
    n = a.size
    if n >= _BRACKET_MIN:
        med = _bracketed_median(a)
        if med is not None:
            return med
    k = n // 2
    a.partition(k)
    hi = a[k]
    return float(hi) if n % 2 else float((a[:k].max() + hi) / 2.0)


_BRACKET_MIN = 1 << 15
_BRACKET_SAMPLE = 4096
_BRACKET_Z = 5.0  # half-width of the bracket in binomial standard deviations of the sample rank


def _bracketed_median(a: np.ndarray) -> float | None:
    """The median of ``a`` from a sample bracket, or None when the bracket does not hold it."""
    n = a.size
    sample = min(max(n // 64, _BRACKET_SAMPLE), 4 * _BRACKET_SAMPLE)  # 1M values: 16384 (4.3 -> 3.2 ms)
    s = np.sort(a[:: max(n // sample, 1)])
    m = s.size
    k_hi = n // 2
    k_lo = k_hi if n % 2 else k_hi - 1
    rank = (k_hi + 0.5) * m / n
    half = _BRACKET_Z * 0.5 * math.sqrt(m) + 1.0
    lo = s[max(int(rank - half), 0)]
    hi = s[min(int(rank + half), m - 1)]
    below = int(np.count_nonzero(a < lo))
    if below > k_lo:
        return None
    inside = a >= lo
    inside &= a <= hi
    sel = a[inside]
    if below + sel.size <= k_hi:
        return None
    i, j = k_lo - below, k_hi - below
    sel.partition([i, j] if i != j else i)
    return float(sel[j]) if i == j else float((sel[i] + sel[j]) / 2.0)


def tukey(m: int, alpha: float) -> np.ndarray:
    """Symmetric Tukey (tapered cosine) window of ``m`` samples, ``scipy.signal.windows.tukey``'s
    values to the last bit (same formula and operations).

    Written here because importing ``scipy.signal`` costs 1.7 s (it parses docstrings at import),
    paid by every registration job for this one function.
    """
    if int(m) != m or m < 0:
        raise ValueError(f"window length must be a non-negative integer, got {m!r}")
    if m <= 1 or alpha <= 0:
        return np.ones(m, dtype=np.float64)
    if alpha >= 1.0:
        raise ValueError("alpha >= 1 (a Hann window) is not used here")
    n = np.arange(0, m, dtype=np.float64)
    width = int(math.floor(alpha * (m - 1) / 2.0))
    n1, n2, n3 = n[0:width + 1], n[width + 1:m - width - 1], n[m - width - 1:]
    w1 = 0.5 * (1 + np.cos(np.pi * (-1 + 2.0 * n1 / alpha / (m - 1))))
    w3 = 0.5 * (1 + np.cos(np.pi * (-2.0 / alpha + 1 + 2.0 * n3 / alpha / (m - 1))))
    return np.concatenate((w1, np.ones(n2.shape), w3))


def theil_sen(y: np.ndarray, x: np.ndarray) -> tuple[float, float]:
    """Theil-Sen line of ``y`` against ``x``: (slope, intercept), the values of
    ``scipy.stats.theilslopes(y, x)`` (median of the pairwise slopes; intercept
    ``median(y) - slope * median(x)``) without its confidence interval.

    Written here because importing ``scipy.stats`` costs 1.4 s, paid by every registration job
    for this one call per frame pair.
    """
    y = np.array(y, dtype=float, copy=True).ravel()
    x = np.array(x, dtype=float, copy=True).ravel()
    if len(x) != len(y) or len(x) < 2:
        raise ValueError(f"x and y must have the same length >= 2, got {len(x)} and {len(y)}")
    deltax = x[:, np.newaxis] - x
    deltay = y[:, np.newaxis] - y
    slopes = deltay[deltax > 0] / deltax[deltax > 0]
    if not slopes.size:  # all x identical: no slope (scipy warns and returns NaN)
        return math.nan, math.nan
    slopes.sort()
    medslope = np.median(slopes)
    return float(medslope), float(np.median(y) - medslope * np.median(x))


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
        slope, icpt = theil_sen(v[use], x[use])
        r = v - (icpt + slope * x)
        scale = 1.4826 * float(np.median(np.abs(r[use] - np.median(r[use]))))
        out |= use & (np.abs(r) > max(min_dev, k * scale))
    return out
