"""Registration kernels: subpixel phase correlation, QC, intra-frame (row) drift, resampling.

Sign convention (used by every function here)
----------------------------------------------
A shift ``(dy, dx)`` is the displacement of the CONTENT of ``moving`` relative to
``reference``, in pixels::

    moving(y, x) ~= reference(y - dy, x - dx)        i.e. moving ~= ndi.shift(reference, (dy, dx))

A feature at ``(y, x)`` in the reference appears at ``(y + dy, x + dx)`` in the moving frame.
This is the NEGATIVE of what ``skimage.registration.phase_cross_correlation(reference, moving)``
returns (skimage returns the shift that registers ``moving`` onto ``reference``). To register
``moving`` onto ``reference`` use ``apply_shift(moving, -dy, -dx)``. Displacements of a chain add:
``compose_shifts`` is a cumulative sum. For drift within a frame, ``dy[y], dx[y]`` is the
displacement of row ``y`` of ``moving`` (rows are the slow scan axis, i.e. time).

Frames should be leveled first (tilt and line offsets dominate the correlation otherwise).
Frames are apodized (Tukey window) before the FFT so that the non-periodic frame border does not
make its own correlation peak at zero shift.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Literal

import numpy as np
import scipy.fft as sfft
from scipy import ndimage as ndi

from ecafm.kernels.robust import median_inplace, theil_sen, trend_outliers, tukey

__all__ = [
    "RowDrift",
    "Shift",
    "apply_row_drift",
    "apply_shift",
    "check_shift",
    "compose_shifts",
    "estimate_row_drift",
    "robust_row_fit",
    "refine_shift",
    "shift_precision",
    "estimate_shift",
    "estimate_shift_qc",
    "gradient_magnitude",
    "loop_closure_error",
]

logger = logging.getLogger(__name__)

_PEAK_EXCLUSION_PX = 3  # half-size of the neighbourhood of the peak ignored for peak_ratio
_TUKEY_ALPHA = 0.25
_ERROR_FACTOR = 2.0  # phase correlation vs the Cramer-Rao bound, calibrated on synthetic texture
_TAPER_SIGMA = 2.0  # default taper_sigma of estimate_shift (px)


@dataclass(frozen=True)
class Shift:
    """A translation estimate of ``moving`` relative to ``reference``.

    Attributes
    ----------
    dy, dx : float
        Displacement (px) of the content of ``moving`` relative to ``reference``:
        ``moving(y, x) ~= reference(y - dy, x - dx)``.
    peak_ratio : float
        Correlation peak height over the highest value outside a (7 x 7) neighbourhood of the
        peak. About 1 for unrelated frames.
    peak : float
        Phase-correlation peak height (1 for identical frames, 0 for unrelated ones).
    error : float
        Uncertainty estimate (px, 1 sigma, worse axis): from the covariance of the robust
        least-squares refinement (its residual variance includes unmodelled change), or, when
        ``n_refine=0``, twice ``crlb`` combined with the subpixel step.
    crlb : float
        Achievable bound (px, 1 sigma, worse axis) from the frame noise and texture gradients
        on the weighted region: ``sqrt((s_ref**2 + s_mov**2) / sum((w * grad)**2))``.
    ok : bool
        False when any QC flag is set.
    flags : tuple of str
        QC flags: ``"weak_peak"``, ``"disagreement"``, ``"jump"``, ``"not_finite"``.
    """

    dy: float
    dx: float
    peak_ratio: float
    peak: float
    error: float
    crlb: float
    ok: bool
    flags: tuple[str, ...] = field(default_factory=tuple)

    @property
    def vector(self) -> np.ndarray:
        """``np.array([dy, dx])``."""
        return np.array([self.dy, self.dx])


@dataclass(frozen=True)
class RowDrift:
    """Intra-frame drift of ``moving`` relative to ``reference``, per row.

    Attributes
    ----------
    dy, dx : ndarray of float64, shape (n_rows,)
        Displacement of every row of ``moving`` (same sign convention as :class:`Shift`).
    strip_rows : ndarray of float64, shape (n_strips,)
        Centre row (in ``moving``) of every strip.
    strips : tuple of Shift, length n_strips
        Per-strip estimates (``dy``, ``dx`` include the global integer pre-shift).
    strip_ok : ndarray of bool, shape (n_strips,)
        Strips used for the interpolation.
    """

    dy: np.ndarray
    dx: np.ndarray
    strip_rows: np.ndarray
    strips: tuple[Shift, ...]
    strip_ok: np.ndarray

    @property
    def ok(self) -> bool:
        """True when at least two strips passed QC."""
        return int(self.strip_ok.sum()) >= 2

    def strip_scatter(self) -> float:
        """Robust scatter (px) of the used strips' estimates about the per-row model.

        1.4826 x the median absolute residual, the larger of the two axes; NaN without used
        strips. A strip's own error estimate only knows noise and texture: strips biased by
        change (a block of rows over growing deposits) each claim a few thousandths of a pixel
        yet scatter by tenths, which this sees.
        """
        k = np.flatnonzero(self.strip_ok)
        if k.size == 0:
            return float("nan")
        at = np.clip(np.round(self.strip_rows[k]).astype(int), 0, self.dy.size - 1)
        ry = np.array([self.strips[i].dy for i in k]) - self.dy[at]
        rx = np.array([self.strips[i].dx for i in k]) - self.dx[at]
        return 1.4826 * float(max(np.median(np.abs(ry)), np.median(np.abs(rx))))


# --------------------------------------------------------------------------- validation


def _check_image(a: np.ndarray, name: str, *, min_size: int = 8) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (y, x), got shape {a.shape}")
    if a.dtype.kind not in "fiu":
        raise ValueError(f"{name} must have a real numeric dtype, got {a.dtype}")
    if min(a.shape) < min_size:
        raise ValueError(f"{name} must be at least {min_size} x {min_size} px, got {a.shape}")
    return a


def _check_pair(reference: np.ndarray, moving: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    reference = _check_image(reference, "reference")
    moving = _check_image(moving, "moving")
    if reference.shape != moving.shape:
        raise ValueError(
            f"reference and moving must have the same shape, got {reference.shape} "
            f"and {moving.shape}"
        )
    return reference, moving


def _check_weights(weights: np.ndarray | None, shape: tuple[int, ...], name: str):
    if weights is None:
        return None
    w = np.asarray(weights)
    if w.shape != shape:
        raise ValueError(f"{name} shape {w.shape} does not match the frame shape {shape}")
    if w.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be boolean or real, got dtype {w.dtype}")
    w = w.astype(np.float64)
    if not np.isfinite(w).all() or (w < 0).any():
        raise ValueError(f"{name} must be finite and >= 0")
    if not (w > 0).any():
        raise ValueError(f"{name} is zero everywhere: no stable region to register on")
    return w


# --------------------------------------------------------------------------- core


@lru_cache(maxsize=16)
def _window(shape: tuple[int, int], apodize: bool, dtype=np.float64) -> np.ndarray:
    """Apodization window (cached: never modify the returned array)."""
    if not apodize:
        return np.ones(shape, dtype=dtype)
    return np.outer(tukey(shape[0], _TUKEY_ALPHA), tukey(shape[1], _TUKEY_ALPHA)).astype(dtype)


def _tukey_at(t: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Tukey window over the continuous interval [lo, hi], evaluated at positions t."""
    length = max(hi - lo, 1e-9)
    u = (t - lo) / length
    a = _TUKEY_ALPHA
    w = np.ones_like(u)
    left = u < a / 2
    right = u > 1 - a / 2
    w[left] = 0.5 * (1 - np.cos(2 * np.pi * u[left] / a))
    w[right] = 0.5 * (1 - np.cos(2 * np.pi * (1 - u[right]) / a))
    w[(u < 0) | (u > 1)] = 0.0
    return w


def _overlap_windows(shape: tuple[int, int], dy: float, dx: float):
    """Windows on the common field for a shift (dy, dx): (reference window, moving window).

    The moving window is the reference window displaced with the content, so that the windowed
    moving frame is exactly the displaced windowed reference (no window mismatch).
    """
    out = []
    for n, d in zip(shape, (dy, dx), strict=True):
        lo, hi = max(0.0, -d), min(n - 1.0, n - 1.0 - d)
        t = np.arange(n, dtype=np.float64)
        out.append((_tukey_at(t, lo, hi), _tukey_at(t - d, lo, hi)))
    (ry, my), (rx, mx) = out
    return np.outer(ry, rx), np.outer(my, mx)


def _soft_mask(w: np.ndarray, sigma: float) -> np.ndarray:
    """Taper stable-region weights to 0 at (and inside) the edges of the excluded regions."""
    if sigma <= 0:
        return w
    s = ndi.gaussian_filter(w, sigma, mode="nearest")
    return np.clip(2.0 * s - 1.0, 0.0, None) * w


def _prepare(img: np.ndarray, weight: np.ndarray, dtype) -> tuple[np.ndarray, np.ndarray]:
    """Weighted images with their weighted plane removed (NaN -> weight 0); (images, weights).

    ``img`` and ``weight`` are ``(n, m)`` or stacks ``(k, n, m)``; one plane per image.
    """
    finite = np.isfinite(img)
    if not finite.all():
        weight = np.where(finite, weight, 0.0)
        img = np.where(finite, img, 0.0)
    # weighted plane (offset and tilt) removal from moments: every sum over pixels of
    # weight * u**a * v**b (* img) is a row or column sum followed by a dot product
    n, m = img.shape[-2:]
    u = np.linspace(-1.0, 1.0, m, dtype=weight.dtype)
    v = np.linspace(-1.0, 1.0, n, dtype=weight.dtype)
    cw, rw = weight.sum(axis=-2), weight.sum(axis=-1)
    sw = cw.sum(axis=-1)
    if not (sw > 0).all():
        raise ValueError("no finite pixel with a positive weight")
    wz = weight * img
    cz, rz = wz.sum(axis=-2), wz.sum(axis=-1)
    cu, rv, suv = cw @ u, rw @ v, (weight @ u) @ v
    amat = np.stack(
        [
            np.stack([sw, cu, rv], axis=-1),
            np.stack([cu, cw @ (u * u), suv], axis=-1),
            np.stack([rv, suv, rw @ (v * v)], axis=-1),
        ],
        axis=-2,
    )
    rhs = np.stack([cz.sum(axis=-1), cz @ u, rz @ v], axis=-1)
    try:
        c = np.linalg.solve(amat, rhs[..., None])[..., 0]
    except np.linalg.LinAlgError:
        c = np.zeros(rhs.shape)
        for i in np.ndindex(rhs.shape[:-1]):
            try:
                c[i] = np.linalg.solve(amat[i], rhs[i])
            except np.linalg.LinAlgError:
                c[i] = (rhs[i][0] / sw[i], 0.0, 0.0)
    # (img - plane) * weight = wz - (c0 + c2 v) * weight - c1 u * weight
    out = wz
    out -= (c[..., 0, None] + c[..., 2, None] * v)[..., :, None] * weight
    out -= weight * (c[..., 1, None] * u)[..., None, :]
    return out.astype(dtype, copy=False), weight


def _hermitian_weights(m: int, dtype) -> np.ndarray:
    """Weights of the rfft half spectrum columns so that sums cover the full spectrum."""
    mh = m // 2 + 1
    wk = np.full(mh, 2.0, dtype=dtype)
    wk[0] = 1.0
    if m % 2 == 0:
        wk[-1] = 1.0
    return wk


