"""Rule register_cycle: pairwise drift estimates (rigid + per row) inside one cycle, with QC."""

from ecafm.register import RegisterParams, run_within
from ecafm.snakemake_adapter import logged_failure, setup_job, step_of

sm = snakemake  # noqa: F821  (injected by Snakemake)
setup_job(sm)
with logged_failure(sm):
    run_within(sm.input[0], sm.output[0], params=RegisterParams(**sm.params.register),
               step=step_of(sm, dict(sm.params.register), [sm.input[0]]))
