"""How fast the hand-written model trains, measured against NumPy's own matmul on the same shapes.

A training step of the model is a forward, a backward and (optionally) an AdamW update. Nearly
all of its arithmetic is in GEMMs, so the honest yardstick is the GEMMs themselves: every
distinct matrix product the step performs is timed alone, with the same shapes and the same
operand layouts (transposed views, strided head slices), and their summed time is the floor the
step could reach on this machine. ``ratio`` = that floor / the measured forward+backward time
= (model FLOP/s) / (NumPy's matmul FLOP/s on the model's shapes). The rest is LayerNorm, GELU,
softmax, the embedding scatter and Python overhead: after the rounds, a few more steps run with
a timer around every layer function, and the report splits the step by op family (``FAMILIES``),
each family's time against what its GEMMs take alone. In every round the step is also timed with
``parallel``'s other thread setting, so the report says whether the threads pay on this machine.

    python -m dpo_np bench model            # the default toy GPT-2, batch 32

A ratio of 1 would mean the step does nothing but its GEMMs. The targets: 0.55 for the toy step
(``TARGET_RATIO``; its small matmuls leave the elementwise passes a large share) and 0.70 for
GPT-2 small's (``GPT2_SMALL_TARGET_RATIO``).
"""

import resource
import statistics
import sys
import time
import tracemalloc

import numpy as np

from dpo_np import backend, logprobs, memory, parallel
from dpo_np import model as model_module
from dpo_np.model import GPT, GPTConfig
from dpo_np.optim import AdamW

TARGET_RATIO = 0.55
GPT2_SMALL_TARGET_RATIO = 0.70


def model_gemms(config, batch_size, dtype=np.float32, seed=0):
    """Every matrix product of one forward+backward, as (label, count, flops, thunk).

    ``flops`` = 2·m·n·k per product (per batch of products for attention); ``count`` is how many
    times the step performs it; ``thunk`` runs it alone on random operands laid out as the model's
    are (so a transposed weight in the model is a transposed view here too).
    """
    rng = np.random.default_rng(seed)
    B, T, C, V, nh = batch_size, config.block_size, config.n_embd, config.vocab_size, config.n_head
    hs, N, L = C // nh, batch_size * config.block_size, config.n_layer

    def rand(*shape):
        return rng.standard_normal(shape).astype(dtype)

    gemms = []
    # the four linear layers of a block: forward x @ W, backward dout @ Wᵀ and xᵀ @ dout
    for name, k, n in (("c_attn", C, 3 * C), ("attn.c_proj", C, C), ("c_fc", C, 4 * C), ("mlp.c_proj", 4 * C, C)):
        x, w, d = rand(N, k), rand(k, n), rand(N, n)
        f = 2 * N * k * n
        gemms += [(f"{name} fwd   ({N},{k})@({k},{n})", L, f, lambda x=x, w=w: x @ w),
                  (f"{name} bwd dx ({N},{n})@({k},{n})ᵀ", L, f, lambda d=d, w=w: d @ w.T),
                  (f"{name} bwd dW ({N},{k})ᵀ@({N},{n})", L, f, lambda x=x, d=d: x.T @ d)]
    # attention, batched over (B, nh), on strided views of qkv as in the model
    qkv = rand(B, T, 3, nh, hs).transpose(2, 0, 3, 1, 4)
    q, k_, v = qkv[0], qkv[1], qkv[2]
    att, dy = rand(B, nh, T, T), rand(B, T, nh, hs).transpose(0, 2, 1, 3)
    f = 2 * B * nh * T * T * hs
    kT, vT, attT = k_.transpose(0, 1, 3, 2), v.transpose(0, 1, 3, 2), att.transpose(0, 1, 3, 2)
    gemms += [(f"attn q@kᵀ   ({B},{nh},{T},{hs})@(..,{hs},{T})", L, f, lambda: q @ kT),
              (f"attn att@v  ({B},{nh},{T},{T})@(..,{T},{hs})", L, f, lambda: att @ v),
              ("attn bwd attᵀ@dy", L, f, lambda: attT @ dy),
              ("attn bwd dy@vᵀ", L, f, lambda: dy @ vT),
              ("attn bwd ds@k", L, f, lambda: att @ k_),
              ("attn bwd dsᵀ@q", L, f, lambda: attT @ q)]
    # the tied LM head: h @ wteᵀ, dlogits @ wte, dlogitsᵀ @ h
    h, wte, dl = rand(N, C), rand(V, C), rand(N, V)
    f = 2 * N * C * V
    gemms += [(f"lm_head fwd ({N},{C})@({V},{C})ᵀ", 1, f, lambda: h @ wte.T),
              (f"lm_head bwd dh ({N},{V})@({V},{C})", 1, f, lambda: dl @ wte),
              (f"lm_head bwd dW ({N},{V})ᵀ@({N},{C})", 1, f, lambda: dl.T @ h)]
    return gemms


