"""Rule track_sites: persistent sites across cycles; site, site-cycle, cycle and tile tables."""

from ecafm.segment import SegmentParams
from ecafm.sites import run_track_sites
from ecafm.snakemake_adapter import logged_failure, setup_job, step_of

sm = snakemake  # noqa: F821  (injected by Snakemake)
setup_job(sm)
with logged_failure(sm):
    out = sm.output
    run_track_sites(list(sm.input), out.labels, out.sites, out.site_cycles, out.cycles, out.tiles,
                    params=SegmentParams(**sm.params.segment),
                    step=step_of(sm, dict(sm.params.segment), list(sm.input)))
