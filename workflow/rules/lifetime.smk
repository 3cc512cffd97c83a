# Lifetime correlation: one job per dataset (it needs every cycle's sites).


rule correlate_lifetimes:
    input:
        unpack(get_lifetime_inputs),
    output:
        summary="results/lifetime/{dataset}/summary.json",
        lifetimes="results/lifetime/{dataset}/lifetimes.tsv",
        descriptors="results/lifetime/{dataset}/descriptors.tsv",
        hazard="results/lifetime/{dataset}/hazard.tsv",
        correlations="results/lifetime/{dataset}/correlations.tsv",
        sensitivity="results/lifetime/{dataset}/sensitivity.tsv",
        balance="results/lifetime/{dataset}/balance.tsv",
    log:
        "logs/correlate_lifetimes/{dataset}.log",
    conda:
        "../../envs/ecafm.yaml"
    threads: 1
    resources:
        mem_mb=get_mem_mb(base_mb=1000, per_input_mb=2),
        runtime=get_runtime(base_min=30, per_input_gb_min=30),
    params:
        lifetime=get_lifetime_params,
        cell=get_cell_params,
    script:
        "../../scripts/correlate_lifetimes.py"


rule plot_lifetimes:
    input:
        summary="results/lifetime/{dataset}/summary.json",
        lifetimes="results/lifetime/{dataset}/lifetimes.tsv",
        descriptors="results/lifetime/{dataset}/descriptors.tsv",
        balance="results/lifetime/{dataset}/balance.tsv",
        sites="results/sites/{dataset}/sites.tsv",
    output:
        report(
            "results/figures/{dataset}/lifetime.png",
            caption="../report/lifetime.rst",
            category="4. Lifetimes",
            subcategory="{dataset}",
        ),
    log:
        "logs/plot_lifetimes/{dataset}.log",
    conda:
        "../../envs/ecafm.yaml"
    threads: 1
    resources:
        mem_mb=get_mem_mb(base_mb=1000, per_input_mb=1),
        runtime=get_runtime(base_min=10, per_input_gb_min=10),
    script:
        "../../scripts/plot_lifetimes.py"


# Data sets side by side: one job for all (it needs every analysed data set's balance). Both
# jobs read a few small tables and take 1-3 s: on a cluster they run beside Snakemake on the
# login node (localrule) instead of waiting in the queue twice at the end of the run.
rule compare_datasets:
    input:
        get_compare_inputs,
    output:
        datasets="results/compare/datasets.tsv",
        cycles="results/compare/cycles.tsv",
        survival="results/compare/survival.tsv",
    log:
        "logs/compare_datasets/all.log",
    localrule: True
    conda:
        "../../envs/ecafm.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        datasets=list(DATASETS["id"]),
    script:
        "../../scripts/compare_datasets.py"


rule plot_compare:
    input:
        datasets="results/compare/datasets.tsv",
        cycles="results/compare/cycles.tsv",
        survival="results/compare/survival.tsv",
    output:
        report(
            "results/figures/compare.png",
            caption="../report/compare.rst",
            category="5. Data sets compared",
        ),
    log:
        "logs/plot_compare/all.log",
    localrule: True
    conda:
        "../../envs/ecafm.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    script:
        "../../scripts/plot_compare.py"
