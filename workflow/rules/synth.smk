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
        mem_mb=2000,
        runtime=30,
    params:
        spec=get_synth_spec,
    script:
        "../../scripts/synthesize_dataset.py"
