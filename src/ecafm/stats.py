"""Lifetime statistics: discrete-time hazard, Cox, Kaplan-Meier, Spearman with block bootstrap.

Pure functions on tables (pandas) and arrays; no paths. Libraries do the standard parts
(lifelines: Cox with left truncation, Kaplan-Meier, log-rank, concordance; scipy.stats:
Spearman, Benjamini-Hochberg). Written here because no kept library offers it with standard
errors: the discrete-time logistic hazard fit (IRLS, 30 lines), which handles interval censoring
(events known to within a cycle) and left truncation (sites born later enter at birth) exactly,
and is the model the synthetic generator draws its events from.

Lifetime table convention (one row per site and endpoint): ``entry`` (birth cycle), ``exit``
(last cycle observed at risk, i.e. the event cycle or the last good cycle), ``event`` (1 when the
endpoint happened in ``exit``, else 0 = right censored), plus descriptor columns.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- person-period
def person_period(lifetimes: pd.DataFrame, *, time_varying: dict[str, np.ndarray] | None = None,
                  site_col: str = "site") -> pd.DataFrame:
    """Expand a lifetime table to one row per site and cycle at risk.

    Parameters
    ----------
    lifetimes : DataFrame
        Columns ``site, entry, exit, event`` and static covariates.
    time_varying : dict of name -> array (n_sites, n_cycles), optional
        Covariates that change with the cycle (row order = ``lifetimes`` row order).

    Returns
    -------
    DataFrame with ``site, cycle, y`` (1 in the event cycle), the static and time-varying
    covariates.
    """
    entry = lifetimes["entry"].to_numpy(int)
    exit_ = lifetimes["exit"].to_numpy(int)
    if np.any(exit_ < entry):
        bad = lifetimes[site_col].to_numpy()[exit_ < entry][:5]
        raise ValueError(f"exit before entry for sites {list(bad)}")
    n_per = exit_ - entry + 1
    rows = np.repeat(np.arange(len(lifetimes)), n_per)
    offs = np.arange(n_per.sum()) - np.repeat(np.cumsum(n_per) - n_per, n_per)
    cycle = entry[rows] + offs
    pp = lifetimes.iloc[rows].reset_index(drop=True).copy()
    pp["cycle"] = cycle
    pp["y"] = ((cycle == exit_[rows]) & (lifetimes["event"].to_numpy(int)[rows] == 1)).astype(int)
    for name, arr in (time_varying or {}).items():
        pp[name] = np.asarray(arr)[rows, cycle]
    return pp


# --------------------------------------------------------------------------- discrete-time logit
@dataclass(frozen=True)
class LogitFit:
    """Discrete-time logistic hazard: coefficients with standard errors and odds ratios."""

    names: tuple[str, ...]
    coef: np.ndarray
    se: np.ndarray
    n_obs: int
    n_events: int
    converged: bool

    def table(self) -> pd.DataFrame:
        from scipy import stats

        z = self.coef / self.se
        return pd.DataFrame({
            "term": self.names,
            "coef": self.coef,
            "se": self.se,
            "odds_ratio": np.exp(self.coef),
            "or_ci_low": np.exp(self.coef - 1.959964 * self.se),
            "or_ci_high": np.exp(self.coef + 1.959964 * self.se),
            "p": 2 * stats.norm.sf(np.abs(z)),
        })


def fit_discrete_hazard(pp: pd.DataFrame, covariates: Sequence[str], *, y_col: str = "y",
                        cycle_effects: bool = False, max_iter: int = 50, tol: float = 1e-9) -> LogitFit:
    """Logistic regression of the per-cycle event indicator on covariates (IRLS, Wald SEs).

    ``cycle_effects`` adds one intercept per cycle (a non-parametric baseline hazard).
    """
    X = [np.ones(len(pp))]
    names = ["intercept"]
    if cycle_effects:
        for c in sorted(pp["cycle"].unique())[1:]:
            X.append((pp["cycle"].to_numpy() == c).astype(float))
            names.append(f"cycle_{c}")
    for c in covariates:
        X.append(pp[c].to_numpy(float))
        names.append(c)
    X = np.column_stack(X)
    y = pp[y_col].to_numpy(float)
    if not np.isfinite(X).all():
        raise ValueError("covariates contain NaN or inf; drop or impute those rows first")
    beta = np.zeros(X.shape[1])
    converged = False
    for _ in range(max_iter):
        eta = np.clip(X @ beta, -30, 30)
        p = 1.0 / (1.0 + np.exp(-eta))
        w = p * (1 - p) + 1e-12
        grad = X.T @ (y - p)
        hess = X.T @ (X * w[:, None])
        step = np.linalg.solve(hess + 1e-10 * np.eye(len(beta)), grad)
        beta = beta + step
        if np.max(np.abs(step)) < tol:
            converged = True
            break
    eta = np.clip(X @ beta, -30, 30)
    p = 1.0 / (1.0 + np.exp(-eta))
    cov = np.linalg.pinv(X.T @ (X * (p * (1 - p))[:, None]))
    return LogitFit(tuple(names), beta, np.sqrt(np.diag(cov)), int(len(y)), int(y.sum()), converged)


# --------------------------------------------------------------------------- Cox, KM, concordance
def fit_cox(lifetimes: pd.DataFrame, covariates: Sequence[str], *, penalizer: float = 0.0) -> pd.DataFrame:
    """Cox model (lifelines) with left truncation at birth: hazard ratios per unit of covariate.

    Durations are in cycles: a site entering at cycle ``entry`` and leaving at ``exit`` is at
    risk on ``(entry, exit + 1]`` (Efron ties).
    """
    from lifelines import CoxPHFitter

    df = lifetimes[[*covariates]].copy()
    df["T"] = lifetimes["exit"].to_numpy(float) + 1.0
    df["E"] = lifetimes["event"].to_numpy(int)
    df["entry"] = lifetimes["entry"].to_numpy(float)
    cph = CoxPHFitter(penalizer=penalizer)
    cph.fit(df, duration_col="T", event_col="E", entry_col="entry")
    s = cph.summary
    out = pd.DataFrame({
        "term": s.index,
        "coef": s["coef"].to_numpy(),
        "se": s["se(coef)"].to_numpy(),
        "hazard_ratio": s["exp(coef)"].to_numpy(),
        "hr_ci_low": s["exp(coef) lower 95%"].to_numpy(),
        "hr_ci_high": s["exp(coef) upper 95%"].to_numpy(),
        "p": s["p"].to_numpy(),
    })
    out.attrs["concordance"] = float(cph.concordance_index_)
    return out


def concordance(times: np.ndarray, risk: np.ndarray, events: np.ndarray) -> float:
    """Harrell's C: higher ``risk`` should mean shorter ``times`` (lifelines)."""
    from lifelines.utils import concordance_index

    return float(concordance_index(times, -np.asarray(risk), events))