def _upsampled_corr(rw: np.ndarray, ys: np.ndarray, xs: np.ndarray, n: int, m: int) -> np.ndarray:
    """Real inverse DFT of the half spectrum ``rw`` (Hermitian weights applied) at points."""
    ky = sfft.fftfreq(n, 1.0 / n)
    kx = np.arange(rw.shape[1])
    cdt = rw.dtype
    ex = np.exp((2j * np.pi / m) * np.outer(kx, xs)).astype(cdt)
    ey = np.exp((2j * np.pi / n) * np.outer(ys, ky)).astype(cdt)
    return (ey @ (rw @ ex)).real / (n * m)


def _stages(upsample_factor: int) -> list[int]:
    if upsample_factor <= 1:
        return []
    out = []
    f = 10
    while f < upsample_factor:
        out.append(f)
        f *= 10
    out.append(int(upsample_factor))
    return out


def _phase_correlate(a: np.ndarray, b: np.ndarray, wa: np.ndarray, wb: np.ndarray, **kw) -> Shift:
    """Phase correlation of one pair of prepared frames (keywords of :func:`_phase_correlate_many`)."""
    return _phase_correlate_many(a[None], b[None], wa[None], wb[None], **kw)[0]


def _phase_correlate_many(
    a: np.ndarray,
    b: np.ndarray,
    wa: np.ndarray,
    wb: np.ndarray,
    *,
    upsample_factor: int,
    max_shift: float | None,
    center: tuple[float, float] = (0.0, 0.0),
    parabolic: bool = False,
) -> list[Shift]:
    """Phase correlation of a stack of pairs of prepared frames ``(k, n, m)``, one FFT call.

    Every quantity is computed per pair, exactly as for a single pair; stacking only saves
    the per-call overhead of many small frames (the strips of :func:`estimate_row_drift`).
    """
    _, n, m = a.shape
    fa = sfft.rfft2(a, axes=(-2, -1), workers=1)
    fb = sfft.rfft2(b, axes=(-2, -1), workers=1)
    x = fb * fa.conj()
    mag = np.abs(x)
    eps = mag.max(axis=(-2, -1), keepdims=True) * 1e-12 + np.finfo(mag.dtype).tiny
    r = x / (mag + eps)
    # Whitened cross-power, with the bins where either frame is below its noise floor
    # suppressed: pure phase correlation gives the (many) noise-only bins of smooth AFM
    # texture the same weight as the textured ones.
    powa = fa.real**2 + fa.imag**2
    powb = fb.real**2 + fb.imag**2
    pa = _noise_power(powa, n, m)
    pb = _noise_power(powb, n, m)
    wspec = _snr_weight(powa, pa) * _snr_weight(powb, pb)
    r *= wspec
    norm = (wspec * _hermitian_weights(m, wspec.dtype)[None, :]).sum(axis=(-2, -1)) / (n * m)
    r /= np.maximum(norm, np.finfo(np.float32).tiny)[:, None, None]
    c = sfft.irfft2(r, s=(n, m), axes=(-2, -1), workers=1)
    if max_shift is not None:
        iy = (np.arange(n) - center[0] + n / 2) % n - n / 2
        ix = (np.arange(m) - center[1] + m / 2) % m - m / 2
        allowed = (np.abs(iy)[:, None] <= max_shift) & (np.abs(ix)[None, :] <= max_shift)
        c = np.where(allowed, c, -np.inf)
    crlb = _crlb(powa, wa, wb, n, m, pa, pb)
    quant = (1.0 / max(upsample_factor, 1)) / math.sqrt(12.0)
    return [
        _peak(c[i], r[i], n, m, upsample_factor=upsample_factor, parabolic=parabolic,
              crlb=float(crlb[i]), quant=quant)
        for i in range(a.shape[0])
    ]


def _peak(c: np.ndarray, r: np.ndarray, n: int, m: int, *, upsample_factor: int, parabolic: bool,
          crlb: float, quant: float) -> Shift:
    """Shift from one correlation surface ``c`` (modified) and its half spectrum ``r``."""
    flat = int(np.argmax(c))
    py, px = divmod(flat, m)
    c_int = float(c[py, px])
    c_rows = (float(c[(py - 1) % n, px]), float(c[(py + 1) % n, px]))
    c_cols = (float(c[py, (px - 1) % m]), float(c[py, (px + 1) % m]))
    # next-highest peak outside the neighbourhood of the main one (wrapped indices)
    k = _PEAK_EXCLUSION_PX
    rows = (py + np.arange(-k, k + 1)) % n
    cols = (px + np.arange(-k, k + 1)) % m
    c[np.ix_(rows, cols)] = -np.inf
    second = float(c.max())
    py = py - n if py > n // 2 else py
    px = px - m if px > m // 2 else px
    dy, dx, peak = float(py), float(px), c_int
    if parabolic:
        # 3-point parabola per axis (enough to seed the least-squares refinement)
        ym, yp = c_rows
        xm, xp = c_cols
        den_y, den_x = ym - 2 * c_int + yp, xm - 2 * c_int + xp
        if np.isfinite(den_y) and den_y < 0:
            dy += float(np.clip(0.5 * (ym - yp) / den_y, -0.5, 0.5))
        if np.isfinite(den_x) and den_x < 0:
            dx += float(np.clip(0.5 * (xm - xp) / den_x, -0.5, 0.5))
    stages = [] if parabolic else _stages(upsample_factor)
    if stages:
        rw = r * _hermitian_weights(m, r.real.dtype)[None, :]
        step_prev = 1.0
        for f in stages:
            step = 1.0 / f
            half = math.ceil(0.75 * step_prev / step)
            offs = np.arange(-half, half + 1) * step
            cu = _upsampled_corr(rw, dy + offs, dx + offs, n, m)
            iy, ix = np.unravel_index(int(np.argmax(cu)), cu.shape)
            dy, dx, peak = dy + offs[iy], dx + offs[ix], float(cu[iy, ix])
            step_prev = step
    peak_ratio = peak / second if second > 0 else math.inf
    error = math.hypot(_ERROR_FACTOR * crlb, quant)
    return Shift(
        dy=float(dy),
        dx=float(dx),
        peak_ratio=float(peak_ratio),
        peak=float(peak),
        error=float(error),
        crlb=float(crlb),
        ok=True,
    )


def _noise_power(power: np.ndarray, n: int, m: int) -> np.ndarray:
    """White-noise power per bin of each spectrum of a stack ``(k, n, m // 2 + 1)`` of powers,
    from the median of its highest-frequency corner; shape (k,)."""
    ky = np.abs(sfft.fftfreq(n))
    sel_y = ky >= 0.375  # |k| >= 0.75 Nyquist
    sel_x = np.arange(power.shape[-1]) >= 0.375 * m
    if not sel_y.any() or not sel_x.any():
        return np.zeros(power.shape[0])
    p = power[:, sel_y][:, :, sel_x].reshape(power.shape[0], -1)
    return np.array([median_inplace(row) for row in p], dtype=np.float64) / math.log(2.0)


