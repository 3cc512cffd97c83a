"""Areal descriptors on surfaces whose parameters are known analytically."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from ecafm.kernels.morphology import DESCRIPTORS, descriptors_at, patch_descriptors, tile_centers


def test_gaussian_surface_moments():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 3.0, (256, 256)) + 0.05 * np.arange(256)[None, :]  # plus a tilt
    d = patch_descriptors(z, 10.0)
    assert d["Sq"] == pytest.approx(3.0, rel=0.02)
    assert d["Sa"] == pytest.approx(3.0 * np.sqrt(2 / np.pi), rel=0.02)
    assert abs(d["Ssk"]) < 0.05 and abs(d["Sku_excess"]) < 0.1  # excess kurtosis of a Gaussian: 0


def test_sinusoid_slope_and_sdr():
    x = np.arange(200) * 5.0  # nm
    a, lam = 10.0, 200.0
    z = np.tile(a * np.cos(2 * np.pi * (x + 2.5) / lam), (64, 1))  # symmetric: no plane to remove
    d = patch_descriptors(z, 5.0)
    # mean |dz/dx| of a sine: 4 a / lam
    assert d["mean_slope"] == pytest.approx(4 * a / lam, rel=0.03)
    assert d["Sq"] == pytest.approx(a / np.sqrt(2), rel=0.02)
    assert d["Sz"] == pytest.approx(2 * a, rel=0.01)


def test_correlation_length_and_hurst_order():
    rng = np.random.default_rng(1)
    w = rng.normal(size=(256, 256))
    short = patch_descriptors(ndi.gaussian_filter(w, 2), 1.0)["corr_length_nm"]
    long = patch_descriptors(ndi.gaussian_filter(w, 8), 1.0)["corr_length_nm"]
    # Gaussian-filtered white noise: ACF exp(-r^2 / (4 s^2)) -> 1/e at r = 2 s
    assert short == pytest.approx(4.0, rel=0.25) and long == pytest.approx(16.0, rel=0.25)
    smooth = patch_descriptors(ndi.gaussian_filter(w, 8), 1.0)["hurst"]
    rough = patch_descriptors(w, 1.0)["hurst"]
    assert smooth > 0.8 and rough < 0.2


def test_pits_and_porosity():
    z = np.zeros((100, 100))
    rng = np.random.default_rng(2)
    z += rng.normal(0, 0.5, z.shape)
    for cy, cx in [(20, 20), (50, 70), (80, 30)]:
        z[cy - 3:cy + 4, cx - 3:cx + 4] = -20.0
    d = patch_descriptors(z, 10.0)  # 1 um x 1 um
    assert d["pit_density_per_um2"] == pytest.approx(3.0)
    assert d["porosity_proxy"] == pytest.approx(3 * 49 / 1e4, rel=0.05)


def test_windows_and_tiles():
    rng = np.random.default_rng(3)
    h = rng.normal(0, 1, (64, 64))
    h[:, 32:] *= 4
    c = tile_centers(h.shape, 32)
    assert c.tolist() == [[16, 16], [16, 48], [48, 16], [48, 48]]
    d = descriptors_at(h, c, window_px=31, pixel_nm=1.0)
    sq = d[:, DESCRIPTORS.index("Sq")]
    assert sq[1] / sq[0] == pytest.approx(4, rel=0.15)
    with pytest.raises(ValueError, match="at least 4x4"):
        patch_descriptors(np.zeros((2, 10)), 1.0)


def test_tophat_pits_ignore_broad_valleys_of_a_rough_texture():
    """Porosity proxy from pit_mask: small deep pits count, broad texture valleys do not."""
    from ecafm.kernels.morphology import pit_mask

    rng = np.random.default_rng(4)
    yy, xx = np.mgrid[0:128, 0:128]
    h = 30.0 * np.sin(2 * np.pi * xx / 32) * np.sin(2 * np.pi * yy / 32)  # valleys 30 nm deep, 16 px wide
    h += rng.normal(0, 0.5, h.shape)
    pits = [(20, 20), (60, 90), (100, 40), (90, 100)]
    for cy, cx in pits:
        h[cy:cy + 2, cx:cx + 2] -= 15.0  # 2 x 2 px pits, 15 nm deep
    m = pit_mask(h, 20.0, radius_nm=30.0, depth_nm=8.0)  # disk of 1 px
    assert m.sum() == 4 * 4
    assert all(m[cy, cx] for cy, cx in pits)
    # the relative rule (2 Sq below the patch mean) counts valley bottoms and misses pits on crests
    d_rel = patch_descriptors(h, 20.0)
    assert abs(d_rel["porosity_proxy"] * h.size - 16) > 8
    d = descriptors_at(h, np.array([[64.0, 64.0]]), window_px=127, pixel_nm=20.0,
                       pit_radius_nm=30.0, pit_depth_nm=8.0)[0]
    assert d[DESCRIPTORS.index("porosity_proxy")] == pytest.approx(16 / 127**2)
    assert d[DESCRIPTORS.index("pit_density_per_um2")] == pytest.approx(4 / (127 * 0.02) ** 2)