def kaplan_meier_by_groups(lifetimes: pd.DataFrame, groups: np.ndarray) -> dict:
    """Kaplan-Meier per group (e.g. descriptor tertiles): curves, medians with CIs, log-rank."""
    from lifelines import KaplanMeierFitter
    from lifelines.statistics import multivariate_logrank_test
    from lifelines.utils import median_survival_times

    T = lifetimes["exit"].to_numpy(float) + 1.0
    E = lifetimes["event"].to_numpy(int)
    entry = lifetimes["entry"].to_numpy(float)
    out = {"groups": {}}
    for g in sorted(pd.unique(groups)):
        m = groups == g
        km = KaplanMeierFitter()
        km.fit(T[m], E[m], entry=entry[m], label=str(g))
        med = float(km.median_survival_time_)
        ci = median_survival_times(km.confidence_interval_)
        out["groups"][str(g)] = {
            "n": int(m.sum()),
            "events": int(E[m].sum()),
            "median": med,
            "median_ci": [float(ci.iloc[0, 0]), float(ci.iloc[0, 1])],
            "timeline": km.survival_function_.index.to_numpy().tolist(),
            "survival": km.survival_function_.iloc[:, 0].to_numpy().tolist(),
        }
    if len(out["groups"]) < 2:  # nothing to test (one data set in a comparison)
        out["logrank_chi2"] = out["logrank_p"] = float("nan")
        return out
    lr = multivariate_logrank_test(T, groups, E)
    out["logrank_chi2"] = float(lr.test_statistic)
    out["logrank_p"] = float(lr.p_value)
    return out


