# Helpers only: no rules here.
import math
import re
from pathlib import Path

import pandas as pd
from snakemake.logging import logger
from snakemake.utils import validate

validate(config, schema="../schemas/config.schema.yaml")

DATASETS = pd.read_csv(
    config["datasets"], sep="\t", dtype=str, comment="#", keep_default_na=False
).set_index("id", drop=False)
validate(DATASETS, schema="../schemas/datasets.schema.yaml")
if DATASETS.index.duplicated().any():
    raise ValueError(
        f"{config['datasets']}: data set id(s) "
        f"{sorted(set(DATASETS.index[DATASETS.index.duplicated()]))} appear in more than one row; "
        "every output path is named by the id, so give each row its own id"
    )
if config["run"] and set(config["run"]) - set(DATASETS["id"]):
    raise ValueError(
        f"config run: {sorted(set(config['run']) - set(DATASETS['id']))} not in {config['datasets']} "
        f"(its ids: {sorted(DATASETS['id'])})"
    )
DATASETS = DATASETS[DATASETS["id"].isin(config["run"])] if config["run"] else DATASETS


wildcard_constraints:
    dataset="|".join(map(re.escape, DATASETS["id"])) or "NO_DATASET",
    cycle=r"\d+",


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


def get_cycles(dataset):
    """Cycles of an ingested cube (known once the ingest checkpoint has run; read once)."""
    from ecafm.level import cube_cycles

    return cube_cycles(checkpoints.ingest_dataset.get(dataset=dataset).output.cube)


def get_level_params(wildcards):
    return config["level"]


def get_register_params(wildcards):
    return config["register"]


def get_loop_weight(wildcards):
    return config["register"]["loop_weight"]


def get_min_peak_ratio(wildcards):
    return config["register"]["min_peak_ratio"]


def get_loop_fusion(wildcards):
    return config["register"]["loop_fusion"]


def get_resample_order(wildcards):
    return config["register"]["resample_order"]


def get_first_leveled(wildcards):
    """Leveled cube of the data set's first cycle (apply_registration aligns to its h_ref)."""
    return f"results/level/{wildcards.dataset}/cycle_{get_cycles(wildcards.dataset)[0]}.zarr"


def get_tip_radius(wildcards):
    """Tip radius (nm) the segment stage erodes with; 0 when tip deconvolution is off
    (SegmentParams.erosion_tip_nm, from the config without importing ecafm here)."""
    seg = config["segment"]
    return float(seg["tip_radius_nm"]) if seg["tip_deconvolution"] else 0.0


def get_compose_inputs(wildcards):
    cycles = get_cycles(wildcards.dataset)
    d = wildcards.dataset
    return {
        "cube": f"results/cubes/{d}.zarr",
        "within": [f"results/register/{d}/within/cycle_{c}.zarr" for c in cycles],
        # the first cycle's link (nothing before it, every kind unlinked) is left out
        "links": [
            f"results/register/{d}/links/into_cycle_{c}.zarr" for c in cycles[1:]
        ],
    }


def get_registered(wildcards):
    d = wildcards.dataset
    return [f"results/register/{d}/cycle_{c}.zarr" for c in get_cycles(d)]


def get_segment_params(wildcards):
    return config["segment"]


def get_metal(wildcards):
    return DATASETS.loc[wildcards.dataset, "metal"] or "Li"


def get_segment_inputs(wildcards):
    """Registered cycles 0 (h_ref), c-2, c-1, c and c+1 (the residue rule needs the next plating,
    and the residue at cycle c-2's trough; of c-2 only two frames are read)."""
    d, c = wildcards.dataset, int(wildcards.cycle)
    cycles = get_cycles(d)
    reg = f"results/register/{d}"
    inputs = {
        "cur": f"{reg}/cycle_{c}.zarr",
        "first": f"{reg}/cycle_{cycles[0]}.zarr",
        "transforms": f"{reg}/transforms.zarr",
    }
    if c - 1 in cycles:
        inputs["prev"] = f"{reg}/cycle_{c - 1}.zarr"
    if c - 2 in cycles and config["segment"]["residue_lookback"] >= 1:
        inputs["prev2"] = f"{reg}/cycle_{c - 2}.zarr"
    if c + 1 in cycles:
        inputs["next"] = f"{reg}/cycle_{c + 1}.zarr"
    return inputs


def get_segmented(wildcards):
    d = wildcards.dataset
    return [f"results/segment/{d}/cycle_{c}.zarr" for c in get_cycles(d)]


def get_final_outputs(wildcards):
    """Ingest and registration outputs of every data set (they need no electrochemistry)."""
    out = []
    for ds in DATASETS["id"]:
        out.append(f"results/figures/{ds}/ingest.png")
        out.append(f"results/figures/{ds}/register.png")
        out.append(f"results/register/{ds}/registered.done")
    return out


_NOT_SEGMENTED = set()