def model_transcendentals(config, batch_size, dtype=np.float32, seed=0):
    """The step's tanh and exp passes, as (label, count, elements, thunk), each to be timed alone.

    Beside the GEMMs these are the elementwise passes whose speed depends most on the vector code
    NumPy dispatches to (``machine.kernels``). ``thunk`` applies the ufunc to an array of the shape
    the model applies it to, with values like the model's: GELU's pre-activations, the attention
    scores after the row maximum is subtracted (the masked ones at the model's −big), the logits.
    """
    rng = np.random.default_rng(seed)
    B, T, C, V, nh, L = (batch_size, config.block_size, config.n_embd, config.vocab_size, config.n_head,
                         config.n_layer)
    h = rng.standard_normal((B, T, 4 * C)).astype(dtype)
    s = -np.abs(rng.standard_normal((B, nh, T, T))).astype(dtype)
    s[..., ~model_module.attention_allowed(T)[0, 0]] = np.finfo(dtype).min / 2
    z = rng.standard_normal((B, T, V)).astype(dtype)
    h_out, s_out, z_out = (np.empty_like(a) for a in (h, s, z))
    return [("tanh, GELU forward", L, h.size, lambda: np.tanh(h, out=h_out)),
            ("exp, attention softmax", L, s.size, lambda: np.exp(s, out=s_out)),
            ("exp, log-probs forward and backward", 2, z.size, lambda: np.exp(z, out=z_out))]


def _next_token_dlogits(logits, targets):
    """The mean next-token cross-entropy and its dL/dlogits, through the package's own log-prob pair."""
    labels = np.concatenate([np.full((len(targets), 1), -100), targets[:, 1:]], axis=1)
    logps, cache = logprobs.batch_logps_forward(logits, labels)
    n = labels[:, 1:].size
    return -float(logps.sum()) / n, logprobs.batch_logps_backward(np.full(len(logps), -1.0 / n, logits.dtype), cache)


def next_token_step(model, idx, targets):
    """One forward+backward of ``model`` on the next-token loss (gradients zeroed first); the loss."""
    model.zero_grad()
    loss, dlogits = _next_token_dlogits(model.forward(idx), targets)
    model.backward(dlogits)
    return loss


# the model's layer functions by the family the breakdown reports, and the log-prob pair of the loss
FAMILIES = {"linear": (model_module, "linear"), "attention": (model_module, "attention"),
            "gelu": (model_module, "gelu"), "layernorm": (model_module, "layernorm"),
            "lm_head": (model_module, "lm_head"), "embedding": (model_module, "embedding"),
            "log-probs": (logprobs, "batch_logps")}
OTHER = "other"                      # residual adds, zero_grad, the input checks, Python


def gemm_family(label):
    """The family a GEMM of ``model_gemms`` belongs to: the four linear layers, attention, the head."""
    first = label.split()[0]
    return {"attn": "attention", "lm_head": "lm_head"}.get(first, "linear")


