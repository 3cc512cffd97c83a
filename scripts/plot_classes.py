"""Rule plot_classes: state-class maps at the plating peak and stripping end of every cycle."""

from ecafm.figures import plot_classes
from ecafm.snakemake_adapter import logged_failure, setup_job, step_of

sm = snakemake  # noqa: F821  (injected by Snakemake)
setup_job(sm)
with logged_failure(sm):
    inputs = [*sm.input.segments, sm.input.labels, sm.input.cycles]
    plot_classes(list(sm.input.segments), sm.input.labels, sm.input.cycles, sm.output[0],
                 step=step_of(sm, {}, inputs))
