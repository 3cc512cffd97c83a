"""Rule plot_ingest: QC figure of an ingested cube (frames and electrochemistry)."""

from ecafm.figures import plot_ingest
from ecafm.snakemake_adapter import logged_failure, setup_job, step_of

sm = snakemake  # noqa: F821  (injected by Snakemake)
setup_job(sm)
with logged_failure(sm):
    plot_ingest(sm.input.cube, sm.input.qc, sm.output[0],
                step=step_of(sm, {}, [sm.input.cube, sm.input.qc]))