def _snr_weight(power: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """Per-bin weight s / (1 + s), s = local (5 x 5 bins) signal-to-noise power ratio."""
    p = ndi.uniform_filter(power, size=(1, 5, 5), mode=("nearest", "wrap", "mirror"))
    noise = np.maximum(np.maximum(noise, p.max(axis=(-2, -1)).astype(np.float64) * 1e-12),
                       np.finfo(np.float32).tiny)
    snr = p / noise.astype(p.dtype)[:, None, None]
    snr -= 1.0
    np.maximum(snr, 0.0, out=snr)
    return snr / (1.0 + snr)


def _crlb(powa, wa, wb, n: int, m: int, pa: np.ndarray, pb: np.ndarray) -> np.ndarray:
    """Cramer-Rao-type bound (px, worse axis) from noise floors and signal gradient energy."""
    s2a = pa / np.maximum((wa.astype(np.float64) ** 2).sum(axis=(-2, -1)), 1e-300)  # noise var.
    s2b = pb / np.maximum((wb.astype(np.float64) ** 2).sum(axis=(-2, -1)), 1e-300)
    sig = np.maximum(powa - pa[:, None, None], 0.0) * _hermitian_weights(m, np.float64)[None, :]
    ky = 2 * np.pi * sfft.fftfreq(n)
    kx = 2 * np.pi * np.arange(powa.shape[-1]) / m
    gy = (sig.sum(axis=-1) @ (ky**2)) / (n * m)
    gx = (sig.sum(axis=-2) @ (kx**2)) / (n * m)
    # least squares on w * (b - shifted a): var(d) = (s_a**2 + s_b**2) / sum((w * grad a)**2)
    g = np.minimum(gy, gx)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.sqrt((s2a + s2b) / g)
    return np.where(g > 0, out, math.inf)


def _keys(t: float) -> np.ndarray:
    """Cubic-convolution (Keys, a = -0.5) weights of the samples at floor - 1 .. floor + 2."""
    a = -0.5
    out = []
    for x in (t + 1.0, t, t - 1.0, t - 2.0):
        x = abs(x)
        if x <= 1:
            out.append((a + 2) * x**3 - (a + 3) * x**2 + 1)
        elif x < 2:
            out.append(a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a)
        else:
            out.append(0.0)
    return np.array(out)


def _shift_axis(img: np.ndarray, d: float, axis: int) -> tuple[np.ndarray, int, int]:
    """``out[i] = img(i - d)`` along ``axis`` for the valid range i in [i0, i1)."""
    n = img.shape[axis]
    s = -d
    fs = math.floor(s)
    w = _keys(s - fs)
    i0, i1 = max(0, 1 - fs), min(n, n - 2 - fs)
    if i1 - i0 < 4:
        return np.empty((0, 0)), 0, 0
    out = None
    for j in range(4):
        lo = i0 + fs + j - 1
        sl = [slice(None), slice(None)]
        sl[axis] = slice(lo, lo + (i1 - i0))
        term = float(w[j]) * img[tuple(sl)]
        out = term if out is None else out.__iadd__(term)
    return out, i0, i1


def _central_differences(t: np.ndarray, gy: np.ndarray, gx: np.ndarray) -> None:
    """``gy, gx = np.gradient(t)`` written into ``gy`` and ``gx`` (same values)."""
    np.subtract(t[2:], t[:-2], out=gy[1:-1])
    np.divide(gy[1:-1], 2.0, out=gy[1:-1])
    np.subtract(t[1], t[0], out=gy[0])
    np.subtract(t[-1], t[-2], out=gy[-1])
    np.subtract(t[:, 2:], t[:, :-2], out=gx[:, 1:-1])
    np.divide(gx[:, 1:-1], 2.0, out=gx[:, 1:-1])
    np.subtract(t[:, 1], t[:, 0], out=gx[:, 0])
    np.subtract(t[:, -1], t[:, -2], out=gx[:, -1])


def _refine_ls(ref, mov, wr, wm, dy, dx, *, n_iter: int, tol: float = 1e-3):
    """Robust Gauss-Newton refinement of (dy, dx) on the common field.

    Minimizes ``sum w * (mov(y, x) - ref(y - dy, x - dx) - plane(y, x))**2`` over dy, dx and
    a plane (offset and tilt), with Tukey-biweight weights. Returns (dy, dx, 1-sigma error)
    or None.
    """
    may_nan = not (np.isfinite(ref).all() and np.isfinite(mov).all())
    if wr is not None:
        holes = wr <= 0
        if holes.any():
            ref = np.where(holes, np.nan, ref).astype(ref.dtype, copy=False)
            may_nan = True
    err = math.inf
    last = None
    plane = (0.0, 0.0, 0.0)
    design = None
    for it in range(n_iter):
        t, y0, y1 = _shift_axis(ref, dy, 0)
        if t.size == 0:
            return None
        t, x0, x1 = _shift_axis(t, dx, 1)
        if t.size == 0:
            return None
        ny, nx = t.shape
        if design is None or design.shape[1:] != (ny, nx):
            design = np.empty((3, ny, nx), dtype=t.dtype)  # gy, gx, residual e
            wdes = np.empty_like(design)
            flat, wflat = design.reshape(3, -1), wdes.reshape(3, -1)
            u = np.linspace(-1, 1, nx, dtype=t.dtype)
            v = np.linspace(-1, 1, ny, dtype=t.dtype)
            u64, v64 = u.astype(np.float64), v.astype(np.float64)
            uu64, vv64 = u64 * u64, v64 * v64
        gy, gx, e = design
        # Jacobian from central differences of the resampled reference (the derivative of
        # the interpolant itself correlates with the interpolated noise and locks the
        # estimate towards integer shifts)
        _central_differences(t, gy, gx)
        np.subtract(mov[y0:y1, x0:x1], t, out=e)
        if wm is not None:
            w = wm[y0:y1, x0:x1].astype(e.dtype)
        else:
            w = np.ones((ny, nx), dtype=e.dtype)
        if may_nan:
            good = np.isfinite(e)
            good &= np.isfinite(gy)
            good &= np.isfinite(gx)
            if not good.all():
                w *= good
                # zero the non-finite entries in place (the finite ones there have weight 0);
                # 4x cheaper than a boolean-mask assignment over the three channels
                np.copyto(design, 0.0, where=~np.isfinite(design))
        # robust weights from the residual of the previous fit (subsampled median / MAD)
        r = e - (plane[0] + plane[2] * v64).astype(e.dtype)[:, None]
        r -= (plane[1] * u64).astype(e.dtype)[None, :]
        sub = r[::3, ::3][w[::3, ::3] > 0]
        if sub.size < 16:
            return None
        center = median_inplace(sub)
        sub -= center
        np.abs(sub, out=sub)
        sigma = 1.4826 * median_inplace(sub)
        if sigma > 0:
            q = r
            q -= center
            q *= 1.0 / (4.685 * sigma)
            np.multiply(q, q, out=q)
            np.subtract(1.0, q, out=q)
            np.clip(q, 0.0, None, out=q)
            np.multiply(q, q, out=q)
            w *= q
        # normal equations of e + gy ddy + gx ddx - (b0 + b1 u + b2 v) = 0, from sums:
        # products of gy, gx, e by dot products, their moments in u and v from row and
        # column sums
        cw, rw_ = w.sum(axis=0, dtype=np.float64), w.sum(axis=1, dtype=np.float64)
        sw = float(cw.sum())
        if sw < 16:
            return None
        np.multiply(design, w, out=wdes)
        g00, g01, g02 = (float(np.dot(wflat[0], flat[j])) for j in range(3))
        g11, g12 = float(np.dot(wflat[1], flat[1])), float(np.dot(wflat[1], flat[2]))
        ewe = float(np.dot(wflat[2], flat[2]))
        cs = wdes.sum(axis=1, dtype=np.float64)  # (3, nx)
        rs = wdes.sum(axis=2, dtype=np.float64)  # (3, ny)
        (sgy, sgx, se), (sgyu, sgxu, seu), (sgyv, sgxv, sev) = cs.sum(axis=1), cs @ u64, rs @ v64
        su, sv = float(cw @ u64), float(rw_ @ v64)
        suu, svv = float(cw @ uu64), float(rw_ @ vv64)
        suv = float(v @ w @ u)
        amat = np.array(
            [
                [g00, g01, -sgy, -sgyu, -sgyv],
                [g01, g11, -sgx, -sgxu, -sgxv],
                [-sgy, -sgx, sw, su, sv],
                [-sgyu, -sgxu, su, suu, suv],
                [-sgyv, -sgxv, sv, suv, svv],
            ]
        )
        jte = np.array([g02, g12, -se, -seu, -sev])
        try:
            step = np.linalg.solve(amat, -jte)
        except np.linalg.LinAlgError:
            return None
        ssr = float(ewe + 2 * step @ jte + step @ amat @ step)
        last = (amat, max(ssr, 0.0) / max(sw - 5.0, 1.0))  # the error needs only the last step's
        plane = (float(step[2]), float(step[3]), float(step[4]))
        ddy, ddx = min(max(float(step[0]), -0.5), 0.5), min(max(float(step[1]), -0.5), 0.5)
        dy, dx = dy + ddy, dx + ddx
        if it > 0 and abs(ddy) < tol and abs(ddx) < tol:
            break
    if last is not None:
        try:
            cov = np.linalg.inv(last[0])
        except np.linalg.LinAlgError:
            return None
        err = math.sqrt(max(cov[0, 0], cov[1, 1]) * last[1])
    return dy, dx, err


def estimate_shift(
    reference: np.ndarray,
    moving: np.ndarray,
    *,
    weights: np.ndarray | None = None,
    moving_weights: np.ndarray | None = None,
    upsample_factor: int = 100,
    apodize: bool = True,
    max_shift: float | None = None,
    min_peak_ratio: float = 2.0,
    taper_sigma: float = 2.0,
    n_refine: int = 10,
) -> Shift:
    """Subpixel translation of ``moving`` relative to ``reference`` by phase correlation.

    Stage 1 (global search, QC): both frames have their weighted plane removed and are
    multiplied by a Tukey window (and by the stable-region weights, tapered to 0 at the edges
    of excluded regions); the cross-power spectrum is whitened, bins below either frame's
    noise floor are down-weighted, and the result is inverted with real FFTs. ``peak_ratio``
    comes from this surface. Stage 2 (accuracy): robust Gauss-Newton least squares on the
    common field of the two frames (reference resampled by cubic convolution, a plane fitted
    for offset and residual tilt, Tukey-biweight weights so that changed areas drop out),
    which reaches the noise-limited precision and gives ``error``. With ``n_refine=0`` the
    stage-1 peak is refined instead by matrix-multiply DFT upsampling in two stages
    (1/10 px, then 1/``upsample_factor`` px).

    Parameters
    ----------
    reference, moving : ndarray, shape (y, x)
        Leveled heights, same shape, real dtype. float32 input is processed in float32. NaN
        pixels get zero weight.
    weights : ndarray, shape (y, x), optional
        Stable-region weights (bool or >= 0) for ``reference``; pixels with weight 0 (changed
        area) are ignored. Default: all pixels.
    moving_weights : ndarray, shape (y, x), optional
        Weights for ``moving``; default: ``weights``.
    upsample_factor : int
        1 gives integer shifts (no refinement). Otherwise, with ``n_refine=0`` the subpixel
        resolution of the DFT upsampling is ``1 / upsample_factor`` px; with ``n_refine > 0``
        a 3-point parabola seeds the least-squares refinement, whose output is continuous.
    apodize : bool
        Apply the Tukey window (recommended: without it the frame border correlates at zero
        shift).
    max_shift : float, optional
        Only consider shifts with ``|dy|, |dx| <= max_shift`` px.
    min_peak_ratio : float
        ``ok`` is False (flag ``"weak_peak"``) when ``peak_ratio`` is below this.
    taper_sigma : float
        Scale (px) over which the weights are tapered to 0 at the edges of excluded regions
        (so that mask edges and the steps of changed areas do not correlate); 0 disables it.
    n_refine : int
        Maximum Gauss-Newton iterations of the final robust least-squares refinement
        (frames compared on their common field, reference resampled with cubic convolution,
        offset fitted, Tukey-biweight weights against changed areas); 0 keeps the
        phase-correlation estimate.

    Returns
    -------
    Shift
        ``dy, dx`` with ``moving(y, x) ~= reference(y - dy, x - dx)`` (the negative of
        skimage's ``phase_cross_correlation`` output), plus ``peak_ratio``, ``peak``,
        ``error``, ``crlb``, ``ok`` and ``flags``.

    Raises
    ------
    ValueError
        Bad shape, dtype, weights or options.
    """
    reference, moving = _check_pair(reference, moving)
    _check_search(upsample_factor, max_shift)
    wr, wm = _soft_weights(weights, moving_weights, reference.shape, taper_sigma)
    return _shift_core(
        reference,
        moving,
        wr,
        wm,
        upsample_factor=int(upsample_factor),
        apodize=bool(apodize),
        max_shift=max_shift,
        min_peak_ratio=min_peak_ratio,
        n_refine=n_refine,
    )


def _check_search(upsample_factor, max_shift) -> None:
    if int(upsample_factor) != upsample_factor or upsample_factor < 1:
        raise ValueError(f"upsample_factor must be an integer >= 1, got {upsample_factor!r}")
    if max_shift is not None and not max_shift >= 0:
        raise ValueError(f"max_shift must be >= 0, got {max_shift!r}")


def _soft_weights(weights, moving_weights, shape, taper_sigma: float, *, tapered: bool = False):
    """Validated stable-region weights tapered at the excluded regions: (reference, moving).

    ``tapered``: the weights come from :func:`taper_weights` already and are only validated.
    """
    wr = _check_weights(weights, shape, "weights")
    wm = _check_weights(moving_weights, shape, "moving_weights")
    if tapered:
        return wr, wr if wm is None else wm
    if wm is None:
        wm = wr
    wr = None if wr is None else _soft_mask(wr, taper_sigma)
    wm = wr if moving_weights is None else _soft_mask(wm, taper_sigma)
    return wr, wm


def taper_weights(weights: np.ndarray) -> np.ndarray:
    """Stable-region weights tapered to 0 at the excluded regions, as :func:`estimate_shift_qc`
    and :func:`estimate_row_drift` taper them (Gaussian of 2 px).

    A caller that passes the same weights to both gives them tapered once, with
    ``tapered=True``: the taper is a Gaussian filter of the whole frame (a few ms at 512^2).
    """
    w = _check_weights(weights, np.shape(weights), "weights")
    if w is None:
        raise ValueError("weights must be an array, got None")
    return _soft_mask(w, _TAPER_SIGMA)


def _shift_core(
    reference: np.ndarray,
    moving: np.ndarray,
    wr: np.ndarray | None,
    wm: np.ndarray | None,
    *,
    upsample_factor: int,
    apodize: bool,
    max_shift: float | None,
    min_peak_ratio: float,
    n_refine: int,
) -> Shift:
    """:func:`estimate_shift` on validated frames and tapered weights (see there)."""
    return _shift_core_many(
        [reference], [moving], [wr], [wm], upsample_factor=upsample_factor, apodize=apodize,
        max_shift=max_shift, min_peak_ratio=min_peak_ratio, n_refine=n_refine,
    )[0]


def _shift_core_many(
    references: Sequence[np.ndarray],
    movings: Sequence[np.ndarray],
    wrs: Sequence[np.ndarray | None],
    wms: Sequence[np.ndarray | None],
    *,
    upsample_factor: int,
    apodize: bool,
    max_shift: float | None,
    min_peak_ratio: float,
    n_refine: int,
) -> list[Shift]:
    """:func:`_shift_core` for several pairs of frames of one shape (phase correlations stacked)."""
    shape = references[0].shape
    f32 = all(x.dtype == np.float32 for x in (*references, *movings))
    dtype = np.float32 if f32 else np.float64
    # float32 frames: window, weights and plane removal in float32 as well
    win = _window(shape, apodize, dtype)

    def weighted(w, window):
        return window if w is None else np.multiply(window, w, dtype=dtype)

    a, wa = _prepare(np.stack(references), np.stack([weighted(w, win) for w in wrs]), dtype)
    b, wb = _prepare(np.stack(movings), np.stack([weighted(w, win) for w in wms]), dtype)
    shifts = _phase_correlate_many(
        a,
        b,
        wa,
        wb,
        upsample_factor=upsample_factor,
        max_shift=max_shift,
        parabolic=n_refine > 0 and upsample_factor > 1,
    )
    out = []
    for s, reference, moving, wr, wm in zip(shifts, references, movings, wrs, wms, strict=True):
        if n_refine > 0 and upsample_factor > 1:
            s = _refined(s, reference, moving, wr, wm, n_refine)
        flags: list[str] = []
        if not (math.isfinite(s.dy) and math.isfinite(s.dx)):
            flags.append("not_finite")
        if not s.peak_ratio >= min_peak_ratio:
            flags.append("weak_peak")
        out.append(_with_flags(s, flags))
    return out


def _refined(s: Shift, reference, moving, wr, wm, n_refine: int) -> Shift:
    """``s`` moved by the robust least-squares refinement (:func:`_refine_ls`) started at it;
    ``s`` unchanged when the refinement fails or wanders more than 1.5 px from it."""
    if not (math.isfinite(s.dy) and math.isfinite(s.dx)):
        return s
    ls = _refine_ls(reference.astype(np.float32), moving.astype(np.float32), wr, wm, s.dy, s.dx,
                    n_iter=n_refine)
    if ls is None:
        return s
    dy, dx, err = ls
    if abs(dy - s.dy) <= 1.5 and abs(dx - s.dx) <= 1.5:
        return replace(s, dy=dy, dx=dx, error=err)
    logger.debug("LS refinement wandered off (%.2f, %.2f); kept %s", dy, dx, s)
    return s


def refine_shift(
    reference: np.ndarray,
    moving: np.ndarray,
    shift: Shift,
    *,
    weights: np.ndarray | None = None,
    moving_weights: np.ndarray | None = None,
    n_refine: int = 10,
) -> Shift:
    """The robust least-squares refinement of :func:`estimate_shift`, started at ``shift``.

    ``refine_shift(ref, mov, estimate_shift(ref, mov, n_refine=0))`` is :func:`estimate_shift`
    with its refinement started at the DFT-upsampled peak instead of the 3-point parabola (the
    two agree to the refinement's tolerance, 1e-3 px). A caller that needs the refined shift
    only in some cases runs the cheap estimate first and this when needed. ``dy``, ``dx`` and
    ``error`` are replaced; ``peak_ratio``, ``crlb`` and ``flags`` are those of ``shift``.
    """
    reference, moving = _check_pair(reference, moving)
    wr, wm = _soft_weights(weights, moving_weights, reference.shape, _TAPER_SIGMA)
    return _refined(shift, reference, moving, wr, wm, int(n_refine)) if n_refine > 0 else shift


def shift_precision(
    reference: np.ndarray,
    moving: np.ndarray,
    dy: float,
    dx: float,
    *,
    weights: np.ndarray | None = None,
    moving_weights: np.ndarray | None = None,
) -> float:
    """Noise-limited 1-sigma precision (px) of the shift ``(dy, dx)`` on the given weights.

    The Gauss-Newton covariance times the residual variance of one least-squares step at that
    shift (the ``error`` of :func:`estimate_shift` without re-estimating the shift); NaN when
    the normal equations are singular.
    """
    reference, moving = _check_pair(reference, moving)
    wr, wm = _soft_weights(weights, moving_weights, reference.shape, _TAPER_SIGMA)
    ls = _refine_ls(reference.astype(np.float32), moving.astype(np.float32), wr, wm,
                    float(dy), float(dx), n_iter=1)
    return math.nan if ls is None else float(ls[2])


def _with_flags(s: Shift, flags: Sequence[str]) -> Shift:
    allf = tuple(dict.fromkeys([*s.flags, *flags]))
    return replace(s, ok=not allf, flags=allf)


def gradient_magnitude(h: np.ndarray, *, sigma: float = 1.0, dtype=np.float64) -> np.ndarray:
    """Gaussian gradient magnitude of a height frame (nm/px), NaN-safe.

    Parameters
    ----------
    h : ndarray, shape (y, x)
        Heights (nm). NaN pixels are filled with the median for filtering and stay NaN.
    sigma : float
        Gaussian scale (px) of the derivative filters.
    dtype : {numpy.float64, numpy.float32}
        Working and output precision (float32 is faster, e.g. for the QC check).

    Returns
    -------
    ndarray of ``dtype``, shape (y, x)
    """
    h = _check_image(h, "h", min_size=2)
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma!r}")
    if np.dtype(dtype) not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32 or float64, got {dtype!r}")
    z = h.astype(dtype)
    finite = np.isfinite(z)
    if not finite.all():
        fill = np.median(z[finite]) if finite.any() else 0.0
        z = np.where(finite, z, fill).astype(dtype, copy=False)
    g = ndi.gaussian_gradient_magnitude(z, sigma, mode="nearest")
    g[~finite] = np.nan
    return g


