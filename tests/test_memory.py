"""keep_freed_memory: freed host memory is reused by the next step instead of being faulted in again.

Counted in page faults (getrusage), not in time, and each case in a fresh process: the setting is
process-wide, and this test process may already hold it.
"""

import ctypes
import os
import subprocess
import sys

import pytest

from dpo_np import memory

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _on_glibc():
    try:
        ctypes.CDLL(None).gnu_get_libc_version
        return True
    except (OSError, AttributeError, TypeError):
        return False


# what a training step does to the heap: allocate ~100 MB of activations, free them all, again
_STEPS = """
import resource, sys
import numpy as np
from dpo_np import memory
if sys.argv[1] == "keep":
    assert memory.keep_freed_memory()
def step():
    live = [np.ones(1 << 20, dtype=np.float32) for _ in range(25)]    # 25 arrays of 4 MiB
    return sum(float(a[-1]) for a in live)
for _ in range(3):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10)
"""


def _faults_per_step(mode):
    env = {**os.environ, "PYTHONPATH": ROOT}
    out = subprocess.run([sys.executable, "-c", _STEPS, mode], env=env, capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


@pytest.mark.skipif(not _on_glibc(), reason="mallopt is glibc's")
def test_kept_memory_is_reused_without_new_page_faults():
    default, kept = _faults_per_step("default"), _faults_per_step("keep")
    # by default each step takes much of its 100 MB back from the kernel (12,000 faults of 4 KiB
    # pages here, fewer where the kernel backs the arrays with huge pages)
    assert default > 1_000
    assert kept < 0.01 * default


def test_keep_freed_memory_answers_once_per_process_and_says_what_it_did():
    first = memory.keep_freed_memory()
    assert memory.keep_freed_memory() is first
    assert first == _on_glibc()
    line = memory.status()
    assert ("M_TRIM_THRESHOLD" in line) if first else ("defaults" in line)
