"""Rule apply_registration: resample one cycle onto the reference grid (common field of view)."""

from ecafm.register import run_apply
from ecafm.snakemake_adapter import logged_failure, setup_job, step_of

sm = snakemake  # noqa: F821  (injected by Snakemake)
setup_job(sm)
with logged_failure(sm):
    order = int(sm.params.resample_order)
    tip = float(sm.params.tip_radius_nm)
    run_apply(sm.input.leveled, sm.input.transforms, sm.output[0], order=order,
              first_path=sm.input.first, tip_radius_nm=tip,
              step=step_of(sm, {"resample_order": order, "tip_radius_nm": tip},
                           [sm.input.leveled, sm.input.transforms, sm.input.first]))
