"""Rule level_cycle: level every frame of one cycle (line alignment + background plane)."""

from ecafm.level import LevelParams, level_cycle
from ecafm.snakemake_adapter import logged_failure, setup_job, step_of

sm = snakemake  # noqa: F821  (injected by Snakemake)
setup_job(sm)
with logged_failure(sm):
    level_cycle(sm.input.cube, int(sm.wildcards.cycle), sm.output[0],
                params=LevelParams(**sm.params.level),
                step=step_of(sm, dict(sm.params.level), [sm.input.cube]))
