"""A tiny progress indicator for training loops, with no dependencies.

    bar = progress(range(300), desc="dpo")
    for step in bar:
        ...
        bar.set_postfix(loss=loss)

shows ``dpo  12/300 [#...................] 4.1 it/s ETA 1:10 loss=0.6931``: the time left is
the items left at the mean rate so far, and the last line says how long the whole took
(``done in 1:13``). On a terminal the line is redrawn in place with ``\\r`` (at most every
``min_interval`` seconds);
anywhere else (a CI log, a file) a plain line is written every ``every`` items
and at the end, so logs stay short. ``Stopwatch`` times the stages of a run.
"""

import numbers
import sys
import time

BAR_WIDTH = 20


class progress:
    """Iterate over ``iterable`` while showing progress on ``file`` (default: sys.stderr at call time).

    ``every``: items between plain lines when ``file`` is not a terminal
    (default: a tenth of ``total``, or 100 when the total is unknown). ``clock``: seconds from a
    monotonic clock (a test passes a fake one).
    """

    def __init__(self, iterable, total=None, desc="", file=None, every=None, min_interval=0.1,
                 clock=time.monotonic):
        if total is None:
            try:
                total = len(iterable)
            except TypeError:
                total = None
        if every is not None and (not isinstance(every, int) or every < 1):
            raise ValueError(f"every must be an int >= 1, got {every!r}")
        self.iterable = iterable
        self.total = total
        self.desc = desc
        self.file = sys.stderr if file is None else file
        self.every = every or (max(1, total // 10) if total else 100)
        self.min_interval = min_interval
        self.clock = clock
        self.n = 0
        self.postfix = {}
        isatty = getattr(self.file, "isatty", None)
        self.tty = bool(isatty and isatty())
        self._start = self._last_draw = None

    def set_postfix(self, **metrics):
        """Show these values (e.g. the latest loss) after the rate, from the next redraw on."""
        self.postfix.update(metrics)

    def line(self, final=False):
        """The text of the indicator now; ``final``: the last line, with the time the whole took."""
        elapsed = self.clock() - self._start if self._start is not None else 0.0
        rate = self.n / elapsed if elapsed > 0 else 0.0
        if self.total:
            filled = min(BAR_WIDTH, BAR_WIDTH * self.n // self.total)
            count = f"{self.n}/{self.total} [{'#' * filled}{'.' * (BAR_WIDTH - filled)}]"
        else:
            count = f"{self.n} it"
        if final:
            when = f"done in {clock_time(elapsed)}"
        elif self.total and rate > 0:
            when = f"ETA {clock_time((self.total - self.n) / rate)}"      # the items left at the mean rate
        else:
            when = ""
        post = " ".join(f"{k}={v:.4g}" if isinstance(v, numbers.Real) and not isinstance(v, numbers.Integral)
                        else f"{k}={v}"
                        for k, v in self.postfix.items())
        parts = (f"{self.desc} " if self.desc else "", count, f"{rate:.1f} it/s", when, post)
        return " ".join(s for s in parts if s)

    def _draw(self, final=False):
        if self.tty:
            now = self.clock()
            if final or self._last_draw is None or now - self._last_draw >= self.min_interval:
                self.file.write("\r" + self.line(final) + ("\n" if final else ""))
                self.file.flush()
                self._last_draw = now
        elif final or self.n % self.every == 0:
            self.file.write(self.line(final) + "\n")
            self.file.flush()

    def __iter__(self):
        self._start = self.clock()
        for item in self.iterable:
            yield item
            self.n += 1
            if self.n != self.total:     # the last item is drawn once, as the final line
                self._draw()
        self._draw(final=True)


def plural(n, word, many=None):
    """``n`` and ``word`` in the right number: "1 step", "2 steps", "1,200 steps"."""
    return f"{n:,} {word if n == 1 else many or word + 's'}"


def clock_time(seconds):
    """``seconds`` as m:ss, or h:mm:ss from an hour on."""
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Stopwatch:
    """Seconds per stage of a run: ``lap(name)`` closes the stage that ran since the last lap."""

    def __init__(self):
        self.start = self.last = time.perf_counter()
        self.laps = {}

    def lap(self, name):
        now = time.perf_counter()
        self.laps[name], self.last = now - self.last, now

    def seconds(self):
        """``{stage: seconds}`` and the ``total`` since the start."""
        return {**self.laps, "total": time.perf_counter() - self.start}
