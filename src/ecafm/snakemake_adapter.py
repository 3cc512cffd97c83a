"""The one module that knows Snakemake's ``snakemake`` object (used by the thin scripts/)."""

from __future__ import annotations

import atexit
import contextlib
import gc
import logging
import os
from collections.abc import Iterator
from typing import Any

from ecafm.store import Step, job_inputs_fixed


def setup_job(sm: Any) -> None:
    """Log to the rule's log file and give dask exactly ``threads`` workers.

    When the job's ``dask_scheduler`` resource holds an address (rules get it from the workflow
    setting of the same name), dask computations of the job run on that dask.distributed scheduler
    instead (see :func:`use_dask_scheduler`).
    """
    handlers: list[logging.Handler] = []
    if sm.log:
        handlers.append(logging.FileHandler(sm.log[0], mode="w"))
    logging.basicConfig(level=logging.INFO, handlers=handlers or None, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("ecafm")
    log.info("rule %s, wildcards %s, threads %d", sm.rule, dict(sm.wildcards.items()), sm.threads)
    # The job's process ends with the job. At exit Python collects every object the job imported
    # and made (~130k tracked objects in a segment job), which took 0.3-0.6 s of each 2-7 s job
    # of bench-m. Frozen objects are left out of those collections and nothing else changes:
    # stores and tables are complete and closed before the job returns, and logging's own exit
    # handler (registered earlier, so run after this one) flushes and closes the log.
    atexit.register(gc.freeze)
    job_inputs_fixed()  # each input store is described once for all of the job's records
    os.environ.setdefault("OMP_NUM_THREADS", str(sm.threads))
    address = str(sm.resources.get("dask_scheduler", "") or "")
    try:
        use_dask_scheduler(address, threads=int(sm.threads))
    except Exception:
        log.exception("cannot use the dask scheduler %r", address)
        raise


def use_dask_scheduler(address: str, *, threads: int) -> Any:
    """Run dask computations on dask's threaded scheduler, or on an existing distributed scheduler.

    Parameters
    ----------
    address : str
        Address of a running dask.distributed scheduler (``tcp://host:8786``, e.g. one started
        with dask-jobqueue); empty for the threaded scheduler with ``threads`` workers.
    threads : int
        Worker threads of the threaded scheduler (the job's Snakemake threads).

    Returns
    -------
    distributed.Client or None
        The client (closed when the process exits), or None for the threaded scheduler. Results
        do not depend on the scheduler: the task graphs and every reduction are the same.
    """
    import dask

    log = logging.getLogger("ecafm")
    if not address:
        import dask.threaded

        # The threaded scheduler as the function itself, not by name, and task rechunking by
        # name: given "threads", dask imports dask.distributed (when installed, as with
        # ecafm[hpc]) on every compute to look for a client, and again in every rechunk to
        # choose its method. That import cost 1.1 s per job here, for nothing.
        dask.config.set({"scheduler": dask.threaded.get, "num_workers": threads,
                         "array.rechunk.method": "tasks"})
        return None
    try:
        from distributed import Client
    except ImportError as exc:
        raise RuntimeError(f"dask_scheduler is set to {address!r} but dask.distributed is not "
                           "installed: pip install 'ecafm[hpc]'") from exc
    client = Client(address, set_as_default=True, timeout="60s")
    atexit.register(client.close)
    log.info("dask computations run on the distributed scheduler %s (%d workers)", address,
             len(client.scheduler_info().get("workers", {})))
    return client


def step_of(sm: Any, params: dict[str, Any], inputs: list[str], *, step: str | None = None) -> Step:
    """Provenance step of a job: rule, wildcards, params, inputs, threads.

    ``step`` names a step that is not the rule itself (a job that runs several steps, each writing
    its own store); the record then keeps the rule that ran it as ``run.snakemake_rule``.
    """
    return Step(rule=step or sm.rule, params=params, wildcards=dict(sm.wildcards.items()),
                inputs=tuple(inputs), threads=int(sm.threads), job_rule=sm.rule)


@contextlib.contextmanager
def logged_failure(sm: Any) -> Iterator[None]:
    """Write any failure to the rule's log before Snakemake reports it."""
    try:
        yield
    except Exception:
        logging.getLogger("ecafm").exception("job %s failed", sm.rule)
        raise