def estimate_shift_qc(
    reference: np.ndarray,
    moving: np.ndarray,
    *,
    weights: np.ndarray | None = None,
    moving_weights: np.ndarray | None = None,
    prev: Shift | Sequence[float] | None = None,
    max_jump_px: float = 10.0,
    min_peak_ratio: float = 2.0,
    max_disagreement_px: float = 1.0,
    upsample_factor: int = 100,
    gradients: tuple[np.ndarray, np.ndarray] | None = None,
    tapered: bool = False,
) -> Shift:
    """Phase-correlation shift with quality flags.

    The shift of the heights is compared with a second, independent estimate on the gradient
    magnitude images. Flags: ``"weak_peak"`` (``peak_ratio < min_peak_ratio`` of the heights'
    estimate, or of the gradients' when the two disagree), ``"disagreement"`` (the two estimates differ by more than
    ``max_disagreement_px``), ``"jump"`` (further than ``max_jump_px`` from ``prev``, the
    expected shift, e.g. the previous pair's). ``ok`` is False when any flag is set.

    Parameters
    ----------
    reference, moving : ndarray, shape (y, x)
        Leveled heights.
    weights, moving_weights : ndarray, shape (y, x), optional
        Stable-region weights, as in :func:`estimate_shift`.
    prev : Shift or (dy, dx), optional
        Expected shift for the continuity check.
    max_jump_px, min_peak_ratio, max_disagreement_px : float
        QC thresholds.
    upsample_factor : int
        As in :func:`estimate_shift`.
    gradients : (ndarray, ndarray), optional
        ``gradient_magnitude(reference)`` and ``gradient_magnitude(moving)`` when already
        computed (e.g. by a caller that checks the same pair twice); computed when omitted.
    tapered : bool
        The weights are :func:`taper_weights` of the stable regions already (not tapered again).

    Returns
    -------
    Shift
        The estimate on the heights, with the combined flags.
    """
    reference, moving = _check_pair(reference, moving)
    _check_search(upsample_factor, None)
    gradients = _check_gradients(gradients, reference, moving)
    # weights validated and tapered once for both estimates
    wr, wm = _soft_weights(weights, moving_weights, reference.shape, _TAPER_SIGMA, tapered=tapered)
    s1 = _shift_core(reference, moving, wr, wm, n_refine=10, upsample_factor=int(upsample_factor),
                     apodize=True, max_shift=None, min_peak_ratio=min_peak_ratio)
    return _qc(s1, gradients, wr, wm, prev=prev, max_jump_px=max_jump_px,
               min_peak_ratio=min_peak_ratio, max_disagreement_px=max_disagreement_px,
               upsample_factor=int(upsample_factor))


def check_shift(
    reference: np.ndarray,
    moving: np.ndarray,
    shift: Shift,
    *,
    weights: np.ndarray | None = None,
    moving_weights: np.ndarray | None = None,
    prev: Shift | Sequence[float] | None = None,
    max_jump_px: float = 10.0,
    min_peak_ratio: float = 2.0,
    max_disagreement_px: float = 1.0,
    upsample_factor: int = 100,
    gradients: tuple[np.ndarray, np.ndarray] | None = None,
) -> Shift:
    """The quality flags of :func:`estimate_shift_qc` for an existing estimate.

    ``check_shift(ref, mov, estimate_shift(ref, mov, **kw), **kw)`` equals
    ``estimate_shift_qc(ref, mov, **kw)`` (same weights, ``min_peak_ratio`` and
    ``upsample_factor``); a caller that needs the flags only for some estimates can defer
    the gradient check.

    Parameters
    ----------
    reference, moving : ndarray, shape (y, x)
        The frames ``shift`` was estimated on.
    shift : Shift
        From :func:`estimate_shift` on these frames and weights.
    weights, moving_weights, prev, max_jump_px, min_peak_ratio, max_disagreement_px, upsample_factor, gradients
        As in :func:`estimate_shift_qc`.

    Returns
    -------
    Shift
        ``shift`` with the combined flags.
    """
    reference, moving = _check_pair(reference, moving)
    _check_search(upsample_factor, None)
    gradients = _check_gradients(gradients, reference, moving)
    wr, wm = _soft_weights(weights, moving_weights, reference.shape, _TAPER_SIGMA)
    return _qc(shift, gradients, wr, wm, prev=prev, max_jump_px=max_jump_px,
               min_peak_ratio=min_peak_ratio, max_disagreement_px=max_disagreement_px,
               upsample_factor=int(upsample_factor))


def _check_gradients(gradients, reference: np.ndarray, moving: np.ndarray):
    if gradients is None:
        return (gradient_magnitude(reference), gradient_magnitude(moving))
    if len(gradients) != 2 or any(np.shape(g) != reference.shape for g in gradients):
        raise ValueError(f"gradients must be two arrays of the frame shape {reference.shape}")
    return gradients


def _qc(s1: Shift, gradients, wr, wm, *, prev, max_jump_px: float, min_peak_ratio: float,
        max_disagreement_px: float, upsample_factor: int) -> Shift:
    """Flags of :func:`estimate_shift_qc` for the height estimate ``s1`` (tapered weights)."""
    # The second estimate only checks agreement at the max_disagreement_px scale (1 px by
    # default): the DFT-upsampled peak (1/upsample_factor px) is precise enough for that, so
    # the robust least-squares refinement (most of the cost) is skipped for it.
    s2 = _shift_core(*gradients, wr, wm, n_refine=0, upsample_factor=upsample_factor,
                     apodize=True, max_shift=None, min_peak_ratio=min_peak_ratio)
    flags = list(s1.flags)
    disagree = math.hypot(s1.dy - s2.dy, s1.dx - s2.dx) > max_disagreement_px
    # A weak peak of the check alone is inconclusive; when it still agrees with the heights'
    # estimate (whose own weak peak is in s1.flags) the pair passes. On a periodic lattice (the
    # real .asd movie) the gradient images' correlation has near-equal peaks at the lattice
    # vectors, and the check's weak peak flagged pairs whose estimates agreed to 0.2 px.
    # Synthetic data sets never meet the case (demo and bench-m transforms are unchanged).
    if "weak_peak" in s2.flags and disagree:
        flags.append("weak_peak")
    if disagree:
        flags.append("disagreement")
    if prev is not None:
        p = prev.vector if isinstance(prev, Shift) else np.asarray(prev, dtype=float)
        if p.shape != (2,):
            raise ValueError(f"prev must be a Shift or (dy, dx), got shape {p.shape}")
        if math.hypot(s1.dy - p[0], s1.dx - p[1]) > max_jump_px:
            flags.append("jump")
    if flags:
        logger.debug("shift QC flags %s: %s vs gradient %s", flags, s1, s2)
    return _with_flags(s1, flags)


# --------------------------------------------------------------------------- row drift


