"""Rule compose_drift: cumulative per-row drift of every frame and the common field of view."""

from ecafm.register import run_compose
from ecafm.snakemake_adapter import logged_failure, setup_job, step_of

sm = snakemake  # noqa: F821  (injected by Snakemake)
setup_job(sm)
with logged_failure(sm):
    w, fusion = float(sm.params.loop_weight), str(sm.params.loop_fusion)
    run_compose(list(sm.input.within), list(sm.input.links), sm.input.cube, sm.output.transforms,
                sm.output.table, loop_weight=w, loop_fusion=fusion,
                step=step_of(sm, {"loop_weight": w, "loop_fusion": fusion},
                             [*sm.input.within, *sm.input.links, sm.input.cube]))
