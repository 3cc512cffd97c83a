"""Rule plot_compare: CE, dead metal, voids and sites per cycle, one line per data set."""

from ecafm.compare import plot_compare
from ecafm.snakemake_adapter import logged_failure, setup_job, step_of

sm = snakemake  # noqa: F821  (injected by Snakemake)
setup_job(sm)
with logged_failure(sm):
    plot_compare(sm.input.datasets, sm.input.cycles, sm.output[0], survival=sm.input.survival,
                 step=step_of(sm, {}, [sm.input.datasets, sm.input.cycles, sm.input.survival]))