def estimate_row_drift(
    reference: np.ndarray,
    moving: np.ndarray,
    *,
    strip_height: int = 32,
    overlap: float = 0.5,
    weights: np.ndarray | None = None,
    upsample_factor: int = 100,
    min_peak_ratio: float = 2.0,
    interpolation: Literal["auto", "line", "quadratic", "linear", "spline"] = "auto",
    shift: tuple[float, float] | None = None,
    tapered: bool = False,
) -> RowDrift:
    """Drift within a raster frame by strip-wise registration.

    ``moving`` is cut into horizontal strips (``strip_height`` rows, overlapping by
    ``overlap``); after a global integer pre-shift from :func:`estimate_shift` on the whole
    frames, each strip is registered against the matching rows of ``reference``. Strip
    estimates that pass QC are assigned to the strip's centre row and carried to every row by
    a robust fit of a smooth drift model (default) or by interpolation.

    Parameters
    ----------
    reference, moving : ndarray, shape (y, x)
        Leveled heights, same shape.
    strip_height : int
        Rows per strip (>= 8).
    overlap : float
        Fractional overlap of consecutive strips, in [0, 1).
    weights : ndarray, shape (y, x), optional
        Stable-region weights (in ``moving`` coordinates), as in :func:`estimate_shift`;
        tapered at the excluded regions once on the whole frame, each strip uses its part.
    upsample_factor, min_peak_ratio : optional
        As in :func:`estimate_shift`.
    interpolation : {"auto", "line", "quadratic", "linear", "spline"}
        How strip estimates are carried to every row. ``line`` / ``quadratic``: Tukey-biweight
        fit of a polynomial in the row (:func:`robust_row_fit`), for drift whose velocity is
        constant (or changes steadily) within a frame; ``auto``: the line, or the quadratic
        when its curvature is significant (|t| > 4, at least 6 strips). ``linear``: piecewise
        linear through every strip (linear extrapolation); ``spline``: a smoothing spline
        weighted by the strip errors. Strip estimates scatter by up to 0.7 px on frames with
        much new deposit (bench-m); interpolating through them put that scatter into the row
        profile (per-row error 0.22 px RMS on bench-m cycles 1-3, 0.13 on bench-s), the robust
        line does not (0.029 and 0.017 px).
    shift : (dy, dx), optional
        The whole-frame shift when the caller has it; its rounded value is the strips' integer
        pre-shift. Without it, the pre-shift is the integer peak of a phase correlation of the
        whole frames, computed here.
    tapered : bool
        ``weights`` is :func:`taper_weights` of the stable region already (not tapered again).

    Returns
    -------
    RowDrift
        ``dy, dx`` per row of ``moving`` (shape (y,)), with
        ``moving(y, x) ~= reference(y - dy[y], x - dx[y])``; NaN when fewer than one strip
        passed QC.
    """
    reference, moving = _check_pair(reference, moving)
    n, m = reference.shape
    if not 8 <= strip_height <= n:
        raise ValueError(f"strip_height must be in 8..{n} (frame rows), got {strip_height!r}")
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap!r}")
    if interpolation not in ROW_MODELS:
        raise ValueError(f"interpolation must be one of {ROW_MODELS}, got {interpolation!r}")
    _check_search(upsample_factor, None)
    w = _check_weights(weights, reference.shape, "weights")
    # the weights are tapered at the excluded regions once, on the whole frame; the strips
    # take their part of it
    if w is not None and not tapered:
        w = _soft_mask(w, _TAPER_SIGMA)
    core = dict(apodize=True, min_peak_ratio=min_peak_ratio)
    if shift is None:
        g = _shift_core(reference, moving, w, w, upsample_factor=1, max_shift=None, n_refine=10, **core)
        shift = (g.dy, g.dx)
    elif not (len(shift) == 2 and all(math.isfinite(v) for v in shift)):
        raise ValueError(f"shift must be a finite (dy, dx), got {shift!r}")
    iy, ix = round(shift[0]), round(shift[1])
    step = max(1, round(strip_height * (1 - overlap)))
    starts = list(range(0, n - strip_height + 1, step))
    if starts[-1] != n - strip_height:
        starts.append(n - strip_height)
    c0, c1 = max(0, ix), min(m, m + ix)
    strips: list[Shift] = []
    centers: list[float] = []
    nan_shift = Shift(math.nan, math.nan, 0.0, 0.0, math.inf, math.inf, False, ("no_overlap",))
    todo: dict[tuple[int, int], list] = {}  # strips to estimate, grouped by shape
    for r0 in starts:
        lo, hi = max(r0, iy), min(r0 + strip_height, n + iy)
        centers.append((r0 + r0 + strip_height - 1) / 2.0)
        if hi - lo < max(8, strip_height // 2) or c1 - c0 < 8:
            strips.append(nan_shift)
            continue
        mov = moving[lo:hi, c0:c1]
        ref = reference[lo - iy : hi - iy, c0 - ix : c1 - ix]
        ws = None if w is None else w[lo:hi, c0:c1]
        # the apodization window is zero on the strip's border: weight only there is no weight
        if ws is not None and not (ws[1:-1, 1:-1] > 0).any():
            strips.append(nan_shift)
            continue
        centers[-1] = (lo + hi - 1) / 2.0
        todo.setdefault(mov.shape, []).append((len(strips), ref, mov, ws))
        strips.append(nan_shift)
    for group in todo.values():
        idx, refs, movs, wss = zip(*group, strict=True)
        res = _shift_core_many(
            refs,
            movs,
            wss,
            wss,
            upsample_factor=int(upsample_factor),
            max_shift=strip_height / 3.0,
            n_refine=10,
            **core,
        )
        for i, s in zip(idx, res, strict=True):
            strips[i] = replace(s, dy=s.dy + iy, dx=s.dx + ix)
    rows_c = np.asarray(centers)
    ok = np.array([s.ok for s in strips], dtype=bool)
    sdy = np.array([s.dy for s in strips])
    sdx = np.array([s.dx for s in strips])
    # A strip whose peak snapped to the zero-shift peak of masked borders has a strong peak and
    # no flag, but sits a whole shift away from the smooth drift of its neighbours.
    bad = trend_outliers(rows_c, (sdy, sdx), ok)
    if bad.any():
        logger.debug("row drift: strips %s leave the drift trend; not used", np.flatnonzero(bad).tolist())
        ok &= ~bad
    serr = np.array([s.error for s in strips])
    rows = np.arange(n, dtype=np.float64)
    if ok.sum() == 0:
        dy = np.full(n, np.nan)
        dx = np.full(n, np.nan)
    elif ok.sum() == 1:
        dy = np.full(n, sdy[ok][0])
        dx = np.full(n, sdx[ok][0])
    elif interpolation in ("linear", "spline"):
        dy = _interp_rows(rows, rows_c[ok], sdy[ok], serr[ok], interpolation)
        dx = _interp_rows(rows, rows_c[ok], sdx[ok], serr[ok], interpolation)
    else:
        dy = robust_row_fit(rows, rows_c[ok], sdy[ok], interpolation)
        dx = robust_row_fit(rows, rows_c[ok], sdx[ok], interpolation)
    return RowDrift(dy=dy, dx=dx, strip_rows=rows_c, strips=tuple(strips), strip_ok=ok)


ROW_MODELS = ("auto", "line", "quadratic", "linear", "spline")


def _lmeds_poly(xs: np.ndarray, y: np.ndarray, deg: int, max_subsets: int = 20000) -> np.ndarray:
    """Least-median-of-squares polynomial (Rousseeuw 1984).

    Of the exact fits through every ``deg + 1`` strips (a seeded random ``max_subsets`` of them
    when there are more), the one whose median squared residual is least. Its breakdown point
    is 50%: a block of strips biased the same way, as long as it is under half, does not move it.
    Not in scipy or scikit-image (scikit-learn's RANSAC needs a threshold we do not know), and
    exhaustive over 31 strips it is a few milliseconds, so it is written here.
    """
    n, k = xs.size, deg + 1
    sub = _subsets(n, k, max_subsets)
    V = np.vander(xs, k)
    A, b = V[sub], y[sub]
    # |det| of a Vandermonde matrix is the product of the differences of its nodes: singular
    # subsets (two strips at one row) are those with a near-zero difference
    d = xs[sub]
    vdet = np.ones(len(sub))
    for i in range(k):
        for j in range(i + 1, k):
            vdet *= d[:, j] - d[:, i]
    keep = np.abs(vdet) > 1e-12
    coef = np.linalg.solve(A[keep], b[keep][..., None])[..., 0]
    r2 = (y[None, :] - coef @ V.T) ** 2
    # the median along each row by selection (np.median's own values, without its overhead)
    h = n // 2
    if n % 2:
        med = np.partition(r2, h, axis=1)[:, h]
    else:
        part = np.partition(r2, (h - 1, h), axis=1)
        med = (part[:, h - 1] + part[:, h]) / 2
    return coef[int(np.argmin(med))]


@lru_cache(maxsize=64)
def _subsets(n: int, k: int, max_subsets: int) -> np.ndarray:
    """Every k-subset of range(n) (a seeded random ``max_subsets`` of them when there are more),
    as rows of indices; cached (never modify the returned array)."""
    from itertools import combinations
    from math import comb

    if comb(n, k) <= max_subsets:
        sub = np.array(list(combinations(range(n), k)), dtype=np.intp)
    else:
        rng = np.random.default_rng(0)
        sub = np.sort(np.array([rng.choice(n, k, replace=False) for _ in range(max_subsets)]), axis=1)
    sub.setflags(write=False)
    return sub


def _biweight_poly(xs: np.ndarray, y: np.ndarray, deg: int, n_iter: int = 30):
    """Tukey-biweight (c = 4.685) polynomial fit by IRLS.

    With at least five strips per coefficient it is an MM-estimate: started from the
    least-median-of-squares fit (:func:`_lmeds_poly`), with the scale fixed at that fit's. A
    Theil-Sen start and a scale re-estimated at every step let a block of biased strips (a third
    of bench-m's late-plating frames, off by 0.4-0.6 px and each claiming 0.003 px) pull the fit
    half-way to them. With fewer strips a majority means little: a Theil-Sen line start and the
    scale re-estimated from the residuals (MAD) at every step.

    Returns coefficients (highest power first), their covariance and the robust scale.
    """
    X = np.vander(xs, deg + 1)
    fixed_scale = None
    if xs.size >= 5 * (deg + 1):
        r = y - X @ _lmeds_poly(xs, y, deg)
        # LMedS scale with its small-sample correction (Rousseeuw & Leroy 1987, eq. 5.1.4)
        fixed_scale = 1.4826 * (1 + 5 / (xs.size - deg - 1)) * float(np.sqrt(np.median(r * r)))
        fixed_scale = max(fixed_scale, 1e-3)
    else:
        slope, icpt = theil_sen(y, xs)
        r = y - (icpt + slope * xs)
    w = np.ones_like(y)
    coef = np.zeros(deg + 1)
    scale = 1e-3
    for _ in range(n_iter):
        scale = fixed_scale or max(1.4826 * float(np.median(np.abs(r))), 1e-3)  # px; floor: exact data
        u = r / (4.685 * scale)
        w = np.where(np.abs(u) < 1, (1 - u * u) ** 2, 0.0)
        if (w > 0).sum() <= deg:
            w = np.ones_like(y)
        sw = np.sqrt(w)
        new = np.linalg.lstsq(X * sw[:, None], y * sw, rcond=None)[0]
        r = y - X @ new
        if np.allclose(new, coef, atol=1e-6):
            coef = new
            break
        coef = new
    xtwx = (X * w[:, None]).T @ X
    cov = scale**2 * np.linalg.pinv(xtwx)
    return coef, cov, scale


def robust_row_fit(rows: np.ndarray, xc: np.ndarray, yc: np.ndarray, model: str = "auto") -> np.ndarray:
    """Drift per row from strip estimates ``yc`` at rows ``xc``: a robust line or quadratic.

    Within one frame the drift is smooth: thermal drift moves at a nearly constant velocity over
    a frame's minutes, so the per-row displacement between two frames is close to a line in the
    row (the generator's is exactly one), and a steadily changing velocity gives a quadratic.
    The biweight gives strips far off the fit (new deposit, weak texture) no weight; from 10
    strips (line) or 15 (quadratic) on it is an MM-estimate (:func:`_biweight_poly`) that a block
    of up to half the strips biased together does not pull. ``auto`` keeps the quadratic only
    when its curvature is significant (|t| > 4) on at least 6 strips; a block whose bias grows
    along the frame can still pass that test (bench-m's pair 40->41).
    Fewer than 3 strips: their mean (1) or the straight line through them (2).
    """
    rows = np.asarray(rows, np.float64)
    xc, yc = np.asarray(xc, np.float64), np.asarray(yc, np.float64)
    if xc.size == 1:
        return np.full(rows.shape, yc[0])
    mid, half = 0.5 * (rows[0] + rows[-1]), max(0.5 * (rows[-1] - rows[0]), 1.0)
    xs, rs = (xc - mid) / half, (rows - mid) / half
    if xc.size == 2:
        return np.polyval(np.polyfit(xs, yc, 1), rs)
    coef, _, _ = _biweight_poly(xs, yc, 1)
    if model == "quadratic" or (model == "auto" and xc.size >= 6):
        c2, cov2, _ = _biweight_poly(xs, yc, 2)
        t = c2[0] / np.sqrt(max(cov2[0, 0], 1e-30))
        if model == "quadratic" or abs(t) > 4.0:
            coef = c2
    return np.polyval(coef, rs)


def _interp_rows(rows, xc, yc, err, method: str) -> np.ndarray:
    if method == "spline" and xc.size >= 5:
        from scipy.interpolate import make_smoothing_spline

        w = 1.0 / np.maximum(err, 1e-3) ** 2
        spl = make_smoothing_spline(xc, yc, w=w / w.mean())
        return spl(rows)
    out = np.interp(rows, xc, yc)
    lo = rows < xc[0]
    hi = rows > xc[-1]
    out[lo] = yc[0] + (rows[lo] - xc[0]) * (yc[1] - yc[0]) / (xc[1] - xc[0])
    out[hi] = yc[-1] + (rows[hi] - xc[-1]) * (yc[-1] - yc[-2]) / (xc[-1] - xc[-2])
    return out


# --------------------------------------------------------------------------- resampling


def _resample(image: np.ndarray, ys: np.ndarray, xs: np.ndarray, order: int, fill: float):
    n, m = image.shape
    z = image.astype(np.float64)
    finite = np.isfinite(z)
    if not finite.all():
        z = np.where(finite, z, np.median(z[finite]) if finite.any() else 0.0)
    out = ndi.map_coordinates(z, [ys, xs], order=order, mode="nearest")
    tol = 1e-6
    valid = (ys >= -tol) & (ys <= n - 1 + tol) & (xs >= -tol) & (xs <= m - 1 + tol)
    if not finite.all():
        bad = ndi.map_coordinates((~finite).astype(np.float64), [ys, xs], order=1, mode="nearest")
        bad = bad > 1e-9
        if order > 1:
            bad = ndi.binary_dilation(bad, iterations=1)
        valid &= ~bad
    out[~valid] = fill
    return out, valid


def _bspline_taps(t: np.ndarray, order: int) -> tuple[int, list[np.ndarray]]:
    """First tap offset and the B-spline weights of ``order`` (1 or 3) at fractional parts ``t``."""
    if order == 1:
        return 0, [1.0 - t, t]
    t2 = t * t
    t3 = t2 * t
    return -1, [(1.0 - t) ** 3 / 6.0, (3.0 * t3 - 6.0 * t2 + 4.0) / 6.0,
                (-3.0 * t3 + 3.0 * t2 + 3.0 * t + 1.0) / 6.0, t3 / 6.0]


def _resample_rows(z: np.ndarray, ys: np.ndarray, x_off: np.ndarray, order: int) -> np.ndarray:
    """``map_coordinates(z, [ys[:, None], x + x_off[:, None]], order, mode="nearest")`` for a
    finite image whose sampling position is one row coordinate and one column offset per output
    row (a per-row displacement).

    The tensor-product spline then separates: each output row is a weighted sum of (order + 1)
    coefficient rows, sampled at a constant sub-pixel offset, so it costs 2 (order + 1) passes
    over the frame instead of (order + 1)^2 gathers per pixel (512^2 px, cubic: 19-25 ms against
    96-98 ms on this machine). Same prefilter as scipy (edge padding by 12, ``spline_filter``
    with mode "nearest"); equal to ``map_coordinates`` to rounding inside the frame. Written
    here because scipy has no separable evaluation with per-row coordinates.
    """
    n, m = z.shape
    if order == 3:
        npad = 12
        coef = ndi.spline_filter(np.pad(z, npad, mode="edge"), 3, output=np.float64, mode="nearest")
    else:
        npad, coef = 0, z
    big_n, big_m = coef.shape
    q = ys + npad
    i0 = np.floor(q)
    off, wy = _bspline_taps(q - i0, order)
    i0 = i0.astype(np.intp) + off
    rows = np.zeros((n, big_m))
    for k, w in enumerate(wy):
        term = coef[np.clip(i0 + k, 0, big_n - 1)]
        term *= w[:, None]
        rows += term
    qx = x_off + npad
    j0 = np.floor(qx)
    _, wx = _bspline_taps(qx - j0, order)
    j0 = j0.astype(np.intp) + off
    # each output row is a contiguous window of its coefficient row; edge padding where a
    # window reaches outside (mode "nearest" clamps the coefficient index)
    left = max(0, -int(j0.min()))
    right = max(0, int(j0.max()) + len(wx) - 1 + m - big_m)
    if left or right:
        rows = np.pad(rows, ((0, 0), (left, right)), mode="edge")
    win = np.lib.stride_tricks.sliding_window_view(rows, m, axis=1)
    r = np.arange(n)
    out = np.zeros((n, m))
    for k, w in enumerate(wx):
        term = win[r, j0 + left + k]
        term *= w[:, None]
        out += term
    return out


def _check_order(order) -> None:
    if order == "fourier":
        return
    if not isinstance(order, (int, np.integer)) or not 0 <= order <= 5:
        raise ValueError(f"order must be an int in 0..5 or 'fourier', got {order!r}")


def apply_shift(
    image: np.ndarray,
    dy: float,
    dx: float,
    *,
    order: int | Literal["fourier"] = 1,
    fill: float = np.nan,
) -> tuple[np.ndarray, np.ndarray]:
    """Translate the content of ``image`` by ``(dy, dx)`` px: ``out(y, x) = image(y - dy, x - dx)``.

    To register ``moving`` onto ``reference`` with ``s = estimate_shift(reference, moving)``,
    call ``apply_shift(moving, -s.dy, -s.dx)``.

    Parameters
    ----------
    image : ndarray, shape (y, x)
        Real image; NaN pixels propagate to the pixels that depend on them.
    dy, dx : float
        Displacement (px).
    order : int in 0..5 or "fourier"
        Spline order of ``scipy.ndimage.map_coordinates``, or a Fourier (sinc) shift (exact
        for band-limited periodic images; rings near the border of non-periodic ones).
    fill : float
        Value outside the valid field.

    Returns
    -------
    out : ndarray of float64, shape (y, x)
        Shifted image, ``fill`` outside the valid field.
    valid : ndarray of bool, shape (y, x)
        True where ``out`` comes from inside the input field.
    """
    image = _check_image(image, "image", min_size=1)
    _check_order(order)
    if not (math.isfinite(dy) and math.isfinite(dx)):
        raise ValueError(f"dy and dx must be finite, got ({dy!r}, {dx!r})")
    n, m = image.shape
    if order != "fourier":
        z = image.astype(np.float64)
        if np.isfinite(z).all():
            # a translation of a finite image: same spline values as map_coordinates on the
            # shifted grid, without building the coordinate arrays; separable valid field.
            # Linear and cubic evaluated separably (512^2 px: 11 against ndi.shift's 24 ms
            # linear, 23 against 85 ms cubic), equal to ndi.shift to rounding.
            if order in (1, 3):
                out = _resample_rows(z, np.arange(n) - dy, np.full(n, -dx), int(order))
            else:
                out = ndi.shift(z, (dy, dx), order=int(order), mode="nearest")
            tol = 1e-6
            ys, xs = np.arange(n) - dy, np.arange(m) - dx
            valid = np.logical_and.outer((ys >= -tol) & (ys <= n - 1 + tol),
                                         (xs >= -tol) & (xs <= m - 1 + tol))
            out[~valid] = fill
            return out, valid
    yy, xx = np.meshgrid(np.arange(n) - dy, np.arange(m) - dx, indexing="ij")
    if order != "fourier":
        return _resample(image, yy, xx, int(order), fill)
    _, valid = _resample(np.isfinite(image).astype(np.float64), yy, xx, 1, np.nan)
    z = image.astype(np.float64)
    finite = np.isfinite(z)
    z = np.where(finite, z, np.mean(z[finite]) if finite.any() else 0.0)
    out = sfft.ifft2(ndi.fourier_shift(sfft.fft2(z), (dy, dx))).real
    if not finite.all():
        bad = ndi.shift((~finite).astype(np.float64), (dy, dx), order=1, mode="constant")
        valid &= ~ndi.binary_dilation(bad > 1e-9, iterations=1)
    out[~valid] = fill
    return out, valid


def apply_row_drift(
    image: np.ndarray,
    dy_rows: np.ndarray,
    dx_rows: np.ndarray,
    *,
    inverse: bool = False,
    order: int = 1,
    fill: float = np.nan,
    n_iter: int = 5,
) -> tuple[np.ndarray, np.ndarray]:
    """Apply (or undo) a per-row displacement.

    Forward (``inverse=False``): ``out(y, x) = image(y - dy_rows[y], x - dx_rows[y])``, i.e. the
    drift model of :func:`estimate_row_drift` applied to a reference. With ``inverse=True`` the
    drift is removed: given ``moving`` and the drift measured against ``reference``, the output
    is ``moving`` resampled on the reference grid (the row of ``moving`` that saw reference row
    ``Y`` is found by fixed-point iteration of ``y = Y + dy(y)``).

    Parameters
    ----------
    image : ndarray, shape (y, x)
        Real image.
    dy_rows, dx_rows : ndarray, shape (y,)
        Per-row displacement (px), finite.
    inverse : bool
        Undo instead of apply.
    order : int
        Spline order (0..5) of ``scipy.ndimage.map_coordinates``.
    fill : float
        Value outside the valid field.
    n_iter : int
        Fixed-point iterations for ``inverse=True``.

    Returns
    -------
    out : ndarray of float64, shape (y, x)
    valid : ndarray of bool, shape (y, x)
    """
    image = _check_image(image, "image", min_size=1)
    _check_order(order)
    if order == "fourier":
        raise ValueError("order='fourier' is not supported for row drift; use 0..5")
    n, m = image.shape
    dyr = np.asarray(dy_rows, dtype=np.float64)
    dxr = np.asarray(dx_rows, dtype=np.float64)
    if dyr.shape != (n,) or dxr.shape != (n,):
        raise ValueError(
            f"dy_rows and dx_rows must have shape ({n},), got {dyr.shape} and {dxr.shape}"
        )
    if not (np.isfinite(dyr).all() and np.isfinite(dxr).all()):
        raise ValueError("dy_rows and dx_rows must be finite")
    rows = np.arange(n, dtype=np.float64)
    cols = np.arange(m, dtype=np.float64)
    if not inverse:  # sampling position per output row: row y_in, column x + x_off
        y_in, x_off = rows - dyr, -dxr
    else:
        y_in = rows + dyr
        for _ in range(n_iter):
            y_in = rows + np.interp(y_in, rows, dyr)
        x_off = np.interp(y_in, rows, dxr)
    z = image.astype(np.float64)
    if order in (1, 3) and np.isfinite(z).all():
        # the registration's apply step (every frame, NaN filled before): separable
        out = _resample_rows(z, y_in, x_off, order)
        tol = 1e-6
        xs = cols[None, :] + x_off[:, None]
        valid = ((y_in >= -tol) & (y_in <= n - 1 + tol))[:, None] & (xs >= -tol) & (xs <= m - 1 + tol)
        out[~valid] = fill
        return out, valid
    ys = y_in[:, None] + 0 * cols[None, :]
    xs = cols[None, :] + x_off[:, None]
    return _resample(image, ys, xs, order, fill)


# --------------------------------------------------------------------------- chains


def _as_vectors(pairwise) -> np.ndarray:
    if len(pairwise) and isinstance(pairwise[0], Shift):
        arr = np.array([[s.dy, s.dx] for s in pairwise], dtype=np.float64)
    else:
        arr = np.asarray(pairwise, dtype=np.float64)
    if arr.size == 0:
        arr = arr.reshape(0, 2)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"pairwise must have shape (n, 2) or be Shifts, got shape {arr.shape}")
    return arr


