"""The reading notebooks: each is stored with the outputs a fresh run gives, and runs without error.

A fresh execution (nbclient, a new kernel) must print what the stored notebook shows: the same
words, and numbers equal within a relative 1e-3 (plus 1e-6 absolute), which absorbs the last-bit
differences that BLAS thread counts make in a long computation, never a changed result. Pictures
are not compared byte for byte; that each picture cell still draws one is.

Run only these with ``pytest -m notebooks``; leave them out with ``-m "not notebooks"``.
"""

import importlib.util
import json
import math
import os
import re

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
NOTEBOOKS = os.path.join(os.path.dirname(HERE), "notebooks")
PATHS = sorted(os.path.join(NOTEBOOKS, n) for n in os.listdir(NOTEBOOKS) if n.endswith(".ipynb"))
EXPECTED = ["01_language_models", "02_rl_the_cat", "03_reward_models", "04_rlhf_objective", "05_dpo",
            "06_log_probabilities", "07_dpo_end_to_end", "08_dpo_vs_rlhf", "09_dpo_beyond_the_table",
            "10_after_dpo"]
RTOL, ATOL = 1e-3, 1e-6

NUMBER = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?|nan|inf")
HAVE_NBCLIENT = all(importlib.util.find_spec(m) for m in ("nbclient", "nbformat", "ipykernel"))

pytestmark = pytest.mark.notebooks


def _read(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _text(value):
    return "".join(value) if isinstance(value, list) else value


def cell_outputs(cell):
    """(printed text, number of pictures) of one code cell's outputs."""
    text, pictures = [], 0
    for out in cell.get("outputs", []):
        if out["output_type"] == "stream":
            text.append(_text(out["text"]))
        elif out["output_type"] in ("execute_result", "display_data"):
            data = out.get("data", {})
            if "image/png" in data or "image/svg+xml" in data:
                pictures += 1
            elif "text/plain" in data:
                text.append(_text(data["text/plain"]))
        elif out["output_type"] == "error":
            text.append(f"{out['ename']}: {out['evalue']}")
    return "".join(text), pictures


def differences(stored, fresh):
    """Where two printed texts differ: in their words, or in a number beyond the tolerance."""
    words = (NUMBER.split(stored), NUMBER.split(fresh))
    if words[0] != words[1]:
        return [f"text differs:\n--- stored\n{stored}\n--- fresh\n{fresh}"]
    out = []
    for a, b in zip(NUMBER.findall(stored), NUMBER.findall(fresh)):
        x, y = float(a), float(b)
        same = (math.isnan(x) and math.isnan(y)) or x == y or abs(x - y) <= ATOL + RTOL * max(abs(x), abs(y))
        if not same:
            out.append(f"{a} (stored) != {b} (fresh)")
    return out


def test_every_part_of_the_notes_has_its_notebook():
    assert [os.path.basename(p)[:-6] for p in PATHS] == EXPECTED


@pytest.mark.parametrize("path", PATHS, ids=[os.path.basename(p)[:-6] for p in PATHS])
def test_notebook_is_stored_executed_in_order_with_outputs_and_credits_the_notes(path):
    nb = _read(path)
    code = [c for c in nb["cells"] if c["cell_type"] == "code" and _text(c["source"]).strip()]
    assert code, "a notebook without code verifies nothing"
    assert [c["execution_count"] for c in code] == list(range(1, len(code) + 1)), "run top to bottom once"
    assert not any(o["output_type"] == "error" for c in code for o in c["outputs"])
    assert sum(bool(c["outputs"]) for c in code) >= len(code) // 2, "stored without most of its outputs"
    markdown = " ".join(_text(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
    assert "Umar Jamil" in markdown and "CC BY-NC 4.0" in markdown


@pytest.mark.skipif(not HAVE_NBCLIENT, reason="needs nbclient, nbformat and ipykernel (the test extra)")
@pytest.mark.parametrize("path", PATHS, ids=[os.path.basename(p)[:-6] for p in PATHS])
def test_a_fresh_run_prints_what_the_stored_notebook_shows(path):
    import sys

    sys.path.insert(0, NOTEBOOKS)
    try:
        from execute import execute
    finally:
        sys.path.remove(NOTEBOOKS)
    stored = [c for c in _read(path)["cells"] if c["cell_type"] == "code"]
    fresh = [c for c in execute(path)["cells"] if c["cell_type"] == "code"]
    assert len(stored) == len(fresh)
    problems = []
    for i, (a, b) in enumerate(zip(stored, fresh)):
        (text_a, pics_a), (text_b, pics_b) = cell_outputs(a), cell_outputs(b)
        problems += [f"cell {i + 1}: {d}" for d in differences(text_a, text_b)]
        if pics_a != pics_b:
            problems.append(f"cell {i + 1}: {pics_a} picture(s) stored, {pics_b} drawn now")
    assert not problems, "\n".join(problems[:20])


def test_the_comparison_sees_a_changed_number_and_forgives_the_last_bits():
    assert differences("KL = 0.123456, 3 pairs", "KL = 0.123457, 3 pairs") == []
    assert differences("KL = 0.1234", "KL = 0.1300") == ["0.1234 (stored) != 0.1300 (fresh)"]
    assert differences("accuracy 0.75", "loss 0.75")
    assert differences("[1 2 3]", "[1 2 4]") == ["3 (stored) != 4 (fresh)"]
