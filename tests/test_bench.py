"""The DPO-versus-SFT step benchmark runs and reports what it measured (no wall-time assertions)."""

import json
import math
import os
import platform
import subprocess
import sys

import numpy as np
import pytest

from dpo_np import parallel
from dpo_np.bench.dpo import TARGET_RATIO, bench_dpo
from dpo_np.bench.model import FAMILIES, OTHER, gemm_family, time_by_family
from dpo_np.bench.table import performance_table
from dpo_np.bench.peer import unavailable


def test_bench_dpo_returns_finite_positive_step_times_and_their_ratio():
    printed = []
    r = bench_dpo(n_pairs=3, n_layer=1, n_head=2, n_embd=16, block_size=160, repeats=3, warmup=1,
                  print_fn=printed.append)
    for key in ("dpo_step_s", "sft_step_s", "ratio"):
        assert math.isfinite(r[key]) and r[key] > 0, key
    assert r["ratio"] == pytest.approx(r["dpo_step_s"] / r["sft_step_s"])
    assert len(r["dpo_times"]) == len(r["sft_times"]) == 3
    assert r["batch_shape"][0] == 6                     # N pairs = 2N sequences in one batch
    assert r["target"] == TARGET_RATIO and r["profile"] is None
    assert any("ratio DPO / SFT" in line for line in printed)


def test_bench_dpo_profile_holds_the_cprofile_text():
    r = bench_dpo(n_pairs=2, n_layer=1, n_head=2, n_embd=16, block_size=160, repeats=1, warmup=0,
                  profile=True, verbose=False)
    assert "function calls" in r["profile"]


def test_bench_dpo_names_a_bad_argument():
    with pytest.raises(ValueError, match="n_pairs"):
        bench_dpo(n_pairs=0, verbose=False)
    with pytest.raises(ValueError, match="n_pairs"):
        bench_dpo(n_pairs=10_000, n_layer=1, n_head=2, n_embd=16, verbose=False)


def test_bench_all_reports_every_benchmark_and_the_machine_it_ran_on(capsys):
    """The report's shape (its numbers are timings, which no test asserts)."""
    from dpo_np.bench.report import run_all
    report = run_all(quick=True, print_fn=lambda *a: None)
    assert set(report) == {"machine", "model_toy", "model_gpt2_small", "dpo", "closed_form", "generate", "torch"}
    m = report["machine"]
    assert {"cpu", "cores", "blas", "blas_threads", "array_library", "array_library_version",
            "vector_extensions", "load_average", "load_average_end"} <= set(m)
    for key, target in (("model_toy", 0.55), ("model_gpt2_small", 0.70)):
        r = report[key]
        assert r["target"] == target and r["ratio_min"] <= r["ratio"] <= r["ratio_max"]
        assert r["tokens_per_s"] > 0 and r["tracemalloc_peak_bytes"] > 0
        assert r["outside_gemm_s"] == pytest.approx(r["fwd_bwd_s"] - r["gemm_ceiling_s"])
        assert set(r["breakdown"]) == {*FAMILIES, OTHER}
        assert r["transcendental_s"] == pytest.approx(sum(count * t for _, count, _, t in r["transcendentals"]))
        t = r["threads"]
        assert t["threads"] == parallel.threads() and {t["threads"], t["other_threads"]} == {1, parallel.usable_cores()}
    assert report["generate"]["tokens_per_s"] > 0 and report["dpo"]["ratio"] > 0
    t = report["torch"]
    assert t["available"] == (unavailable() is None)
    assert t["available"] or "not installed" in t["reason"] or "CPU" in t["reason"]
    assert "round 1 of 1" in capsys.readouterr().err                          # progress, as it runs
    table = performance_table(report)
    assert table.count("\n| ") == 10 and "One run of `python -m dpo_np bench all`" in table


def test_the_breakdown_splits_the_step_by_family_and_puts_the_functions_back():
    from dpo_np import logprobs
    from dpo_np import model as M
    before = {name: getattr(M, name) for name in ("linear_forward", "gelu_backward", "attention_forward")}
    calls = []
    spent, total = time_by_family(lambda: calls.append(M.gelu_forward(np.ones((4, 8)))), 3)
    assert len(calls) == 3 and set(spent) == {*FAMILIES, OTHER}
    assert spent["gelu"] > 0 and spent["linear"] == spent["attention"] == 0
    assert sum(spent.values()) == pytest.approx(total)                    # "other" is the remainder
    assert all(getattr(M, name) is fn for name, fn in before.items())
    assert logprobs.batch_logps_forward.__module__ == "dpo_np.logprobs"
    assert {gemm_family("c_fc fwd"), gemm_family("attn q@kᵀ"), gemm_family("lm_head bwd dh")} == \
        {"linear", "attention", "lm_head"}


