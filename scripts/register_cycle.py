"""Rule register_cycle: level the frames of one cycle, then estimate their drift (rigid + per row).

Two steps, two stores, two records: the leveled cube (step ``level_cycle``, from the ingested cube)
and the within-cycle transforms (step ``register_cycle``, from the leveled cube).
"""

from ecafm.level import LevelParams, level_cycle
from ecafm.register import RegisterParams, run_within
from ecafm.snakemake_adapter import logged_failure, setup_job, step_of

sm = snakemake  # noqa: F821  (injected by Snakemake)
setup_job(sm)
with logged_failure(sm):
    level_cycle(sm.input.cube, int(sm.wildcards.cycle), sm.output.leveled,
                params=LevelParams(**sm.params.level),
                step=step_of(sm, dict(sm.params.level), [sm.input.cube], step="level_cycle"))
    run_within(sm.output.leveled, sm.output.within, params=RegisterParams(**sm.params.register),
               step=step_of(sm, dict(sm.params.register), [sm.output.leveled]))
