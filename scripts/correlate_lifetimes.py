"""Rule correlate_lifetimes: site lifetimes vs initial morphology, and the charge balance."""

from ecafm.lifetime import LifetimeParams, run_lifetime
from ecafm.snakemake_adapter import logged_failure, setup_job, step_of

sm = snakemake  # noqa: F821  (injected by Snakemake)
setup_job(sm)
p = dict(sm.params.lifetime)
params = LifetimeParams(**{**p, "window_px": tuple(p["window_px"]),
                           "sensitivity_fractions": tuple(p["sensitivity_fractions"])})
with logged_failure(sm):
    run_lifetime(sm.input.sites, sm.input.site_cycles, sm.input.cycles, sm.input.segment0,
                 sm.output.summary.rsplit("/", 1)[0], ec_log=sm.input.get("ec_log"),
                 positive_current_plates=sm.params.cell["positive_current_plates"],
                 electrode_area_cm2=sm.params.cell["electrode_area_cm2"], params=params,
                 step=step_of(sm, {**p, **sm.params.cell}, list(sm.input)))
