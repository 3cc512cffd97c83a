"""Stage ``lifetime``: site lifetimes, initial-morphology descriptors, statistics, charge balance.

Inputs (per dataset): the site and site-cycle tables of :mod:`ecafm.sites`, the segment cube of
the first cycle (``h_ref`` = pre-plating surface, ``h_peak`` = end of the first plating), the
per-cycle table, and the electrochemistry log. Outputs: ``summary.json`` (every statistic,
machine-readable), ``lifetimes.tsv``, ``descriptors.tsv``, ``hazard.tsv``, ``correlations.tsv``,
``sensitivity.tsv`` and ``balance.tsv`` (schemas in README, "Lifetime outputs").

The primary hypothesis, declared up front (SCIENCE.md): higher initial porosity / roughness means
shorter site lifetime and more dead residue. The primary model is the discrete-time logistic
hazard (events are known to within a cycle; later-born sites enter at birth); Cox (lifelines,
left-truncated) is reported beside it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ecafm import stats
from ecafm.blas import one_blas_thread
from ecafm.kernels.morphology import DESCRIPTORS, descriptors_at, relative_pits

log = logging.getLogger(__name__)

ENDPOINTS = ("inactivation", "dead", "void")
#: covariates of the hazard models: the texture-relative pit fraction and the crest roughness, from
#: the same black and white top-hats (pits inflate plain Sq, so with Sq beside it part of the porosity
#: effect is credited to roughness)
PRIMARY = ("porosity_proxy", "crest_rms")


@dataclass(frozen=True)
class LifetimeParams:
    """Config key ``lifetime``."""

    window_px: tuple[int, ...] = (9, 17, 33)
    #: window of the hazard models' covariates; None = the largest of ``window_px``
    primary_window_px: int | None = None
    pit_radius_nm: float = 60.0
    pit_depth_nm: float = 10.0
    dead_fraction: float = 0.4
    sensitivity_fractions: tuple[float, ...] = (0.3, 0.5, 0.7)
    block_nm: float = 1000.0
    n_boot: int = 300
    seed: int = 0

    def __post_init__(self) -> None:
        if self.primary_window_px is not None and self.primary_window_px not in self.window_px:
            raise ValueError(f"lifetime.primary_window_px={self.primary_window_px} is not one of "
                             f"lifetime.window_px={list(self.window_px)}: add it there or set it to null")

    @property
    def primary_window(self) -> int:
        return self.primary_window_px if self.primary_window_px is not None else max(self.window_px)


# --------------------------------------------------------------------------- lifetimes
def lifetime_table(sites: pd.DataFrame, endpoint: str) -> pd.DataFrame:
    """entry (birth), exit (event or last observed cycle), event (0/1) for one endpoint.

    Interval censoring: an event cycle means "happened during that cycle" (known to within a
    cycle); right censoring at the last good cycle; left truncation at birth.
    """
    ev_cycle = sites[f"{endpoint}_cycle"].to_numpy(int)
    last = sites["last_cycle"].to_numpy(int)
    entry = sites["birth_cycle"].to_numpy(int)
    event = (ev_cycle >= 0).astype(int)
    exit_ = np.where(event == 1, ev_cycle, last)
    exit_ = np.maximum(exit_, entry)
    return pd.DataFrame({"site": sites["site"].to_numpy(), "entry": entry, "exit": exit_, "event": event})


def dead_cycles(sites: pd.DataFrame, site_cycles: pd.DataFrame, fraction: float) -> np.ndarray:
    """Dead-Li conversion cycle per site at another ``fraction`` (:func:`ecafm.sites.dead_conversion`),
    for the sensitivity table; only cycles whose residue rule was decided (followed by a plating)."""
    from ecafm.sites import dead_conversion

    sc = site_cycles.sort_values(["site", "cycle"], kind="stable")
    hit = dead_conversion(sc, fraction) & (sc["cycle"] < sc["cycle"].max()).to_numpy()
    first = sc.loc[hit].groupby("site")["cycle"].first()
    return first.reindex(sites["site"]).fillna(-1).to_numpy(int)


# --------------------------------------------------------------------------- descriptors
def site_descriptors(sites: pd.DataFrame, h_ref: np.ndarray, h_peak: np.ndarray, pixel_nm: float,
                     windows: tuple[int, ...], *, pit_radius_nm: float | None = None,
                     pit_depth_nm: float | None = None) -> pd.DataFrame:
    """Initial-morphology descriptors per site at each window size, before and after plating 1.

    Column names: ``{descriptor}_w{window}_{pre|p1}``; plus the confounders ``log_size``
    (log birth volume) and ``edge_distance_nm``, and first-deposit geometry.
    """
    cy = sites["y_nm"].to_numpy() / pixel_nm - 0.5
    cx = sites["x_nm"].to_numpy() / pixel_nm - 0.5
    centers = np.c_[cy, cx]
    out = {"site": sites["site"].to_numpy()}
    maps = {tag: (relative_pits(h, pixel_nm, radius_nm=pit_radius_nm)
                  if pit_radius_nm is not None and pit_depth_nm is not None else None)
            for tag, h in (("pre", h_ref), ("p1", h_peak))}  # window-independent: once per surface
    for w in windows:
        for tag, h in (("pre", h_ref), ("p1", h_peak)):
            d = descriptors_at(h, centers, window_px=w, pixel_nm=pixel_nm, pit_radius_nm=pit_radius_nm,
                               pit_depth_nm=pit_depth_nm, relative=maps[tag])
            for k, name in enumerate(DESCRIPTORS):
                out[f"{name}_w{w}_{tag}"] = d[:, k]
    vol = sites["birth_volume_nm3"].to_numpy(float)
    area = sites["birth_area_px"].to_numpy(float) * pixel_nm**2
    diam = 2 * np.sqrt(np.maximum(area, 1e-12) / np.pi)
    iy = np.clip(np.round(cy).astype(int), 0, h_ref.shape[0] - 1)
    ix = np.clip(np.round(cx).astype(int), 0, h_ref.shape[1] - 1)
    height = (h_peak - h_ref)[iy, ix]
    out.update({
        "log_size": np.log(np.maximum(vol, 1.0)),
        "edge_distance_nm": sites["edge_distance_nm"].to_numpy(float),
        "deposit_height_nm": height,
        "deposit_diameter_nm": diam,
        "deposit_aspect": height / diam,
        "deposit_volume_nm3": vol,
    })
    return pd.DataFrame(out)


# --------------------------------------------------------------------------- balance
def ec_charge_per_cycle(data: pd.DataFrame, *, positive_current_plates: bool) -> pd.DataFrame:
    """Plated and stripped charge (C) per cycle from a potentiostat log (EcLog.data), cycles
    counted from the first plating as the cube's are (:func:`ecafm.io.echem.charge_per_cycle`);
    cycles that plated nothing are left out."""
    from ecafm.io.echem import charge_per_cycle

    g = charge_per_cycle(data, positive_current_plates=positive_current_plates)
    g = g[g["plate_C"] > 0]
    return pd.DataFrame({"cycle": g["cycle"].to_numpy(int), "q_plate_log_C": g["plate_C"].to_numpy(),
                         "q_strip_log_C": g["strip_C"].to_numpy(),
                         "ce_electrochemical": (g["strip_C"] / g["plate_C"]).to_numpy()})


def balance(cycles: pd.DataFrame, ec: pd.DataFrame | None, *, area_fraction: float | None) -> pd.DataFrame:
    """Volumetric CE vs electrochemical CE; AFM-implied vs log charge; dead volume vs CE loss."""
    b = cycles[["cycle", "plated_nm3", "stripped_nm3", "residue_nm3", "void_nm3", "plated_C",
                "stripped_C", "residue_C"]].copy()
    b["ce_volumetric"] = b["stripped_nm3"] / b["plated_nm3"]
    # Voids are Li removed below the original surface: their growth passed stripping charge too.
    b["void_new_nm3"] = b["void_nm3"].diff().fillna(b["void_nm3"]).clip(lower=0)
    b["ce_volumetric_with_voids"] = (b["stripped_nm3"] + b["void_new_nm3"]) / b["plated_nm3"]
    b["dead_volume_cum_nm3"] = b["residue_nm3"].cummax()
    if ec is not None and len(ec):
        b = b.merge(ec, on="cycle", how="left")
        b["ce_difference_pp"] = 100 * (b["ce_volumetric_with_voids"] - b["ce_electrochemical"])
        if area_fraction:
            local = b["q_plate_log_C"] * area_fraction
            b["apparent_density_factor"] = b["plated_C"] / local
            b["ce_loss_charge_C"] = (b["q_plate_log_C"] - b["q_strip_log_C"]) * area_fraction
            b["dead_charge_over_ce_loss"] = b["residue_C"] / b["ce_loss_charge_C"]
    return b


# --------------------------------------------------------------------------- statistics
def _standardized(df: pd.DataFrame, cols: list[str]) -> pd.DataFrame:
    out = df.copy()
    for c in cols:
        v = out[c].to_numpy(float)
        sd = np.nanstd(v)
        out[c] = (v - np.nanmean(v)) / (sd if sd > 0 else 1.0)
    return out


def hazard_models(lt: pd.DataFrame, desc: pd.DataFrame, covariates: list[str]) -> pd.DataFrame:
    """Discrete-time logistic (primary) and Cox hazard ratios per SD, with CIs and concordance."""
    d = lt.merge(desc, on="site")
    cols = [*covariates, "log_size"]
    d = d.dropna(subset=cols)
    if d["event"].sum() < 3 or len(d) < 10:
        return pd.DataFrame()
    d = _standardized(d, cols)
    rows = []
    fit = stats.fit_discrete_hazard(stats.person_period(d), cols, cycle_effects=False)
    t = fit.table()
    beta = pd.Series(fit.coef, index=list(fit.names))
    risk = sum(beta[c] * d[c].to_numpy() for c in cols)
    c_index = stats.concordance(d["exit"].to_numpy() + 1, risk, d["event"].to_numpy())
    for _, r in t[t["term"] != "intercept"].iterrows():
        rows.append({"model": "discrete_logit", "term": r["term"], "ratio_per_sd": r["odds_ratio"],
                     "ci_low": r["or_ci_low"], "ci_high": r["or_ci_high"], "p": r["p"],
                     "concordance": c_index, "n_sites": len(d), "n_events": int(d["event"].sum())})
    try:
        cox = stats.fit_cox(d, cols, penalizer=0.01)
        for _, r in cox.iterrows():
            rows.append({"model": "cox", "term": r["term"], "ratio_per_sd": r["hazard_ratio"],
                         "ci_low": r["hr_ci_low"], "ci_high": r["hr_ci_high"], "p": r["p"],
                         "concordance": cox.attrs["concordance"], "n_sites": len(d),
                         "n_events": int(d["event"].sum())})
    except Exception as exc:  # lifelines convergence failures are reported, not fatal
        log.warning("Cox model did not converge (%s); discrete-time model kept", exc)
    return pd.DataFrame(rows)


def correlate(sites: pd.DataFrame, site_cycles: pd.DataFrame, desc: pd.DataFrame, lts: dict[str, pd.DataFrame],
              params: LifetimeParams) -> pd.DataFrame:
    """Spearman of each descriptor with lifetime and dead fraction (block bootstrap CIs), BH."""
    dead_frac = (site_cycles.groupby("site")["residue_nm3"].max()
                 / sites.set_index("site")["peak_plated_nm3"].clip(lower=1.0)).reindex(desc["site"]).to_numpy()
    inact = lts["inactivation"].set_index("site")
    life = (inact["exit"] - inact["entry"] + 1).reindex(desc["site"]).to_numpy(float)
    pos = sites.set_index("site").loc[desc["site"], ["y_nm", "x_nm"]].to_numpy()
    rows = []
    cols = [c for c in desc.columns if c != "site"]
    cache: dict = {}  # resamples and ranks shared by the descriptors (same sites, same seed)
    for c in cols:
        x = desc[c].to_numpy(float)
        if np.isfinite(x).sum() < 10 or np.nanstd(x) == 0:
            continue
        for target, y in (("lifetime_cycles", life), ("dead_fraction", dead_frac)):
            r = stats.spearman_block_bootstrap(x, y, pos, block=params.block_nm, n_boot=params.n_boot,
                                               seed=params.seed, cache=cache)
            rows.append({"descriptor": c, "target": target, **r})
    out = pd.DataFrame(rows)
    if len(out):
        out["p_bh"] = stats.benjamini_hochberg(out["p"].to_numpy())
    return out


def run_warnings(cycles: pd.DataFrame) -> list[str]:
    """What the summary must tell a batch user who reads no figure: cycles whose surface shrank
    while plating and grew while stripping (``plating_looks_swapped`` of cycles.tsv)."""
    from ecafm.segment import swapped_cycles

    bad = swapped_cycles(cycles)
    if not bad:
        return []
    return [f"cycles {bad}: the surface shrank while plating and grew while stripping; check "
            "positive_current_plates of the data set (ecafm inspect LOG shows each cycle's charges), or, "
            "without a log, the frame sheet's phase and half_cycle"]


def analyse(sites: pd.DataFrame, site_cycles: pd.DataFrame, cycles: pd.DataFrame, h_ref: np.ndarray,
            h_peak: np.ndarray, pixel_nm: float, *, ec: pd.DataFrame | None, area_fraction: float | None,
            params: LifetimeParams = LifetimeParams()) -> dict[str, Any]:
    """Everything of the stage in memory: tables and the JSON summary."""
    if len(sites) == 0:
        log.warning("no sites were found: lifetime statistics are empty (balance only)")
        bal = balance(cycles, ec, area_fraction=area_fraction) if len(cycles) else pd.DataFrame()
        empty = pd.DataFrame()
        return {"summary": {"hypothesis": "higher initial porosity / roughness -> shorter site lifetime "
                            "and more dead residue", "params": asdict(params), "n_sites": 0,
                            "events": dict.fromkeys(ENDPOINTS, 0), "hazard": [], "kaplan_meier": {},
                            "balance": bal.to_dict(orient="records"),
                            "note": "no sites found by segmentation", "warnings": run_warnings(cycles)},
                "lifetimes": empty, "descriptors": empty, "hazard": empty, "correlations": empty,
                "sensitivity": empty, "balance": bal}
    sites = sites.copy()
    sites["dead_cycle"] = dead_cycles(sites, site_cycles, params.dead_fraction)
    desc = site_descriptors(sites, h_ref, h_peak, pixel_nm, tuple(params.window_px),
                            pit_radius_nm=params.pit_radius_nm, pit_depth_nm=params.pit_depth_nm)
    lts = {e: lifetime_table(sites, e) for e in ENDPOINTS}
    primary = [f"{d}_w{params.primary_window}_pre" for d in PRIMARY]
    hazards = []
    for e, lt in lts.items():
        h = hazard_models(lt, desc, primary)
        if len(h):
            h.insert(0, "endpoint", e)
            hazards.append(h)
    hazard = pd.concat(hazards, ignore_index=True) if hazards else pd.DataFrame()
    corr = correlate(sites, site_cycles, desc, lts, params)
    km = {}
    for d in primary:
        x = desc.set_index("site")[d].reindex(lts["inactivation"]["site"]).to_numpy()
        ok = np.isfinite(x)
        if ok.sum() >= 9:
            for e in ENDPOINTS:
                lt = lts[e][ok]
                if lt["event"].sum() >= 2:
                    km[f"{e}:{d}"] = stats.kaplan_meier_by_groups(lt, stats.tertiles(x[ok]))
    sens = []
    for f in params.sensitivity_fractions:
        s2 = sites.copy()
        s2["dead_cycle"] = dead_cycles(sites, site_cycles, f)
        h = hazard_models(lifetime_table(s2, "dead"), desc, primary)
        if not len(h):
            log.info("dead-Li threshold %.2f: too few events for a hazard model", f)
            continue
        for _, r in h[h["model"] == "discrete_logit"].iterrows():
            sens.append({"dead_fraction_threshold": f, "term": r["term"], "ratio_per_sd": r["ratio_per_sd"],
                         "ci_low": r["ci_low"], "ci_high": r["ci_high"], "p": r["p"],
                         "n_events": r["n_events"]})
    bal = balance(cycles, ec, area_fraction=area_fraction)
    lifetimes = pd.concat([lt.assign(endpoint=e) for e, lt in lts.items()], ignore_index=True)
    summary = {
        "hypothesis": "higher initial porosity / roughness -> shorter site lifetime and more dead residue",
        "params": asdict(params),
        "n_sites": int(len(sites)),
        "events": {e: int(lt["event"].sum()) for e, lt in lts.items()},
        "hazard": hazard.to_dict(orient="records"),
        "kaplan_meier": km,
        "balance": bal.to_dict(orient="records"),
        "kurtosis_convention": "excess kurtosis (0 for a Gaussian surface), as Gwyddion",
        "warnings": run_warnings(cycles),
    }
    return {"summary": summary, "lifetimes": lifetimes, "descriptors": desc, "hazard": hazard,
            "correlations": corr, "sensitivity": pd.DataFrame(sens), "balance": bal}


# --------------------------------------------------------------------------- I/O
def _read_table(path) -> pd.DataFrame:
    try:
        return pd.read_csv(path, sep="\t")
    except pd.errors.EmptyDataError:
        return pd.DataFrame()


@one_blas_thread
def run_lifetime(sites_path, site_cycles_path, cycles_path, segment0_path, out_dir, *, ec_log=None,
                 positive_current_plates: bool = True, electrode_area_cm2: float | None = None,
                 params: LifetimeParams = LifetimeParams(), step) -> dict[str, Path]:
    """Read the site tables, the first segment cube and the log; write every lifetime output."""
    from ecafm.store import open_cube, write_file, write_table

    sites, sc, cyc = (_read_table(p) for p in (sites_path, site_cycles_path, cycles_path))
    seg = open_cube(segment0_path)
    pixel_nm = float(seg.attrs["pixel_size_nm"][1])
    h_ref = seg["h_ref"].values.astype(float)
    h_peak = seg["h_peak"].values.astype(float)
    ec = None
    if ec_log:
        from ecafm.io.echem import read_ec_log

        ec = ec_charge_per_cycle(read_ec_log(ec_log).data, positive_current_plates=positive_current_plates)
    area_fraction = None
    if electrode_area_cm2:
        fov_nm2 = float(cyc["area_px"].iloc[0]) * float(seg.attrs["pixel_area_nm2"])
        area_fraction = fov_nm2 * 1e-14 / float(electrode_area_cm2)
    res = analyse(sites, sc, cyc, h_ref, h_peak, pixel_nm, ec=ec, area_fraction=area_fraction, params=params)
    out = Path(out_dir)
    paths = {}
    for name in ("lifetimes", "descriptors", "hazard", "correlations", "sensitivity", "balance"):
        paths[name] = out / f"{name}.tsv"
        write_table(res[name], paths[name], step=step)
    paths["summary"] = out / "summary.json"
    text = json.dumps(res["summary"], indent=1, sort_keys=True, default=float, allow_nan=True)
    write_file(paths["summary"], lambda p: Path(p).write_text(text), step=step, kind="json")
    n_ev = res["summary"]["events"]
    log.info("lifetimes of %d sites: events %s", res["summary"]["n_sites"], n_ev)
    return paths


# --------------------------------------------------------------------------- generator oracle
def oracle_dead_fit(physics) -> dict[str, float]:
    """Fit the discrete-time hazard of dead-Li conversion on a generator's *true* site histories.

    Checks the statistics layer alone (not segmentation): the generator draws dead-Li events per
    site and cycle from a logit-linear model in standardized porosity, roughness and size, which
    this model must recover. Returns the odds ratio per SD of porosity, its p value and the
    concordance of the fitted risk with the true event times.
    """
    z = np.asarray(physics.site_z)  # (site, cycle, 3): porosity, roughness, size, NaN when not at risk
    et = np.asarray(physics.site_event_type)
    ec = np.asarray(physics.site_event_cycle)
    s, c = np.nonzero(np.isfinite(z).all(axis=2))
    pp = pd.DataFrame({"site": s, "cycle": c, "z_porosity": z[s, c, 0], "z_roughness": z[s, c, 1],
                       "z_size": z[s, c, 2], "y": ((et[s] == 2) & (ec[s] == c)).astype(int)})
    fit = stats.fit_discrete_hazard(pp, ["z_porosity", "z_roughness", "z_size"])
    t = fit.table().set_index("term")
    first = pp.groupby("site").agg(entry=("cycle", "min"), exit=("cycle", "max"), event=("y", "max"),
                                   zp=("z_porosity", "first"), zr=("z_roughness", "first"),
                                   zs=("z_size", "first"))
    b = t["coef"]
    risk = b["z_porosity"] * first["zp"] + b["z_roughness"] * first["zr"] + b["z_size"] * first["zs"]
    return {"odds_ratio": float(t.loc["z_porosity", "odds_ratio"]), "p": float(t.loc["z_porosity", "p"]),
            "concordance": stats.concordance(first["exit"].to_numpy() + 1, risk.to_numpy(),
                                             first["event"].to_numpy()),
            "n_events": int(pp["y"].sum())}