def compose_shifts(pairwise: Sequence[Shift] | np.ndarray) -> np.ndarray:
    """Cumulative displacement of every frame of a chain relative to the first.

    Parameters
    ----------
    pairwise : sequence of Shift or ndarray, shape (n, 2)
        ``pairwise[i]`` = shift of frame ``i + 1`` relative to frame ``i`` as ``(dy, dx)``.

    Returns
    -------
    ndarray of float64, shape (n + 1, 2)
        Row ``k`` is the displacement of frame ``k`` relative to frame 0 (row 0 is zero).
    """
    arr = _as_vectors(pairwise)
    return np.vstack([np.zeros((1, 2)), np.cumsum(arr, axis=0)])


def loop_closure_error(
    pairwise: Sequence[Shift] | np.ndarray, closing: Shift | Sequence[float]
) -> np.ndarray:
    """Misclosure of a chain: composed pairwise shifts minus a direct shift first -> last.

    Parameters
    ----------
    pairwise : sequence of Shift or ndarray, shape (n, 2)
        Chain of shifts from frame 0 to frame n.
    closing : Shift or (dy, dx)
        Direct estimate of frame n relative to frame 0.

    Returns
    -------
    ndarray of float64, shape (2,)
        ``compose_shifts(pairwise)[-1] - closing`` (px); ~0 for a consistent loop.
    """
    c = closing.vector if isinstance(closing, Shift) else np.asarray(closing, dtype=np.float64)
    if c.shape != (2,):
        raise ValueError(f"closing must be a Shift or (dy, dx), got shape {c.shape}")
    return compose_shifts(pairwise)[-1] - c


