"""End-to-end check of the lifetime statistics against the generator, over many seeds (issue 6).

For each seed of a preset: generate, ingest, level, register, segment, track sites and run the
lifetime stage exactly as the workflow does (in process, ecafm.pipeline), then compare with the
generator's truth:

- the recovered odds ratio per SD of the porosity proxy for dead-Li conversion (discrete-time
  logistic model of the lifetime stage) against the generator's ``dead_odds_ratio_per_sd_porosity``;
- the same model refitted on the pipeline's own lifetimes with the generator's TRUE porosity and
  roughness at the pipeline's site centres (separates the lifetime measurement from the
  morphology descriptor);
- the accuracy table of ``ecafm score`` (volumetric CE per cycle, lifetime exact cycle, C-index).

Usage (from the repository root, ecafm's venv)::

    python benchmarks/lifetime_seeds.py --preset demo --seeds 20 [--noise 1.0]

Writes ``benchmarks/data/lifetime_seeds_{preset}.json`` and prints a summary. Not a test: about a
minute per seed on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent


def one_seed(preset: str, seed: int, work: Path, noise: float | None, segment: dict | None = None) -> dict:
    from ecafm.ingest import ingest
    from ecafm.lifetime import LifetimeParams, hazard_models, lifetime_table, run_lifetime
    from ecafm.pipeline import run_level_register, run_segment_sites
    from ecafm.score import TruthGrid, score_run
    from ecafm.store import Step, open_cube
    from ecafm.synth import synth

    root = work / f"{preset}_{seed}"
    synth(preset, seed, root / "data", overrides={"noise_nm": noise} if noise is not None else None)
    ingest([root / "data" / "raw"], root / "cube.zarr", ec_log=root / "data" / "ec" / "log.mpt",
           frame_sheet=root / "data" / "frames.tsv")
    reg = run_level_register(root / "cube.zarr", root / "out", apply=True)
    from ecafm.segment import SegmentParams

    paths = run_segment_sites(reg, root / "out", segment=SegmentParams(**(segment or {})))
    lt_paths = run_lifetime(paths["sites"], paths["site_cycles"], paths["cycles"], paths["segments"][0],
                            root / "lifetime", ec_log=root / "data" / "ec" / "log.mpt",
                            electrode_area_cm2=1.0, step=Step("correlate_lifetimes"))
    truth = open_cube(root / "data" / "truth.zarr").load()
    sc = score_run(root / "out", root / "data" / "truth.zarr")
    hz = pd.read_csv(lt_paths["hazard"], sep="\t")
    row = hz[(hz["endpoint"] == "dead") & (hz["model"] == "discrete_logit")
             & hz["term"].str.startswith("porosity_proxy")]
    # refit on the pipeline's lifetimes with the true covariates at the pipeline's site centres
    tf = open_cube(reg["transforms"]).load()
    ref = int(np.flatnonzero(tf["ok"].values)[0])
    grid = TruthGrid(truth, tf.attrs["common_field_px"], int(tf["frame"].values[ref]))
    por = grid(truth["porosity_true"].values, order=1)
    rough = grid(truth["roughness_true"].values, order=1)
    sites = pd.read_csv(paths["sites"], sep="\t")
    desc = pd.read_csv(lt_paths["descriptors"], sep="\t")
    px = float(truth.attrs["pixel_size_nm"])
    iy = np.clip(np.round(sites["y_nm"] / px - 0.5).astype(int), 0, por.shape[0] - 1)
    ix = np.clip(np.round(sites["x_nm"] / px - 0.5).astype(int), 0, por.shape[1] - 1)
    d = desc.set_index("site").loc[sites["site"]].reset_index()
    d["true_porosity"], d["true_roughness"] = por[iy, ix], rough[iy, ix]
    hz_true = hazard_models(lifetime_table(sites, "dead"), d, ["true_porosity", "true_roughness"])
    hz_true = hz_true[(hz_true["model"] == "discrete_logit") & (hz_true["term"] == "true_porosity")]
    from scipy.stats import spearmanr

    return {
        "seed": seed,
        "true_or": float(truth.attrs["dead_odds_ratio_per_sd_porosity"]),
        "or_proxy": float(row["ratio_per_sd"].iloc[0]) if len(row) else float("nan"),
        "p_proxy": float(row["p"].iloc[0]) if len(row) else float("nan"),
        "or_true_covariates": float(hz_true["ratio_per_sd"].iloc[0]) if len(hz_true) else float("nan"),
        "proxy_vs_true_porosity_spearman": float(spearmanr(
            d[f"porosity_proxy_w{LifetimeParams().primary_window}_pre"], d["true_porosity"], nan_policy="omit")[0]),
        **{k: float(sc[k]) for k in ("ce_max_abs_err_pp", "lifetime_exact_cycle", "lifetime_cindex",
                                     "site_f1", "rel_err_plated", "rel_err_stripped", "rel_err_dead")},
    }


def summarize(rows: list[dict], preset: str) -> None:
    """Print the accuracy summary of a list of per-seed rows."""
    df = pd.DataFrame([r for r in rows if "error" not in r])
    if len(df):
        gm = lambda v: float(np.exp(np.nanmean(np.log(v))))  # noqa: E731
        true_or = float(df["true_or"].iloc[0])
        print(f"\n{preset}, {len(df)} seeds (failed: {len(rows) - len(df)}); true OR {true_or:.3f}")
        for col in ("or_proxy", "or_true_covariates"):
            print(f"  {col}: geometric mean {gm(df[col]):.3f} ({100 * (gm(df[col]) / true_or - 1):+.0f}%), "
                  f"right sign {100 * np.mean(df[col] > 1):.0f}% of seeds")
        for col in ("proxy_vs_true_porosity_spearman", "ce_max_abs_err_pp", "lifetime_exact_cycle",
                    "lifetime_cindex", "site_f1"):
            print(f"  {col}: median {df[col].median():.3f}, range {df[col].min():.3f}-{df[col].max():.3f}")
        n = len(df)
        what = "false positives; target <= 5%" if true_or == 1.0 else "power"
        print(f"  porosity p < 0.05 in {int((df['p_proxy'] < 0.05).sum())} of {n} seeds ({what})")
        for col, op, lim in (("lifetime_exact_cycle", ">=", 0.8), ("lifetime_cindex", ">=", 0.85),
                             ("ce_max_abs_err_pp", "<=", 2.0), ("rel_err_plated", "<=", 0.05),
                             ("rel_err_stripped", "<=", 0.05), ("rel_err_dead", "<=", 0.15)):
            ok = df[col] >= lim if op == ">=" else df[col].abs() <= lim
            print(f"  {col} {op} {lim}: {int(ok.sum())} of {n} seeds")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="demo")
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--noise", type=float, default=None, help="override noise_nm")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--segment-set", nargs="+", default=[], metavar="KEY=VALUE",
                    help="override segment parameters (config key segment), e.g. residue_retention=0.4")
    ap.add_argument("--summarize", type=Path, nargs="+", default=None, metavar="JSON",
                    help="only print the summary of earlier runs' JSON files (pooled)")
    a = ap.parse_args(argv)
    if a.summarize:
        summarize([r for f in a.summarize for r in json.loads(f.read_text())], a.preset)
        return 0
    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.WARNING)
    import yaml

    seg = {k: yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in a.segment_set)}
    out = a.out or HERE / "data" / f"lifetime_seeds_{a.preset}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="ecafm-lt-") as tmp:
        for s in range(a.first_seed, a.first_seed + a.seeds):
            t0 = time.time()
            try:
                r = one_seed(a.preset, s, Path(tmp), a.noise, seg)
            except Exception as exc:  # a failed seed is reported, not hidden
                r = {"seed": s, "error": f"{type(exc).__name__}: {exc}"}
            r["seconds"] = round(time.time() - t0, 1)
            rows.append(r)
            print(json.dumps(r), flush=True)
            out.write_text(json.dumps(rows, indent=1))
    summarize(rows, a.preset)
    return 0


if __name__ == "__main__":
    sys.exit(main())
