"""The DPO-versus-SFT step benchmark runs and reports what it measured (no wall-time assertions)."""

import math

import pytest

from dpo_np.bench.dpo import TARGET_RATIO, bench_dpo


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
    assert set(report) == {"machine", "model_toy", "model_gpt2_small", "dpo", "closed_form", "generate"}
    m = report["machine"]
    assert {"cpu", "cores", "blas", "blas_threads", "array_library", "array_library_version"} <= set(m)
    for key in ("model_toy", "model_gpt2_small"):
        r = report[key]
        assert r["target"] == 0.70 and r["ratio_min"] <= r["ratio"] <= r["ratio_max"]
        assert r["tokens_per_s"] > 0 and r["tracemalloc_peak_bytes"] > 0
    assert report["generate"]["tokens_per_s"] > 0 and report["dpo"]["ratio"] > 0
    assert "round 1 of 1" in capsys.readouterr().err                          # progress, as it runs
