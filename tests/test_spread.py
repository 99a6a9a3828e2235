"""The seed lists the toy commands take and the spread they report over seeds: parsed as `demo --seeds`
parses them, every bad value refused by name, and every summary number computed again by hand."""

import math

import numpy as np
import pytest

from dpo_np.experiments import spread


@pytest.mark.parametrize("text, seeds", [("0-2", [0, 1, 2]), ("0,1,2", [0, 1, 2]), ("4", [4]), ("3-3", [3]),
                                         ("2,0,7", [2, 0, 7]), (" 1 - 3 ", [1, 2, 3])])
def test_a_range_or_a_list_names_those_seeds(text, seeds):
    assert spread.parse_seeds(text) == seeds


@pytest.mark.parametrize("text, message", [
    ("3-1", "--seeds: the range 3-1 runs backwards; write 1-3"),
    ("", "--seeds: is empty"),
    ("   ", "--seeds: is empty"),
    ("a", "--seeds: must be a range like 0-4 or a list like 0,1,2, got 'a'"),
    ("0-2-4", "must be a range like 0-4"),
    ("1,,2", "must be a range like 0-4"),
    ("-1", "--seeds: must name non-negative seeds"),
    ("1,2,1", "--seeds: names seed 1 more than once"),
])
def test_a_bad_seed_list_is_refused_with_the_reason(text, message):
    with pytest.raises(ValueError) as err:
        spread.parse_seeds(text)
    assert message in str(err.value)


def test_the_spread_is_the_mean_the_sample_sd_its_standard_error_and_the_range():
    values = [0.3, 0.1, 0.7, 0.5]
    s = spread.spread(values)
    mean = sum(values) / 4
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / 3)
    assert s == pytest.approx({"n": 4, "mean": mean, "sd": sd, "se": sd / 2, "min": 0.1, "max": 0.7}, rel=1e-12)
    assert spread.spread([2.5]) == {"n": 1, "mean": 2.5, "sd": 0.0, "se": 0.0, "min": 2.5, "max": 2.5}
    for bad in ([], [1.0, float("nan")], [float("inf")]):
        with pytest.raises(ValueError, match="finite"):
            spread.spread(bad)
    assert spread.describe(s, ".2f") == f"0.40 ± {sd / 2:.2f} s.e. (0.10–0.70, 4 seeds)"


def test_over_seeds_keeps_one_row_per_seed_and_the_table_shows_them_with_the_spread():
    lines = []
    rows, results = spread.over_seeds([3, 5], lambda seed: {"x": seed * 2.0}, lambda r: {"value": r["x"] + 1},
                                      print_fn=lines.append)
    assert rows == [{"seed": 3, "value": 7.0}, {"seed": 5, "value": 11.0}]
    assert results == [{"x": 6.0}, {"x": 10.0}] and lines == ["seed 3 (1 of 2)", "seed 5 (2 of 2)"]
    table = spread.seed_table(rows, [("value", "v", ".1f")]).splitlines()
    assert table[2:4] == ["| 3 | 7.0 |", "| 5 | 11.0 |"]
    assert table[4] == f"| mean ± s.d. | 9.0 ± {np.std([7, 11], ddof=1):.2g} |"
    assert table[-1] == "| min – max | 7.0 – 11.0 |"
    assert spread.spreads(rows, ["value"])["value"]["mean"] == 9.0
