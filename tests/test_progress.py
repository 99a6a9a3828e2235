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
