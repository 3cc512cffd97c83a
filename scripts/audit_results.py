"""Rule audit_results: re-hash every artifact and re-run every recorded job; report per artifact."""

from pathlib import Path

from ecafm.audit import run_audit
from ecafm.snakemake_adapter import logged_failure, setup_job, step_of

sm = snakemake  # noqa: F821  (injected by Snakemake)
setup_job(sm)
results = Path(sm.output[0]).parents[1]  # results/audit/report.tsv -> results
with logged_failure(sm):
    run_audit(results, sm.output[0], reexec=sm.params.reexec,
              step=step_of(sm, {"results": str(results), "reexec": sm.params.reexec}, []))
