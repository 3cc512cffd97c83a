"""Rule ingest_dataset: raw instrument files + electrochemistry log -> chunked zarr cube."""

from ecafm.ingest import QCParams, ingest
from ecafm.snakemake_adapter import logged_failure, setup_job

sm = snakemake  # noqa: F821  (injected by Snakemake)
setup_job(sm)
p = sm.params.ingest
with logged_failure(sm):
    ingest(
        sm.params.raw,
        sm.output.cube,
        fmt=p["fmt"],
        channel=p["channel"],
        ec_log=sm.input.get("ec_log"),
        frame_sheet=sm.input.get("frames"),
        metal=p["metal"],
        positive_current_plates=p["positive_current_plates"],
        clock_offset_s=p["clock_offset_s"],
        frame_chunk=p["frame_chunk"],
        qc=QCParams(**p["qc"]),
        dataset_id=sm.wildcards.dataset,
        qc_table=sm.output.qc,
        rule=sm.rule,
        wildcards=dict(sm.wildcards.items()),
        threads=sm.threads,
    )
