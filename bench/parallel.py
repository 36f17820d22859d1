"""Map a function over jobs in worker processes (spawned, so no inherited threads), or in-process
for one worker, yielding results as they arrive."""
from __future__ import annotations

import os
from multiprocessing import get_context
from typing import Callable, Iterator


def worker_count(requested: int | None, jobs: int) -> int:
    """requested processes (0 or None = every core), at most one per job, at least one."""
    return max(1, min(requested or os.cpu_count() or 1, jobs))


def parallel_map(fn: Callable, jobs: list, workers: int, ordered: bool = True, chunksize: int = 1) -> Iterator:
    """fn(job) for every job; `fn` must be a module-level function (it is pickled for the workers)."""
    if workers <= 1:
        yield from map(fn, jobs)
        return
    pool = get_context("spawn").Pool(workers)
    try:
        mapper = pool.imap if ordered else pool.imap_unordered
        yield from mapper(fn, jobs, chunksize=chunksize)
    finally:
        pool.close()
        pool.join()
