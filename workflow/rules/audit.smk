# Reproducibility audit of everything under results/ (not part of rule all):
#   snakemake --cores 2 --forcerun audit_results audit_results
# Re-hashes every artifact against its record and re-runs every recorded job into a temporary
# folder; fails (report in the log) when any check fails.


rule audit_results:
    input:
        get_final_outputs,
    output:
        "results/audit/report.tsv",
    log:
        "logs/audit_results/audit.log",
    conda:
        "../../envs/ecafm.yaml"
    threads: 2
    resources:
        mem_mb=get_mem_mb(base_mb=2000, per_input_mb=1),
        runtime=get_runtime(base_min=30, per_input_gb_min=60),
    params:
        reexec=True,
    script:
        "../../scripts/audit_results.py"
