"""Rule plot_lifetimes: Kaplan-Meier by descriptor tertiles, CE per cycle, dead volume."""

from ecafm.figures import plot_lifetimes
from ecafm.snakemake_adapter import logged_failure, setup_job, step_of

sm = snakemake  # noqa: F821  (injected by Snakemake)
setup_job(sm)
with logged_failure(sm):
    plot_lifetimes(sm.input.summary, sm.input.balance, sm.output[0],
                   step=step_of(sm, {}, [sm.input.summary, sm.input.balance]))