# --------------------------------------------------------------------------- fast method
#
# One phase correlation per frame pair from spectra computed once per frame: every frame's
# apodized, plane-removed whole frame and horizontal strips are transformed and whitened
# once (SNR-weighted, so that the cross-power of two frames is one complex product), and each
# frame serves as ``moving`` of one pair and ``reference`` of the next. Subpixel peaks come
# from Newton iterations on the trigonometric interpolant of the correlation surface (the
# continuous form of DFT upsampling), divided by the autocorrelation of the apodization
# window (which otherwise pulls the peak towards zero shift). No stable-region weighting and no
# least-squares refinement: see ``register.method`` in the README for the accuracy trade-off.


@dataclass(frozen=True)
class FastSpectra:
    """Whitened spectra of one frame for :func:`estimate_fast` (from :func:`fast_spectra`).

    Attributes
    ----------
    frame : ndarray of float32, shape (y, x)
        The finite frame (kept for strips at a row offset).
    whole : ndarray of complex64, shape (y, x // 2 + 1)
        Whitened, SNR-weighted half spectrum of the apodized, plane-removed frame.
    strips : ndarray of complex64, shape (n_strips, strip_height, x // 2 + 1) or None
        The same for the horizontal strips starting at ``starts``.
    starts : ndarray of int
        First row of every strip.
    noise_var : float
        White-noise variance per pixel (from the spectrum's high-frequency corner).
    grad_energy : float
        Sum of the squared signal gradient over the apodized frame (worse axis).
    """

    frame: np.ndarray
    whole: np.ndarray
    strips: np.ndarray | None
    starts: np.ndarray
    noise_var: float
    grad_energy: float


@lru_cache(maxsize=16)
def _fast_basis(rows: int, m: int):
    """Separable Tukey windows (float32), plane basis and inverse normal matrix of the
    window-weighted plane fit (offset, tilt in x, tilt in y) for frames of ``rows`` x ``m``."""
    wy, wx = tukey(rows, _TUKEY_ALPHA), tukey(m, _TUKEY_ALPHA)
    u, v = np.linspace(-1.0, 1.0, m), np.linspace(-1.0, 1.0, rows)
    bx = np.stack([wx, wx * u], axis=1)  # (m, 2)
    by = np.stack([wy, wy * v], axis=0)  # (2, rows)
    sx = (wx.sum(), (wx * u).sum(), (wx * u * u).sum())
    sy = (wy.sum(), (wy * v).sum(), (wy * v * v).sum())
    amat = np.array([[sy[0] * sx[0], sy[0] * sx[1], sy[1] * sx[0]],
                     [sy[0] * sx[1], sy[0] * sx[2], sy[1] * sx[1]],
                     [sy[1] * sx[0], sy[1] * sx[1], sy[2] * sx[0]]])
    f = np.float32
    sum_w2 = float((wy**2).sum() * (wx**2).sum())
    return (wy.astype(f), wx.astype(f), u.astype(f), v.astype(f), bx.astype(f), by.astype(f),
            np.linalg.inv(amat).T, sum_w2)


def _fast_windowed(z: np.ndarray) -> np.ndarray:
    """``(z - plane) * window`` for a frame (n, m) or a stack of strips (k, h, m); the plane
    is the window-weighted least-squares plane of each image (moments by two small products)."""
    rows, m = z.shape[-2:]
    wy, wx, u, v, bx, by, ainv_t, _ = _fast_basis(rows, m)
    t = by @ (z @ bx)  # (..., 2, 2): sums of w z, w z u (row 0); w z v (row 1)
    rhs = np.stack([t[..., 0, 0], t[..., 0, 1], t[..., 1, 0]], axis=-1).astype(np.float64)
    c = (rhs @ ainv_t).astype(np.float32)
    out = z - (c[..., 0, None] + c[..., 2, None] * v)[..., :, None]
    out -= (c[..., 1, None] * u)[..., None, :]
    out *= wy[:, None]
    out *= wx
    return out


_FAST_SMOOTH = False
_FAST_ENVELOPE = True
_FAST_PRESHIFT_PX = 1


