"""Data sets side by side (rule compare_datasets): arithmetic against hand-made inputs."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from ecafm.compare import STOPPED, compare_figure, plot_compare, read_tables, run_compare
from ecafm.store import Step, read_record, write_cube

#: 4 sites born in cycle 0; dead-metal conversion in cycle 0 (one) and cycle 1 (one); two censored
#: after cycle 1. Kaplan-Meier by hand: 3/4 through cycle 0, 3/4 x 2/3 = 1/2 through cycle 1.
LIFETIMES = pd.DataFrame({"site": [1, 2, 3, 4] * 2, "entry": [0] * 8, "exit": [0, 1, 1, 1] * 2,
                          "event": [1, 1, 0, 0, 0, 0, 0, 0], "endpoint": ["dead"] * 4 + ["void"] * 4})


def _dataset(root, ds, *, pixel_nm2, area_px, balance, decided, warnings=(), lifetimes=LIFETIMES):
    (root / "lifetime" / ds).mkdir(parents=True)
    (root / "sites" / ds).mkdir(parents=True)
    lifetimes.to_csv(root / "lifetime" / ds / "lifetimes.tsv", sep="\t", index=False)
    (root / "lifetime" / ds / "summary.json").write_text(json.dumps(
        {"balance": balance, "n_sites": 7, "events": {"dead": 2, "inactivation": 1, "void": 0},
         "warnings": list(warnings)}))
    pd.DataFrame({"cycle": [b["cycle"] for b in balance], "n_sites": [3, 4][: len(balance)],
                  "area_px": area_px, "residue_decided": decided}).to_csv(
        root / "sites" / ds / "cycles.tsv", sep="\t", index=False)
    seg = xr.Dataset({"h_ref": (("y", "x"), np.zeros((2, 2), np.float32))}, attrs={"pixel_area_nm2": pixel_nm2})
    write_cube(seg, root / "segment" / ds / "cycle_0.zarr", step=Step("test"))
    return [root / "lifetime" / ds / "summary.json", root / "lifetime" / ds / "lifetimes.tsv",
            root / "sites" / ds / "cycles.tsv", root / "segment" / ds / "cycle_0.zarr"]


def test_volumes_become_layer_thickness_over_the_analysed_field(tmp_path):
    """Two analysed data sets of different field and pixel size, and a movie that stopped after
    registration. Expected values by hand: a: 100 px x 4 nm^2 = 400 nm^2, residue 800 nm^3 ->
    2 nm, void 80 nm^3 -> 0.2 nm; its cycle 1 residue is undecided (no next plating), so the
    last known residue is cycle 0's. b: 50 px x 1 nm^2, no log (no electrochemical CE)."""
    root = tmp_path / "results"
    a = _dataset(root, "a", pixel_nm2=4.0, area_px=[100, 100], decided=[True, False], balance=[
        {"cycle": 0, "ce_electrochemical": 0.8, "ce_volumetric": 0.7, "ce_volumetric_with_voids": 0.75,
         "plated_nm3": 4000.0, "dead_volume_cum_nm3": 800.0, "void_nm3": 40.0},
        {"cycle": 1, "ce_electrochemical": 0.9, "ce_volumetric": 0.8, "ce_volumetric_with_voids": 0.85,
         "plated_nm3": 3000.0, "dead_volume_cum_nm3": 800.0, "void_nm3": 80.0}])
    b = _dataset(root, "null", pixel_nm2=1.0, area_px=[50, 40], decided=[True, True], warnings=["cycles [0]: swapped"],
                 balance=[{"cycle": 0, "ce_volumetric": 0.5, "ce_volumetric_with_voids": 0.6, "plated_nm3": 100.0,
                           "dead_volume_cum_nm3": 25.0, "void_nm3": 5.0},
                          {"cycle": 1, "ce_volumetric": 0.7, "ce_volumetric_with_voids": 0.7, "plated_nm3": 80.0,
                           "dead_volume_cum_nm3": 45.0, "void_nm3": 8.0}])
    out = tmp_path / "compare"
    table = run_compare([*b, *a], ["NA", "a", "null"], out / "datasets.tsv", out / "cycles.tsv",
                        step=Step("compare_datasets"))
    t, cy = read_tables(out / "datasets.tsv", out / "cycles.tsv")  # "null" and "NA" read as names
    t = t.set_index("dataset")
    assert t.index.tolist() == ["NA", "a", "null"] and t.loc["NA", "status"] == STOPPED
    assert t.loc["a", "status"] == "analysed" and t.loc["a", "cycles"] == 2
    assert t.loc["a", "dead_final_nm"] == pytest.approx(2.0) and t.loc["a", "dead_final_cycle"] == 0
    assert t.loc["a", "void_final_nm"] == pytest.approx(0.2)
    assert t.loc["a", "ce_electrochemical_median"] == pytest.approx(0.85)
    assert t.loc["a", "field_um2"] == pytest.approx(400e-6)
    assert t.loc["null", "dead_final_nm"] == pytest.approx(45.0 / 40) and t.loc["null", "dead_final_cycle"] == 1
    assert np.isnan(t.loc["null", "ce_electrochemical_median"])
    assert t.loc["null", "ce_volumetric_median"] == pytest.approx(0.6)
    a_cy = cy[cy["dataset"] == "a"]
    np.testing.assert_allclose(a_cy["plated_nm"], [10.0, 7.5])
    assert np.isfinite(a_cy["dead_cum_nm"]).tolist() == [True, False]
    assert read_record(out / "datasets.tsv")["step"]["rule"] == "compare_datasets"

    fig = compare_figure(table, cy)
    assert "2 of 3 data sets analysed; stopped after registration: NA" in fig._suptitle.get_text()
    assert any("CHECK the warnings of null" in t.get_text() for t in fig.texts)
    # read back from the tables, the data set named "null" keeps its name and its line
    import matplotlib.pyplot as plt

    plot_compare(out / "datasets.tsv", out / "cycles.tsv", out / "compare.png", step=Step("plot_compare"))
    assert (out / "compare.png").stat().st_size > 10_000
    back = compare_figure(*read_tables(out / "datasets.tsv", out / "cycles.tsv"))
    assert [t.get_text() for t in back.axes[1].get_legend().get_texts()] == ["a", "null"]
    plt.close("all")


