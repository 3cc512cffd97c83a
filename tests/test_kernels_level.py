"""Known-answer tests of ecafm.kernels.level (background leveling, scar removal)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from ecafm.kernels.level import LevelResult, level_frame, remove_scars

NOISE = 0.5  # nm, white noise of the synthetic frames


def _frame(seed: int, *, n: int = 256, cover: float = 0.3, order: int = 1):
    """Texture (1 nm RMS) + spherical caps 30-80 nm + tilt/bow + line offsets + noise.

    Returns raw, true (texture + deposits), true background mask.
    """
    rng = np.random.default_rng(seed)
    tex = ndi.gaussian_filter(rng.standard_normal((n, n)), 2.0)
    tex *= 1.0 / tex.std()
    dep = np.zeros((n, n))
    yy, xx = np.mgrid[:n, :n]
    while (dep > 0).mean() < cover:
        cy, cx = rng.uniform(0, n, 2)
        a, hh = rng.uniform(10, 30), rng.uniform(30, 80)
        big_r = (a**2 + hh**2) / (2 * hh)
        r2 = (yy - cy) ** 2 + (xx - cx) ** 2
        cap = np.where(r2 < a**2, np.sqrt(np.maximum(big_r**2 - r2, 0.0)) - (big_r - hh), 0.0)
        dep = np.maximum(dep, cap)
    true = tex + dep
    u = np.linspace(-1, 1, n)
    back = 40 * u[None, :] - 25 * u[:, None] + 7.0
    if order == 2:
        back = back + 15 * u[None, :] ** 2 - 10 * u[None, :] * u[:, None]
    offsets = rng.normal(0, 5, n)[:, None]
    raw = true + back + offsets + rng.normal(0, NOISE, (n, n))
    return raw, true, dep == 0


def _residual_tilt_and_lines(leveled: np.ndarray, true: np.ndarray, bg: np.ndarray):
    """Peak-to-peak of a plane fitted to (leveled - true) on true background; std of row medians."""
    d = leveled.astype(np.float64) - true
    n = d.shape[0]
    yy, xx = np.nonzero(bg & np.isfinite(d))
    a = np.stack([np.ones_like(yy), xx, yy], axis=1).astype(float)
    c, *_ = np.linalg.lstsq(a, d[yy, xx], rcond=None)
    tilt = (abs(c[1]) + abs(c[2])) * (n - 1)
    rows = (bg & np.isfinite(d)).any(axis=1)
    rowmed = np.nanmedian(np.where(bg, d, np.nan)[rows], axis=1)
    return tilt, np.std(rowmed)


def _naive_level(raw: np.ndarray) -> np.ndarray:
    """Plane fitted on ALL pixels, then row medians of all pixels (what deposits break)."""
    n = raw.shape[0]
    yy, xx = np.mgrid[:n, :n]
    a = np.stack([np.ones(n * n), xx.ravel(), yy.ravel()], axis=1)
    c, *_ = np.linalg.lstsq(a, raw.ravel(), rcond=None)
    r = raw - (a @ c).reshape(n, n)
    return r - np.median(r, axis=1, keepdims=True)


@pytest.mark.parametrize(
    ("seed", "cover", "order"),
    [(0, 0.2, 1), (1, 0.3, 1), (2, 0.4, 1), (3, 0.4, 1), (4, 0.3, 2)],
    ids=["cover20", "cover30", "cover40-a", "cover40-b", "order2-cover30"],
)
def test_level_frame_recovers_background(seed, cover, order):
    raw, true, bg = _frame(seed, cover=cover, order=order)
    res = level_frame(raw, order=order)
    assert isinstance(res, LevelResult)
    assert res.height.dtype == np.float32 and res.height.shape == raw.shape
    tilt, lines = _residual_tilt_and_lines(res.height, true, bg)
    assert tilt < NOISE, f"residual tilt {tilt:.3f} nm"
    assert lines < NOISE, f"residual line offsets {lines:.3f} nm"
    # deposits excluded from the background, background median at 0
    assert not (res.background & ~bg & (true > 5)).any()
    assert abs(np.median(res.height[res.background])) < 1e-3
    assert res.line_offsets.shape == (raw.shape[0],)
    assert res.plane.shape == ((3,) if order == 1 else (6,))


@pytest.mark.parametrize("seed", [1, 2], ids=["seed1", "seed2"])
def test_naive_fit_fails_the_bound(seed):
    """The bound is not trivially met: a fit on all pixels is biased by the deposits."""
    raw, true, bg = _frame(seed, cover=0.4)
    tilt, lines = _residual_tilt_and_lines(_naive_level(raw), true, bg)
    assert max(tilt, lines) > 5 * NOISE
    tilt0, lines0 = _residual_tilt_and_lines(level_frame(raw, n_iter=0).height, true, bg)
    assert max(tilt0, lines0) > 5 * NOISE


def test_nan_safe_and_input_untouched():
    raw, true, bg = _frame(5, cover=0.3)
    raw[40:60, 100:130] = np.nan
    raw[200, :] = np.nan  # a whole missing row
    before = raw.copy()
    res = level_frame(raw)
    np.testing.assert_array_equal(raw, before)
    assert np.isnan(res.height[40:60, 100:130]).all() and np.isnan(res.height[200]).all()
    assert not res.background[~np.isfinite(raw)].any()
    ok = np.isfinite(raw)
    tilt, lines = _residual_tilt_and_lines(np.where(ok, res.height, np.nan), true, bg & ok)
    assert tilt < NOISE and lines < NOISE


def test_user_mask_and_no_line_alignment():
    rng = np.random.default_rng(7)
    n = 128
    u = np.linspace(-1, 1, n)
    true = rng.normal(0, NOISE, (n, n))
    raw = true + 30 * u[None, :] + 10 * u[:, None] + 3
    raw[:20, :20] = 500.0  # a region the user excludes
    mask = np.ones((n, n), dtype=bool)
    mask[:20, :20] = False
    res = level_frame(raw, mask=mask, line_align="none", n_iter=1)
    assert not res.background[:20, :20].any()
    np.testing.assert_allclose(res.line_offsets, 0.0)
    d = res.height.astype(float)[mask] - true[mask]
    assert abs(np.mean(d)) < 0.05 and np.std(d) < 0.05 + 0.01
    # plane coefficients in normalized coordinates: u slope 30, v slope 10
    np.testing.assert_allclose(res.plane[1:], [30.0, 10.0], atol=0.05)


@pytest.mark.parametrize(
    ("h", "kwargs", "match"),
    [
        (np.zeros(5), {}, "2-D"),
        (np.zeros((4, 4), dtype=complex), {}, "real numeric dtype"),
        (np.zeros((8, 8)), {"order": 3}, "order must be 1 or 2"),
        (np.zeros((8, 8)), {"line_align": "mean"}, "line_align"),
        (np.zeros((8, 8)), {"n_iter": -1}, "n_iter"),
        (np.zeros((8, 8)), {"mask": np.ones((4, 4), bool)}, "mask shape"),
        (np.zeros((8, 8)), {"mask": np.ones((8, 8))}, "boolean"),
        (np.full((8, 8), np.nan), {}, "usable background pixels"),
    ],
    ids=["1d", "complex", "order", "line_align", "n_iter", "mask-shape", "mask-dtype", "all-nan"],
)
def test_level_frame_errors(h, kwargs, match):
    with pytest.raises(ValueError, match=match):
        level_frame(h, **kwargs)


def test_remove_scars():
    rng = np.random.default_rng(11)
    n = 128
    base = ndi.gaussian_filter(rng.standard_normal((n, n)), 3.0) * 20 + rng.normal(0, 0.3, (n, n))
    scarred = base.copy()
    scarred[40, 30:60] += 8.0  # one-row positive scar
    scarred[80:82, 90:100] -= 6.0  # two-row negative scar
    before = scarred.copy()
    out = remove_scars(scarred, threshold=4.0, min_length=4)
    np.testing.assert_array_equal(scarred, before)
    assert np.abs(out[40, 30:60] - base[40, 30:60]).max() < 1.5
    assert np.abs(out[80:82, 90:100] - base[80:82, 90:100]).max() < 1.5
    untouched = np.ones((n, n), bool)
    untouched[39:42, 28:62] = False
    untouched[79:83, 88:102] = False
    assert np.mean(out[untouched] != base[untouched]) < 0.01
    # max_length protects long runs
    out2 = remove_scars(scarred, threshold=4.0, min_length=4, max_length=20)
    np.testing.assert_array_equal(out2[40, 30:60], scarred[40, 30:60])


def test_remove_scars_errors():
    with pytest.raises(ValueError, match="max_width"):
        remove_scars(np.zeros((8, 8)), max_width=0)
    with pytest.raises(ValueError, match="max_length"):
        remove_scars(np.zeros((8, 8)), min_length=5, max_length=2)


def test_row_medians_of_rows_longer_than_the_sort_network(monkeypatch):
    """Rows of 513-1024 values are sorted in two halves and their medians picked from the two
    runs: the same values as one sort of the whole row (ties, NaN and +inf fill included)."""
    import ecafm.kernels.level as kl

    rng = np.random.default_rng(11)
    for t in range(60):
        ny, nx = int(rng.integers(1, 30)), int(rng.integers(513, 1025))
        s = rng.normal(size=(ny, nx)).astype(np.float32)
        if t % 3 == 0:
            s = np.round(s * 2).astype(np.float32)  # many ties
        ignore = rng.random((ny, nx)) < rng.random()
        s[ignore] = np.inf if t % 2 else np.nan
        counts = (~ignore).sum(axis=1)
        got = kl._sorted_row_medians(s.copy(), counts)
        monkeypatch.setattr(kl, "_SORT_NETWORK", 10**6)
        want = kl._sorted_row_medians(s.copy(), counts)
        monkeypatch.undo()
        np.testing.assert_array_equal(got, want)
        finite = counts > 0
        exp = [np.median(r[np.isfinite(r)].astype(np.float64)) for r in s[finite]]
        np.testing.assert_allclose(got[finite], exp, rtol=0, atol=1e-6)
