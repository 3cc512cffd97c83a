"""Lifetime statistics against the generator's truth, and the lifetime stage on the demo."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ecafm.lifetime import ec_charge_per_cycle, lifetime_table, oracle_dead_fit
from ecafm.synth import Generator, resolve_params


def _physics(preset, seed):
    return Generator(resolve_params(preset, None), seed).physics


def test_recovers_generator_odds_ratio_over_20_seeds():
    """Porosity odds ratio per SD within 20% of the generator's, right sign in >= 95% of seeds."""
    true_or = float(np.exp(resolve_params("demo", None).dead_b_porosity))
    fits = [oracle_dead_fit(_physics("demo", seed)) for seed in range(20)]
    ors = np.array([f["odds_ratio"] for f in fits])
    assert np.mean(ors > 1) >= 0.95
    assert abs(np.exp(np.mean(np.log(ors))) / true_or - 1) <= 0.20


def test_null_preset_is_calibrated():
    """No morphology effect: p < 0.05 in about 5% of seeds (200 seeds; binomial tolerance)."""
    p = np.array([oracle_dead_fit(_physics("null", seed))["p"] for seed in range(200)])
    rate = float(np.mean(p < 0.05))
    assert rate <= 0.05 + 2 * np.sqrt(0.05 * 0.95 / 200), rate  # <= 8.1%


def test_lifetime_table_censoring_and_truncation():
    sites = pd.DataFrame({"site": [1, 2, 3], "birth_cycle": [0, 2, 1], "last_cycle": [5, 5, 3],
                          "dead_cycle": [3, -1, -1]})
    lt = lifetime_table(sites, "dead")
    assert lt[["entry", "exit", "event"]].values.tolist() == [[0, 3, 1], [2, 5, 0], [1, 3, 0]]


def test_charge_per_cycle_from_log():
    from tests.helpers import make_log

    log = make_log(n_cycles=3, half_s=100.0, current_mA=0.01)
    ec = ec_charge_per_cycle(log, positive_current_plates=True)
    # 10 uA for 100 s (99 increments at 1 s sampling) plated and stripped in each cycle
    np.testing.assert_allclose(ec["q_plate_log_C"], 0.99e-3, rtol=0.02)
    np.testing.assert_allclose(ec["ce_electrochemical"], 1.0, atol=0.02)
    swapped = ec_charge_per_cycle(log, positive_current_plates=False)
    assert len(swapped) >= 3


@pytest.mark.workflow
def test_lifetime_outputs_on_demo(tmp_path):
    from ecafm.ingest import ingest
    from ecafm.lifetime import run_lifetime
    from ecafm.pipeline import run_level_register, run_segment_sites
    from ecafm.store import Step, verify
    from ecafm.synth import synth

    synth("demo", 0, tmp_path / "data")
    ingest([tmp_path / "data" / "raw"], tmp_path / "cube.zarr", ec_log=tmp_path / "data" / "ec" / "log.mpt",
           frame_sheet=tmp_path / "data" / "frames.tsv")
    reg = run_level_register(tmp_path / "cube.zarr", tmp_path / "reg")
    seg = run_segment_sites(reg, tmp_path / "seg")
    out = run_lifetime(seg["sites"], seg["site_cycles"], seg["cycles"], seg["segments"][0], tmp_path / "lt",
                       ec_log=tmp_path / "data" / "ec" / "log.mpt", electrode_area_cm2=1.0,
                       step=Step("correlate_lifetimes"))
    for p in out.values():
        assert verify(p) == []
    import json

    summary = json.loads(out["summary"].read_text())
    hz = pd.read_csv(out["hazard"], sep="\t")
    if max(summary["events"].values()) >= 3:  # a model needs events; segmentation decides how many
        assert {"discrete_logit", "cox"} <= set(hz["model"])
        assert (hz["ci_low"] <= hz["ratio_per_sd"]).all() and (hz["ratio_per_sd"] <= hz["ci_high"]).all()
    assert summary["n_sites"] > 20
    bal = pd.read_csv(out["balance"], sep="\t")
    # The log passes the same charge each plating (constant current): the electrochemical CE is
    # the generator's true CE per cycle.
    truth = Generator(resolve_params("demo", None), 0).physics
    true_ce = (np.asarray(truth.cycle_stripped) + np.asarray(truth.cycle_void)) / np.asarray(truth.cycle_plated)
    np.testing.assert_allclose(bal["ce_electrochemical"], true_ce, atol=0.01)
    assert bal["apparent_density_factor"].notna().all()


