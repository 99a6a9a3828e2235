"""Host memory between training steps: keep what a step frees for the next step to reuse.

A training step of the hand-written model allocates its activations and gradients afresh (about
140 MB at the default benchmark shape, B 32 × T 64 × C 128) and frees them when the next step
starts. glibc's malloc hands freed memory at the top of its heap back to the kernel once more
than a few MB of it are free (its trim threshold follows the largest block freed so far), so
the next step takes every page back again: one page fault per 4 KiB, 35,000 per step at that
shape, and about 30% of the step's CPU time spent in the kernel handing out pages. CuPy keeps freed
device memory in a pool for the same reason; ``keep_freed_memory`` asks glibc to do the same for
host memory. The process then keeps its peak size instead of shrinking between steps.

The training loop's step (``training.Trainer.update``) and the benchmarks call it; a loop of
your own over ``model.forward``/``model.backward`` can call it once too. It changes no number
the model computes, only where the memory comes from. Off glibc (macOS, musl) it does nothing.
"""

import ctypes

M_TRIM_THRESHOLD = -1              # mallopt's parameter numbers, from glibc's <malloc.h>
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20          # blocks under 32 MiB (glibc's largest allowed) come from the heap
TRIM_THRESHOLD = 1 << 30           # and up to 1 GiB of freed heap stays with the process

_state = {"applied": None}         # None: not asked yet; then True or False


def keep_freed_memory():
    """Ask glibc's malloc to keep freed memory for reuse (see the module docstring); once per process.

    Returns True when the setting is in force, False where it cannot apply (not glibc, or mallopt
    refused it). Setting either threshold turns off glibc's own adjustment of both, so both are set.
    """
    if _state["applied"] is None:
        _state["applied"] = _mallopt_keep()
    return _state["applied"]


def status():
    """A line for a benchmark's record: what ``keep_freed_memory`` did in this process."""
    applied = _state["applied"]
    if applied is None:
        return "glibc malloc defaults (keep_freed_memory not called)"
    if applied:
        return (f"glibc malloc keeps freed memory (mallopt M_MMAP_THRESHOLD {MMAP_THRESHOLD >> 20} MiB, "
                f"M_TRIM_THRESHOLD {TRIM_THRESHOLD >> 20} MiB)")
    return "the C library's malloc defaults (not glibc, or mallopt refused)"


def _mallopt_keep():
    try:
        libc = ctypes.CDLL(None)                 # the C library this process already runs on
        libc.gnu_get_libc_version                # glibc's own function: other C libraries lack it
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):       # TypeError: Windows has no CDLL(None)
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
