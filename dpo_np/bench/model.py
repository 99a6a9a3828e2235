"""How fast the hand-written model trains, measured against NumPy's own matmul on the same shapes.

A training step of the model is a forward, a backward and (optionally) an AdamW update. Nearly
all of its arithmetic is in GEMMs, so the honest yardstick is the GEMMs themselves: every
distinct matrix product the step performs is timed alone, with the same shapes and the same
operand layouts (transposed views, strided head slices), and their summed time is the floor the
step could reach on this machine. ``ratio`` = that floor / the measured forward+backward time
= (model FLOP/s) / (NumPy's matmul FLOP/s on the model's shapes). The rest is LayerNorm, GELU,
softmax, the embedding scatter and Python overhead.

    python -m dpo_np.bench.model            # the default toy GPT-2, batch 32
"""

import argparse
import resource
import statistics
import sys
import time
import tracemalloc

import numpy as np

from dpo_np import backend
from dpo_np.model import GPT, GPTConfig


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
    y = np.empty((B, T, nh, hs), dtype=dtype).transpose(0, 2, 1, 3)
    f = 2 * B * nh * T * T * hs
    kT, vT, attT = k_.transpose(0, 1, 3, 2), v.transpose(0, 1, 3, 2), att.transpose(0, 1, 3, 2)
    gemms += [(f"attn q@kᵀ   ({B},{nh},{T},{hs})@(..,{hs},{T})", L, f, lambda: q @ kT),
              (f"attn att@v  ({B},{nh},{T},{T})@(..,{T},{hs})", L, f, lambda: np.matmul(att, v, out=y)),
              ("attn bwd attᵀ@dy", L, f, lambda: np.matmul(attT, dy, out=y)),
              ("attn bwd dy@vᵀ", L, f, lambda: dy @ vT),
              ("attn bwd ds@k", L, f, lambda: np.matmul(att, k_, out=y)),
              ("attn bwd dsᵀ@q", L, f, lambda: np.matmul(attT, q, out=y))]
    # the tied LM head: h @ wteᵀ, dlogits @ wte, dlogitsᵀ @ h
    h, wte, dl = rand(N, C), rand(V, C), rand(N, V)
    f = 2 * N * C * V
    gemms += [(f"lm_head fwd ({N},{C})@({V},{C})ᵀ", 1, f, lambda: h @ wte.T),
              (f"lm_head bwd dh ({N},{V})@({V},{C})", 1, f, lambda: dl @ wte),
              (f"lm_head bwd dW ({N},{V})ᵀ@({N},{C})", 1, f, lambda: dl.T @ h)]
    return gemms


def _next_token_dlogits(logits, targets):
    """dL/dlogits of the mean next-token cross-entropy: (softmax(logits) − onehot(targets)) / (B·T)."""
    z = logits - logits.max(axis=-1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=-1, keepdims=True)
    lp_target = np.take_along_axis(z, targets[..., None], -1)[..., 0] - np.log(np.exp(z).sum(-1))
    np.put_along_axis(p, targets[..., None], np.take_along_axis(p, targets[..., None], -1) - 1.0, -1)
    p /= float(targets.size)
    return -float(lp_target.mean()), p