def test_the_transcendentals_are_the_steps_tanh_and_exp_on_its_shapes():
    from dpo_np.bench.model import model_transcendentals
    from dpo_np.model import GPTConfig
    cfg = GPTConfig(vocab_size=11, block_size=5, n_layer=3, n_head=2, n_embd=8)
    passes = model_transcendentals(cfg, batch_size=4)
    assert [(count, n) for _, count, n, _ in passes] == [(3, 4 * 5 * 32), (3, 4 * 2 * 5 * 5), (2, 4 * 5 * 11)]
    tanh, softmax, _ = (fn() for _, _, _, fn in passes)
    assert tanh.shape == (4, 5, 32) and np.all(np.abs(tanh) < 1)
    # the scores are ≤ 0 after the row maximum, the masked ones (keys after the query) underflow to 0
    causal = np.tril(np.ones((5, 5), dtype=bool))
    assert np.all(softmax[..., ~causal] == 0) and np.all((softmax[..., causal] > 0) & (softmax[..., causal] <= 1))


def _synthetic_report(eager, compiled, dpo_eager, toy_ratio, load):
    """A ``bench all`` report with chosen numbers, to check the table's arithmetic and verdicts."""
    rounds = lambda m: {"median": m, "min": m - 0.05, "max": m + 0.05, "rounds": [m - 0.05, m, m + 0.05]}
    model = {"config": {"n_layer": 4, "n_head": 4, "n_embd": 128, "block_size": 64, "vocab_size": 96},
             "batch_size": 32, "fwd_bwd_s": 0.1, "tokens_per_s": 20480.0, "model_flops_per_s": 1.0e11,
             "gemm_ceiling_flops_per_s": 1.6e11, "ratio": toy_ratio, "ratio_min": toy_ratio - 0.1,
             "ratio_max": toy_ratio + 0.1, "gemm_ceiling_s": 0.06, "outside_gemm_s": 0.04, "adamw_s": 0.002,
             "tracemalloc_peak_bytes": 2**27,
             "threads": {"threads": 1, "other_threads": 2, "other_fwd_bwd_s": 0.08,
                         "ratio_other": {"median": 0.8, "min": 0.75, "max": 0.85, "rounds": [0.75, 0.8, 0.85]}},
             "transcendental_s": 0.008,
             "breakdown": {"linear": {"s": 0.05, "gemm_s": 0.045, "rest_s": 0.005},
                           "gelu": {"s": 0.01, "gemm_s": 0.0, "rest_s": 0.01}}}
    return {"machine": {"cpu": "Test CPU", "cores": 2, "blas": "blas", "blas_threads": {"threads": 2, "from": "x"},
                        "array_library": "numpy", "array_library_version": "2", "vector_extensions": ["avx2"],
                        "load_average": [load, 0, 0], "load_average_end": [load, 0, 0]},
            "model_toy": model, "model_gpt2_small": {**model, "ratio": 0.8},
            "dpo": {"batch_shape": (32, 92), "dpo_step_s": 0.13, "sft_step_s": 0.12, "ratio": 13 / 12},
            "closed_form": {"config": {"n_prompts": 4}, "n_responses": 262144, "total_best": 0.136},
            "generate": {"config": {"n_layer": 3, "n_embd": 96}, "tokens_per_s": 13700.0,
                         "tokens_per_s_without_cache": 860.0},
            "torch": {"available": True,
                      "fwd_bwd": {"ours_s": 0.1, "eager_s": 0.1 / eager, "compiled_s": 0.1 / compiled,
                                  "ratio_eager": rounds(eager), "ratio_compiled": rounds(compiled)},
                      "dpo_step": {"shape": {"n_layer": 3, "n_embd": 96, "pairs": 16, "batch": [32, 92]},
                                   "ours_s": 0.2, "eager_s": 0.2 / dpo_eager, "ratio_eager": rounds(dpo_eager)}}}


