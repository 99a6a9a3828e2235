"""The progress indicator yields every item unchanged and writes to the file it is given."""

import io

from dpo_np.progress import progress


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_yields_every_item_in_order_and_writes_a_few_plain_lines_off_a_terminal():
    out = io.StringIO()
    bar = progress(range(100), desc="train", file=out, every=25)
    seen = []
    for i in bar:
        seen.append(i)
        bar.set_postfix(loss=1.0 / (i + 1), step=i)
    assert seen == list(range(100))
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert [line.split()[1] for line in lines] == ["25/100", "50/100", "75/100", "100/100"]
    assert lines[-1].startswith("train  100/100 [####################]") and "it/s" in lines[-1]
    assert "loss=0.01 step=99" in lines[-1]


def test_redraws_in_place_on_a_terminal_and_handles_unknown_totals():
    out = _Terminal()
    items = list(progress((x for x in "abc"), file=out, min_interval=0))
    assert items == ["a", "b", "c"]
    text = out.getvalue()
    assert text.count("\r") == 4 and text.endswith("\n")          # a redraw per item, then the final line
    assert "3 it" in text.split("\r")[-1]


def test_empty_iterable_writes_one_final_line():
    out = io.StringIO()
    assert list(progress([], desc="x", file=out)) == []
    assert out.getvalue().startswith("x  0/0") or out.getvalue().startswith("x  0 it")


class _FakeClock:
    """A clock that moves only when the test says so: no test depends on wall time."""

    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_each_line_gives_the_time_left_at_the_mean_rate_and_the_last_the_time_taken():
    out, clock = io.StringIO(), _FakeClock()
    bar = progress(range(10), desc="sft", file=out, every=2, clock=clock)
    for i in bar:
        clock.now += 3.0 if i < 4 else 9.0            # 3 s per item, then 9 s
    lines = out.getvalue().splitlines()
    # after 2 items in 6 s: 0.33 it/s, 8 left → 24 s; after 6 items in 30 s: 0.2 it/s, 4 left → 20 s
    assert "0.3 it/s ETA 0:24" in lines[0]
    assert "0.2 it/s ETA 0:20" in lines[2]
    assert lines[-1].split("] ")[1] == "0.2 it/s done in 1:06"      # 10 items in 4×3 + 6×9 = 66 s


def test_the_time_left_counts_hours_and_is_absent_before_any_rate():
    from dpo_np.progress import clock_time
    assert [clock_time(s) for s in (0, 59.4, 61, 3600, 3725.6)] == ["0:00", "0:59", "1:01", "1:00:00", "1:02:06"]
    clock = _FakeClock()
    bar = progress(range(5), file=io.StringIO(), clock=clock)
    bar._start = clock()
    assert "ETA" not in bar.line()                     # no item done yet: no rate to extrapolate
