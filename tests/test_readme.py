"""The README's Python example runs as written, and its data formats load."""

import json
import os
import re

from dpo_np.bench.table import load_report, performance_table
from dpo_np.data import load_preferences, load_sft

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _readme():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        return f.read()


def _block_after(marker, language):
    text = _readme()
    m = re.search(re.escape(marker) + r"\s*```" + language + r"\n(.*?)```", text, re.S)
    assert m, f"README.md has no ```{language} block after {marker}"
    return m.group(1)


def test_the_python_api_example_runs_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = _block_after("<!-- api-example -->", "python")
    scope = {}
    exec(compile(code, "README.md (api example)", "exec"), scope)
    trainer = scope["dpo_trainer"]
    assert trainer.state["step"] == trainer.args.max_steps > 0
    assert os.path.isdir(trainer.final_checkpoint)


def test_the_documented_jsonl_formats_load(tmp_path):
    for marker, load, keys in (("<!-- preference-format -->", load_preferences, {"prompt", "chosen", "rejected"}),
                               ("<!-- sft-format -->", load_sft, None)):
        lines = _block_after(marker, "json").strip().splitlines()
        assert len(lines) == 3
        path = tmp_path / "data.jsonl"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        records = load(str(path))
        assert len(records) == 3
        if keys:
            assert all(set(json.loads(line)) == keys for line in lines)


def test_the_quick_start_files_are_sixteen_pairs_their_sft_lines_and_unseen_held_out_pairs():
    """The README's own-data numbers come from examples/: 16 pairs in more than one language, SFT on
    both answers of each, and held-out pairs whose prompts are never trained on."""
    folder = os.path.join(ROOT, "examples")
    pairs = load_preferences(os.path.join(folder, "prefs.jsonl"))
    held_out = load_preferences(os.path.join(folder, "held_out.jsonl"))
    sft = load_sft(os.path.join(folder, "sft.jsonl"))
    assert len(pairs) == 16 and len(held_out) == 8
    assert sorted((r["prompt"], r["response"]) for r in sft) == \
        sorted((p["prompt"], y) for p in pairs for y in (p["chosen"], p["rejected"]))
    assert not {r["prompt"] for r in held_out} & {p["prompt"] for p in pairs}
    assert any(not p["prompt"].isascii() for p in pairs) and "examples/prefs.jsonl" in _readme()


def test_the_performance_tables_are_the_ones_bench_table_writes():
    blocks = re.findall(r"<!-- bench-table (\S+) -->\n(.*?)<!-- /bench-table -->", _readme(), re.S)
    assert "figures/bench.json" in dict(blocks), "README.md has no <!-- bench-table figures/bench.json --> block"
    for name, text in blocks:
        path = os.path.join(ROOT, *name.split("/"))
        if os.path.exists(path):
            assert text == performance_table(load_report(path)), \
                f"README's table differs from `python -m dpo_np bench table {name}`: paste its output"
        else:
            assert "Not measured yet" in text and "|" not in text     # no numbers without their JSON
