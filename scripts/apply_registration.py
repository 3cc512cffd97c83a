"""Rule apply_registration: resample one cycle onto the reference grid (common field of view)."""

from ecafm.register import run_apply
from ecafm.snakemake_adapter import logged_failure, setup_job, step_of

sm = snakemake  # noqa: F821  (injected by Snakemake)
setup_job(sm)
with logged_failure(sm):
    order = int(sm.params.resample_order)
    run_apply(sm.input.leveled, sm.input.transforms, sm.output[0], order=order,
              step=step_of(sm, {"resample_order": order}, [sm.input.leveled, sm.input.transforms]))