def test_dead_conversion_needs_residue_and_left_behind_volume():
    """Cycle 1 leaves half its plating behind with residue detected: dead. Cycle 0's 7% is not;
    cycle 2 leaves a lot behind but without detected residue (live, unstripped): not dead."""
    import pandas as pd

    from ecafm.sites import dead_conversion

    d = pd.DataFrame({"cycle": [0, 1, 2, 3],
                      "plated_nm3": [1000.0, 1000.0, 1000.0, 1000.0],
                      "residual_nm3": [70.0, 570.0, 1200.0, 1250.0],
                      "residue_nm3": [0.0, 450.0, 0.0, 600.0],
                      "detection_limit_nm3": [50.0, 50.0, 50.0, 50.0]})
    assert dead_conversion(d, 0.4).tolist() == [False, True, False, False]
    assert dead_conversion(d, 0.6).tolist() == [False, False, False, False]  # 500 left < 600
    # lifetime.dead_cycles applies the same rule at other fractions, on decided cycles only
    from ecafm.lifetime import dead_cycles

    sc = d.assign(site=7)
    assert dead_cycles(pd.DataFrame({"site": [7]}), sc, 0.4).tolist() == [1]
    # many sites in one table: each site's first cycle has no previous residual, even when the
    # site before it ended high (site 3 would otherwise see 1250 - 1250 left behind: not dead)
    other = pd.DataFrame({"cycle": [0, 1, 2], "plated_nm3": [1000.0] * 3, "residual_nm3": [500.0, 500.0, 600.0],
                          "residue_nm3": [300.0] * 3, "detection_limit_nm3": [50.0] * 3, "site": 3})
    both = pd.concat([sc, other.assign(site=9)], ignore_index=True)
    assert dead_conversion(both, 0.4).tolist() == [*dead_conversion(d, 0.4), *dead_conversion(other, 0.4)]
    assert dead_conversion(other, 0.4).tolist() == [True, False, False]
    shuffled = pd.concat([other.assign(site=3), sc]).sample(frac=1.0, random_state=0)
    assert dead_cycles(pd.DataFrame({"site": [7, 3, 5]}), shuffled, 0.4).tolist() == [1, 0, -1]
    assert dead_cycles(pd.DataFrame({"site": [7]}), sc, 0.6).tolist() == [-1]


def test_lifetime_figure_is_readable():
    """Every title and label of the lifetime figure lies inside the figure, the two Kaplan-Meier
    titles do not run into each other, cycle axes have whole-number ticks, and the title names
    the events in words (it showed a clipped one-line title, ticks at 0.5 cycles and a dict)."""
    import matplotlib

    from ecafm.figures import lifetime_figure

    matplotlib.use("Agg")
    t = [0.0, 1.0, 2.0, 3.0, 4.0]
    groups = {g: {"n": 48, "events": 10 + i, "timeline": t, "survival": [1.0, 0.8 - 0.1 * i, 0.6, 0.5, 0.5]}
              for i, g in enumerate(("low", "mid", "high"))}
    km = {f"dead:{d}_w33_pre": {"groups": groups, "logrank_p": 0.000331} for d in ("porosity_proxy", "crest_rms")}
    s = {"n_sites": 145, "events": {"dead": 59, "inactivation": 8, "void": 17}, "kaplan_meier": km}
    b = pd.DataFrame({"cycle": [0, 1, 2, 3], "ce_volumetric": [0.67, 0.77, 0.85, 0.91],
                      "ce_volumetric_with_voids": [0.70, 0.78, 0.88, 0.94],
                      "ce_electrochemical": [0.79, 0.86, 0.90, 0.95],
                      "residue_nm3": [1.8e8, 3.0e8, 3.7e8, np.nan],
                      "apparent_density_factor": [1.86, 1.44, 1.28, 1.12]})
    fig = lifetime_figure(s, b)
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    box = fig.bbox
    for e in [a.get_tightbbox(r) for a in fig.axes] + [fig._suptitle.get_window_extent(r)]:
        # everything drawn: tick labels, axis labels, titles, legends
        assert box.x0 - 1 <= e.x0 and e.x1 <= box.x1 + 1 and box.y0 - 1 <= e.y0 and e.y1 <= box.y1 + 1, e
    axes = fig.axes
    left, right = (a.title.get_window_extent(r) for a in axes[:2])
    assert left.x1 < right.x0
    for a in axes[:4]:
        ticks = [tl.get_text().replace("\u2212", "-") for tl in a.get_xticklabels() if tl.get_text()]
        assert ticks and all(float(v).is_integer() for v in ticks), ticks
    sup = fig._suptitle.get_text()
    assert "{" not in sup and "59 dead-Li conversions" in sup
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_summary_warns_of_cycles_whose_plating_looks_swapped():
    """A batch user reads summary.json, not the classes figure: cycles that track_sites marked
    plating_looks_swapped are named there; tables without the column (older runs) warn of nothing."""
    from ecafm.lifetime import run_warnings

    cy = pd.DataFrame({"cycle": [0, 1, 2], "plating_looks_swapped": [False, True, True]})
    (w,) = run_warnings(cy)
    assert w.startswith("cycles [1, 2]: the surface shrank while plating") and "positive_current_plates" in w
    assert run_warnings(cy.assign(plating_looks_swapped=False)) == []
    assert run_warnings(cy.drop(columns="plating_looks_swapped")) == []
