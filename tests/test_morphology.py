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
    assert d["pit_fraction"] == pytest.approx(3 * 49 / 1e4, rel=0.05)


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
    assert abs(d_rel["pit_fraction"] * h.size - 16) > 8
    d = descriptors_at(h, np.array([[64.0, 64.0]]), window_px=127, pixel_nm=20.0,
                       pit_radius_nm=30.0, pit_depth_nm=8.0)[0]
    assert d[DESCRIPTORS.index("pit_fraction")] == pytest.approx(16 / 127**2)
    assert d[DESCRIPTORS.index("pit_density_per_um2")] == pytest.approx(4 / (127 * 0.02) ** 2)


def _pitted(rng, sq_nm: float, n_pits: int, n: int = 128) -> np.ndarray:
    """Gaussian texture of RMS ``sq_nm`` (corr. ~2 px) with ``n_pits`` paraboloid pits 15 nm deep, 2 px radius."""
    z = ndi.gaussian_filter(rng.normal(size=(n, n)), 1.0)
    z *= sq_nm / z.std()
    yy, xx = np.mgrid[0:n, 0:n]
    for cy, cx in rng.uniform(4, n - 4, size=(n_pits, 2)):
        z -= 15.0 * np.sqrt(np.clip(1 - ((yy - cy) ** 2 + (xx - cx) ** 2) / 4.0, 0, None))
    return z


def test_porosity_proxy_is_blind_to_roughness_and_grows_with_pits():
    """Texture-relative pit fraction: ~0 for pit-free textures of any roughness, rising with the pits."""

    def proxy(z):
        return patch_descriptors(z, 40.0, pit_radius_nm=80.0)["porosity_proxy"]

    rng = np.random.default_rng(5)
    smooth, rough = proxy(_pitted(rng, 2.0, 0)), proxy(_pitted(rng, 10.0, 0))
    assert smooth < 1e-3 and rough < 1e-3  # a 5x rougher texture has no pits either
    bare, few, many = proxy(_pitted(rng, 4.0, 0)), proxy(_pitted(rng, 4.0, 60)), proxy(_pitted(rng, 4.0, 240))
    assert few > bare + 5e-3 and many > few + 3e-3
    # a pit is judged against its own texture: the same pits count more on smoother ground
    assert proxy(_pitted(rng, 2.0, 60)) > few
    # on flat ground nearly every pit pixel counts (60 pits of 2 px radius cover 4.4% of the frame)
    flat = proxy(_pitted(rng, 0.0, 60) + rng.normal(0, 0.1, (128, 128)))
    assert 0.03 < flat < 0.05
    # the fixed-depth pit fraction counts a rough texture's valleys as pits; the relative rule does not
    from ecafm.kernels.morphology import pit_mask

    bare_rough = _pitted(rng, 10.0, 0)
    assert pit_mask(bare_rough, 40.0, radius_nm=40.0, depth_nm=10.0).mean() > 0.01
    assert proxy(bare_rough) < 1e-3
    from ecafm.kernels.morphology import relative_pits

    assert not relative_pits(np.zeros((32, 32)), 40.0, radius_nm=80.0)[0].any()  # flat ground has no pits


def test_sq_upper_measures_the_texture_apart_from_its_pits():
    rng = np.random.default_rng(6)
    bare, pitted = _pitted(rng, 5.0, 0), _pitted(rng, 5.0, 150)
    d0, d1 = patch_descriptors(bare, 40.0), patch_descriptors(pitted, 40.0)
    assert d0["Sq_upper"] == pytest.approx(d0["Sq"], rel=0.05)  # symmetric surface: the same as Sq
    assert d1["Sq"] > 1.15 * d0["Sq"]  # pits (7% of the area) inflate Sq by over 15%
    assert d1["Sq_upper"] == pytest.approx(5.0, rel=0.07)  # Sq_upper by a few % (median shift)


def test_crest_rms_scales_with_the_texture_and_ignores_pits():
    rng = np.random.default_rng(7)
    a, b = patch_descriptors(_pitted(rng, 3.0, 0), 40.0, pit_radius_nm=80.0), \
        patch_descriptors(_pitted(rng, 6.0, 0), 40.0, pit_radius_nm=80.0)
    assert b["crest_rms"] / a["crest_rms"] == pytest.approx(2.0, rel=0.1)  # linear in the amplitude
    c = patch_descriptors(_pitted(rng, 6.0, 150), 40.0, pit_radius_nm=80.0)
    assert c["crest_rms"] == pytest.approx(b["crest_rms"], rel=0.1)  # pits add black energy only
    assert c["Sq"] > 1.15 * b["Sq"]