def tertiles(x: np.ndarray) -> np.ndarray:
    """Tertile labels 'low', 'mid', 'high' of a descriptor."""
    q = np.nanquantile(x, [1 / 3, 2 / 3])
    return np.where(x <= q[0], "low", np.where(x <= q[1], "mid", "high"))


# --------------------------------------------------------------------------- correlation
def spearman_block_bootstrap(x: np.ndarray, y: np.ndarray, xy_pos: np.ndarray, *, block: float,
                             n_boot: int = 500, seed: int = 0, cache: dict | None = None) -> dict[str, float]:
    """Spearman rho with a 95% CI from a spatial block bootstrap.

    Sites are grouped into square blocks of side ``block`` (same units as ``xy_pos``, shape
    (n, 2)); blocks are resampled with replacement, which keeps spatial autocorrelation inside
    each resample.

    ``cache``: a dict the caller keeps across calls on the same sites. The resamples depend only
    on which sites are valid (finite x and y), the positions and the seed, and a variable's
    bootstrap ranks only on its values and the resamples, so calls sharing them reuse both; the
    numbers are the same as without it. The lifetime stage tests ~94 descriptors against 2
    targets on the same sites: 188 calls, of which only the x ranks differ.
    """
    from scipy import stats

    x = np.asarray(x, float)
    y = np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y, pos = x[ok], y[ok], np.asarray(xy_pos, float)[ok]
    rho, p = stats.spearmanr(x, y)
    cache = {} if cache is None else cache
    key = ("resamples", ok.tobytes(), pos.tobytes(), float(block), int(n_boot), int(seed))
    if key not in cache:
        cache[key] = _block_resamples(pos, block, n_boot, seed)
    w, n_blocks = cache[key]
    rx, ry = (_cached_ranks(v, w, key, cache) for v in (x, y))
    boots = _weighted_pearson(rx, ry, w)
    lo, hi = np.nanquantile(boots, [0.025, 0.975]) if boots.size else (np.nan, np.nan)
    return {"rho": float(rho), "p": float(p), "ci_low": float(lo), "ci_high": float(hi),
            "n": int(ok.sum()), "n_blocks": n_blocks}


def _block_resamples(pos: np.ndarray, block: float, n_boot: int, seed: int) -> tuple[np.ndarray, int]:
    """Multiplicity of every site in each of ``n_boot`` block resamples: shape (n_boot, n)."""
    key = np.floor(pos / block).astype(int)
    _, blk = np.unique(key, axis=0, return_inverse=True)
    blk = blk.ravel()
    members = [np.flatnonzero(blk == b) for b in range(blk.max() + 1)] if blk.size else []
    rng = np.random.default_rng(seed)
    picks = [np.concatenate([members[b] for b in rng.integers(0, len(members), len(members))])
             for _ in range(n_boot)] if members else []
    return _multiplicities(picks, len(pos)), len(members)


def _multiplicities(picks: list[np.ndarray], n: int) -> np.ndarray:
    if not picks:
        return np.zeros((0, n))
    return np.stack([np.bincount(np.asarray(p, np.int64), minlength=n) for p in picks]).astype(float)


#: rank matrices kept per cache (least recently used dropped): a target's ranks are reused by
#: every descriptor and a descriptor's by both targets; keeping all 94 cost 300 MiB on bench-m
_RANK_CACHE = 8


def _cached_ranks(v: np.ndarray, w: np.ndarray, resample_key: tuple, cache: dict) -> np.ndarray:
    from collections import OrderedDict

    lru = cache.setdefault(("ranks",), OrderedDict())
    key = (resample_key, v.tobytes())
    if key in lru:
        lru.move_to_end(key)
    else:
        lru[key] = _weighted_ranks(v, w)
        if len(lru) > _RANK_CACHE:
            lru.popitem(last=False)
    return lru[key]


