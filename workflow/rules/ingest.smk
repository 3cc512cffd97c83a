rule ingest_dataset:
    input:
        unpack(get_ingest_inputs),
    output:
        cube=directory("results/cubes/{dataset}.zarr"),
        qc="results/cubes/{dataset}.qc.tsv",
    params:
        raw=get_raw_sources,
        ingest=get_ingest_params,
    log:
        "logs/ingest_dataset/{dataset}.log",
    benchmark:
        "benchmarks/ingest_dataset/{dataset}.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../../envs/ecafm.yaml"
    script:
        "../../scripts/ingest_dataset.py"
