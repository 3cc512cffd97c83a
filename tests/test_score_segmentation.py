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
    # hysteresis k_low 1.5: 0.921 (demo seed 0, 1 nm), seed 1 0.921; ladder-4 0.907 (0.896 at k_low 2)
    pytest.param("change_f1", ">=", 0.9, id="change_f1"),
    # dead layer at the previous trough must dominate for residue in stripping frames: 0.917 (demo
    # seed 0, 1 nm), seed 1 0.926, seed 60 0.917, ladder-1..4 0.904 / 0.902 / 0.911 / 0.914, null 0.908
    pytest.param("iou_deposit", ">=", 0.9, id="iou_deposit"),
    # 0.724 (demo seed 0, 1 nm), seed 1 0.776, ladder-1 0.754, ladder-4 0.717, null seed 0 0.844
    pytest.param("iou_void", ">=", 0.7, id="iou_void"),
    # converting sites ACTIVE through their stripping, dead layer dominant: 0.915 (demo seed 0),
    # 0.920 (seed 1), 0.915 (ladder-1)
    pytest.param("iou_residue", ">=", 0.7, id="iou_residue"),
    pytest.param("site_f1", ">=", 0.9, id="site_f1",
                 marks=_xfail("0.72 (demo seed 0, 1 nm; seed 1 0.75, ladder-4 0.74)", ">= 0.9")),
    pytest.param("rel_err_plated", "<=", 0.05, id="V+"),
    pytest.param("rel_err_stripped", "<=", 0.05, id="V-"),
    # site-level residue rule: 0.009 (demo seed 0), 0.006 (seed 1), 0.010 (ladder-1)
    pytest.param("rel_err_dead", "<=", 0.15, id="dead"),
    # per-cycle volumetric CE, worst cycle: 0.39 pp (demo seed 0, 1 nm), seed 1 0.57, ladder-1 0.81
    pytest.param("ce_max_abs_err_pp", "<=", 2.0, id="CE"),
    # exact cycle / C-index: 0.893 / 0.944 (seed 0), 0.832 / 0.896 (seed 1), 0.908 / 0.955 (ladder-1, older)
    pytest.param("lifetime_exact_cycle", ">=", 0.8, id="lifetime_exact"),
    pytest.param("lifetime_cindex", ">=", 0.85, id="lifetime_cindex"),
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


def test_deposit_error_breakdown_accounts_for_every_wrong_pixel(demo_1nm):
    """The false and missed deposit pixels by class add up to what the deposit IoU misses:
    IoU = TP / (TP + FP + FN). A class left out of the breakdown breaks the equality."""
    s = demo_1nm[2]
    fp = sum(s[k] for k in ("deposit_fp_dead_px", "deposit_fp_sei_px", "deposit_fp_void_px",
                            "deposit_fp_substrate_px"))
    fn = sum(s[k] for k in ("deposit_miss_residue_px", "deposit_miss_void_px", "deposit_miss_substrate_px"))
    assert s["deposit_tp_px"] > 0 and fp > 0
    assert s["iou_deposit"] == pytest.approx(s["deposit_tp_px"] / (s["deposit_tp_px"] + fp + fn), rel=1e-12)
    assert 0 <= s["deposit_fp_dead_stripping_px"] <= s["deposit_fp_dead_px"]


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


