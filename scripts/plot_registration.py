"""Rule plot_registration: drift, intra-frame drift, QC and registered frames of a dataset."""

from ecafm.figures import plot_registration
from ecafm.snakemake_adapter import logged_failure, setup_job, step_of

sm = snakemake  # noqa: F821  (injected by Snakemake)
setup_job(sm)
with logged_failure(sm):
    params = {"min_peak_ratio": float(sm.params.min_peak_ratio)}
    plot_registration(sm.input.transforms, sm.input.table, list(sm.input.registered), sm.output[0],
                      step=step_of(sm, params, [sm.input.transforms, sm.input.table]), **params)
