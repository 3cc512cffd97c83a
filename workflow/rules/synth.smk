rule synthesize_dataset:
    output:
        frames="resources/synth/{dataset}/frames.tsv",
        ec_log="resources/synth/{dataset}/ec/log.mpt",
        truth=directory("resources/synth/{dataset}/truth.zarr"),
    log:
        "logs/synthesize_dataset/{dataset}.log",
    conda:
        "../../envs/ecafm.yaml"
    threads: 1
    resources:
        mem_mb=get_mem_mb(base_mb=2000, per_input_mb=0),
        runtime=get_runtime(base_min=30, per_input_gb_min=0),
    params:
        spec=get_synth_spec,
    script:
        "../../scripts/synthesize_dataset.py"


# Accuracy of a synthetic data set's run against its generator's truth (ecafm score): every
# demo run reports what it measured against the targets of SCIENCE.md.
rule score_dataset:
    input:
        truth="resources/synth/{dataset}/truth.zarr",
        transforms="results/register/{dataset}/transforms.zarr",
        segments=get_segmented,
        labels="results/sites/{dataset}/labels.zarr",
        cycles="results/sites/{dataset}/cycles.tsv",
        sites="results/sites/{dataset}/sites.tsv",
    output:
        "results/score/{dataset}.tsv",
    log:
        "logs/score_dataset/{dataset}.log",
    conda:
        "../../envs/ecafm.yaml"
    threads: 1
    resources:
        mem_mb=get_mem_mb(base_mb=1000, per_input_mb=3),
        runtime=get_runtime(base_min=10, per_input_gb_min=10),
    script:
        "../../scripts/score_dataset.py"
