rule plot_ingest:
    input:
        cube="results/cubes/{dataset}.zarr",
        qc="results/cubes/{dataset}.qc.tsv",
    output:
        report(
            "results/figures/{dataset}/ingest.png",
            caption="../report/ingest.rst",
            category="1. Ingest",
            subcategory="{dataset}",
        ),
    log:
        "logs/plot_ingest/{dataset}.log",
    conda:
        "../../envs/ecafm.yaml"
    threads: 1
    resources:
        mem_mb=get_mem_mb(base_mb=1000, per_input_mb=1),
        runtime=get_runtime(base_min=10, per_input_gb_min=10),
    script:
        "../../scripts/plot_ingest.py"


rule plot_registration:
    input:
        transforms="results/register/{dataset}/transforms.zarr",
        table="results/register/{dataset}/transforms.tsv",
        registered=get_registered,
    output:
        report(
            "results/figures/{dataset}/register.png",
            caption="../report/register.rst",
            category="2. Registration",
            subcategory="{dataset}",
        ),
    log:
        "logs/plot_registration/{dataset}.log",
    conda:
        "../../envs/ecafm.yaml"
    threads: 1
    resources:
        mem_mb=get_mem_mb(base_mb=1000, per_input_mb=1),
        runtime=get_runtime(base_min=10, per_input_gb_min=10),
    params:
        min_peak_ratio=get_min_peak_ratio,
    script:
        "../../scripts/plot_registration.py"