def can_segment(dataset):
    """Whether the ingested cube's first cycle has a plating frame (phase 1).

    The segment stage's h_ref is the last frame before the first plating, and sites are born in
    it. A movie ingested without a potentiostat log or phases has none: its data set stops after
    registration (drift-corrected cube and figure), with a warning that says what to add,
    instead of a segment job that fails.
    """
    from ecafm.level import cube_plates_first

    ok = cube_plates_first(checkpoints.ingest_dataset.get(dataset=dataset).output.cube)
    if not ok and dataset not in _NOT_SEGMENTED:
        _NOT_SEGMENTED.add(dataset)
        from ecafm.segment import no_plating_advice

        row = DATASETS.loc[dataset]
        pcp = row["positive_current_plates"].lower() != "false"
        logger.warning(
            f"Data set {dataset!r}: results/cubes/{dataset}.zarr has no plating frame (phase 1),"
            " so it stops after registration (no segmentation, sites or lifetimes). "
            + no_plating_advice(row["ec_log"], pcp if row["ec_log"] else None)
            + "."
        )
    return ok


def analysis_outputs(dataset):
    """Input function of rule `all` for the segmentation, site and lifetime outputs of one data
    set: none when its first cycle has no plating (known once its ingest checkpoint has run).
    One function per data set, so that a data set whose ingest failed (`--keep-going`) or is
    still running does not hold back the others' analysis."""

    def fn(wildcards):
        if not can_segment(dataset):
            return []
        return [
            f"results/figures/{dataset}/classes.png",
            f"results/sites/{dataset}/sites.tsv",
            f"results/lifetime/{dataset}/summary.json",
            f"results/figures/{dataset}/lifetime.png",
        ] + ([f"results/score/{dataset}.tsv"] if is_synthetic(dataset) else [])

    fn.__name__ = f"analysis_outputs_{dataset}"
    return fn


def get_compare_inputs(wildcards):
    """Inputs of the compare_datasets job, one per run: each analysed data set's lifetime
    summary and site lifetimes, cycles table and first segment cube (for its pixel area); data sets that stop after
    registration have none and get a row that says so (waits for every ingest checkpoint).
    """
    out = []
    for d in DATASETS["id"]:
        if can_segment(d):
            out += [
                f"results/lifetime/{d}/summary.json",
                f"results/lifetime/{d}/lifetimes.tsv",
                f"results/sites/{d}/cycles.tsv",
                f"results/segment/{d}/cycle_{get_cycles(d)[0]}.zarr",
            ]
    return out


def get_lifetime_inputs(wildcards):
    d = wildcards.dataset
    inputs = {
        "sites": f"results/sites/{d}/sites.tsv",
        "site_cycles": f"results/sites/{d}/site_cycles.tsv",
        "cycles": f"results/sites/{d}/cycles.tsv",
        "segment0": f"results/segment/{d}/cycle_{get_cycles(d)[0]}.zarr",
    }
    if DATASETS.loc[d, "ec_log"]:
        inputs["ec_log"] = DATASETS.loc[d, "ec_log"]
    return inputs


def get_lifetime_params(wildcards):
    return config["lifetime"]


def get_cell_params(wildcards):
    """Per-dataset facts the balance needs: current sign convention and electrode area."""
    row = DATASETS.loc[wildcards.dataset]
    area = row.get("electrode_area_cm2", "")
    return {
        "positive_current_plates": row["positive_current_plates"].lower() != "false",
        "electrode_area_cm2": float(area) if area else None,
    }


# Cluster resources. Every rule asks for threads, mem_mb and runtime (minutes); memory and runtime
# grow with the size of the job's inputs and double on each retry (`retries:` in the profiles),
# so a job killed for running out of memory or time is resubmitted with twice as much.


def get_job_input_mb(wildcards, input, per_cycle):
    """MB on disk of a job's inputs: all of them, or (`per_cycle`) one cycle's share of a whole cube.

    A directory (a zarr store) counts all its files; Snakemake's own `input.size_mb` counts it as
    its inode (4 kB).
    """
    from ecafm.store import disk_mb

    mb = sum(disk_mb(f) for f in input)
    return mb / max(len(get_cycles(wildcards.dataset)), 1) if per_cycle else mb


def get_mem_mb(base_mb, per_input_mb, per_cycle=False):
    """mem_mb resource: `base_mb` + `per_input_mb` per MB of input, doubled at each retry.

    `base_mb` covers the interpreter and libraries (about 300 MB resident); `per_input_mb` the
    decompressed working set of the stage relative to its (compressed) input. `per_cycle`: the
    input is a whole data set's cube of which the job reads one cycle.
    """

    def mem_mb(wildcards, input, attempt):
        mb = get_job_input_mb(wildcards, input, per_cycle)
        return int(math.ceil((base_mb + per_input_mb * mb) * 2 ** (attempt - 1)))

    return mem_mb


def get_runtime(base_min, per_input_gb_min, per_cycle=False):
    """runtime resource (minutes): `base_min` + `per_input_gb_min` per GB of input, doubled at each retry."""

    def runtime(wildcards, input, attempt):
        mb = get_job_input_mb(wildcards, input, per_cycle)
        return int(
            math.ceil((base_min + per_input_gb_min * mb / 1000) * 2 ** (attempt - 1))
        )

    return runtime


def get_dask_scheduler(wildcards):
    """Address of an existing dask.distributed scheduler for the heavy rules ("" = threads in the job)."""
    return config["dask_scheduler"]
