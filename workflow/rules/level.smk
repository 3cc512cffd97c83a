rule level_cycle:
    input:
        cube="results/cubes/{dataset}.zarr",
    output:
        directory("results/level/{dataset}/cycle_{cycle}.zarr"),
    log:
        "logs/level_cycle/{dataset}/cycle_{cycle}.log",
    benchmark:
        "benchmarks/level_cycle/{dataset}/cycle_{cycle}.tsv"
    conda:
        "../../envs/ecafm.yaml"
    threads: 2
    resources:
        mem_mb=get_mem_mb(base_mb=1000, per_input_mb=1),
        runtime=get_runtime(base_min=10, per_input_gb_min=10),
        dask_scheduler=get_dask_scheduler,
    params:
        level=get_level_params,
    script:
        "../../scripts/level_cycle.py"
