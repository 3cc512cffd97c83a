"""Rule synthesize_dataset: generate a synthetic EC-AFM dataset (raw files, log, truth)."""

from pathlib import Path

from ecafm.snakemake_adapter import logged_failure, setup_job
from ecafm.synth import synth

sm = snakemake  # noqa: F821  (injected by Snakemake)
setup_job(sm)
with logged_failure(sm):
    synth(sm.params.spec["preset"], sm.params.spec["seed"], Path(sm.output.frames).parent)
