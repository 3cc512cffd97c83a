"""Segmentation and sites against the generator's truth (SCIENCE.md targets), via ``score_run``.

Targets not met after honest work stay at the target and are marked xfail(strict) with the
measured value, so that an improvement shows up as XPASS (and must then un-mark the test).
"""

from __future__ import annotations

import pytest

from ecafm.cli import main
from ecafm.ingest import ingest
from ecafm.pipeline import run_level_register, run_segment_sites
from ecafm.score import score_run


@pytest.fixture(scope="module")
def demo_1nm(tmp_path_factory):
    """Demo preset at 1 nm white noise, run in process exactly as the workflow does."""
    from ecafm.synth import synth

    root = tmp_path_factory.mktemp("seg_demo")
    synth("demo", 0, root / "data", overrides={"noise_nm": 1.0})
    ingest([root / "data" / "raw"], root / "cube.zarr", ec_log=root / "data" / "ec" / "log.mpt",
           frame_sheet=root / "data" / "frames.tsv")
    reg = run_level_register(root / "cube.zarr", root / "out", apply=True)
    paths = run_segment_sites(reg, root / "out")
    return root, paths, score_run(root / "out", root / "data" / "truth.zarr")


def _xfail(measured: str, target: str):
    return pytest.mark.xfail(strict=True, reason=f"measured {measured}, target {target}")


TARGETS = [
    pytest.param("change_f1", ">=", 0.9, id="change_f1"),
    pytest.param("iou_deposit", ">=", 0.9, id="iou_deposit",
                 marks=_xfail("0.73 (demo seed 0, 1 nm; seed 1 0.75, ladder-1 0.71)", ">= 0.9")),
    pytest.param("iou_void", ">=", 0.7, id="iou_void",
                 marks=_xfail("0.64 (demo seed 0, 1 nm; seed 1 0.72, ladder-1 0.56)", ">= 0.7")),
    # met on demo seed 0 (0.700) and seed 1 (0.72); ladder-1 seed 0: 0.66
    pytest.param("iou_residue", ">=", 0.7, id="iou_residue"),
    pytest.param("site_f1", ">=", 0.9, id="site_f1",
                 marks=_xfail("0.65 (demo seed 0, 1 nm; seed 1 0.67, ladder-1 0.65)", ">= 0.9")),
    pytest.param("rel_err_plated", "<=", 0.05, id="V+"),
    pytest.param("rel_err_stripped", "<=", 0.05, id="V-"),
    # site-level residue rule: 0.03 (demo seed 0), 0.02 (seed 1), 0.001 (ladder-1)
    pytest.param("rel_err_dead", "<=", 0.15, id="dead"),
]


@pytest.mark.parametrize("metric,op,target", TARGETS)
def test_accuracy_on_demo_at_1nm_noise(demo_1nm, metric, op, target):
    scores = demo_1nm[2]
    v = scores[metric]
    assert (v >= target) if op == ">=" else (v <= target), f"{metric} = {v:.4f}"


def test_outputs_and_tables(demo_1nm):
    import numpy as np
    import pandas as pd

    from ecafm.store import open_cube

    _, paths, scores = demo_1nm
    assert scores["unflagged_failures"] == 0
    seg = open_cube(paths["segments"][0]).load()
    assert seg["state"].dims == ("frame", "y", "x")
    assert set(np.unique(seg["state"].values)) <= set(range(6))
    sites = pd.read_csv(paths["sites"], sep="\t")
    sc = pd.read_csv(paths["site_cycles"], sep="\t")
    cy = pd.read_csv(paths["cycles"], sep="\t")
    tiles = pd.read_csv(paths["tiles"], sep="\t")
    assert {"site", "family", "birth_cycle", "event_cycle", "right_censored"} <= set(sites.columns)
    assert {"plated_nm3", "stripped_nm3", "ce_local", "residue_nm3", "void_nm3",
            "plated_C"} <= set(sc.columns)
    assert sc["site"].isin(sites["site"]).all()
    assert (sites["birth_cycle"] >= 0).all() and (sites["birth_cycle"] > 0).any()
    # tiles and sites see the same field: tile totals equal the field totals
    for col in ("plated_nm3", "stripped_nm3"):
        tot = tiles.groupby("cycle")[col].sum().to_numpy()
        np.testing.assert_allclose(tot, cy[col].to_numpy(), rtol=1e-9)
    np.testing.assert_allclose(cy["plated_C"], cy["plated_nm3"] * 7.424087514963622e-18)


def test_cli_score_prints_the_table(demo_1nm, capsys):
    root = demo_1nm[0]
    assert main(["score", str(root / "out"), str(root / "data" / "truth.zarr")]) == 0
    out = capsys.readouterr().out
    for key in ("interframe_rms_px", "change_f1", "iou_residue", "site_f1", "rel_err_dead"):
        assert key in out


def test_truth_grid_ambiguous_band_is_the_subpixel_boundary():
    import numpy as np
    import xarray as xr

    from ecafm.score import TruthGrid

    n = 8
    truth = xr.Dataset({"drift_dy_px": (("frame", "y"), np.zeros((1, n))),
                        "drift_dx_px": (("frame", "y"), np.full((1, n), 0.3))})
    g = TruthGrid(truth, (0, n, 0, n - 1), 0)
    a = np.zeros((n, n), int)
    a[:, 4:] = 1  # boundary between columns 3 and 4
    amb = g.ambiguous(a)
    assert amb[:, 3].all() and amb.sum() == n  # only samples at x = 3.3 straddle it
    g0 = TruthGrid(truth.assign(drift_dx_px=truth["drift_dx_px"] * 0), (0, n, 0, n), 0)
    assert not g0.ambiguous(a).any()  # integer positions: no ambiguity
