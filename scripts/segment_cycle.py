"""Rule segment_cycle: change labels and state classes of one cycle (needs cycles 0, c-2, c-1, c+1)."""

from ecafm.segment import SegmentParams, run_segment
from ecafm.snakemake_adapter import logged_failure, setup_job, step_of

sm = snakemake  # noqa: F821  (injected by Snakemake)
setup_job(sm)
with logged_failure(sm):
    inp = dict(sm.input.items())
    run_segment(int(sm.wildcards.cycle), inp["cur"], inp["first"], inp["transforms"],
                sm.output.cube, sm.output.table, prev=inp.get("prev"), nxt=inp.get("next"),
                prev2=inp.get("prev2"),
                params=SegmentParams(**sm.params.segment), metal=sm.params.metal,
                step=step_of(sm, {**sm.params.segment, "metal": sm.params.metal},
                             list(inp.values())))
