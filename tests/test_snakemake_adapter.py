"""Tests of ecafm.snakemake_adapter: what every rule's script process does around its work."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_job_process_freezes_gc_at_exit_and_keeps_its_log(tmp_path):
    """At exit a job's objects are frozen out of Python's shutdown collections (0.3-0.6 s per
    bench-m job), after the job's own exit handlers and before logging's, so the log is whole.

    Run in a fresh interpreter with a stand-in for Snakemake's ``snakemake`` object. The handler
    registered before ``setup_job`` runs after its handlers (exit handlers run last-in,
    first-out) and reports what it sees."""
    log = tmp_path / "job.log"
    code = textwrap.dedent(f"""
        import atexit, gc, logging, sys
        from types import SimpleNamespace
        atexit.register(lambda: print("frozen at exit:", gc.get_freeze_count()))
        from ecafm.snakemake_adapter import logged_failure, setup_job
        sm = SimpleNamespace(log=[{str(log)!r}], rule="level_cycle", wildcards={{"cycle": "3"}},
                             threads=1, resources={{}})
        setup_job(sm)
        print("frozen in the job:", gc.get_freeze_count())
        from ecafm import store
        print("inputs described once per job:", store._JOB_DIR_SHA256 is not None)
        with logged_failure(sm):
            cycles = [[i] for i in range(1000)]
            for c in cycles:
                c.append(c)  # reference cycles only a collection could free
            logging.getLogger("ecafm").info("job done, last line")
        """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    lines = dict(line.split(": ") for line in out.stdout.splitlines())
    assert lines["frozen in the job"] == "0"  # the job itself collects as usual
    assert lines["inputs described once per job"] == "True"
    assert int(lines["frozen at exit"]) > 1000  # the cycles above, and every import
    text = log.read_text()
    assert "rule level_cycle, wildcards {'cycle': '3'}, threads 1" in text
    assert text.rstrip().endswith("job done, last line")