def test_the_performance_table_quotes_the_report_and_judges_each_target():
    good = performance_table(_synthetic_report(eager=0.85, compiled=1.05, dpo_eager=0.80, toy_ratio=0.60, load=0.2))
    assert "ours 100.0 ms; eager 117.6 ms: 0.85× (rounds 0.80–0.90)" in good
    assert "torch.compile 95.2 ms: 1.05× (rounds 1.00–1.10)" in good
    assert "≤ 0.90× eager: met; ≤ 1.10× compiled: met" in good
    assert "ratio 0.60 (rounds 0.50–0.70) | ≥ 0.55: met" in good
    assert ("GEMMs alone 60.0 ms, everything else 40.0 ms: linear 50.0 ms, GEMMs 45.0 ms; gelu 10.0 ms; "
            "NumPy's tanh and exp alone 8.0 ms of the step |") in good
    assert "2 thread(s) 80.0 ms against 1 (this run's setting) 100.0 ms: 0.80× (rounds 0.75–0.85)" in good
    assert "13,700 tokens/s with the key/value cache, 860 without" in good and "not results" not in good
    bad = performance_table(_synthetic_report(eager=0.95, compiled=1.20, dpo_eager=0.95, toy_ratio=0.50, load=1.5))
    assert "≤ 0.90× eager: missed; ≤ 1.10× compiled: missed" in bad
    assert "≤ 0.90× eager: missed |" in bad and "≥ 0.55: missed" in bad
    assert "The machine was busy during this run" in bad and "not results" in bad
    # at the end the load holds the benchmark's own threads (2 here): only what is beyond them is other work
    ends = {}
    for end in (2.9, 3.1):
        report = _synthetic_report(0.85, 1.05, 0.8, 0.6, 0.2)
        report["machine"]["load_average_end"] = [end, 0, 0]
        ends[end] = "not results" in performance_table(report)
    assert ends == {2.9: False, 3.1: True}
    no_torch = _synthetic_report(0.85, 1.05, 0.8, 0.6, 0.2)
    no_torch["torch"] = {"available": False, "reason": "torch and transformers not installed: skipped"}
    assert performance_table(no_torch).count("not measured: torch and transformers not installed") == 2


def test_bench_table_reads_the_json_bench_all_writes(tmp_path, capsys):
    from dpo_np.cli import main
    path = tmp_path / "bench.json"
    report = _synthetic_report(0.85, 1.05, 0.8, 0.6, 0.2)
    path.write_text(json.dumps({"command": "bench", "result": report}), encoding="utf-8")
    assert main(["bench", "table", str(path)]) == 0
    assert capsys.readouterr().out == performance_table(report)
    assert main(["bench", "table"]) == 2
    assert main(["bench", "model", str(path)]) == 2
    (tmp_path / "other.json").write_text("{}", encoding="utf-8")
    assert main(["bench", "table", str(tmp_path / "other.json")]) == 2
    assert "not a `bench all` report" in capsys.readouterr().err


def test_the_machine_line_says_which_kernels_ran_and_what_held_them_back():
    from dpo_np.bench import machine
    report = _synthetic_report(0.85, 1.05, 0.8, 0.6, 0.2)
    assert "kernels" not in performance_table(report)                  # a report from before the field
    report["machine"]["vector_extensions"] = ["avx2", "avx512f"]
    report["machine"]["kernels"] = {"blas_kernels": "SkylakeX", "numpy_simd": ["X86_V3", "X86_V4"], "limited_by": {}}
    assert "with AVX2, AVX-512 (OpenBLAS SkylakeX kernels, NumPy SIMD X86_V3, X86_V4)" in performance_table(report)
    report["machine"]["kernels"] = {"blas_kernels": "Haswell", "numpy_simd": [],
                                    "limited_by": {"OPENBLAS_CORETYPE": "Haswell", "ATEN_CPU_CAPABILITY": "avx2"}}
    report["torch"]["cpu_capability"] = "AVX2"
    line = performance_table(report)
    assert ("with AVX2, AVX-512 (held below that by OPENBLAS_CORETYPE, ATEN_CPU_CAPABILITY: OpenBLAS Haswell "
            "kernels, NumPy SIMD baseline only)") in line and "at the end; PyTorch on its AVX2 kernels." in line
    assert set(machine.kernels()) == {"blas_kernels", "numpy_simd", "limited_by"}


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="the script switches off x86 AVX-512 code")
def test_the_script_without_avx512_holds_numpy_and_openblas_to_avx2():
    """benchmarks/without_avx512.sh sets every variable machine.ISA_VARIABLES names, and with them
    NumPy dispatches to nothing above AVX2 and OpenBLAS loads an AVX2 kernel family."""
    from dpo_np.bench import machine
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "without_avx512.sh")
    with open(script, encoding="utf-8") as f:           # lines `export NAME=value   # why`
        exports = dict(line.split("#")[0].removeprefix("export ").strip().replace('"', "").split("=", 1)
                       for line in f if line.startswith("export "))
    assert set(exports) == set(machine.ISA_VARIABLES)
    code = "import json; from dpo_np.bench import machine; print(json.dumps(machine.kernels()))"
    shown = json.loads(subprocess.run([sys.executable, "-c", code], env={**os.environ, **exports}, check=True,
                                      capture_output=True, text=True).stdout)
    assert shown["limited_by"] == exports
    assert shown["numpy_simd"] is not None and not any("512" in s or s == "X86_V4" for s in shown["numpy_simd"])
    if shown["blas_kernels"] is not None:                         # OpenBLAS, read by threadpoolctl
        assert shown["blas_kernels"] in ("Haswell", "Zen")