def time_by_family(step, steps):
    """Seconds per call of ``step`` spent inside each family's functions (``FAMILIES``), the rest
    under ``OTHER``, and the total, over ``steps`` calls. The functions are wrapped with a timer
    for these calls only (a few µs per call, about 60 calls per step)."""
    spent = dict.fromkeys([*FAMILIES, OTHER], 0.0)
    patched = []

    def timed(fn, family):
        def wrapper(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[family] += time.perf_counter() - t
        return wrapper

    for family, (module, prefix) in FAMILIES.items():
        for name in (f"{prefix}_forward", f"{prefix}_backward"):
            patched.append((module, name, getattr(module, name)))
            setattr(module, name, timed(getattr(module, name), family))
    try:
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        total = (time.perf_counter() - t0) / steps
    finally:
        for module, name, fn in patched:
            setattr(module, name, fn)
    per_step = {k: v / steps for k, v in spent.items()}
    per_step[OTHER] = total - sum(per_step.values())
    return per_step, total


def _median_of_block(fn, n):
    """Run ``fn`` n + 1 times in a row and return the median time of the last n: the first of a
    block pays for caches and threads that another library (or another shape) left cold."""
    times = []
    for _ in range(n + 1):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


def bench_model(n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=32, vocab_size=96,
                steps=10, rounds=5, with_adamw=True, seed=0, gemm_inner=5, profile=False, verbose=True,
                print_fn=print, progress_file=None, target=TARGET_RATIO):
    """Time float32 training steps of ``GPT`` and compare with NumPy's matmul on the same shapes.

    ``rounds`` times: a block of ``steps`` consecutive training steps, then each distinct GEMM of
    the step in a block of its own (``gemm_inner`` calls), the first of every block dropped. Each
    round gives a ratio (GEMM floor / forward+backward); the report is the median over rounds and
    their spread, so one disturbed round cannot move the headline. Returns a dict of measurements:
    median times (s), tokens/s, model FLOP/s (matmul FLOPs counted from the shapes), the GEMM
    ceiling, the ratio (and its min/max over rounds) against ``target``, peak memory, and
    ``breakdown``: per op family (``FAMILIES``), the seconds per step inside its functions, the
    part its GEMMs take alone (``gemm_s``, from the median round) and the rest (``rest_s``).
    """
    if backend.backend_name() != "numpy":
        raise RuntimeError("bench_model measures the NumPy backend; call backend.set_backend('numpy')")
    memory.keep_freed_memory()                 # as the training loop's step does
    cfg = GPTConfig(vocab_size=vocab_size, block_size=block_size, n_layer=n_layer, n_head=n_head, n_embd=n_embd)
    model = GPT(cfg, seed=seed, dtype=np.float32)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, vocab_size, size=(batch_size, block_size))
    targets = rng.integers(0, vocab_size, size=(batch_size, block_size))
    opt = AdamW(model.params, lr=1e-4) if with_adamw else None
    losses = []

    def fwd_bwd():
        losses.append(next_token_step(model, idx, targets))

    gemms = model_gemms(cfg, batch_size, np.float32, seed)
    say = progress_file if progress_file is not None else sys.stderr
    rows = []
    threads, other_threads = parallel.threads(), (parallel.usable_cores() if parallel.threads() == 1 else 1)
    for r in range(rounds):
        print(f"bench model: round {r + 1} of {rounds} ({steps} steps, then {len(gemms)} GEMMs alone)",
              file=say, flush=True)
        t_other = None
        if other_threads != threads:           # the same steps with the other thread setting, for its A/B
            parallel.set_threads(other_threads)
            try:
                t_other = _median_of_block(fwd_bwd, steps)
            finally:
                parallel.set_threads(threads)
        t_fb = _median_of_block(fwd_bwd, steps)
        t_opt = _median_of_block(lambda: opt.step(model.grads), steps) if opt is not None else 0.0
        t_gemms = [_median_of_block(fn, gemm_inner) for _, _, _, fn in gemms]
        t_floor = sum(count * t for (_, count, _, _), t in zip(gemms, t_gemms))
        rows.append({"fwd_bwd_s": t_fb, "adamw_s": t_opt, "gemm_s": t_gemms, "floor_s": t_floor,
                     "ratio": t_floor / t_fb, "other_threads_s": t_other})
    pick = sorted(rows, key=lambda row: row["ratio"])[len(rows) // 2]         # the median round
    flops = sum(count * f for _, count, f, _ in gemms)
    t_fb, t_opt, t_floor = pick["fwd_bwd_s"], pick["adamw_s"], pick["floor_s"]
    breakdown, breakdown_step = _breakdown(fwd_bwd, steps, gemms, pick["gemm_s"])
    transcendentals = [(label, count, n, _median_of_block(fn, gemm_inner))
                       for label, count, n, fn in model_transcendentals(cfg, batch_size, np.float32, seed)]

    # memory: one more step under tracemalloc (NumPy reports its buffers to it)
    tracemalloc.start()
    base, _ = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    fwd_bwd()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)

    ratios = [row["ratio"] for row in rows]
    res = {"config": cfg.to_dict(), "batch_size": batch_size, "steps": steps, "rounds": rounds,
           "adamw": "on" if opt is not None else "off", "n_params": model.num_params(),
           "loss_first": losses[0], "loss_last": losses[-1], "fwd_bwd_s": t_fb, "adamw_s": t_opt,
           "step_s": t_fb + t_opt, "tokens_per_s": batch_size * block_size / (t_fb + t_opt),
           "model_flops_per_step": flops, "model_flops_per_s": flops / t_fb, "gemm_ceiling_s": t_floor,
           "gemm_ceiling_flops_per_s": flops / t_floor, "ratio": statistics.median(ratios),
           "ratio_min": min(ratios), "ratio_max": max(ratios), "ratio_rounds": ratios,
           "ratio_with_adamw": t_floor / (t_fb + t_opt), "outside_gemm_s": t_fb - t_floor,
           "breakdown": breakdown, "breakdown_step_s": breakdown_step, "memory": memory.status(),
           "transcendentals": transcendentals,
           "transcendental_s": sum(count * t for _, count, _, t in transcendentals),
           "threads": _threads_ab(rows, threads, other_threads),
           "target": target, "tracemalloc_peak_bytes": peak - base, "maxrss_bytes": maxrss,
           "gemms": [(label, count, f / t) for (label, count, f, _), t in zip(gemms, pick["gemm_s"])]}
    if verbose:
        _report(res, print_fn)
    if profile:
        import cProfile
        import pstats
        pr = cProfile.Profile()
        pr.enable()
        for _ in range(5):
            fwd_bwd()
        pr.disable()
        pstats.Stats(pr).sort_stats("tottime").print_stats(18)
    return res


