# Segmentation, parallel across cycles: change labels and state classes per cycle (the job of
# cycle c reads registered cycles 0 (h_ref), c-1, c and c+1: the residue rule of cycle c's
# stripping needs the next plating), then one cheap gather that tracks sites across cycles.


rule segment_cycle:
    input:
        unpack(get_segment_inputs),
    output:
        cube=directory("results/segment/{dataset}/cycle_{cycle}.zarr"),
        table="results/segment/{dataset}/cycle_{cycle}.classes.tsv",
    log:
        "logs/segment_cycle/{dataset}/cycle_{cycle}.log",
    benchmark:
        "benchmarks/segment_cycle/{dataset}/cycle_{cycle}.tsv"
    conda:
        "../../envs/ecafm.yaml"
    threads: 1
    resources:
        mem_mb=get_mem_mb(base_mb=1000, per_input_mb=3),
        runtime=get_runtime(base_min=10, per_input_gb_min=30),
    params:
        segment=get_segment_params,
        metal=get_metal,
    script:
        "../../scripts/segment_cycle.py"


rule track_sites:
    input:
        get_segmented,
    output:
        labels=directory("results/sites/{dataset}/labels.zarr"),
        sites="results/sites/{dataset}/sites.tsv",
        site_cycles="results/sites/{dataset}/site_cycles.tsv",
        cycles="results/sites/{dataset}/cycles.tsv",
        tiles="results/sites/{dataset}/tiles.tsv",
    log:
        "logs/track_sites/{dataset}.log",
    conda:
        "../../envs/ecafm.yaml"
    threads: 1
    resources:
        mem_mb=get_mem_mb(base_mb=1000, per_input_mb=2),
        runtime=get_runtime(base_min=10, per_input_gb_min=30),
    params:
        segment=get_segment_params,
    script:
        "../../scripts/track_sites.py"


rule plot_classes:
    input:
        segments=get_segmented,
        labels="results/sites/{dataset}/labels.zarr",
        cycles="results/sites/{dataset}/cycles.tsv",
    output:
        report(
            "results/figures/{dataset}/classes.png",
            caption="../report/classes.rst",
            category="3. Segmentation",
            subcategory="{dataset}",
        ),
    log:
        "logs/plot_classes/{dataset}.log",
    conda:
        "../../envs/ecafm.yaml"
    threads: 1
    resources:
        mem_mb=get_mem_mb(base_mb=1000, per_input_mb=1),
        runtime=get_runtime(base_min=10, per_input_gb_min=10),
    script:
        "../../scripts/plot_classes.py"
