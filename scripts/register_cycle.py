"""Rule register_cycle: level the frames of one cycle, estimate their drift (rigid + per row), and
link the cycle to the one before it.

Three steps, three stores, three records: the leveled cube (step ``level_cycle``, from the ingested
cube), the within-cycle transforms (step ``register_cycle``, from the leveled cube) and the link
into this cycle (step ``link_into_cycle``, from the ingested cube: the four frames it reads from
three cycles are leveled in place, so no cycle's job waits for another's).
"""

from ecafm.level import LevelParams, level_cycle
from ecafm.register import RegisterParams, run_link_into, run_within
from ecafm.snakemake_adapter import logged_failure, setup_job, step_of

sm = snakemake  # noqa: F821  (injected by Snakemake)
setup_job(sm)
with logged_failure(sm):
    cycle = int(sm.wildcards.cycle)
    level, register = LevelParams(**sm.params.level), RegisterParams(**sm.params.register)
    level_cycle(sm.input.cube, cycle, sm.output.leveled, params=level,
                step=step_of(sm, dict(sm.params.level), [sm.input.cube], step="level_cycle"))
    run_within(sm.output.leveled, sm.output.within, params=register,
               step=step_of(sm, dict(sm.params.register), [sm.output.leveled]))
    run_link_into(sm.input.cube, cycle, sm.output.link, params=register, level=level,
                  step=step_of(sm, {"register": dict(sm.params.register), "level": dict(sm.params.level)},
                               [sm.input.cube], step="link_into_cycle"))
