# ecafm: in situ EC-AFM of metal anodes, from raw instrument dumps to per-site lifetimes.
#
# Output paths (grammar):
#   resources/synth/{dataset}/...                 synthetic raw data + truth (sheet column `synth`)
#   results/cubes/{dataset}.zarr                  ingested cube (+ .prov.json provenance record)
#   results/cubes/{dataset}.qc.tsv                per-frame ingest QC
#   results/level/{dataset}/cycle_{cycle}.zarr    leveled frames of one cycle
#   results/register/{dataset}/...                transforms, registered cubes per cycle
#   results/segment/{dataset}/cycle_{cycle}.zarr  change labels, state classes (+ .classes.tsv)
#   results/sites/{dataset}/...                   labels.zarr, sites/site_cycles/cycles/tiles.tsv
#   results/figures/{dataset}/{stage}.png         one QC figure per stage
#   results/compare/{datasets,cycles,survival}.tsv  the data sets side by side (+ figures/compare.png)
#   results/score/{dataset}.tsv                   accuracy against the truth (synthetic data sets)
#   logs/{rule}/{dataset}[/...].log               one log per job


from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/synth.smk"
include: "workflow/rules/ingest.smk"
include: "workflow/rules/register.smk"
include: "workflow/rules/segment.smk"
include: "workflow/rules/lifetime.smk"
include: "workflow/rules/plots.smk"
include: "workflow/rules/audit.smk"


rule all:
    default_target: True
    input:
        get_final_outputs,
        *map(analysis_outputs, DATASETS["id"]),
        "results/compare/datasets.tsv",
        "results/figures/compare.png",
