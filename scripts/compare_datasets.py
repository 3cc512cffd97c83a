"""Rule compare_datasets: the data sets side by side (one row each, one per data set and cycle)."""

from ecafm.compare import run_compare
from ecafm.snakemake_adapter import logged_failure, setup_job, step_of

sm = snakemake  # noqa: F821  (injected by Snakemake)
setup_job(sm)
with logged_failure(sm):
    run_compare(list(sm.input), list(sm.params.datasets), sm.output.datasets, sm.output.cycles,
                out_survival=sm.output.survival,
                step=step_of(sm, {"datasets": list(sm.params.datasets)}, list(sm.input)))
