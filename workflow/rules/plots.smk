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
    script:
        "../../scripts/plot_ingest.py"