def _weighted_ranks(v: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Average ranks of ``v`` within each resample given by the multiplicities ``w`` (n_boot, n).

    A resample of the sites is a multiplicity per site (how often the bootstrap drew it), and its
    average ranks follow from the ORIGINAL order: sort the values once; the values equal to the
    k-th distinct value get rank ``(sum of w below it) + (w of that value + 1) / 2`` (duplicates
    are ties, as ``scipy.stats.rankdata`` ranks them).
    """
    order = np.argsort(v, kind="stable")
    vs = v[order]
    new_value = np.r_[True, vs[1:] != vs[:-1]]
    ws = w[:, order]
    if new_value.all():  # no ties: every distinct value is one site
        r = np.empty_like(w)
        r[:, order] = np.cumsum(ws, axis=1) - ws + (ws + 1.0) / 2.0
        return r
    wg = np.add.reduceat(ws, np.flatnonzero(new_value), axis=1)  # per distinct value
    rg = np.cumsum(wg, axis=1) - wg + (wg + 1.0) / 2.0
    group = np.cumsum(new_value) - 1
    r = np.empty_like(w)
    r[:, order] = rg[:, group]
    return r


def _weighted_pearson(rx: np.ndarray, ry: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Pearson correlation of the ranks weighted by the multiplicities: Spearman's rho per resample.

    Resamples in which x or y is constant are dropped, as spearmanr would return NaN for them.
    """
    if not len(w):
        return np.zeros(0)
    tot = w.sum(axis=1)
    wx, wy = w * rx, w * ry
    mx, my = wx.sum(axis=1) / tot, wy.sum(axis=1) / tot
    # moments about the origin: ranks' mean^2 is ~3x their variance, so this loses < 1 digit
    num = np.einsum("ij,ij->i", wx, ry) - tot * mx * my
    sxx = np.einsum("ij,ij->i", wx, rx) - tot * mx * mx
    syy = np.einsum("ij,ij->i", wy, ry) - tot * my * my
    # constant x or y in a resample: every rank equal (zero spread up to rounding)
    keep = (sxx > 1e-9 * tot**3) & (syy > 1e-9 * tot**3)
    return num[keep] / np.sqrt(sxx[keep] * syy[keep])


def _spearman_rows(x: np.ndarray, y: np.ndarray, picks: list[np.ndarray]) -> np.ndarray:
    """Spearman rho of ``(x[idx], y[idx])`` for every index array of ``picks``, in one pass.

    The ranks of each resample come from one sort of the original values
    (:func:`_weighted_ranks`), and rho is the multiplicity-weighted Pearson correlation of them
    (:func:`_weighted_pearson`): the same numbers as ``scipy.stats.spearmanr`` per resample,
    with one sort for all resamples instead of two per resample (the lifetime stage's 188
    bootstraps of 500 resamples took 2.3 s, mostly in argsort).
    """
    if not picks:
        return np.zeros(0)
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    w = _multiplicities(picks, x.size)
    return _weighted_pearson(_weighted_ranks(x, w), _weighted_ranks(y, w), w)


def benjamini_hochberg(p: Sequence[float]) -> np.ndarray:
    """BH-adjusted p values (scipy.stats.false_discovery_control)."""
    from scipy import stats

    p = np.asarray(p, float)
    out = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    if ok.any():
        out[ok] = stats.false_discovery_control(p[ok], method="bh")
    return out


# --------------------------------------------------------------------------- standardization
def standardize(df: pd.DataFrame, cols: Sequence[str]) -> pd.DataFrame:
    """z-scores (mean 0, SD 1) of the given columns; the scale is recorded in attrs."""
    out = df.copy()
    scale = {}
    for c in cols:
        v = out[c].to_numpy(float)
        mu, sd = np.nanmean(v), np.nanstd(v)
        out[c] = (v - mu) / (sd if sd > 0 else 1.0)
        scale[c] = {"mean": float(mu), "sd": float(sd)}
    out.attrs["standardization"] = scale
    return out
