"""Data sets side by side: one row per data set, one per data set and cycle, one figure.

A lab images several cells (electrolytes, current densities, substrates, fields of view). Each data
set's outputs answer its own questions; this stage puts them next to each other: which cell keeps
its Coulombic efficiency, which one piles up inactive residue ("dead" metal) and voids, and from
which cycle on. Volumes are divided by the analysed field (pixels that are not UNCERTAIN in that
cycle, ``area_px`` of ``cycles.tsv``), so that fields of different size compare as an equivalent
layer thickness in nm.

Read from each analysed data set: ``results/lifetime/{id}/summary.json`` (the charge balance per
cycle, events, warnings), ``results/sites/{id}/cycles.tsv`` (sites and analysed area per cycle)
and the first segment cube's attrs (pixel area). Data sets that stopped after registration (no
plating frame) get a row that says so, so that none silently drops out of the comparison.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ecafm.errors import InputFileError
from ecafm.store import Step, write_table

log = logging.getLogger(__name__)

#: What a data set without a summary is reported as.
STOPPED = "stopped after registration: no plating frame in its first cycle"
_PATHS = {"summary": re.compile(r"(?:^|/)lifetime/(?P<ds>[^/]+)/summary\.json$"),
          "lifetimes": re.compile(r"(?:^|/)lifetime/(?P<ds>[^/]+)/lifetimes\.tsv$"),
          "cycles": re.compile(r"(?:^|/)sites/(?P<ds>[^/]+)/cycles\.tsv$"),
          "segment0": re.compile(r"(?:^|/)segment/(?P<ds>[^/]+)/cycle_-?\d+\.zarr$")}


def inputs_by_dataset(paths: list[str | Path]) -> dict[str, dict[str, Path]]:
    """Group the stage's input paths by data set id (parsed from the output path grammar)."""
    out: dict[str, dict[str, Path]] = {}
    for p in map(Path, paths):
        for kind, rx in _PATHS.items():
            m = rx.search(p.as_posix())
            if m:
                out.setdefault(m["ds"], {})[kind] = p
                break
    for ds, got in out.items():
        missing = set(_PATHS) - set(got)
        if missing:
            raise InputFileError(next(iter(got.values())), f"data set {ds!r} lacks input(s) {sorted(missing)}")
    return out


