"""Initial-morphology descriptors of a surface patch (ISO 25178 style areal parameters).

Pure numpy/scipy: a height patch (y, x) in nm and its pixel size in, a dict of descriptors out.
Conventions: heights are referenced to the patch mean after removing its least-squares plane;
kurtosis is reported as *excess* kurtosis (0 for a Gaussian surface), as Gwyddion does.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

DESCRIPTORS = ("Sq", "Sq_upper", "Sa", "Ssk", "Sku_excess", "Sz", "Sdr", "mean_slope", "mean_curvature",
               "corr_length_nm", "hurst", "pit_density_per_um2", "pit_fraction", "porosity_proxy", "crest_rms")

#: energy floor (nm^2 per pixel) of the top-hat ratio, so a flat patch has asymmetry 0, not NaN
_EPS_NM2 = 1e-6


def _detrend(p: np.ndarray) -> np.ndarray:
    ny, nx = p.shape
    yy, xx = np.mgrid[0:ny, 0:nx]
    ok = np.isfinite(p)
    a = np.c_[np.ones(ok.sum()), xx[ok], yy[ok]]
    coef, *_ = np.linalg.lstsq(a, p[ok], rcond=None)
    return p - (coef[0] + coef[1] * xx + coef[2] * yy)


def _corr_length(z: np.ndarray, px: float) -> float:
    """Distance (nm) where the radially averaged autocorrelation falls to 1/e."""
    f = np.fft.rfft2(z, s=(2 * z.shape[0], 2 * z.shape[1]))
    acf = np.fft.irfft2(np.abs(f) ** 2)[: z.shape[0], : z.shape[1]]
    acf /= acf[0, 0]
    r = np.hypot(*np.mgrid[0 : z.shape[0], 0 : z.shape[1]]).astype(int)
    prof = np.bincount(r.ravel(), acf.ravel()) / np.maximum(np.bincount(r.ravel()), 1)
    below = np.flatnonzero(prof < 1 / np.e)
    if below.size == 0:
        return float("nan")
    k = below[0]
    # linear interpolation between k-1 and k
    a, b = prof[k - 1], prof[k]
    return float((k - 1 + (a - 1 / np.e) / (a - b)) * px)


def _hurst(z: np.ndarray) -> float:
    """Hurst exponent from the height-height correlation (structure function) at small lags."""
    lags = np.array([1, 2, 3, 4, 6, 8])
    lags = lags[lags < min(z.shape) // 3]
    if lags.size < 3:
        return float("nan")
    s = [np.mean(np.concatenate([(z[:, lag:] - z[:, :-lag]).ravel(), (z[lag:] - z[:-lag]).ravel()]) ** 2)
         for lag in lags]
    slope = np.polyfit(np.log(lags), np.log(np.maximum(s, 1e-30)), 1)[0]
    return float(np.clip(slope / 2, 0, 1))


def tophat_energy(height: np.ndarray, pixel_nm: float, *, radius_nm: float) -> tuple[np.ndarray, np.ndarray]:
    """Squared black and white top-hats (nm^2) with a disk of ``round(radius_nm / pixel_nm)`` px.

    The disk is as wide as a pit, so the closing fills whole pits and the black top-hat is
    their depth; the white top-hat is the same measure for protrusions. On a texture without
    pits (any symmetric height distribution) both have the same expected energy, at any
    roughness. NaN pixels get zero energy.
    """
    from skimage.morphology import black_tophat, disk, white_tophat

    h = np.asarray(height, float)
    ok = np.isfinite(h)
    z = np.where(ok, h, np.nanmedian(h) if ok.any() else 0.0)
    fp = disk(max(1, int(round(radius_nm / pixel_nm))))
    return np.where(ok, black_tophat(z, fp) ** 2, 0.0), np.where(ok, white_tophat(z, fp) ** 2, 0.0)


def pit_asymmetry(black_energy: float, white_energy: float, n_px: int) -> float:
    """Porosity proxy: ``ln`` of the black over the white top-hat energy of a window.

    0 for a surface whose depressions mirror its protrusions, whatever its roughness; pits add
    black energy only. Unlike a pit-area fraction above a fixed depth it is not inflated by the
    valleys of a rough texture (they come with matching crests), so it separates porosity from
    roughness: on the generator's demo preset, with ``crest_rms`` beside it, the pipeline's
    dead-Li odds ratio per SD comes out 0.76x the truth on 20 fresh seeds (geometric mean; 0.89x
    on the 20 seeds it was chosen on), against 0.57x for the pit-area fraction with Sq.
    """
    e = _EPS_NM2 * max(n_px, 1)
    return float(np.log((black_energy + e) / (white_energy + e)))


def patch_descriptors(patch: np.ndarray, pixel_nm: float, *, pit_k: float = 2.0,
                      pit_radius_nm: float | None = None, tophat: bool = True) -> dict[str, float]:
    """Areal descriptors of one height patch.

    Parameters
    ----------
    patch : ndarray, shape (y, x)
        Heights in nm (NaN allowed; NaN pixels are filled with the mean for the spectral terms).
    pixel_nm : float
        Pixel size (nm).
    pit_k : float
        Pits are connected regions deeper than ``pit_k * Sq`` below the mean (``pit_density``,
        ``pit_fraction``).
    pit_radius_nm : float, optional
        Disk of the top-hats of ``porosity_proxy`` (:func:`pit_asymmetry`); default one pixel.
    tophat : bool
        False: leave ``porosity_proxy`` and ``crest_rms`` NaN (the caller takes them from
        top-hats of the whole frame, as :func:`descriptors_at` does).

    Returns
    -------
    dict with :data:`DESCRIPTORS` (heights nm, slopes dimensionless, curvature 1/nm, densities
    per um^2, pit fraction = area fraction of pits, porosity proxy = :func:`pit_asymmetry`,
    crest RMS = RMS of the white top-hat of the same disk, nm: the fine-scale roughness of the
    crests, blind to pits).
    ``Sq_upper`` is the RMS of the heights above the median about the median: equal to Sq on a
    symmetric surface and blind to pits, so it measures the texture's roughness apart from them.
    """
    p = np.asarray(patch, float)
    if p.ndim != 2 or min(p.shape) < 4:
        raise ValueError(f"patch must be 2-D and at least 4x4 px, got shape {p.shape}")
    if not np.isfinite(p).any():
        return dict.fromkeys(DESCRIPTORS, float("nan"))
    z = _detrend(p)
    ok = np.isfinite(z)
    v = z[ok]
    v = v - v.mean()
    sq = float(np.sqrt(np.mean(v**2)))
    up = v - np.median(v)
    up = up[up > 0]
    out = {"Sq": sq, "Sq_upper": float(np.sqrt(np.mean(up**2))) if up.size else 0.0,
           "Sa": float(np.mean(np.abs(v)))}
    out["Ssk"] = float(np.mean(v**3) / sq**3) if sq > 0 else 0.0
    out["Sku_excess"] = float(np.mean(v**4) / sq**4 - 3.0) if sq > 0 else 0.0
    out["Sz"] = float(v.max() - v.min())
    zf = np.where(ok, z - np.nanmean(z), 0.0)
    gy, gx = np.gradient(zf, pixel_nm)
    slope2 = gx**2 + gy**2
    out["Sdr"] = float(np.mean(np.sqrt(1 + slope2[ok]) - 1))
    out["mean_slope"] = float(np.mean(np.sqrt(slope2[ok])))
    lap = ndi.laplace(zf) / pixel_nm**2
    out["mean_curvature"] = float(np.mean(lap[ok]) / 2)
    out["corr_length_nm"] = _corr_length(zf, pixel_nm)
    out["hurst"] = _hurst(zf)
    pits = ok & (zf < -pit_k * sq)
    lab, n = ndi.label(pits)
    area_um2 = ok.sum() * (pixel_nm / 1000.0) ** 2
    out["pit_density_per_um2"] = float(n / area_um2) if area_um2 > 0 else float("nan")
    out["pit_fraction"] = float(pits.sum() / ok.sum())
    if tophat:
        eb, ew = tophat_energy(p, pixel_nm, radius_nm=pit_radius_nm if pit_radius_nm else pixel_nm)
        out["porosity_proxy"] = pit_asymmetry(float(eb.sum()), float(ew.sum()), int(ok.sum()))
        out["crest_rms"] = float(np.sqrt(ew.sum() / ok.sum()))
    else:
        out["porosity_proxy"] = out["crest_rms"] = float("nan")
    return out


def pit_mask(height: np.ndarray, pixel_nm: float, *, radius_nm: float, depth_nm: float) -> np.ndarray:
    """Pits: pixels deeper than ``depth_nm`` below a grey-scale closing with a disk (black top-hat).

    The disk has radius ``floor(radius_nm / pixel_nm)`` px (at least 1). The closing fills
    depressions narrower than the disk (pits; wider pits count by their cores) but follows the
    broader valleys of the surface texture, so the top-hat is the depth of the pits alone. A
    larger disk also fills texture valleys: on the generator (pits of 60 nm radius, texture
    correlation length 100 nm, 39 nm pixels) a 2 px disk ranks true porosity with Spearman
    0.3, a 1 px disk 0.6-0.85. NaN pixels are never pits.
    """
    from skimage.morphology import black_tophat, disk

    h = np.asarray(height, float)
    ok = np.isfinite(h)
    z = np.where(ok, h, np.nanmedian(h) if ok.any() else 0.0)
    r = max(1, int(np.floor(radius_nm / pixel_nm)))
    return ok & (black_tophat(z, disk(r)) > depth_nm)


def descriptors_at(height: np.ndarray, centers_yx: np.ndarray, *, window_px: int, pixel_nm: float,
                   pit_radius_nm: float | None = None, pit_depth_nm: float | None = None) -> np.ndarray:
    """Descriptors of square windows (side ``window_px``) centred on each (y, x); shape (n, 15).

    Windows are clipped at the frame edge (the clipped size is a confounder the caller records).
    With ``pit_radius_nm`` and ``pit_depth_nm``, pits are found once on the whole frame
    (:func:`pit_mask`) and ``pit_fraction`` is the pit-area fraction of the window,
    ``pit_density_per_um2`` the number of pits touching it per area; the top-hat energies of
    ``porosity_proxy`` are also taken on the whole frame (no window-edge effects). Without
    them, pits are the patch's own pixels deeper than 2 Sq (a relative rule that also counts
    the valleys of a rough texture: on the generator it ranks true porosity with Spearman
    0.1-0.2, the top-hat rule 0.6-0.85).
    """
    h = np.asarray(height, float)
    c = np.atleast_2d(np.asarray(centers_yx, float))
    half = window_px // 2
    out = np.full((len(c), len(DESCRIPTORS)), np.nan)
    pits = lab = None
    if pit_radius_nm is not None and pit_depth_nm is not None:
        pits = pit_mask(h, pixel_nm, radius_nm=pit_radius_nm, depth_nm=pit_depth_nm)
        lab, _ = ndi.label(pits)
        eb, ew = tophat_energy(h, pixel_nm, radius_nm=pit_radius_nm)
    jd, jf = DESCRIPTORS.index("pit_density_per_um2"), DESCRIPTORS.index("pit_fraction")
    jp, jc = DESCRIPTORS.index("porosity_proxy"), DESCRIPTORS.index("crest_rms")
    for i, (y, x) in enumerate(c):
        y0, y1 = max(0, int(round(y)) - half), min(h.shape[0], int(round(y)) + half + 1)
        x0, x1 = max(0, int(round(x)) - half), min(h.shape[1], int(round(x)) + half + 1)
        if y1 - y0 >= 4 and x1 - x0 >= 4:
            d = patch_descriptors(h[y0:y1, x0:x1], pixel_nm, tophat=pits is None)
            out[i] = [d[k] for k in DESCRIPTORS]
            if pits is not None:
                ok = np.isfinite(h[y0:y1, x0:x1])
                n_ok = max(int(ok.sum()), 1)
                out[i, jf] = float(pits[y0:y1, x0:x1].sum() / n_ok)
                e_white = float(ew[y0:y1, x0:x1].sum())
                out[i, jp] = pit_asymmetry(float(eb[y0:y1, x0:x1].sum()), e_white, n_ok)
                out[i, jc] = float(np.sqrt(e_white / n_ok))
                n_pits = np.unique(lab[y0:y1, x0:x1]).size - (0 in lab[y0:y1, x0:x1])
                out[i, jd] = float(n_pits / (n_ok * (pixel_nm / 1000.0) ** 2))
    return out


def tile_centers(shape: tuple[int, int], tile_px: int) -> np.ndarray:
    """Centres (y, x) of a regular grid of non-overlapping tiles covering the frame."""
    ny, nx = shape
    ys = np.arange(tile_px // 2, ny - tile_px // 2 + 1, tile_px)
    xs = np.arange(tile_px // 2, nx - tile_px // 2 + 1, tile_px)
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    return np.c_[yy.ravel(), xx.ravel()].astype(float)