def bench_model(n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=32, vocab_size=96,
                steps=20, with_adamw=True, seed=0, gemm_inner=3, profile=False, verbose=True):
    """Time float32 training steps of ``GPT`` and compare with NumPy's matmul on the same shapes.

    Returns a dict of measurements: median times (s), tokens/s, model FLOP/s (matmul FLOPs of
    forward+backward counted from the shapes), the GEMM ceiling and the ratio, peak memory.
    """
    if backend.backend_name() != "numpy":
        raise RuntimeError("bench_model measures the NumPy backend; call backend.set_backend('numpy')")
    cfg = GPTConfig(vocab_size=vocab_size, block_size=block_size, n_layer=n_layer,
                    n_head=n_head, n_embd=n_embd)
    model = GPT(cfg, seed=seed, dtype=np.float32)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, vocab_size, size=(batch_size, block_size))
    targets = rng.integers(0, vocab_size, size=(batch_size, block_size))

    opt, adamw_note = None, "off"
    if with_adamw:
        try:
            from dpo_np.optim import AdamW
        except ImportError as err:
            adamw_note = f"skipped (dpo_np.optim.AdamW not importable: {err})"
        else:
            opt = AdamW(model.params, lr=1e-4)
            adamw_note = "on"

    def fwd_bwd():
        logits = model.forward(idx)
        loss, dlogits = _next_token_dlogits(logits, targets)
        model.zero_grad()
        model.backward(dlogits)
        return loss

    def step():
        t0 = time.perf_counter()
        loss = fwd_bwd()
        t1 = time.perf_counter()
        if opt is not None:
            opt.step(model.grads)
        t2 = time.perf_counter()
        return loss, t1 - t0, t2 - t1

    # steps and the GEMM ceiling are measured interleaved, round by round, so that both see the
    # same machine (other processes, clock changes) and the ratio compares like with like
    gemms = model_gemms(cfg, batch_size, np.float32, seed)
    step()                                        # warm-up: grads, optimizer state, page faults
    for _, _, _, fn in gemms:
        fn()
    fb, ad, losses, gemm_times = [], [], [], [[] for _ in gemms]
    for _ in range(steps):
        loss, t_fb, t_opt = step()
        fb.append(t_fb)
        ad.append(t_opt)
        losses.append(loss)
        for times, (_, _, _, fn) in zip(gemm_times, gemms):
            t0 = time.perf_counter()
            for _ in range(gemm_inner):
                fn()
            times.append((time.perf_counter() - t0) / gemm_inner)
    t_fb, t_opt = statistics.median(fb), statistics.median(ad)
    t_step = t_fb + t_opt
    rows, flops, t_gemm = [], 0, 0.0
    for times, (label, count, f, _) in zip(gemm_times, gemms):
        t = statistics.median(times)
        rows.append((label, count, f / t))
        flops += count * f
        t_gemm += count * t

    # memory: one more step under tracemalloc (NumPy reports its buffers to it)
    tracemalloc.start()
    base, _ = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    step()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)

    tokens = batch_size * block_size
    res = {
        "config": cfg.to_dict(), "batch_size": batch_size, "steps": steps, "adamw": adamw_note,
        "n_params": model.num_params(), "loss_first": losses[0], "loss_last": losses[-1],
        "fwd_bwd_s": t_fb, "adamw_s": t_opt, "step_s": t_step,
        "tokens_per_s": tokens / t_step, "model_flops_per_step": flops,
        "model_flops_per_s": flops / t_fb,
        "gemm_ceiling_s": t_gemm, "gemm_ceiling_flops_per_s": flops / t_gemm,
        "ratio": t_gemm / t_fb, "ratio_with_adamw": t_gemm / t_step,
        "tracemalloc_peak_bytes": peak - base, "maxrss_bytes": maxrss,
        "gemms": rows,
    }
    if verbose:
        _report(res)
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


def _report(r):
    c = r["config"]
    print(f"GPT L={c['n_layer']} nh={c['n_head']} C={c['n_embd']} T={c['block_size']} V={c['vocab_size']}"
          f"  B={r['batch_size']}  ({r['n_params']:,} params, float32, {r['steps']} steps, AdamW {r['adamw']})")
    print(f"  forward+backward {r['fwd_bwd_s'] * 1e3:8.2f} ms   AdamW {r['adamw_s'] * 1e3:6.2f} ms   "
          f"step {r['step_s'] * 1e3:8.2f} ms   {r['tokens_per_s']:,.0f} tokens/s")
    print(f"  matmul FLOPs/step {r['model_flops_per_step'] / 1e9:.3f} G   model {r['model_flops_per_s'] / 1e9:6.1f} GFLOP/s"
          f"   NumPy matmul on the same shapes {r['gemm_ceiling_flops_per_s'] / 1e9:6.1f} GFLOP/s")
    print(f"  ratio {r['ratio']:.3f} (forward+backward), {r['ratio_with_adamw']:.3f} (with AdamW)"
          f"   GEMM floor {r['gemm_ceiling_s'] * 1e3:.2f} ms")
    print(f"  peak memory: tracemalloc {r['tracemalloc_peak_bytes'] / 2**20:.1f} MiB during a step, "
          f"maxrss {r['maxrss_bytes'] / 2**20:.1f} MiB")
    print(f"  loss {r['loss_first']:.4f} -> {r['loss_last']:.4f}")
    for label, count, fps in r["gemms"]:
        print(f"    {label:<44s} x{count}  {fps / 1e9:6.1f} GFLOP/s")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, default in (("n_layer", 4), ("n_head", 4), ("n_embd", 128), ("block_size", 64),
                          ("batch_size", 32), ("vocab_size", 96), ("steps", 20), ("seed", 0)):
        ap.add_argument("--" + name.replace("_", "-"), type=int, default=default)
    ap.add_argument("--no-adamw", action="store_true")
    ap.add_argument("--profile", action="store_true", help="print a cProfile of forward+backward")
    a = ap.parse_args(argv)
    bench_model(a.n_layer, a.n_head, a.n_embd, a.block_size, a.batch_size, a.vocab_size, a.steps,
                not a.no_adamw, a.seed, profile=a.profile)


if __name__ == "__main__":
    main()
