"""Rule score_dataset: a synthetic data set's accuracy against its generator's truth."""

from pathlib import Path

from ecafm.score import run_score
from ecafm.snakemake_adapter import logged_failure, setup_job, step_of

sm = snakemake  # noqa: F821  (injected by Snakemake)
setup_job(sm)
with logged_failure(sm):
    results = Path(sm.input.transforms).parents[2]  # results/register/{dataset}/transforms.zarr
    run_score(results, sm.input.truth, sm.output[0], dataset=sm.wildcards.dataset,
              step=step_of(sm, {}, list(sm.input)))