def _threads_ab(rows, threads, other):
    """The step with ``parallel``'s other thread setting, against this run's, round by round."""
    out = {"threads": threads, "other_threads": other}
    if rows[0]["other_threads_s"] is None:
        return out
    ratios = [row["other_threads_s"] / row["fwd_bwd_s"] for row in rows]
    return {**out, "other_fwd_bwd_s": statistics.median(row["other_threads_s"] for row in rows),
            "ratio_other": {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios),
                            "rounds": ratios}}


def _breakdown(step, steps, gemms, gemm_times):
    """{family: {"s", "gemm_s", "rest_s"}} per step, and the step's time while being broken down."""
    spent, total = time_by_family(step, steps)
    gemm_s = dict.fromkeys(spent, 0.0)
    for (label, count, _, _), t in zip(gemms, gemm_times):
        gemm_s[gemm_family(label)] += count * t
    return {k: {"s": v, "gemm_s": gemm_s[k], "rest_s": v - gemm_s[k]} for k, v in spent.items()}, total


def _report(r, print_fn=print):
    c = r["config"]
    print_fn(f"GPT L={c['n_layer']} nh={c['n_head']} C={c['n_embd']} T={c['block_size']} V={c['vocab_size']}"
             f"  B={r['batch_size']}  ({r['n_params']:,} params, float32; median of {r['rounds']} rounds of "
             f"{r['steps']} steps, AdamW {r['adamw']})")
    print_fn(f"  forward+backward {r['fwd_bwd_s'] * 1e3:8.2f} ms   AdamW {r['adamw_s'] * 1e3:6.2f} ms   "
             f"step {r['step_s'] * 1e3:8.2f} ms   {r['tokens_per_s']:,.0f} tokens/s")
    print_fn(f"  matmul FLOPs/step {r['model_flops_per_step'] / 1e9:.3f} G   model {r['model_flops_per_s'] / 1e9:6.1f} "
             f"GFLOP/s   NumPy matmul on the same shapes {r['gemm_ceiling_flops_per_s'] / 1e9:6.1f} GFLOP/s")
    verdict = "meets" if r["ratio"] >= r["target"] else "BELOW"
    print_fn(f"  ratio {r['ratio']:.3f} (rounds {r['ratio_min']:.3f}–{r['ratio_max']:.3f}) {verdict} the target "
             f"≥ {r['target']:.2f}: the model's matmul FLOP/s over NumPy's own matmul on the same shapes "
             f"(1 = nothing but GEMMs); {r['ratio_with_adamw']:.3f} with AdamW")
    print_fn(f"  peak memory: tracemalloc {r['tracemalloc_peak_bytes'] / 2**20:.1f} MiB during a step, "
             f"maxrss {r['maxrss_bytes'] / 2**20:.1f} MiB; {r['memory']}")
    t = r["threads"]
    if "ratio_other" in t:
        q = t["ratio_other"]
        print_fn(f"  elementwise threads (parallel.py): {t['other_threads']} thread(s) "
                 f"{t['other_fwd_bwd_s'] * 1e3:.2f} ms against this run's {t['threads']}: {q['median']:.2f}x "
                 f"(rounds {q['min']:.2f}–{q['max']:.2f}; below 1: {t['other_threads']} is faster)")
    _report_breakdown(r, print_fn)
    for label, count, fps in r["gemms"]:
        print_fn(f"    {label:<44s} x{count}  {fps / 1e9:6.1f} GFLOP/s")


def _report_breakdown(r, print_fn):
    print_fn(f"  where the time goes: {r['gemm_ceiling_s'] * 1e3:.2f} ms of GEMMs (timed alone), "
             f"{r['outside_gemm_s'] * 1e3:.2f} ms outside them; per op family, forward+backward "
             f"(a step under the timers took {r['breakdown_step_s'] * 1e3:.2f} ms):")
    print_fn(f"    {'family':<10s} {'total ms':>9s} {'GEMM ms':>9s} {'rest ms':>9s} {'share':>6s}")
    rows = sorted(r["breakdown"].items(), key=lambda kv: -kv[1]["s"])
    for family, b in rows:
        print_fn(f"    {family:<10s} {b['s'] * 1e3:9.2f} {b['gemm_s'] * 1e3:9.2f} {b['rest_s'] * 1e3:9.2f} "
                 f"{b['s'] / r['breakdown_step_s']:6.1%}")
    print_fn(f"  NumPy's tanh and exp alone, on the step's shapes: {r['transcendental_s'] * 1e3:.2f} ms a step")
    for label, count, n, t in r["transcendentals"]:
        print_fn(f"    {label:<36s} x{count}  {t * 1e3:7.3f} ms each, {t / n * 1e9:.2f} ns an element")