def _tiny_lifetime_case():
    """Three true sites (one dead Li in cycle 0, one censored, one dead Li in the last cycle)."""
    import numpy as np
    import xarray as xr

    from ecafm.score import EV_DEAD, EV_NONE, T_ACTIVE, TruthGrid

    n = 12
    lab = np.zeros((n, n), np.int32)
    lab[0:4, 0:4], lab[0:4, 6:10], lab[6:10, 0:4] = 1, 2, 3
    frames = 4
    truth = xr.Dataset(
        {"site_label": (("frame", "y", "x"), np.repeat(lab[None], frames, 0)),
         "class_map": (("frame", "y", "x"), np.repeat(np.where(lab > 0, T_ACTIVE, 0)[None], frames, 0)),
         "site_event_cycle": (("site",), np.array([0, -1, 1])),
         "site_event_type": (("site",), np.array([EV_DEAD, EV_NONE, EV_DEAD])),
         "drift_dy_px": (("frame", "y"), np.zeros((frames, n))),
         "drift_dx_px": (("frame", "y"), np.zeros((frames, n)))},
        coords={"site": [1, 2, 3]})
    segs = [xr.Dataset({"kind": (("frame",), np.array([1, 2])),
                        "state": (("frame", "y", "x"), np.full((2, n, n), 5, np.uint8))},
                       coords={"frame": [2 * c, 2 * c + 1]},
                       attrs={"cycle": c, "residue_next_cycle": c == 0}) for c in (0, 1)]
    pred = np.where(lab > 0, lab + 9, 0)  # predicted ids 10, 11, 12
    labels = xr.Dataset({"site_label": (("cycle", "y", "x"), np.stack([pred, pred]))},
                        coords={"cycle": [0, 1]})
    return truth, segs, labels, TruthGrid(truth, (0, n, 0, n), 0)


def test_lifetime_scores_exact_and_concordance_on_a_known_case():
    import pandas as pd

    from ecafm.score import lifetime_scores

    truth, segs, labels, grid = _tiny_lifetime_case()
    right = pd.DataFrame({"site": [10, 11, 12], "birth_cycle": [0, 0, 0], "event_cycle": [0, -1, -1]})
    s = lifetime_scores(labels, right, segs, truth, grid)
    # site 3's dead-Li event in the last cycle cannot be decided (no next plating): censored
    assert s["lifetime_sites_matched"] == 3
    assert s["lifetime_exact_cycle"] == 1.0 and s["lifetime_cindex"] == 1.0
    wrong = right.assign(event_cycle=[-1, 0, -1])  # the event given to the censored site
    s = lifetime_scores(labels, wrong, segs, truth, grid)
    assert abs(s["lifetime_exact_cycle"] - 1 / 3) < 1e-12
    assert s["lifetime_cindex"] < 0.5


def test_truth_is_rendered_on_the_registered_grid_and_the_run_stays_below_its_bound(demo_1nm):
    """The generator renders each frame's classes and labels at the first frame's sample
    positions (``class_map_refgrid``), the grid this run (reference frame 0) is registered to,
    so the score needs no nearest-neighbour sampling that would put boundaries up to half a
    pixel off. With it, thresholding the noise-free true height like the run (``iou_*_bound``)
    reaches the deposit target (0.93 on this data set; 0.88 against the nearest-neighbour
    truth), and the run stays below that bound."""
    import numpy as np

    from ecafm.score import TruthGrid
    from ecafm.store import open_cube

    root, _, scores = demo_1nm
    truth = open_cube(root / "data" / "truth.zarr")
    tf = open_cube(root / "out" / "transforms.zarr")
    ref = int(np.flatnonzero(tf["ok"].values)[0])
    assert ref == 0
    grid = TruthGrid(truth, tf.attrs["common_field_px"], int(tf["frame"].values[ref]))
    assert grid.refgrid
    f = truth.sizes["frame"] // 2
    exact, nearest = grid.classes(f), grid(truth["class_map"][f].values)
    assert exact.shape == nearest.shape
    # the two differ on the sub-pixel boundary band (all but features narrower than a pixel:
    # 2-13 of 560-930 differing pixels on this data set)
    differ = exact != nearest
    band = grid.ambiguous(truth["class_map"][f].values)
    assert differ.sum() > 100 and (differ & ~band).sum() < 0.05 * differ.sum()
    assert scores["iou_deposit_bound"] > 0.9
    assert scores["iou_deposit"] <= scores["iou_deposit_bound"]
    assert scores["iou_residue"] <= scores["iou_residue_bound"]


