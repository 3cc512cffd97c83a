"""One BLAS thread inside every stage, so that an artifact does not depend on the thread count.

OpenBLAS splits long dot products and matrix products over its threads, and the partial sums
round differently with each split: bench-m's register_cycle job for cycle 3 wrote a different
logical hash with 2 BLAS threads than with 1 (one pair's ``peak_ratio``, 1.3e-5 apart).
Snakemake gives each script job ``OPENBLAS_NUM_THREADS`` = the rule's threads, while the audit's
re-run, the in-process pipeline and a notebook ran with whatever the process had (all cores by
default), so the audit reported such artifacts as not reproduced. ecafm's parallelism is one
Snakemake job per cycle and dask threads inside a job; BLAS threads on top only oversubscribe
the cores. Every stage entry point runs under :func:`one_blas_thread` (threadpoolctl), whoever
calls it. dask.distributed workers run in their own processes; dask's nanny starts them with
``OPENBLAS_NUM_THREADS=1`` by default (``distributed.nanny.pre-spawn-environ``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

F = TypeVar("F", bound=Callable)


def one_blas_thread(fn: F) -> F:
    """Run ``fn`` with BLAS limited to one thread (restored afterwards)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=1, user_api="blas"):
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
