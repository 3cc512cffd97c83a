"""Rule audit_results: re-hash every artifact and re-run every recorded job; report per artifact."""

from ecafm.audit import run_audit
from ecafm.snakemake_adapter import logged_failure, setup_job, step_of

sm = snakemake  # noqa: F821  (injected by Snakemake)
setup_job(sm)
with logged_failure(sm):
    run_audit(sm.params.results, sm.output[0], reexec=sm.params.reexec,
              step=step_of(sm, {"results": sm.params.results, "reexec": sm.params.reexec}, []))
