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
