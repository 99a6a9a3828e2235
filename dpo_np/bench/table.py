"""The README's performance table, written from ``bench all``'s report so the two cannot disagree.

    python -m dpo_np bench all --json figures/bench.json     # every benchmark, one JSON
    python -m dpo_np bench table figures/bench.json          # the Markdown the README holds

Each row quotes the report's own numbers: medians, the spread of the per-round ratios, and the
verdict against ``TARGETS``. Below the table, the machine and its load average before and after
the run; a run on a busy machine says so in the table itself, because its timings are not results.
"""

import json

from dpo_np.bench import machine
from dpo_np.bench.model import GPT2_SMALL_TARGET_RATIO, TARGET_RATIO

# what "fast enough" means, per row: a ratio ours / PyTorch at most this (lower is faster), the
# model's matmul FLOP/s over NumPy's own matmul on the same shapes at least this
TARGETS = {"vs_eager": 0.90, "vs_compiled": 1.10, "dpo_vs_eager": 0.90, "toy_ratio": TARGET_RATIO,
           "gpt2_small_ratio": GPT2_SMALL_TARGET_RATIO, "dpo_vs_sft": 1.15}
BUSY_LOAD_PER_CORE = 0.5          # a 1-minute load above half the cores (beyond the benchmark's own threads
                                  # at its end): other work shared the machine


def load_report(path):
    """The report inside a ``bench all --json`` file (its "result"), or a bare report."""
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    report = data.get("result", data)
    if not isinstance(report, dict) or "model_toy" not in report:
        raise ValueError(f"{path}: not a `bench all` report (no model_toy); write one with "
                         f"python -m dpo_np bench all --json {path}")
    return report


def performance_table(report):
    """The README's Markdown table (and the lines below it) from a ``bench all`` report."""
    rows = [("what", "measured", "target"), ("---", "---", "---")]
    rows += [_toy_vs_torch(report), _dpo_vs_torch(report), _toy_ratio(report["model_toy"]),
             _where_time_goes(report["model_toy"]), _threads(report["model_toy"]), _gpt2_small(report["model_gpt2_small"]),
             _dpo_vs_sft(report["dpo"]), _closed_form(report["closed_form"]), _generate(report["generate"])]
    lines = ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n\n" + _machine_note(report["machine"], report.get("torch")) + "\n"


def _ms(seconds):
    return f"{seconds * 1e3:,.1f} ms" if seconds < 1 else f"{seconds:,.2f} s"


def _ratio(q):
    return f"{q['median']:.2f}× (rounds {q['min']:.2f}–{q['max']:.2f})"


def _verdict(ok):
    return "met" if ok else "missed"


def _toy_vs_torch(report):
    t, m = report.get("torch", {}), report["model_toy"]["config"]
    what = (f"toy GPT forward+backward against PyTorch ({m['n_layer']} layers × {m['n_embd']}, "
            f"T = {m['block_size']}, batch {report['model_toy']['batch_size']}, float32)")
    if not t.get("available"):
        return what, f"not measured: {t.get('reason', 'no torch in this report')}", _targets_vs_torch()
    c = t["fwd_bwd"]
    measured = f"ours {_ms(c['ours_s'])}; eager {_ms(c['eager_s'])}: {_ratio(c['ratio_eager'])}"
    verdicts = [f"≤ {TARGETS['vs_eager']:.2f}× eager: {_verdict(c['ratio_eager']['median'] <= TARGETS['vs_eager'])}"]
    if "compiled_s" in c:
        measured += f"; torch.compile {_ms(c['compiled_s'])}: {_ratio(c['ratio_compiled'])}"
        ok = c["ratio_compiled"]["median"] <= TARGETS["vs_compiled"]
        verdicts.append(f"≤ {TARGETS['vs_compiled']:.2f}× compiled: {_verdict(ok)}")
    else:
        measured += f"; torch.compile not measured ({c.get('compiled_error', 'off')})"
    return what, measured, "; ".join(verdicts)


def _targets_vs_torch():
    return f"≤ {TARGETS['vs_eager']:.2f}× eager, ≤ {TARGETS['vs_compiled']:.2f}× compiled"


def _dpo_vs_torch(report):
    t = report.get("torch", {})
    target = f"≤ {TARGETS['dpo_vs_eager']:.2f}× eager"
    if not t.get("available"):
        return "DPO step against PyTorch", f"not measured: {t.get('reason', 'no torch in this report')}", target
    c = t["dpo_step"]
    s = c["shape"]
    what = (f"DPO step against PyTorch: policy forward+backward, reference forward ({s['n_layer']} layers × "
            f"{s['n_embd']}, {s['pairs']} pairs = {s['batch'][0]} rows × T = {s['batch'][1]})")
    ok = c["ratio_eager"]["median"] <= TARGETS["dpo_vs_eager"]
    return what, f"ours {_ms(c['ours_s'])}; eager {_ms(c['eager_s'])}: {_ratio(c['ratio_eager'])}", \
        f"{target}: {_verdict(ok)}"


