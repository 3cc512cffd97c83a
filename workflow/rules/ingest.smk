checkpoint ingest_dataset:
    input:
        unpack(get_ingest_inputs),
    output:
        cube=directory("results/cubes/{dataset}.zarr"),
        qc="results/cubes/{dataset}.qc.tsv",
    log:
        "logs/ingest_dataset/{dataset}.log",
    benchmark:
        "benchmarks/ingest_dataset/{dataset}.tsv"
    conda:
        "../../envs/ecafm.yaml"
    # Two reader processes parse the raw files (ingest runs alone at the start of a run; with
    # --cores 1 Snakemake gives it one). bench-m, 321 .gwy files: 32.7 -> 26.1 s in one A/B.
    threads: 2
    resources:
        mem_mb=get_mem_mb(base_mb=1000, per_input_mb=2),
        runtime=get_runtime(base_min=10, per_input_gb_min=10),
    params:
        raw=get_raw_sources,
        ingest=get_ingest_params,
    script:
        "../../scripts/ingest_dataset.py"
