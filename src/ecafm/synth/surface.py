"""The pristine substrate: correlated rough surface with porous (pitted) patches.

All arrays are on the simulation domain: the field of view plus ``pad_px`` on each side,
indexed [row=y, col=x] in pixels of ``pixel_size_nm``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from ecafm.synth.presets import SynthParams


@dataclass(frozen=True)
class Substrate:
    """Pristine surface and its true descriptor maps on the simulation domain."""

    height: np.ndarray  #: nm, pristine height including pits
    porosity: np.ndarray  #: local pit-area fraction (Gaussian window)
    roughness: np.ndarray  #: designed local RMS roughness of the rough component, nm
    sei: np.ndarray  #: SEI residue thickness where ever covered, nm
    por_mean: float
    por_sd: float
    rough_mean: float
    rough_sd: float

    def z_porosity(self, values: np.ndarray) -> np.ndarray:
        return (values - self.por_mean) / self.por_sd

    def z_roughness(self, values: np.ndarray) -> np.ndarray:
        return (values - self.rough_mean) / self.rough_sd


def _unit_field(rng: np.random.Generator, n: int, sigma_px: float) -> np.ndarray:
    """Gaussian-filtered white noise scaled to unit SD."""
    f = ndi.gaussian_filter(rng.standard_normal((n, n)), max(sigma_px, 0.5), mode="wrap")
    return (f - f.mean()) / f.std()


def make_substrate(p: SynthParams, rng: np.random.Generator) -> Substrate:
    """Draw the pristine substrate for parameters ``p``."""
    n = p.n_px + 2 * p.pad_px
    px = p.pixel_size_nm
    # rough component, locally modulated amplitude
    base = _unit_field(rng, n, p.corr_length_nm / px / 2.0)
    modul = _unit_field(rng, n, p.rough_patch_nm / px / 2.0)
    amp = p.sq_nm * np.exp(p.rough_contrast * modul - 0.5 * p.rough_contrast**2)
    height = amp * base
    # porous patches: pit intensity = sum of Gaussian blobs
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float64)
    intensity = np.zeros((n, n))
    for _ in range(p.n_porous_patches):
        cy, cx = rng.uniform(0.15 * n, 0.85 * n, size=2)
        r = p.porous_patch_radius_nm / px * rng.uniform(0.7, 1.3)
        intensity += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
    pits_per_px = np.clip(intensity, 0, 1) * p.pit_density_um2 * (px * 1e-3) ** 2
    counts = rng.poisson(pits_per_px)
    pit_y, pit_x = np.nonzero(counts)
    pit_y = np.repeat(pit_y, counts[pit_y, pit_x]) + rng.uniform(0, 1, counts.sum())
    pit_x = np.repeat(pit_x, counts[counts > 0]) + rng.uniform(0, 1, counts.sum())
    pits = np.zeros((n, n))
    rad = p.pit_radius_nm / px
    for py, pxx in zip(pit_y, pit_x, strict=True):
        r = rad * rng.uniform(0.6, 1.4)
        d = p.pit_depth_nm * rng.uniform(0.5, 1.5)
        y0, y1 = max(0, int(py - r - 1)), min(n, int(py + r + 2))
        x0, x1 = max(0, int(pxx - r - 1)), min(n, int(pxx + r + 2))
        rho2 = (yy[y0:y1, x0:x1] - py) ** 2 + (xx[y0:y1, x0:x1] - pxx) ** 2
        g = np.clip(1 - rho2 / (r * r), 0, None)
        pits[y0:y1, x0:x1] = np.maximum(pits[y0:y1, x0:x1], d * np.sqrt(g))
    height = height - pits
    porosity = ndi.gaussian_filter((pits > 1.0).astype(np.float64), p.porosity_window_nm / px,
                                   mode="nearest")
    sei = p.sei_min_nm + (p.sei_max_nm - p.sei_min_nm) * (
        0.5 + 0.5 * np.tanh(_unit_field(rng, n, 100.0 / px)))
    por_sd = float(porosity.std())
    rough_sd = float(amp.std())
    return Substrate(
        height=height,
        porosity=porosity,
        roughness=amp,
        sei=sei,
        por_mean=float(porosity.mean()),
        por_sd=por_sd if por_sd > 0 else 1.0,
        rough_mean=float(amp.mean()),
        rough_sd=rough_sd if rough_sd > 0 else 1.0,
    )