def _model_row(r):
    return (f"forward+backward {_ms(r['fwd_bwd_s'])}, {r['tokens_per_s']:,.0f} tokens/s; "
            f"{r['model_flops_per_s'] / 1e9:.0f} GFLOP/s against NumPy's {r['gemm_ceiling_flops_per_s'] / 1e9:.0f} "
            f"on the same shapes: ratio {r['ratio']:.2f} (rounds {r['ratio_min']:.2f}–{r['ratio_max']:.2f})")


def _toy_ratio(r):
    ok = r["ratio"] >= TARGETS["toy_ratio"]
    return ("toy GPT step against NumPy's own matmul on its shapes", _model_row(r),
            f"≥ {TARGETS['toy_ratio']:.2f}: {_verdict(ok)}")


def _where_time_goes(r):
    parts = []
    for family, b in sorted(r["breakdown"].items(), key=lambda kv: -kv[1]["s"]):
        gemm = f", GEMMs {_ms(b['gemm_s'])}" if b["gemm_s"] else ""
        parts.append(f"{family} {_ms(b['s'])}{gemm}")
    measured = (f"GEMMs alone {_ms(r['gemm_ceiling_s'])}, everything else {_ms(r['outside_gemm_s'])}: "
                + "; ".join(parts))
    if "transcendental_s" in r:            # reports from before it was measured have no such entry
        measured += f"; NumPy's tanh and exp alone {_ms(r['transcendental_s'])} of the step"
    return "where the toy step's time goes (per op family, forward+backward)", measured, ""


def _threads(r):
    t = r["threads"]
    what = "the toy step with the elementwise passes in threads (`DPO_NP_THREADS`, parallel.py)"
    if "ratio_other" not in t:
        return what, "not measured (one core)", ""
    return (what, f"{t['other_threads']} thread(s) {_ms(t['other_fwd_bwd_s'])} against {t['threads']} "
                  f"(this run's setting) {_ms(r['fwd_bwd_s'])}: {_ratio(t['ratio_other'])}", "")


def _gpt2_small(r):
    c = r["config"]
    ok = r["ratio"] >= TARGETS["gpt2_small_ratio"]
    return (f"GPT-2 small step ({c['n_layer']} × {c['n_embd']} × {c['n_head']} heads, V = {c['vocab_size']:,}, "
            f"T = {c['block_size']}, batch {r['batch_size']})",
            _model_row(r) + f"; AdamW {_ms(r['adamw_s'])}; peak {r['tracemalloc_peak_bytes'] / 2**20:.0f} MiB (tracemalloc)",
            f"≥ {TARGETS['gpt2_small_ratio']:.2f}: {_verdict(ok)}")


def _dpo_vs_sft(r):
    ok = r["ratio"] <= TARGETS["dpo_vs_sft"]
    return (f"DPO step (π_ref precomputed) against an SFT step on the same {r['batch_shape'][0]} sequences",
            f"{_ms(r['dpo_step_s'])} against {_ms(r['sft_step_s'])}: {r['ratio']:.2f}",
            f"≤ {TARGETS['dpo_vs_sft']:.2f}: {_verdict(ok)}")


def _closed_form(r):
    c = r["config"]
    return (f"exact π*, log Z and J over {r['n_responses']:,} responses × {c['n_prompts']} prompts",
            _ms(r["total_best"]), "")


def _generate(r):
    c = r["config"]
    return (f"generation, {c['n_layer']} layers × {c['n_embd']}, sampled",
            f"{r['tokens_per_s']:,.0f} tokens/s with the key/value cache, "
            f"{r['tokens_per_s_without_cache']:,.0f} without", "")


def _machine_note(m, torch_report=None):
    note = f"One run of `python -m dpo_np bench all` on {machine.one_line(m)}"
    start, end = m.get("load_average"), m.get("load_average_end")
    if start and end:
        note += f" at the start, {end[0]:.2f} at the end"
    if (torch_report or {}).get("cpu_capability"):
        note += f"; PyTorch on its {torch_report['cpu_capability']} kernels"
    note += "."
    cores = m.get("cores") or 1
    # before the run the load is other work's; at its end it holds the benchmark's own threads too
    own = (m.get("blas_threads") or {}).get("threads") or 1
    if (start and start[0] > BUSY_LOAD_PER_CORE * cores) or (end and end[0] > own + BUSY_LOAD_PER_CORE * cores):
        note += (f" **The machine was busy during this run (1-minute load above {BUSY_LOAD_PER_CORE:g} per core): "
                 f"these timings are not results.**")
    return note
