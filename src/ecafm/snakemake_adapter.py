"""The one module that knows Snakemake's ``snakemake`` object (used by the thin scripts/)."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any

from ecafm.store import Step


def setup_job(sm: Any) -> None:
    """Log to the rule's log file and give dask exactly ``threads`` workers."""
    handlers: list[logging.Handler] = []
    if sm.log:
        handlers.append(logging.FileHandler(sm.log[0], mode="w"))
    logging.basicConfig(level=logging.INFO, handlers=handlers or None, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import dask

    dask.config.set(scheduler="threads", num_workers=int(sm.threads))
    os.environ.setdefault("OMP_NUM_THREADS", str(sm.threads))
    logging.getLogger("ecafm").info("rule %s, wildcards %s, threads %d", sm.rule,
                                    dict(sm.wildcards.items()), sm.threads)


def step_of(sm: Any, params: dict[str, Any], inputs: list[str]) -> Step:
    """Provenance step of a job: rule, wildcards, params, inputs, threads."""
    return Step(rule=sm.rule, params=params, wildcards=dict(sm.wildcards.items()),
                inputs=tuple(inputs), threads=int(sm.threads))


@contextlib.contextmanager
def logged_failure(sm: Any) -> Iterator[None]:
    """Write any failure to the rule's log before Snakemake reports it."""
    try:
        yield
    except Exception:
        logging.getLogger("ecafm").exception("job %s failed", sm.rule)
        raise