def test_inputs_of_a_data_set_not_in_the_list_are_refused(tmp_path):
    a = _dataset(tmp_path / "results", "a", pixel_nm2=1.0, area_px=[10], decided=[True],
                 balance=[{"cycle": 0, "ce_volumetric": 0.5}])
    with pytest.raises(ValueError, match=r"data sets \['a'\] that are not among \['b'\]"):
        run_compare(a, ["b"], tmp_path / "d.tsv", tmp_path / "c.tsv", step=Step("compare_datasets"))
    assert not (tmp_path / "d.tsv").exists()


def test_site_survival_per_data_set(tmp_path):
    """Kaplan-Meier per data set and endpoint against the hand computation of LIFETIMES; a data
    set whose sites all convert in cycle 0 differs from it (log-rank p < 0.05 with 20 sites
    each); alone, a data set has no log-rank test."""
    root = tmp_path / "results"
    bal = [{"cycle": 0, "ce_volumetric": 0.5}, {"cycle": 1, "ce_volumetric": 0.5}]
    a = _dataset(root, "a", pixel_nm2=1.0, area_px=[10, 10], decided=[True, True], balance=bal)
    out = tmp_path / "compare"
    run_compare(a, ["a"], out / "d.tsv", out / "c.tsv", out_survival=out / "s.tsv", step=Step("compare_datasets"))
    t, _, sv = read_tables(out / "d.tsv", out / "c.tsv", out / "s.tsv")
    dead = sv[(sv["dataset"] == "a") & (sv["endpoint"] == "dead")].set_index("through_cycle")
    assert dead["survival"].to_dict() == pytest.approx({-1.0: 1.0, 0.0: 0.75, 1.0: 0.5})
    assert dead["median_cycles"].iloc[0] == 2 and np.isnan(dead["logrank_p"].iloc[0])
    assert t.loc[0, "median_cycles_dead"] == 2 and np.isinf(t.loc[0, "median_cycles_void"])

    many = pd.DataFrame({"site": range(20), "entry": 0, "exit": [1] * 20, "event": 0, "endpoint": "dead"})
    early = many.assign(exit=0, event=1)
    b = _dataset(root, "b", pixel_nm2=1.0, area_px=[10, 10], decided=[True, True], balance=bal, lifetimes=many)
    c = _dataset(root, "c", pixel_nm2=1.0, area_px=[10, 10], decided=[True, True], balance=bal, lifetimes=early)
    run_compare([*b, *c], ["b", "c"], out / "d2.tsv", out / "c2.tsv", out_survival=out / "s2.tsv",
                step=Step("compare_datasets"))
    _, _, sv2 = read_tables(out / "d2.tsv", out / "c2.tsv", out / "s2.tsv")
    assert sv2["logrank_p"].iloc[0] < 0.05
    assert sv2.loc[sv2["dataset"] == "c", "survival"].min() == 0.0

    # a data set without sites: the lifetime stage writes an empty lifetimes.tsv (no header)
    e = _dataset(root, "e", pixel_nm2=1.0, area_px=[10, 10], decided=[True, True], balance=bal)
    (root / "lifetime" / "e" / "lifetimes.tsv").write_text("")
    run_compare([*b, *e], ["b", "e"], out / "d3.tsv", out / "c3.tsv", out_survival=out / "s3.tsv",
                step=Step("compare_datasets"))
    _, _, sv3 = read_tables(out / "d3.tsv", out / "c3.tsv", out / "s3.tsv")
    assert set(sv3["dataset"]) == {"b"} and np.isnan(sv3["logrank_p"].iloc[0])


def test_a_run_where_no_data_set_reached_segmentation(tmp_path):
    """A sheet of movies without logs: every data set stops after registration. The comparison
    still lists them, with empty cycle and survival tables, and the figure says so."""
    out = tmp_path / "compare"
    run_compare([], ["movie"], out / "d.tsv", out / "c.tsv", out_survival=out / "s.tsv", step=Step("compare_datasets"))
    t, cy, sv = read_tables(out / "d.tsv", out / "c.tsv", out / "s.tsv")
    assert t["dataset"].tolist() == ["movie"] and t.loc[0, "status"] == STOPPED
    assert len(cy) == 0 and len(sv) == 0
    fig = compare_figure(t, cy, sv)
    assert fig._suptitle.get_text() == "0 of 1 data sets analysed; stopped after registration: movie"
    assert all(any(x.get_text() == "no data set reached segmentation" for x in ax.texts) for ax in fig.axes)