def test_porosity_proxy_ranks_the_generators_porosity_apart_from_roughness():
    """On the demo preset's pre-plating surface (with its 0.5 nm noise), against the generator's truth.

    The proxy must rank the true pit-area fraction (Gaussian, 400 nm) better than a fixed-depth pit
    fraction and follow the independent roughness field less.
    """
    from scipy.stats import spearmanr

    from ecafm.kernels.morphology import pit_mask, relative_pits, window_mean
    from ecafm.synth import Generator, resolve_params

    p = resolve_params("demo", None)
    px, pad = p.scan_size_nm / p.n_px, int(p.pad_frac * p.n_px)
    grid = (slice(pad, pad + p.n_px, 6),) * 2  # the field of view, every 6th pixel
    rho = {"relative": [], "fixed": []}
    rho_rough = {"relative": [], "fixed": []}
    for seed in range(6):
        sub = Generator(p, seed).substrate
        h = sub.height + np.random.default_rng(seed).normal(0, p.noise_nm, sub.height.shape)
        ok = np.ones(h.shape, bool)
        maps = {"relative": relative_pits(h, px, radius_nm=p.pit_radius_nm)[0],
                "fixed": pit_mask(h, px, radius_nm=p.pit_radius_nm, depth_nm=10.0)}
        for k, m in maps.items():
            frac = window_mean(m.astype(float), ok, 33)[grid].ravel()
            rho[k].append(spearmanr(frac, sub.porosity[grid].ravel())[0])
            rho_rough[k].append(abs(spearmanr(frac, sub.roughness[grid].ravel())[0]))
    assert np.median(rho["relative"]) >= 0.75, rho
    assert np.median(rho["relative"]) > np.median(rho["fixed"]) + 0.03, rho
    assert np.median(rho_rough["relative"]) < np.median(rho_rough["fixed"]) - 0.1, rho_rough


def test_mean_curvature_of_a_dome_and_a_bowl():
    """Paraboloid z = -r^2 / (2 R): Laplacian / 2 = -1 / R everywhere; a bowl has +1 / R."""
    yy, xx = np.mgrid[0:33, 0:33] * 10.0  # nm
    r2 = (yy - 160.0) ** 2 + (xx - 170.0) ** 2
    dome = patch_descriptors(-r2 / (2 * 5000.0), 10.0)["mean_curvature"]
    bowl = patch_descriptors(r2 / (2 * 2000.0), 10.0)["mean_curvature"]
    assert dome == pytest.approx(-1 / 5000.0, rel=1e-9) and bowl == pytest.approx(1 / 2000.0, rel=1e-9)
    holed = -r2 / (2 * 5000.0)
    holed[10:14, 3:9] = np.nan  # NaN pixels and their neighbours leave the average
    assert patch_descriptors(holed, 10.0)["mean_curvature"] == pytest.approx(-1 / 5000.0, rel=1e-9)


def test_windows_computed_together_equal_each_window_alone():
    """descriptors_at stacks the windows of one shape; each row must be the window's own descriptors
    (plane, moments, pit count, correlation length, Hurst), with NaN holes and clipped edge windows."""
    rng = np.random.default_rng(9)
    h = ndi.gaussian_filter(rng.normal(size=(120, 140)), 1.5) * 5
    h[30:36, 40:52] = np.nan
    for cy, cx in rng.uniform(5, 115, (25, 2)):
        h[int(cy):int(cy) + 3, int(cx):int(cx) + 3] -= 40.0  # pits for the 2 Sq rule
    c = np.r_[rng.uniform(0, 119, (40, 2)), [[0.0, 0.0], [119.0, 139.0], [33.0, 45.0]]]
    got = descriptors_at(h, c, window_px=21, pixel_nm=20.0)
    for i, (y, x) in enumerate(c):
        y0, x0 = max(0, int(round(y)) - 10), max(0, int(round(x)) - 10)
        d = patch_descriptors(h[y0:int(round(y)) + 11, x0:int(round(x)) + 11], 20.0, pit_radius_nm=20.0)
        np.testing.assert_allclose(got[i], [d[k] for k in DESCRIPTORS], rtol=1e-9, atol=1e-12)
    assert (got[:, DESCRIPTORS.index("pit_density_per_um2")] > 0).sum() >= 10


def test_plane_and_hurst_against_lstsq_and_polyfit():
    """The batched plane fit and Hurst slope are the per-patch lstsq and polyfit."""
    from ecafm.kernels.morphology import _detrend, _hurst

    rng = np.random.default_rng(10)
    p = rng.normal(size=(6, 15, 19)) + np.arange(19) * 0.3 - np.arange(15)[:, None] * 0.2
    p[2, 3:5, 4:9] = np.nan
    yy, xx = np.mgrid[0:15, 0:19]
    for k in range(6):
        ok = np.isfinite(p[k])
        a = np.c_[np.ones(ok.sum()), xx[ok], yy[ok]]
        coef = np.linalg.lstsq(a, p[k][ok], rcond=None)[0]
        np.testing.assert_allclose(_detrend(p)[k], p[k] - (coef[0] + coef[1] * xx + coef[2] * yy), atol=1e-12)
    z = ndi.gaussian_filter(rng.normal(size=(4, 40, 40)), (0, 1, 1))
    lags = np.array([1, 2, 3, 4, 6, 8])
    for k in range(4):
        s = [np.mean(np.concatenate([(z[k][:, g:] - z[k][:, :-g]).ravel(), (z[k][g:] - z[k][:-g]).ravel()]) ** 2)
             for g in lags]
        assert _hurst(z)[k] == pytest.approx(np.clip(np.polyfit(np.log(lags), np.log(s), 1)[0] / 2, 0, 1), abs=1e-12)