def dataset_cycles(ds: str, summary: str | Path, cycles: str | Path, segment0: str | Path) -> tuple[dict, pd.DataFrame]:
    """The comparison's row of one data set and its per-cycle table."""
    from ecafm.store import open_cube

    try:
        s = json.loads(Path(summary).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputFileError(summary, f"cannot read the lifetime summary ({exc})") from exc
    cy = pd.read_csv(cycles, sep="\t")
    pixel_nm2 = float(open_cube(segment0).attrs["pixel_area_nm2"])
    b = pd.DataFrame(s.get("balance") or [])
    if b.empty:
        b = pd.DataFrame({"cycle": cy["cycle"]})
    decided = cy["residue_decided"] if "residue_decided" in cy else pd.Series(True, index=cy.index)
    t = cy[["cycle", "n_sites", "area_px"]].assign(residue_decided=decided.astype(bool)).merge(b, on="cycle",
                                                                                               how="left")
    area = t["area_px"].to_numpy(float) * pixel_nm2
    area = np.where(area > 0, area, np.nan)

    def col(name: str) -> np.ndarray:
        return t[name].to_numpy(float) if name in t else np.full(len(t), np.nan)

    per = pd.DataFrame({
        "dataset": ds,
        "cycle": t["cycle"].astype(int),
        "n_sites": t["n_sites"].astype(int),
        "field_um2": area / 1e6,
        "ce_electrochemical": col("ce_electrochemical"),
        "ce_volumetric": col("ce_volumetric"),
        "ce_volumetric_with_voids": col("ce_volumetric_with_voids"),
        "plated_nm": col("plated_nm3") / area,
        # a cycle's residue is decided by the next plating: none after the last cycle
        "residue_decided": t["residue_decided"].to_numpy(bool),
        "dead_cum_nm": np.where(t["residue_decided"], col("dead_volume_cum_nm3") / area, np.nan),
        "void_nm": col("void_nm3") / area,
    })
    last = per.iloc[-1] if len(per) else None
    dead = per.loc[np.isfinite(per["dead_cum_nm"])]
    ev = s.get("events", {})
    row = {
        "dataset": ds, "status": "analysed", "cycles": len(per), "n_sites": int(s.get("n_sites", 0)),
        "field_um2": float(np.nanmedian(per["field_um2"])) if len(per) else np.nan,
        "ce_electrochemical_median": _median(per["ce_electrochemical"]),
        "ce_volumetric_median": _median(per["ce_volumetric"]),
        "dead_final_nm": float(dead["dead_cum_nm"].iloc[-1]) if len(dead) else np.nan,
        "dead_final_cycle": int(dead["cycle"].iloc[-1]) if len(dead) else -1,
        "void_final_nm": float(last["void_nm"]) if last is not None else np.nan,
        "dead_events": int(ev.get("dead", 0)), "inactivation_events": int(ev.get("inactivation", 0)),
        "void_events": int(ev.get("void", 0)),
        "warnings": " | ".join(s.get("warnings", [])),
    }
    return row, per


def _median(v: pd.Series) -> float:
    v = v.to_numpy(float)
    return float(np.nanmedian(v)) if np.isfinite(v).any() else float("nan")


ENDPOINTS = ("dead", "inactivation", "void")


def _read_lifetimes(path: str | Path) -> pd.DataFrame:
    """A data set's site lifetimes; the lifetime stage writes an empty file when it found no site."""
    try:
        return pd.read_csv(path, sep="\t")
    except pd.errors.EmptyDataError:
        return pd.DataFrame(columns=["site", "entry", "exit", "event", "endpoint"])


def survival_by_dataset(lifetimes: dict[str, pd.DataFrame]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Site survival per data set and endpoint: Kaplan-Meier with left truncation at each site's
    birth (lifelines, :func:`ecafm.stats.kaplan_meier_by_groups`, the lifetime stage's estimator)
    and the log-rank test across data sets (NaN with one data set). Returns the curves (``dataset,
    endpoint, through_cycle, survival``: the fraction of sites without the event through that
    cycle) and one row per data set and endpoint (``n, events, median_cycles`` with its 95% CI,
    ``logrank_p``). The log-rank test ignores the left truncation and the spatial correlation of
    sites in one field, so read its p value as a screen, not a verdict."""
    from ecafm.stats import kaplan_meier_by_groups

    curves, rows = [], []
    for ep in ENDPOINTS:
        parts = [lt.loc[lt["endpoint"] == ep, ["entry", "exit", "event"]].assign(dataset=ds)
                 for ds, lt in lifetimes.items()]
        parts = [q for q in parts if len(q)]
        if not parts:
            continue
        life = pd.concat(parts, ignore_index=True)
        groups = life["dataset"].to_numpy(object)
        km = kaplan_meier_by_groups(life, groups)
        for ds, g in km["groups"].items():
            # lifelines' time T = exit + 1: the survival at T is through cycle T - 1
            curves.append(pd.DataFrame({"dataset": ds, "endpoint": ep,
                                        "through_cycle": np.asarray(g["timeline"], float) - 1,
                                        "survival": g["survival"]}))
            rows.append({"dataset": ds, "endpoint": ep, "n": g["n"], "events": g["events"],
                         "median_cycles": g["median"], "median_ci_low": g["median_ci"][0],
                         "median_ci_high": g["median_ci"][1], "logrank_p": km["logrank_p"]})
    cols = ["dataset", "endpoint", "through_cycle", "survival"]
    return (pd.concat(curves, ignore_index=True) if curves else pd.DataFrame(columns=cols),
            pd.DataFrame(rows, columns=["dataset", "endpoint", "n", "events", "median_cycles", "median_ci_low",
                                        "median_ci_high", "logrank_p"]))


def run_compare(inputs: list[str | Path], datasets: list[str], out_datasets: str | Path, out_cycles: str | Path,
                *, step: Step, out_survival: str | Path | None = None) -> pd.DataFrame:
    """Write ``datasets.tsv`` (one row per data set of ``datasets``, in that order) and
    ``cycles.tsv`` (data set x cycle) from the analysed data sets' outputs in ``inputs``; with
    ``out_survival``, also ``survival.tsv`` (site survival per data set and endpoint)."""
    got = inputs_by_dataset(inputs)
    unknown = sorted(set(got) - set(datasets))
    if unknown:
        raise ValueError(f"inputs of data sets {unknown} that are not among {datasets}")
    rows, per, lifetimes = [], [], {}
    for ds in datasets:
        if ds not in got:
            rows.append({"dataset": ds, "status": STOPPED})
            log.info("%s: %s", ds, STOPPED)
            continue
        row, p = dataset_cycles(ds, **{k: got[ds][k] for k in ("summary", "cycles", "segment0")})
        lifetimes[ds] = _read_lifetimes(got[ds]["lifetimes"])
        rows.append(row)
        per.append(p)
        log.info("%s: %d cycles, median CE %.3f (log) %.3f (AFM), inactive residue %.3g nm after cycle %d",
                 ds, row["cycles"], row["ce_electrochemical_median"], row["ce_volumetric_median"],
                 row["dead_final_nm"], row["dead_final_cycle"])
    table = pd.DataFrame(rows, columns=list(_ROW_COLUMNS))
    cycles = (pd.concat(per, ignore_index=True) if per
              else pd.DataFrame(columns=list(_CYCLE_COLUMNS)))
    if out_survival is not None:
        curves, summary = survival_by_dataset(lifetimes)
        table = table.merge(summary.pivot(index="dataset", columns="endpoint", values="median_cycles")
                            .add_prefix("median_cycles_").reset_index(), on="dataset", how="left")
        table = table.reindex(columns=[*_ROW_COLUMNS, *(c for c in table.columns if c not in _ROW_COLUMNS)])
        write_table(curves.merge(summary, on=["dataset", "endpoint"]), out_survival, step=step)
    write_table(cycles, out_cycles, step=step)
    write_table(table, out_datasets, step=step)
    return table


_ROW_COLUMNS = ("dataset", "status", "cycles", "n_sites", "field_um2", "ce_electrochemical_median",
                "ce_volumetric_median", "dead_final_nm", "dead_final_cycle", "void_final_nm", "dead_events", "inactivation_events",
                "void_events", "warnings")
_CYCLE_COLUMNS = ("dataset", "cycle", "n_sites", "field_um2", "ce_electrochemical", "ce_volumetric",
                  "ce_volumetric_with_voids", "plated_nm", "residue_decided", "dead_cum_nm", "void_nm")


def compare_figure(table: pd.DataFrame, cycles: pd.DataFrame, survival: pd.DataFrame | None = None) -> Any:
    """CE, cumulative dead metal, voids and sites per cycle, one line per analysed data set; with
    ``survival``, site survival free of dead-metal conversion and of voids per data set."""
    from matplotlib.ticker import MaxNLocator

    from ecafm.figures import _mpl

    plt = _mpl()
    rows = 3 if survival is not None else 2
    fig, grid = plt.subplots(rows, 2, figsize=(11, 4 * rows), constrained_layout=True)
    axes = grid[:2]
    analysed = [d for d in table["dataset"] if d in set(cycles["dataset"])]
    for k, ds in enumerate(analysed):
        c = cycles[cycles["dataset"] == ds]
        color = f"C{k % 10}"
        ax = axes[0, 0]
        if np.isfinite(c["ce_electrochemical"]).any():
            ax.plot(c["cycle"], 100 * c["ce_electrochemical"], "^-", color=color, label=f"{ds}: log")
        ax.plot(c["cycle"], 100 * c["ce_volumetric_with_voids"], "o--", color=color, mfc="none",
                label=f"{ds}: AFM volume")
        axes[0, 1].plot(c["cycle"], c["dead_cum_nm"], "o-", color=color, label=ds)
        axes[1, 0].plot(c["cycle"], c["void_nm"], "o-", color=color, label=ds)
        axes[1, 1].plot(c["cycle"], c["n_sites"], "o-", color=color, label=ds)
    labels = (("Coulombic efficiency (%)", "Coulombic efficiency per cycle"),
              ("inactive residue (nm, cumulative)", "dead-metal candidates: residue volume / analysed field\n"
               "(a cycle's residue is known after the next plating)"),
              ("void depth (nm)", "voids: volume below h_ref / analysed field"),
              ("sites", "sites per cycle"))
    for ax, (ylabel, title) in zip(axes.flat, labels, strict=True):
        ax.set_xlabel("cycle")
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if analysed:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "no data set reached segmentation", ha="center", transform=ax.transAxes)
    if survival is not None:
        what = {"dead": "free of dead-metal conversion", "void": "free of voids"}
        for ax, ep in zip(grid[2], ("dead", "void"), strict=True):
            for k, ds in enumerate(analysed):
                c = survival[(survival["dataset"] == ds) & (survival["endpoint"] == ep)]
                if len(c):
                    ax.step(c["through_cycle"], c["survival"], where="post", color=f"C{k % 10}",
                            label=f"{ds} (n={int(c['n'].iloc[0])}, events {int(c['events'].iloc[0])})")
            p = survival.loc[survival["endpoint"] == ep, "logrank_p"]
            test = f", log-rank p = {p.iloc[0]:.3g}" if len(p) and np.isfinite(p.iloc[0]) else ""
            ax.set_title(f"sites {what[ep]}\n(Kaplan-Meier, sites enter at birth{test})", fontsize=10)
            ax.set_xlabel("cycle")
            ax.set_ylabel("fraction of sites")
            ax.set_ylim(-0.02, 1.02)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8)
            elif not analysed:
                ax.text(0.5, 0.5, "no data set reached segmentation", ha="center", transform=ax.transAxes)
    stopped = table.loc[table["status"] != "analysed", "dataset"].tolist()
    warned = table.loc[table["warnings"].fillna("").astype(str).str.len() > 0, "dataset"].tolist()
    title = f"{len(analysed)} of {len(table)} data sets analysed"
    if stopped:
        title += f"; stopped after registration: {', '.join(stopped)}"
    fig.suptitle(title)
    if warned:
        fig.text(0.5, 0.005, f"CHECK the warnings of {', '.join(warned)} (datasets.tsv column warnings)",
                 color="red", ha="center", va="bottom", fontsize=10)
    return fig


def read_tables(datasets: str | Path, cycles: str | Path, survival: str | Path | None = None) -> tuple:
    """The stage's tables as written; ids such as "null" or "NA" stay data set names."""
    out = (pd.read_csv(datasets, sep="\t", converters={"dataset": str, "status": str, "warnings": str}),
           pd.read_csv(cycles, sep="\t", converters={"dataset": str}))
    if survival is None:
        return out
    return (*out, pd.read_csv(survival, sep="\t", converters={"dataset": str, "endpoint": str}))


def plot_compare(datasets: str | Path, cycles: str | Path, out: str | Path, *, step: Step,
                 survival: str | Path | None = None) -> dict[str, Any]:
    """The comparison figure from the stage's tables."""
    from ecafm.figures import _write_figure

    return _write_figure(compare_figure(*read_tables(datasets, cycles, survival)), out, step=step)
