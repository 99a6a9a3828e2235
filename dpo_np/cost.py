"""What a run will cost, said before it starts: its memory and its time, estimated from its sizes.

A command given sizes far beyond its defaults (``sft --n-embd 2000000``, ``gridworld --horizon
100000``, ``evaluate --kl-samples 1000000``) would allocate gigabytes and fail, or run for days
with nothing to show. Each estimates what it needs first and ``check`` refuses what is out of
reach, naming the setting and the estimate, unless the caller asks to go ahead (``allow_large``;
the command line's ``--allow-large``). The estimates are rough on purpose: they decide only what
is far out of reach, never a result.
"""

import os

from dpo_np import checks
from dpo_np.progress import clock_time

#: the share of this machine's memory a run may plan to use, and the time it may plan to take, unasked
MEMORY_SHARE = 0.5
TIME_LIMIT = 3600.0


class TooLarge(ValueError):
    """A run whose estimated memory or time is past ``MEMORY_SHARE`` or ``TIME_LIMIT``."""


def physical_memory():
    """This machine's memory in bytes, or None where the system does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def in_bytes(n):
    """A size in words: "512 MB", "3.2 GB", "9,000 GB"."""
    return f"{n / 2 ** 20:,.0f} MB" if n < 2 ** 30 else f"{n / 2 ** 30:,.1f} GB"


def check(what, memory=None, seconds=None, allow_large=False):
    """Raise ``TooLarge`` unless the run fits: ``memory`` (bytes) at most ``MEMORY_SHARE`` of this
    machine's, ``seconds`` at most ``TIME_LIMIT``, or ``allow_large``. ``what`` names the settings
    that make the run this large, as they were given ("n_embd=2000000")."""
    if checks.flag(allow_large, "allow_large"):
        return
    total = physical_memory()
    if memory is not None and total is not None and memory > MEMORY_SHARE * total:
        raise TooLarge(f"{what}: needs about {in_bytes(memory)} of memory, more than {MEMORY_SHARE:.0%} of this "
                       f"machine's {in_bytes(total)}; refused before allocating anything (allow_large=True to try "
                       f"anyway)")
    if seconds is not None and seconds > TIME_LIMIT:
        raise TooLarge(f"{what}: would take about {clock_time(seconds)} (h:mm:ss, estimated from the default run's "
                       f"time on a 2-core machine), more than the {clock_time(TIME_LIMIT)} a run may take unasked; "
                       f"allow_large=True to run it anyway")
