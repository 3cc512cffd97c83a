"""Synthetic EC-AFM generator: conservation, morphology effects, drift truth, files, determinism."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage as ndi

from ecafm.constants import get_metal
from ecafm.store import logical_hash, open_cube
from ecafm.synth import Generator, generate, resolve_params, synth
from ecafm.synth.physics import EVENT_DEAD


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    synth("demo", 1, out)
    return out


# ----------------------------------------------------------------------------- constants
def test_metal_constants():
    li = get_metal("Li")
    assert li.molar_volume_cm3_mol == pytest.approx(12.996, abs=1e-3)
    assert li.atoms_per_nm3 == pytest.approx(46.34, abs=0.01)
    assert li.charge_per_nm3_C == pytest.approx(7.42e-18, rel=1e-3)
    assert get_metal("Zn").z == 2
    with pytest.raises(ValueError, match="known metals: Li, Na, Zn"):
        get_metal("K")


def test_exact_si_constants_are_scipys():
    from scipy import constants

    from ecafm.constants import AVOGADRO, ELEMENTARY_CHARGE_C

    assert AVOGADRO == constants.Avogadro
    assert ELEMENTARY_CHARGE_C == constants.elementary_charge


# ----------------------------------------------------------------------------- conservation
def test_volume_balance_per_plating_half_cycle(demo):
    ds = open_cube(demo / "truth.zarr").load()
    cpv = ds.attrs["charge_per_nm3_C"]
    ratio = ds.attrs["domain_area_fraction_of_electrode"]
    # 1. recorded per-site volumes vs the charge the log passed in each plating half-cycle
    from ecafm.io.echem import read_ec_log

    d = read_ec_log(demo / "ec" / "log.mpt").data
    dq = np.diff(d.charge_C.to_numpy(), prepend=0.0)  # charge of the interval ending at a row
    for c in range(ds.sizes["cycle_index"]):
        q_plate = float(dq[(d.half_cycle == 2 * c).to_numpy() & (dq > 0)].sum())
        expected = q_plate * ratio / cpv
        site_sum = float(ds.site_plated_nm3[:, c].sum())
        assert site_sum == pytest.approx(expected, rel=5e-3)
        assert float(ds.plated_volume_nm3[c]) == pytest.approx(site_sum, rel=1e-9)
    # 2. rendered height volume between frames of the same plating half-cycle
    errors = []
    for hc in np.unique(ds.half_cycle.values[ds.phase.values == 1]):
        idx = np.flatnonzero((ds.half_cycle.values == hc) & (ds.phase.values == 1))
        a, b = idx[0], idx[-1]
        dv = float(ds.deposit_volume_nm3[b] - ds.deposit_volume_nm3[a])
        dq = float(ds.charge_C[b] - ds.charge_C[a]) * ratio / cpv
        errors.append(abs(dv / dq - 1))
    assert max(errors) < 5e-3, errors
    # 3. the field of view holds roughly its share (statistical, not exact)
    fov = ds.deposit_volume_fov_nm3.values[-1] / ds.deposit_volume_nm3.values[-1]
    assert 0.2 < fov < 0.8


def test_ce_follows_stripped_over_plated(demo):
    ds = open_cube(demo / "truth.zarr").load()
    ce = (ds.stripped_volume_nm3 + ds.void_volume_nm3) / ds.plated_volume_nm3
    np.testing.assert_allclose(ds.ce_true, ce)
    assert np.all((ds.ce_true > 0.5) & (ds.ce_true < 1.2))
    assert float(ds.dead_volume_nm3.sum()) > 0


def test_dead_li_never_changes_and_strip_removes_live_only():
    ph = Generator(resolve_params("demo"), 1).physics
    dead_total = ph.site_dead.sum(1)
    for s in ph.segments:
        if s.kind == "rest":
            continue
        made = (ph.site_event_type == EVENT_DEAD) & (ph.site_event_cycle < s.cycle)
        assert made.any() or s.cycle == 0
        np.testing.assert_allclose(s.m0[made], dead_total[made], rtol=1e-12)
        assert np.all(s.dm[made] == 0) and np.all(s.dw[made] == 0)
        if s.kind == "strip":  # stripping never eats into dead Li
            assert np.all(s.m0 + s.dm * s.q_scale >= s.d0 + s.dead - 1e-6)


# ----------------------------------------------------------------------------- morphology
def _at_risk(preset: str, seeds, **ov):
    rows = []
    for seed in seeds:
        gen = Generator(resolve_params(preset, dict(n_cycles=6, nuc_density_um2=3.0,
                                                    nuc_later_density_um2=1.0, **ov)), seed)
        ph = gen.physics
        risk = ~np.isnan(ph.site_p_dead)
        si, ci = np.nonzero(risk)
        dead = (ph.site_dead[si, ci] > 0) & (ph.site_event_type[si] == EVENT_DEAD)
        rows.append(pd.DataFrame({"zp": ph.site_z[si, ci, 0], "zr": ph.site_z[si, ci, 1],
                                  "zs": ph.site_z[si, ci, 2], "p": ph.site_p_dead[si, ci],
                                  "dead": dead.astype(float)}))
    return pd.concat(rows, ignore_index=True)


def _logit_fit(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    xx = np.column_stack([np.ones(len(y)), x])
    beta = np.zeros(xx.shape[1])
    for _ in range(50):
        mu = 1 / (1 + np.exp(-xx @ beta))
        w = mu * (1 - mu)
        beta = beta + np.linalg.solve(xx.T @ (xx * w[:, None]), xx.T @ (y - mu))
    return beta


def test_dead_li_responds_to_porosity():
    df = _at_risk("demo", [1, 2, 3])
    assert len(df) > 1500
    beta = _logit_fit(df[["zp", "zr", "zs"]].to_numpy(), df.dead.to_numpy())
    p = resolve_params("demo")
    assert beta[1] == pytest.approx(p.dead_b_porosity, abs=0.25)
    assert beta[0] == pytest.approx(p.dead_b0, abs=0.3)
    terc = pd.qcut(df.zp, 3, labels=False, duplicates="drop")
    obs = df.groupby(terc).dead.mean().to_numpy()
    exp = df.groupby(terc).p.mean().to_numpy()
    assert obs[-1] > obs[0]
    np.testing.assert_allclose(obs, exp, atol=0.04)


def test_null_preset_has_no_porosity_effect():
    df = _at_risk("null", [1, 2, 3])
    beta = _logit_fit(df[["zp", "zr", "zs"]].to_numpy(), df.dead.to_numpy())
    assert abs(beta[1]) < 0.25
    assert abs(beta[2]) < 0.25


# ----------------------------------------------------------------------------- drift
@pytest.fixture(scope="module")
def ladder1():
    return generate("ladder-1", 3, overrides={"n_cycles": 1, "frames_per_half": 3})


def test_recorded_drift_reproduces_observed_frames(ladder1):
    """Re-sampling the truth with the recorded drift gives the observed frame up to the noise."""
    p = ladder1.params
    fr = ladder1.frames[0]  # pristine rest frame: the surface does not change during it
    truth = fr.height_true.astype(np.float64)
    rows = np.arange(p.n_px)[:, None] + fr.drift_dy_px[:, None] + 0 * np.arange(p.n_px)
    cols = np.arange(p.n_px)[None, :] + fr.drift_dx_px[:, None]
    pred = ndi.map_coordinates(truth, [rows, cols], order=3, mode="constant", cval=np.nan)
    ok = np.isfinite(pred)
    ok[:4], ok[-4:], ok[:, :4], ok[:, -4:] = False, False, False, False
    resid = (fr.observed_nm - pred)[ok]
    assert ok.sum() > 0.5 * ok.size
    assert np.std(resid) == pytest.approx(p.noise_nm, rel=0.3)


def test_drift_recovered_by_registration(ladder1):
    from skimage.registration import phase_cross_correlation

    errs = []
    for fr in ladder1.frames:
        win = np.outer(np.hanning(fr.observed_nm.shape[0]), np.hanning(fr.observed_nm.shape[1]))
        ref = fr.height_true - fr.height_true.mean()
        mov = fr.observed_nm - fr.observed_nm.mean()
        shift, _, _ = phase_cross_correlation(ref * win, mov * win, upsample_factor=50)
        errs.append(np.hypot(shift[0] - fr.drift_dy_px.mean(), shift[1] - fr.drift_dx_px.mean()))
    assert max(abs(fr.drift_dx_px.mean()) for fr in ladder1.frames) > 2
    assert max(errs) <= 0.2, errs


# ----------------------------------------------------------------------------- truth on the registered grid
@pytest.fixture(scope="module")
def demo_gen():
    from ecafm.synth import resolve_params

    return Generator(resolve_params("demo", {"n_cycles": 1}), 2, preset="demo")


def _end_of_plating(gen) -> float:
    seg = next(s for s in gen.physics.segments if s.kind == "plate")
    return float(seg.frame_times[-1] + gen.params.frame_time_s)


def test_render_at_sample_positions_matches_pixel_grid_at_whole_pixels(demo_gen):
    """At whole-pixel offsets the exact render equals the pixel-grid render shifted."""
    from ecafm.synth.render import render

    gen, p = demo_gen, demo_gen.params
    t = _end_of_plating(gen)
    grid = render(gen.physics, gen.substrate, t, full=True)
    n, pad = p.n_px, p.pad_px
    for oy, ox in ((0, 0), (2, -3)):
        at = render(gen.physics, gen.substrate, t, full=True,
                    at=(np.full(n, float(oy)), np.full(n, float(ox)), pad))
        win = (slice(pad + oy, pad + oy + n), slice(pad + ox, pad + ox + n))
        assert (grid.class_map[win] != 0).mean() > 0.2  # plenty of deposits to compare
        np.testing.assert_array_equal(at.class_map, grid.class_map[win])
        np.testing.assert_array_equal(at.label, grid.label[win])
        np.testing.assert_allclose(at.height, grid.height[win], atol=1e-9)


def test_render_at_fractional_positions_is_the_cap_geometry(demo_gen):
    """Half a pixel off, a pixel is deposit exactly where the cap there is thicker than the class
    minimum; nearest-neighbour sampling of the pixel-grid map disagrees on the boundary band."""
    from ecafm.synth.physics import cap_radius_nm
    from ecafm.synth.render import ACTIVE, DEAD, DORMANT, render, site_volumes

    gen, p = demo_gen, demo_gen.params
    ph = gen.physics
    t = _end_of_plating(gen)
    n, pad = p.n_px, p.pad_px
    at = render(ph, gen.substrate, t, full=True, at=(np.full(n, 0.5), np.full(n, 0.5), pad))
    # independent evaluation: sum of the caps at the sample positions, heights scaled as rendered
    seg = ph.segment_at(t)
    m, _, _ = site_volumes(seg, t)
    yy = pad + np.arange(n)[:, None] + 0.5
    xx = pad + np.arange(n)[None, :] + 0.5
    dep = np.zeros((n, n))
    gy, gx = np.mgrid[0:gen.substrate.height.shape[0], 0:gen.substrate.height.shape[1]]
    for i in np.flatnonzero(m > 0):
        r = max(cap_radius_nm(m[i], ph.site_aspect[i]) / p.pixel_size_nm, p.min_radius_px)
        g_grid = np.clip(1 - ((gy - ph.site_y[i]) ** 2 + (gx - ph.site_x[i]) ** 2) / r**2, 0, None)
        g = np.clip(1 - ((yy - ph.site_y[i]) ** 2 + (xx - ph.site_x[i]) ** 2) / r**2, 0, None)
        dep += g * m[i] / (p.pixel_size_nm**2 * g_grid.sum())
    np.testing.assert_allclose(at.deposit, dep, atol=1e-9)
    is_dep = np.isin(at.class_map, (ACTIVE, DORMANT, DEAD))
    no_void = at.class_map != 5
    assert np.array_equal(is_dep[no_void], (dep > p.class_min_nm)[no_void])
    # the pixel-grid map sampled by nearest neighbour at the same positions differs on a band
    grid = render(ph, gen.substrate, t, full=True)
    near = grid.class_map[pad + 1:pad + 1 + n, pad + 1:pad + 1 + n]  # round(r + 0.5) = r + 1
    assert (np.isin(near, (ACTIVE, DORMANT, DEAD)) != is_dep).mean() > 0.01


# ----------------------------------------------------------------------------- files
def test_raw_files_read_back_with_afmreader(demo):
    from AFMReader.gwy import load_gwy

    ds = open_cube(demo / "truth.zarr")
    sheet = pd.read_csv(demo / "frames.tsv", sep="\t")
    assert len(sheet) == ds.sizes["frame"] == len(list((demo / "raw").glob("*.gwy")))
    assert sheet.phase.iloc[0] == "rest" and "plate" in set(sheet.phase)
    img, px = load_gwy(demo / sheet.file.iloc[5], channel="Height")
    assert img.shape == ds.height_true.shape[1:]
    assert px == pytest.approx(ds.attrs["scan_size_nm"] / ds.sizes["x"])
    truth = ds.height_observed_clean[5].values
    assert abs(img.mean() - truth.mean()) < 5 * max(truth.std(), 1.0)
    sheet_row = pd.read_csv(demo / "dataset.tsv", sep="\t").iloc[0]
    assert sheet_row.ec_log == "ec/log.mpt" and sheet_row.format == "gwy"


def test_clean_ladder_raw_equals_truth(tmp_path):
    from AFMReader.gwy import load_gwy

    synth("ladder-0", 4, tmp_path, overrides={"n_cycles": 1, "frames_per_half": 1})
    ds = open_cube(tmp_path / "truth.zarr")
    img, _ = load_gwy(tmp_path / "raw" / "frame_0000.gwy", channel="Height")
    np.testing.assert_allclose(img, ds.height_true[0].values, atol=1e-4)


def test_same_seed_identical_different_seed_differs(demo, tmp_path):
    small = {"n_cycles": 1, "frames_per_half": 2}
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    synth("demo", 7, a, overrides=small)
    synth("demo", 7, b, overrides=small)
    synth("demo", 8, c, overrides=small)
    files = sorted(p.relative_to(a) for p in (a / "raw").glob("*.gwy"))
    assert [_sha(a / f) for f in files] == [_sha(b / f) for f in files]
    assert _sha(a / "ec" / "log.mpt") == _sha(b / "ec" / "log.mpt")
    assert logical_hash(open_cube(a / "truth.zarr")) == logical_hash(open_cube(b / "truth.zarr"))
    assert _sha(a / files[0]) != _sha(c / files[0])
    assert logical_hash(open_cube(a / "truth.zarr")) != logical_hash(open_cube(c / "truth.zarr"))


# ----------------------------------------------------------------------------- params
def test_unknown_override_key_fails_clearly(tmp_path):
    y = tmp_path / "ov.yaml"
    y.write_text("n_cycles: 2\nnoise_sigma: 1.0\nbogus: 3\n")
    with pytest.raises(ValueError, match=r"unknown synth parameter\(s\) \['bogus', 'noise_sigma'\]"):
        resolve_params("demo", y)
    with pytest.raises(ValueError, match="unknown synth preset 'nope'"):
        resolve_params("nope")
    assert resolve_params("demo", {"n_cycles": 2}).n_cycles == 2
