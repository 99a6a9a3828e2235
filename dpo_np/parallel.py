"""Row blocks in threads, for the work NumPy does on one core.

OpenBLAS spreads a large matrix product over the cores, but NumPy's elementwise passes, its
reductions, and matrix products too small for BLAS to thread (the attention's (T × hs) ones) run
on one core. NumPy releases the GIL inside each of them, so threads that each take a block of
rows do run at the same time. ``over_rows(fn, *args)`` calls ``fn`` once per block of rows of
its array arguments, in as many threads as ``threads()``, and returns when all are done; ``fn``
writes its results into output arrays passed among ``args`` (blocks are views, so the writes land
in the whole arrays).

Only row-independent work is given to it (each output row is computed from the same rows of the
inputs), so the result is bit for bit that of one call on the whole arrays; the tests hold the two
equal. The model's formulas stay in ``fn``, in the model; only the splitting lives here.

One call on the whole arrays, no threads, when ``threads()`` is 1, when the arrays hold fewer
than ``MIN_ELEMENTS``, or off NumPy (CuPy runs each operation on the GPU already; the "strict"
backend must behave as CuPy does).

``threads()``: ``DPO_NP_THREADS`` if set, else 1 (off); ``set_threads(n)`` changes it at run time.
Off by default because they have not yet been measured to pay: on a 2-core machine shared with
other work, the toy step took 2% more CPU time with 2 threads and no less wall time. ``bench
model`` times the step both ways in every round (``threads`` in its report), so a run on an idle
machine shows whether they do; ``usable_cores()`` is the number to try.
"""

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from dpo_np import backend, checks

MIN_ELEMENTS = 1 << 15     # below this a block is too short to pay for handing it to a thread

_lock = threading.Lock()
_state = {"threads": None, "pool": None}


def usable_cores():
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _default_threads():
    value = os.environ.get("DPO_NP_THREADS", "").strip()
    if not value:
        return 1
    try:
        return checks.integer(int(value), "DPO_NP_THREADS", low=1)
    except ValueError:
        raise ValueError(f"DPO_NP_THREADS must be a positive integer, got {value!r}") from None


def threads():
    """How many threads ``over_rows`` uses (1: none)."""
    if _state["threads"] is None:
        _state["threads"] = _default_threads()
    return _state["threads"]


def set_threads(n):
    """Use ``n`` threads from now on (1 turns them off); returns the previous number."""
    n = checks.integer(n, "n", low=1)
    with _lock:
        previous = threads()
        if n != previous and _state["pool"] is not None:
            _state["pool"].shutdown()
            _state["pool"] = None
        _state["threads"] = n
    return previous


def _pool():
    with _lock:
        if _state["pool"] is None:
            _state["pool"] = ThreadPoolExecutor(max_workers=threads() - 1, thread_name_prefix="dpo_np")
        return _state["pool"]


def over_rows(fn, *args):
    """``fn(*args)``, computed as ``fn`` on blocks of rows (the first axis) in ``threads()`` threads.

    The first argument fixes the rows: every array argument with that many rows is cut into the
    same blocks, the others (a leading axis of 1 that broadcasts, numbers) are passed whole.
    """
    n_rows = args[0].shape[0]
    n = min(threads(), n_rows)
    if n <= 1 or not isinstance(args[0], np.ndarray) or backend.backend_name() != "numpy" \
            or sum(a.size for a in args if isinstance(a, np.ndarray)) < MIN_ELEMENTS:
        fn(*args)
        return
    bounds = [n_rows * i // n for i in range(n + 1)]
    blocks = [[a[lo:hi] if isinstance(a, np.ndarray) and a.ndim and a.shape[0] == n_rows else a for a in args]
              for lo, hi in zip(bounds[:-1], bounds[1:])]
    futures = [_pool().submit(fn, *block) for block in blocks[1:]]
    fn(*blocks[0])                        # this thread takes the first block itself
    for f in futures:
        f.result()
