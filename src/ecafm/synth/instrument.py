"""The AFM: tip dilation, raster acquisition with drift and creep, Z drift, tilt, noise, scars.

Drift convention: at observed pixel (row r, col c) of frame f the instrument sees the true
(un-drifted, first-frame field of view) position (r + dy[f, r], c + dx[f, r]) in pixels. So
``skimage.registration.phase_cross_correlation(truth, observed)`` returns about (+dy, +dx).
Drift is continuous in time (piecewise linear between knots at every frame start: a linear
trend plus a random walk); creep adds an exponentially decaying offset in a frame's first rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from ecafm.synth.presets import SynthParams


@dataclass(frozen=True)
class Drift:
    """Piecewise-linear drift (px) as a function of time."""

    knot_t: np.ndarray
    knot_dy: np.ndarray
    knot_dx: np.ndarray

    def at(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return (np.interp(t, self.knot_t, self.knot_dy), np.interp(t, self.knot_t, self.knot_dx))


def make_drift(p: SynthParams, frame_starts: np.ndarray, t_end: float,
               rng: np.random.Generator) -> Drift:
    """Linear trend plus random walk; zero at the first frame's start."""
    knots = np.unique(np.concatenate([frame_starts, [t_end]]))
    tf = p.frame_time_s
    steps = rng.standard_normal((len(knots), 2)) * p.drift_rw_px * np.sqrt(
        np.diff(knots, prepend=knots[0])[:, None] / tf)
    rw = np.cumsum(steps, axis=0)
    rate = np.asarray(p.drift_rate_px_frame) / tf
    d = rw + (knots - knots[0])[:, None] * rate[None, :]
    d -= np.array([np.interp(frame_starts[0], knots, d[:, 0]),
                   np.interp(frame_starts[0], knots, d[:, 1])])
    return Drift(knots, d[:, 0], d[:, 1])


def tip_structure(p: SynthParams) -> np.ndarray | None:
    """Grey-dilation structuring element: minus the tip surface height (nm) around its apex."""
    if p.tip_shape == "none":
        return None
    px = p.pixel_size_nm
    depth = 50.0  # nm of tip used: deeper parts never touch at these aspect ratios
    if p.tip_shape == "paraboloid":
        r_max = np.sqrt(2 * p.tip_radius_nm * depth)
    else:
        r_max = depth * np.tan(np.deg2rad(p.tip_half_angle_deg)) + p.tip_radius_nm
    k = int(np.ceil(r_max / px))
    if k < 1:
        return None
    yy, xx = (np.mgrid[-k:k + 1, -k:k + 1] * px).astype(np.float64)
    rho = np.hypot(yy, xx)
    if p.tip_shape == "paraboloid":
        z = rho**2 / (2 * p.tip_radius_nm)
    else:  # sphere-capped cone
        ta = np.tan(np.deg2rad(p.tip_half_angle_deg))
        rt = p.tip_radius_nm * np.cos(np.deg2rad(p.tip_half_angle_deg))
        sphere = p.tip_radius_nm - np.sqrt(np.clip(p.tip_radius_nm**2 - rho**2, 0, None))
        z = np.where(rho <= rt, sphere, (rho - rt) / ta + sphere.max(where=rho <= rt,
                                                                       initial=0.0))
    return -z


def dilate(height: np.ndarray, structure: np.ndarray | None) -> np.ndarray:
    """What an ideal tip of the given shape records over ``height`` (grey dilation)."""
    if structure is None:
        return height
    return ndi.grey_dilation(height, structure=structure, mode="nearest")


def pink_noise(rng: np.random.Generator, n: int, sd: float) -> np.ndarray:
    """1/f noise of n samples (along acquisition time), scaled to SD ``sd``."""
    white = rng.standard_normal(n)  # always drawn: the stream does not depend on sd
    if sd <= 0:
        return np.zeros(n)
    spec = np.fft.rfft(white)
    f = np.fft.rfftfreq(n)
    f[0] = f[1]
    x = np.fft.irfft(spec / np.sqrt(f), n)
    return (x - x.mean()) / x.std() * sd


@dataclass
class FrameSampling:
    """Per-line times and true drift of one frame."""

    row_t: np.ndarray  #: acquisition time of each row, s
    dy: np.ndarray  #: px, per row (drift + creep)
    dx: np.ndarray
    creep_dy: np.ndarray
    creep_dx: np.ndarray


def frame_sampling(p: SynthParams, drift: Drift, t_start: float) -> FrameSampling:
    n = p.n_px
    row_t = t_start + np.arange(n) * p.line_time_s
    dy, dx = drift.at(row_t)
    decay = np.exp(-np.arange(n) / p.creep_tau_rows) if p.creep_px else np.zeros(n)
    cy, cx = 0.5 * p.creep_px * decay, p.creep_px * decay
    return FrameSampling(row_t, dy + cy, dx + cx, cy, cx)


def acquire(p: SynthParams, coeffs_a: np.ndarray, coeffs_b: np.ndarray, alpha: np.ndarray,
            fs: FrameSampling, frame_index: int, rng: np.random.Generator) -> np.ndarray:
    """Raster-scan one frame.

    Parameters
    ----------
    coeffs_a, coeffs_b : numpy.ndarray, shape (n_dom, n_dom)
        Cubic spline coefficients (``ndimage.spline_filter``) of the tip-dilated true surface at
        the frame start and end, on the simulation domain.
    alpha : numpy.ndarray, shape (n_px,)
        Fraction of the frame's change done when each row is scanned (0 at start, 1 at end).
    fs : FrameSampling
        Row times and true drift.

    Returns
    -------
    numpy.ndarray, shape (n_px, n_px)
        Observed height, nm.
    """
    n = p.n_px
    pad = p.pad_px
    rows = np.arange(n, dtype=np.float64)
    cols = np.arange(n, dtype=np.float64)
    yy = np.broadcast_to(pad + rows[:, None] + fs.dy[:, None], (n, n))
    xx = pad + cols[None, :] + fs.dx[:, None]
    coords = np.stack([yy.ravel(), xx.ravel()])
    a = ndi.map_coordinates(coeffs_a, coords, order=3, prefilter=False, mode="nearest")
    if coeffs_b is coeffs_a:
        img = a.reshape(n, n)
    else:
        b = ndi.map_coordinates(coeffs_b, coords, order=3, prefilter=False, mode="nearest")
        img = (a + (b - a) * np.repeat(alpha, n)).reshape(n, n)
    # instrument artifacts (each a no-op at zero amplitude)
    u = rng.standard_normal(6)
    t_rel = (fs.row_t - fs.row_t[0]) / p.frame_time_s
    img = img + p.z_drift_nm_per_frame * (frame_index + t_rel)[:, None]
    gy, gx = np.mgrid[0:n, 0:n] / n - 0.5
    img = img + p.tilt_nm * (u[0] * gy + u[1] * gx)
    img = img + p.line_offset_nm * rng.standard_normal(n)[:, None]
    img = img + p.noise_nm * rng.standard_normal((n, n))
    img = img + pink_noise(rng, n * n, p.pink_noise_nm).reshape(n, n)
    if rng.uniform() < p.scar_prob:
        r = int(rng.integers(0, n))
        c0 = int(rng.integers(0, n // 2))
        length = int(rng.integers(n // 8, n // 2))
        img[r, c0:c0 + length] += p.scar_height_nm * (1 if u[2] > 0 else -1)
    return img
