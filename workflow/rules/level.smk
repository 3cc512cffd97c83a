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
        mem_mb=2000,
        runtime=30,
    params:
        level=get_level_params,
    script:
        "../../scripts/level_cycle.py"
