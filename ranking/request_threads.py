"""The threads a request hands its compiled, GIL-free work to: the tower's search, half of the tree walk.

A request is a chain of small steps on one core; two of them are long enough and free of the GIL
(FAISS, and numba kernels compiled `nogil`) to run beside the rest of the request on another core.
The pool is per process: a forked batch worker starts its own, as the parent's threads do not cross
a fork.

Example:
    >>> later = request_pool().submit(search, vectors)
    >>> ...                                  # the rest of the request, meanwhile
    >>> rows = later.result()
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

# A few threads, so concurrent requests of a threaded server do not queue behind one another's work.
REQUEST_THREADS = 4

_pools: dict[int, ThreadPoolExecutor] = {}


def request_pool() -> ThreadPoolExecutor:
    """This process's pool (started on first use)."""
    pid = os.getpid()
    if pid not in _pools:
        _pools.clear()
        _pools[pid] = ThreadPoolExecutor(max_workers=REQUEST_THREADS, thread_name_prefix="vitrine-request")
    return _pools[pid]
