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
    # One job per cycle is the parallel axis: 1 thread each lets --cores N run N cycles at
    # once (bench-s, 2 cores: 92.6 s against 129.1 s with 2 threads per job). Raise with
    # --set-threads on nodes with many cores per job.
    threads: 1
    resources:
        mem_mb=get_mem_mb(base_mb=1000, per_input_mb=1),
        runtime=get_runtime(base_min=10, per_input_gb_min=10),
        dask_scheduler=get_dask_scheduler,
    params:
        level=get_level_params,
    script:
        "../../scripts/level_cycle.py"