def _fast_whiten(f: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``F |F|**-0.5 s / (1 + s)``, s the per-bin SNR of the power over the noise floor
    (half whitening: the product of two frames' spectra is ``|F_a F_b|**0.5`` times the phase
    times the SNR weights): (weighted spectrum, power, noise per bin)."""
    p = f.real * f.real
    p += f.imag * f.imag
    n, mh = p.shape[-2:]
    m = 2 * (mh - 1)
    y0 = math.ceil(0.375 * n)
    corner = p[..., y0 : n - y0 + 1, math.ceil(0.375 * m) :]
    if corner.size:
        flat = corner.reshape(*p.shape[:-2], -1).copy()
        k = flat.shape[-1] // 2
        flat.partition(k, axis=-1)
        noise = flat[..., k] / math.log(2.0)
    else:
        noise = np.zeros(p.shape[:-2], np.float32)
    noise = np.maximum(noise, p.max(axis=(-2, -1)) * 1e-12).astype(np.float32)
    if _FAST_SMOOTH:
        q = p + np.roll(p, 1, axis=-2)
        q += np.roll(p, -1, axis=-2)
        q *= np.float32(1.0 / 3.0)
    else:
        q = p
    s = q - noise[..., None, None]
    np.maximum(s, 0.0, out=s)
    d = p + np.float32(1e-30)
    r4 = np.sqrt(np.sqrt(d))  # p**0.25
    if q is not p:
        d = q + np.float32(1e-30)
    d *= r4
    s /= d  # (q - noise)+ / q / p**0.25
    return f * s, p, noise


def fast_spectra(frame: np.ndarray, *, strip_height: int | None = 32, overlap: float = 0.0) -> FastSpectra:
    """Whitened spectra of one frame (whole and strips) for :func:`estimate_fast`.

    Parameters
    ----------
    frame : ndarray, shape (y, x)
        Leveled heights; NaN filled with the median. Processed in float32.
    strip_height : int or None
        Rows per strip for the row drift (``None``: whole frame only).
    overlap : float
        Fractional overlap of consecutive strips, in [0, 1).
    """
    z = _check_image(frame, "frame")
    z = z.astype(np.float32, copy=False)
    finite = np.isfinite(z)
    if not finite.all():
        z = np.where(finite, z, np.median(z[finite]) if finite.any() else 0.0).astype(np.float32)
    n, m = z.shape
    g, p, noise = _fast_whiten(sfft.rfft2(_fast_windowed(z), workers=1))
    # noise variance per pixel and the gradient energy of the signal (for the CRLB)
    sum_w2 = _fast_basis(n, m)[-1]
    noise_var = float(noise) / sum_w2
    sig = np.maximum(p - noise, 0.0) * _hermitian_weights(m, np.float32)[None, :]
    ky = 2 * np.pi * sfft.fftfreq(n)
    kx = 2 * np.pi * np.arange(p.shape[-1]) / m
    grad = min(float(sig.sum(axis=-1) @ ky**2), float(sig.sum(axis=-2) @ kx**2)) / (n * m)
    strips, starts = None, np.zeros(0, int)
    if strip_height is not None and 8 <= strip_height <= n // 2:
        if not 0 <= overlap < 1:
            raise ValueError(f"overlap must be in [0, 1), got {overlap!r}")
        starts = _strip_starts(n, strip_height, overlap)
        strips = _fast_strips(z, starts, strip_height)
    return FastSpectra(z, g, strips, starts, noise_var, grad)


def _strip_starts(n: int, h: int, overlap: float) -> np.ndarray:
    step = max(1, round(h * (1 - overlap)))
    starts = list(range(0, n - h + 1, step))
    if starts[-1] != n - h:
        starts.append(n - h)
    return np.asarray(starts)


def _fast_strips(z: np.ndarray, starts: np.ndarray, h: int) -> np.ndarray:
    n, m = z.shape
    if len(starts) * h == n and (np.diff(starts) == h).all():
        zs = z.reshape(-1, h, m)
    else:
        zs = np.stack([z[s : s + h] for s in starts])
    return _fast_whiten(sfft.rfft2(_fast_windowed(zs), axes=(-2, -1), workers=1))[0]


@lru_cache(maxsize=32)
def _window_autocorr(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Power spectrum of the Tukey window (its autocorrelation's Fourier series) and the
    angular frequencies."""
    w = tukey(n, _TUKEY_ALPHA)
    return np.abs(np.fft.fft(w)) ** 2 / n, 2 * np.pi * np.fft.fftfreq(n)


def _log_envelope(n: int, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """First and second derivative of log A(d), A the window autocorrelation, at lags d."""
    p, k = _window_autocorr(n)
    e = np.exp(1j * np.outer(d, k)) * p
    a0 = e.sum(axis=1).real
    a1 = (e @ (1j * k)).real
    a2 = (e @ (-(k**2))).real
    g = a1 / a0
    return g, a2 / a0 - g * g


def _newton_peak(r: np.ndarray, y: np.ndarray, x: np.ndarray, *, n_iter: int = 6,
                 tol: float = 1e-4) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Maximum of ``c / (A_y A_x)`` near ``(y, x)``, c the trigonometric interpolant of
    ``irfft2(r)`` and A the apodization window's autocorrelation, for a stack of half spectra
    ``r`` (k, n, m // 2 + 1): Newton iterations on the log, each one matrix product per
    spectrum for c and its first and second derivatives. Returns y, x and c there."""
    k, n, mh = r.shape
    m = 2 * (mh - 1)
    ky = (2 * np.pi / n) * sfft.fftfreq(n, 1.0 / n)
    kx = (2 * np.pi / m) * np.arange(mh)
    wk = _hermitian_weights(m, np.float64)
    y, x = np.array(y, float), np.array(x, float)
    c = np.zeros(k)
    active = np.ones(k, bool)
    for _ in range(n_iter):
        ex = np.exp(1j * np.outer(x, kx)) * wk
        ex3 = np.stack([ex, 1j * kx * ex, -(kx**2) * ex], axis=-1).astype(r.dtype)  # (k, mh, 3)
        ey = np.exp(1j * np.outer(y, ky))
        ey3 = np.stack([ey, 1j * ky * ey, -(ky**2) * ey], axis=1).astype(r.dtype)  # (k, 3, n)
        mm = (ey3 @ (r @ ex3)).real.astype(np.float64) / (n * m)  # d^a/dy^a d^b/dx^b c
        c = mm[:, 0, 0]
        cp = np.maximum(c, 1e-30)
        gy, gx = mm[:, 1, 0] / cp, mm[:, 0, 1] / cp
        hyy = mm[:, 2, 0] / cp - gy * gy
        hxx = mm[:, 0, 2] / cp - gx * gx
        hxy = mm[:, 1, 1] / cp - gx * gy
        if _FAST_ENVELOPE:
            ly, lyy = _log_envelope(n, y)
            lx, lxx = _log_envelope(m, x)
            gy, gx, hyy, hxx = gy - ly, gx - lx, hyy - lyy, hxx - lxx
        det = hyy * hxx - hxy * hxy
        good = (det > 0) & (hyy < 0) & (c > 0)
        safe = np.where(good, det, 1.0)
        sy = np.where(good, -(hxx * gy - hxy * gx) / safe, 0.0)
        sx = np.where(good, -(hyy * gx - hxy * gy) / safe, 0.0)
        sy = np.clip(sy, -0.5, 0.5) * active
        sx = np.clip(sx, -0.5, 0.5) * active
        y += sy
        x += sx
        active &= (np.abs(sy) >= tol) | (np.abs(sx) >= tol)
        if not active.any():
            break
    return y, x, c


def _integer_peaks(c: np.ndarray, center: tuple[float, float] | None = None,
                   max_shift: float | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Integer peak (wrapped to signed shifts) and peak ratio of every surface of a stack
    (k, n, m), optionally only within ``max_shift`` of ``center``. ``c`` is modified."""
    k, n, m = c.shape
    if max_shift is not None:
        iy = (np.arange(n) - center[0] + n / 2) % n - n / 2
        ix = (np.arange(m) - center[1] + m / 2) % m - m / 2
        allowed = (np.abs(iy)[:, None] <= max_shift) & (np.abs(ix)[None, :] <= max_shift)
        c[:, ~allowed] = -np.inf
    flat = c.reshape(k, -1).argmax(axis=1)
    py, px = np.divmod(flat, m)
    top = c[np.arange(k), py, px].astype(np.float64)
    e = _PEAK_EXCLUSION_PX
    off = np.arange(-e, e + 1)
    rows = (py[:, None] + off) % n  # (k, 2e+1)
    cols = (px[:, None] + off) % m
    c[np.arange(k)[:, None, None], rows[:, :, None], cols[:, None, :]] = -np.inf
    second = c.reshape(k, -1).max(axis=1).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(second > 0, top / second, np.inf)
    py = np.where(py > n // 2, py - n, py)
    px = np.where(px > m // 2, px - m, px)
    return py.astype(np.float64), px.astype(np.float64), ratio


def _parabolic(c: np.ndarray, py: np.ndarray, px: np.ndarray):
    """3-point parabola per axis around integer peaks of surfaces c (k, n, m) (unmodified)."""
    k, n, m = c.shape
    i = np.arange(k)
    yi, xi = py.astype(int) % n, px.astype(int) % m
    c0 = c[i, yi, xi].astype(np.float64)
    ym, yp = c[i, (yi - 1) % n, xi], c[i, (yi + 1) % n, xi]
    xm, xp = c[i, yi, (xi - 1) % m], c[i, yi, (xi + 1) % m]
    dy_den, dx_den = ym - 2 * c0 + yp, xm - 2 * c0 + xp
    with np.errstate(divide="ignore", invalid="ignore"):
        ddy = np.where(dy_den < 0, np.clip(0.5 * (ym - yp) / dy_den, -0.5, 0.5), 0.0)
        ddx = np.where(dx_den < 0, np.clip(0.5 * (xm - xp) / dx_den, -0.5, 0.5), 0.0)
    return py + ddy, px + ddx


def estimate_fast(
    reference: FastSpectra,
    moving: FastSpectra,
    *,
    min_peak_ratio: float = 2.0,
    max_disagreement_px: float = 1.0,
    strip_max_shift: float | None = None,
) -> tuple[Shift, RowDrift | None]:
    """Fast shift and row drift of ``moving`` relative to ``reference`` from cached spectra.

    Whole frames: whitened cross-power (one complex product), one inverse real FFT, integer
    peak and ``peak_ratio`` from that surface, subpixel peak by Newton iterations on its
    trigonometric interpolant corrected for the apodization window. Strips: the same, batched,
    searched within ``strip_max_shift`` (default a third of the strip height) of the
    whole-frame shift; when the whole-frame shift is 1 px or more along y, the reference
    strips are recomputed at the rows the moving strips came from (one extra batched FFT).

    QC flags of the returned :class:`Shift`: ``"weak_peak"`` (whole-frame ``peak_ratio`` below
    ``min_peak_ratio``), ``"disagreement"`` (the mean of the usable strip estimates differs
    from the whole-frame estimate by more than ``max_disagreement_px``), ``"not_finite"``.
    ``error`` is twice the Cramer-Rao-type bound ``crlb``.

    Returns
    -------
    (Shift, RowDrift or None)
        Same sign convention as :func:`estimate_shift`; the row drift is None when either
        frame has no strips.
    """
    if reference.frame.shape != moving.frame.shape:
        raise ValueError(f"frame shapes differ: {reference.frame.shape} and {moving.frame.shape}")
    n, m = moving.frame.shape
    r = moving.whole * reference.whole.conj()
    c = sfft.irfft2(r, s=(n, m), workers=1)[None]
    py, px, ratio = _integer_peaks(c.copy())
    y0, x0 = _parabolic(c, py, px)
    dy, dx, peak = _newton_peak(r[None], y0, x0)
    dy, dx = float(dy[0]), float(dx[0])
    if abs(dy - py[0]) > 1.5 or abs(dx - px[0]) > 1.5:  # Newton wandered off: parabola
        dy, dx = float(y0[0]), float(x0[0])
    g = reference.grad_energy
    crlb = math.sqrt((reference.noise_var + moving.noise_var) / g) if g > 0 else math.inf
    flags: list[str] = []
    if not (math.isfinite(dy) and math.isfinite(dx)):
        flags.append("not_finite")
    if not ratio[0] >= min_peak_ratio:
        flags.append("weak_peak")
    rd = None
    if moving.strips is not None and reference.strips is not None and not flags:
        rd = _fast_row_drift(reference, moving, dy, dx, min_peak_ratio=min_peak_ratio,
                             max_shift=strip_max_shift)
        if rd.ok:
            ok = rd.strip_ok
            mean = (float(np.mean([s.dy for s, o in zip(rd.strips, ok, strict=True) if o])),
                    float(np.mean([s.dx for s, o in zip(rd.strips, ok, strict=True) if o])))
            if math.hypot(mean[0] - dy, mean[1] - dx) > max_disagreement_px:
                flags.append("disagreement")
    s = Shift(dy=dy, dx=dx, peak_ratio=float(ratio[0]), peak=float(peak[0]),
              error=_ERROR_FACTOR * crlb, crlb=crlb, ok=True)
    return _with_flags(s, flags), rd


def _fast_row_drift(reference: FastSpectra, moving: FastSpectra, dy: float, dx: float, *,
                    min_peak_ratio: float, max_shift: float | None) -> RowDrift:
    n, m = moving.frame.shape
    starts = moving.starts
    h = moving.strips.shape[1]
    iy = round(dy)
    if abs(iy) < _FAST_PRESHIFT_PX and np.array_equal(reference.starts, starts):
        ref_strips, pre = reference.strips, np.zeros(len(starts))
    else:
        # reference strips at the rows the moving strips saw (clamped to the frame)
        ref_starts = np.clip(starts - iy, 0, n - h)
        ref_strips = _fast_strips(reference.frame, ref_starts, h)
        pre = (starts - ref_starts).astype(np.float64)
    rs = moving.strips * ref_strips.conj()
    cs = sfft.irfft2(rs, s=(h, m), axes=(-2, -1), workers=1)
    lim = h / 3.0 if max_shift is None else max_shift
    k = len(starts)
    sy, sx, sratio = np.empty(k), np.empty(k), np.empty(k)
    # the search window differs per strip only through the pre-shift: group by it
    for p in np.unique(pre):
        sel = np.flatnonzero(pre == p)
        a, b, q = _integer_peaks(cs[sel].copy(), center=(dy - p, dx), max_shift=lim)
        sy[sel], sx[sel], sratio[sel] = a, b, q
    y0, x0 = _parabolic(cs, sy, sx)
    ny_, nx_, _ = _newton_peak(rs, y0, x0)
    wander = (np.abs(ny_ - sy) > 1.5) | (np.abs(nx_ - sx) > 1.5)
    ny_, nx_ = np.where(wander, y0, ny_), np.where(wander, x0, nx_)
    ny_ += pre
    ok = (sratio >= min_peak_ratio) & np.isfinite(ny_) & np.isfinite(nx_)
    centers = starts + (h - 1) / 2.0
    strips = tuple(Shift(float(a), float(b), float(q), 0.0, 0.0, 0.0, bool(o),
                         () if o else ("weak_peak",))
                   for a, b, q, o in zip(ny_, nx_, sratio, ok, strict=True))
    rows = np.arange(n, dtype=np.float64)
    if ok.sum() >= 2:
        ry = _interp_rows(rows, centers[ok], ny_[ok], None, "linear")
        rx = _interp_rows(rows, centers[ok], nx_[ok], None, "linear")
    else:
        ry, rx = np.full(n, dy), np.full(n, dx)
    return RowDrift(dy=ry, dx=rx, strip_rows=centers.astype(np.float64), strips=strips, strip_ok=ok)