def test_sites_without_a_maximum_of_their_own_are_counted_apart(demo_1nm):
    """On the porous demo a third of the true sites have no local maximum of their own in the
    noise-free height at the plating peak (caps add up: they sit on a neighbour's flank); the
    F1 against the sites that have one is higher than against all of them."""
    scores = demo_1nm[2]
    assert 0.5 * scores["sites_true"] < scores["sites_true_own_max"] < 0.8 * scores["sites_true"]
    assert scores["site_f1_own_max"] > scores["site_f1"] + 0.03


def test_site_recall_by_spacing_of_the_true_centres(demo_1nm):
    """Sites apart from their neighbours are found; the site-F1 loss lies in the nucleation
    clusters, where true centres lie closer than 3 px (117 nm) to another site's."""
    s = demo_1nm[2]
    assert sum(s[f"sites_true_{k}"] for k in ("nn_lt3px", "nn_3to5px", "nn_ge5px")) == s["sites_true"]
    assert s["sites_true_nn_ge5px"] > 0.3 * s["sites_true"]
    assert s["site_recall_nn_ge5px"] >= 0.9
    assert s["site_recall_nn_lt3px"] < 0.5 < s["site_recall_nn_ge5px"]


def test_site_partition_ceiling_cap_rule_on_true_centres():
    """The benchmark's cap fit: two overlapping paraboloid caps, a small one on the big one's
    flank (no maximum of its own), are parted as the generator parts them (thickest cap)."""
    import importlib.util
    from pathlib import Path

    import numpy as np
    from scipy import ndimage as ndi

    spec = importlib.util.spec_from_file_location(
        "ceiling", Path(__file__).resolve().parents[1] / "benchmarks" / "site_partition_ceiling.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    yy, xx = np.mgrid[:48, :48].astype(float)
    centres = np.array([[24.0, 20.0], [24.0, 28.0]])
    radii, heights = np.array([9.0, 3.5]), np.array([60.0, 16.0])
    caps = np.stack([hh * np.clip(1 - ((yy - cy) ** 2 + (xx - cx) ** 2) / r ** 2, 0, None)
                     for (cy, cx), r, hh in zip(centres, radii, heights, strict=True)])
    h = caps.sum(0)
    truth = np.where(caps.max(0) > 0, caps.argmax(0) + 1, 0)
    assert ndi.label((h == ndi.maximum_filter(h, size=3)) & (h > 0))[1] == 1  # the big cap's only
    got = mod.cap_partition(h, h > 0, centres[:, 0], centres[:, 1])
    assert (got == truth).mean() > 0.99
    assert mod.f1_counts(truth, got)[0] == 2


def test_site_partition_ceiling_free_cap_fit_moves_centres_but_finds_no_new_cap():
    """The benchmark's free cap fit: started 1.2 px off both true centres, it moves the caps
    back and parts the pixels as the generator does; started from the big cap's maximum alone,
    it keeps one site (it refines the centres a detector gives, it does not add caps)."""
    import importlib.util
    from pathlib import Path

    import numpy as np

    spec = importlib.util.spec_from_file_location(
        "ceiling", Path(__file__).resolve().parents[1] / "benchmarks" / "site_partition_ceiling.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    px_nm, aspect = 39.0625, 0.8
    yy, xx = np.mgrid[:48, :48].astype(float)
    centres = np.array([[24.0, 20.0], [24.0, 28.0]])
    radii = np.array([9.0, 3.5])
    caps = mod._caps(np.column_stack([centres, radii, aspect * radii * px_nm]), yy.ravel(),
                     xx.ravel()).reshape(2, *yy.shape)
    h = caps.sum(0)
    truth = np.where(caps.max(0) > 0, caps.argmax(0) + 1, 0)
    start = centres + np.array([[1.2, -0.8], [-0.9, 1.2]])
    got = mod.free_cap_partition(h, h > 0, start[:, 0], start[:, 1], px_nm, aspect, 0.08, 1.5)
    assert (got == truth)[h > 0].mean() > 0.98
    assert mod.f1_counts(truth, got)[0] == 2
    one = mod.free_cap_partition(h, h > 0, centres[:1, 0], centres[:1, 1], px_nm, aspect, 0.08, 1.5)
    assert np.unique(one[one > 0]).size == 1


def test_dead_volume_and_classes_on_the_null_preset_with_little_dead_li(tmp_path):
    """Null seed 15 makes little dead Li, so a few live sites called residue weigh a lot.

    With ``residue_retention`` 0.3 its live sites' stripped cores (keeping 0.30 of their peak
    volume) were residue: dead volume +22% over the cycles (+100% in cycle 0). At 0.35: 3%.
    """
    from ecafm.synth import synth

    synth("null", 15, tmp_path / "data")
    ingest([tmp_path / "data" / "raw"], tmp_path / "cube.zarr", ec_log=tmp_path / "data" / "ec" / "log.mpt",
           frame_sheet=tmp_path / "data" / "frames.tsv")
    reg = run_level_register(tmp_path / "cube.zarr", tmp_path / "out", apply=True)
    run_segment_sites(reg, tmp_path / "out")
    scores = score_run(tmp_path / "out", tmp_path / "data" / "truth.zarr")
    assert scores["rel_err_dead"] <= 0.15
    assert scores["max_rel_err_dead"] <= 0.3
    # the class targets hold on the null preset too; its voids are few, so false voids weigh a
    # lot: 0.806 before the last frame's extrapolation stopped at the reference, 0.922 now
    assert scores["iou_void"] >= 0.7
    assert scores["iou_deposit"] >= 0.9  # 0.913
    assert scores["change_f1"] >= 0.9  # 0.933


def test_residue_history_from_cycle_c_minus_2_keeps_overgrown_dead_li(demo_1nm, tmp_path):
    """Each cycle's job reads cycle c-2's trough (``segment.residue_lookback: 1``): dead Li that a
    neighbour's cap grows over is residue only through that history. Re-segmenting the last
    cycle without it (0, the old behaviour) calls more true dead-Li pixels live."""
    import numpy as np

    from ecafm.kernels import change as kc
    from ecafm.score import TruthGrid
    from ecafm.segment import SegmentParams, run_segment
    from ecafm.store import Step, open_cube

    root, paths, _ = demo_1nm
    out, reg = root / "out", sorted((root / "out").glob("cycle_*.zarr"))
    last = len(reg) - 1
    assert last >= 2
    p0 = SegmentParams(residue_lookback=0)
    run_segment(last, reg[last], reg[0], out / "transforms.zarr", tmp_path / "seg.zarr",
                tmp_path / "seg.tsv", prev=reg[last - 1], params=p0,
                step=Step("segment_cycle", {"residue_lookback": 0}, {"cycle": str(last)}))
    truth = open_cube(root / "data" / "truth.zarr")
    grid = TruthGrid(truth, open_cube(out / "transforms.zarr").attrs["common_field_px"], 0)

    def dead_called_live(seg_path):
        seg, n = open_cube(seg_path).load(), 0
        for j, f in enumerate(seg["frame"].values):
            if seg["residue_decided"].values[j] and seg["usable"].values[j]:
                pred = seg["state"].values[j]
                live = np.isin(pred, (kc.ACTIVE_DEPOSIT, kc.DORMANT_DEPOSIT))
                n += int((live & (grid.classes(int(f)) == 3)).sum())  # 3: dead Li in the truth
        return n

    with_history = dead_called_live(paths["segments"][last])
    without = dead_called_live(tmp_path / "seg.zarr")
    # measured on this data set: 172 with the history, 309 without
    assert with_history < 0.8 * without, (with_history, without)


def test_segment_uses_the_heights_apply_aligned_and_gets_what_it_would_align_itself(demo_1nm):
    """apply_registration stores every frame tip-eroded and aligned to h_ref (``height_aligned``);
    the segment job reads them instead of aligning the 4 cycles it reads again. Segmenting from
    the raw registered heights (the variable dropped) must give the same maps."""
    import numpy as np

    from ecafm.segment import (
        ALIGNED,
        SegmentParams,
        _aligned_matches,
        reference_height,
        segment_cycle,
    )
    from ecafm.store import open_cube

    root, paths, _ = demo_1nm
    out = root / "out"
    reg = {int(p.stem.split("_")[1]): p for p in out.glob("cycle_*.zarr")}
    c = 2
    assert {0, c - 2, c - 1, c, c + 1} <= set(reg)
    cubes = {k: open_cube(reg[k]).load() for k in {0, c - 2, c - 1, c, c + 1}}
    tf = open_cube(out / "transforms.zarr").load()
    p = SegmentParams()
    h_ref, ref_frame = reference_height(cubes[0], p.tip_radius_nm)
    assert all(_aligned_matches(ds, ref_frame, p.tip_radius_nm) for ds in cubes.values())
    assert not _aligned_matches(cubes[c], ref_frame, p.tip_radius_nm / 2)  # another tip: not these
    # the reference frame aligned to itself is h_ref (apply resampled the same frame)
    i = int(np.flatnonzero(cubes[0]["frame"].values == ref_frame)[0])
    assert float(np.nanmax(np.abs(cubes[0][ALIGNED].values[i] - h_ref))) < 1e-3

    def seg(drop: bool):
        d = {k: (v.drop_vars(ALIGNED) if drop else v) for k, v in cubes.items()}
        return segment_cycle(c, d[c], d[0], tf, prev=d[c - 1], nxt=d[c + 1], prev2=d[c - 2], params=p)

    fast, slow = seg(False), seg(True)
    stored = open_cube(paths["segments"][c]).load()
    for v in ("change", "state", "site_label", "label_peak"):
        assert np.array_equal(fast[v].values, stored[v].values), v
        # float32 storage of the aligned heights may flip a pixel at a threshold, no more
        assert (fast[v].values != slow[v].values).mean() < 1e-4, v
    # a flipped change pixel is rectified differently (here 1 of 12,084 by 0.04 nm)
    dh = np.abs(fast["h_peak"].values - slow["h_peak"].values)
    assert (dh > 1e-3).mean() < 1e-3 and float(np.nanmax(dh)) < 0.5


def test_score_of_a_results_folder_with_several_data_sets_needs_the_data_set(tmp_path):
    """With several data sets in results/, score took the first (by name) whatever truth it was
    given: the synthetic `null` data set scored against `demo`'s results had a dead-volume error of
    665 % instead of 4.6 %. Now it asks which one, and takes the one named."""
    from ecafm.errors import InputFileError
    from ecafm.score import _result_paths

    res = tmp_path / "results"
    for ds in ("demo", "null"):
        (res / "register" / ds / "transforms.zarr").mkdir(parents=True)
        (res / "segment" / ds / "cycle_0.zarr").mkdir(parents=True)
    with pytest.raises(InputFileError, match=r"holds data sets \['demo', 'null'\].*--dataset"):
        _result_paths(res)
    assert _result_paths(res, "null")["transforms"] == res / "register" / "null" / "transforms.zarr"
    assert _result_paths(res, "null")["segments"] == [res / "segment" / "null" / "cycle_0.zarr"]
    with pytest.raises(InputFileError, match=r"no register/seed1/transforms.zarr"):
        _result_paths(res, "seed1")
    (res / "register" / "demo" / "transforms.zarr").rename(res / "register" / "demo" / "old")
    assert _result_paths(res)["transforms"] == res / "register" / "null" / "transforms.zarr"  # one: no need
