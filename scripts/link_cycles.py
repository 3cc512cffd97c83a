"""Rule link_cycles: drift across one cycle boundary (last good -> first good frame, + direct
first -> first, + skip first of the cycle before -> first)."""

from ecafm.register import RegisterParams, run_link
from ecafm.snakemake_adapter import logged_failure, setup_job, step_of

sm = snakemake  # noqa: F821  (injected by Snakemake)
setup_job(sm)
with logged_failure(sm):
    before = sm.input.get("before")
    run_link(sm.input.left, sm.input.right, sm.output[0], params=RegisterParams(**sm.params.register),
             before_path=before,
             step=step_of(sm, dict(sm.params.register),
                          [sm.input.left, sm.input.right, *([before] if before else [])]))
