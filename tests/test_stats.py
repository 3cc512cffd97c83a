"""Statistics layer: known-answer tests on data simulated here with known parameters."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ecafm.stats import (
    benjamini_hochberg,
    concordance,
    fit_cox,
    fit_discrete_hazard,
    kaplan_meier_by_groups,
    person_period,
    spearman_block_bootstrap,
    tertiles,
)


def _simulate_discrete(n=3000, n_cycles=8, b0=-2.5, b=(0.8, -0.3), seed=0, late_entry=True):
    """Sites with a per-cycle logit hazard; some born later (left truncation)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, len(b)))
    entry = rng.integers(0, 3, n) if late_entry else np.zeros(n, int)
    exit_ = np.full(n, n_cycles - 1)
    event = np.zeros(n, int)
    for i in range(n):
        p = 1 / (1 + np.exp(-(b0 + x[i] @ np.asarray(b))))
        for c in range(entry[i], n_cycles):
            if rng.random() < p:
                exit_[i], event[i] = c, 1
                break
    return pd.DataFrame({"site": np.arange(n), "entry": entry, "exit": exit_, "event": event,
                         **{f"x{k}": x[:, k] for k in range(len(b))}})


def test_person_period_expansion():
    lt = pd.DataFrame({"site": [1, 2], "entry": [0, 2], "exit": [2, 3], "event": [1, 0], "z": [0.5, -1.0]})
    pp = person_period(lt)
    assert pp[["site", "cycle", "y"]].values.tolist() == [[1, 0, 0], [1, 1, 0], [1, 2, 1], [2, 2, 0], [2, 3, 0]]
    with pytest.raises(ValueError, match="exit before entry"):
        person_period(pd.DataFrame({"site": [1], "entry": [3], "exit": [1], "event": [0]}))


def test_discrete_hazard_recovers_known_odds_ratios():
    lt = _simulate_discrete()
    fit = fit_discrete_hazard(person_period(lt), ["x0", "x1"])
    t = fit.table().set_index("term")
    assert fit.converged
    for name, true in (("x0", 0.8), ("x1", -0.3), ("intercept", -2.5)):
        assert abs(t.loc[name, "coef"] - true) < 3 * t.loc[name, "se"], (name, t.loc[name].to_dict())
    assert t.loc["x0", "or_ci_low"] < t.loc["x0", "odds_ratio"] < t.loc["x0", "or_ci_high"]


def test_cox_hazard_ratio_close_to_discrete_odds_ratio_when_hazard_is_small():
    lt = _simulate_discrete(b0=-3.5, n=4000, seed=1)
    cox = fit_cox(lt, ["x0", "x1"]).set_index("term")
    assert abs(np.log(cox.loc["x0", "hazard_ratio"]) - 0.8) < 0.15
    assert cox.attrs["concordance"] > 0.6


def test_concordance_of_true_risk():
    lt = _simulate_discrete(seed=2)
    risk = 0.8 * lt["x0"] - 0.3 * lt["x1"]
    c_true = concordance(lt["exit"], risk, lt["event"])
    c_wrong = concordance(lt["exit"], -risk, lt["event"])
    assert c_true > 0.6 > 0.4 > c_wrong


def test_kaplan_meier_and_logrank():
    lt = _simulate_discrete(seed=3, b=(1.0, 0.0))
    km = kaplan_meier_by_groups(lt, tertiles(lt["x0"].to_numpy()))
    assert km["logrank_p"] < 1e-6
    assert km["groups"]["high"]["survival"][-1] < km["groups"]["low"]["survival"][-1]
    null = kaplan_meier_by_groups(lt, tertiles(lt["x1"].to_numpy()))  # x1 has no effect here
    assert null["logrank_p"] > 0.001


def test_spearman_block_bootstrap_ci():
    rng = np.random.default_rng(4)
    pos = rng.uniform(0, 100, (400, 2))
    x = rng.normal(size=400)
    y = 0.6 * x + rng.normal(size=400)
    r = spearman_block_bootstrap(x, y, pos, block=20.0, n_boot=300)
    assert r["ci_low"] < r["rho"] < r["ci_high"] and r["ci_low"] > 0.3 and r["n_blocks"] == 25
    r0 = spearman_block_bootstrap(x, rng.normal(size=400), pos, block=20.0, n_boot=300)
    assert r0["ci_low"] < 0 < r0["ci_high"]


def test_benjamini_hochberg_known_values():
    p = [0.01, 0.04, 0.03, 0.20]
    # by hand: sorted 0.01 0.03 0.04 0.20 -> p*m/rank 0.04 0.06 0.0533 0.20 -> running min from the top
    np.testing.assert_allclose(benjamini_hochberg(p), [0.04, 0.16 / 3, 0.16 / 3, 0.20])


@pytest.mark.parametrize("decimals", [1, None])  # many ties; none
def test_vectorised_bootstrap_spearman_equals_scipy_per_resample(decimals):
    """The one-pass Spearman of the block bootstrap gives spearmanr's numbers, with and without ties."""
    from scipy import stats

    from ecafm.stats import _spearman_rows

    rng = np.random.default_rng(7)
    x, e = rng.normal(size=60), rng.normal(size=60)
    if decimals is not None:
        x, e = np.round(x, decimals), np.round(e, decimals)
    y = x + e
    picks = [rng.integers(0, 60, rng.integers(20, 60)) for _ in range(50)]
    picks.append(np.array([3, 3, 3, 3]))  # constant x: dropped, as spearmanr gives NaN
    got = _spearman_rows(x, y, picks)
    want = np.array([stats.spearmanr(x[p], y[p])[0] for p in picks[:-1]])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("kept_ranks", [8, 2])  # 2: ranks dropped and recomputed
def test_bootstrap_cache_gives_the_same_numbers(kept_ranks, monkeypatch):
    """Calls sharing a cache (resamples, ranks) return what independent calls return, even when
    the valid sites differ between calls (NaN in x) and a rank vector repeats."""
    import ecafm.stats

    monkeypatch.setattr(ecafm.stats, "_RANK_CACHE", kept_ranks)
    rng = np.random.default_rng(8)
    pos = rng.uniform(0, 100, (200, 2))
    y = rng.normal(size=200)
    xs = [y + rng.normal(size=200) for _ in range(3)]
    xs[1][[5, 17, 40]] = np.nan  # other valid sites: other resamples
    xs.append(xs[0].copy())  # same values again: cached ranks
    cache: dict = {}
    for x in xs + xs[::-1]:
        got = spearman_block_bootstrap(x, y, pos, block=25.0, n_boot=100, seed=3, cache=cache)
        want = spearman_block_bootstrap(x, y, pos, block=25.0, n_boot=100, seed=3)
        assert got == want
    assert sum(k[0] == "resamples" for k in cache) == 2
    assert len(cache[("ranks",)]) == min(kept_ranks, 5)  # y, x0, x2 on all sites; y, x1 without 3
