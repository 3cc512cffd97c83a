# Helpers only: no rules here.
import re
from pathlib import Path

import pandas as pd
from snakemake.utils import validate


validate(config, schema="../schemas/config.schema.yaml")

DATASETS = pd.read_csv(
    config["datasets"], sep="\t", dtype=str, comment="#", keep_default_na=False
).set_index("id", drop=False)
validate(DATASETS, schema="../schemas/datasets.schema.yaml")
DATASETS = DATASETS[DATASETS["id"].isin(config["run"])] if config["run"] else DATASETS


wildcard_constraints:
    dataset="|".join(map(re.escape, DATASETS["id"])) or "NO_DATASET",


def get_dataset(wildcards):
    return DATASETS.loc[wildcards.dataset]


def is_synthetic(dataset):
    return bool(DATASETS.loc[dataset, "synth"])


def get_synth_spec(wildcards):
    preset, _, seed = DATASETS.loc[wildcards.dataset, "synth"].partition(":")
    return {"preset": preset, "seed": int(seed or 0)}


def get_raw_sources(wildcards):
    """Raw location of a dataset: a folder, a glob or one file (as the sheet says)."""
    return [DATASETS.loc[wildcards.dataset, "raw"]]


def get_ingest_inputs(wildcards):
    """Files Snakemake must see: the log and frame sheet, or the synthetic generator's outputs.

    Raw files of real datasets are listed at parse time so that a changed file re-runs ingest.
    """
    row = DATASETS.loc[wildcards.dataset]
    inputs = {}
    if row["ec_log"]:
        inputs["ec_log"] = row["ec_log"]
    if row["frames"]:
        inputs["frames"] = row["frames"]
    if not is_synthetic(wildcards.dataset):
        raw = Path(row["raw"])
        if raw.is_dir():
            inputs["raw"] = sorted(str(p) for p in raw.iterdir() if p.is_file())
        elif any(c in row["raw"] for c in "*?["):
            inputs["raw"] = sorted(map(str, Path().glob(row["raw"])))
        else:
            inputs["raw"] = [row["raw"]]
    return inputs


def get_ingest_params(wildcards):
    row = DATASETS.loc[wildcards.dataset]
    return {
        "fmt": row["format"] or "auto",
        "channel": row.get("channel") or None,
        "metal": row["metal"] or "Li",
        "positive_current_plates": row["positive_current_plates"].lower() != "false",
        "clock_offset_s": float(row.get("clock_offset_s") or 0.0),
        "frame_chunk": config["ingest"]["frame_chunk"],
        "qc": config["ingest"]["qc"],
    }


def get_final_outputs():
    out = []
    for ds in DATASETS["id"]:
        out.append(f"results/cubes/{ds}.zarr")
        out.append(f"results/figures/{ds}/ingest.png")
    return out
